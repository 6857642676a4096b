//! TLS record path: the per-record work of asyncio's `SSLProtocol`, in Rust.
//!
//! ferroloop's TLS protocol (`ferroloop._tls.SSLProtocol`) is a subclass of asyncio's
//! `SSLProtocol`. Its Python code keeps what runs a few times per connection: the handshake,
//! shutdown, timeouts, the decisions of flow control and error reporting. This module owns
//! what runs for every TLS record while the connection is up:
//!
//! - **incoming**: bytes from the transport go into the incoming memory BIO, are decrypted
//!   with `SSLObject.read()` and handed to the application's `data_received`; the native
//!   stream transport calls [`feed`] directly, without `get_buffer`/`buffer_updated`;
//! - **outgoing**: application writes are encrypted with `SSLObject.write()` and what the
//!   outgoing BIO then holds is written to the transport.
//!
//! State keeps the names asyncio's code uses: the attributes the record path touches (`_state`,
//! the BIOs, the flow-control flags and watermarks...) are fields of [`TlsCore`], the protocol's
//! native base class, exposed to Python as data descriptors, so asyncio's methods running on the
//! rare paths read and assign them as usual while Rust reads fields. Whenever anything but
//! the common case happens (the connection is not in the WRAPPED or FLUSHING state, a
//! flow-control threshold is crossed, the application protocol is a `BufferedProtocol`, the
//! peer sent close_notify), the functions here call asyncio's Python method for it.
//!
//! One thing is done differently from asyncio, with the same result: decryption stops once
//! neither the incoming BIO nor the `SSLObject` holds anything left to decrypt, instead of
//! calling `read()` until the ssl module raises `SSLWantReadError` (an exception per message).

use std::ffi::{c_char, c_int};

use pyo3::exceptions::{PyAttributeError, PyException, PyTypeError};

use crate::gilcell::GilCell;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

/// Values from `asyncio.sslproto`, looked up once.
struct SslProto {
    wrapped: Py<PyAny>,
    flushing: Py<PyAny>,
    /// `SSLAgainErrors`: what `SSLObject.read()`/`write()` raise when they need more input.
    again: Py<PyAny>,
    /// asyncio's own `SSLProtocol._write_appdata`, for writes outside the WRAPPED state.
    base_write_appdata: Py<PyAny>,
}

static SSLPROTO: PyOnceLock<SslProto> = PyOnceLock::new();

fn sslproto(py: Python<'_>) -> PyResult<&'static SslProto> {
    SSLPROTO.get_or_try_init(py, || {
        let m = py.import("asyncio.sslproto")?;
        let states = m.getattr("SSLProtocolState")?;
        Ok(SslProto {
            wrapped: states.getattr("WRAPPED")?.unbind(),
            flushing: states.getattr("FLUSHING")?.unbind(),
            again: m.getattr("SSLAgainErrors")?.unbind(),
            base_write_appdata: m
                .getattr("SSLProtocol")?
                .getattr("_write_appdata")?
                .unbind(),
        })
    })
}

/// Above this size, incoming bytes reach the BIO through a memoryview instead of a copy.
const COPY_LIMIT: usize = 16 * 1024;

/// What the record path derives from the protocol's BIOs, `SSLObject` and backlog deque (the
/// C SSL object, bound methods, the read size). Built at the first record and kept by
/// [`TlsCore`] until one of those attributes is assigned again.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub(crate) struct TlsConn {
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    sslobj: Py<PyAny>,
    backlog: Py<PyAny>,
    /// Bound methods called per record, looked up once.
    incoming_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
    ssl_read: Py<PyAny>,
    ssl_write: Py<PyAny>,
    max_size: Py<PyAny>,
    /// `max_size` as a length (usize::MAX if it is not one).
    max_len: usize,
}

#[pymethods]
impl TlsConn {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.incoming)?;
        visit.call(&self.outgoing)?;
        visit.call(&self.sslobj)?;
        visit.call(&self.backlog)?;
        visit.call(&self.incoming_write)?;
        visit.call(&self.outgoing_read)?;
        visit.call(&self.ssl_read)?;
        visit.call(&self.ssl_write)?;
        visit.call(&self.max_size)
    }
}

