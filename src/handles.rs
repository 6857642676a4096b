//! Callback handles: `Handle` (from `call_soon`, readers and writers) and `TimerHandle` (from
//! `call_later`/`call_at`), native counterparts of `asyncio.Handle` and `asyncio.TimerHandle`.
//!
//! A handle owns the callback, its positional arguments (the `*args` tuple, kept as is, so a
//! call passes them without copying) and the `contextvars.Context` it runs in. Running a handle
//! enters the context with `PyContext_Enter`, calls the callback through the vectorcall path of
//! `PyObject_Call`, and leaves the context: the same observable behaviour as asyncio's
//! `context.run(callback, *args)`, without building a bound method per call.
//!
//! Handles take part in Python's cyclic GC while they hold a callback: an object that keeps
//! its own pending `call_later` handle (object -> handle -> bound method -> object), or a task
//! left waiting in `asyncio.sleep()` when its loop closes, is a cycle the collector must be
//! able to free, as it does with asyncio's handles. A one-shot handle gives up its callback and
//! arguments when it runs (or is cancelled) and leaves the collector's lists at that moment,
//! so the handles that already ran (nearly all of them) cost the collector nothing.
//! Handles can be weakly referenced, as asyncio's can.
//!
//! Size matters here: a `Handle` is 80 bytes with the collector's header (object header,
//! weak reference list, three references, one flag byte). At 64 bytes it shared CPython's
//! allocator size class with the `Context` copied for every `call_soon`; handles and contexts
//! then alternated in memory and every collection of the young generation (which walks those
//! contexts) touched twice the cache lines. So the rarely used parts live elsewhere: a timer's
//! deadline in the `TimerHandle` subclass, and debug-mode data (creation stack, repr at
//! cancellation) in a side table keyed by the handle's address, removed when the handle is
//! freed.

use std::cell::{Cell, UnsafeCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyFloat, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::pyhelpers;

/// The references a handle holds. `None` once given up (run or cancelled).
pub(crate) struct HandleData {
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) args: Option<Py<PyTuple>>,
    pub(crate) context: Option<Py<PyAny>>,
}

const CANCELLED: u8 = 1;
const DEBUG: u8 = 1 << 1;
/// Reader, writer and signal handles run many times; the others run once and then give up
/// their callback and arguments (see the module docs).
const PERSISTENT: u8 = 1 << 2;
/// A timer still in the loop's heap.
const SCHEDULED: u8 = 1 << 3;
/// `HandleData` is being accessed further up the stack (see [`Handle::with`]).
const BUSY: u8 = 1 << 4;
/// The handle has an entry in the debug side table.
const HAS_EXTRA: u8 = 1 << 5;
/// The context is the handle's own copy, hidden from the cyclic GC while the handle holds it
/// (see [`Handle::untrack_own_context`]).
const CONTEXT_UNTRACKED: u8 = 1 << 6;
/// Made by `call_soon_threadsafe` (Python 3.14+ gives those asyncio's `_ThreadSafeHandle`).
const THREADSAFE: u8 = 1 << 7;

/// Debug-mode data, kept out of the handle itself (see the module docs).
#[derive(Default)]
struct HandleExtra {
    /// Where the handle was created, as `traceback.StackSummary`.
    source_traceback: Option<Py<PyAny>>,
    /// In debug mode asyncio keeps the handle's repr from the moment it was cancelled.
    repr_at_cancel: Option<Py<PyAny>>,
    /// `call_soon_threadsafe`'s handles on Python 3.14+: asyncio's `_ThreadSafeHandle` holds a
    /// `threading.RLock` while its callback runs, and `cancel()`/`cancelled()` take it, so
    /// another thread asking waits until the callback has finished.
    lock: Option<Py<PyAny>>,
}

/// Side table of [`HandleExtra`], keyed by the address of the `Handle` inside its Python
/// object (stable for the object's life). Only debug-mode handles and (3.14+)
/// `call_soon_threadsafe`'s have entries.
static EXTRAS: Mutex<BTreeMap<usize, HandleExtra>> = Mutex::new(BTreeMap::new());

fn extras() -> std::sync::MutexGuard<'static, BTreeMap<usize, HandleExtra>> {
    // A panic while the lock was held cannot leave the map inconsistent (single operations).
    EXTRAS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Number of handles with debug-mode data still alive (tests check it returns to zero).
