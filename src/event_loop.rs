//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap, the epoll reactor and the eventfd waker, and runs
//! asyncio's iteration (`_run_once`) in Rust:
//!
//! 1. drop cancelled timers (lazily, or by rebuilding the heap when most are cancelled);
//! 2. poll with timeout 0 if callbacks are ready or the loop is stopping, else until the next
//!    deadline (or forever); the GIL is released only around this `epoll_wait`;
//! 3. queue the reader/writer handles of ready fds;
//! 4. move due timers to the ready queue, in deadline-then-scheduling order;
//! 5. run exactly the callbacks that were ready when step 5 began; callbacks they schedule run
//!    in the next iteration.
//!
//! The Python subclass (`python/ferroloop/_loop.py`) adds what runs once per loop or per call
//! site: run_until_complete, tasks, executors, exception handlers, async generator hooks,
//! signals.
//!
//! Borrow discipline: `LoopCore` is a mutable pyclass. Every borrow is short and never spans a
//! call into Python (callbacks, allocation of Python objects that may trigger the GC, dropping
//! references whose finalizers may run). Objects to release are collected and dropped after the
//! borrow ends. So Python code re-entering the loop from anywhere (a finalizer, another thread)
//! always finds it unborrowed.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{
    PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple};

use crate::clock;
use crate::handles::{release_if_one_shot, run_handle, Handle, TimerHandle};
use crate::pyhelpers;
use crate::reactor::{event_is_readable, event_is_writable, Reactor, READABLE};
use crate::scheduler::{ReadyQueue, TimerHeap};
use crate::waker::Waker;

/// Longest single poll, as in asyncio (one day).
const MAX_POLL_SECONDS: f64 = 86400.0;
/// Events fetched per `epoll_wait`.
const EVENTS_PER_POLL: usize = 1024;

#[pyclass(subclass, module = "ferroloop._ferroloop", name = "LoopCore")]
pub struct LoopCore {
    ready: ReadyQueue,
    timers: TimerHeap,
    reactor: Reactor,
    waker: Waker,
    cancelled_timers: Arc<AtomicUsize>,
    stopping: bool,
    running: bool,
    closed: bool,
    debug: bool,
    /// True while the loop thread is (about to be) blocked in `epoll_wait` with the GIL
    /// released; only then does `call_soon_threadsafe` need to write to the waker.
    polling: bool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: u64,
    clock_resolution: f64,
}

fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions. CPython's threading.get_ident() returns the
    // same value (PyThread_get_thread_ident is pthread_self on Linux).
    unsafe { libc::pthread_self() as u64 }
}

fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

fn borrow_error(_: impl std::fmt::Debug) -> PyErr {
    PyRuntimeError::new_err("ferroloop: the event loop was re-entered while it was being updated")
}

fn st<'py>(slf: &Bound<'py, LoopCore>) -> PyResult<PyRefMut<'py, LoopCore>> {
    slf.try_borrow_mut().map_err(borrow_error)
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let r = obj
            .call_method0(intern!(obj.py(), "fileno"))
            .and_then(|v| {
                v.call_method0("__index__")
                    .or_else(|_| v.call_method0("__int__"))
            })
            .and_then(|v| v.extract::<i64>());
        match r {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(obj.py())
                    || e.is_instance_of::<PyTypeError>(obj.py())
                    || e.is_instance_of::<PyValueError>(obj.py()) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr()?
                )))
            }
            Err(e) => return Err(e),
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

impl LoopCore {
    fn check_closed(&self) -> PyResult<()> {
        if self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    fn check_thread(&self) -> PyResult<()> {
        if self.thread_id != 0 && self.thread_id != current_thread_id() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }
}

/// asyncio's `_check_callback`, plus (always, not only in debug mode) the callable check.
fn check_callback(
    py: Python<'_>,
    cb: &Bound<'_, PyAny>,
    method: &str,
    debug: bool,
) -> PyResult<()> {
    if debug && pyhelpers::is_coroutine_like(py, cb)? {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    if !cb.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {method}(), got {}",
            cb.repr()?
        )));
    }
    Ok(())
}

/// Builds the `Handle` struct: captures the current context when none is given, and the
/// creation stack in debug mode.
fn make_handle(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    context: Option<&Bound<'_, PyAny>>,
    debug: bool,
) -> PyResult<Handle> {
    let ctx: PyObject = match context {
        Some(c) if !c.is_none() => c.clone().unbind(),
        _ => {
            // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an exception.
            let p = unsafe { ffi::PyContext_CopyCurrent() };
            if p.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: `p` is a new, non-NULL reference whose ownership we take.
            unsafe { PyObject::from_owned_ptr(py, p) }
        }
    };
    let tb = if debug {
        Some(pyhelpers::extract_stack(py)?)
    } else {
        None
    };
    Ok(Handle::new(
        callback.clone().unbind(),
        args.clone().unbind(),
        ctx,
        tb,
        debug,
    ))
}