/// The object whose `read`/`write`/`pending` the record path calls: for the standard library's
/// `ssl.SSLObject` itself, the C object its methods delegate to unchanged (one Python frame
/// less per call); for a subclass (`SSLContext.sslobject_class`), the object as given.
fn ssl_core(sslobj: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = sslobj.py();
    let standard = py
        .import(intern!(py, "ssl"))?
        .getattr(intern!(py, "SSLObject"))?;
    if sslobj.get_type().is(&standard) {
        if let Ok(core) = sslobj.getattr(intern!(py, "_sslobj")) {
            return Ok(core.unbind());
        }
    }
    Ok(sslobj.clone().unbind())
}

/// The protocol attributes the record path reads and writes, stored natively (see [`TlsCore`]).
#[derive(Clone, Copy)]
enum A {
    State,
    Incoming,
    Outgoing,
    Sslobj,
    WriteBacklog,
    WriteBufferSize,
    AppProtocol,
    AppProtocolIsBuffer,
    Transport,
    AppReadingPaused,
    SslWritingPaused,
    SslReadingPaused,
    AppWritingPaused,
    IncomingHighWater,
    IncomingLowWater,
    OutgoingHighWater,
    OutgoingLowWater,
}

const ATTRS: usize = 17;

const ATTR_NAMES: [&str; ATTRS] = [
    "_state",
    "_incoming",
    "_outgoing",
    "_sslobj",
    "_write_backlog",
    "_write_buffer_size",
    "_app_protocol",
    "_app_protocol_is_buffer",
    "_transport",
    "_app_reading_paused",
    "_ssl_writing_paused",
    "_ssl_reading_paused",
    "_app_writing_paused",
    "_incoming_high_water",
    "_incoming_low_water",
    "_outgoing_high_water",
    "_outgoing_low_water",
];

/// Native base class of ferroloop's TLS protocol (`class SSLProtocol(TlsCore,
/// asyncio.sslproto.SSLProtocol)`): the attributes the record path uses live here instead of
/// the instance dict. asyncio's Python code reads and assigns them under their usual names
/// (they are data descriptors on this class), and the record path reads them as fields,
/// without attribute lookups. An attribute never assigned raises `AttributeError`, as a missing
/// instance attribute does.
#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub(crate) struct TlsCore {
    attrs: GilCell<CoreAttrs>,
}

struct CoreAttrs {
    values: [Option<Py<PyAny>>; ATTRS],
    /// Derived from `_incoming`, `_outgoing`, `_sslobj` and `_write_backlog`; dropped when one
    /// of them is assigned.
    conn: Option<Py<TlsConn>>,
}

impl TlsCore {
    fn attr<'py>(&self, slf: &Bound<'py, TlsCore>, a: A) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        match self.attrs.with(py, |c| {
            c.values[a as usize].as_ref().map(|v| v.clone_ref(py))
        })? {
            Some(v) => Ok(v.into_bound(py)),
            None => Err(PyAttributeError::new_err(format!(
                "'{}' object has no attribute '{}'",
                slf.get_type().name()?,
                ATTR_NAMES[a as usize]
            ))),
        }
    }

    fn set_attr(&self, slf: &Bound<'_, TlsCore>, a: A, value: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let derived = matches!(a, A::Incoming | A::Outgoing | A::Sslobj | A::WriteBacklog);
        // The replaced values are released after the cell is left (their finalizers may run
        // Python code that reads these attributes).
        let (old, old_conn) = self.attrs.with(py, |c| {
            let old = std::mem::replace(&mut c.values[a as usize], value);
            let old_conn = if derived { c.conn.take() } else { None };
            (old, old_conn)
        })?;
        drop((old, old_conn));
        Ok(())
    }
}