#[pyfunction]
pub fn _handle_extras_count() -> usize {
    extras().len()
}

#[pyclass(subclass, frozen, weakref, module = "ferroloop", name = "Handle")]
pub struct Handle {
    flags: Cell<u8>,
    data: UnsafeCell<HandleData>,
}

// SAFETY: `flags` and `data` are only read or written by code holding the GIL (every accessor
// takes a `Python` token or runs from a Python method or tp_dealloc), which serializes all
// threads that could reach them; the GIL's release/acquire orders the memory accesses.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.flags.get() & CONTEXT_UNTRACKED != 0 {
            if let Some(ctx) = &self.data.get_mut().context {
                // SAFETY: the handle is being dropped by code holding the GIL (its dealloc, or
                // a failed construction); the context was untracked by `untrack_own_context`
                // and nothing else re-tracks a Context, so it is untracked now. It goes back
                // to the GC before this reference is released: CPython's Context dealloc
                // expects a tracked object.
                unsafe { ffi::PyObject_GC_Track(ctx.as_ptr() as *mut std::ffi::c_void) };
            }
        }
        if self.flags.get() & HAS_EXTRA != 0 {
            let key = self as *const Handle as usize;
            // Taken out under the lock, released after it (finalizers may run Python code).
            let entry = extras().remove(&key);
            drop(entry);
        }
    }
}

impl Handle {
    pub(crate) fn new(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        debug: bool,
        persistent: bool,
    ) -> Self {
        let mut flags = 0;
        if debug {
            flags |= DEBUG;
        }
        if persistent {
            flags |= PERSISTENT;
        }
        Handle {
            flags: Cell::new(flags),
            data: UnsafeCell::new(HandleData {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
            }),
        }
    }

    /// For a context copied for this handle alone (`call_soon` without `context=`): hides it
    /// from the cyclic GC while the handle holds it. Thousands of pending handles meant
    /// thousands of tracked contexts walked by every young-generation collection for nothing
    /// (a large share of `call_soon`'s cost). Nothing but the handle refers to the copy, so a
    /// cycle through it would need one of its context variables to hold the handle itself,
    /// which the collector does not see (the one case left to reference counting). The
    /// handle's drop tracks the context again before releasing it.
    pub(crate) fn untrack_own_context(&self, py: Python<'_>) {
        let untracked = self.with(py, |d| match &d.context {
            Some(ctx) => {
                // SAFETY: a Context fresh from PyContext_CopyCurrent is tracked, and no one
                // else holds it yet.
                unsafe { ffi::PyObject_GC_UnTrack(ctx.as_ptr() as *mut std::ffi::c_void) };
                true
            }
            None => false,
        });
        if untracked.unwrap_or(false) {
            self.set(CONTEXT_UNTRACKED, true);
        }
    }

    #[inline]
    fn has(&self, flag: u8) -> bool {
        self.flags.get() & flag != 0
    }

    #[inline]
    fn set(&self, flag: u8, on: bool) {
        let f = self.flags.get();
        self.flags.set(if on { f | flag } else { f & !flag });
    }

