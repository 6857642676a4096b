//! The waiting half of `sock_recv`, `sock_recv_into`, `sock_sendall`, `sock_connect` and
//! `sock_accept`.
//!
//! The Python side tries the operation at once (asyncio's order and checks); only when the
//! socket would block does it ask the loop for a future. The loop then registers a
//! `SockWaiter` for the fd: no callback handle, no context copy, no `functools.partial`. On
//! readiness the waiter retries the operation through the socket object's own method (so
//! results and exceptions are exactly the socket module's) and settles the future. When the
//! future is cancelled first, its done-callback (the waiter itself) unregisters.
//!
//! The reactor keeps a completed waiter's kernel registration lingering for the next wait on
//! the same socket (see `reactor.rs`), so a request-reply loop costs no `epoll_ctl` per
//! message.
//!
//! A socket closed while an operation waits on it: the kernel drops a closed fd from epoll
//! without a word, so on asyncio the operation waits for ever. Before the loop blocks, it
//! checks each waiting operation's socket object ([`closed_under`]); one whose fd changed
//! (`close()` sets it to -1) fails with `OSError(EBADF)` and leaves the reactor.

use std::cell::RefCell;
use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyKeyboardInterrupt, PyMemoryError, PySystemExit,
    PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::gilcell::GilCell;
use crate::transports::stream::ByteView;
use crate::transports::{retry_eintr, would_block};

thread_local! {
    /// Receive buffer for `try_recv`'s small and very large reads (grown to the largest size
    /// asked for, then reused).
    static RECV_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `socket.socket` and `_socket.socket` as they were when the module was imported (None: not
/// a type then). Read once, up front: a later patch of `socket.socket` (asyncssh's tests put a
/// function there) must not reach `sock_recv`/`sock_sendall`, as it does not reach asyncio's.
static PLAIN_SOCKET: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
static SOCKET_BASE: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();

/// Reads the two socket types (called by the module's initialisation).
pub(crate) fn init_socket_types(py: Python<'_>) -> PyResult<()> {
    for (cell, module) in [(&PLAIN_SOCKET, "socket"), (&SOCKET_BASE, "_socket")] {
        let ty = py.import(module)?.getattr("socket")?;
        let _ = cell.get_or_init(py, || ty.cast_into::<PyType>().ok().map(Bound::unbind));
    }
    Ok(())
}

fn socket_type<'a>(
    py: Python<'_>,
    cell: &'a PyOnceLock<Option<Py<PyType>>>,
) -> Option<&'a Py<PyType>> {
    cell.get(py).and_then(Option::as_ref)
}

/// asyncio's checks at the start of `sock_recv`/`sock_sendall` (an `ssl.SSLSocket` is refused,
/// and in debug mode a blocking socket), then the socket's fd from `sock.fileno()`.
pub(crate) fn checked_fd(sock: &Bound<'_, PyAny>, debug: bool) -> PyResult<RawFd> {
    let py = sock.py();
    let plain = socket_type(py, &PLAIN_SOCKET).is_some_and(|t| sock.get_type().is(t.bind(py)));
    // A plain socket.socket cannot be an ssl.SSLSocket (a subclass); others ask asyncio.
    if !plain {
        py.import("asyncio.base_events")?
            .getattr(intern!(py, "_check_ssl_socket"))?
            .call1((sock,))?;
    }
    if debug && sock.call_method0(intern!(py, "gettimeout"))?.ne(0)? {
        return Err(PyValueError::new_err("the socket must be non-blocking"));
    }
    sock.call_method0(intern!(py, "fileno"))?.extract()
}

/// At or below this size `try_recv` reads into the reused buffer and copies what arrived:
/// cheaper than allocating `n` bytes that may be mostly unused.
const COPY_RECV_MAX: usize = 4096;
/// Above this size a `bytes` of `n` would come from glibc's mmap (two system calls per read,
/// expensive here); the reused buffer and a copy of what arrived are cheaper...
const DIRECT_RECV_MAX: usize = 128 * 1024;
/// ...up to this size: the reused buffer stays bounded, and larger requests allocate their
/// `bytes` directly, failing with `MemoryError` as `socket.recv` does when `n` is absurd.
const STAGED_RECV_MAX: usize = 4 * 1024 * 1024;