#[pymethods]
impl TlsCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        TlsCore {
            attrs: GilCell::new(CoreAttrs {
                values: Default::default(),
                conn: None,
            }),
        }
    }

    #[getter(_state)]
    fn get_state(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::State)?.unbind())
    }

    #[setter(_state)]
    fn set_state(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::State, Some(value))
    }

    #[getter(_incoming)]
    fn get_incoming(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::Incoming)?.unbind())
    }

    #[setter(_incoming)]
    fn set_incoming(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::Incoming, Some(value))
    }

    #[getter(_outgoing)]
    fn get_outgoing(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::Outgoing)?.unbind())
    }

    #[setter(_outgoing)]
    fn set_outgoing(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::Outgoing, Some(value))
    }

    #[getter(_sslobj)]
    fn get_sslobj(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::Sslobj)?.unbind())
    }

    #[setter(_sslobj)]
    fn set_sslobj(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::Sslobj, Some(value))
    }

    #[getter(_write_backlog)]
    fn get_write_backlog(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::WriteBacklog)?.unbind())
    }

    #[setter(_write_backlog)]
    fn set_write_backlog(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::WriteBacklog, Some(value))
    }

    #[getter(_write_buffer_size)]
    fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::WriteBufferSize)?.unbind())
    }

    #[setter(_write_buffer_size)]
    fn set_write_buffer_size(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::WriteBufferSize, Some(value))
    }

    #[getter(_app_protocol)]
    fn get_app_protocol(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::AppProtocol)?.unbind())
    }

    #[setter(_app_protocol)]
    fn set_app_protocol(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::AppProtocol, Some(value))
    }

    #[getter(_app_protocol_is_buffer)]
    fn get_app_protocol_is_buffer(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::AppProtocolIsBuffer)?.unbind())
    }

    #[setter(_app_protocol_is_buffer)]
    fn set_app_protocol_is_buffer(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::AppProtocolIsBuffer, Some(value))
    }

    #[getter(_transport)]
    fn get_transport(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::Transport)?.unbind())
    }

    #[setter(_transport)]
    fn set_transport(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::Transport, Some(value))
    }

    #[getter(_app_reading_paused)]
    fn get_app_reading_paused(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::AppReadingPaused)?.unbind())
    }

    #[setter(_app_reading_paused)]
    fn set_app_reading_paused(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::AppReadingPaused, Some(value))
    }

    #[getter(_ssl_writing_paused)]
    fn get_ssl_writing_paused(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::SslWritingPaused)?.unbind())
    }

    #[setter(_ssl_writing_paused)]
    fn set_ssl_writing_paused(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::SslWritingPaused, Some(value))
    }

    #[getter(_ssl_reading_paused)]
    fn get_ssl_reading_paused(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::SslReadingPaused)?.unbind())
    }

    #[setter(_ssl_reading_paused)]
    fn set_ssl_reading_paused(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::SslReadingPaused, Some(value))
    }

    #[getter(_app_writing_paused)]
    fn get_app_writing_paused(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::AppWritingPaused)?.unbind())
    }

    #[setter(_app_writing_paused)]
    fn set_app_writing_paused(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::AppWritingPaused, Some(value))
    }

    #[getter(_incoming_high_water)]
    fn get_incoming_high_water(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::IncomingHighWater)?.unbind())
    }

    #[setter(_incoming_high_water)]
    fn set_incoming_high_water(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::IncomingHighWater, Some(value))
    }

    #[getter(_incoming_low_water)]
    fn get_incoming_low_water(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::IncomingLowWater)?.unbind())
    }

    #[setter(_incoming_low_water)]
    fn set_incoming_low_water(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::IncomingLowWater, Some(value))
    }

    #[getter(_outgoing_high_water)]
    fn get_outgoing_high_water(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::OutgoingHighWater)?.unbind())
    }

    #[setter(_outgoing_high_water)]
    fn set_outgoing_high_water(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::OutgoingHighWater, Some(value))
    }

    #[getter(_outgoing_low_water)]
    fn get_outgoing_low_water(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(slf.get().attr(slf, A::OutgoingLowWater)?.unbind())
    }

    #[setter(_outgoing_low_water)]
    fn set_outgoing_low_water(slf: &Bound<'_, Self>, value: Py<PyAny>) -> PyResult<()> {
        slf.get().set_attr(slf, A::OutgoingLowWater, Some(value))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector calls tp_traverse with the GIL held; the token is only used
        // to enter our own cell, which refuses (and we skip) if it is in use.
        let py = unsafe { Python::assume_attached() };
        let res = self.attrs.try_with(py, |c| -> Result<(), PyTraverseError> {
            for v in c.values.iter().flatten() {
                visit.call(v)?;
            }
            if let Some(conn) = &c.conn {
                visit.call(conn)?;
            }
            Ok(())
        });
        res.unwrap_or(Ok(()))
    }

    fn __clear__(&self) {
        // SAFETY: tp_clear runs with the GIL held.
        let py = unsafe { Python::assume_attached() };
        // As a plain object's dict is cleared: the attributes go, breaking cycles through them.
        let taken = self
            .attrs
            .try_with(py, |c| (std::mem::take(&mut c.values), c.conn.take()));
        drop(taken);
    }
}