    /// Runs `f` with exclusive access to the handle's references. Fails (without running `f`)
    /// if they are already being accessed further up this thread's stack. `f` must not call
    /// into Python (nor drop references: hand them back to drop afterwards).
    #[inline]
    pub(crate) fn with<R>(
        &self,
        _py: Python<'_>,
        f: impl FnOnce(&mut HandleData) -> R,
    ) -> PyResult<R> {
        if self.has(BUSY) {
            return Err(PyRuntimeError::new_err(
                "ferroloop: native state re-entered while it was being updated",
            ));
        }
        self.set(BUSY, true);
        struct Release<'a>(&'a Handle);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.set(BUSY, false);
            }
        }
        let _release = Release(self);
        // SAFETY: BUSY was clear and is now set until `_release` drops (also on unwind), so
        // no other reference to the data exists; the `Python` token proves the GIL is held,
        // so no other thread can pass the BUSY check concurrently.
        let data = unsafe { &mut *self.data.get() };
        Ok(f(data))
    }

    /// The callback as a borrowed pointer (null if none), for the watchdog's stamp.
    pub(crate) fn callback_ptr(&self) -> *mut ffi::PyObject {
        if self.has(BUSY) {
            return std::ptr::null_mut();
        }
        // SAFETY: BUSY is clear and the caller holds the GIL (it runs the loop), so no `&mut`
        // to the data exists; only a pointer is read.
        let d = unsafe { &*self.data.get() };
        d.callback
            .as_ref()
            .map_or(std::ptr::null_mut(), |c| c.as_ptr())
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.has(CANCELLED)
    }

    pub(crate) fn mark_threadsafe(&self, _py: Python<'_>) {
        self.set(THREADSAFE, true);
    }

    pub(crate) fn set_scheduled(&self, _py: Python<'_>, on: bool) {
        self.set(SCHEDULED, on);
    }

    /// For the timer heap: true (and the timer marked unscheduled) if it was cancelled.
    pub(crate) fn take_if_cancelled(&self, _py: Python<'_>) -> bool {
        let cancelled = self.has(CANCELLED);
        if cancelled {
            self.set(SCHEDULED, false);
        }
        cancelled
    }

    /// Attaches the creation stack (debug mode). Call once the handle is in its Python object.
    fn attach_traceback(&self, _py: Python<'_>, tb: Py<PyAny>) {
        let key = self as *const Handle as usize;
        let old = extras()
            .entry(key)
            .or_default()
            .source_traceback
            .replace(tb);
        self.set(HAS_EXTRA, true);
        drop(old);
    }

    /// Gives a `call_soon_threadsafe` handle its lock (see [`HandleExtra::lock`]) where
    /// asyncio has `_ThreadSafeHandle` (3.14+).
    pub(crate) fn attach_thread_lock(&self, py: Python<'_>) -> PyResult<()> {
        let Some(rlock) = pyhelpers::rlock_type(py)? else {
            return Ok(());
        };
        let lock = rlock.call0()?.unbind();
        let key = self as *const Handle as usize;
        let old = extras().entry(key).or_default().lock.replace(lock);
        self.set(HAS_EXTRA, true);
        drop(old);
        Ok(())
    }

    /// Runs `f` holding the handle's thread lock, if it has one.
    fn locked<R>(&self, py: Python<'_>, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
        let Some(lock) = self.extra_field(py, |e| e.lock.as_ref()) else {
            return f();
        };
        let lock = lock.bind(py);
        lock.call_method0(pyo3::intern!(py, "acquire"))?;
        let out = f();
        let released = lock.call_method0(pyo3::intern!(py, "release"));
        let out = out?;
        released?;
        Ok(out)
    }

    fn set_repr_at_cancel(&self, _py: Python<'_>, repr: Py<PyAny>) {
        let key = self as *const Handle as usize;
        let old = extras()
            .entry(key)
            .or_default()
            .repr_at_cancel
            .replace(repr);
        self.set(HAS_EXTRA, true);
        drop(old);
    }

    fn extra_field(
        &self,
        py: Python<'_>,
        field: impl FnOnce(&HandleExtra) -> Option<&Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        if !self.has(HAS_EXTRA) {
            return None;
        }
        let key = self as *const Handle as usize;
        let map = extras();
        map.get(&key).and_then(field).map(|o| o.clone_ref(py))
    }
}

/// A handle built but not yet in its Python object: debug data can only be attached once the
/// handle has its final address.
pub(crate) struct NewHandle {
    pub(crate) handle: Handle,
    pub(crate) source_traceback: Option<Py<PyAny>>,
}

impl NewHandle {
    pub(crate) fn into_py(self, py: Python<'_>) -> PyResult<Py<Handle>> {
        let NewHandle {
            handle,
            source_traceback,
        } = self;
        let h = Py::new(py, handle)?;
        if let Some(tb) = source_traceback {
            h.get().attach_traceback(py, tb);
        }
        Ok(h)
    }
}

type Released = (Option<Py<PyAny>>, Option<Py<PyTuple>>);

/// The handle gave up its callback and arguments: it can no longer be part of a cycle (see
/// the module docs), so it leaves the collector's lists. Also used for handles that enter the
/// ready queue (see [`visit_queued`]).
#[inline]
pub(crate) fn leave_gc(h: &Bound<'_, Handle>) {
    // SAFETY: `h` is a live object of a GC type (Handle has tp_traverse); untracking an
    // untracked object is a no-op, and the deallocator's untrack is idempotent too.
    unsafe { ffi::PyObject_GC_UnTrack(h.as_ptr() as *mut std::ffi::c_void) };
}

