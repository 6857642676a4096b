//! The datagram transport (UDP and Unix datagram sockets): asyncio's
//! `_SelectorDatagramTransport`, with the receive path, the send path and flow control in Rust.
//!
//! The loop drives a transport directly, as it does a stream transport: when the fd is readable
//! or writable the reactor queues the transport itself and the iteration calls [`on_readable`]
//! or [`on_writable`].
//!
//! - Receiving: one `recvfrom` per readiness event (as asyncio), into the loop's shared read
//!   buffer, then `protocol.datagram_received(bytes, addr)`. The sender's address is converted
//!   exactly as the `socket` module's `recvfrom` converts it (see [`sockaddr_to_py`]); the last
//!   one is kept, so a peer that keeps talking gets the same address object without converting
//!   it again. An `OSError` from `recvfrom` (e.g. `ConnectionRefusedError` after an ICMP port
//!   unreachable on a connected socket) goes to `protocol.error_received`.
//! - Sending: `sendto(data, addr)` sends at once when nothing is queued, else queues a copy.
//!   A connected socket uses `send`; otherwise numeric IPv4/IPv6 addresses are parsed here and
//!   sent with `sendto(2)`, and the address object last seen by `recvfrom` maps back to its
//!   kernel form without parsing (the echo pattern `sendto(data, addr)`). Anything else (host
//!   names, `''`, `'<broadcast>'`, Unix paths, malformed addresses) goes through the Python
//!   socket object's `sendto`, so resolution, validation and error messages are the socket
//!   module's own. What the kernel refuses for lack of buffer space is queued and flushed when
//!   the socket is writable; other `OSError`s go to `protocol.error_received`, anything else is
//!   a fatal error, as in asyncio.
//!
//! Protocol callbacks run in the `contextvars.Context` asyncio would run them in: the receive
//! path in a copy of the context current when reading was started (`connection_made` time, or
//! `resume_reading`), the flush of the queue in the one current when the writer was registered
//! (the `sendto` that queued).
//!
//! The Python wrapper (`ferroloop._transports.DatagramTransport`) owns the socket object and
//! the extra info, and the cold paths: `_fatal_error`, `_call_connection_lost` and the error
//! reports. This module calls them by name.

use std::collections::VecDeque;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::event_loop::LoopCore;
use crate::gilcell::GilCell;
use crate::reactor::Io;
use crate::transports::stream::{errno, is_bytes_like, os_error_from, passes_through, ByteView};
use crate::transports::{
    in_direction_context, is_reading, set_reading_paused, start_reading, watch, would_block,
    Interest, NativeTransport,
};

/// Bytes received per `recvfrom`, as asyncio's `max_size` (longer datagrams are truncated).
const MAX_READ: usize = 256 * 1024;
/// asyncio's default high-water mark; the low one is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// After this many sends on a lost connection, asyncio starts warning.
const CONNLOST_WARN_THRESHOLD: u32 = 5;