/// `sock.recv(n)` on the raw fd, without raising when it would block: `Ok(None)` then.
/// Errors are the socket module's (`OSError` subclass by errno, `ValueError` for n < 0,
/// `MemoryError` when `n` bytes cannot be allocated).
pub(crate) fn try_recv(py: Python<'_>, fd: RawFd, n: isize) -> PyResult<Option<Py<PyAny>>> {
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    let n = n as usize;
    if (n > COPY_RECV_MAX && n <= DIRECT_RECV_MAX) || n > STAGED_RECV_MAX {
        return recv_direct(py, fd, n);
    }
    RECV_BUF.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            // Re-entered on this thread (cannot happen: no Python runs below).
            return recv_direct(py, fd, n);
        };
        if buf.len() < n {
            let more = n - buf.len();
            if buf.try_reserve_exact(more).is_err() {
                return Err(PyMemoryError::new_err(()));
            }
            buf.resize(n, 0);
        }
        recv_into_vec(py, fd, &mut buf, n)
    })
}

/// After a failed socket call: `when_blocked` if it would have blocked, else the socket
/// module's exception for the errno.
fn unless_would_block<T>(when_blocked: T) -> PyResult<T> {
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(code) if would_block(code) => Ok(when_blocked),
        _ => Err(os_error(err)),
    }
}

/// Reads straight into a new `bytes` of `n`, shrunk to what arrived (what `socket.recv`
/// does): one copy less for large reads. Uses the `PyBytesWriter` API (public since 3.15;
/// PyO3's compat shim, built on the same `_PyBytes_Resize`, on older versions).
fn recv_direct(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
    use pyo3::ffi;
    use pyo3::ffi::compat::{
        PyBytesWriter_Create, PyBytesWriter_Discard, PyBytesWriter_FinishWithSize,
        PyBytesWriter_GetData,
    };
    // SAFETY: PyBytesWriter_Create(n) returns a writer owning an n-byte buffer (or NULL with
    // an exception set). The buffer is ours until the writer is finished or discarded, so
    // `recv` may write up to n bytes into it; FinishWithSize consumes the writer (also on
    // failure) and returns a new reference to a bytes object of `got` bytes, or NULL with an
    // exception set. Discard frees the writer on the error path. The GIL is held throughout.
    unsafe {
        let writer = PyBytesWriter_Create(n as ffi::Py_ssize_t);
        if writer.is_null() {
            return Err(PyErr::fetch(py));
        }
        let ptr = PyBytesWriter_GetData(writer);
        let got = retry_eintr(|| libc::recv(fd, ptr, n, 0));
        if got < 0 {
            let failed = unless_would_block(None);
            PyBytesWriter_Discard(writer);
            return failed;
        }
        crate::metrics::received(got as usize);
        let obj = PyBytesWriter_FinishWithSize(writer, got as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(Some(Bound::from_owned_ptr(py, obj).unbind()))
    }
}

/// `sock.send(data)` on the raw fd: bytes sent, 0 when the socket would block; other errors
/// as the socket module raises them.
pub(crate) fn try_send(fd: RawFd, data: &[u8]) -> PyResult<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    let (ptr, len) = (data.as_ptr() as *const libc::c_void, data.len());
    // SAFETY: `data` is valid for reads of `len` bytes during the call; MSG_NOSIGNAL turns a
    // write to a closed peer into EPIPE instead of SIGPIPE (as for the stream transport).
    let n = retry_eintr(|| unsafe { libc::send(fd, ptr, len, libc::MSG_NOSIGNAL) });
    if n < 0 {
        return unless_would_block(0);
    }
    crate::metrics::sent(n as usize);
    Ok(n as usize)
}

