//! The stream transport (TCP and Unix sockets): the read path, the write path and flow control
//! of asyncio's socket transport, in Rust.
//!
//! The loop drives a transport directly: when its fd is readable or writable, the reactor queues
//! the transport itself (no callback object) and the iteration calls [`on_readable`] or
//! [`on_writable`]. Reads land in the loop's shared buffer and reach `protocol.data_received`
//! as `bytes` (or go straight into the buffer a `BufferedProtocol` hands out). A write into an
//! empty buffer is sent at once; what the kernel does not take is copied into one contiguous
//! buffer that leaves in a single `send` when the socket becomes writable, so every write made
//! meanwhile goes out together. `writelines` sends its pieces with one `sendmsg` (writev).
//!
//! The Python wrapper (`ferroloop._transports.SocketTransport`) owns the socket object, the
//! extra info, the server bookkeeping and the cold paths: `_fatal_error` (error reporting) and
//! `_call_connection_lost`. This module calls them by name.

use std::os::fd::RawFd;

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::gilcell::GilCell;
use crate::reactor::Io;
use crate::transports::{
    in_direction_context, is_reading, retry_eintr, set_reading_paused, start_reading, watch,
    would_block, Interest, NativeTransport,
};

/// Bytes read per `recv`, as asyncio's `max_size`.
const MAX_READ: usize = 256 * 1024;
/// asyncio's default high-water mark; the low one is a quarter of it.
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// After this many writes to a lost connection, asyncio starts warning.
const CONNLOST_WARN_THRESHOLD: u32 = 5;

struct StreamState {
    /// The fd, watched directions, pause/closing flags and callback contexts.
    io: Interest,
    loop_: Option<Py<LoopCore>>,
    /// The Python wrapper (`SocketTransport`), passed to protocols and error reports.
    owner: Option<Py<PyAny>>,
    /// The protocol. Its methods are looked up when they are called, as asyncio does: a
    /// protocol may lack the ones it never needs (a write-only protocol has no
    /// `data_received`) or replace them on the instance while connected.
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    /// The protocol is ferroloop's TLS protocol: received bytes go to [`crate::tls::feed`].
    tls: bool,
    /// Pending output, allocated only while there is some (most connections never buffer,
    /// and one that did gives the memory back as soon as it has drained).
    out: Option<Box<OutBuf>>,
    eof: bool,
    protocol_paused: bool,
    conn_lost: u32,
    high: usize,
    low: usize,
    /// `loop.sendfile` waits for the buffer to drain on this future.
    empty_waiter: Option<Py<PyAny>>,
}

/// Bytes waiting to be sent: `data[off..]`.
#[derive(Default)]
struct OutBuf {
    data: Vec<u8>,
    off: usize,
}

impl StreamState {
    fn pending(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.data.len() - o.off)
    }

    /// The bytes waiting to be sent.
    fn pending_bytes(&self) -> &[u8] {
        self.out.as_ref().map_or(&[], |o| &o.data[o.off..])
    }

    fn push_output(&mut self, data: &[u8]) {
        self.out
            .get_or_insert_with(Box::default)
            .data
            .extend_from_slice(data);
    }

    fn clear_output(&mut self) {
        self.out = None;
    }

    fn consume(&mut self, n: usize) {
        let Some(o) = self.out.as_mut() else {
            return;
        };
        o.off += n;
        if o.off >= o.data.len() {
            self.out = None;
        } else if o.off > 64 * 1024 && o.off * 2 > o.data.len() {
            o.data.drain(..o.off);
            o.off = 0;
        }
    }

    fn take_refs(&mut self) -> Vec<Py<PyAny>> {
        let mut out = Vec::new();
        out.extend(self.owner.take());
        out.extend(self.protocol.take());
        out.extend(self.empty_waiter.take());
        out.extend(self.io.read_ctx.take());
        out.extend(self.io.write_ctx.take());
        out.extend(self.io.fixed_ctx.take());
        if let Some(l) = self.loop_.take() {
            out.push(l.into_any());
        }
        out
    }
}

/// The native core of a stream transport.
#[pyclass(frozen, module = "ferroloop._ferroloop", name = "StreamTransport")]
pub struct StreamTransport {
    state: GilCell<StreamState>,
}