// The C library's address text conversions (not bound by the libc crate), the ones CPython's
// socket module uses, so that the text matches it exactly.
extern "C" {
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// A socket address in kernel form.
#[derive(Clone, Copy)]
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn zeroed() -> Self {
        SockAddr {
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            storage: unsafe { MaybeUninit::zeroed().assume_init() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    fn len(&self) -> usize {
        (self.len as usize).min(size_of::<libc::sockaddr_storage>())
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `storage` is `size_of::<sockaddr_storage>()` initialized bytes and `len()`
        // never exceeds that.
        unsafe {
            std::slice::from_raw_parts(
                &self.storage as *const libc::sockaddr_storage as *const u8,
                self.len(),
            )
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const libc::sockaddr_storage as *const libc::sockaddr
    }
}

/// Where a queued datagram goes.
enum Dest {
    /// The socket is connected: `send`.
    Connected,
    /// `sendto` with an address converted here.
    Native(SockAddr),
    /// The socket object's `sendto(data, addr)` (names, Unix paths, anything unusual).
    Python(Py<PyAny>),
}

struct Pending {
    data: Vec<u8>,
    dest: Dest,
}

/// What one send attempt came to.
enum Sent {
    Done,
    WouldBlock,
    /// An `OSError`: for `protocol.error_received`.
    OsError(PyErr),
    /// Anything else (e.g. a `TypeError` for a malformed address): a fatal error.
    Fatal(PyErr),
}

struct DatagramState {
    /// The fd, watched directions, pause/closing flags and callback contexts.
    io: Interest,
    /// The socket's address family (`AF_INET`, `AF_INET6`, `AF_UNIX`...).
    family: i32,
    /// `send` instead of `sendto` (the socket has a peer).
    connected: bool,
    loop_: Option<Py<LoopCore>>,
    /// The Python wrapper (`DatagramTransport`), passed to protocols and error reports.
    owner: Option<Py<PyAny>>,
    /// The Python socket object, for the slow send path.
    sock: Option<Py<PyAny>>,
    /// The protocol; its methods are looked up when called, as asyncio does (a protocol may
    /// replace them on the instance while connected).
    protocol: Option<Py<PyAny>>,
    /// The remote address given to `create_datagram_endpoint` (None if none, or falsy).
    address: Option<Py<PyAny>>,
    queue: VecDeque<Pending>,
    /// Bytes queued, plus `header_size` per datagram (what `get_write_buffer_size` reports).
    buffer_size: usize,
    header_size: usize,
    /// Whether empty datagrams are sent (Python 3.13+) or silently dropped (up to 3.12).
    send_empty: bool,
    protocol_paused: bool,
    conn_lost: u32,
    high: usize,
    low: usize,
    /// The last sender seen by `recvfrom`, in kernel form and as the Python object handed to
    /// the protocol.
    last_peer: Option<(SockAddr, Py<PyAny>)>,
}

impl DatagramState {
    fn take_refs(&mut self) -> Vec<Py<PyAny>> {
        let mut out = Vec::new();
        out.extend(self.owner.take());
        out.extend(self.sock.take());
        out.extend(self.protocol.take());
        // `address` stays: a closed connected transport still refuses another destination
        // (asyncio checks the address before it drops the datagram).
        out.extend(self.last_peer.take().map(|(_, o)| o));
        out.extend(self.io.read_ctx.take());
        out.extend(self.io.write_ctx.take());
        for p in self.queue.drain(..) {
            if let Dest::Python(a) = p.dest {
                out.push(a);
            }
        }
        self.buffer_size = 0;
        if let Some(l) = self.loop_.take() {
            out.push(l.into_any());
        }
        out
    }

    fn entry_size(&self, p: &Pending) -> usize {
        p.data.len() + self.header_size
    }
}

/// The native core of a datagram transport.
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "DatagramTransport")]
pub struct DatagramTransport {
    state: GilCell<DatagramState>,
}

/// `send`/`sendto` once (retrying on EINTR, as the socket module does).
fn send_native(fd: RawFd, data: &[u8], to: Option<&SockAddr>) -> Sent {
    loop {
        let n = match to {
            // SAFETY: `data` is valid for reads of its length during the call.
            None => unsafe { libc::send(fd, data.as_ptr() as *const libc::c_void, data.len(), 0) },
            // SAFETY: as above; `a` points to `a.len` initialized bytes of a sockaddr.
            Some(a) => unsafe {
                libc::sendto(
                    fd,
                    data.as_ptr() as *const libc::c_void,
                    data.len(),
                    0,
                    a.as_ptr(),
                    a.len,
                )
            },
        };
        if n >= 0 {
            crate::metrics::sent(n as usize);
            return Sent::Done;
        }
        let e = errno();
        if e == libc::EINTR {
            continue;
        }
        if would_block(e) {
            return Sent::WouldBlock;
        }
        return Sent::OsError(os_error_from(e));
    }
}

/// Sorts an exception raised by the socket object's `sendto` the way asyncio's `except`
/// clauses do.
fn classify(py: Python<'_>, e: PyErr) -> Sent {
    if e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py) {
        Sent::WouldBlock
    } else if e.is_instance_of::<PyOSError>(py) {
        Sent::OsError(e)
    } else {
        Sent::Fatal(e)
    }
}

/// A numeric host, as the socket module's `setipaddr` accepts it without a lookup:
/// `inet_pton` on the socket's own family (scoped IPv6 literals excepted).
fn parse_host(family: i32, host: &Bound<'_, PyAny>, out: *mut libc::c_void) -> bool {
    let Ok(host) = host.cast::<PyString>() else {
        return false;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let bytes = host.as_bytes();
    // Longest numeric form: an IPv6 address with an embedded IPv4 one (45 characters).
    let mut buf = [0u8; 64];
    if bytes.is_empty() || bytes.len() >= buf.len() || bytes.iter().any(|&b| b == 0 || b == b'%') {
        return false;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `buf` is NUL-terminated; `out` points to an in_addr (AF_INET) or in6_addr
    // (AF_INET6) inside a zeroed sockaddr_storage.
    unsafe { inet_pton(family, buf.as_ptr() as *const libc::c_char, out) == 1 }
}

/// An exact Python int within `lo..=hi`.
fn small_int(v: &Bound<'_, PyAny>, lo: i64, hi: i64) -> Option<i64> {
    let v = v.cast_exact::<PyInt>().ok()?;
    let v: i64 = v.extract().ok()?;
    (lo..=hi).contains(&v).then_some(v)
}

/// Converts `(host, port)` (AF_INET) or `(host, port[, flowinfo[, scope_id]])` (AF_INET6) with
/// a numeric host natively; `None` means: let the socket module do it.
fn parse_inet(family: i32, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    let t = addr.cast::<PyTuple>().ok()?;
    let n = t.len();
    let mut sa = SockAddr::zeroed();
    match family {
        libc::AF_INET if n == 2 => {
            let port = small_int(&t.get_item(1).ok()?, 0, 0xffff)?;
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut sa.storage as *mut _ as *mut libc::sockaddr_in) };
            if !parse_host(
                family,
                &t.get_item(0).ok()?,
                &mut sin.sin_addr as *mut _ as *mut libc::c_void,
            ) {
                return None;
            }
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = (port as u16).to_be();
            sa.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            Some(sa)
        }
        libc::AF_INET6 if (2..=4).contains(&n) => {
            let port = small_int(&t.get_item(1).ok()?, 0, 0xffff)?;
            let flowinfo = match n {
                2 => 0,
                _ => small_int(&t.get_item(2).ok()?, 0, 0xfffff)?,
            };
            let scope_id = match n {
                4 => small_int(&t.get_item(3).ok()?, 0, u32::MAX as i64)?,
                _ => 0,
            };
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut sa.storage as *mut _ as *mut libc::sockaddr_in6) };
            if !parse_host(
                family,
                &t.get_item(0).ok()?,
                &mut sin6.sin6_addr as *mut _ as *mut libc::c_void,
            ) {
                return None;
            }
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = (port as u16).to_be();
            sin6.sin6_flowinfo = (flowinfo as u32).to_be();
            sin6.sin6_scope_id = scope_id as u32;
            sa.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            Some(sa)
        }
        _ => None,
    }
}

