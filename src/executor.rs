//! The default executor: a native thread pool behind `run_in_executor(None, ...)`.
//!
//! asyncio's default executor is a `concurrent.futures.ThreadPoolExecutor`; every call goes
//! through a `concurrent.futures.Future`, its condition variable, `wrap_future`'s chaining and
//! a `call_soon_threadsafe` back to the loop. Most of a call's time is spent waking threads,
//! and that path wakes one thread while another still holds the GIL, which costs an extra
//! wake-up. Here a call is a job in a queue guarded by a mutex and a condition variable:
//!
//! * the loop thread pushes the job and signals one idle worker (or starts a worker, up to
//!   `max_workers`, when none is idle: `ThreadPoolExecutor`'s policy);
//! * the worker, holding the GIL only while it runs Python, calls `func(*args)` (skipped if
//!   the asyncio future was cancelled meanwhile), queues the outcome on the loop's ready queue
//!   and wakes the loop, then gives the GIL back at once;
//! * the loop thread settles the asyncio future (unless it was cancelled).
//!
//! Workers keep one Python thread state for their whole life, so `threading.local` data and
//! the thread's context persist between jobs as in a `ThreadPoolExecutor` worker, and they are
//! named like asyncio's (`asyncio_0`, ...). The pool also serves `concurrent.futures` callers
//! (the Python face in `_loop.py` is a `ThreadPoolExecutor` subclass whose `submit` lands
//! here). Shutdown lets queued jobs finish (or cancels them with `cancel_futures`) and joins
//! the threads without the GIL; every pool still alive at interpreter exit is shut down and
//! joined by a hook registered with `threading._register_atexit`, as `concurrent.futures`
//! does, so no worker touches Python during finalization.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::event_loop::LoopCore;

/// Where a job's outcome goes.
pub(crate) enum Completion {
    /// An asyncio future of a ferroloop loop, settled on the loop thread.
    Loop { fut: Py<PyAny>, core: Py<LoopCore> },
    /// A `concurrent.futures.Future`, settled by the worker.
    Cf { fut: Py<PyAny> },
}

/// A job's outcome, on its way to the loop thread.
pub(crate) enum Outcome {
    Value(Py<PyAny>),
    Error(PyErr),
    /// Cancelled by `shutdown(cancel_futures=True)` before it ran.
    Cancelled,
}

/// What the loop thread does with a finished job (see `LoopCore::post_executor_outcome`).
pub(crate) struct Finished {
    pub(crate) fut: Py<PyAny>,
    pub(crate) outcome: Outcome,
}

impl Finished {
    /// Settles the asyncio future, unless it is already done (cancelled by its awaiter).
    pub(crate) fn settle(self, py: Python<'_>) -> PyResult<()> {
        let fut = self.fut.bind(py);
        if fut.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        self.outcome.deliver(fut, true)
    }
}

impl Outcome {
    /// Sets `fut`'s result, exception or cancellation. For an asyncio future (`asyncio`),
    /// concurrent.futures' CancelledError, TimeoutError and InvalidStateError become asyncio's,
    /// as `wrap_future` does.
    fn deliver(self, fut: &Bound<'_, PyAny>, asyncio: bool) -> PyResult<()> {
        let py = fut.py();
        match self {
            Outcome::Value(v) => fut.call_method1(intern!(py, "set_result"), (v,))?,
            Outcome::Error(e) => {
                let mut exc = e.into_value(py).into_bound(py).into_any();
                if asyncio {
                    exc = py
                        .import("asyncio.futures")?
                        .getattr(intern!(py, "_convert_future_exc"))?
                        .call1((exc,))?;
                }
                fut.call_method1(intern!(py, "set_exception"), (exc,))?
            }
            Outcome::Cancelled => fut.call_method0(intern!(py, "cancel"))?,
        };
        Ok(())
    }
}

struct Job {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    done: Completion,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers started and not yet finished.
    threads: usize,
    /// Numbers the workers' names.
    started: usize,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    cond: Condvar,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// The process that started the pool: a forked child has none of its threads.
    pid: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent; a panic elsewhere cannot break it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Blocks (without the GIL: called inside `allow_threads`) until a job is available, or
    /// returns None once the pool is shut down and the queue is empty.
    fn next_job(&self) -> Option<Job> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.shutdown {
                return None;
            }
            q.idle += 1;
            q = self
                .cond
                .wait(q)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            q.idle -= 1;
        }
    }
}

/// Pools alive in this process, for the interpreter-exit hook.
static POOLS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct ThreadPool {
    shared: Arc<Shared>,
    max_workers: usize,
    prefix: String,
}

