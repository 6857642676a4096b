//! The hot methods of the transports' Python faces (`SocketTransport.write`, `writelines`,
//! `is_closing`; `DatagramTransport.sendto`, `is_closing`) as native method descriptors on
//! those classes, and `get` of their extra-info dict (`_transports._Extra`).
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

static EXTRA_GET_DEF: MethodDef = MethodDef(ffi::PyMethodDef {
    ml_name: c"get".as_ptr() as *const c_char,
    ml_meth: ffi::PyMethodDefPointer {
        PyCFunctionFast: extra_get,
    },
    ml_flags: ffi::METH_FASTCALL as c_int,
    ml_doc: c"get(key, default=None, /)\n--\n\nThe value for key (the 'socket' wrapper made on first use), else default."
        .as_ptr() as *const c_char,
});

/// Installs the descriptors on the Python face classes (called once by `_transports.py`).
#[pyfunction]
pub(crate) fn _install_face_methods(
    stream_face: &Bound<'_, PyType>,
    datagram_face: &Bound<'_, PyType>,
    extra_type: &Bound<'_, PyType>,
) -> PyResult<()> {
    let py = stream_face.py();
    install_method(stream_face, &WRITE_DEF, intern!(py, "write"))?;
    install_method(stream_face, &WRITELINES_DEF, intern!(py, "writelines"))?;
    install_method(stream_face, &IS_CLOSING_DEF, intern!(py, "is_closing"))?;
    install_method(datagram_face, &SENDTO_DEF, intern!(py, "sendto"))?;
    install_method(datagram_face, &IS_CLOSING_DEF, intern!(py, "is_closing"))?;
    install_method(extra_type, &EXTRA_GET_DEF, intern!(py, "get"))
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

/// `_Extra.get(key, default=None)`, what asyncio's inherited `get_extra_info` calls. The faces
/// define no `get_extra_info` of their own, as asyncio's socket and datagram transports do not:
/// a program or test that patches `asyncio.BaseTransport.get_extra_info` (websockets' tests do)
/// reaches ours too. Libraries call it per request (anyio, and through it httpcore's pool, asks
/// for `'socket'` on every pool scan): a key in the dict is read straight from it, with no
/// Python frame; a miss on `'socket'` while the socket is kept makes the wrapper (`__missing__`
/// through `self['socket']`); any other miss is `default`.
unsafe extern "C" fn extra_get(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls method functions with the GIL held.
    let py = unsafe { Python::assume_attached() };
    c_method_result(py, "transport extra get", || {
        // Positional only, as dict.get (CPython rejects keywords for a METH_FASTCALL method).
        if !(1..=2).contains(&nargs) {
            return Err(PyTypeError::new_err(if nargs < 1 {
                format!("get expected at least 1 argument, got {nargs}")
            } else {
                format!("get expected at most 2 arguments, got {nargs}")
            }));
        }
        // SAFETY: CPython's METH_FASTCALL call of this method: `slf` is the receiver and
        // `args` holds `nargs` (checked: 1 or 2) borrowed positional arguments.
        let (slf, key, default) = unsafe {
            (
                Bound::from_borrowed_ptr(py, slf),
                Bound::from_borrowed_ptr(py, *args),
                (nargs == 2).then(|| Bound::from_borrowed_ptr(py, *args.add(1))),
            )
        };
        // The descriptor checked the receiver: an `_Extra`, a dict subclass.
        let dict = slf.cast::<PyDict>()?;
        if let Some(value) = dict.get_item(&key)? {
            return Ok(value.unbind());
        }
        if key.eq(intern!(py, "socket"))? && !slf.getattr(intern!(py, "_sock"))?.is_none() {
            return Ok(slf.get_item(key)?.unbind());
        }
        Ok(default.map_or_else(|| py.None(), Bound::unbind))
    })
}
