//! Callback handles: `Handle` (from `call_soon`, readers and writers) and `TimerHandle` (from
//! `call_later`/`call_at`), native counterparts of `asyncio.Handle` and `asyncio.TimerHandle`.
//!
//! A handle owns the callback, its positional arguments (the `*args` tuple, kept as is, so a
//! call passes them without copying) and the `contextvars.Context` it runs in. Running a handle
//! enters the context with `PyContext_Enter`, calls the callback through the vectorcall path of
//! `PyObject_Call`, and leaves the context: the same observable behaviour as asyncio's
//! `context.run(callback, *args)`, without building a bound method per call.
//!
//! Handles are not tracked by Python's cyclic GC: with one allocated per `call_soon`, tracking
//! them made the collector a large share of the loop's time. They cannot keep a cycle alive
//! either: a one-shot handle gives up its callback and arguments when it runs (or is cancelled),
//! so a cycle through a handle exists only while the loop itself holds the handle.
//!
//! `TimerHandle` is a subclass (so `isinstance(timer, Handle)` holds, as in asyncio) whose data
//! lives in the shared `Handle` state: the loop's timer heap never needs to touch the subclass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyFloat, PyTuple};

use crate::gilcell::GilCell;
use crate::pyhelpers;

/// A handle's state. Kept small (what every `call_soon` needs inline, the rest boxed in
/// [`HandleExtra`]): thousands of pending handles stay compact in memory.
pub struct HandleState {
    pub(crate) callback: Option<PyObject>,
    pub(crate) args: Option<Py<PyTuple>>,
    pub(crate) context: Option<PyObject>,
    pub(crate) cancelled: bool,
    pub(crate) debug: bool,
    /// Reader, writer and signal handles run many times; the others run once and then give up
    /// their callback and arguments (see the module docs).
    pub(crate) persistent: bool,
    /// A timer still in the loop's heap.
    pub(crate) scheduled: bool,
    /// Timer and debug-mode data, absent for plain handles outside debug mode.
    pub(crate) extra: Option<Box<HandleExtra>>,
}

#[derive(Default)]
pub struct HandleExtra {
    /// Where the handle was created (debug mode only), as `traceback.StackSummary`.
    pub(crate) source_traceback: Option<PyObject>,
    /// In debug mode asyncio keeps the handle's repr from the moment it was cancelled.
    pub(crate) repr_at_cancel: Option<PyObject>,
    pub(crate) timer: Option<TimerPart>,
}

pub struct TimerPart {
    pub(crate) when: f64,
    /// Shared with the loop: how many scheduled timers were cancelled (heap compaction).
    pub(crate) cancelled_timers: Arc<AtomicUsize>,
}

impl HandleState {
    fn extra_mut(&mut self) -> &mut HandleExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn source_traceback(&self) -> Option<&PyObject> {
        self.extra.as_ref()?.source_traceback.as_ref()
    }

    fn repr_at_cancel(&self) -> Option<&PyObject> {
        self.extra.as_ref()?.repr_at_cancel.as_ref()
    }

    fn timer(&self) -> Option<&TimerPart> {
        self.extra.as_ref()?.timer.as_ref()
    }
}

#[pyclass(subclass, frozen, module = "ferroloop", name = "Handle")]
pub struct Handle {
    pub(crate) state: GilCell<HandleState>,
}

impl Handle {
    pub(crate) fn new(
        callback: PyObject,
        args: Py<PyTuple>,
        context: PyObject,
        source_traceback: Option<PyObject>,
        debug: bool,
        persistent: bool,
    ) -> Self {
        Handle {
            state: GilCell::new(HandleState {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
                cancelled: false,
                debug,
                persistent,
                scheduled: false,
                extra: source_traceback.map(|tb| {
                    Box::new(HandleExtra {
                        source_traceback: Some(tb),
                        ..HandleExtra::default()
                    })
                }),
            }),
        }
    }
}

type Released = (Option<PyObject>, Option<Py<PyTuple>>);

impl HandleState {
    /// Marks the handle cancelled and gives up what it holds. The caller drops the returned
    /// references after leaving the cell (their finalizers may run Python code).
    fn cancel(&mut self) -> Released {
        if self.cancelled {
            return (None, None);
        }
        self.cancelled = true;
        if self.scheduled {
            if let Some(t) = self.timer() {
                t.cancelled_timers.fetch_add(1, Ordering::Relaxed);
            }
        }
        (self.callback.take(), self.args.take())
    }
}

