//! Cached references to the Python-side helpers the native code calls on cold paths:
//! formatting handles for reprs and error messages, capturing creation stacks in debug mode,
//! and asyncio's coroutine checks. Hot paths never go through here.

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;

static FORMAT_HANDLE: GILOnceCell<PyObject> = GILOnceCell::new();
static EXTRACT_STACK: GILOnceCell<PyObject> = GILOnceCell::new();
static IS_COROUTINE_LIKE: GILOnceCell<PyObject> = GILOnceCell::new();

fn helper<'py>(
    py: Python<'py>,
    cell: &'static GILOnceCell<PyObject>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let f = cell.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("ferroloop._format")?.getattr(name)?.unbind())
    })?;
    Ok(f.bind(py).clone())
}

/// `repr()` of a handle in asyncio's format, e.g. `<Handle cb(1, 2) at file.py:3>`.
pub fn format_handle(py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<PyObject> {
    Ok(helper(py, &FORMAT_HANDLE, "format_handle")?
        .call1((handle,))?
        .unbind())
}

/// The caller's stack as a `traceback.StackSummary` (debug mode only).
pub fn extract_stack(py: Python<'_>) -> PyResult<PyObject> {
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