fn is_cancelled(py: Python<'_>, h: &Py<Handle>) -> bool {
    h.bind(py)
        .try_borrow()
        .map(|b| b.cancelled)
        .unwrap_or(false)
}

fn set_unscheduled(py: Python<'_>, h: &Py<Handle>) {
    if let Ok(mut b) = h.bind(py).try_borrow_mut() {
        b.scheduled = false;
    }
}

/// Reports a callback's exception the way asyncio's `Handle._run` does, through the Python
/// side's `_report_callback_error` (which builds the context dict and calls
/// `call_exception_handler`). `KeyboardInterrupt` and `SystemExit` propagate instead.
fn handle_callback_error(
    slf: &Bound<'_, LoopCore>,
    handle: &Bound<'_, Handle>,
    err: PyErr,
) -> PyResult<()> {
    let py = slf.py();
    if err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py) {
        return Err(err);
    }
    slf.call_method1(
        intern!(py, "_report_callback_error"),
        (handle, err.into_value(py)),
    )?;
    Ok(())
}

/// One iteration of the loop (see the module docs).
fn run_once_impl(slf: &Bound<'_, LoopCore>, buf: &mut [libc::epoll_event]) -> PyResult<()> {
    let py = slf.py();
    let mut garbage: Vec<Py<Handle>> = Vec::new();

    // 1-2: purge cancelled timers, compute the poll timeout.
    let (epfd, timeout_ms) = {
        let mut guard = st(slf)?;
        let s = &mut *guard;
        let mut cancelled = s.cancelled_timers.load(Ordering::Relaxed);
        s.timers.purge_cancelled(py, &mut cancelled, &mut garbage);
        s.cancelled_timers.store(cancelled, Ordering::Relaxed);
        let timeout_ms = if !s.ready.is_empty() || s.stopping {
            0
        } else if let Some(when) = s.timers.peek_when() {
            let secs = (when - clock::monotonic()).clamp(0.0, MAX_POLL_SECONDS);
            (secs * 1000.0).ceil() as i32
        } else {
            -1
        };
        s.polling = timeout_ms != 0;
        (s.reactor.epfd(), timeout_ms)
    };
    drop(garbage);

    let polled = if timeout_ms == 0 {
        Reactor::wait(epfd, buf, 0)
    } else {
        // A signal that arrived while callbacks ran must not wait for the next event.
        if let Err(e) = py.check_signals() {
            st(slf)?.polling = false;
            return Err(e);
        }
        py.allow_threads(|| Reactor::wait(epfd, buf, timeout_ms))
    };
    st(slf)?.polling = false;
    let n = polled.map_err(crate::errors::os_error)?;
    py.check_signals()?;

    // 3-4: queue I/O callbacks, then due timers.
    let mut garbage: Vec<Py<Handle>> = Vec::new();
    let ntodo = {
        let mut guard = st(slf)?;
        let s = &mut *guard;
        let waker_fd = s.waker.fd();
        for ev in &buf[..n] {
            let fd = ev.u64 as u32 as RawFd;
            let events = ev.events;
            if fd == waker_fd {
                s.waker.drain();
                continue;
            }
            let Some(entry) = s.reactor.fds.get(&fd) else {
                continue;
            };
            let reader = entry.reader.as_ref().map(|h| h.clone_ref(py));
            let writer = entry.writer.as_ref().map(|h| h.clone_ref(py));
            if event_is_readable(events) {
                if let Some(h) = reader {
                    if is_cancelled(py, &h) {
                        garbage.extend(s.reactor.clear(fd, false));
                        garbage.push(h);
                    } else {
                        s.ready.push_back(h);
                    }
                }
            }
            if event_is_writable(events) {
                if let Some(h) = writer {
                    if is_cancelled(py, &h) {
                        garbage.extend(s.reactor.clear(fd, true));
                        garbage.push(h);
                    } else {
                        s.ready.push_back(h);
                    }
                }
            }
        }
        let end = clock::monotonic() + s.clock_resolution;
        while let Some(when) = s.timers.peek_when() {
            if when >= end {
                break;
            }
            if let Some(e) = s.timers.pop() {
                set_unscheduled(py, &e.handle);
                s.ready.push_back(e.handle);
            }
        }
        s.ready.len()
    };
    drop(garbage);

    // 5: run what was ready when we started.
    let debug = slf.try_borrow().map(|s| s.debug).unwrap_or(false);
    for _ in 0..ntodo {
        let Some(h) = st(slf)?.ready.pop_front() else {
            break;
        };
        let hb = h.bind(py);
        let res = if debug {
            run_handle_debug(slf, hb)
        } else {
            match run_handle(py, hb) {
                Ok(()) => Ok(()),
                Err(e) => handle_callback_error(slf, hb, e),
            }
        };
        release_if_one_shot(hb);
        res?;
    }
    Ok(())
}