/// `inet_ntop`, as the socket module formats IP addresses.
fn ntop(py: Python<'_>, family: i32, src: *const libc::c_void) -> PyResult<Bound<'_, PyString>> {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `src` points to an in_addr/in6_addr matching `family`; `buf` is writable for
    // its length, which exceeds INET6_ADDRSTRLEN.
    let p = unsafe { inet_ntop(family, src, buf.as_mut_ptr(), buf.len() as libc::socklen_t) };
    if p.is_null() {
        return Err(os_error_from(errno()));
    }
    // SAFETY: on success inet_ntop wrote a NUL-terminated string into `buf`.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(PyString::new(py, &s.to_string_lossy()))
}

/// A kernel socket address as a Python object, exactly as CPython's `makesockaddr` builds it
/// for `socket.recvfrom`: `None` for an empty address (an unnamed Unix socket),
/// `(host, port)` for AF_INET, `(host, port, flowinfo, scope_id)` for AF_INET6; for AF_UNIX a
/// `str` path (`''` for an address without one), or `bytes` for an abstract name (leading NUL
/// included); `(family, sa_data)` for any other family.
fn sockaddr_to_py(py: Python<'_>, sa: &SockAddr) -> PyResult<Py<PyAny>> {
    let len = sa.len();
    if len == 0 {
        return Ok(py.None());
    }
    let family = i32::from(sa.storage.ss_family);
    match family {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in (family AF_INET); storage is aligned.
            let sin = unsafe { &*(sa.as_ptr() as *const libc::sockaddr_in) };
            let host = ntop(py, family, &sin.sin_addr as *const _ as *const libc::c_void)?;
            let port = u16::from_be(sin.sin_port);
            Ok((host, port).into_pyobject(py)?.into_any().unbind())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6 (family AF_INET6); storage is aligned.
            let sin6 = unsafe { &*(sa.as_ptr() as *const libc::sockaddr_in6) };
            let host = ntop(
                py,
                family,
                &sin6.sin6_addr as *const _ as *const libc::c_void,
            )?;
            let port = u16::from_be(sin6.sin6_port);
            let flowinfo = u32::from_be(sin6.sin6_flowinfo);
            Ok((host, port, flowinfo, sin6.sin6_scope_id)
                .into_pyobject(py)?
                .into_any()
                .unbind())
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel filled a sockaddr_un (family AF_UNIX); storage is aligned
            // and larger than sockaddr_un.
            let sun = unsafe { &*(sa.as_ptr() as *const libc::sockaddr_un) };
            let offset = size_of::<libc::sa_family_t>();
            let path_len = len.saturating_sub(offset).min(sun.sun_path.len());
            // SAFETY: `sun_path` has at least `path_len` bytes.
            let path: &[u8] =
                unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr() as *const u8, path_len) };
            if !path.is_empty() && path[0] == 0 {
                return Ok(PyBytes::new(py, path).into_any().unbind());
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            // SAFETY: `path[..end]` is valid for reads; the call returns a new reference or
            // NULL with an exception set.
            let s = unsafe {
                ffi::PyUnicode_DecodeFSDefaultAndSize(
                    path.as_ptr() as *const libc::c_char,
                    end as ffi::Py_ssize_t,
                )
            };
            // SAFETY: `s` is a new reference or NULL (exception set).
            Ok(unsafe { Bound::from_owned_ptr_or_err(py, s) }?.unbind())
        }
        _ => {
            // SAFETY: every sockaddr starts with a sockaddr header; storage is large enough.
            let raw = unsafe { &*sa.as_ptr() };
            // SAFETY: sa_data is a plain byte array of its declared length.
            let data: &[u8] = unsafe {
                std::slice::from_raw_parts(raw.sa_data.as_ptr() as *const u8, raw.sa_data.len())
            };
            Ok((family, PyBytes::new(py, data))
                .into_pyobject(py)?
                .into_any()
                .unbind())
        }
    }
}