pub(crate) fn passes_through(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyKeyboardInterrupt>(py) || e.is_instance_of::<PySystemExit>(py)
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A borrowed contiguous view of a bytes-like object.
pub(crate) struct ByteView {
    view: ffi::Py_buffer,
}

impl ByteView {
    pub(crate) fn new(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        // SAFETY: `view` is valid writable memory for a Py_buffer; on success CPython fills it
        // and we release it in Drop; on failure an exception is set and nothing is held.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: PyObject_GetBuffer succeeded, so the struct is initialized.
        Ok(ByteView {
            view: unsafe { view.assume_init() },
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.view.len.max(0) as usize
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.len() == 0 {
            return &[];
        }
        // SAFETY: a simple buffer is `len` contiguous bytes at `buf`, valid while the view is
        // held (until Drop); we only read.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.view.buf as *mut u8
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: the view was obtained by a successful PyObject_GetBuffer and is released
        // exactly once. Views are only created and dropped with the GIL held.
        unsafe { ffi::PyBuffer_Release(&mut self.view) };
    }
}

pub(crate) fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
}

fn send_some(fd: RawFd, data: &[u8]) -> Result<usize, i32> {
    if data.is_empty() {
        return Ok(0);
    }
    // SAFETY: `data` is a valid slice for the duration of the call; MSG_NOSIGNAL turns a
    // write to a closed peer into EPIPE instead of SIGPIPE.
    let n = retry_eintr(|| unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    });
    if n < 0 {
        let e = errno();
        if would_block(e) {
            Ok(0)
        } else {
            Err(e)
        }
    } else {
        crate::metrics::sent(n as usize);
        Ok(n as usize)
    }
}

pub(crate) fn os_error_from(code: i32) -> PyErr {
    os_error(std::io::Error::from_raw_os_error(code))
}

impl StreamTransport {
    /// Calls a method of the Python wrapper (cold paths: errors, connection_lost).
    fn call_owner<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, pyo3::types::PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        let py = slf.py();
        let owner = slf
            .get()
            .state
            .with(py, |s| s.owner.as_ref().map(|o| o.clone_ref(py)))?;
        if let Some(owner) = owner {
            owner.bind(py).call_method1(name, args)?;
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

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let owner = slf
            .get()
            .state
            .with(py, |s| s.owner.as_ref().map(|o| o.clone_ref(py)))?;
        let (Some(owner), Some(lp)) = (owner, slf.get().loop_core(py)?) else {
            return Ok(());
        };
        let cb = owner
            .bind(py)
            .getattr(intern!(py, "_call_connection_lost"))?;
        let ctx = slf.get().state.with(py, |s| s.io.callback_context(py))?;
        let ctx = ctx.map(|c| c.into_bound(py));
        lp.get()
            .schedule_soon(py, &cb, &PyTuple::new(py, [exc])?, ctx.as_ref())
    }

    /// Flow control towards the protocol: `pause_writing()` once the buffer is above the
    /// high-water mark (`pause`), `resume_writing()` once it is back at or below the low one.
    /// A failing protocol method is reported, as asyncio does, and does not stop the transport.
    fn flow_control(slf: &Bound<'_, Self>, pause: bool) -> PyResult<()> {
        let py = slf.py();
        let proto = slf.get().state.with(py, |s| {
            let due = if pause {
                !s.protocol_paused && s.pending() > s.high
            } else {
                s.protocol_paused && s.pending() <= s.low
            };
            if !due {
                return None;
            }
            s.protocol_paused = pause;
            s.protocol.as_ref().map(|p| p.clone_ref(py))
        })?;
        let Some(p) = proto else { return Ok(()) };
        let (method, message) = if pause {
            (
                intern!(py, "pause_writing"),
                "protocol.pause_writing() failed",
            )
        } else {
            (
                intern!(py, "resume_writing"),
                "protocol.resume_writing() failed",
            )
        };
        match p.bind(py).call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if passes_through(py, &e) => Err(e),
            Err(e) => Self::call_owner(
                slf,
                intern!(py, "_report_protocol_error"),
                (message, e.into_value(py)),
            ),
        }
    }

    /// End of input: `eof_received()` decides between half-open and close.
    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let proto = slf
            .get()
            .state
            .with(py, |s| s.protocol.as_ref().map(|p| p.clone_ref(py)))?;
        let Some(proto) = proto else { return Ok(()) };
        match proto.bind(py).call_method0(intern!(py, "eof_received")) {
            Err(e) => Self::fatal(slf, e, "Fatal error: protocol.eof_received() call failed."),
            Ok(keep_open) => {
                if keep_open.is_truthy()? {
                    watch(slf, false, false)
                } else {
                    Self::close(slf)
                }
            }
        }
    }

    /// Appends to the output buffer (copying: the caller may reuse a mutable buffer).
    fn buffer_output(slf: &Bound<'_, Self>, data: &[u8]) -> PyResult<()> {
        let py = slf.py();
        slf.get().state.with(py, |s| s.push_output(data))?;
        watch(slf, true, true)?;
        Self::flow_control(slf, true)
    }

    /// Checks shared by `write` and `writelines`, in asyncio's order: after `write_eof`,
    /// during `sendfile`, nothing to write, connection lost. `Ok(false)`: drop the data
    /// silently (asyncio warns after a few writes to a lost connection).
    /// `lines`: called by `writelines`, which asyncio 3.12+ names in these errors (3.11's
    /// writelines went through write).
    fn write_allowed(slf: &Bound<'_, Self>, empty: bool, lines: bool) -> PyResult<bool> {
        let py = slf.py();
        let (eof, sendfile) = slf
            .get()
            .state
            .with(py, |s| (s.eof, s.empty_waiter.is_some()))?;
        let method = || {
            if lines && py.version_info() >= (3, 12) {
                "writelines"
            } else {
                "write"
            }
        };
        if eof {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {}() after write_eof()",
                method()
            )));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {}; sendfile is in progress",
                method()
            )));
        }
        if empty {
            return Ok(false);
        }
        let lost = slf.get().state.with(py, |s| {
            // A transport that already let go of its socket (connection_lost ran after a
            // close() that flushed the buffer) counts as lost too: nothing it is given can be
            // sent, and buffering it would grow for ever. asyncio raises AttributeError from
            // its missing socket there; ferroloop drops the data as after any loss.
            if s.io.fd < 0 && s.conn_lost == 0 {
                s.conn_lost = 1;
            }
            let lost = s.conn_lost;
            if lost > 0 {
                s.conn_lost += 1;
            }
            lost
        })?;
        if lost == 0 {
            return Ok(true);
        }
        if lost >= CONNLOST_WARN_THRESHOLD {
            let logger = py
                .import("asyncio.base_events")?
                .getattr(intern!(py, "logger"))?;
            logger.call_method1("warning", ("socket.send() raised exception.",))?;
        }
        Ok(false)
    }

    fn shutdown_write(&self, py: Python<'_>) -> PyResult<()> {
        let fd = self.state.with(py, |s| s.io.fd)?;
        if fd < 0 {
            return Ok(());
        }
        // SAFETY: plain syscall on our own socket fd.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
            return Err(os_error_from(errno()));
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let drained = slf.get().state.with(py, |s| {
            if s.io.closing {
                return None;
            }
            s.io.closing = true;
            let drained = s.pending() == 0;
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
        let first_close = slf.get().state.with(py, |s| {
            if s.conn_lost > 0 {
                return None;
            }
            s.clear_output();
            let first = !s.io.closing;
            s.io.closing = true;
            s.conn_lost += 1;
            Some(first)
        })?;
        let Some(first_close) = first_close else {
            return Ok(());
        };
        watch(slf, true, false)?;
        if first_close {
            watch(slf, false, false)?;
        }
        Self::schedule_connection_lost(slf, exc)
    }
}

/// The fd is readable: read once and hand the data to the protocol.
pub(crate) fn on_readable(slf: &Bound<'_, StreamTransport>, rbuf: &mut Vec<u8>) -> PyResult<()> {
    in_direction_context(slf, false, || read_ready(slf, rbuf))
}

/// Where received bytes go, per the protocol's kind (decided at `set_protocol`).
enum Reader {
    /// `protocol.data_received(bytes)`.
    Copy(Py<PyAny>),
    /// A `BufferedProtocol`: `get_buffer()`, then `buffer_updated(n)`.
    Buffered(Py<PyAny>),
    /// ferroloop's TLS protocol: the bytes go to its native record path.
    Tls(Py<PyAny>),
}

fn read_ready(slf: &Bound<'_, StreamTransport>, rbuf: &mut Vec<u8>) -> PyResult<()> {
    let py = slf.py();
    let st = slf.get().state.with(py, |s| {
        if !s.io.reading || s.conn_lost > 0 || s.io.fd < 0 {
            return None;
        }
        let protocol = s.protocol.as_ref()?.clone_ref(py);
        let reader = if s.tls {
            Reader::Tls(protocol)
        } else if s.buffered {
            Reader::Buffered(protocol)
        } else {
            Reader::Copy(protocol)
        };
        Some((s.io.fd, reader))
    })?;
    let Some((fd, reader)) = st else {
        return Ok(());
    };
    if let Reader::Buffered(protocol) = &reader {
        return read_into_protocol_buffer(slf, fd, protocol.bind(py));
    }
    if rbuf.len() < MAX_READ {
        rbuf.resize(MAX_READ, 0);
    }
    // SAFETY: `rbuf` has MAX_READ writable bytes; plain non-blocking recv on our socket.
    let n = retry_eintr(|| unsafe {
        libc::recv(fd, rbuf.as_mut_ptr() as *mut libc::c_void, MAX_READ, 0)
    });
    if n < 0 {
        let e = errno();
        if would_block(e) {
            return Ok(());
        }
        return StreamTransport::fatal(
            slf,
            os_error_from(e),
            "Fatal read error on socket transport",
        );
    }
    if n == 0 {
        return StreamTransport::on_eof(slf);
    }
    crate::metrics::received(n as usize);
    let received = &rbuf[..n as usize];
    let (delivered, message) = match &reader {
        Reader::Tls(protocol) => (
            crate::tls::feed(protocol.bind(py), received),
            "Fatal error: protocol.buffer_updated() call failed.",
        ),
        Reader::Copy(protocol) => (
            protocol
                .bind(py)
                .call_method1(intern!(py, "data_received"), (PyBytes::new(py, received),))
                .map(drop),
            "Fatal error: protocol.data_received() call failed.",
        ),
        Reader::Buffered(..) => return Ok(()), // handled above
    };
    match delivered {
        Ok(()) => Ok(()),
        Err(e) => StreamTransport::fatal(slf, e, message),
    }
}

fn read_into_protocol_buffer(
    slf: &Bound<'_, StreamTransport>,
    fd: RawFd,
    protocol: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = protocol.py();
    let buf = match protocol
        .call_method1(intern!(py, "get_buffer"), (-1,))
        .and_then(|b| {
            if b.len()? == 0 {
                Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ))
            } else {
                Ok(b)
            }
        }) {
        Ok(b) => b,
        Err(e) => {
            return StreamTransport::fatal(
                slf,
                e,
                "Fatal error: protocol.get_buffer() call failed.",
            )
        }
    };
    let n = match ByteView::new(&buf, true) {
        Err(_) => {
            // The error socket.recv_into() gives for a read-only buffer, as asyncio reports it.
            let e = PyTypeError::new_err(format!(
                "recv_into() argument 1 must be read-write bytes-like object, not {}",
                buf.get_type().name()?
            ));
            return StreamTransport::fatal(slf, e, "Fatal read error on socket transport");
        }
        Ok(mut view) => {
            let len = view.len();
            // SAFETY: the writable view gives `len` bytes at `buf`, held until `view` drops.
            let ptr = view.as_mut_ptr() as *mut libc::c_void;
            let n = retry_eintr(|| unsafe { libc::recv(fd, ptr, len, 0) });
            if n < 0 {
                let e = errno();
                if would_block(e) {
                    return Ok(());
                }
                drop(view);
                return StreamTransport::fatal(
                    slf,
                    os_error_from(e),
                    "Fatal read error on socket transport",
                );
            }
            n as usize
        }
    };
    if n == 0 {
        return StreamTransport::on_eof(slf);
    }
    crate::metrics::received(n);
    if let Err(e) = protocol.call_method1(intern!(py, "buffer_updated"), (n,)) {
        return StreamTransport::fatal(
            slf,
            e,
            "Fatal error: protocol.buffer_updated() call failed.",
        );
    }
    Ok(())
}