/// Debug-mode variant: records `_current_handle` and warns about slow callbacks.
fn run_handle_debug(slf: &Bound<'_, LoopCore>, hb: &Bound<'_, Handle>) -> PyResult<()> {
    let py = slf.py();
    if hb.borrow().cancelled {
        return Ok(());
    }
    let _ = slf.setattr(intern!(py, "_current_handle"), hb);
    let t0 = clock::monotonic();
    let res = run_handle(py, hb);
    let dt = clock::monotonic() - t0;
    let out = match res {
        Ok(()) => Ok(()),
        Err(e) => handle_callback_error(slf, hb, e),
    };
    let _ = slf.setattr(intern!(py, "_current_handle"), py.None());
    out?;
    slf.call_method1(intern!(py, "_check_slow_callback"), (hb, dt))?;
    Ok(())
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        let reactor = Reactor::new().map_err(crate::errors::os_error)?;
        let waker = Waker::new().map_err(crate::errors::os_error)?;
        reactor
            .add_raw(waker.fd(), READABLE)
            .map_err(crate::errors::os_error)?;
        Ok(LoopCore {
            ready: ReadyQueue::with_capacity(64),
            timers: TimerHeap::default(),
            reactor,
            waker,
            cancelled_timers: Arc::new(AtomicUsize::new(0)),
            stopping: false,
            running: false,
            closed: false,
            debug: false,
            polling: false,
            thread_id: 0,
            clock_resolution: clock::resolution(),
        })
    }

    /// `time.monotonic()`, the loop's clock.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    fn get_debug(&self) -> bool {
        self.debug
    }

    #[pyo3(name = "_set_debug_flag")]
    fn set_debug_flag(&mut self, enabled: bool) {
        self.debug = enabled;
    }

    fn is_running(&self) -> bool {
        self.running
    }

    fn is_closed(&self) -> bool {
        self.closed
    }

    fn stop(&mut self) {
        self.stopping = true;
    }

    fn _check_closed(&self) -> PyResult<()> {
        self.check_closed()
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> PyObject {
        if self.thread_id == 0 {
            py.None()
        } else {
            self.thread_id
                .into_pyobject(py)
                .map(|v| v.into_any().unbind())
                .unwrap_or_else(|_| py.None())
        }
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    /// Number of callbacks in the ready queue (diagnostics).
    fn _ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Number of timers in the heap, cancelled ones included (diagnostics).
    fn _timer_count(&self) -> usize {
        self.timers.len()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = {
            let s = slf.try_borrow().map_err(borrow_error)?;
            s.check_closed()?;
            if s.debug {
                s.check_thread()?;
            }
            s.debug
        };
        check_callback(py, callback, "call_soon", debug)?;
        let h = Py::new(py, make_handle(py, callback, args, context, debug)?)?;
        st(slf)?.ready.push_back(h.clone_ref(py));
        Ok(h)
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = {
            let s = slf.try_borrow().map_err(borrow_error)?;
            s.check_closed()?;
            s.debug
        };
        check_callback(py, callback, "call_soon_threadsafe", debug)?;
        let h = Py::new(py, make_handle(py, callback, args, context, debug)?)?;
        let mut s = st(slf)?;
        s.ready.push_back(h.clone_ref(py));
        if s.polling {
            s.waker.wake();
        }
        Ok(h)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let delay: f64 = delay.extract()?;
        schedule_timer(slf, clock::monotonic() + delay, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when: f64 = when.extract()?;
        schedule_timer(slf, when, callback, args, context)
    }

    /// A handle for `callback(*args)` in a copy of the current context, not scheduled
    /// (signal handlers keep one and queue it each time the signal arrives).
    #[pyo3(signature = (callback, *args))]
    fn _make_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let debug = slf.try_borrow().map_err(borrow_error)?.debug;
        let mut h = make_handle(py, callback, args, None, debug)?;
        h.persistent = true;
        Py::new(py, h)
    }

    /// Queues an existing handle (asyncio's private `_add_callback`), waking a polling loop.
    fn _add_callback(slf: &Bound<'_, Self>, handle: Py<Handle>) -> PyResult<()> {
        let mut s = st(slf)?;
        if s.closed {
            return Ok(());
        }
        s.ready.push_back(handle);
        if s.polling {
            s.waker.wake();
        }
        Ok(())
    }

    /// Wakes the loop if it is blocked in a poll (asyncio's private `_write_to_self`).
    fn _write_to_self(&self) {
        self.waker.wake();
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        add_io(slf, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        add_io(slf, fd, callback, args, true)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        remove_io(slf, fd, false)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        remove_io(slf, fd, true)
    }

    /// Whether `fd` has a reader (`write=False`) or writer callback registered.
    #[pyo3(signature = (fd, write=false))]
    fn _has_io(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
        let fd = fileobj_to_fd(fd)?;
        let s = slf.try_borrow().map_err(borrow_error)?;
        Ok(s.reactor.fds.get(&fd).is_some_and(|e| {
            if write {
                e.writer.is_some()
            } else {
                e.reader.is_some()
            }
        }))
    }

    /// Runs iterations until `stop()` is called. The Python side wraps this with the
    /// per-run setup (running-loop registration, async generator hooks).
    fn _run_forever_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let mut s = st(slf)?;
            s.check_closed()?;
            if s.running {
                return Err(PyRuntimeError::new_err(
                    "This event loop is already running",
                ));
            }
            s.running = true;
            s.thread_id = current_thread_id();
        }
        let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        let res = loop {
            if let Err(e) = run_once_impl(slf, &mut buf) {
                break Err(e);
            }
            match slf.try_borrow() {
                Ok(s) if !s.stopping => {}
                _ => break Ok(()),
            }
        };
        if let Ok(mut s) = slf.try_borrow_mut() {
            s.stopping = false;
            s.running = false;
            s.thread_id = 0;
        }
        res
    }

    /// One iteration (asyncio's private `_run_once`), for tools and tests that drive the loop
    /// step by step.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        run_once_impl(slf, &mut buf)
    }

    /// Releases the native resources: drops pending callbacks and timers, closes the epoll
    /// and eventfd descriptors. Idempotent.
    fn _close_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (ready, timers, io) = {
            let mut s = st(slf)?;
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            if s.reactor.is_closed() {
                s.closed = true;
                return Ok(());
            }
            s.closed = true;
            let ready: Vec<Py<Handle>> = s.ready.drain(..).collect();
            let timers = s.timers.drain();
            let io = s.reactor.close();
            s.waker.close();
            s.cancelled_timers.store(0, Ordering::Relaxed);
            (ready, timers, io)
        };
        for t in &timers {
            set_unscheduled(py, t);
        }
        drop(ready);
        drop(timers);
        drop(io);
        Ok(())
    }

    /// Marks the loop closed without releasing resources (used by `close()` before it shuts
    /// the executor down, as asyncio orders it).
    fn _mark_closed(&mut self) -> PyResult<()> {
        if self.running {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        self.closed = true;
        Ok(())
    }
}