impl DatagramTransport {
    fn owner(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state
            .with(py, |s| s.owner.as_ref().map(|o| o.clone_ref(py)))
    }

    /// Calls a method of the Python wrapper (cold paths: errors, connection_lost).
    fn call_owner<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        if let Some(owner) = slf.get().owner(slf.py())? {
            owner.bind(slf.py()).call_method1(name, args)?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: report (Python side) and force-close. Only exceptions that must
    /// escape the loop (KeyboardInterrupt, SystemExit) are returned.
    fn fatal(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if passes_through(py, &err) {
            return Err(err);
        }
        Self::call_owner(
            slf,
            intern!(py, "_fatal_error"),
            (err.into_value(py), message),
        )
    }

    /// An exception escaping a step the loop runs on the transport's behalf (asyncio's
    /// `_read_ready` / `_sendto_ready` callbacks): reported through the loop's exception
    /// handler, as a failing callback is. KeyboardInterrupt and SystemExit propagate.
    fn report_callback_error(slf: &Bound<'_, Self>, err: PyErr, step: &str) -> PyResult<()> {
        let py = slf.py();
        if passes_through(py, &err) {
            return Err(err);
        }
        Self::call_owner(
            slf,
            intern!(py, "_report_callback_error"),
            (step, err.into_value(py)),
        )
    }

    /// `protocol.error_received(exc)`; its own exceptions are returned to the caller.
    fn error_received(slf: &Bound<'_, Self>, exc: PyErr) -> PyResult<()> {
        let py = slf.py();
        let proto = slf
            .get()
            .state
            .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?;
        if let Some(p) = proto {
            p.bind(py)
                .call_method1(intern!(py, "error_received"), (exc.into_value(py),))?;
        }
        Ok(())
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let (Some(owner), Some(lp)) = (slf.get().owner(py)?, slf.get().loop_core(py)?) else {
            return Ok(());
        };
        let cb = owner
            .bind(py)
            .getattr(intern!(py, "_call_connection_lost"))?;
        lp.get()
            .schedule_soon(py, &cb, &PyTuple::new(py, [exc])?, None)
    }

    fn call_protocol_flow(
        slf: &Bound<'_, Self>,
        proto: Py<PyAny>,
        method: &Bound<'_, PyString>,
        what: &str,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Err(e) = proto.bind(py).call_method0(method) {
            if passes_through(py, &e) {
                return Err(e);
            }
            Self::call_owner(
                slf,
                intern!(py, "_report_protocol_error"),
                (format!("protocol.{what}() failed"), e.into_value(py)),
            )?;
        }
        Ok(())
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let proto = slf.get().state.with(py, |s| {
            if s.buffer_size <= s.high || s.protocol_paused {
                return None;
            }
            s.protocol_paused = true;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        })?;
        match proto {
            Some(p) => {
                Self::call_protocol_flow(slf, p, intern!(py, "pause_writing"), "pause_writing")
            }
            None => Ok(()),
        }
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let proto = slf.get().state.with(py, |s| {
            if !s.protocol_paused || s.buffer_size > s.low {
                return None;
            }
            s.protocol_paused = false;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        })?;
        match proto {
            Some(p) => {
                Self::call_protocol_flow(slf, p, intern!(py, "resume_writing"), "resume_writing")
            }
            None => Ok(()),
        }
    }

    /// One send attempt of `data` to `dest`. `data_obj` is the caller's object for the
    /// Python path (created from `data` when absent).
    fn try_send(
        slf: &Bound<'_, Self>,
        data: &[u8],
        data_obj: Option<&Bound<'_, PyAny>>,
        dest: &Dest,
    ) -> PyResult<Sent> {
        let py = slf.py();
        let fd = slf.get().state.with(py, |s| s.io.fd)?;
        match dest {
            Dest::Connected if fd >= 0 => Ok(send_native(fd, data, None)),
            Dest::Native(sa) if fd >= 0 => Ok(send_native(fd, data, Some(sa))),
            Dest::Python(addr) => {
                let sock = slf
                    .get()
                    .state
                    .with(py, |s| s.sock.as_ref().map(|o| o.clone_ref(py)))?;
                let Some(sock) = sock else {
                    return Ok(Sent::OsError(os_error_from(libc::EBADF)));
                };
                let owned;
                let obj = match data_obj {
                    Some(o) => o,
                    None => {
                        owned = PyBytes::new(py, data).into_any();
                        &owned
                    }
                };
                match sock
                    .bind(py)
                    .call_method1(intern!(py, "sendto"), (obj, addr.bind(py)))
                {
                    Ok(_) => Ok(Sent::Done),
                    Err(e) => Ok(classify(py, e)),
                }
            }
            _ => Ok(Sent::OsError(os_error_from(libc::EBADF))),
        }
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let drained = slf.get().state.with(py, |s| {
            if s.io.closing {
                return None;
            }
            s.io.closing = true;
            let drained = s.queue.is_empty();
            if drained {
                s.conn_lost += 1;
            }
            Some(drained)
        })?;
        let Some(drained) = drained else {
            return Ok(());
        };
        watch(slf, false, false)?;
        if drained {
            watch(slf, true, false)?;
            Self::schedule_connection_lost(slf, py.None())?;
        }
        Ok(())
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let res = slf.get().state.with(py, |s| {
            if s.conn_lost > 0 {
                return None;
            }
            let dropped: Vec<Pending> = s.queue.drain(..).collect();
            s.buffer_size = 0;
            let first = !s.io.closing;
            s.io.closing = true;
            s.conn_lost += 1;
            Some((first, dropped))
        })?;
        let Some((first_close, dropped)) = res else {
            return Ok(());
        };
        drop(dropped);
        watch(slf, true, false)?;
        if first_close {
            watch(slf, false, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }

    /// The body of [`on_readable`]; errors not handled here are reported by the caller.
    fn read_ready(slf: &Bound<'_, Self>, rbuf: &mut Vec<u8>) -> PyResult<()> {
        let py = slf.py();
        let st = slf.get().state.with(py, |s| {
            if !s.io.reading || s.conn_lost > 0 || s.io.fd < 0 {
                None
            } else {
                Some(s.io.fd)
            }
        })?;
        let Some(fd) = st else { return Ok(()) };
        if rbuf.len() < MAX_READ {
            rbuf.resize(MAX_READ, 0);
        }
        let mut sa = SockAddr::zeroed();
        let n = loop {
            // SAFETY: `rbuf` has MAX_READ writable bytes; `sa.storage` is writable for `sa.len`
            // bytes, which the kernel updates to the address length.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    rbuf.as_mut_ptr() as *mut libc::c_void,
                    MAX_READ,
                    0,
                    &mut sa.storage as *mut _ as *mut libc::sockaddr,
                    &mut sa.len,
                )
            };
            if n >= 0 {
                crate::metrics::received(n as usize);
                break n as usize;
            }
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            if would_block(e) {
                return Ok(());
            }
            return Self::error_received(slf, os_error_from(e));
        };
        let data = PyBytes::new(py, &rbuf[..n.min(MAX_READ)]);
        let addr = Self::peer_object(slf, &sa)?;
        let proto = slf
            .get()
            .state
            .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?;
        if let Some(proto) = proto {
            proto
                .bind(py)
                .call_method1(intern!(py, "datagram_received"), (data, addr))?;
        }
        Ok(())
    }

    /// The Python form of a sender's address, reusing the last one when it is the same peer.
    fn peer_object(slf: &Bound<'_, Self>, sa: &SockAddr) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if sa.len() == 0 {
            return Ok(py.None());
        }
        let cached = slf.get().state.with(py, |s| match &s.last_peer {
            Some((k, o)) if k.as_bytes() == sa.as_bytes() => Some(o.clone_ref(py)),
            _ => None,
        })?;
        if let Some(o) = cached {
            return Ok(o);
        }
        let obj = sockaddr_to_py(py, sa)?;
        let old = slf
            .get()
            .state
            .with(py, |s| s.last_peer.replace((*sa, obj.clone_ref(py))))?;
        drop(old);
        Ok(obj)
    }