impl ThreadPool {
    fn push(&self, py: Python<'_>, job: Job) -> PyResult<()> {
        if std::process::id() != self.shared.pid {
            drop(job);
            return Err(PyRuntimeError::new_err(
                "ferroloop: this executor belongs to the parent process (create a new event loop after fork)",
            ));
        }
        let (rejected, spawn) = {
            let mut q = lock(&self.shared.queue);
            if q.shutdown {
                (Some(job), None)
            } else {
                q.jobs.push_back(job);
                // A new worker only when no idle one can take the job (ThreadPoolExecutor's
                // policy), up to the limit.
                let spawn = if q.jobs.len() > q.idle && q.threads < self.max_workers {
                    q.threads += 1;
                    q.started += 1;
                    Some(q.started - 1)
                } else {
                    None
                };
                self.shared.cond.notify_one();
                (None, spawn)
            }
        };
        if let Some(job) = rejected {
            drop(job);
            return Err(PyRuntimeError::new_err(
                "cannot schedule new futures after shutdown",
            ));
        }
        if let Some(index) = spawn {
            self.spawn(py, index)?;
        }
        Ok(())
    }

    fn spawn(&self, py: Python<'_>, index: usize) -> PyResult<()> {
        let shared = self.shared.clone();
        let name = format!("{}_{}", self.prefix, index);
        let started = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || worker(shared, name));
        match started {
            Ok(handle) => {
                lock(&self.shared.handles).push(handle);
                Ok(())
            }
            Err(e) => {
                let orphans: Vec<Job> = {
                    let mut q = lock(&self.shared.queue);
                    q.threads -= 1;
                    if q.threads == 0 {
                        q.jobs.drain(..).collect()
                    } else {
                        Vec::new()
                    }
                };
                // With no worker at all, the queued jobs would never run: fail them.
                let err = PyRuntimeError::new_err(format!("can't start new thread: {e}"));
                for job in orphans {
                    complete(py, job.done, Outcome::Error(err.clone_ref(py)));
                }
                Err(err)
            }
        }
    }

    fn shutdown_impl(&self, py: Python<'_>, wait: bool, cancel_futures: bool) {
        if std::process::id() != self.shared.pid {
            // A forked child: the workers do not exist here, and a worker may have held the
            // queue's lock at the moment of the fork; leave it alone.
            return;
        }
        let cancelled: Vec<Job> = {
            let mut q = lock(&self.shared.queue);
            q.shutdown = true;
            self.shared.cond.notify_all();
            if cancel_futures {
                q.jobs.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        for job in cancelled {
            complete(py, job.done, Outcome::Cancelled);
        }
        if wait {
            join_all(py, &self.shared);
        }
    }
}

/// Joins the pool's threads without the GIL (they need it to finish their jobs). A worker
/// asking for its own pool's shutdown is not joined by itself; in a forked child there is
/// nothing to join.
fn join_all(py: Python<'_>, shared: &Shared) {
    if std::process::id() != shared.pid {
        return;
    }
    let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&shared.handles));
    let me = std::thread::current().id();
    let (own, others): (Vec<_>, Vec<_>) = handles.into_iter().partition(|h| h.thread().id() == me);
    py.detach(move || {
        for h in others {
            let _ = h.join();
        }
    });
    lock(&shared.handles).extend(own);
}

/// Delivers an outcome: a `concurrent.futures.Future` is settled here (the caller holds the
/// GIL), an asyncio future is handed to its loop.
fn complete(py: Python<'_>, done: Completion, outcome: Outcome) {
    match done {
        Completion::Loop { fut, core } => core.get().post_executor_outcome(py, fut, outcome),
        Completion::Cf { fut } => {
            let fut = fut.bind(py);
            if let Err(e) = outcome.deliver(fut, false) {
                e.write_unraisable(py, Some(fut));
            }
        }
    }
}

fn run_job(py: Python<'_>, job: Job) {
    let Job { func, args, done } = job;
    // A job whose future was cancelled while it waited does not run (asyncio's chained
    // concurrent future would refuse to start).
    let skip = match &done {
        Completion::Loop { fut, .. } => fut
            .bind(py)
            .call_method0(intern!(py, "cancelled"))
            .and_then(|c| c.is_truthy()),
        Completion::Cf { fut } => fut
            .bind(py)
            .call_method0(intern!(py, "set_running_or_notify_cancel"))
            .and_then(|c| c.is_truthy().map(|running| !running)),
    };
    match skip {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            complete(py, done, Outcome::Error(e));
            return;
        }
    }
    let outcome = match func.bind(py).call1(args.bind(py)) {
        Ok(v) => Outcome::Value(v.unbind()),
        Err(e) => Outcome::Error(e),
    };
    drop((func, args));
    complete(py, done, outcome);
}