/// The protocol object, its native attributes and the parts derived from them.
struct Proto<'a, 'py> {
    obj: &'a Bound<'py, PyAny>,
    core: Bound<'py, TlsCore>,
    conn: Bound<'py, TlsConn>,
}

impl<'a, 'py> Proto<'a, 'py> {
    fn new(obj: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let core = obj.cast::<TlsCore>()?.clone();
        let cached = core
            .get()
            .attrs
            .with(py, |c| c.conn.as_ref().map(|v| v.clone_ref(py)))?;
        let conn = match cached {
            Some(c) => c.into_bound(py),
            None => {
                let get = |a: A| -> PyResult<Py<PyAny>> { Ok(core.get().attr(&core, a)?.unbind()) };
                let max_size = obj.getattr(intern!(py, "max_size"))?.unbind();
                let max_len = max_size.bind(py).extract::<usize>().unwrap_or(usize::MAX);
                let incoming = get(A::Incoming)?;
                let outgoing = get(A::Outgoing)?;
                let sslobj = ssl_core(get(A::Sslobj)?.bind(py))?;
                let method =
                    |obj: &Py<PyAny>, name: &Bound<'py, PyString>| -> PyResult<Py<PyAny>> {
                        Ok(obj.bind(py).getattr(name)?.unbind())
                    };
                let conn = Bound::new(
                    py,
                    TlsConn {
                        incoming_write: method(&incoming, intern!(py, "write"))?,
                        outgoing_read: method(&outgoing, intern!(py, "read"))?,
                        ssl_read: method(&sslobj, intern!(py, "read"))?,
                        ssl_write: method(&sslobj, intern!(py, "write"))?,
                        incoming,
                        outgoing,
                        sslobj,
                        backlog: get(A::WriteBacklog)?,
                        max_size,
                        max_len,
                    },
                )?;
                let keep = conn.clone().unbind();
                core.get().attrs.with(py, |c| c.conn = Some(keep))?;
                conn
            }
        };
        Ok(Proto { obj, core, conn })
    }

    fn incoming(&self) -> &Bound<'py, PyAny> {
        self.conn.get().incoming.bind(self.obj.py())
    }

    fn outgoing(&self) -> &Bound<'py, PyAny> {
        self.conn.get().outgoing.bind(self.obj.py())
    }

    fn sslobj(&self) -> &Bound<'py, PyAny> {
        self.conn.get().sslobj.bind(self.obj.py())
    }

    fn backlog(&self) -> &Bound<'py, PyAny> {
        self.conn.get().backlog.bind(self.obj.py())
    }

    fn ssl_write(&self) -> &Bound<'py, PyAny> {
        self.conn.get().ssl_write.bind(self.obj.py())
    }

    fn py(&self) -> Python<'py> {
        self.obj.py()
    }

    fn get(&self, a: A) -> PyResult<Bound<'py, PyAny>> {
        self.core.get().attr(&self.core, a)
    }

    fn flag(&self, a: A) -> PyResult<bool> {
        self.get(a)?.is_truthy()
    }

    /// An integer attribute; `None` when it is not a machine-sized integer (then the caller
    /// leaves the decision to asyncio's Python code).
    fn int(&self, a: A) -> PyResult<Option<i64>> {
        Ok(self.get(a)?.extract::<i64>().ok())
    }

    fn add_to_write_buffer_size(&self, delta: i64) -> PyResult<()> {
        let size = self.get(A::WriteBufferSize)?;
        let updated = match size.extract::<i64>() {
            Ok(n) => (n + delta).into_pyobject(self.py())?.into_any(),
            Err(_) => size.add(delta)?,
        };
        self.core
            .get()
            .set_attr(&self.core, A::WriteBufferSize, Some(updated.unbind()))
    }

    fn state_is(&self, state: &Py<PyAny>) -> PyResult<bool> {
        Ok(self.get(A::State)?.is(state))
    }

    /// asyncio's `except Exception as ex: self._fatal_error(ex, 'Fatal error on SSL protocol')`
    /// around a step; anything else (KeyboardInterrupt, SystemExit...) propagates, as in asyncio.
    fn fatal_on_error(&self, step: PyResult<()>) -> PyResult<()> {
        let py = self.py();
        match step {
            Err(err) if err.is_instance_of::<PyException>(py) => {
                self.obj.call_method1(
                    intern!(py, "_fatal_error"),
                    (err.value(py), "Fatal error on SSL protocol"),
                )?;
                Ok(())
            }
            other => other,
        }
    }

    /// Appends `item` (`len` bytes) to the application's write backlog, as asyncio does.
    fn queue_for_write(&self, item: &Bound<'py, PyAny>, len: i64) -> PyResult<()> {
        self.backlog()
            .call_method1(intern!(self.py(), "append"), (item,))?;
        self.add_to_write_buffer_size(len)
    }
}