/// The fd is writable: flush the buffer in one send.
pub(crate) fn on_writable(slf: &Bound<'_, StreamTransport>) -> PyResult<()> {
    in_direction_context(slf, true, || write_ready(slf))
}

fn write_ready(slf: &Bound<'_, StreamTransport>) -> PyResult<()> {
    let py = slf.py();
    let res = slf.get().state.with(py, |s| {
        if !s.io.writing || s.conn_lost > 0 || s.io.fd < 0 {
            return None;
        }
        let r = send_some(s.io.fd, s.pending_bytes());
        if let Ok(n) = r {
            s.consume(n);
        } else {
            s.clear_output();
        }
        Some(r)
    })?;
    match res {
        None => Ok(()),
        Some(Err(code)) => {
            watch(slf, true, false)?;
            let exc = os_error_from(code);
            let waiter = slf
                .get()
                .state
                .with(py, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?;
            let exc_obj = exc.value(py).clone().into_any().unbind();
            StreamTransport::fatal(slf, exc, "Fatal write error on socket transport")?;
            if let Some(w) = waiter {
                w.bind(py).call_method1("set_exception", (exc_obj,))?;
            }
            Ok(())
        }
        Some(Ok(_)) => {
            StreamTransport::flow_control(slf, false)?;
            let (empty, closing, eof, waiter) = slf.get().state.with(py, |s| {
                (
                    s.pending() == 0,
                    s.io.closing,
                    s.eof,
                    s.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                )
            })?;
            if !empty {
                return Ok(());
            }
            watch(slf, true, false)?;
            if let Some(w) = waiter {
                w.bind(py).call_method1("set_result", (py.None(),))?;
            }
            if closing {
                StreamTransport::call_owner(
                    slf,
                    intern!(py, "_call_connection_lost"),
                    (py.None(),),
                )?;
            } else if eof {
                slf.get().shutdown_write(py)?;
            }
            Ok(())
        }
    }
}

impl NativeTransport for StreamTransport {
    fn interest<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Interest) -> R) -> PyResult<R> {
        self.state.with(py, |s| f(&mut s.io))
    }

    fn loop_core<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, LoopCore>>> {
        self.state
            .with(py, |s| s.loop_.as_ref().map(|l| l.bind(py).clone()))
    }

    fn as_io(slf: &Bound<'_, Self>) -> Io {
        Io::Stream(slf.clone().unbind())
    }
}

