//! Hand-written `METH_FASTCALL | METH_KEYWORDS` entry points for the hottest loop methods.
//!
//! `loop.call_soon` runs for every task step and every future callback. PyO3's generic
//! argument handling (a `*args` tuple, keyword matching, receiver type checks, GIL bookkeeping)
//! cost a measurable share of it, so `call_soon` is installed on `LoopCore` as a plain method
//! descriptor over this function instead: arguments are read straight from the vectorcall
//! array and the work is shared with the rest of the loop (`LoopCore::call_soon_impl`).
//!
//! Most `call_soon` calls come from asyncio's C accelerator (`_asyncio`): every task step and
//! every future callback. That code passes `context=` with one keyword-names tuple of its own,
//! always the same object, and drops the returned handle without looking at it. At import,
//! ferroloop learns that tuple's identity by letting a C future schedule a callback on a probe
//! (`_kwnames_probe`, run from `_loop.py`); calls that carry it are queued without a `Handle`
//! object (`LoopCore::call_soon_unobserved`), which saves an allocation per task step. Any
//! other caller, or a failed probe, takes the ordinary path.
//!
//! Contract kept from any Python method: wrong arguments raise `TypeError` with CPython's
//! wording, and a Rust panic becomes a Python exception, never an abort.

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::event_loop::LoopCore;

/// A `PyMethodDef` living for the whole process (CPython keeps a pointer to it).
pub(crate) struct MethodDef(pub(crate) ffi::PyMethodDef);

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

/// The keyword-names tuple asyncio's C accelerator passes with `context=` (see the module
/// docs). Holds a reference of its own, never released, so the address cannot be reused by
/// another tuple.
static C_CONTEXT_KWNAMES: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

static KWNAMES_PROBE_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"_kwnames_probe".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: kwnames_probe,
    },
    ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
    ml_doc: c"_kwnames_probe(*args, context)\n--\n\nStands in for call_soon on a probe object at import: remembers the keyword-names tuple asyncio's C futures pass with context=."
        .as_ptr() as *const c_char,
});

unsafe extern "C" fn kwnames_probe(
    _slf: *mut ffi::PyObject,
    _args: *const *mut ffi::PyObject,
    _nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls C functions with the GIL held; `kwnames` is NULL or a tuple of str
    // (vectorcall protocol). Only a 1-tuple naming "context" is kept, with a new reference
    // that is never released. Returns a new reference to None.
    unsafe {
        if !kwnames.is_null()
            && ffi::PyTuple_Check(kwnames) != 0
            && ffi::PyTuple_GET_SIZE(kwnames) == 1
            && ffi::PyUnicode_CompareWithASCIIString(
                ffi::PyTuple_GET_ITEM(kwnames, 0),
                c"context".as_ptr(),
            ) == 0
            && C_CONTEXT_KWNAMES.load(Ordering::Relaxed).is_null()
        {
            ffi::Py_INCREF(kwnames);
            C_CONTEXT_KWNAMES.store(kwnames, Ordering::Relaxed);
        }
        let none = ffi::Py_None();
        ffi::Py_INCREF(none);
        none
    }
}

/// True once the probe has recorded asyncio's C keyword-names tuple.
#[pyfunction]
pub fn _c_call_soon_recognised() -> bool {
    !C_CONTEXT_KWNAMES.load(Ordering::Relaxed).is_null()
}