fn pending(bio: &Bound<'_, PyAny>) -> PyResult<i64> {
    bio.getattr(intern!(bio.py(), "pending"))?.extract()
}

fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    Ok(err.matches(py, sslproto(py)?.again.bind(py))?)
}

/// `try: step except SSLAgainErrors: pass`.
fn unless_again(py: Python<'_>, step: PyResult<()>) -> PyResult<()> {
    match step {
        Err(e) if !is_again(py, &e)? => Err(e),
        _ => Ok(()),
    }
}

/// The transport received `data` for a protocol of ours: asyncio's `buffer_updated`.
pub(crate) fn feed(protocol: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    let py = protocol.py();
    let p = Proto::new(protocol)?;
    let incoming_write = p.conn.get().incoming_write.bind(py);
    if data.len() <= COPY_LIMIT {
        incoming_write.call1((PyBytes::new(py, data),))?;
    } else {
        // SAFETY: a read-only memoryview over `data`, which outlives it: the view goes only to
        // `MemoryBIO.write`, which copies the bytes and keeps no reference, and is released
        // before this function returns.
        let view = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyMemoryView_FromMemory(
                    data.as_ptr() as *mut std::os::raw::c_char,
                    data.len() as ffi::Py_ssize_t,
                    ffi::PyBUF_READ,
                ),
            )?
        };
        let written = incoming_write.call1((&view,));
        // Fails only if something kept an export of the view, which MemoryBIO never does.
        let _ = view.call_method0(intern!(py, "release"));
        written?;
    }
    let consts = sslproto(py)?;
    if p.state_is(&consts.wrapped)? {
        do_read_in(&p)
    } else {
        // Handshake, flushing or shutdown: asyncio's dispatch on the state.
        protocol.call_method0(intern!(py, "_ferroloop_after_incoming"))?;
        Ok(())
    }
}

/// asyncio's `_do_read`: decrypt what arrived and hand it to the application, then send what
/// the TLS layer has to send and check the incoming flow control.
#[pyfunction]
pub(crate) fn _tls_do_read(protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    let p = Proto::new(protocol)?;
    let consts = sslproto(p.py())?;
    if p.state_is(&consts.wrapped)? || p.state_is(&consts.flushing)? {
        do_read_in(&p)
    } else {
        Ok(())
    }
}

fn do_read_in(p: &Proto<'_, '_>) -> PyResult<()> {
    p.fatal_on_error(do_read_steps(p))
}

fn do_read_steps(p: &Proto<'_, '_>) -> PyResult<()> {
    if !p.flag(A::AppReadingPaused)? {
        if p.flag(A::AppProtocolIsBuffer)? {
            read_buffered(p)?;
        } else {
            read_copied(p)?;
        }
        if p.backlog().len()? > 0 {
            do_write_steps(p)?;
        } else {
            process_outgoing_steps(p)?;
        }
    }
    control_ssl_reading(p)
}

/// Decrypted bytes land in this thread's buffer (a `bytearray` the ssl module writes into)
/// before they are copied into a `bytes` of their own size: asking `SSLObject.read()` for a
/// new object allocates `max_size` (256 KiB) per record and shrinks it afterwards.
const READ_BUF_LEN: usize = 256 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Option<Py<PyByteArray>>> =
        const { std::cell::RefCell::new(None) };
}

