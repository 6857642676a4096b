//! `LoopCore`: the native half of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap, the epoll reactor and the eventfd waker, and runs
//! asyncio's iteration (`_run_once`) in Rust:
//!
//! 1. drop cancelled timers (lazily, or by rebuilding the heap when most are cancelled);
//! 2. poll with timeout 0 if callbacks are ready or the loop is stopping, else until the next
//!    deadline (or forever); the GIL is released only around this `epoll_wait`. When callbacks
//!    are ready and no file descriptor is watched, the poll is skipped: it could not report
//!    anything (cross-thread wake-ups land in the ready queue directly while the loop runs);
//! 3. queue the reader/writer handles of ready fds;
//! 4. move due timers to the ready queue, in deadline-then-scheduling order;
//! 5. run exactly the callbacks that were ready when step 5 began; callbacks they schedule run
//!    in the next iteration.
//!
//! The Python subclass (`python/ferroloop/_loop.py`) adds what runs once per loop or per call
//! site: run_until_complete, tasks, executors, exception handlers, async generator hooks,
//! signals.
//!
//! State lives in a [`GilCell`]: every access is short and never spans a call into Python
//! (callbacks, allocation of Python objects that may trigger the GC, dropping references whose
//! finalizers may run). Objects to release are collected and dropped after the access ends, so
//! Python code re-entering the loop from anywhere (a finalizer, another thread) always finds the
//! state free.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{
    PyAttributeError, PyKeyboardInterrupt, PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::clock;
use crate::errors::os_error;
use crate::executor::{Finished, Outcome};
use crate::gilcell::GilCell;
use crate::handles::{
    args_of, cancel_handle, is_cancelled, leave_gc, release_after_debug_check, release_queued,
    run_handle, visit_queued, Handle, LightCall, NewHandle, RunOutcome, TimerHandle,
};
use crate::metrics::{self, Stats};
use crate::pyhelpers;
use crate::reactor::{event_is_readable, event_is_writable, Io, Reactor, READABLE};
use crate::scheduler::{Ready, ReadyQueue, TimerHeap};
use crate::sockops::{self, SockOp, SockWaiter};
use crate::transports::datagram;
use crate::transports::stream;
use crate::waker::Waker;
use crate::watchdog::{self, Kind, Stamp};

/// Longest single poll, as in asyncio (one day).
const MAX_POLL_SECONDS: f64 = 86400.0;
/// Events fetched per `epoll_wait`.
const EVENTS_PER_POLL: usize = 1024;

struct LoopState {
    /// Counters and timings (`loop.metrics()`).
    stats: Stats,
    /// The blocking watchdog's stamp, while the watchdog is on for this loop.
    watch: Option<Arc<Stamp>>,
    /// `sock_*` operations waiting (finished ones are dropped when the list is next looked
    /// at): checked for sockets closed under them before the loop blocks.
    sock_waiters: Vec<Py<SockWaiter>>,
    /// List length at which finished waiters are swept out.
    sock_sweep_at: usize,
    ready: ReadyQueue,
    timers: TimerHeap,
    reactor: Reactor,
    waker: Waker,
    stopping: bool,
    running: bool,
    closed: bool,
    debug: bool,
    /// True while the loop thread is (about to be) blocked in `epoll_wait` with the GIL
    /// released; only then does `call_soon_threadsafe` need to write to the waker.
    polling: bool,
    /// `threading.get_ident()` of the thread running the loop, 0 when not running.
    thread_id: u64,
    /// An empty queue buffer: swapped with `ready` to take an iteration's work in O(1).
    spare: ReadyQueue,
    /// Reused buffer that native transports read into (allocated on first use).
    read_buf: Vec<u8>,
    /// `set_task_factory`'s factory.
    task_factory: Option<Py<PyAny>>,
}

/// `create_task()` on a closed loop: the "Event loop is closed" error, raised again from a
/// Python frame that holds the coroutine (`_loop._create_task_on_closed_loop`). asyncio's
/// `create_task` is Python, and its frame in the error's traceback keeps the coroutine alive
/// until the error is handled; with no frame of ours, the caller's temporary coroutine would
/// die while the error propagates, and a Cython coroutine's "never awaited" warning (grpc.aio's
/// `AioServer.shutdown`) is dropped when it dies with an error set. `error` is returned if the
/// helper cannot be reached.
fn closed_with_coroutine(
    slf: &Bound<'_, LoopCore>,
    coro: &Bound<'_, PyAny>,
    error: PyErr,
) -> PyErr {
    let py = slf.py();
    let raised = py
        .import(intern!(py, "ferroloop._loop"))
        .and_then(|m| m.getattr(intern!(py, "_create_task_on_closed_loop")))
        .and_then(|f| f.call1((slf, coro)));
    match raised {
        Err(e) => e,
        Ok(_) => error,
    }
}

