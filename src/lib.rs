//! ferroloop's native module (`ferroloop._ferroloop`): asyncio's event loop in Rust.
//!
//! Modules, one concern each:
//! - [`clock`]: the monotonic clock behind `loop.time()`;
//! - [`errors`]: OS errors as the matching Python `OSError` subclasses;
//! - [`reactor`]: the epoll instance and the registry of watched fds;
//! - [`waker`]: the eventfd that wakes a polling loop from other threads;
//! - [`scheduler`]: the ready queue and the timer heap;
//! - [`gilcell`]: GIL-guarded interior mutability for the native state;
//! - [`metrics`]: the loop's counters and timings, and the bytes its I/O paths move;
//! - [`handles`]: `Handle`/`TimerHandle`, and how a callback runs in its context;
//! - [`sockops`]: the waiting half of `sock_recv`/`sock_recv_into`/`sock_sendall`;
//! - [`transports`]: native transports (stream and datagram sockets), driven by the reactor
//!   directly;
//! - [`tls`]: the per-record path of TLS connections (decrypt, deliver, encrypt, send);
//! - [`fastcall`]: hand-written fastcall entry points for the hottest loop methods;
//! - [`event_loop`]: `LoopCore`, the iteration and the scheduling API;
//! - [`pyhelpers`]: cached Python helpers used on cold paths (reprs, debug stacks);
//! - [`watchdog`]: the thread that catches a loop blocked by one callback, while it blocks.

use pyo3::prelude::*;

mod clock;
mod errors;
mod event_loop;
mod executor;
mod fastcall;
mod gilcell;
mod handles;
mod metrics;
mod pyhelpers;
mod reactor;
mod scheduler;
mod sockops;
mod tls;
mod transports;
mod waker;
mod watchdog;

// `gil_used = true`: the native state lives in GIL-guarded cells (`gilcell`), whose soundness
// rests on the GIL serializing every thread that reaches them. PyO3 0.28+ declares modules
// free-threading-safe by default; this keeps the declaration that makes a free-threaded
// interpreter re-enable the GIL when it imports ferroloop (see the README, "Free-threaded
// Python").
#[pymodule(gil_used = true)]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The package's one version number: Cargo.toml's, which maturin also writes into the
    // wheel's metadata (pyproject.toml declares the version dynamic).
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(m.py())?;
    fastcall::add_probe(m)?;
    m.add_function(wrap_pyfunction!(fastcall::_c_call_soon_recognised, m)?)?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_function(wrap_pyfunction!(handles::_handle_extras_count, m)?)?;
    m.add_class::<executor::ThreadPool>()?;
    m.add_function(wrap_pyfunction!(executor::_executor_atexit, m)?)?;
    m.add_function(wrap_pyfunction!(watchdog::_watchdog_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(watchdog::_watchdog_stop, m)?)?;
    m.add_class::<transports::stream::StreamTransport>()?;
    m.add_class::<sockops::SockWaiter>()?;
    sockops::init_socket_types(m.py())?;
    m.add_class::<transports::datagram::DatagramTransport>()?;
    m.add_function(wrap_pyfunction!(
        transports::face::_install_face_methods,
        m
    )?)?;
    m.add_class::<tls::TlsCore>()?;
    m.add_function(wrap_pyfunction!(tls::_tls_do_read, m)?)?;
    m.add_function(wrap_pyfunction!(tls::_tls_do_write, m)?)?;
    m.add_function(wrap_pyfunction!(tls::_tls_process_outgoing, m)?)?;
    m.add_function(wrap_pyfunction!(tls::_tls_write_appdata, m)?)?;
    m.add_function(wrap_pyfunction!(tls::_tls_write, m)?)?;
    m.add_function(wrap_pyfunction!(tls::_tls_install_app_write, m)?)?;
    Ok(())
}