/// One `SSLObject.read(max_size)`, through the thread's reusable buffer when possible.
fn read_chunk<'py>(
    ssl_read: &Bound<'py, PyAny>,
    max_size: &Bound<'py, PyAny>,
    max_len: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let py = ssl_read.py();
    if max_len == 0 || max_len > READ_BUF_LEN {
        return ssl_read.call1((max_size,));
    }
    READ_BUF.with(|cell| {
        // Borrowed for the whole call: the ssl module releases the GIL while it decrypts, but
        // the buffer is this thread's, and no Python code runs on this thread meanwhile.
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return ssl_read.call1((max_size,));
        };
        let buf = match slot.as_ref() {
            Some(b) => b.bind(py).clone(),
            None => {
                let b = PyByteArray::new(py, &vec![0u8; READ_BUF_LEN]);
                *slot = Some(b.clone().unbind());
                b
            }
        };
        let n: usize = ssl_read.call1((max_size, &buf))?.extract()?;
        // SAFETY: the bytearray is never resized (it is private to this function) and holds
        // READ_BUF_LEN bytes; `n` is at most the size asked for, itself at most that length.
        let bytes = unsafe { buf.as_bytes() };
        Ok(PyBytes::new(py, &bytes[..n.min(max_len)]).into_any())
    })
}

/// Decrypts into the buffer a `BufferedProtocol` application hands out (asyncio's
/// `_do_read__buffered`): fill it as far as possible, report what was written with
/// `buffer_updated`, and if it filled up, come back in a later callback for the rest. Reads
/// after the first go through a memoryview of the buffer, so a `bytearray` buffer is filled
/// in place (asyncio slices the buffer itself, which copies a bytearray and loses those bytes).
fn read_buffered(p: &Proto<'_, '_>) -> PyResult<()> {
    let py = p.py();
    let ssl_read = p.conn.get().ssl_read.bind(py);
    let hint = pending(p.incoming())?;
    let buf = p
        .obj
        .getattr(intern!(py, "_app_protocol_get_buffer"))?
        .call1((hint,))?;
    let wants = buf.len()?;
    let mut offset = 0usize;
    let mut count: usize = 1; // anything but 0: the stream has not ended
    let filled = (|| -> PyResult<()> {
        count = ssl_read.call1((wants, &buf))?.extract()?;
        if count == 0 {
            return Ok(());
        }
        offset = count;
        let view = PyMemoryView::from(&buf)?;
        while offset < wants {
            let rest = view.get_item(PySlice::new(py, offset as isize, isize::MAX, 1))?;
            count = ssl_read.call1((wants - offset, rest))?.extract()?;
            if count == 0 {
                return Ok(());
            }
            offset += count;
        }
        // Full: what is left is read in a later callback, after the application had its turn.
        let again = p.obj.getattr(intern!(py, "_do_read"))?;
        p.obj
            .getattr(intern!(py, "_loop"))?
            .call_method1(intern!(py, "call_soon"), (again,))?;
        Ok(())
    })();
    unless_again(py, filled)?;
    if offset > 0 {
        p.obj
            .getattr(intern!(py, "_app_protocol_buffer_updated"))?
            .call1((offset,))?;
    }
    if count == 0 {
        p.obj.call_method0(intern!(py, "_call_eof_received"))?;
        p.obj.call_method0(intern!(py, "_start_shutdown"))?;
    }
    Ok(())
}

/// Decrypts everything available into `bytes` for `data_received`; at close_notify, asyncio's
/// end-of-stream handling.
fn read_copied(p: &Proto<'_, '_>) -> PyResult<()> {
    let py = p.py();
    let sslobj = p.sslobj();
    let ssl_read = p.conn.get().ssl_read.bind(py);
    let incoming = p.incoming();
    let max_size = p.conn.get().max_size.bind(py);
    let max_len = p.conn.get().max_len;
    let mut chunks: Vec<Bound<'_, PyAny>> = Vec::new();
    let mut end_of_stream = false;
    loop {
        let chunk = match read_chunk(ssl_read, max_size, max_len) {
            Ok(c) => c,
            Err(e) if is_again(py, &e)? => break,
            Err(e) => return Err(e),
        };
        let len = chunk.len()?;
        if len == 0 {
            end_of_stream = true; // the peer's close_notify
            break;
        }
        chunks.push(chunk);
        // Decrypted bytes wait in the SSLObject only when the read filled the whole size.
        if pending(incoming)? == 0
            && (len < max_len
                || sslobj
                    .call_method0(intern!(py, "pending"))?
                    .extract::<i64>()?
                    == 0)
        {
            break; // nothing left to decrypt: another read could only raise SSLWantReadError
        }
    }
    if !chunks.is_empty() {
        let data = if chunks.len() == 1 {
            chunks.swap_remove(0)
        } else {
            PyBytes::new(py, b"")
                .call_method1(intern!(py, "join"), (chunks,))?
                .into_any()
        };
        p.get(A::AppProtocol)?
            .call_method1(intern!(py, "data_received"), (data,))?;
    }
    if end_of_stream {
        p.obj.call_method0(intern!(py, "_call_eof_received"))?;
        p.obj.call_method0(intern!(py, "_start_shutdown"))?;
    }
    Ok(())
}

