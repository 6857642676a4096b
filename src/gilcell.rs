//! `GilCell`: interior mutability for native state, guarded by the GIL.
//!
//! The loop's and the transports' state is touched on every callback, so it avoids PyO3's
//! per-object borrow flags (atomic read-modify-writes); handles use the same scheme with the
//! busy flag packed among their own flags (`handles.rs`). Every access goes through
//! [`GilCell::with`], which takes a `Python` token (proof that this thread holds the GIL, so no
//! other thread can be inside at the same time) and refuses re-entrant access with a Python
//! `RuntimeError` instead of aliasing: if code inside a `with` closure ever ended up calling
//! back into Python and Python re-entered the same cell, the inner access fails cleanly.
//!
//! ferroloop requires a GIL-enabled interpreter: the module is declared `gil_used = true`
//! (`lib.rs`), so a free-threaded build re-enables the GIL when it imports it, which keeps this
//! reasoning valid. Supporting free-threading without the GIL would mean replacing these cells
//! (see the README, "Free-threaded Python").

use std::cell::{Cell, UnsafeCell};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

pub struct GilCell<T> {
    value: UnsafeCell<T>,
    busy: Cell<bool>,
}

// SAFETY: the value is only reached through `with`, which requires the GIL (a `Python` token).
// The GIL serializes all threads that could touch it and its release/acquire orders memory, so
// moving or sharing the cell between threads is sound as long as `T` itself may be sent.
unsafe impl<T: Send> Sync for GilCell<T> {}

struct Release<'a>(&'a Cell<bool>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell {
            value: UnsafeCell::new(value),
            busy: Cell::new(false),
        }
    }

    /// Runs `f` with exclusive access to the value. Fails (without running `f`) if the cell is
    /// already being accessed further up this thread's stack.
    #[inline]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        if self.busy.get() {
            return Err(PyRuntimeError::new_err(
                "ferroloop: native state re-entered while it was being updated",
            ));
        }
        self.busy.set(true);
        let _release = Release(&self.busy);
        // SAFETY: `busy` was false and is now true until `_release` drops (also on unwind), so
        // no other reference to the value exists; the `Python` token proves the GIL is held,
        // so no other thread can pass the `busy` check concurrently.
        let value = unsafe { &mut *self.value.get() };
        Ok(f(value))
    }

    /// Like [`GilCell::with`] for callers that cannot propagate an error (GC hooks): returns
    /// `None` when the cell is busy.
    #[inline]
    pub fn try_with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.with(py, f).ok()
    }
}
