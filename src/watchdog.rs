//! The blocking watchdog: notices, from a thread of its own, when one callback or task step
//! has kept a loop busy longer than a threshold, and has the Python stack of the loop's
//! thread taken *while it is still blocked*.
//!
//! The loop's side is a [`Stamp`]: before each unit of work (a callback, a task step, a
//! transport's read or write) the iteration stores a sequence number, the start time and a
//! borrowed pointer to what runs; before it polls, it stores 0. That is all the hot path does,
//! and only while the watchdog is on for that loop (a null check otherwise).
//!
//! One watchdog thread serves every loop of the process. It wakes a few times per threshold,
//! compares each stamp with the clock and, for a unit running past the threshold, takes the
//! GIL: a blocking C call has released it, and pure-Python code hands it over at every switch
//! interval. Holding the GIL it checks the stamp again (same sequence number: still blocked,
//! so the borrowed pointer is still alive) and calls `ferroloop._watchdog._report`, which
//! reads the loop thread's frames and writes the report. When the unit finally ends, the loop
//! thread records the end time and the watchdog reports the total, again off the loop thread.
//! A unit that held the GIL the whole time (a long C call that does not release it) cannot be
//! inspected while it runs; it is reported when it ends, without a stack.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;

use crate::clock;

/// What the loop thread publishes about the unit of work it runs (see the module docs).
pub struct Stamp {
    /// Sequence number of the unit running now; 0 while polling or not running.
    running: AtomicU64,
    /// When it started, in nanoseconds on the monotonic clock.
    started_ns: AtomicU64,
    /// Borrowed pointer to what runs (the callback, the transport...). Valid only while
    /// `running` still holds the same number and the GIL is held.
    what: AtomicPtr<ffi::PyObject>,
    /// What kind of unit it is (see [`Kind`]).
    kind: std::sync::atomic::AtomicU8,
    /// The last sequence number used.
    seq: AtomicU64,
    /// The unit the watchdog reported (its sequence number), 0 if none pending.
    reported: AtomicU64,
    /// When the reported unit ended (nanoseconds), 0 while it still runs.
    ended_ns: AtomicU64,
    /// When the reported unit started (nanoseconds).
    reported_start: AtomicU64,
    /// The threshold in nanoseconds; 0 = off.
    threshold_ns: AtomicU64,
    /// `threading.get_ident()` of the loop's thread while it runs.
    thread_ident: AtomicU64,
    /// Blocking episodes reported.
    pub episodes: AtomicU64,
}

/// The stamps' clock: the coarse monotonic clock (a tick of a few milliseconds is fine for
/// thresholds of tens of milliseconds, and it costs the loop a few nanoseconds per unit).
fn now_ns() -> u64 {
    clock::coarse_ns()
}

impl Stamp {
    fn new() -> Self {
        Stamp {
            running: AtomicU64::new(0),
            started_ns: AtomicU64::new(0),
            what: AtomicPtr::new(std::ptr::null_mut()),
            kind: std::sync::atomic::AtomicU8::new(0),
            seq: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            ended_ns: AtomicU64::new(0),
            reported_start: AtomicU64::new(0),
            threshold_ns: AtomicU64::new(0),
            thread_ident: AtomicU64::new(0),
            episodes: AtomicU64::new(0),
        }
    }

    /// A unit of work starts on the loop thread.
    #[inline]
    pub fn begin(&self, what: *mut ffi::PyObject, kind: Kind) {
        let seq = self.seq.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.seq.store(seq, Ordering::Relaxed);
        self.what.store(what, Ordering::Relaxed);
        self.kind.store(kind as u8, Ordering::Relaxed);
        self.started_ns.store(now_ns(), Ordering::Relaxed);
        // Release: a watchdog that sees this number sees the fields above too.
        self.running.store(seq, Ordering::Release);
    }

    /// The unit of work started by the last `begin` has ended.
    #[inline]
    pub fn end(&self) {
        let seq = self.running.load(Ordering::Relaxed);
        self.running.store(0, Ordering::Release);
        if seq != 0 && self.reported.load(Ordering::Acquire) == seq {
            self.ended_ns.store(now_ns(), Ordering::Release);
            notify();
        }
    }

    /// Nothing runs (the loop polls or stops).
    #[inline]
    pub fn idle(&self) {
        self.running.store(0, Ordering::Release);
    }

    pub fn set_thread(&self, ident: u64) {
        self.thread_ident.store(ident, Ordering::Relaxed);
    }

    pub fn threshold(&self) -> Option<f64> {
        match self.threshold_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns as f64 / 1e9),
        }
    }
}