    /// The body of [`on_writable`]: asyncio's `_sendto_ready`.
    fn sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let go = slf
            .get()
            .state
            .with(py, |s| s.io.writing && s.conn_lost == 0 && s.io.fd >= 0)?;
        if !go {
            return Ok(());
        }
        loop {
            let item = slf.get().state.with(py, |s| {
                let p = s.queue.pop_front()?;
                s.buffer_size = s.buffer_size.saturating_sub(s.entry_size(&p));
                Some(p)
            })?;
            let Some(p) = item else { break };
            match Self::try_send(slf, &p.data, None, &p.dest)? {
                Sent::Done => {}
                Sent::WouldBlock => {
                    // Try again later.
                    slf.get().state.with(py, |s| {
                        s.buffer_size += s.entry_size(&p);
                        s.queue.push_front(p);
                    })?;
                    break;
                }
                Sent::OsError(e) => return Self::error_received(slf, e),
                Sent::Fatal(e) => {
                    return Self::fatal(slf, e, "Fatal write error on datagram transport")
                }
            }
        }
        // May queue more.
        Self::maybe_resume_protocol(slf)?;
        let (empty, finish) = slf.get().state.with(py, |s| {
            let empty = s.queue.is_empty();
            let finish = empty && s.io.closing && s.conn_lost == 0;
            if finish {
                s.conn_lost += 1;
            }
            (empty, finish)
        })?;
        if empty {
            watch(slf, true, false)?;
            if finish {
                Self::call_owner(slf, intern!(py, "_call_connection_lost"), (py.None(),))?;
            }
        }
        Ok(())
    }
}