impl LoopState {
    fn check_closed(&self) -> PyResult<()> {
        if self.closed {
            Err(PyRuntimeError::new_err("Event loop is closed"))
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

    /// `(debug)` after the checks every scheduling method makes.
    fn schedule_checks(&self, thread_check: bool) -> PyResult<bool> {
        self.check_closed()?;
        if self.debug && thread_check {
            self.check_thread()?;
        }
        Ok(self.debug)
    }

    fn push_ready(&mut self, h: Py<Handle>) {
        self.push(Ready::Call(h));
    }

    fn push(&mut self, item: Ready) {
        self.ready.push_back(item);
        if self.polling {
            self.waker.wake();
        }
    }
}

#[pyclass(subclass, frozen, module = "ferroloop._ferroloop", name = "LoopCore")]
pub struct LoopCore {
    state: GilCell<LoopState>,
    /// `time` is overridden (an instance attribute, or a subclass's method): the loop's
    /// decisions then read `self.time()`, as asyncio's do (see `Loop.__setattr__`).
    clock_overridden: AtomicBool,
    cancelled_timers: Arc<AtomicUsize>,
    clock_resolution: f64,
}

fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions. CPython's threading.get_ident() returns the
    // same value (PyThread_get_thread_ident is pthread_self on Linux).
    unsafe { libc::pthread_self() as u64 }
}

/// asyncio's `selectors._fileobj_to_fd`: an int, or an object with `fileno()`.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let py = obj.py();
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let r = obj
            .call_method0(intern!(py, "fileno"))
            .and_then(|v| v.extract::<i64>());
        match r {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
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

/// asyncio's `_check_callback`: in debug mode only, as asyncio does. Otherwise a
/// non-callable is accepted and fails when its handle runs ("Exception in callback", through
/// the exception handler); code counts on that (Sanic's tests pass a Task to `call_later`).
fn check_callback(
    py: Python<'_>,
    cb: &Bound<'_, PyAny>,
    method: &str,
    debug: bool,
) -> PyResult<()> {
    if !debug {
        return Ok(());
    }
    if pyhelpers::is_coroutine_like(py, cb)? {
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

/// Builds a handle: captures the current context when none is given, and the creation stack
/// in debug mode.
fn make_handle(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    context: Option<&Bound<'_, PyAny>>,
    debug: bool,
    persistent: bool,
) -> PyResult<NewHandle> {
    let mut copied = false;
    let ctx: Py<PyAny> = match context {
        Some(c) if !c.is_none() => c.clone().unbind(),
        _ => {
            // SAFETY: PyContext_CopyCurrent returns a new reference, or NULL with an exception.
            let p = unsafe { ffi::PyContext_CopyCurrent() };
            if p.is_null() {
                return Err(PyErr::fetch(py));
            }
            // SAFETY: `p` is a new, non-NULL reference whose ownership we take.
            let ctx = unsafe { Bound::from_owned_ptr(py, p).unbind() };
            copied = true;
            ctx
        }
    };
    let tb = if debug {
        Some(pyhelpers::extract_stack(py)?)
    } else {
        None
    };
    let handle = Handle::new(
        callback.clone().unbind(),
        args.clone().unbind(),
        ctx,
        debug,
        persistent,
    );
    if copied {
        handle.untrack_own_context(py);
    }
    Ok(NewHandle {
        handle,
        source_traceback: tb,
    })
}

fn set_unscheduled(py: Python<'_>, h: &Py<Handle>) {
    h.get().set_scheduled(py, false);
}

/// `KeyboardInterrupt` and `SystemExit` leave the loop instead of being reported.
fn stops_the_loop(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Reports a callback's exception the way asyncio's `Handle._run` does, through the Python
/// side's `_report_callback_error` (which builds the context dict and calls
/// `call_exception_handler`). `KeyboardInterrupt` and `SystemExit` propagate instead. The
/// handle keeps its callback and arguments afterwards, as asyncio's does: the handler may keep
/// the context and describe the handle later.
fn report_callback_error(
    slf: &Bound<'_, LoopCore>,
    handle: &Bound<'_, Handle>,
    err: PyErr,
) -> PyResult<()> {
    let py = slf.py();
    let res = if stops_the_loop(py, &err) {
        Err(err)
    } else {
        slf.call_method1(
            intern!(py, "_report_callback_error"),
            (handle, err.into_value(py)),
        )
        .map(drop)
    };
    res
}

fn run_one(slf: &Bound<'_, LoopCore>, h: &Bound<'_, Handle>) -> PyResult<()> {
    match run_handle(slf.py(), h)? {
        RunOutcome::Done => Ok(()),
        RunOutcome::Raised(err) => report_callback_error(slf, h, err),
    }
}

/// Releases a finished ready item right away, outside the state (its finalizers may run
/// Python), as a bound reference: a plain decref, no check of the GIL state per item.
#[inline]
fn release_ready(py: Python<'_>, item: Ready) {
    match item {
        Ready::Call(h) => drop(h.into_bound(py)),
        Ready::Light(call) => drop(call),
        Ready::Read(t) | Ready::Write(t) => drop(t.into_bound(py)),
        Ready::DatagramRead(t) | Ready::DatagramWrite(t) => drop(t.into_bound(py)),
        Ready::Sock(w) => drop(w.into_bound(py)),
        Ready::Executor(f) => drop(f),
    }
}

/// Settles a default-executor job's future. Errors cannot come from the job itself (those
/// are its outcome); any other is reported as unraisable, except the ones that stop a loop.
fn settle_executor_future(py: Python<'_>, f: Finished) -> PyResult<()> {
    match f.settle(py) {
        Err(e) if stops_the_loop(py, &e) => Err(e),
        Err(e) => {
            e.write_unraisable(py, None);
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Runs a handle-less callback; errors are reported with a handle built for the occasion.
/// In debug mode (switched on after it was queued) it becomes a handle first, for the
/// slow-callback check.
fn run_light(slf: &Bound<'_, LoopCore>, call: LightCall, debug: bool) -> PyResult<()> {
    let py = slf.py();
    if debug {
        let h = call.into_handle(py)?;
        return LoopCore::run_one_debug(slf, h.bind(py));
    }
    let Err(failed) = call.run(py) else {
        return Ok(());
    };
    let (err, handle) = *failed;
    if stops_the_loop(py, &err) {
        return Err(err);
    }
    report_callback_error(slf, handle?.bind(py), err)
}

type FdEntryRefs = (Option<Io>, Option<Io>);

/// What the watchdog's stamp names for a unit of work (a borrowed pointer; see `watchdog`).
fn unit_of(item: &Ready) -> (*mut ffi::PyObject, Kind) {
    match item {
        Ready::Call(h) => (h.get().callback_ptr(), Kind::Callback),
        Ready::Light(c) => (c.callback.as_ptr(), Kind::TaskStep),
        Ready::Read(t) => (t.as_ptr(), Kind::StreamRead),
        Ready::Write(t) => (t.as_ptr(), Kind::StreamWrite),
        Ready::DatagramRead(t) => (t.as_ptr(), Kind::DatagramRead),
        Ready::DatagramWrite(t) => (t.as_ptr(), Kind::DatagramWrite),
        Ready::Sock(w) => (w.as_ptr(), Kind::SockOp),
        Ready::Executor(f) => (f.fut.as_ptr(), Kind::ExecutorResult),
    }
}

/// The loop lets go of queued work that will not run (see `handles::release_queued`).
fn release_ready_queue(py: Python<'_>, ready: &[Ready]) {
    for item in ready {
        if let Ready::Call(h) = item {
            release_queued(py, h);
        }
    }
}

fn visit_io(visit: &PyVisit<'_>, io: &Io) -> Result<(), PyTraverseError> {
    match io {
        Io::Handle(h) => visit.call(h),
        Io::Stream(t) => visit.call(t),
        Io::Datagram(t) => visit.call(t),
        Io::Sock(w) => visit.call(w),
    }
}

fn visit_ready(visit: &PyVisit<'_>, item: &Ready) -> Result<(), PyTraverseError> {
    match item {
        Ready::Call(h) => visit_queued(h, visit),
        Ready::Light(c) => {
            visit.call(&c.callback)?;
            if let Some(a) = &c.arg {
                visit.call(a)?;
            }
            visit.call(&c.context)
        }
        Ready::Read(t) | Ready::Write(t) => visit.call(t),
        Ready::DatagramRead(t) | Ready::DatagramWrite(t) => visit.call(t),
        Ready::Sock(w) => visit.call(w),
        Ready::Executor(f) => visit.call(&f.fut),
    }
}

impl LoopCore {
    fn time_is_overridden(&self) -> bool {
        self.clock_overridden.load(Ordering::Relaxed)
    }

    /// `self.time()` when it is overridden, else None (the native clock applies).
    fn overriding_now(slf: &Bound<'_, LoopCore>) -> PyResult<Option<f64>> {
        if !slf.get().time_is_overridden() {
            return Ok(None);
        }
        let py = slf.py();
        Ok(Some(slf.call_method0(intern!(py, "time"))?.extract()?))
    }

    /// The task factory (None: asyncio's Task) for `create_task`, or its error on a closed
    /// loop, raised where the coroutine is held (`closed_with_coroutine`).
    fn task_factory_unless_closed(
        slf: &Bound<'_, LoopCore>,
        coro: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        slf.get()
            .state
            .with(py, |s| -> PyResult<_> {
                s.check_closed()?;
                Ok(s.task_factory.as_ref().map(|f| f.clone_ref(py)))
            })?
            .map_err(|e| closed_with_coroutine(slf, coro, e))
    }

    /// One iteration of the loop (see the module docs).
    fn run_once(slf: &Bound<'_, LoopCore>, buf: &mut [libc::epoll_event]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut garbage: Vec<Py<Handle>> = Vec::new();
        let overriding_now = Self::overriding_now(slf)?;
        let about_to_block = this.state.with(py, |s| {
            s.ready.is_empty() && !s.stopping && !s.sock_waiters.is_empty()
        })?;
        if about_to_block {
            Self::check_closed_sockets(slf)?;
        }

        // 1-2: purge cancelled timers, compute the poll timeout.
        let (epfd, timeout_ms, watching, lingered, timing) = this.state.with(py, |s| {
            let mut cancelled = this.cancelled_timers.load(Ordering::Relaxed);
            s.timers.purge_cancelled(py, &mut cancelled, &mut garbage);
            this.cancelled_timers.store(cancelled, Ordering::Relaxed);
            let timeout_ms = if !s.ready.is_empty() || s.stopping {
                0
            } else if let Some(when) = s.timers.peek_when() {
                let now = overriding_now.unwrap_or_else(clock::monotonic);
                let secs = (when - now).clamp(0.0, MAX_POLL_SECONDS);
                (secs * 1000.0).ceil() as i32
            } else {
                -1
            };
            s.polling = timeout_ms != 0;
            // About to block: registrations kept for sock_* reuse must not wake us up.
            let lingered = if timeout_ms != 0 && s.reactor.has_lingering() {
                s.reactor.drop_lingering()
            } else {
                Vec::new()
            };
            (
                s.reactor.epfd(),
                timeout_ms,
                !s.reactor.fds.is_empty(),
                lingered,
                s.stats.timing,
            )
        })?;
        drop(garbage);
        drop(lingered);
        let poll_started = if timing { clock::now_ns() } else { 0 };

        let n = if timeout_ms == 0 {
            if watching {
                Reactor::wait(epfd, buf, 0).map_err(os_error)?
            } else {
                0
            }
        } else {
            // A signal that arrived while callbacks ran must not wait for the next event.
            let polled = match py.check_signals() {
                Ok(()) => py.detach(|| Reactor::wait(epfd, buf, timeout_ms)),
                Err(e) => {
                    this.state.with(py, |s| s.polling = false)?;
                    return Err(e);
                }
            };
            this.state.with(py, |s| s.polling = false)?;
            let n = polled.map_err(os_error)?;
            py.check_signals()?;
            n
        };

        // 3-5: queue I/O callbacks and due timers, take this iteration's batch.
        let polled_at = if timing { clock::now_ns() } else { 0 };
        let overriding_now = Self::overriding_now(slf)?;
        let mut garbage: Vec<Io> = Vec::new();
        let (mut batch, mut read_buf, debug, watch) = this.state.with(py, |s| {
            if timing {
                s.stats.poll_ns += polled_at.saturating_sub(poll_started);
            }
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
                for (io, write, ready) in [
                    (reader, false, event_is_readable(events)),
                    (writer, true, event_is_writable(events)),
                ] {
                    match io {
                        None => {}
                        Some(io) if !ready => garbage.push(io),
                        Some(Io::Handle(h)) if is_cancelled(py, &h) => {
                            garbage.extend(s.reactor.clear(fd, write));
                            garbage.push(Io::Handle(h));
                        }
                        Some(Io::Handle(h)) => s.ready.push_back(Ready::Call(h)),
                        Some(Io::Stream(t)) if write => s.ready.push_back(Ready::Write(t)),
                        Some(Io::Stream(t)) => s.ready.push_back(Ready::Read(t)),
                        Some(Io::Datagram(t)) if write => {
                            s.ready.push_back(Ready::DatagramWrite(t))
                        }
                        Some(Io::Datagram(t)) => s.ready.push_back(Ready::DatagramRead(t)),
                        Some(Io::Sock(w)) => s.ready.push_back(Ready::Sock(w)),
                    }
                }
            }
            // The clock is read only when there are timers to compare with.
            let mut end = f64::NAN;
            while let Some(when) = s.timers.peek_when() {
                if end.is_nan() {
                    end = overriding_now.unwrap_or_else(clock::monotonic) + this.clock_resolution;
                }
                if when >= end {
                    break;
                }
                if let Some(e) = s.timers.pop() {
                    set_unscheduled(py, &e.handle);
                    s.ready.push_back(Ready::Call(e.handle));
                }
            }
            let spare = std::mem::take(&mut s.spare);
            let batch = std::mem::replace(&mut s.ready, spare);
            s.stats.iterations += 1;
            s.stats.callbacks += batch.len() as u64;
            (
                batch,
                std::mem::take(&mut s.read_buf),
                s.debug,
                s.watch.clone(),
            )
        })?;
        drop(garbage);

        let bytes_before = metrics::io_bytes();
        let mut result = Ok(());
        while let Some(item) = batch.pop_front() {
            if timing && batch.is_empty() {
                // Loop lag: how long the last unit of this batch waited since the poll.
                let waited = clock::now_ns().saturating_sub(polled_at);
                let _ = this.state.with(py, |s| s.stats.add_lag(waited));
            }
            if let Some(w) = &watch {
                let (what, kind) = unit_of(&item);
                w.begin(what, kind);
            }
            let r = match item {
                // Consumed by running it.
                Ready::Light(call) => run_light(slf, call, debug),
                Ready::Executor(f) => settle_executor_future(py, *f),
                item => {
                    let r = match &item {
                        Ready::Call(h) if debug => Self::run_one_debug(slf, h.bind(py)),
                        Ready::Call(h) => run_one(slf, h.bind(py)),
                        Ready::Read(t) => stream::on_readable(t.bind(py), &mut read_buf),
                        Ready::Write(t) => stream::on_writable(t.bind(py)),
                        Ready::DatagramRead(t) => datagram::on_readable(t.bind(py), &mut read_buf),
                        Ready::DatagramWrite(t) => datagram::on_writable(t.bind(py)),
                        Ready::Sock(w) => sockops::on_ready(w.bind(py)),
                        Ready::Light(_) | Ready::Executor(_) => Ok(()),
                    };
                    release_ready(py, item);
                    r
                }
            };
            if let Some(w) = &watch {
                w.end();
            }
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        if let Some(w) = &watch {
            w.idle();
        }
        let bytes_after = metrics::io_bytes();
        let callbacks_done = if timing { clock::now_ns() } else { 0 };
        // On an escaping exception (KeyboardInterrupt, SystemExit) the callbacks not run yet
        // stay first in line, as in asyncio.
        this.state.with(py, |s| {
            s.stats.bytes_received += bytes_after.0.wrapping_sub(bytes_before.0);
            s.stats.bytes_sent += bytes_after.1.wrapping_sub(bytes_before.1);
            if timing {
                s.stats.callback_ns += callbacks_done.saturating_sub(polled_at);
            }
            while let Some(item) = batch.pop_back() {
                s.ready.push_front(item);
            }
            if s.spare.capacity() < batch.capacity() {
                s.spare = batch;
            }
            if s.read_buf.capacity() < read_buf.capacity() {
                s.read_buf = read_buf;
            }
        })?;
        result
    }

    /// Debug-mode variant: records `_current_handle` and warns about slow callbacks.
    fn run_one_debug(slf: &Bound<'_, LoopCore>, hb: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        if is_cancelled(py, &hb.clone().unbind()) {
            return Ok(());
        }
        let _ = slf.setattr(intern!(py, "_current_handle"), hb);
        let t0 = clock::monotonic();
        // Timed with the error report, as asyncio times `Handle._run`.
        let res = run_handle(py, hb).and_then(|outcome| match outcome {
            RunOutcome::Done => Ok(false),
            RunOutcome::Raised(err) => report_callback_error(slf, hb, err).map(|()| true),
        });
        let dt = clock::monotonic() - t0;
        let _ = slf.setattr(intern!(py, "_current_handle"), py.None());
        let raised = res?;
        let checked = slf.call_method1(intern!(py, "_check_slow_callback"), (hb, dt));
        if !raised {
            release_after_debug_check(py, hb);
        }
        checked.map(drop)
    }

    /// `call_soon(callback, *args, context=None)`. Python reaches it through the hand-written
    /// fastcall entry point in `fastcall.rs`.
    pub(crate) fn call_soon_impl(
        slf: &Bound<'_, LoopCore>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::enqueue(slf, callback, args, context, false)
    }

    /// `call_soon` and `call_soon_threadsafe`: the same queueing (a polling loop is woken
    /// either way); only the debug-mode thread check differs.
    fn enqueue(
        slf: &Bound<'_, LoopCore>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.state.with(py, |s| s.schedule_checks(!threadsafe))??;
        let method = if threadsafe {
            "call_soon_threadsafe"
        } else {
            "call_soon"
        };
        check_callback(py, callback, method, debug)?;
        let h = make_handle(py, callback, args, context, debug, false)?.into_py(py)?;
        if threadsafe {
            h.get().mark_threadsafe(py);
            h.get().attach_thread_lock(py)?;
        }
        // Part of the loop while queued (see `handles::visit_queued`).
        leave_gc(h.bind(py));
        let queued = h.clone_ref(py);
        this.state.with(py, |s| s.push_ready(queued))?;
        Ok(h)
    }

    /// `call_soon(callback[, arg], context=ctx)` from a caller that drops the handle unseen
    /// (asyncio's C tasks and futures, recognised in `fastcall.rs`): the same checks, but the
    /// callback is queued without a `Handle` object. Debug mode keeps real handles (their
    /// creation stack and `_current_handle` are part of its reports). Returns `None`.
    pub(crate) fn call_soon_unobserved(
        slf: &Bound<'_, LoopCore>,
        callback: &Bound<'_, PyAny>,
        arg: Option<&Bound<'_, PyAny>>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.state.with(py, |s| s.schedule_checks(true))??;
        if debug {
            let args = args_of(py, arg)?;
            return Ok(Self::enqueue(slf, callback, &args, Some(context), false)?.into_any());
        }
        let call = LightCall {
            callback: callback.clone().unbind(),
            arg: arg.map(|a| a.clone().unbind()),
            context: context.clone().unbind(),
        };
        this.state.with(py, |s| s.push(Ready::Light(call)))?;
        Ok(py.None())
    }

    /// A default-executor job finished (called on the worker thread, with the GIL): queue the
    /// settling of its future, and wake the loop if it is polling. A closed loop drops it.
    pub(crate) fn post_executor_outcome(&self, py: Python<'_>, fut: Py<PyAny>, outcome: Outcome) {
        let item = Ready::Executor(Box::new(Finished { fut, outcome }));
        let rejected = self.state.with(py, |s| {
            if s.closed {
                Some(item)
            } else {
                s.push(item);
                None
            }
        });
        drop(rejected);
    }

    /// Queues `callback(*args)` in a copy of the current context, without the public API's
    /// checks (native transports scheduling their own callbacks).
    pub(crate) fn schedule_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let debug = self.state.with(py, |s| s.schedule_checks(false))??;
        let h = make_handle(py, callback, args, context, debug, false)?.into_py(py)?;
        self.state.with(py, |s| s.push_ready(h))
    }

    /// A `sock_*` operation that would block: a future settled by a [`SockWaiter`] registered
    /// for `fd` (see `sockops.rs`).
    fn sock_wait<'py>(
        slf: &Bound<'py, LoopCore>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        write: bool,
        op: SockOp,
        fut: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let fut = match fut {
            Some(f) => f,
            None => Self::create_future(slf)?,
        };
        let waiter = Py::new(
            py,
            SockWaiter::new(
                fd,
                write,
                sock.clone().unbind(),
                fut.clone().unbind(),
                op,
                slf.clone().unbind(),
            ),
        )?;
        let io = Io::Sock(waiter.clone_ref(py));
        let listed = waiter.clone_ref(py);
        let res = slf.get().state.with(py, |s| match s.check_closed() {
            Err(e) => Err((e, Some(io))),
            Ok(()) => s
                .reactor
                .set_sock(fd, io, write, sock)
                .map_err(|(e, rejected)| (os_error(e), rejected)),
        })?;
        match res {
            Ok((old, lingered)) => {
                drop(lingered);
                match old {
                    Some(Io::Handle(h)) => cancel_handle(py, h.bind(py))?,
                    Some(Io::Sock(w)) => sockops::displace(py, &w),
                    _ => {}
                }
            }
            Err((e, rejected)) => {
                drop(rejected);
                return Err(e);
            }
        }
        Self::list_sock_waiter(slf, listed)?;
        fut.call_method1(intern!(py, "add_done_callback"), (waiter,))?;
        Ok(fut)
    }

    /// Remembers a waiting `sock_*` operation for the closed-socket check, sweeping out the
    /// finished ones when the list has grown (a loop that never blocks never checks).
    fn list_sock_waiter(slf: &Bound<'_, LoopCore>, waiter: Py<SockWaiter>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let sweep = this.state.with(py, |s| {
            s.sock_waiters.push(waiter);
            (s.sock_waiters.len() >= s.sock_sweep_at).then(|| std::mem::take(&mut s.sock_waiters))
        })?;
        if let Some(all) = sweep {
            let (kept, done): (Vec<_>, Vec<_>) =
                all.into_iter().partition(|w| sockops::is_waiting(py, w));
            drop(done);
            Self::keep_sock_waiters(slf, kept)?;
        }
        Ok(())
    }

    /// Puts back the still-waiting operations taken out of the list (ahead of any listed
    /// meanwhile) and sets the length of the next sweep from them.
    fn keep_sock_waiters(slf: &Bound<'_, LoopCore>, kept: Vec<Py<SockWaiter>>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| {
            s.sock_sweep_at = (2 * kept.len()).max(64);
            let newer = std::mem::replace(&mut s.sock_waiters, kept);
            s.sock_waiters.extend(newer);
        })
    }

    /// Before the loop blocks: fails the `sock_*` operations whose socket was closed under
    /// them (see `sockops.rs`), which would otherwise wait for ever.
    fn check_closed_sockets(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let all = this
            .state
            .with(py, |s| std::mem::take(&mut s.sock_waiters))?;
        let mut kept = Vec::with_capacity(all.len());
        let mut closed = Vec::new();
        for w in all {
            if !sockops::is_waiting(py, &w) {
                continue;
            }
            if sockops::closed_under(w.bind(py))? {
                closed.push(w);
            } else {
                kept.push(w);
            }
        }
        Self::keep_sock_waiters(slf, kept)?;
        for w in closed {
            sockops::fail_closed(w.bind(py))?;
        }
        Ok(())
    }

    /// A finished or cancelled [`SockWaiter`] leaves `fd` (if it is still the registered one).
    /// With its socket object the registration may linger for the next wait on that socket;
    /// without (`None`: the socket was closed under it, the fd number no longer names its
    /// file) it is removed outright.
    pub(crate) fn release_sock(
        &self,
        py: Python<'_>,
        fd: RawFd,
        write: bool,
        sock: Option<Py<PyAny>>,
        waiter: &Bound<'_, SockWaiter>,
    ) -> PyResult<()> {
        let released = self.state.with(py, |s| {
            let entry = s.reactor.fds.get(&fd)?;
            let current = if write { &entry.writer } else { &entry.reader };
            match current {
                Some(Io::Sock(w)) if w.as_ptr() == waiter.as_ptr() => {}
                _ => return None,
            }
            match sock {
                Some(sock) => s.reactor.release_sock(fd, write, sock),
                None => s.reactor.clear(fd, write),
            }
        })?;
        drop(released);
        Ok(())
    }

    /// Installs `io` as the reader (or writer) of `fd`, or removes the current one (`None`).
    pub(crate) fn watch_native(
        &self,
        py: Python<'_>,
        fd: RawFd,
        io: Option<Io>,
        write: bool,
    ) -> PyResult<()> {
        let res = self.state.with(py, |s| {
            let Some(io) = io else {
                return Ok(s.reactor.clear(fd, write));
            };
            if let Err(e) = s.check_closed() {
                // Dropped after the state is released (it may hold the last reference).
                return Err((e, Some(io)));
            }
            s.reactor
                .set(fd, io, write)
                .map_err(|(e, rejected)| (os_error(e), rejected))
        })?;
        match res {
            Ok(Some(Io::Handle(h))) => cancel_handle(py, h.bind(py)),
            Ok(other) => {
                drop(other);
                Ok(())
            }
            Err((e, rejected)) => {
                drop(rejected);
                Err(e)
            }
        }
    }

    fn schedule_timer(
        slf: &Bound<'_, LoopCore>,
        when: f64,
        when_obj: Option<Py<PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.state.with(py, |s| s.schedule_checks(true))??;
        check_callback(py, callback, "call_at", debug)?;
        let base = make_handle(py, callback, args, context, debug, false)?;
        let h = TimerHandle::create(py, base, when, when_obj, this.cancelled_timers.clone())?;
        let entry = h.clone_ref(py);
        this.state.with(py, |s| s.timers.push(when, entry))?;
        Ok(h)
    }

    fn add_io(
        slf: &Bound<'_, LoopCore>,
        fileobj: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        write: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let fd = fileobj_to_fd(fileobj)?;
        let this = slf.get();
        let debug = this.state.with(py, |s| s.schedule_checks(false))??;
        // asyncio's add_reader/add_writer check nothing about the callback, in any mode.
        let h = make_handle(py, callback, args, None, debug, true)?.into_py(py)?;
        let registered = Io::Handle(h.clone_ref(py));
        let fileobj_id = if fileobj.is_instance_of::<PyInt>() {
            0
        } else {
            fileobj.as_ptr() as usize
        };
        match this.state.with(py, |s| {
            let res = s.reactor.set(fd, registered, write);
            if res.is_ok() {
                if let Some(e) = s.reactor.fds.get_mut(&fd) {
                    e.fileobj_id = fileobj_id;
                }
            }
            res
        })? {
            Ok(Some(Io::Handle(old))) => cancel_handle(py, old.bind(py))?,
            Ok(other) => drop(other),
            Err((e, rejected)) => {
                drop(rejected);
                return Err(os_error(e));
            }
        }
        Ok(h)
    }

    fn remove_io(
        slf: &Bound<'_, LoopCore>,
        fileobj: &Bound<'_, PyAny>,
        write: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let fd = match fileobj_to_fd(fileobj) {
            Ok(fd) => fd,
            Err(e) if e.is_instance_of::<PyValueError>(py) => {
                // A file object closed since it was registered: asyncio's selector finds the
                // registration by the object itself.
                let id = fileobj.as_ptr() as usize;
                return match slf.get().state.with(py, |s| s.reactor.fd_of_fileobj(id))? {
                    Some(fd) => Self::remove_closed_io(slf, fd, write),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let old = slf.get().state.with(py, |s| {
            if s.closed {
                None
            } else {
                s.reactor.clear(fd, write)
            }
        })?;
        match old {
            Some(Io::Handle(h)) => {
                cancel_handle(py, h.bind(py))?;
                Ok(true)
            }
            Some(other) => {
                drop(other);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `remove_reader`/`remove_writer` for a registration whose file is closed. As asyncio's
    /// selector: with the other direction still watched, changing the kernel's interest in
    /// a closed fd fails with EBADF and the whole registration is forgotten; otherwise the
    /// registration goes and the answer is whether a callback was removed.
    fn remove_closed_io(slf: &Bound<'_, LoopCore>, fd: RawFd, write: bool) -> PyResult<bool> {
        let py = slf.py();
        let (reader, writer, linger) = slf.get().state.with(py, |s| {
            if s.closed {
                (None, None, None)
            } else {
                s.reactor.forget_closed(fd)
            }
        })?;
        drop(linger);
        let (mine, other) = if write {
            (writer, reader)
        } else {
            (reader, writer)
        };
        let removed = match mine {
            Some(Io::Handle(h)) => {
                cancel_handle(py, h.bind(py))?;
                true
            }
            Some(io) => {
                drop(io);
                true
            }
            None => false,
        };
        if let Some(other) = other {
            drop(other);
            return Err(os_error(std::io::Error::from_raw_os_error(libc::EBADF)));
        }
        Ok(removed)
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let reactor = Reactor::new().map_err(os_error)?;
        let waker = Waker::new().map_err(os_error)?;
        reactor.add_raw(waker.fd(), READABLE).map_err(os_error)?;
        Ok(LoopCore {
            state: GilCell::new(LoopState {
                stats: Stats::default(),
                watch: None,
                sock_waiters: Vec::new(),
                sock_sweep_at: 64,
                ready: ReadyQueue::with_capacity(64),
                timers: TimerHeap::default(),
                reactor,
                waker,
                stopping: false,
                running: false,
                closed: false,
                debug: false,
                polling: false,
                thread_id: 0,
                spare: ReadyQueue::new(),
                read_buf: Vec::new(),
                task_factory: None,
            }),
            cancelled_timers: Arc::new(AtomicUsize::new(0)),
            clock_overridden: AtomicBool::new(false),
            clock_resolution: clock::resolution(),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector calls tp_traverse with the GIL held; the token only enters
        // our own cell, which refuses (and we skip: all stays reachable) if it is in use.
        let py = unsafe { Python::assume_attached() };
        let res = self.state.try_with(py, |s| -> Result<(), PyTraverseError> {
            for item in s.ready.iter() {
                visit_ready(&visit, item)?;
            }
            for h in s.timers.handles() {
                visit.call(h)?;
            }
            for entry in s.reactor.fds.values() {
                for io in [&entry.reader, &entry.writer].into_iter().flatten() {
                    visit_io(&visit, io)?;
                }
            }
            if let Some(f) = &s.task_factory {
                visit.call(f)?;
            }
            for w in &s.sock_waiters {
                visit.call(w)?;
            }
            Ok(())
        });
        res.unwrap_or(Ok(()))
    }

    /// Breaks a garbage cycle through the loop (the Python side's finalizer has closed it
    /// already in the usual case): releases every callback, timer and registration.
    fn __clear__(&self) {
        // SAFETY: tp_clear runs with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let released = self.state.try_with(py, |s| {
            let ready: Vec<Ready> = s.ready.drain(..).collect();
            let timers = s.timers.drain();
            let io: Vec<FdEntryRefs> = s
                .reactor
                .fds
                .drain()
                .map(|(_, e)| (e.reader, e.writer))
                .collect();
            let waiters = std::mem::take(&mut s.sock_waiters);
            (ready, timers, io, (s.task_factory.take(), waiters))
        });
        if let Some((ready, timers, io, factory)) = released {
            release_ready_queue(py, &ready);
            for t in &timers {
                set_unscheduled(py, t);
            }
            drop((ready, timers, io, factory));
        }
    }

    /// Turns the blocking watchdog on for this loop (`threshold` in seconds) or off (None).
    /// The watchdog's reports go through `ferroloop._watchdog`. Timing metrics go on with it.
    #[pyo3(signature = (threshold))]
    fn _set_blocking_threshold(slf: &Bound<'_, Self>, threshold: Option<f64>) -> PyResult<()> {
        let py = slf.py();
        if let Some(t) = threshold {
            if !(t.is_finite() && t > 0.0) {
                return Err(PyValueError::new_err(format!(
                    "blocking threshold must be a positive number of seconds, got {t}"
                )));
            }
        }
        let this = slf.get();
        let current = this.state.with(py, |s| s.watch.clone())?;
        let stamp = watchdog::configure(py, current, slf.as_any(), threshold)?;
        this.state.with(py, |s| {
            if let Some(st) = &stamp {
                if s.running {
                    st.set_thread(s.thread_id);
                }
            }
            s.watch = if threshold.is_some() { stamp } else { None };
        })
    }

    /// The watchdog's threshold in seconds, None when it is off.
    fn _blocking_threshold(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        self.state
            .with(py, |s| s.watch.as_ref().and_then(|w| w.threshold()))
    }

    /// Whether the timed metrics (poll and callback time, loop lag) are measured.
    fn _set_metrics_timing(&self, py: Python<'_>, on: bool) -> PyResult<()> {
        self.state.with(py, |s| {
            if on && !s.stats.timing {
                s.stats.reset_timings();
            }
            s.stats.timing = on;
        })
    }

    /// The native half of `loop.metrics()`.
    fn _metrics_native<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = self.state.with(py, |s| {
            (
                s.stats.iterations,
                s.stats.callbacks,
                s.stats.bytes_received,
                s.stats.bytes_sent,
                s.stats.timing,
                s.stats.poll_ns,
                s.stats.callback_ns,
                s.stats.lag(),
                s.stats.lag_samples(),
                s.ready.len(),
                s.timers.len(),
                s.reactor.fds.len(),
                s.watch
                    .as_ref()
                    .map_or(0, |w| w.episodes.load(Ordering::Relaxed)),
            )
        })?;
        let (it, cb, rx, tx, timing, poll_ns, cb_ns, lag, lag_n, ready, timers, fds, episodes) =
            snap;
        let d = PyDict::new(py);
        d.set_item("iterations", it)?;
        d.set_item("callbacks", cb)?;
        d.set_item("bytes_received", rx)?;
        d.set_item("bytes_sent", tx)?;
        d.set_item("timing", timing)?;
        let (poll, busy) = (poll_ns as f64 / 1e9, cb_ns as f64 / 1e9);
        d.set_item("poll_seconds", timing.then_some(poll))?;
        d.set_item("callback_seconds", timing.then_some(busy))?;
        let ratio = (timing && poll + busy > 0.0).then(|| busy / (poll + busy));
        d.set_item("busy_ratio", ratio)?;
        d.set_item("lag_p50", lag.map(|l| l.0))?;
        d.set_item("lag_p99", lag.map(|l| l.1))?;
        d.set_item("lag_max", lag.map(|l| l.2))?;
        d.set_item("lag_samples", lag_n)?;
        d.set_item("ready", ready)?;
        d.set_item("timers", timers)?;
        d.set_item("fds", fds)?;
        d.set_item("blocking_episodes", episodes)?;
        Ok(d)
    }

    /// Tells the core whether `time` is overridden (the Python side watches assignments to
    /// the attribute and checks for a subclass's method).
    fn _set_clock_overridden(&self, overridden: bool) {
        self.clock_overridden.store(overridden, Ordering::Relaxed);
    }

    /// `time.monotonic()`, the loop's clock.
    fn time(&self) -> f64 {
        clock::monotonic()
    }

    fn get_debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.debug)
    }

    fn _set_debug_flag(&self, py: Python<'_>, enabled: bool) -> PyResult<()> {
        self.state.with(py, |s| s.debug = enabled)
    }

    fn is_running(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.running)
    }

    fn is_closed(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.closed)
    }

    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| s.stopping = true)
    }