/// Adds `_kwnames_probe` to the module.
pub fn add_probe(m: &Bound<'_, pyo3::types::PyModule>) -> PyResult<()> {
    let py = m.py();
    // SAFETY: the method definition is 'static; PyCFunction_NewEx returns a new reference or
    // NULL with an exception set.
    let f = unsafe {
        let p = ffi::PyCFunction_NewEx(
            &KWNAMES_PROBE_DEF.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(py, p)?
    };
    m.add("_kwnames_probe", f)
}

/// Installs the fastcall methods on `LoopCore` (called once, at module import).
pub fn install(py: Python<'_>) -> PyResult<()> {
    install_method(
        &py.get_type::<LoopCore>(),
        &CALL_SOON_DEF,
        intern!(py, "call_soon"),
    )
}

/// Sets `ty.<name>` to a method descriptor over `def` (the receiver's type is checked by
/// CPython on every call, as for methods of C types).
pub(crate) fn install_method(
    ty: &Bound<'_, PyType>,
    def: &'static MethodDef,
    name: &Bound<'_, PyString>,
) -> PyResult<()> {
    // SAFETY: `ty` is a type object and the method definition is 'static. On success
    // PyDescr_NewMethod returns a new reference, which we take over.
    let descr = unsafe {
        let p = ffi::PyDescr_NewMethod(
            ty.as_ptr() as *mut ffi::PyTypeObject,
            &def.0 as *const ffi::PyMethodDef as *mut ffi::PyMethodDef,
        );
        Bound::from_owned_ptr_or_err(ty.py(), p)?
    };
    ty.setattr(name, descr)
}

unsafe extern "C" fn call_soon_fast(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, "call_soon", || {
        // SAFETY: arguments come from CPython's vectorcall protocol for this method
        // descriptor: `slf` is a LoopCore instance (the descriptor checks the receiver type),
        // `args` holds `nargs` positional values followed by one value per keyword name.
        unsafe { call_soon_body(py, slf, args, nargsf, kwnames) }
    })
}

/// What a hand-written C method returns to CPython: the body's result as a new reference, or
/// NULL with its error set; a Rust panic becomes a `RuntimeError` naming `method` instead of
/// unwinding into CPython.
pub(crate) fn c_method_result(
    py: Python<'_>,
    method: &str,
    body: impl FnOnce() -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(obj)) => obj.into_ptr(),
        Ok(Err(err)) => {
            err.restore(py);
            std::ptr::null_mut()
        }
        Err(_) => {
            PyRuntimeError::new_err(format!(
                "ferroloop: internal error (Rust panic) in {method}"
            ))
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
) -> PyResult<Py<PyAny>> {
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
    let slf = unsafe { slf.cast_into_unchecked::<LoopCore>() };
    let at = |i: usize| -> Bound<'_, PyAny> {
        // SAFETY: i < nargs + number of keywords; each entry is a borrowed live reference.
        unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) }
    };
    // asyncio's C tasks and futures: `call_soon(cb[, arg], context=ctx)`, handle unused.
    if !kwnames.is_null() && kwnames == C_CONTEXT_KWNAMES.load(Ordering::Relaxed) && nargs <= 2 {
        let context = at(nargs);
        if !context.is_none() {
            let arg = (nargs == 2).then(|| at(1));
            return LoopCore::call_soon_unobserved(&slf, &at(0), arg.as_ref(), &context);
        }
    }
    let mut context: Option<Bound<'_, PyAny>> = None;
    if !kwnames.is_null() {
        // SAFETY: CPython passes a tuple of str as kwnames.
        let names = unsafe { Bound::from_borrowed_ptr(py, kwnames) };
        let names = names.cast_into::<PyTuple>()?;
        let context_name = intern!(py, "context");
        for (i, name) in names.iter().enumerate() {
            // asyncio's C tasks and futures pass a "context" that is not the interned one.
            let is_context = name.is(context_name)
                || (name.is_instance_of::<PyString>()
                    // SAFETY: `name` is a live str object; the C string is NUL-terminated.
                    && unsafe {
                        ffi::PyUnicode_CompareWithASCIIString(name.as_ptr(), c"context".as_ptr())
                    } == 0);
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
        // SAFETY: PyTuple_New returns a new reference or NULL with an exception set; each
        // slot is filled exactly once with a new reference before the tuple is used.
        unsafe {
            let t = ffi::PyTuple_New((nargs - 1) as ffi::Py_ssize_t);
            if t.is_null() {
                return Err(PyErr::fetch(py));
            }
            for i in 1..nargs {
                let item = *args.add(i);
                ffi::Py_INCREF(item);
                ffi::PyTuple_SET_ITEM(t, (i - 1) as ffi::Py_ssize_t, item);
            }
            Bound::from_owned_ptr(py, t).cast_into_unchecked::<PyTuple>()
        }
    };
    let h = LoopCore::call_soon_impl(&slf, &callback, &cb_args, context.as_ref())?;
    Ok(h.into_any())
}