#[pymethods]
impl StreamTransport {
    /// `context`: the one every protocol callback runs in (Python 3.15+'s transports get one
    /// at creation); None: each direction captures its own, as asyncio did before 3.15.
    #[new]
    #[pyo3(signature = (lp, fd, owner, context=None))]
    fn py_new(
        lp: Bound<'_, LoopCore>,
        fd: RawFd,
        owner: Py<PyAny>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        let mut io = Interest::new(fd);
        io.fixed_ctx = context.filter(|c| !c.is_none(lp.py()));
        Ok(StreamTransport {
            state: GilCell::new(StreamState {
                io,
                loop_: Some(lp.unbind()),
                owner: Some(owner),
                protocol: None,
                buffered: false,
                tls: false,
                out: None,
                eof: false,
                protocol_paused: false,
                conn_lost: 0,
                high: DEFAULT_HIGH_WATER,
                low: DEFAULT_HIGH_WATER / 4,
                empty_waiter: None,
            }),
        })
    }

    /// Installs the protocol; `buffered` selects the `get_buffer`/`buffer_updated` read path,
    /// `tls` (ferroloop's own TLS protocol) the native TLS record path.
    #[pyo3(signature = (protocol, buffered, tls=false))]
    fn _set_protocol(
        &self,
        protocol: &Bound<'_, PyAny>,
        buffered: bool,
        tls: bool,
    ) -> PyResult<()> {
        let py = protocol.py();
        let old = self.state.with(py, |s| {
            s.buffered = buffered && !tls;
            s.tls = tls;
            s.protocol.replace(protocol.clone().unbind())
        })?;
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

    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if !is_bytes_like(data) {
            // asyncio's wording changed in 3.14.
            let expected = if py.version_info() >= (3, 14) {
                "a bytes, bytearray, or memoryview object"
            } else {
                "a bytes-like object"
            };
            return Err(PyTypeError::new_err(format!(
                "data argument must be {expected}, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view = match ByteView::new(data, false) {
            Ok(v) => v,
            // asyncio accepts any bytes-like object here and fails the connection when the
            // kernel call cannot use it (a non-contiguous memoryview).
            Err(e) => return Self::fatal(slf, e, "Fatal write error on socket transport"),
        };
        let bytes = view.as_slice();
        if !Self::write_allowed(slf, bytes.is_empty(), false)? {
            return Ok(());
        }
        // Fast path: nothing queued, send now.
        let sent = slf.get().state.with(py, |s| {
            if s.pending() > 0 || s.io.fd < 0 {
                return Ok(0);
            }
            send_some(s.io.fd, bytes)
        })?;
        let n = match sent {
            Ok(n) => n,
            Err(code) => {
                return Self::fatal(
                    slf,
                    os_error_from(code),
                    "Fatal write error on socket transport",
                )
            }
        };
        if n == bytes.len() {
            return Ok(());
        }
        Self::buffer_output(slf, &bytes[n..])
    }

    pub(crate) fn writelines(
        slf: &Bound<'_, Self>,
        list_of_data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let mut views = Vec::new();
        for item in list_of_data.try_iter()? {
            let item = item?;
            if !is_bytes_like(&item) {
                return Err(PyTypeError::new_err(format!(
                    "data argument must be a bytes-like object, not {}",
                    item.get_type().name()?.repr()?
                )));
            }
            let v = ByteView::new(&item, false)?;
            if v.len() > 0 {
                views.push(v);
            }
        }
        if !Self::write_allowed(slf, views.is_empty(), true)? {
            return Ok(());
        }
        let total: usize = views.iter().map(|v| v.len()).sum();
        // Fast path: nothing queued, one sendmsg for every piece.
        let sent = slf.get().state.with(py, |s| {
            if s.pending() > 0 || s.io.fd < 0 {
                return Ok(0);
            }
            let iov: Vec<libc::iovec> = views
                .iter()
                .take(libc::UIO_MAXIOV as usize)
                .map(|v| libc::iovec {
                    iov_base: v.as_slice().as_ptr() as *mut libc::c_void,
                    iov_len: v.len(),
                })
                .collect();
            // SAFETY: a zeroed msghdr is valid; we point it at `iov`, which outlives the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: every iovec points into a buffer view held in `views` during the call.
            let n = retry_eintr(|| unsafe { libc::sendmsg(s.io.fd, &msg, libc::MSG_NOSIGNAL) });
            if n < 0 {
                let e = errno();
                if would_block(e) {
                    Ok(0)
                } else {
                    Err(e)
                }
            } else {
                crate::metrics::sent(n as usize);
                Ok(n as usize)
            }
        })?;
        let mut skip = match sent {
            Ok(n) => n,
            Err(code) => {
                return Self::fatal(
                    slf,
                    os_error_from(code),
                    "Fatal write error on socket transport",
                )
            }
        };
        if skip == total {
            return Ok(());
        }
        let mut rest = Vec::with_capacity(total - skip);
        for v in &views {
            let b = v.as_slice();
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            rest.extend_from_slice(&b[skip..]);
            skip = 0;
        }
        Self::buffer_output(slf, &rest)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let now = slf.get().state.with(py, |s| {
            if s.io.closing || s.eof {
                return false;
            }
            s.eof = true;
            s.pending() == 0
        })?;
        if now {
            slf.get().shutdown_write(py)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
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
        self.state.with(py, |s| s.pending())
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
        Self::flow_control(slf, true)
    }

    /// For `loop.sendfile`: a future resolved when the output buffer is empty.
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let (has, empty) = slf
            .get()
            .state
            .with(py, |s| (s.empty_waiter.is_some(), s.pending() == 0))?;
        if has {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let Some(lp) = slf.get().loop_core(py)? else {
            return Err(PyRuntimeError::new_err("transport is closed"));
        };
        let fut = lp.call_method0(intern!(py, "create_future"))?;
        if empty {
            fut.call_method1("set_result", (py.None(),))?;
        }
        let stored = fut.clone().unbind();
        slf.get()
            .state
            .with(py, |s| s.empty_waiter = Some(stored))?;
        Ok(fut.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) -> PyResult<()> {
        let old = self.state.with(py, |s| s.empty_waiter.take())?;
        drop(old);
        Ok(())
    }

    /// Forgets the socket, the loop and the protocol once the connection is lost. The
    /// Python side closes the socket itself.
    fn _detach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        watch(slf, false, false)?;
        watch(slf, true, false)?;
        let refs = slf.get().state.with(py, |s| {
            s.io.fd = -1;
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
    fn _eof(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.eof)
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
            for o in [&s.owner, &s.protocol, &s.empty_waiter, &s.io.fixed_ctx]
                .into_iter()
                .flatten()
            {
                visit.call(o)?;
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
