//! The hot methods of the transports' Python faces (`SocketTransport.write`, `writelines`,
//! `is_closing`; `DatagramTransport.sendto`, `is_closing`; `get_extra_info` on both) as
//! native method descriptors on those classes.
//!
//! A face keeps its native core in `self._core`. Binding the core's methods onto every
//! instance made the calls direct but cost about 100 bytes per method per connection; a
//! method descriptor on the class costs nothing per connection, and a call reaches the core
//! with one attribute lookup and no Python frame (`transport.write(data)` takes CPython's
//! method-call fast path: no bound method is created).

use std::ffi::{c_char, c_int};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::fastcall::{c_method_result, install_method, MethodDef};
use crate::transports::datagram::DatagramTransport;
use crate::transports::stream::StreamTransport;

static WRITE_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"write".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer { PyCFunction: write },
    ml_flags: ffi::METH_O as c_int,
    ml_doc: c"write(data)\n--\n\nWrite some data bytes to the transport (sent at once when nothing is queued, buffered otherwise)."
        .as_ptr() as *const c_char,
});

static WRITELINES_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"writelines".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: writelines,
    },
    ml_flags: ffi::METH_O as c_int,
    ml_doc: c"writelines(list_of_data)\n--\n\nWrite a list (or any iterable) of data bytes to the transport."
        .as_ptr() as *const c_char,
});

static IS_CLOSING_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"is_closing".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunction: is_closing,
    },
    ml_flags: ffi::METH_NOARGS as c_int,
    ml_doc: c"is_closing()\n--\n\nReturn True if the transport is closing or closed.".as_ptr()
        as *const c_char,
});

static SENDTO_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"sendto".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: sendto,
    },
    ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
    ml_doc: c"sendto(data, addr=None)\n--\n\nSend data to addr (the connected peer when None)."
        .as_ptr() as *const c_char,
});

static GET_EXTRA_INFO_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"get_extra_info".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFastWithKeywords: get_extra_info,
    },
    ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
    ml_doc: c"get_extra_info(name, default=None)\n--\n\nGet optional transport information."
        .as_ptr() as *const c_char,
});

/// `_transports._Extra`, the faces' extra-info dict (its `'socket'` entry is made on first use).
static EXTRA_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// Installs the descriptors on the Python face classes (called once by `_transports.py`).
#[pyfunction]
pub(crate) fn _install_face_methods(
    stream_face: &Bound<'_, PyType>,
    datagram_face: &Bound<'_, PyType>,
    extra_type: &Bound<'_, PyType>,
) -> PyResult<()> {
    let py = stream_face.py();
    // First install wins (the module is imported once; a reload keeps the first class).
    let _ = EXTRA_TYPE.get_or_init(py, || extra_type.clone().unbind());
    install_method(stream_face, &WRITE_DEF, intern!(py, "write"))?;
    install_method(stream_face, &WRITELINES_DEF, intern!(py, "writelines"))?;
    install_method(stream_face, &IS_CLOSING_DEF, intern!(py, "is_closing"))?;
    install_method(
        stream_face,
        &GET_EXTRA_INFO_DEF,
        intern!(py, "get_extra_info"),
    )?;
    install_method(datagram_face, &SENDTO_DEF, intern!(py, "sendto"))?;
    install_method(datagram_face, &IS_CLOSING_DEF, intern!(py, "is_closing"))?;
    install_method(
        datagram_face,
        &GET_EXTRA_INFO_DEF,
        intern!(py, "get_extra_info"),
    )
}

/// `self._core`, the face's native core.
fn core_of<'py>(face: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    face.getattr(intern!(face.py(), "_core"))
}

fn stream_core<'py>(face: &Bound<'py, PyAny>) -> PyResult<Bound<'py, StreamTransport>> {
    Ok(core_of(face)?.cast_into::<StreamTransport>()?)
}

/// A `METH_O` method of the stream face: `core_method(self._core, arg)`, returning None.
///
/// # Safety
/// `slf` and `arg` follow CPython's `METH_O` convention (the receiver, an instance of the
/// face class checked by CPython, and the argument, both borrowed for the call), and the
/// caller holds the GIL (CPython calls method functions with it).
unsafe fn stream_meth_o(
    slf: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
    what: &str,
    core_method: fn(&Bound<'_, StreamTransport>, &Bound<'_, PyAny>) -> PyResult<()>,
) -> *mut ffi::PyObject {
    // SAFETY: see the function contract.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, what, || {
        // SAFETY: see the function contract.
        let (slf, arg) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf),
                Bound::from_borrowed_ptr(py, arg),
            )
        };
        core_method(&stream_core(&slf)?, &arg)?;
        Ok(py.None())
    })
}

unsafe extern "C" fn write(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_O function with the GIL held.
    unsafe { stream_meth_o(slf, data, "transport write", StreamTransport::write) }
}

unsafe extern "C" fn writelines(
    slf: *mut ffi::PyObject,
    data: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this METH_O function with the GIL held.
    unsafe {
        stream_meth_o(
            slf,
            data,
            "transport writelines",
            StreamTransport::writelines,
        )
    }
}