/// The handle holds a callback again (an error report needs it), or the loop lets go of a
/// queued handle that someone else still holds: back into the collector's lists.
pub(crate) fn rejoin_gc(h: &Bound<'_, Handle>) {
    // SAFETY: `h` is a live object of a GC type; it is tracked only if not tracked already.
    unsafe {
        if ffi::PyObject_GC_IsTracked(h.as_ptr()) == 0 {
            ffi::PyObject_GC_Track(h.as_ptr() as *mut std::ffi::c_void);
        }
    }
}

pub(crate) fn is_cancelled(_py: Python<'_>, h: &Py<Handle>) -> bool {
    h.get().is_cancelled()
}

/// Cancels a handle (asyncio's `Handle.cancel`).
pub(crate) fn cancel_handle(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<()> {
    let this = h.get();
    if this.has(CANCELLED) {
        return Ok(());
    }
    this.set(CANCELLED, true);
    // In debug mode asyncio remembers the repr of a cancelled handle (it says "cancelled"
    // and still names the callback), for later error messages.
    let formatted = if this.has(DEBUG) {
        pyhelpers::format_handle(py, h.as_any()).map(|repr| this.set_repr_at_cancel(py, repr))
    } else {
        Ok(())
    };
    let released: Released = this.with(py, |d| (d.callback.take(), d.args.take()))?;
    leave_gc(h);
    if this.has(SCHEDULED) {
        if let Ok(timer) = h.cast::<TimerHandle>() {
            timer.get().cancelled_timers.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(released);
    formatted
}

/// A handle in the ready queue is not tracked by the collector on its own: `call_soon` can
/// queue tens of thousands in one turn, and as tracked objects they would survive into the
/// older generations and trigger full collections (half of `call_soon`'s speed). While only
/// the queue holds it (reference count 1) it is part of the loop, whose traversal visits what
/// the handle holds; if something else holds it too, it is visited as an object (a no-op
/// while untracked: its references count as external, so nothing it holds can be freed by
/// mistake). Such a handle rejoins the collector when the loop lets go of it without running
/// it ([`release_queued`]); once run, it holds nothing.
pub(crate) fn visit_queued(
    h: &Py<Handle>,
    visit: &pyo3::PyVisit<'_>,
) -> Result<(), pyo3::PyTraverseError> {
    // SAFETY: the collector runs with the GIL held; `h` is alive (the queue owns a reference).
    let (tracked, refs) = unsafe {
        (
            ffi::PyObject_GC_IsTracked(h.as_ptr()) != 0,
            ffi::Py_REFCNT(h.as_ptr()),
        )
    };
    if tracked || refs != 1 {
        return visit.call(h);
    }
    let this = h.get();
    if this.has(BUSY) {
        return Ok(());
    }
    // SAFETY: GIL held, BUSY clear: no `&mut` to the data exists; read only.
    let d = unsafe { &*this.data.get() };
    for o in [&d.callback, &d.context].into_iter().flatten() {
        visit.call(o)?;
    }
    if let Some(args) = &d.args {
        visit.call(args)?;
    }
    Ok(())
}

/// The loop lets go of a queued handle that did not run (close, or the collector clearing
/// the loop): if someone else holds it and it still holds a callback, it rejoins the
/// collector so that a cycle through it can be freed.
pub(crate) fn release_queued(py: Python<'_>, h: &Py<Handle>) {
    // SAFETY: GIL held; `h` is alive.
    let shared = unsafe { ffi::Py_REFCNT(h.as_ptr()) } > 1;
    if shared && h.get().with(py, |d| d.callback.is_some()).unwrap_or(true) {
        rejoin_gc(h.bind(py));
    }
}

/// What running a handle produced.
pub(crate) enum RunOutcome {
    /// Ran (or was cancelled / empty): nothing to report.
    Done,
    /// The callback raised; the handle has its callback and arguments back so that the error
    /// report can describe it (and keeps them, as asyncio's handles do).
    Raised(PyErr),
}

/// Runs a handle: enter its context, call `callback(*args)`, leave the context.
pub(crate) fn run_handle(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<RunOutcome> {
    let this = h.get();
    if this.has(HAS_EXTRA) {
        // A thread-safe handle runs holding its lock (and is checked for cancellation again
        // under it), as asyncio's `_ThreadSafeHandle._run` does.
        return this.locked(py, || run_handle_unlocked(py, h));
    }
    run_handle_unlocked(py, h)
}

fn run_handle_unlocked(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<RunOutcome> {
    let this = h.get();
    if this.has(CANCELLED) {
        return Ok(RunOutcome::Done);
    }
    // One-shot handles hand their callback and arguments over (no reference count traffic);
    // persistent ones lend clones. Debug mode keeps the callback until the slow-callback check
    // has formatted it.
    let lend = this.has(PERSISTENT | DEBUG);
    let taken = this.with(py, |d| {
        let ctx = d.context.as_ref()?.clone_ref(py);
        if lend {
            Some((
                d.callback.as_ref()?.clone_ref(py),
                d.args.as_ref()?.clone_ref(py),
                ctx,
            ))
        } else {
            Some((d.callback.take()?, d.args.take()?, ctx))
        }
    })?;
    let Some((cb, args, ctx)) = taken else {
        return Ok(RunOutcome::Done);
    };
    if !lend {
        leave_gc(h);
    }
    // Bound references release themselves with a plain decref (the GIL is known to be held).
    let (cb, args, ctx) = (cb.into_bound(py), args.into_bound(py), ctx.into_bound(py));
    // SAFETY: `cb` and `args` are owned references kept alive across the call (the tuple
    // keeps its items alive). No or one argument (task steps, future callbacks) go through
    // vectorcall directly.
    let result = call_in_context(py, &ctx, || unsafe {
        match ffi::PyTuple_GET_SIZE(args.as_ptr()) {
            0 => ffi::PyObject_CallNoArgs(cb.as_ptr()),
            1 => ffi::PyObject_CallOneArg(cb.as_ptr(), ffi::PyTuple_GET_ITEM(args.as_ptr(), 0)),
            _ => ffi::PyObject_Call(cb.as_ptr(), args.as_ptr(), std::ptr::null_mut()),
        }
    });
    match result {
        Ok(()) => Ok(RunOutcome::Done),
        Err(err) => {
            // Give the callback back so the report (message, repr) can name it.
            if !this.has(CANCELLED) {
                let _ = this.with(py, |d| {
                    if d.callback.is_none() {
                        d.callback = Some(cb.unbind());
                        d.args = Some(args.unbind());
                    }
                });
                rejoin_gc(h);
            }
            Ok(RunOutcome::Raised(err))
        }
    }
}

/// Enters `ctx`, makes the call (`call` returns a new reference or NULL with an exception
/// set, as CPython's call functions do), leaves `ctx`: `ctx.run(...)` without the bound method.
#[inline]
fn call_in_context(
    py: Python<'_>,
    ctx: &Bound<'_, PyAny>,
    call: impl FnOnce() -> *mut ffi::PyObject,
) -> PyResult<()> {
    // SAFETY: `ctx` is a live reference for this whole function. A non-Context object is
    // reported by PyContext_Enter as a TypeError (it checks the type); a context that is
    // already entered as a RuntimeError. Either way the exception is set and fetched here.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let res = call();
    let out = if res.is_null() {
        Err(PyErr::fetch(py))
    } else {
        // SAFETY: `res` is a new, non-NULL reference that we own and release here.
        unsafe { ffi::Py_DECREF(res) };
        Ok(())
    };
    // SAFETY: `ctx` was entered above on this thread and no exception is pending (any error
    // was fetched into `out`).
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
        let exit_err = PyErr::fetch(py);
        out.and(Err(exit_err))
    } else {
        out
    }
}

/// The `*args` tuple of a call with no or one argument.
pub(crate) fn args_of<'py>(
    py: Python<'py>,
    arg: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    match arg {
        None => Ok(PyTuple::empty(py)),
        Some(a) => PyTuple::new(py, [a]),
    }
}

/// A callback queued without a `Handle` object: `callback(arg)` or `callback()` in `context`.
/// Used when the caller is known to drop the handle unseen (asyncio's C tasks and futures,
/// see `fastcall.rs`), so nothing can cancel or inspect it. If it raises, a `Handle` is built
/// then, for the exception handler's report.
pub(crate) struct LightCall {
    pub(crate) callback: Py<PyAny>,
    pub(crate) arg: Option<Py<PyAny>>,
    pub(crate) context: Py<PyAny>,
}

/// A [`LightCall`] that raised: the exception, and the handle asyncio would have had for the
/// call (for the exception handler's report). Boxed by `run`: the rare error path should not
/// widen the common `Ok`.
pub(crate) type LightCallFailure = Box<(PyErr, PyResult<Py<Handle>>)>;

impl LightCall {
    /// Runs the call. On an exception, returns it with an equivalent handle for the report.
    pub(crate) fn run(self, py: Python<'_>) -> Result<(), LightCallFailure> {
        let LightCall {
            callback,
            arg,
            context,
        } = self;
        let (cb, arg, ctx) = (
            callback.into_bound(py),
            arg.map(|a| a.into_bound(py)),
            context.into_bound(py),
        );
        // SAFETY: `cb` and `arg` are owned references alive across the call.
        let result = call_in_context(py, &ctx, || unsafe {
            match &arg {
                None => ffi::PyObject_CallNoArgs(cb.as_ptr()),
                Some(a) => ffi::PyObject_CallOneArg(cb.as_ptr(), a.as_ptr()),
            }
        });
        result.map_err(|err| Box::new((err, Self::rebuild(py, cb, arg, ctx))))
    }

    /// The `Handle` asyncio would have had for this call (as if just run: not cancelled).
    pub(crate) fn into_handle(self, py: Python<'_>) -> PyResult<Py<Handle>> {
        let LightCall {
            callback,
            arg,
            context,
        } = self;
        Self::rebuild(
            py,
            callback.into_bound(py),
            arg.map(|a| a.into_bound(py)),
            context.into_bound(py),
        )
    }

    fn rebuild(
        py: Python<'_>,
        cb: Bound<'_, PyAny>,
        arg: Option<Bound<'_, PyAny>>,
        ctx: Bound<'_, PyAny>,
    ) -> PyResult<Py<Handle>> {
        let args = args_of(py, arg.as_ref())?;
        Py::new(
            py,
            Handle::new(cb.unbind(), args.unbind(), ctx.unbind(), false, false),
        )
    }
}

/// In debug mode, after a one-shot handle ran and was checked for slowness: release its
/// callback and arguments (what `run_handle` does at once outside debug mode).
pub(crate) fn release_after_debug_check(py: Python<'_>, h: &Bound<'_, Handle>) {
    let this = h.get();
    if this.has(PERSISTENT) {
        return;
    }
    let released: Option<Released> = this.with(py, |d| (d.callback.take(), d.args.take())).ok();
    leave_gc(h);
    drop(released);
}

fn opt(py: Python<'_>, v: &Option<Py<PyAny>>) -> Py<PyAny> {
    v.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py))
}

#[pymethods]
impl Handle {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if self.has(BUSY) {
            // Being updated further up this thread's stack: what it holds stays reachable.
            return Ok(());
        }
        // SAFETY: the collector runs with the GIL held and BUSY is clear, so no `&mut` to the
        // data exists; nothing here calls into Python or modifies the data.
        let d = unsafe { &*self.data.get() };
        if let Some(cb) = &d.callback {
            visit.call(cb)?;
        }
        if let Some(args) = &d.args {
            visit.call(args)?;
        }
        if let Some(ctx) = &d.context {
            visit.call(ctx)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        // SAFETY: tp_clear runs with the GIL held.
        let py = unsafe { Python::assume_attached() };
        let released = self.with(py, |d| (d.callback.take(), d.args.take(), d.context.take()));
        if let Ok((cb, args, ctx)) = released {
            let untracked = self.has(CONTEXT_UNTRACKED);
            self.set(CONTEXT_UNTRACKED, false);
            if let (true, Some(ctx)) = (untracked, &ctx) {
                // SAFETY: the copy was untracked by `untrack_own_context` and goes back to
                // the collector before it is released (see `Drop`).
                unsafe { ffi::PyObject_GC_Track(ctx.as_ptr() as *mut std::ffi::c_void) };
            }
            drop((cb, args, ctx));
        }
    }

    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.get().locked(py, || cancel_handle(py, slf))
    }

    fn cancelled(&self, py: Python<'_>) -> PyResult<bool> {
        self.locked(py, || Ok(self.has(CANCELLED)))
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |d| opt(py, &d.context))
    }

    /// Runs the callback now. The loop reports errors to its exception handler; a direct
    /// call (asyncio's private `_run`) raises them instead.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        match run_handle(slf.py(), slf)? {
            RunOutcome::Done => Ok(()),
            RunOutcome::Raised(e) => Err(e),
        }
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |d| opt(py, &d.callback))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |d| {
            d.args
                .as_ref()
                .map_or_else(|| py.None(), |c| c.clone_ref(py).into_any())
        })
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.has(CANCELLED)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        self.extra_field(py, |e| e.source_traceback.as_ref())
            .unwrap_or_else(|| py.None())
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Py<PyAny> {
        self.extra_field(py, |e| e.repr_at_cancel.as_ref())
            .unwrap_or_else(|| py.None())
    }

    /// `asyncio.Handle`, so that `isinstance(handle, asyncio.Handle)` holds as the asyncio
    /// documentation promises for `call_soon`'s result (`type(handle)` stays this class).
    /// A `call_soon_threadsafe` handle answers `asyncio.events._ThreadSafeHandle` where
    /// asyncio has that subclass (3.14+).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let events = py.import("asyncio.events")?;
        if self.has(THREADSAFE) {
            if let Some(cls) = events.getattr_opt("_ThreadSafeHandle")? {
                return Ok(cls.unbind());
            }
        }
        Ok(events.getattr("Handle")?.unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        match slf.get().extra_field(py, |e| e.repr_at_cancel.as_ref()) {
            Some(r) => Ok(r),
            None => pyhelpers::format_handle(py, slf.as_any()),
        }
    }
}