fn worker(shared: Arc<Shared>, name: String) {
    Python::attach(|py| {
        let threading = py.import("threading").ok();
        // Named like a ThreadPoolExecutor worker for code that looks at current_thread().
        if let Some(t) = &threading {
            let _ = t
                .call_method0(intern!(py, "current_thread"))
                .and_then(|th| th.setattr(intern!(py, "name"), &name));
        }
        loop {
            let sh = shared.clone();
            let Some(job) = py.detach(move || sh.next_job()) else {
                break;
            };
            // A Rust panic (a bug) must not take the worker thread down with it.
            if catch_unwind(AssertUnwindSafe(|| run_job(py, job))).is_err() {
                PyRuntimeError::new_err(
                    "ferroloop: internal error (Rust panic) in an executor job",
                )
                .write_unraisable(py, None);
            }
        }
        {
            let mut q = lock(&shared.queue);
            q.threads -= 1;
        }
        // threading keeps an entry for this foreign thread; it ends here.
        if let Some(t) = &threading {
            let _ = t.getattr(intern!(py, "_active")).and_then(|active| {
                let ident = t.call_method0(intern!(py, "get_ident"))?;
                active.call_method1(intern!(py, "pop"), (ident, py.None()))
            });
        }
    });
}

#[pymethods]
impl ThreadPool {
    #[new]
    #[pyo3(signature = (max_workers, thread_name_prefix = "asyncio"))]
    fn new(max_workers: usize, thread_name_prefix: &str) -> PyResult<Self> {
        if max_workers == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "max_workers must be greater than 0",
            ));
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                threads: 0,
                started: 0,
                shutdown: false,
            }),
            cond: Condvar::new(),
            handles: Mutex::new(Vec::new()),
            pid: std::process::id(),
        });
        {
            let mut pools = lock(&POOLS);
            pools.retain(|w| w.strong_count() > 0);
            pools.push(Arc::downgrade(&shared));
        }
        Ok(ThreadPool {
            shared,
            max_workers,
            prefix: thread_name_prefix.to_owned(),
        })
    }

    /// Runs `func(*args)` on a worker; the asyncio future `fut` of `loop` gets the outcome.
    fn submit_to_loop(
        &self,
        py: Python<'_>,
        r#loop: Bound<'_, LoopCore>,
        fut: Py<PyAny>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
    ) -> PyResult<()> {
        let done = Completion::Loop {
            fut,
            core: r#loop.unbind(),
        };
        self.push(py, Job { func, args, done })
    }

    /// Runs `func(*args)` on a worker; the `concurrent.futures.Future` `fut` gets the outcome.
    fn submit_cf(
        &self,
        py: Python<'_>,
        fut: Py<PyAny>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
    ) -> PyResult<()> {
        let done = Completion::Cf { fut };
        self.push(py, Job { func, args, done })
    }

    /// Stops accepting jobs; queued ones still run unless `cancel_futures`. With `wait`,
    /// returns once every worker has finished.
    #[pyo3(signature = (wait = true, cancel_futures = false))]
    fn shutdown(&self, py: Python<'_>, wait: bool, cancel_futures: bool) {
        self.shutdown_impl(py, wait, cancel_futures);
    }

    #[getter]
    fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// (jobs queued, workers busy, workers started), for `loop.metrics()`.
    fn _stats(&self) -> (usize, usize, usize) {
        if std::process::id() != self.shared.pid {
            return (0, 0, 0);
        }
        let q = lock(&self.shared.queue);
        (q.jobs.len(), q.threads.saturating_sub(q.idle), q.threads)
    }

    /// Workers currently started (none in a forked child).
    #[getter]
    fn threads(&self) -> usize {
        if std::process::id() != self.shared.pid {
            return 0;
        }
        lock(&self.shared.queue).threads
    }
}

impl Drop for ThreadPool {
    /// The Python face is gone without a shutdown (an abandoned loop): idle workers finish
    /// what is queued and exit instead of waiting forever.
    fn drop(&mut self) {
        if std::process::id() != self.shared.pid {
            return;
        }
        lock(&self.shared.queue).shutdown = true;
        self.shared.cond.notify_all();
    }
}

/// Interpreter exit: shut down and join every pool still alive (registered from `_loop.py`
/// with `threading._register_atexit`).
#[pyfunction]
pub fn _executor_atexit(py: Python<'_>) {
    let pools: Vec<Arc<Shared>> = lock(&POOLS).iter().filter_map(Weak::upgrade).collect();
    for shared in pools {
        if std::process::id() != shared.pid {
            continue;
        }
        {
            let mut q = lock(&shared.queue);
            q.shutdown = true;
            shared.cond.notify_all();
        }
        join_all(py, &shared);
    }
}