fn recv_into_vec(
    py: Python<'_>,
    fd: RawFd,
    buf: &mut [u8],
    n: usize,
) -> PyResult<Option<Py<PyAny>>> {
    let ptr = buf.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: `buf` has at least `n` writable bytes for the duration of the call.
    let got = retry_eintr(|| unsafe { libc::recv(fd, ptr, n, 0) });
    if got < 0 {
        return unless_would_block(None);
    }
    crate::metrics::received(got as usize);
    Ok(Some(
        pyo3::types::PyBytes::new(py, &buf[..got as usize])
            .into_any()
            .unbind(),
    ))
}

/// What the waiter retries on readiness.
pub(crate) enum SockOp {
    /// `sock.recv(n)`
    Recv(isize),
    /// `sock.recv_into(buf, nbytes)`
    RecvInto(Py<PyAny>, isize),
    /// `sock.send(view[offset:])` until the whole view is sent.
    SendAll(Py<PyAny>, usize),
    /// A non-blocking `connect(address)` in progress: its outcome is `SO_ERROR`.
    Connect(Py<PyAny>),
    /// `sock.accept()`, the new socket made non-blocking.
    Accept,
}

impl SockOp {
    fn clone_ref(&self, py: Python<'_>) -> SockOp {
        match self {
            SockOp::Recv(n) => SockOp::Recv(*n),
            SockOp::RecvInto(b, n) => SockOp::RecvInto(b.clone_ref(py), *n),
            SockOp::SendAll(v, off) => SockOp::SendAll(v.clone_ref(py), *off),
            SockOp::Connect(a) => SockOp::Connect(a.clone_ref(py)),
            SockOp::Accept => SockOp::Accept,
        }
    }
}

/// Whether reading the fd out of the socket object works (checked once against `fileno()`).
static RAW_FD_CHECKED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The fd a socket object holds right now (-1 once closed or detached), read from the C
/// object: CPython's socket object starts with the object header, then the fd
/// (`PySocketSockObject.sock_fd`, an `int` on POSIX). Checked once against `fileno()`; where
/// that does not hold, or for an object that is not a `_socket.socket`, `fileno()` is called.
fn current_fd(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = sock.py();
    let from_fileno = || -> PyResult<RawFd> { sock.call_method0(intern!(py, "fileno"))?.extract() };
    let Some(base) = socket_type(py, &SOCKET_BASE) else {
        return from_fileno();
    };
    if !sock.is_instance(base.bind(py))? {
        return from_fileno();
    }
    // SAFETY: `sock` is a live `_socket.socket` (or subclass) object, whose C layout begins
    // with `PyObject_HEAD` followed by `SOCKET_T sock_fd` (Modules/socketmodule.h); the read
    // stays inside the object. Whether the layout holds is verified before it is trusted.
    let raw = unsafe {
        let p = (sock.as_ptr() as *const u8).add(std::mem::size_of::<ffi::PyObject>());
        std::ptr::read_unaligned(p as *const libc::c_int)
    };
    use std::sync::atomic::Ordering;
    match RAW_FD_CHECKED.load(Ordering::Relaxed) {
        1 => Ok(raw),
        2 => from_fileno(),
        _ => {
            let real = from_fileno()?;
            RAW_FD_CHECKED.store(if real == raw { 1 } else { 2 }, Ordering::Relaxed);
            Ok(real)
        }
    }
}

/// A waiting operation whose socket was closed (or detached) since it started waiting.
pub(crate) fn closed_under(slf: &Bound<'_, SockWaiter>) -> PyResult<bool> {
    let py = slf.py();
    let snapshot = slf.get().state.with(py, |s| {
        if !s.registered {
            return None;
        }
        Some((s.fd, s.sock.as_ref()?.clone_ref(py)))
    })?;
    let Some((fd, sock)) = snapshot else {
        return Ok(false);
    };
    Ok(current_fd(sock.bind(py))? != fd)
}