/// The fd is readable: receive one datagram and hand it to the protocol, in the context
/// reading was started in.
pub(crate) fn on_readable(slf: &Bound<'_, DatagramTransport>, rbuf: &mut Vec<u8>) -> PyResult<()> {
    let res = in_direction_context(slf, false, || DatagramTransport::read_ready(slf, rbuf));
    match res {
        Ok(()) => Ok(()),
        Err(e) => DatagramTransport::report_callback_error(slf, e, "_read_ready"),
    }
}

/// The fd is writable: send what is queued, until the kernel refuses more, in the context the
/// writer was registered in.
pub(crate) fn on_writable(slf: &Bound<'_, DatagramTransport>) -> PyResult<()> {
    let res = in_direction_context(slf, true, || DatagramTransport::sendto_ready(slf));
    match res {
        Ok(()) => Ok(()),
        Err(e) => DatagramTransport::report_callback_error(slf, e, "_sendto_ready"),
    }
}

impl NativeTransport for DatagramTransport {
    fn interest<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Interest) -> R) -> PyResult<R> {
        self.state.with(py, |s| f(&mut s.io))
    }

    fn loop_core<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, LoopCore>>> {
        self.state
            .with(py, |s| s.loop_.as_ref().map(|l| l.bind(py).clone()))
    }

    fn as_io(slf: &Bound<'_, Self>) -> Io {
        Io::Datagram(slf.clone().unbind())
    }
}