/// asyncio's `_do_write`: encrypt the application's backlog, then send.
#[pyfunction]
pub(crate) fn _tls_do_write(protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    do_write_steps(&Proto::new(protocol)?)
}

fn do_write_steps(p: &Proto<'_, '_>) -> PyResult<()> {
    let py = p.py();
    let backlog = p.backlog();
    let ssl_write = p.ssl_write();
    let encrypted = (|| -> PyResult<()> {
        while backlog.len()? > 0 {
            let data = backlog.get_item(0)?;
            let count: isize = ssl_write.call1((&data,))?.extract()?;
            let data_len = data.len()? as isize;
            if count < data_len {
                backlog.set_item(0, data.get_item(PySlice::new(py, count, isize::MAX, 1))?)?;
                p.add_to_write_buffer_size(-(count as i64))?;
            } else {
                backlog.call_method0(intern!(py, "popleft"))?;
                p.add_to_write_buffer_size(-(data_len as i64))?;
            }
        }
        Ok(())
    })();
    unless_again(py, encrypted)?;
    process_outgoing_steps(p)
}

/// asyncio's `_process_outgoing`: hand what the TLS layer produced to the transport, then check
/// the application's write flow control.
#[pyfunction]
pub(crate) fn _tls_process_outgoing(protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    process_outgoing_steps(&Proto::new(protocol)?)
}

fn process_outgoing_steps(p: &Proto<'_, '_>) -> PyResult<()> {
    let py = p.py();
    if !p.flag(A::SslWritingPaused)? {
        let outgoing = p.outgoing();
        if pending(outgoing)? > 0 {
            let data = p.conn.get().outgoing_read.bind(py).call0()?;
            p.get(A::Transport)?
                .call_method1(intern!(py, "write"), (data,))?;
        }
    }
    control_app_writing(p)
}

/// Whether asyncio's `_control_*` method would change the pause state: pause at or over the
/// high-water mark while running, resume at or under the low one while paused. A size or mark
/// that is not a machine integer leaves the decision to asyncio's code.
fn pause_state_changes(
    p: &Proto<'_, '_>,
    paused: A,
    low: A,
    high: A,
    size: Option<i64>,
) -> PyResult<bool> {
    let paused = p.flag(paused)?;
    let mark = p.int(if paused { low } else { high })?;
    Ok(match (size, mark) {
        (Some(size), Some(mark)) if paused => size <= mark,
        (Some(size), Some(mark)) => size >= mark,
        _ => true,
    })
}

/// asyncio's `_control_app_writing`, called only when the application's pause state changes.
fn control_app_writing(p: &Proto<'_, '_>) -> PyResult<()> {
    let size = match p.int(A::WriteBufferSize)? {
        Some(n) => Some(n + pending(p.outgoing())?),
        None => None,
    };
    let (low, high) = (A::OutgoingLowWater, A::OutgoingHighWater);
    if pause_state_changes(p, A::AppWritingPaused, low, high, size)? {
        p.obj
            .call_method0(intern!(p.py(), "_control_app_writing"))?;
    }
    Ok(())
}

/// asyncio's `_control_ssl_reading`, called only when the transport's pause state changes.
fn control_ssl_reading(p: &Proto<'_, '_>) -> PyResult<()> {
    let size = Some(pending(p.incoming())?);
    let (low, high) = (A::IncomingLowWater, A::IncomingHighWater);
    if pause_state_changes(p, A::SslReadingPaused, low, high, size)? {
        p.obj
            .call_method0(intern!(p.py(), "_control_ssl_reading"))?;
    }
    Ok(())
}

