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
//! either: a one-shot handle drops its callback and arguments as soon as it has run (or is
//! cancelled), so a cycle through a handle exists only while the loop itself holds the handle.
//!
//! `TimerHandle` is a subclass (so `isinstance(timer, Handle)` holds, as in asyncio) whose data
//! lives in the shared `Handle` struct: the loop's timer heap never needs to touch the subclass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyFloat, PyTuple};

use crate::pyhelpers;

#[pyclass(subclass, module = "ferroloop", name = "Handle")]
pub struct Handle {
    pub(crate) callback: Option<PyObject>,
    pub(crate) args: Option<Py<PyTuple>>,
    pub(crate) context: Option<PyObject>,
    pub(crate) cancelled: bool,
    /// Where the handle was created (debug mode only), as `traceback.StackSummary`.
    pub(crate) source_traceback: Option<PyObject>,
    /// In debug mode asyncio keeps the handle's repr from the moment it was cancelled.
    pub(crate) repr_at_cancel: Option<PyObject>,
    pub(crate) debug: bool,
    /// Reader, writer and signal handles run many times; the others run once and then drop
    /// their callback and arguments (see the module docs).
    pub(crate) persistent: bool,
    // --- timer part (unused for plain handles) ---
    pub(crate) is_timer: bool,
    pub(crate) when: f64,
    pub(crate) scheduled: bool,
    /// Shared with the loop: how many scheduled timers were cancelled (heap compaction).
    pub(crate) cancelled_timers: Option<Arc<AtomicUsize>>,
}

impl Handle {
    pub(crate) fn new(
        callback: PyObject,
        args: Py<PyTuple>,
        context: PyObject,
        source_traceback: Option<PyObject>,
        debug: bool,
    ) -> Self {
        Handle {
            callback: Some(callback),
            args: Some(args),
            context: Some(context),
            cancelled: false,
            source_traceback,
            repr_at_cancel: None,
            debug,
            persistent: false,
            is_timer: false,
            when: 0.0,
            scheduled: false,
            cancelled_timers: None,
        }
    }

    /// Marks the handle cancelled and drops what it holds. Returns the dropped references so
    /// the caller can release them after any borrow is gone (their finalizers may run Python).
    fn cancel_inner(&mut self) -> (Option<PyObject>, Option<Py<PyTuple>>) {
        if self.cancelled {
            return (None, None);
        }
        self.cancelled = true;
        if self.is_timer && self.scheduled {
            if let Some(c) = &self.cancelled_timers {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        (self.callback.take(), self.args.take())
    }
}

/// Runs a handle: enter its context, call `callback(*args)`, leave the context.
/// A cancelled handle does nothing. The callback's exception is returned as the error.
pub(crate) fn run_handle(py: Python<'_>, h: &Bound<'_, Handle>) -> PyResult<()> {
    let (cb, args, ctx) = {
        let b = h.borrow();
        if b.cancelled {
            return Ok(());
        }
        match (&b.callback, &b.args, &b.context) {
            (Some(cb), Some(args), Some(ctx)) => {
                (cb.clone_ref(py), args.clone_ref(py), ctx.clone_ref(py))
            }
            _ => return Ok(()),
        }
    };
    // SAFETY: `ctx` is a live reference we own for the duration of this function. The
    // context type is checked when the handle is created; PyContext_Enter reports misuse
    // (already entered) as a Python exception, which we fetch.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `cb` and `args` are owned references kept alive across the call; a NULL result
    // means an exception is set, which we fetch right away.
    let res = unsafe { ffi::PyObject_Call(cb.as_ptr(), args.as_ptr(), std::ptr::null_mut()) };
    let out = if res.is_null() {
        Err(PyErr::fetch(py))
    } else {
        // SAFETY: `res` is a new, non-NULL reference that we own and release here.
        unsafe { ffi::Py_DECREF(res) };
        Ok(())
    };
    // SAFETY: we entered `ctx` above on this thread; exiting with a pending exception is fine
    // because `out` already holds it (fetched, so none is set now).
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } != 0 {
        let exit_err = PyErr::fetch(py);
        if out.is_ok() {
            return Err(exit_err);
        }
    }
    out
}

/// After a one-shot handle has run (and any error was reported), drop its callback and
/// arguments (see the module docs). Taken out under the borrow, released after it.
pub(crate) fn release_if_one_shot(h: &Bound<'_, Handle>) {
    let released = match h.try_borrow_mut() {
        Ok(mut b) if !b.persistent => Some((b.callback.take(), b.args.take())),
        _ => None,
    };
    drop(released);
}

#[pymethods]
impl Handle {
    pub(crate) fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let debug = {
            let b = slf.borrow();
            if b.cancelled {
                return Ok(());
            }
            b.debug
        };
        let repr = if debug {
            // asyncio keeps the repr of a cancelled handle in debug mode, for error messages.
            Some(pyhelpers::format_handle(py, slf.as_any())?)
        } else {
            None
        };
        let dropped = {
            let mut b = slf.borrow_mut();
            if repr.is_some() {
                b.repr_at_cancel = repr;
            }
            b.cancel_inner()
        };
        drop(dropped);
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn get_context(&self, py: Python<'_>) -> PyObject {
        match &self.context {
            Some(c) => c.clone_ref(py),
            None => py.None(),
        }
    }

