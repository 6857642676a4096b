//! Hand-written `METH_FASTCALL | METH_KEYWORDS` entry points for the hottest loop methods.
//!
//! `loop.call_soon` runs for every task step and every future callback. PyO3's generic
//! argument handling (a `*args` tuple, keyword matching, receiver type checks, GIL bookkeeping)
//! cost a measurable share of it, so `call_soon` is installed on `LoopCore` as a plain method
//! descriptor over this function instead: arguments are read straight from the vectorcall
//! array and the work is shared with the rest of the loop (`LoopCore::call_soon_impl`).
//!
//! Contract kept from any Python method: wrong arguments raise `TypeError` with CPython's
//! wording, and a Rust panic becomes a Python exception, never an abort.

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::event_loop::LoopCore;

/// A `PyMethodDef` living for the whole process (CPython keeps a pointer to it).
struct MethodDef(ffi::PyMethodDef);

// SAFETY: the definition is immutable after construction (CPython only reads it), and the
// raw pointers it holds point to 'static C strings and a function.
unsafe impl Sync for MethodDef {}

static CALL_SOON_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"call_soon".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: call_soon_fast,
    },
    ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
    ml_doc: c"call_soon(callback, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon (in the next loop iteration, in FIFO order)."
        .as_ptr() as *const c_char,
});

/// Installs the fastcall methods on `LoopCore` (called once, at module import).
pub fn install(py: Python<'_>) -> PyResult<()> {
    let ty: Bound<'_, PyType> = py.get_type::<LoopCore>();
    // SAFETY: `ty` is LoopCore's type object; the method definition is 'static. On success
    // PyDescr_NewMethod returns a new reference, which we take over.
    let descr = unsafe {
        let p = ffi::PyDescr_NewMethod(
            ty.as_ptr() as *mut ffi::PyTypeObject,
            &CALL_SOON_DEF.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
        );
        Bound::from_owned_ptr_or_err(py, p)?
    };
    ty.setattr(intern!(py, "call_soon"), descr)
}

unsafe extern "C" fn call_soon_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_gil_acquired() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: arguments come from CPython's vectorcall protocol for this method
        // descriptor: `slf` is a LoopCore instance (the descriptor checks the receiver type),
        // `args` holds `nargs` positional values followed by one value per keyword name.
        unsafe { call_soon_body(py, slf, args, nargsf, kwnames) }
    }));
    match outcome {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PyRuntimeError::new_err("ferroloop: internal error (Rust panic) in call_soon")
                .restore(py);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// See the caller: pointers follow CPython's `METH_FASTCALL | METH_KEYWORDS` convention.
unsafe fn call_soon_body(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<PyObject> {
    // SAFETY: see the function contract.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    if nargs < 1 {
        return Err(PyTypeError::new_err(
            "call_soon() missing 1 required positional argument: 'callback'",
        ));
    }
    // SAFETY: `slf` is a live LoopCore instance for the duration of the call.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
    // SAFETY: the method descriptor only calls us with LoopCore instances (it checks the
    // receiver type before the call).
    let slf = unsafe { slf.downcast_into_unchecked::<LoopCore>() };
    let at = |i: usize| -> Bound<'_, PyAny> {
        // SAFETY: i < nargs + number of keywords; each entry is a borrowed live reference.
        unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) }
    };
    let mut context: Option<Bound<'_, PyAny>> = None;
    if !kwnames.is_null() {
        // SAFETY: CPython passes a tuple of str as kwnames.
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.downcast_into::<PyTuple>()?;
        let context_name = intern!(py, "context");
        for (i, name) in names.iter().enumerate() {
            let is_context = name.is(context_name)
                || name
                    .downcast::<PyString>()
                    .map(|n| n.to_str().map(|s| s == "context").unwrap_or(false))
                    .unwrap_or(false);
            if !is_context {
                return Err(PyTypeError::new_err(format!(
                    "call_soon() got an unexpected keyword argument {}",
                    name.repr()?
                )));
            }
            context = Some(at(nargs + i));
        }
    }
    let callback = at(0);
    let cb_args = if nargs == 1 {
        PyTuple::empty(py)
    } else {
        PyTuple::new(py, (1..nargs).map(at))?
    };
    let h = LoopCore::call_soon_impl(&slf, &callback, &cb_args, context.as_ref())?;
    Ok(h.into_any())
}