unsafe extern "C" fn is_closing(
    slf: *mut ffi::PyObject,
    _unused: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, "transport is_closing", || {
        // SAFETY: METH_NOARGS: `slf` is the receiver, borrowed for the call.
        let slf = unsafe { Bound::from_borrowed_ptr(py, slf) };
        let core = core_of(&slf)?;
        let closing = if let Ok(stream) = core.cast::<StreamTransport>() {
            stream.get().is_closing(py)?
        } else {
            core.cast::<DatagramTransport>()?.get().is_closing(py)?
        };
        Ok(pyo3::types::PyBool::new(py, closing)
            .to_owned()
            .into_any()
            .unbind())
    })
}

unsafe extern "C" fn sendto(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, "transport sendto", || {
        // SAFETY: CPython's METH_FASTCALL | METH_KEYWORDS call of this method.
        let (slf, data, addr) =
            unsafe { one_or_two_args(py, "sendto", ["data", "addr"], slf, args, nargsf, kwnames)? };
        let core = core_of(&slf)?.cast_into::<DatagramTransport>()?;
        DatagramTransport::sendto(&core, &data, addr.as_ref())?;
        Ok(py.None())
    })
}

/// The receiver, the first argument, and the second if given.
type ReceiverAndArgs<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyAny>>,
);

/// The arguments of a `METH_FASTCALL | METH_KEYWORDS` method `name(first, second=None)`,
/// given by position or keyword, with the `TypeError`s a Python function of that signature
/// raises.
///
/// # Safety
/// The pointers are those CPython passes to a `METH_FASTCALL | METH_KEYWORDS` method: `slf`
/// is the receiver; `args` holds the positional arguments followed by one value per name in
/// `kwnames` (NULL or a tuple of str), all borrowed for the call; the GIL is held.
unsafe fn one_or_two_args<'py>(
    py: Python<'py>,
    name: &str,
    params: [&str; 2],
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<ReceiverAndArgs<'py>> {
    // SAFETY: see the function contract.
    unsafe {
        let npos = ffi::PyVectorcall_NARGS(nargsf as usize);
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_GET_SIZE(kwnames)
        };
        if npos > 2 {
            return Err(PyTypeError::new_err(format!(
                "{name}() takes from 2 to 3 positional arguments but {} were given",
                npos + 1
            )));
        }
        let mut values = [
            (npos >= 1).then(|| *args),
            (npos == 2).then(|| *args.add(1)),
        ];
        for i in 0..nkw {
            let key = Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, i));
            let key = key.extract::<&str>()?;
            let Some(slot) = params.iter().position(|p| *p == key) else {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got an unexpected keyword argument '{key}'"
                )));
            };
            if values[slot].is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got multiple values for argument '{key}'"
                )));
            }
            values[slot] = Some(*args.add((npos + i) as usize));
        }
        let Some(first) = values[0] else {
            return Err(PyTypeError::new_err(format!(
                "{name}() missing 1 required positional argument: '{}'",
                params[0]
            )));
        };
        Ok((
            Bound::from_borrowed_ptr(py, slf),
            Bound::from_borrowed_ptr(py, first),
            values[1].map(|v| Bound::from_borrowed_ptr(py, v)),
        ))
    }
}

/// `get_extra_info(name, default=None)`: asyncio's `self._extra.get(name, default)`. Libraries
/// call it per request (anyio, and through it httpcore's connection pool, asks for `'socket'`
/// on every pool scan), where asyncio's is one Python frame and ours would be two (the face's,
/// and `_Extra.get` for the lazy `'socket'` entry). A key already in the dict is read straight
/// from it when `_extra` is a plain dict or ours; anything else (a missing key of ours, which
/// may be `'socket'` not made yet; a replacement `_extra` of another type) goes through its
/// own `get()`, as asyncio's does.
unsafe extern "C" fn get_extra_info(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, "transport get_extra_info", || {
        // SAFETY: METH_FASTCALL | METH_KEYWORDS: `slf` is the receiver; `args` holds the
        // positional arguments followed by one value per name in `kwnames` (NULL or a tuple
        // of str), all borrowed for the call.
        // SAFETY: CPython's METH_FASTCALL | METH_KEYWORDS call of this method.
        let (slf, name, default) = unsafe {
            one_or_two_args(
                py,
                "get_extra_info",
                ["name", "default"],
                slf,
                args,
                nargsf,
                kwnames,
            )?
        };
        let default = default.unwrap_or_else(|| py.None().into_bound(py));
        let extra = slf.getattr(intern!(py, "_extra"))?;
        let plain = extra.is_exact_instance_of::<PyDict>();
        let ours = EXTRA_TYPE
            .get(py)
            .is_some_and(|t| extra.get_type().is(t.bind(py)));
        if plain || ours {
            let dict = extra.cast::<PyDict>()?;
            if let Some(value) = dict.get_item(&name)? {
                return Ok(value.unbind());
            }
            if plain {
                return Ok(default.unbind());
            }
        }
        Ok(extra
            .call_method1(intern!(py, "get"), (name, default))?
            .unbind())
    })
}