/// Another operation on the same socket took this one's place in the reactor (as asyncio's
/// new reader or writer handle replaces and cancels the old one): it no longer runs, even if
/// its wake-up is already queued for this iteration. Its future is left as it is, as
/// asyncio leaves it.
pub(crate) fn displace(py: Python<'_>, w: &Py<SockWaiter>) {
    let _ = w.get().state.with(py, |s| s.registered = false);
}

/// Still waiting (registered in the reactor)?
pub(crate) fn is_waiting(py: Python<'_>, w: &Py<SockWaiter>) -> bool {
    w.get().state.with(py, |s| s.registered).unwrap_or(true)
}

/// Fails a waiting operation whose socket was closed under it: it leaves the reactor (no
/// lingering registration: the fd is gone) and its future gets `OSError(EBADF)`.
pub(crate) fn fail_closed(slf: &Bound<'_, SockWaiter>) -> PyResult<()> {
    let py = slf.py();
    let taken = slf.get().state.with(py, |s| {
        if !s.registered {
            return None;
        }
        s.registered = false;
        Some((s.fd, s.write, s.lp.take()))
    })?;
    if let Some((fd, write, Some(lp))) = taken {
        lp.get().release_sock(py, fd, write, None, slf)?;
    }
    let err = os_error(std::io::Error::from_raw_os_error(libc::EBADF));
    SockWaiter::finish(slf, Err(err))
}

struct WaiterState {
    fd: RawFd,
    write: bool,
    sock: Option<Py<PyAny>>,
    fut: Option<Py<PyAny>>,
    op: Option<SockOp>,
    lp: Option<Py<LoopCore>>,
    /// Still the fd's registered waiter.
    registered: bool,
}

/// One pending socket operation, registered in the reactor; also the future's done-callback.
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "SockWaiter")]
pub struct SockWaiter {
    state: GilCell<WaiterState>,
}

impl SockWaiter {
    pub(crate) fn new(
        fd: RawFd,
        write: bool,
        sock: Py<PyAny>,
        fut: Py<PyAny>,
        op: SockOp,
        lp: Py<LoopCore>,
    ) -> Self {
        SockWaiter {
            state: GilCell::new(WaiterState {
                fd,
                write,
                sock: Some(sock),
                fut: Some(fut),
                op: Some(op),
                lp: Some(lp),
                registered: true,
            }),
        }
    }

    /// Leaves the reactor (the registration may linger for the next wait on this socket) and
    /// forgets everything but nothing else.
    fn release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let taken = slf.get().state.with(py, |s| {
            if !s.registered {
                return None;
            }
            s.registered = false;
            let sock = s.sock.as_ref().map(|o| o.clone_ref(py));
            Some((s.fd, s.write, sock, s.lp.take()))
        })?;
        if let Some((fd, write, Some(sock), Some(lp))) = taken {
            lp.get().release_sock(py, fd, write, Some(sock), slf)?;
        }
        Ok(())
    }

    /// Settles the future (unless someone else did) after leaving the reactor.
    fn finish(slf: &Bound<'_, Self>, result: PyResult<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        Self::release(slf)?;
        let (fut, op, sock) = slf
            .get()
            .state
            .with(py, |s| (s.fut.take(), s.op.take(), s.sock.take()))?;
        drop((op, sock));
        let Some(fut) = fut else { return Ok(()) };
        let fut = fut.bind(py);
        // This waiter is the future's done-callback for cancellation; not needed any more.
        fut.call_method1(intern!(py, "remove_done_callback"), (slf,))?;
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        match result {
            Ok(v) => fut.call_method1(intern!(py, "set_result"), (v,))?,
            Err(e) => fut.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    }
}

