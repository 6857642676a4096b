//! Turning OS errors into the Python exceptions asyncio users see.
//!
//! `OSError(errno, strerror)` picks the matching subclass itself (`PermissionError`,
//! `ConnectionResetError`, `BlockingIOError`, ...), with `errno` and `strerror` set, exactly like
//! an exception raised by the `socket` or `os` module.

use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;

pub fn os_error(e: io::Error) -> PyErr {
    match e.raw_os_error() {
        Some(code) => {
            let text = e.to_string();
            let msg = match text.rfind(" (os error") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            PyOSError::new_err((code, msg))
        }
        None => PyOSError::new_err(e.to_string()),
    }
}