pub(crate) fn is_cancelled(py: Python<'_>, h: &Py<Handle>) -> bool {
    h.get().state.try_with(py, |s| s.cancelled).unwrap_or(false)
}

/// Cancels a handle (asyncio's `Handle.cancel`).
pub(crate) fn cancel_handle(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<()> {
    let (cancelled, debug) = h.get().state.with(py, |s| (s.cancelled, s.debug))?;
    if cancelled {
        return Ok(());
    }
    // In debug mode asyncio remembers the repr of a cancelled handle, for error messages.
    let repr = if debug {
        Some(pyhelpers::format_handle(py, h.as_any())?)
    } else {
        None
    };
    let released = h.get().state.with(py, |s| {
        if repr.is_some() {
            s.extra_mut().repr_at_cancel = repr;
        }
        s.cancel()
    })?;
    drop(released);
    Ok(())
}

/// What running a handle produced.
pub(crate) enum RunOutcome {
    /// Ran (or was cancelled / empty): nothing to report.
    Done,
    /// The callback raised; the handle has its callback and arguments back so that the error
    /// report can describe it. Call [`release_after_error`] once reported.
    Raised(PyErr),
}

/// Runs a handle: enter its context, call `callback(*args)`, leave the context.
pub(crate) fn run_handle(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<RunOutcome> {
    // One-shot handles hand their callback and arguments over (no reference count traffic);
    // persistent ones lend clones.
    let taken = h.get().state.with(py, |s| {
        if s.cancelled {
            return None;
        }
        let ctx = s.context.as_ref()?.clone_ref(py);
        // Debug mode keeps the callback until the slow-callback check has formatted it.
        if s.persistent || s.debug {
            Some((
                s.callback.as_ref()?.clone_ref(py),
                s.args.as_ref()?.clone_ref(py),
                ctx,
            ))
        } else {
            Some((s.callback.take()?, s.args.take()?, ctx))
        }
    })?;
    let Some((cb, args, ctx)) = taken else {
        return Ok(RunOutcome::Done);
    };
    // Bound references release themselves with a plain decref (the GIL is known to be held).
    let (cb, args, ctx) = (cb.into_bound(py), args.into_bound(py), ctx.into_bound(py));
    // SAFETY: `ctx` is a live reference owned for this whole function. A non-Context object is
    // reported by PyContext_Enter as a TypeError (it checks the type); a context that is
    // already entered as a RuntimeError. Either way the exception is set and fetched here.
    let result = if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        Err(PyErr::fetch(py))
    } else {
        // SAFETY: `cb` and `args` are owned references kept alive across the call (the tuple
        // keeps its items alive); a NULL result means an exception is set, fetched right away.
        // No or one argument (task steps, future callbacks) go through vectorcall directly.
        let res = unsafe {
            match ffi::PyTuple_GET_SIZE(args.as_ptr()) {
                0 => ffi::PyObject_CallNoArgs(cb.as_ptr()),
                1 => ffi::PyObject_CallOneArg(cb.as_ptr(), ffi::PyTuple_GET_ITEM(args.as_ptr(), 0)),
                _ => ffi::PyObject_Call(cb.as_ptr(), args.as_ptr(), std::ptr::null_mut()),
            }
        };
        let out = if res.is_null() {
            Err(PyErr::fetch(py))
        } else {
            // SAFETY: `res` is a new, non-NULL reference that we own and release here.
            unsafe { ffi::Py_DECREF(res) };
            Ok(())
        };
        // SAFETY: `ctx` was entered above on this thread and no exception is pending (any
        // error was fetched into `out`).
        if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
            let exit_err = PyErr::fetch(py);
            out.and(Err(exit_err))
        } else {
            out
        }
    };
    match result {
        Ok(()) => Ok(RunOutcome::Done),
        Err(err) => {
            // Give the callback back so the report (message, repr) can name it.
            let _ = h.get().state.with(py, |s| {
                if s.callback.is_none() && !s.cancelled {
                    s.callback = Some(cb.unbind());
                    s.args = Some(args.unbind());
                }
            });
            Ok(RunOutcome::Raised(err))
        }
    }
}

/// After a one-shot handle's error was reported (or, in debug mode, after it ran and was
/// checked for slowness), release its callback and arguments.
pub(crate) fn release_after_error(py: Python<'_>, h: &Bound<'_, Handle>) {
    let released = h.get().state.try_with(py, |s| {
        if s.persistent {
            (None, None)
        } else {
            (s.callback.take(), s.args.take())
        }
    });
    drop(released);
}