fn schedule_timer(
    slf: &Bound<'_, LoopCore>,
    when: f64,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    context: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<Handle>> {
    let py = slf.py();
    let (debug, counter) = {
        let s = slf.try_borrow().map_err(borrow_error)?;
        s.check_closed()?;
        if s.debug {
            s.check_thread()?;
        }
        (s.debug, s.cancelled_timers.clone())
    };
    check_callback(py, callback, "call_at", debug)?;
    let base = make_handle(py, callback, args, context, debug)?;
    let h = TimerHandle::create(py, base, when, counter)?;
    if let Ok(mut b) = h.bind(py).try_borrow_mut() {
        b.scheduled = true;
    }
    st(slf)?.timers.push(when, h.clone_ref(py));
    Ok(h)
}

fn add_io(
    slf: &Bound<'_, LoopCore>,
    fd: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    write: bool,
) -> PyResult<()> {
    let py = slf.py();
    let fd = fileobj_to_fd(fd)?;
    let debug = {
        let s = slf.try_borrow().map_err(borrow_error)?;
        s.check_closed()?;
        s.debug
    };
    let method = if write { "add_writer" } else { "add_reader" };
    check_callback(py, callback, method, debug)?;
    let mut h = make_handle(py, callback, args, None, debug)?;
    h.persistent = true;
    let h = Py::new(py, h)?;
    let res = st(slf)?.reactor.set(fd, h, write);
    match res {
        Ok(old) => {
            if let Some(old) = old {
                Handle::cancel(old.bind(py))?;
            }
            Ok(())
        }
        Err((e, rejected)) => {
            drop(rejected);
            Err(crate::errors::os_error(e))
        }
    }
}

fn remove_io(slf: &Bound<'_, LoopCore>, fd: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
    let py = slf.py();
    let fd = fileobj_to_fd(fd)?;
    let old = {
        let mut s = st(slf)?;
        if s.closed {
            return Ok(false);
        }
        s.reactor.clear(fd, write)
    };
    match old {
        Some(h) => {
            Handle::cancel(h.bind(py))?;
            Ok(true)
        }
        None => Ok(false),
    }
}