/// What a unit of work is, for the report (`ferroloop._watchdog` names them).
#[derive(Clone, Copy)]
#[repr(u8)]
pub enum Kind {
    /// A callback with a handle (`call_soon`, a timer, a reader or writer).
    Callback = 0,
    /// A callback queued by asyncio's C tasks and futures (a task step, a wake-up).
    TaskStep = 1,
    /// A stream transport reading (the protocol's `data_received` runs in it).
    StreamRead = 2,
    /// A stream transport writing (the protocol's `resume_writing` may run in it).
    StreamWrite = 3,
    /// A datagram transport reading (`datagram_received`).
    DatagramRead = 4,
    /// A datagram transport writing.
    DatagramWrite = 5,
    /// A `sock_*` operation completing.
    SockOp = 6,
    /// A default-executor job's result being delivered.
    ExecutorResult = 7,
}

/// A loop the watchdog serves: its stamp and a weak reference to the Python loop object.
struct Watched {
    stamp: Weak<Stamp>,
    loop_ref: Py<PyAny>,
}

#[derive(Default)]
struct Registry {
    loops: Vec<Watched>,
    started: bool,
}

/// The registry and the condition variable the watchdog sleeps on. Boxed and reached through
/// a pointer so that a forked child can start over with a fresh one: the parent's watchdog
/// thread may have held the lock at the moment of the fork (the old one is leaked).
#[derive(Default)]
struct Shared {
    registry: Mutex<Registry>,
    wake: Condvar,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// Set at interpreter exit: the watchdog no longer takes the GIL.
static STOPPED: AtomicBool = AtomicBool::new(false);

fn shared() -> &'static Shared {
    let p = SHARED.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: a non-null pointer comes from Box::into_raw below and is never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::default());
    match SHARED.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: `fresh` was just leaked from a Box and is now the published pointer.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` was not published; we still own it.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: as above, published pointers are never freed.
            unsafe { &*existing }
        }
    }
}

fn registry() -> MutexGuard<'static, Registry> {
    shared()
        .registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn notify() {
    shared().wake.notify_all();
}

/// In a forked child: no watchdog thread exists and the parent's registry may be locked;
/// start over (loops turn the watchdog on again with `set_blocking_threshold`).
#[pyfunction]
pub fn _watchdog_after_fork() {
    let fresh = Box::into_raw(Box::<Shared>::default());
    SHARED.store(fresh, Ordering::Release);
}

/// Interpreter exit: the watchdog stops taking the GIL.
#[pyfunction]
pub fn _watchdog_stop() {
    STOPPED.store(true, Ordering::Release);
    notify();
}

/// Turns the watchdog on (or off, with `None`) for a loop; `loop_obj` is the Python loop.
/// Returns the stamp the loop must update.
pub fn configure(
    py: Python<'_>,
    current: Option<Arc<Stamp>>,
    loop_obj: &Bound<'_, PyAny>,
    threshold: Option<f64>,
) -> PyResult<Option<Arc<Stamp>>> {
    let Some(secs) = threshold else {
        if let Some(stamp) = &current {
            stamp.threshold_ns.store(0, Ordering::Relaxed);
        }
        return Ok(current);
    };
    let stamp = current.unwrap_or_else(|| Arc::new(Stamp::new()));
    let ns = ((secs * 1e9) as u64).max(1);
    stamp.threshold_ns.store(ns, Ordering::Relaxed);
    let weak_loop = py
        .import("weakref")?
        .getattr(intern!(py, "ref"))?
        .call1((loop_obj,))?
        .unbind();
    let start_thread = {
        let mut reg = registry();
        let known = reg
            .loops
            .iter()
            .any(|w| w.stamp.upgrade().is_some_and(|s| Arc::ptr_eq(&s, &stamp)));
        if !known {
            reg.loops.push(Watched {
                stamp: Arc::downgrade(&stamp),
                loop_ref: weak_loop,
            });
        }
        let start = !reg.started;
        reg.started = true;
        start
    };
    if start_thread {
        let spawned = std::thread::Builder::new()
            .name("ferroloop-watchdog".into())
            .spawn(watchdog_main);
        if let Err(e) = spawned {
            registry().started = false;
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "can't start the watchdog thread: {e}"
            )));
        }
    }
    notify();
    Ok(Some(stamp))
}

/// One finding of a scan, acted on with the GIL.
enum Finding {
    /// A unit still running past the threshold: report it with the stack.
    Blocked {
        stamp: Arc<Stamp>,
        seq: u64,
        started: u64,
    },
    /// A reported unit ended: report its total.
    Ended { stamp: Arc<Stamp>, seconds: f64 },
}

fn watchdog_main() {
    loop {
        let (findings, period) = {
            let mut reg = registry();
            reg.loops.retain(|w| w.stamp.strong_count() > 0);
            let mut period_ns: u64 = 0;
            let mut findings = Vec::new();
            let now = now_ns();
            for w in reg.loops.iter() {
                let Some(stamp) = w.stamp.upgrade() else {
                    continue;
                };
                let threshold = stamp.threshold_ns.load(Ordering::Relaxed);
                if threshold == 0 {
                    continue;
                }
                let p = (threshold / 4).clamp(1_000_000, 100_000_000);
                period_ns = if period_ns == 0 { p } else { period_ns.min(p) };
                let reported = stamp.reported.load(Ordering::Acquire);
                if reported != 0 {
                    let ended = stamp.ended_ns.load(Ordering::Acquire);
                    if ended != 0 {
                        let start = stamp.reported_start.load(Ordering::Relaxed);
                        let seconds = ended.saturating_sub(start) as f64 / 1e9;
                        findings.push(Finding::Ended { stamp, seconds });
                        continue;
                    }
                }
                let seq = stamp.running.load(Ordering::Acquire);
                if seq == 0 || seq == reported {
                    continue;
                }
                let started = stamp.started_ns.load(Ordering::Relaxed);
                if stamp.running.load(Ordering::Acquire) != seq {
                    continue;
                }
                if now.saturating_sub(started) >= threshold {
                    findings.push(Finding::Blocked {
                        stamp,
                        seq,
                        started,
                    });
                }
            }
            (findings, period_ns)
        };
        if STOPPED.load(Ordering::Acquire) {
            return;
        }
        if !findings.is_empty() {
            act(findings);
        }
        let sh = shared();
        let reg = sh
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let wait = if period == 0 {
            // Nothing to watch: sleep until a loop turns the watchdog on.
            Duration::from_secs(3600)
        } else {
            Duration::from_nanos(period)
        };
        drop(sh.wake.wait_timeout(reg, wait));
    }
}

fn act(findings: Vec<Finding>) {
    if STOPPED.load(Ordering::Acquire) || !is_python_alive() {
        return;
    }
    Python::attach(|py| {
        for finding in findings {
            let r = match finding {
                Finding::Blocked {
                    stamp,
                    seq,
                    started,
                } => report_blocked(py, &stamp, seq, started),
                Finding::Ended { stamp, seconds } => report_ended(py, &stamp, seconds),
            };
            if let Err(e) = r {
                e.write_unraisable(py, None);
            }
        }
    });
}

fn is_python_alive() -> bool {
    // SAFETY: Py_IsInitialized may be called at any time, without the GIL.
    unsafe { ffi::Py_IsInitialized() != 0 }
}

/// The Python loop (a live one, else None) of the loop whose stamp this is.
fn loop_of<'py>(py: Python<'py>, stamp: &Arc<Stamp>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let loop_ref = {
        let reg = registry();
        reg.loops
            .iter()
            .find(|w| std::ptr::eq(w.stamp.as_ptr(), Arc::as_ptr(stamp)))
            .map(|w| w.loop_ref.clone_ref(py))
    };
    let Some(loop_ref) = loop_ref else {
        return Ok(None);
    };
    let obj = loop_ref.bind(py).call0()?;
    Ok((!obj.is_none()).then_some(obj))
}

fn report_blocked(py: Python<'_>, stamp: &Arc<Stamp>, seq: u64, started: u64) -> PyResult<()> {
    let Some(loop_obj) = loop_of(py, stamp)? else {
        return Ok(());
    };
    let module = py.import("ferroloop._watchdog")?;
    if stamp.running.load(Ordering::Acquire) != seq {
        // It ended while we waited for the GIL: it held the GIL all along (or finished just
        // now); report it without a stack if it ran past the threshold.
        let seconds = now_ns().saturating_sub(started) as f64 / 1e9;
        module.call_method1(intern!(py, "_report_unseen"), (&loop_obj, seconds))?;
        stamp.episodes.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    // Still running the same unit, and we hold the GIL: the loop thread is blocked, so the
    // borrowed pointer is alive. Take a strong reference before any Python code runs.
    let what_ptr = stamp.what.load(Ordering::Relaxed);
    let what = if what_ptr.is_null() {
        py.None().into_bound(py)
    } else {
        // SAFETY: see above: the object is kept alive by the loop thread's current unit,
        // which cannot progress while we hold the GIL; the new reference is ours.
        unsafe { Bound::from_borrowed_ptr(py, what_ptr) }
    };
    let kind = stamp.kind.load(Ordering::Relaxed);
    let seconds = now_ns().saturating_sub(started) as f64 / 1e9;
    let ident = stamp.thread_ident.load(Ordering::Relaxed);
    stamp.ended_ns.store(0, Ordering::Release);
    stamp.reported_start.store(started, Ordering::Relaxed);
    stamp.reported.store(seq, Ordering::Release);
    stamp.episodes.fetch_add(1, Ordering::Relaxed);
    module.call_method1(
        intern!(py, "_report_blocked"),
        (&loop_obj, seconds, ident, what, kind),
    )?;
    Ok(())
}

fn report_ended(py: Python<'_>, stamp: &Arc<Stamp>, seconds: f64) -> PyResult<()> {
    stamp.reported.store(0, Ordering::Release);
    stamp.ended_ns.store(0, Ordering::Release);
    let Some(loop_obj) = loop_of(py, stamp)? else {
        return Ok(());
    };
    py.import("ferroloop._watchdog")?
        .call_method1(intern!(py, "_report_ended"), (&loop_obj, seconds))?;
    Ok(())
}