fn opt(py: Python<'_>, v: &Option<PyObject>) -> PyObject {
    v.as_ref().map_or_else(|| py.None(), |c| c.clone_ref(py))
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        cancel_handle(slf.py(), slf)
    }

    fn cancelled(&self, py: Python<'_>) -> PyResult<bool> {
        self.state.with(py, |s| s.cancelled)
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.state.with(py, |s| opt(py, &s.context))
    }

    /// Runs the callback now. The loop reports errors to its exception handler; a direct
    /// call (asyncio's private `_run`) raises them instead.
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        match run_handle(slf.py(), slf)? {
            RunOutcome::Done => Ok(()),
            RunOutcome::Raised(e) => {
                release_after_error(slf.py(), slf);
                Err(e)
            }
        }
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.state.with(py, |s| opt(py, &s.callback))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.state.with(py, |s| {
            s.args
                .as_ref()
                .map_or_else(|| py.None(), |c| c.clone_ref(py).into_any())
        })
    }

    #[getter]
    fn _cancelled(&self, py: Python<'_>) -> PyResult<bool> {
        self.cancelled(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.state.with(py, |s| {
            s.source_traceback()
                .map_or_else(|| py.None(), |t| t.clone_ref(py))
        })
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.state.with(py, |s| {
            s.repr_at_cancel()
                .map_or_else(|| py.None(), |r| r.clone_ref(py))
        })
    }

    /// `asyncio.Handle`, so that `isinstance(handle, asyncio.Handle)` holds as the asyncio
    /// documentation promises for `call_soon`'s result (`type(handle)` stays this class).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(py.import("asyncio.events")?.getattr("Handle")?.unbind())
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<PyObject> {
        let py = slf.py();
        let cached = slf
            .get()
            .state
            .with(py, |s| s.repr_at_cancel().map(|r| r.clone_ref(py)))?;
        match cached {
            Some(r) => Ok(r),
            None => pyhelpers::format_handle(py, slf.as_any()),
        }
    }
}

/// `asyncio.TimerHandle`'s counterpart: a handle with a deadline.
#[pyclass(extends = Handle, frozen, module = "ferroloop", name = "TimerHandle")]
pub struct TimerHandle;

impl TimerHandle {
    pub(crate) fn create(
        py: Python<'_>,
        base: Handle,
        when: f64,
        counter: Arc<AtomicUsize>,
    ) -> PyResult<Py<Handle>> {
        base.state.with(py, |s| {
            s.scheduled = true;
            s.extra_mut().timer = Some(TimerPart {
                when,
                cancelled_timers: counter,
            });
        })?;
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle);
        let obj = Bound::new(py, init)?;
        Ok(obj.into_super().unbind())
    }
}

fn when_of(h: &Bound<'_, TimerHandle>) -> PyResult<f64> {
    h.as_super()
        .get()
        .state
        .with(h.py(), |s| s.timer().map_or(f64::NAN, |t| t.when))
}

#[pymethods]
impl TimerHandle {
    fn when(slf: &Bound<'_, Self>) -> PyResult<f64> {
        when_of(slf)
    }

    /// `asyncio.TimerHandle` (see `Handle.__class__`).
    #[getter]
    fn __class__(&self, py: Python<'_>) -> PyResult<PyObject> {
        Ok(py
            .import("asyncio.events")?
            .getattr("TimerHandle")?
            .unbind())
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> PyResult<f64> {
        when_of(slf)
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> PyResult<bool> {
        slf.as_super().get().state.with(slf.py(), |s| s.scheduled)
    }

    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<isize> {
        // Same hash as the float `when`, like asyncio's `hash(self._when)`.
        PyFloat::new(slf.py(), when_of(slf)?).hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        let Ok(other) = other.downcast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (when_of(slf)?, when_of(other)?);
        let res = match op {
            CompareOp::Lt => a < b,
            CompareOp::Le => a <= b,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a >= b,
            CompareOp::Eq | CompareOp::Ne => {
                let parts = |h: &Bound<'_, TimerHandle>| {
                    h.as_super().get().state.with(py, |s| {
                        (
                            opt(py, &s.callback),
                            s.args
                                .as_ref()
                                .map_or_else(|| py.None(), |c| c.clone_ref(py).into_any()),
                            s.cancelled,
                        )
                    })
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