    fn _check_closed(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| s.check_closed())?
    }

    #[getter]
    fn _debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.debug)
    }

    #[getter]
    fn _stopping(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.stopping)
    }

    /// Writable as on asyncio's loop (frameworks such as Sanic reset it after a run).
    #[setter(_stopping)]
    fn set_stopping(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.state.with(py, |s| s.stopping = value)
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        self.state
            .with(py, |s| (s.thread_id != 0).then_some(s.thread_id))
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        self.clock_resolution
    }

    /// asyncio's `_ready`, read-only: a `collections.deque` snapshot of the callbacks queued
    /// for the next iteration, as handles (callbacks queued without one, from asyncio's C
    /// tasks and futures, get an equivalent handle). Libraries read its length and contents;
    /// changing the snapshot changes nothing (documented difference).
    #[getter]
    fn _ready(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        enum Item {
            Handle(Py<Handle>),
            Light(Py<PyAny>, Option<Py<PyAny>>, Py<PyAny>),
        }
        let items: Vec<Item> = self.state.with(py, |s| {
            s.ready
                .iter()
                .filter_map(|r| match r {
                    Ready::Call(h) => Some(Item::Handle(h.clone_ref(py))),
                    Ready::Light(c) => Some(Item::Light(
                        c.callback.clone_ref(py),
                        c.arg.as_ref().map(|a| a.clone_ref(py)),
                        c.context.clone_ref(py),
                    )),
                    _ => None,
                })
                .collect()
        })?;
        let mut handles: Vec<Py<Handle>> = Vec::with_capacity(items.len());
        for item in items {
            handles.push(match item {
                Item::Handle(h) => h,
                Item::Light(callback, arg, context) => LightCall {
                    callback,
                    arg,
                    context,
                }
                .into_handle(py)?,
            });
        }
        let deque = py.import("collections")?.getattr("deque")?;
        Ok(deque.call1((handles,))?.unbind())
    }

    /// asyncio's `_scheduled`, read-only: a list snapshot of the scheduled timers (cancelled
    /// ones included until they are purged), earliest first (a valid heap, as asyncio's is).
    #[getter]
    fn _scheduled(&self, py: Python<'_>) -> PyResult<Vec<Py<Handle>>> {
        let mut timers: Vec<(f64, u64, Py<Handle>)> = self.state.with(py, |s| {
            s.timers
                .entries()
                .map(|(when, seq, h)| (when, seq, h.clone_ref(py)))
                .collect()
        })?;
        timers.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        Ok(timers.into_iter().map(|(_, _, h)| h).collect())
    }

    /// asyncio's `_timer_cancelled_count`: scheduled timers cancelled and not yet purged.
    #[getter]
    fn _timer_cancelled_count(&self) -> usize {
        self.cancelled_timers.load(Ordering::Relaxed)
    }

    /// Number of callbacks in the ready queue (diagnostics).
    fn _ready_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.state.with(py, |s| s.ready.len())
    }

    /// Number of timers in the heap, cancelled ones included (diagnostics).
    fn _timer_count(&self, py: Python<'_>) -> PyResult<usize> {
        self.state.with(py, |s| s.timers.len())
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::enqueue(slf, callback, args, context, true)
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
        if !slf.get().time_is_overridden() {
            let delay: f64 = delay.extract()?;
            return Self::schedule_timer(
                slf,
                clock::monotonic() + delay,
                None,
                callback,
                args,
                context,
            );
        }
        // asyncio's `self.call_at(self.time() + delay, ...)`, with the overriding clock.
        let when = slf.call_method0(intern!(slf.py(), "time"))?.add(delay)?;
        Self::call_at(slf, &when, callback, args, context)
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
        let secs: f64 = when.extract()?;
        // Kept as given unless it is a float (an int deadline stays an int, as in asyncio).
        let when_obj = if when.is_exact_instance_of::<PyFloat>() {
            None
        } else {
            Some(when.clone().unbind())
        };
        Self::schedule_timer(slf, secs, when_obj, callback, args, context)
    }

    /// `sock_recv`'s first attempt: asyncio's checks, then `sock.recv(n)` on the raw fd: the
    /// data, or None when the socket would block (no exception raised and caught for the
    /// common "not yet" case).
    fn _sock_recv_now(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        n: isize,
    ) -> PyResult<Option<Py<PyAny>>> {
        let debug = self.state.with(py, |s| s.debug)?;
        let fd = sockops::checked_fd(sock, debug)?;
        sockops::try_recv(py, fd, n)
    }

    /// `sock_sendall`'s first attempt: asyncio's checks, then `sock.send(data)` on the raw
    /// fd. None when all of it went out, else the number of bytes sent.
    fn _sock_send_now(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Option<usize>> {
        let debug = self.state.with(py, |s| s.debug)?;
        let fd = sockops::checked_fd(sock, debug)?;
        let view = crate::transports::stream::ByteView::new(data, false)?;
        let bytes = view.as_slice();
        let n = sockops::try_send(fd, bytes)?;
        Ok((n < bytes.len()).then_some(n))
    }

    /// `sock.recv(n)` once the socket is readable (the Python side tried it first).
    fn _sock_recv_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        n: isize,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::sock_wait(slf, sock, fd, false, SockOp::Recv(n), None)
    }

    /// `sock.recv_into(buf, nbytes)` once the socket is readable.
    fn _sock_recv_into_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        buf: &Bound<'py, PyAny>,
        nbytes: isize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let op = SockOp::RecvInto(buf.clone().unbind(), nbytes);
        Self::sock_wait(slf, sock, fd, false, op, None)
    }

    /// Sends `view[offset:]` as the socket becomes writable; the future resolves to None.
    fn _sock_sendall_wait<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        view: &Bound<'py, PyAny>,
        offset: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let op = SockOp::SendAll(view.clone().unbind(), offset);
        Self::sock_wait(slf, sock, fd, true, op, None)
    }

    /// Settles `fut` with the outcome of `sock`'s connect in progress once it is writable
    /// (asyncio's `_sock_connect_cb`).
    fn _sock_connect_wait<'py>(
        slf: &Bound<'py, Self>,
        fut: &Bound<'py, PyAny>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
        address: &Bound<'py, PyAny>,
    ) -> PyResult<()> {
        let op = SockOp::Connect(address.clone().unbind());
        Self::sock_wait(slf, sock, fd, true, op, Some(fut.clone())).map(drop)
    }

    /// Settles `fut` with `(conn, address)` once `sock` has a connection to accept.
    fn _sock_accept_wait<'py>(
        slf: &Bound<'py, Self>,
        fut: &Bound<'py, PyAny>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
    ) -> PyResult<()> {
        Self::sock_wait(slf, sock, fd, false, SockOp::Accept, Some(fut.clone())).map(drop)
    }

    /// `asyncio.Future(loop=self)`.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kw = pyhelpers::task_kwnames(py, false, false)?;
        pyhelpers::vectorcall(&pyhelpers::future_type(py)?, &[slf.as_any()], Some(&kw))
    }

    /// `asyncio.Task(coro, loop=self, name=name, context=context)`, or the task factory's
    /// result, as asyncio's `create_task` does it.
    #[pyo3(signature = (coro, *, name=None, context=None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        let factory = Self::task_factory_unless_closed(slf, coro)?;
        match factory {
            None => {
                let kw = pyhelpers::task_kwnames(py, name.is_some(), context.is_some())?;
                let mut args: Vec<&Bound<'py, PyAny>> = vec![coro, slf.as_any()];
                args.extend(name);
                args.extend(context);
                // In debug mode the task records its creation stack, which ends at the
                // caller: this native call has no frame of its own (asyncio's Python
                // create_task deletes its own frame from the record; there is none here).
                let task = pyhelpers::vectorcall(&pyhelpers::task_type(py)?, &args, Some(&kw))?;
                Ok(task)
            }
            Some(factory) => {
                let factory = factory.bind(py);
                let task = match context {
                    None => pyhelpers::vectorcall(factory, &[slf.as_any(), coro], None)?,
                    Some(ctx) => {
                        let kw = pyhelpers::context_kwnames(py)?;
                        pyhelpers::vectorcall(factory, &[slf.as_any(), coro, ctx], Some(&kw))?
                    }
                };
                if let Some(name) = name {
                    match task.getattr(intern!(py, "set_name")) {
                        Ok(set_name) => {
                            set_name.call1((name,))?;
                        }
                        Err(e) if e.is_instance_of::<PyAttributeError>(py) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(task)
            }
        }
    }

    /// Python 3.14+'s `create_task(coro, **kwargs)` (`_loop.py` binds it as `create_task`
    /// there): the keyword arguments go to `asyncio.Task(coro, loop=self, **kwargs)` (3.14's
    /// `eager_start=`, say), or exactly as given to the task factory,
    /// `factory(self, coro, **kwargs)`, which then also handles `name`.
    #[pyo3(signature = (coro, **kwargs))]
    fn _create_task_kwargs<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kwargs = kwargs.filter(|k| !k.is_empty());
        let factory = Self::task_factory_unless_closed(slf, coro)?;
        if let Some(factory) = factory {
            return factory.bind(py).call((slf, coro), kwargs);
        }
        // In debug mode the task's creation stack ends at the caller (see `create_task`).
        match kwargs {
            None => {
                let kw = pyhelpers::task_kwnames(py, false, false)?;
                pyhelpers::vectorcall(&pyhelpers::task_type(py)?, &[coro, slf.as_any()], Some(&kw))
            }
            Some(given) => {
                let loop_key = intern!(py, "loop");
                if given.contains(loop_key)? {
                    // What `Task(coro, loop=self, **kwargs)` raises in asyncio.
                    return Err(PyTypeError::new_err(
                        "asyncio.tasks.Task() got multiple values for keyword argument 'loop'",
                    ));
                }
                let kw = given.copy()?;
                kw.set_item(loop_key, slf)?;
                pyhelpers::task_type(py)?.call((coro,), Some(&kw))
            }
        }
    }

    fn set_task_factory(&self, py: Python<'_>, factory: &Bound<'_, PyAny>) -> PyResult<()> {
        let factory = if factory.is_none() {
            None
        } else if factory.is_callable() {
            Some(factory.clone().unbind())
        } else {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        };
        let old = self
            .state
            .with(py, |s| std::mem::replace(&mut s.task_factory, factory))?;
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.state
            .with(py, |s| s.task_factory.as_ref().map(|f| f.clone_ref(py)))
    }

    #[getter]
    fn _task_factory(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.get_task_factory(py)
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
        let debug = slf.get().state.with(py, |s| s.debug)?;
        make_handle(py, callback, args, None, debug, true)?.into_py(py)
    }

    /// Queues an existing handle (asyncio's private `_add_callback`), waking a polling loop.
    fn _add_callback(slf: &Bound<'_, Self>, handle: Py<Handle>) -> PyResult<()> {
        slf.get().state.with(slf.py(), |s| {
            if !s.closed {
                s.push_ready(handle);
            }
        })
    }

    /// Wakes the loop if it is blocked in a poll (asyncio's private `_write_to_self`).
    fn _write_to_self(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| s.waker.wake())
    }

    /// Watches `fd` for reading; returns the handle (asyncio's private `_add_reader`). The
    /// public `add_reader` (Python side) first refuses fds owned by a transport.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, false)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_io(slf, fd, callback, args, true)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, false)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_io(slf, fd, true)
    }

    /// Whether `fd` has a reader (`write=False`) or writer callback registered.
    #[pyo3(signature = (fd, write=false))]
    fn _has_io(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, write: bool) -> PyResult<bool> {
        let fd = fileobj_to_fd(fd)?;
        slf.get().state.with(slf.py(), |s| {
            s.reactor.fds.get(&fd).is_some_and(|e| {
                if write {
                    e.writer.is_some()
                } else {
                    e.reader.is_some()
                }
            })
        })
    }

    /// Runs iterations until `stop()` is called. The Python side wraps this with the
    /// per-run setup (running-loop registration, async generator hooks).
    fn _run_forever_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.with(py, |s| -> PyResult<()> {
            s.check_closed()?;
            if s.running {
                return Err(PyRuntimeError::new_err(
                    "This event loop is already running",
                ));
            }
            s.running = true;
            s.thread_id = current_thread_id();
            if let Some(w) = &s.watch {
                w.set_thread(s.thread_id);
            }
            Ok(())
        })??;
        let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        let res = loop {
            if let Err(e) = Self::run_once(slf, &mut buf) {
                break Err(e);
            }
            match this.state.with(py, |s| s.stopping) {
                Ok(false) => {}
                Ok(true) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _ = this.state.with(py, |s| {
            s.stopping = false;
            s.running = false;
            s.thread_id = 0;
        });
        res
    }

    /// One iteration (asyncio's private `_run_once`), for tools and tests that drive the loop
    /// step by step.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        Self::run_once(slf, &mut buf)
    }

    /// Releases the native resources: drops pending callbacks and timers, closes the epoll
    /// and eventfd descriptors. Idempotent.
    fn _close_native(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let released = this.state.with(py, |s| -> PyResult<_> {
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            s.closed = true;
            if s.reactor.is_closed() {
                return Ok(None);
            }
            let ready: Vec<Ready> = s.ready.drain(..).collect();
            let timers = s.timers.drain();
            let io = s.reactor.close();
            s.waker.close();
            let waiters = std::mem::take(&mut s.sock_waiters);
            Ok(Some((ready, timers, (io, waiters))))
        })??;
        this.cancelled_timers.store(0, Ordering::Relaxed);
        if let Some((ready, timers, io)) = released {
            release_ready_queue(py, &ready);
            for t in &timers {
                set_unscheduled(py, t);
            }
            drop(ready);
            drop(timers);
            drop(io);
        }
        Ok(())
    }

    /// Marks the loop closed without releasing resources (used by `close()` before it shuts
    /// the executor down, as asyncio orders it).
    fn _mark_closed(&self, py: Python<'_>) -> PyResult<()> {
        self.state.with(py, |s| {
            if s.running {
                return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
            }
            s.closed = true;
            Ok(())
        })?
    }
}
