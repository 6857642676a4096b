//! Native transports, one module per kind. Each is the hot half of a Python transport class
//! (`python/ferroloop/_transports.py`) that subclasses the matching `asyncio` transport, so
//! `isinstance(transport, asyncio.Transport)` holds while the read and write paths run here.
//!
//! - [`stream`]: TCP and Unix stream sockets;
//! - [`datagram`]: UDP and Unix datagram sockets;
//! - [`face`]: the hot methods of their Python faces, as native method descriptors.

pub mod datagram;
pub mod face;
pub mod stream;

use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::PyClass;

use crate::event_loop::LoopCore;
use crate::reactor::Io;

/// What every native transport tracks about its fd: which directions the reactor watches for
/// it, the user's reading pause, whether it is closing, and the `contextvars.Context` each
/// direction's protocol callbacks run in (a copy of the context current when reading was
/// started or resumed, and when the writer was registered, as asyncio's reader and writer
/// handles capture them). On Python 3.15+, asyncio gives a transport one context at creation
/// (`context=`, a copy made when the connection was created or accepted) and runs all its
/// protocol callbacks in it: `fixed_ctx`, used by both directions when set.
pub(crate) struct Interest {
    /// -1 once the transport let go of its socket.
    pub fd: RawFd,
    /// Reading paused by the user (`pause_reading`).
    pub paused: bool,
    pub closing: bool,
    /// Read / write interest currently registered with the reactor.
    pub reading: bool,
    pub writing: bool,
    pub read_ctx: Option<Py<PyAny>>,
    pub write_ctx: Option<Py<PyAny>>,
    pub fixed_ctx: Option<Py<PyAny>>,
}

impl Interest {
    pub fn new(fd: RawFd) -> Self {
        Interest {
            fd,
            paused: false,
            closing: false,
            reading: false,
            writing: false,
            read_ctx: None,
            write_ctx: None,
            fixed_ctx: None,
        }
    }

    /// The context a callback scheduled for this transport runs in: the fixed one if any.
    pub fn callback_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.fixed_ctx.as_ref().map(|c| c.clone_ref(py))
    }
}

/// A copy of the current `contextvars.Context`.
fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference, or NULL with an exception set.
    let p = unsafe { ffi::PyContext_CopyCurrent() };
    // SAFETY: `p` is a new reference (ownership taken) or NULL.
    Ok(unsafe { Bound::from_owned_ptr_or_err(py, p) }?.unbind())
}

/// Runs `f` inside `ctx` (as `ctx.run(f)`), or in the current context when there is none.
/// Transports run protocol callbacks in the context asyncio's reader/writer handles would have.
fn in_context<R>(
    py: Python<'_>,
    ctx: Option<&Bound<'_, PyAny>>,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let Some(ctx) = ctx else { return f() };
    // SAFETY: `ctx` is a live reference for the whole call. A context that is already entered
    // (or not a Context) makes PyContext_Enter fail with an exception set, fetched here.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let out = f();
    // SAFETY: `ctx` was entered above on this thread; no exception is pending (an error of
    // `f` is held in `out`).
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
        let exit_err = PyErr::fetch(py);
        return out.and(Err(exit_err));
    }
    out
}

/// The errno a non-blocking socket call fails with when it would block.
pub(crate) fn would_block(code: i32) -> bool {
    code == libc::EAGAIN || code == libc::EWOULDBLOCK
}

/// Runs a socket syscall again when a signal interrupted it (EINTR), as Python's socket
/// methods do (PEP 475). Returns the raw result; `errno` is meaningful when it is negative.
pub(crate) fn retry_eintr(mut call: impl FnMut() -> isize) -> isize {
    loop {
        let n = call();
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return n;
        }
    }
}

/// What the shared reading/watching logic needs from a native transport.
pub(crate) trait NativeTransport: PyClass<Frozen = True> + Sync {
    /// Runs `f` on the transport's [`Interest`].
    fn interest<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Interest) -> R) -> PyResult<R>;
    /// The loop it belongs to (None once detached).
    fn loop_core<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, LoopCore>>>;
    /// How the reactor refers to it.
    fn as_io(slf: &Bound<'_, Self>) -> Io;
}

/// Registers (`on`) or unregisters interest in one direction, keeping the flags in sync with
/// the reactor and capturing the context that direction's callbacks will run in.
pub(crate) fn watch<T: NativeTransport>(slf: &Bound<'_, T>, write: bool, on: bool) -> PyResult<()> {
    let py = slf.py();
    let (fd, changed) = slf.get().interest(py, |s| {
        let flag = if write { s.writing } else { s.reading };
        (s.fd, flag != on)
    })?;
    if !changed || fd < 0 {
        return Ok(());
    }
    let Some(lp) = slf.get().loop_core(py)? else {
        return Ok(());
    };
    lp.get()
        .watch_native(py, fd, on.then(|| T::as_io(slf)), write)?;
    let ctx = if on {
        match slf.get().interest(py, |s| s.callback_context(py))? {
            Some(fixed) => Some(fixed),
            None => Some(copy_context(py)?),
        }
    } else {
        None
    };
    let old = slf.get().interest(py, |s| {
        if write {
            s.writing = on;
            std::mem::replace(&mut s.write_ctx, ctx)
        } else {
            s.reading = on;
            std::mem::replace(&mut s.read_ctx, ctx)
        }
    })?;
    drop(old);
    Ok(())
}

/// Starts reading unless paused or closing (asyncio defers this until connection_made ran).
pub(crate) fn start_reading<T: NativeTransport>(slf: &Bound<'_, T>) -> PyResult<()> {
    let ok = slf
        .get()
        .interest(slf.py(), |s| !s.paused && !s.closing && s.fd >= 0)?;
    if ok {
        watch(slf, false, true)?;
    }
    Ok(())
}

/// `transport.is_reading()`.
pub(crate) fn is_reading<T: NativeTransport>(slf: &Bound<'_, T>) -> PyResult<bool> {
    slf.get().interest(slf.py(), |s| !s.paused && !s.closing)
}

/// `transport.pause_reading()` (`pause`) / `transport.resume_reading()`.
pub(crate) fn set_reading_paused<T: NativeTransport>(
    slf: &Bound<'_, T>,
    pause: bool,
) -> PyResult<()> {
    let go = slf.get().interest(slf.py(), |s| {
        if s.closing || s.paused == pause {
            false
        } else {
            s.paused = pause;
            true
        }
    })?;
    if go {
        watch(slf, false, !pause)?;
    }
    Ok(())
}

/// Runs `f` in the context one direction's callbacks run in (see [`Interest`]).
pub(crate) fn in_direction_context<T: NativeTransport, R>(
    slf: &Bound<'_, T>,
    write: bool,
    f: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let py = slf.py();
    let ctx = slf.get().interest(py, |s| {
        let c = if write { &s.write_ctx } else { &s.read_ctx };
        c.as_ref().map(|c| c.clone_ref(py))
    })?;
    let ctx = ctx.map(|c| c.into_bound(py));
    in_context(py, ctx.as_ref(), f)
}
