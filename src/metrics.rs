//! Loop metrics: the counters the iteration keeps (always on, plain integer increments on
//! data it already holds), the timings it takes when asked (`timing`: the poll, the
//! callbacks, the loop lag), and the bytes the native I/O paths move.
//!
//! Bytes are counted per thread, not per loop: a thread runs at most one loop at a time, so
//! the loop adds what its thread's counters moved during its iteration (one read of a
//! thread-local before and after the callbacks) and the read and write paths pay a
//! thread-local increment, nothing more.

use std::cell::Cell;

thread_local! {
    static RECEIVED: Cell<u64> = const { Cell::new(0) };
    static SENT: Cell<u64> = const { Cell::new(0) };
}

/// Bytes received by a native read path (transports, `sock_*`).
#[inline]
pub fn received(n: usize) {
    RECEIVED.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

/// Bytes sent by a native write path.
#[inline]
pub fn sent(n: usize) {
    SENT.with(|c| c.set(c.get().wrapping_add(n as u64)));
}

/// This thread's byte counters (received, sent).
#[inline]
pub fn io_bytes() -> (u64, u64) {
    (RECEIVED.with(Cell::get), SENT.with(Cell::get))
}

/// How many recent lag samples the percentiles are taken over.
const LAG_WINDOW: usize = 1024;

/// The loop's counters and timings.
#[derive(Default)]
pub struct Stats {
    pub iterations: u64,
    /// Units of work run (callbacks, task steps, transport reads and writes).
    pub callbacks: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Whether the timings below are being measured.
    pub timing: bool,
    /// Time spent waiting in `epoll_wait` (nanoseconds).
    pub poll_ns: u64,
    /// Time spent running callbacks (nanoseconds).
    pub callback_ns: u64,
    /// Recent loop-lag samples in nanoseconds (a ring of `LAG_WINDOW`).
    lag: Vec<u64>,
    lag_next: usize,
    lag_max: u64,
}

impl Stats {
    pub fn add_lag(&mut self, ns: u64) {
        if self.lag.len() < LAG_WINDOW {
            self.lag.push(ns);
        } else {
            self.lag[self.lag_next] = ns;
        }
        self.lag_next = (self.lag_next + 1) % LAG_WINDOW;
        self.lag_max = self.lag_max.max(ns);
    }

    /// (p50, p99, max) of the lag in seconds; None without samples. The max is over the
    /// whole run, the percentiles over the recent window.
    pub fn lag(&self) -> Option<(f64, f64, f64)> {
        if self.lag.is_empty() {
            return None;
        }
        let mut sorted = self.lag.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[i.min(sorted.len() - 1)] as f64 / 1e9
        };
        Some((at(0.5), at(0.99), self.lag_max as f64 / 1e9))
    }

    pub fn lag_samples(&self) -> usize {
        self.lag.len()
    }

    pub fn reset_timings(&mut self) {
        self.poll_ns = 0;
        self.callback_ns = 0;
        self.lag.clear();
        self.lag_next = 0;
        self.lag_max = 0;
    }
}