/// `asyncio.TimerHandle`'s counterpart: a handle with a deadline.
#[pyclass(extends = Handle, frozen, module = "ferroloop", name = "TimerHandle")]
pub struct TimerHandle {
    when: f64,
    /// The deadline as given to `call_at` when it was not a float (an int stays an int for
    /// `when()` and `_when`, as in asyncio); the heap orders by `when`.
    when_obj: Option<Py<PyAny>>,
    /// Shared with the loop: how many scheduled timers were cancelled (heap compaction).
    cancelled_timers: Arc<AtomicUsize>,
}

impl TimerHandle {
    pub(crate) fn create(
        py: Python<'_>,
        base: NewHandle,
        when: f64,
        when_obj: Option<Py<PyAny>>,
        counter: Arc<AtomicUsize>,
    ) -> PyResult<Py<Handle>> {
        let NewHandle {
            handle,
            source_traceback,
        } = base;
        handle.set(SCHEDULED, true);
        let init = PyClassInitializer::from(handle).add_subclass(TimerHandle {
            when,
            when_obj,
            cancelled_timers: counter,
        });
        let obj = Bound::new(py, init)?;
        let h = obj.into_super().unbind();
        if let Some(tb) = source_traceback {
            h.get().attach_traceback(py, tb);
        }
        Ok(h)
    }
}