/// asyncio's `_write_appdata(list_of_data)`.
#[pyfunction]
pub(crate) fn _tls_write_appdata(
    protocol: &Bound<'_, PyAny>,
    list_of_data: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = protocol.py();
    let p = Proto::new(protocol)?;
    let consts = sslproto(py)?;
    if !p.state_is(&consts.wrapped)? {
        // Before the handshake completes (queued) or once closing (counted, dropped).
        consts
            .base_write_appdata
            .bind(py)
            .call1((protocol, list_of_data))?;
        return Ok(());
    }
    for data in list_of_data.try_iter()? {
        let data = data?;
        p.queue_for_write(&data, data.len()? as i64)?;
    }
    p.fatal_on_error(do_write_steps(&p))
}

/// The application transport's `write(data)` for non-empty bytes-like `data`: asyncio's
/// `_write_appdata((data,))`, without queueing when nothing is queued before it.
#[pyfunction]
pub(crate) fn _tls_write(protocol: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = protocol.py();
    let p = Proto::new(protocol)?;
    let consts = sslproto(py)?;
    if !p.state_is(&consts.wrapped)? || p.backlog().len()? > 0 {
        return _tls_write_appdata(protocol, &PyTuple::new(py, [data])?.into_any());
    }
    let sent = (|| -> PyResult<()> {
        let len = data.len()? as isize;
        let count: isize = match p.ssl_write().call1((data,)) {
            Ok(c) => c.extract()?,
            Err(e) => {
                // Nothing encrypted: queued, as asyncio's backlog would hold it.
                p.queue_for_write(data, len as i64)?;
                if is_again(py, &e)? {
                    return process_outgoing_steps(&p); // send what the TLS layer has
                }
                return Err(e);
            }
        };
        if count < len {
            let rest = data.get_item(PySlice::new(py, count, isize::MAX, 1))?;
            p.queue_for_write(&rest, (len - count) as i64)?;
            return do_write_steps(&p);
        }
        process_outgoing_steps(&p)
    })();
    p.fatal_on_error(sent)
}

static APP_WRITE_DEF: crate::fastcall::MethodDef = crate::fastcall::MethodDef(ffi::PyMethodDef {
    ml_name: c"write".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer { PyCFunction: app_write },
    ml_flags: ffi::METH_O as c_int,
    ml_doc: c"write(data)\n--\n\nEncrypt data and send it (buffered if the connection cannot take it yet)."
        .as_ptr() as *const c_char,
});

/// Makes `cls.write` (the application-side TLS transport's) a native method: the same checks
/// as asyncio's `_SSLProtocolTransport.write`, then [`_tls_write`], with no Python frame.
#[pyfunction]
pub(crate) fn _tls_install_app_write(cls: &Bound<'_, PyType>) -> PyResult<()> {
    crate::fastcall::install_method(cls, &APP_WRITE_DEF, intern!(cls.py(), "write"))
}

unsafe extern "C" fn app_write(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    crate::fastcall::c_method_result(py, "TLS write", || {
        // SAFETY: METH_O convention: `slf` is the receiver (an instance of the class the
        // descriptor was made for, checked by CPython) and `data` the one argument, both
        // borrowed for the duration of the call.
        let (slf, data) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf),
                Bound::from_borrowed_ptr(py, data),
            )
        };
        app_write_body(&slf, &data)?;
        Ok(py.None())
    })
}

fn app_write_body(slf: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    // SAFETY: type checks on a valid object.
    let bytes_like = unsafe {
        let p = data.as_ptr();
        ffi::PyBytes_Check(p) != 0
            || ffi::PyByteArray_Check(p) != 0
            || ffi::PyMemoryView_Check(p) != 0
    };
    if !bytes_like {
        return Err(PyTypeError::new_err(format!(
            "data: expecting a bytes-like instance, got {}",
            data.get_type().name()?
        )));
    }
    if data.len()? == 0 {
        return Ok(());
    }
    let protocol = slf.getattr(intern!(py, "_ssl_protocol"))?;
    if protocol.is_none() {
        // Closed twice: asyncio's write then fails looking up `_write_appdata` on None.
        protocol.getattr(intern!(py, "_write_appdata"))?;
    }
    _tls_write(&protocol, data)
}
