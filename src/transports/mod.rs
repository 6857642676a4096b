//! Native transports, one module per kind. Each is the hot half of a Python transport class
//! (`python/ferroloop/_transports.py`) that subclasses the matching `asyncio` transport, so
//! `isinstance(transport, asyncio.Transport)` holds while the read and write paths run here.
//!
//! - [`stream`]: TCP and Unix stream sockets;
//! - [`datagram`]: UDP and Unix datagram sockets.

pub mod datagram;
pub mod stream;

use pyo3::ffi;
use pyo3::prelude::*;

/// A copy of the current `contextvars.Context`.
pub(crate) fn copy_context(py: Python<'_>) -> PyResult<PyObject> {
    // SAFETY: PyContext_CopyCurrent returns a new reference, or NULL with an exception set.
    let p = unsafe { ffi::PyContext_CopyCurrent() };
    // SAFETY: `p` is a new reference (ownership taken) or NULL.
    Ok(unsafe { Bound::from_owned_ptr_or_err(py, p) }?.unbind())
}

/// Runs `f` inside `ctx` (as `ctx.run(f)`), or in the current context when there is none.
/// Transports run protocol callbacks in the context asyncio's reader/writer handles would have.
pub(crate) fn in_context<R>(
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