    /// Runs the callback now, reporting nothing (asyncio's private `_run` reports errors to the
    /// loop; tools that call it directly get the exception raised instead).
    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        run_handle(slf.py(), slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyObject {
        self.callback
            .as_ref()
            .map_or_else(|| py.None(), |c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyObject {
        self.args
            .as_ref()
            .map_or_else(|| py.None(), |c| c.clone_ref(py).into_any())
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.cancelled
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyObject {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> PyObject {
        self.source_traceback
            .as_ref()
            .map_or_else(|| py.None(), |c| c.clone_ref(py))
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> PyObject {
        self.repr_at_cancel
            .as_ref()
            .map_or_else(|| py.None(), |c| c.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<PyObject> {
        let cached = slf
            .borrow()
            .repr_at_cancel
            .as_ref()
            .map(|r| r.clone_ref(slf.py()));
        if let Some(r) = cached {
            return Ok(r);
        }
        pyhelpers::format_handle(slf.py(), slf.as_any())
    }
}

/// `asyncio.TimerHandle`'s counterpart: a handle with a deadline.
#[pyclass(extends = Handle, module = "ferroloop", name = "TimerHandle")]
pub struct TimerHandle;

impl TimerHandle {
    pub(crate) fn create(
        py: Python<'_>,
        mut base: Handle,
        when: f64,
        counter: Arc<AtomicUsize>,
    ) -> PyResult<Py<Handle>> {
        base.is_timer = true;
        base.when = when;
        base.cancelled_timers = Some(counter);
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle);
        let obj = Bound::new(py, init)?;
        Ok(obj.into_super().unbind())
    }
}

#[pymethods]
impl TimerHandle {
    fn when(slf: PyRef<'_, Self>) -> f64 {
        slf.as_super().when
    }

    #[getter]
    fn _when(slf: PyRef<'_, Self>) -> f64 {
        slf.as_super().when
    }

    #[getter]
    fn _scheduled(slf: PyRef<'_, Self>) -> bool {
        slf.as_super().scheduled
    }

    fn __hash__(slf: PyRef<'_, Self>) -> PyResult<isize> {
        // Same hash as the float `when`, like asyncio's `hash(self._when)`.
        let w = slf.as_super().when;
        PyFloat::new(slf.py(), w).hash()
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
        let a = slf.as_super().borrow();
        let b = other.as_super().borrow();
        let res = match op {
            CompareOp::Lt => a.when < b.when,
            CompareOp::Le => a.when <= b.when,
            CompareOp::Gt => a.when > b.when,
            CompareOp::Ge => a.when >= b.when,
            CompareOp::Eq | CompareOp::Ne => {
                let same_cb = match (&a.callback, &b.callback) {
                    (Some(x), Some(y)) => x.bind(py).eq(y.bind(py))?,
                    (None, None) => true,
                    _ => false,
                };
                let same_args = match (&a.args, &b.args) {
                    (Some(x), Some(y)) => x.bind(py).eq(y.bind(py))?,
                    (None, None) => true,
                    _ => false,
                };
                let eq = a.when == b.when && same_cb && same_args && a.cancelled == b.cancelled;
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