/// The fd is ready: retry the operation.
pub(crate) fn on_ready(slf: &Bound<'_, SockWaiter>) -> PyResult<()> {
    let py = slf.py();
    let snapshot = slf.get().state.with(py, |s| {
        if !s.registered {
            return None;
        }
        let op = s.op.as_ref()?.clone_ref(py);
        Some((
            s.sock.as_ref()?.clone_ref(py),
            s.fut.as_ref()?.clone_ref(py),
            op,
        ))
    })?;
    let Some((sock, fut, op)) = snapshot else {
        return Ok(());
    };
    let (sock, fut) = (sock.into_bound(py), fut.into_bound(py));
    if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
        return SockWaiter::finish(slf, Ok(py.None()));
    }
    let attempt = match &op {
        SockOp::Recv(n) => {
            let fd = slf.get().state.with(py, |s| s.fd)?;
            match try_recv(py, fd, *n) {
                Ok(Some(data)) => Ok(data.into_bound(py)),
                Ok(None) => return Ok(()), // not ready after all
                Err(e) => Err(e),
            }
        }
        SockOp::RecvInto(buf, n) => sock.call_method1(intern!(py, "recv_into"), (buf, *n)),
        SockOp::Connect(address) => connect_outcome(&sock, address.bind(py)),
        SockOp::Accept => sock.call_method0(intern!(py, "accept")).and_then(|pair| {
            let conn = pair.get_item(0)?;
            conn.call_method1(intern!(py, "setblocking"), (false,))?;
            Ok(pair)
        }),
        SockOp::SendAll(view, off) => {
            let fd = slf.get().state.with(py, |s| s.fd)?;
            let bytes = ByteView::new(view.bind(py), false)?;
            let rest = bytes.as_slice().get(*off..).unwrap_or(&[]);
            match try_send(fd, rest) {
                Ok(0) if !rest.is_empty() => return Ok(()), // not writable after all
                Ok(n) => n
                    .into_pyobject(py)
                    .map(|v| v.into_any())
                    .map_err(PyErr::from),
                Err(e) => Err(e),
            }
        }
    };
    match attempt {
        Err(e)
            if e.is_instance_of::<PyBlockingIOError>(py)
                || e.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(()) // not ready after all: wait for the next event
        }
        Err(e)
            if e.is_instance_of::<PyKeyboardInterrupt>(py)
                || e.is_instance_of::<PySystemExit>(py) =>
        {
            Err(e)
        }
        Err(e) => SockWaiter::finish(slf, Err(e)),
        Ok(v) => match op {
            SockOp::SendAll(view, off) => {
                let sent: usize = v.extract()?;
                let total = ByteView::new(view.bind(py), false)?.len();
                if off + sent >= total {
                    SockWaiter::finish(slf, Ok(py.None()))
                } else {
                    slf.get().state.with(py, |s| {
                        s.op = Some(SockOp::SendAll(view, off + sent));
                    })
                }
            }
            _ => SockWaiter::finish(slf, Ok(v.unbind())),
        },
    }
}

/// The outcome of a non-blocking connect once the socket is writable (asyncio's
/// `_sock_connect_cb`): None, or `OSError(err, "Connect call failed <address>")`.
fn connect_outcome<'py>(
    sock: &Bound<'py, PyAny>,
    address: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    let err: i32 = sock
        .call_method1(
            intern!(py, "getsockopt"),
            (libc::SOL_SOCKET, libc::SO_ERROR),
        )?
        .extract()?;
    if err != 0 {
        let message = format!("Connect call failed {}", address.str()?);
        let exc = py
            .get_type::<pyo3::exceptions::PyOSError>()
            .call1((err, message))?;
        return Err(PyErr::from_value(exc));
    }
    Ok(py.None().into_bound(py))
}

#[pymethods]
impl SockWaiter {
    /// Done-callback of the future: a cancelled (or externally settled) operation leaves the
    /// reactor right away.
    fn __call__(slf: &Bound<'_, Self>, _fut: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::release(slf)?;
        let dropped = slf
            .get()
            .state
            .with(slf.py(), |s| (s.fut.take(), s.op.take(), s.sock.take()))?;
        drop(dropped);
        Ok(())
    }
}