#[pymethods]
impl DatagramTransport {
    /// `address`: the remote address checked by `sendto` (None for none); `connected`: the
    /// socket has a peer (send with `send`); `send_empty`/`header_size`: the running Python's
    /// asyncio behaviour for empty datagrams and buffer accounting.
    #[new]
    #[pyo3(signature = (lp, fd, family, sock, owner, address, connected, send_empty=false, header_size=0))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        lp: Bound<'_, LoopCore>,
        fd: RawFd,
        family: i32,
        sock: Py<PyAny>,
        owner: Py<PyAny>,
        address: Option<Py<PyAny>>,
        connected: bool,
        send_empty: bool,
        header_size: usize,
    ) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        Ok(DatagramTransport {
            state: GilCell::new(DatagramState {
                io: Interest::new(fd),
                family,
                connected,
                loop_: Some(lp.unbind()),
                owner: Some(owner),
                sock: Some(sock),
                protocol: None,
                address,
                queue: VecDeque::new(),
                buffer_size: 0,
                header_size,
                send_empty,
                protocol_paused: false,
                conn_lost: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                last_peer: None,
            }),
        })
    }

    fn _set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let old = self
            .state
            .with(py, |s| s.protocol.replace(protocol.clone().unbind()))?;
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.state.with(py, |s| {
            s.protocol
                .as_ref()
                .map_or_else(|| py.None(), |p| p.clone_ref(py))
        })
    }

    /// Starts reading unless paused or closing (asyncio defers this to after connection_made).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        start_reading(slf)
    }

    fn is_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
        is_reading(slf)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        set_reading_paused(slf, true)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        set_reading_paused(slf, false)
    }

    pub(crate) fn is_closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.io.closing)
    }

    /// asyncio's `sendto`: checks, then an immediate send when nothing is queued, else queue.
    #[pyo3(signature = (data, addr=None))]
    pub(crate) fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if !is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view;
        let copy;
        // A buffer the socket refuses (non-contiguous): asyncio hands it to the socket, which
        // raises; the error is kept for that moment, and a copy is what gets queued.
        let mut refused = None;
        let bytes: &[u8] = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes(),
            Err(_) => match ByteView::new(data, false) {
                Ok(v) => {
                    view = v;
                    view.as_slice()
                }
                Err(e) if passes_through(py, &e) => return Err(e),
                Err(e) => {
                    refused = Some(e);
                    copy = py.get_type::<PyBytes>().call1((data,))?;
                    copy.cast::<PyBytes>()?.as_bytes()
                }
            },
        };
        let (send_empty, address) = slf.get().state.with(py, |s| {
            (s.send_empty, s.address.as_ref().map(|a| a.clone_ref(py)))
        })?;
        if bytes.is_empty() && !send_empty {
            return Ok(());
        }
        let none = py.None().into_bound(py);
        let mut addr = addr.cloned().unwrap_or(none);
        if let Some(address) = address {
            let address = address.into_bound(py);
            if !(addr.is_none() || addr.is(&address) || addr.eq(&address)?) {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address;
        }
        // One look at the state: lost connection, destination (connected, or the last
        // sender's address object), and whether anything is queued.
        let pre = slf.get().state.with(py, |s| {
            if s.conn_lost > 0 {
                let lost = s.conn_lost;
                s.conn_lost += 1;
                return Err(lost);
            }
            let dest = if s.connected {
                Some(Dest::Connected)
            } else {
                s.last_peer
                    .as_ref()
                    .and_then(|(sa, o)| o.is(&addr).then_some(Dest::Native(*sa)))
            };
            Ok((dest, s.family, s.queue.is_empty()))
        })?;
        let (dest, family, idle) = match pre {
            Ok(pre) => pre,
            Err(lost) => {
                if lost >= CONNLOST_WARN_THRESHOLD {
                    let logger = py
                        .import("asyncio.base_events")?
                        .getattr(intern!(py, "logger"))?;
                    logger.call_method1("warning", ("socket.send() raised exception.",))?;
                }
                return Ok(());
            }
        };
        let dest = match dest {
            Some(d) => d,
            None => match parse_inet(family, &addr) {
                Some(sa) => Dest::Native(sa),
                None => Dest::Python(addr.unbind()),
            },
        };
        if idle {
            // Attempt to send it right away first.
            let sent = match refused {
                Some(e) => Sent::Fatal(e),
                None => Self::try_send(slf, bytes, Some(data), &dest)?,
            };
            match sent {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => watch(slf, true, true)?,
                Sent::OsError(e) => return Self::error_received(slf, e),
                Sent::Fatal(e) => {
                    return Self::fatal(slf, e, "Fatal write error on datagram transport")
                }
            }
        }
        // Queue a copy: the caller may reuse a mutable buffer.
        let p = Pending {
            data: bytes.to_vec(),
            dest,
        };
        slf.get().state.with(py, |s| {
            s.buffer_size += s.entry_size(&p);
            s.queue.push_back(p);
        })?;
        Self::maybe_pause_protocol(slf)
    }

    #[pyo3(name = "close")]
    fn py_close(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close(slf)
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, slf.py().None())
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.state.with(py, |s| s.buffer_size)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(usize, usize)> {
        self.state.with(py, |s| (s.low, s.high))
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let high = high.filter(|h| !h.is_none());
        let low = low.filter(|l| !l.is_none());
        let to_i = |v: &Bound<'_, PyAny>| v.extract::<i64>();
        let (h, l) = match (high, low) {
            (None, None) => (DEFAULT_HIGH_WATER as i64, (DEFAULT_HIGH_WATER / 4) as i64),
            (None, Some(l)) => {
                let l = to_i(l)?;
                (4 * l, l)
            }
            (Some(h), None) => {
                let h = to_i(h)?;
                (h, h.div_euclid(4))
            }
            (Some(h), Some(l)) => (to_i(h)?, to_i(l)?),
        };
        if !(h >= l && l >= 0) {
            let show = |v: Option<&Bound<'_, PyAny>>, d: i64| -> PyResult<String> {
                Ok(match v {
                    Some(v) => v.repr()?.to_string(),
                    None => d.to_string(),
                })
            };
            return Err(PyValueError::new_err(format!(
                "high ({}) must be >= low ({}) must be >= 0",
                show(high, h)?,
                show(low, l)?
            )));
        }
        slf.get().state.with(py, |s| {
            s.high = h as usize;
            s.low = l as usize;
        })?;
        Self::maybe_pause_protocol(slf)
    }

    /// Forgets the socket, the loop and the protocol once the connection is lost. The
    /// Python side closes the socket itself.
    fn _detach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        watch(slf, false, false)?;
        watch(slf, true, false)?;
        let refs = slf.get().state.with(py, |s| {
            s.io.fd = -1;
            if s.conn_lost == 0 {
                s.conn_lost = 1;
            }
            s.io.closing = true;
            s.take_refs()
        })?;
        drop(refs);
        Ok(())
    }

    #[getter]
    fn _sock_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        self.state.with(py, |s| s.io.fd)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.io.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> PyResult<u32> {
        self.state.with(py, |s| s.conn_lost)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.io.paused)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.protocol_paused)
    }

    /// `(reading registered, writing registered)`, for the wrapper's repr.
    fn _polling(&self, py: Python<'_>) -> PyResult<(bool, bool)> {
        self.state.with(py, |s| (s.io.reading, s.io.writing))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector calls tp_traverse with the GIL held; the token is only used
        // to enter our own cell, which refuses (and we skip) if it is in use.
        let py = unsafe { Python::assume_attached() };
        let res = self.state.try_with(py, |s| -> Result<(), PyTraverseError> {
            for o in [&s.owner, &s.sock, &s.protocol, &s.address]
                .into_iter()
                .flatten()
            {
                visit.call(o)?;
            }
            for o in [&s.io.read_ctx, &s.io.write_ctx].into_iter().flatten() {
                visit.call(o)?;
            }
            if let Some((_, o)) = &s.last_peer {
                visit.call(o)?;
            }
            for p in &s.queue {
                if let Dest::Python(a) = &p.dest {
                    visit.call(a)?;
                }
            }
            if let Some(l) = &s.loop_ {
                visit.call(l)?;
            }
            Ok(())
        });
        res.unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        // SAFETY: tp_clear runs with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let refs = self.state.try_with(py, |s| s.take_refs());
        drop(refs);
    }
}
