//! Cached references to the Python-side helpers the native code calls on cold paths:
//! formatting handles for reprs and error messages, capturing creation stacks in debug mode,
//! and asyncio's coroutine checks; plus the lookups and the vectorcall helper the hot task and
//! future constructors use.

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static IS_COROUTINE_LIKE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn helper<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let f = cell.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("ferroloop._format")?.getattr(name)?.unbind())
    })?;
    Ok(f.bind(py).clone())
}

/// `repr()` of a handle in asyncio's format, e.g. `<Handle cb(1, 2) at file.py:3>`.
pub fn format_handle(py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    Ok(helper(py, &FORMAT_HANDLE, "format_handle")?
        .call1((handle,))?
        .unbind())
}

/// The caller's stack as a `traceback.StackSummary` (debug mode only).
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(helper(py, &EXTRACT_STACK, "extract_stack")?
        .call0()?
        .unbind())
}

/// True for coroutine objects and coroutine functions (asyncio refuses them as callbacks).
pub fn is_coroutine_like(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    helper(py, &IS_COROUTINE_LIKE, "is_coroutine_like")?
        .call1((obj,))?
        .is_truthy()
}

static TASKS_MODULE: PyOnceLock<(Py<PyAny>, Py<PyDict>)> = PyOnceLock::new();
static FUTURES_MODULE: PyOnceLock<(Py<PyAny>, Py<PyDict>)> = PyOnceLock::new();
static KW_LOOP: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_LOOP_NAME: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_LOOP_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_LOOP_NAME_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static KW_CONTEXT: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

fn module_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<(Py<PyAny>, Py<PyDict>)>,
    module: &str,
    attr: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let (m, dict) = cell.get_or_try_init(py, || -> PyResult<_> {
        let m = py.import(module)?;
        let dict = m.dict().unbind();
        Ok((m.into_any().unbind(), dict))
    })?;
    // Looked up on every call, like asyncio does (`tasks.Task`), so that patching the module
    // attribute keeps working: straight in the module's namespace (a plain module's
    // attributes are its `__dict__`), which skips the module type's attribute machinery.
    match dict.bind(py).get_item(attr)? {
        Some(value) => Ok(value),
        // Deleted: the module's own AttributeError.
        None => m.bind(py).getattr(attr),
    }
}

/// `asyncio.tasks.Task`.
pub fn task_type(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    module_attr(py, &TASKS_MODULE, "asyncio.tasks", intern!(py, "Task"))
}

/// `asyncio.futures.Future`.
pub fn future_type(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    module_attr(
        py,
        &FUTURES_MODULE,
        "asyncio.futures",
        intern!(py, "Future"),
    )
}

fn kwnames<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyTuple>>,
    names: &[&str],
) -> PyResult<Bound<'py, PyTuple>> {
    let t = cell.get_or_try_init(py, || -> PyResult<Py<PyTuple>> {
        let items: Vec<Bound<'py, PyString>> =
            names.iter().map(|n| PyString::intern(py, n)).collect();
        Ok(PyTuple::new(py, items)?.unbind())
    })?;
    Ok(t.bind(py).clone())
}

/// Keyword names for `Task(coro, loop=..., [name=...], [context=...])`.
pub fn task_kwnames(py: Python<'_>, name: bool, context: bool) -> PyResult<Bound<'_, PyTuple>> {
    match (name, context) {
        (false, false) => kwnames(py, &KW_LOOP, &["loop"]),
        (true, false) => kwnames(py, &KW_LOOP_NAME, &["loop", "name"]),
        (false, true) => kwnames(py, &KW_LOOP_CONTEXT, &["loop", "context"]),
        (true, true) => kwnames(py, &KW_LOOP_NAME_CONTEXT, &["loop", "name", "context"]),
    }
}

/// Keyword names `("context",)`.
pub fn context_kwnames(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    kwnames(py, &KW_CONTEXT, &["context"])
}

/// `callable(*args[..n], **dict(zip(kwnames, args[n..])))` through the vectorcall protocol,
/// without building a tuple or a dict.
pub fn vectorcall<'py>(
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
    kwnames: Option<&Bound<'py, PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    const MAX: usize = 7;
    let nkw = kwnames.map_or(0, |k| k.len());
    if args.len() > MAX || nkw > args.len() {
        return Err(PyRuntimeError::new_err(
            "ferroloop: internal vectorcall misuse",
        ));
    }
    // Slot 0 is scratch space the callee may use (PY_VECTORCALL_ARGUMENTS_OFFSET).
    let mut ptrs: [*mut ffi::PyObject; MAX + 1] = [std::ptr::null_mut(); MAX + 1];
    for (i, a) in args.iter().enumerate() {
        ptrs[i + 1] = a.as_ptr();
    }
    let nargs = (args.len() - nkw) | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET;
    let kw = kwnames.map_or(std::ptr::null_mut(), |k| k.as_ptr());
    // SAFETY: `ptrs[1..=args.len()]` hold borrowed references kept alive by `args` for the
    // whole call; slot 0 is writable scratch as the offset flag promises; `kw` is NULL or a
    // tuple of interned strings whose length matches the trailing arguments.
    let res =
        unsafe { ffi::PyObject_Vectorcall(callable.as_ptr(), ptrs.as_ptr().add(1), nargs, kw) };
    // SAFETY: a non-NULL result is a new reference we now own; NULL means an exception is set.
    unsafe { Bound::from_owned_ptr_or_err(py, res) }
}

static RLOCK: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

/// `_thread.RLock`, where asyncio gives `call_soon_threadsafe`'s handles one (3.14+, the
/// versions with `asyncio.events._ThreadSafeHandle`); None before.
pub fn rlock_type(py: Python<'_>) -> PyResult<Option<&Bound<'_, PyAny>>> {
    let t = RLOCK.get_or_try_init(py, || -> PyResult<Option<Py<PyAny>>> {
        let events = py.import("asyncio.events")?;
        if events.getattr_opt("_ThreadSafeHandle")?.is_none() {
            return Ok(None);
        }
        Ok(Some(py.import("_thread")?.getattr("RLock")?.unbind()))
    })?;
    Ok(t.as_ref().map(|t| t.bind(py)))
}