fn when_of(h: &Bound<'_, TimerHandle>) -> f64 {
    h.get().when
}

/// The deadline as the user gave it (see `TimerHandle::when_obj`).
fn when_object(h: &Bound<'_, TimerHandle>) -> PyResult<Py<PyAny>> {
    let py = h.py();
    match &h.get().when_obj {
        Some(o) => Ok(o.clone_ref(py)),
        None => Ok(PyFloat::new(py, when_of(h)).into_any().unbind()),
    }
}

#[pymethods]
impl TimerHandle {
    fn when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        when_object(slf)
    }

    /// `asyncio.TimerHandle` (see `Handle.__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(py
            .import("asyncio.events")?
            .getattr("TimerHandle")?
            .unbind())
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        when_object(slf)
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().has(SCHEDULED)
    }

    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<isize> {
        // asyncio's `hash(self._when)`.
        when_object(slf)?.bind(slf.py()).hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (when_of(slf), when_of(other));
        let res = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a <= b,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a >= b,
            CompareOp::Eq | CompareOp::Ne => {
                let parts = |h: &Bound<'_, TimerHandle>| {
                    let base = h.as_super().get();
                    base.with(py, |d| {
                        (
                            opt(py, &d.callback),
                            d.args
                                .as_ref()
                                .map_or_else(|| py.None(), |c| c.clone_ref(py).into_any()),
                        )
                    })
                    .map(|(cb, args)| (cb, args, base.has(CANCELLED)))
                };
                let (cb_a, args_a, c_a) = parts(slf)?;
                let (cb_b, args_b, c_b) = parts(other)?;
                let eq = a == b
                    && c_a == c_b
                    && cb_a.bind(py).eq(cb_b.bind(py))?
                    && args_a.bind(py).eq(args_b.bind(py))?;
                if matches!(op, CompareOp::Eq) {
                    eq
                } else {
                    !eq
                }
            }
        };
        Ok(res.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}
