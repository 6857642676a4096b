//! The scheduler's data structures: the ready queue and the timer heap.
//!
//! Timers are ordered by deadline, then by scheduling order (a sequence number), so two timers
//! with the same deadline run in the order they were scheduled. Cancelled timers stay in the
//! heap until they reach the top (popped lazily) or until more than half of a large heap is
//! cancelled, when the heap is rebuilt without them (asyncio's policy: more than 100 timers
//! and more than 50% cancelled).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use pyo3::prelude::*;

use crate::executor::Finished;
use crate::handles::{Handle, LightCall};
use crate::sockops::SockWaiter;
use crate::transports::datagram::DatagramTransport;
use crate::transports::stream::StreamTransport;

/// Compaction kicks in above this many scheduled timers...
const MIN_SCHEDULED_FOR_COMPACTION: usize = 100;
/// ...when more than this fraction of them is cancelled.
const CANCELLED_FRACTION_FOR_COMPACTION: f64 = 0.5;

pub struct TimerEntry {
    pub when: f64,
    pub seq: u64,
    pub handle: Py<Handle>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
pub struct TimerHeap {
    heap: BinaryHeap<TimerEntry>,
    seq: u64,
}

impl TimerHeap {
    pub fn push(&mut self, when: f64, handle: Py<Handle>) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(TimerEntry {
            when,
            seq: self.seq,
            handle,
        });
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn peek_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    pub fn pop(&mut self) -> Option<TimerEntry> {
        self.heap.pop()
    }

    /// Every scheduled timer as (deadline, scheduling order, handle), in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (f64, u64, &Py<Handle>)> {
        self.heap.iter().map(|e| (e.when, e.seq, &e.handle))
    }

    /// Every scheduled handle, in no particular order (for the garbage collector).
    pub fn handles(&self) -> impl Iterator<Item = &Py<Handle>> {
        self.heap.iter().map(|e| &e.handle)
    }

    pub fn drain(&mut self) -> Vec<Py<Handle>> {
        self.heap.drain().map(|e| e.handle).collect()
    }

    /// Removes cancelled timers, per asyncio's policy (see module docs). `cancelled` is the
    /// number of scheduled-then-cancelled timers; it is updated. Removed handles are pushed to
    /// `garbage` so the caller drops them outside any borrow.
    pub fn purge_cancelled(
        &mut self,
        py: Python<'_>,
        cancelled: &mut usize,
        garbage: &mut Vec<Py<Handle>>,
    ) {
        let n = self.heap.len();
        if n > MIN_SCHEDULED_FOR_COMPACTION
            && (*cancelled as f64) / (n as f64) > CANCELLED_FRACTION_FOR_COMPACTION
        {
            let old = std::mem::take(&mut self.heap).into_vec();
            let mut keep = Vec::with_capacity(n - (*cancelled).min(n));
            for e in old {
                let dead = take_if_cancelled(py, &e.handle);
                if dead {
                    garbage.push(e.handle);
                } else {
                    keep.push(e);
                }
            }
            self.heap = BinaryHeap::from(keep);
            *cancelled = 0;
        } else {
            while let Some(top) = self.heap.peek() {
                let dead = take_if_cancelled(py, &top.handle);
                if !dead {
                    break;
                }
                *cancelled = cancelled.saturating_sub(1);
                if let Some(e) = self.heap.pop() {
                    garbage.push(e.handle);
                }
            }
        }
    }
}

/// True (and the timer marked unscheduled) if the timer was cancelled.
fn take_if_cancelled(py: Python<'_>, h: &Py<Handle>) -> bool {
    h.get().take_if_cancelled(py)
}

/// One unit of work for the current iteration: a callback, or a native transport's reaction
/// to readiness of its fd.
pub enum Ready {
    Call(Py<Handle>),
    /// A callback whose handle nobody will see (see `handles::LightCall`).
    Light(LightCall),
    Read(Py<StreamTransport>),
    Write(Py<StreamTransport>),
    DatagramRead(Py<DatagramTransport>),
    DatagramWrite(Py<DatagramTransport>),
    /// A `sock_*` operation waiting for its socket.
    Sock(Py<SockWaiter>),
    /// A default-executor job finished: settle its future (see `executor.rs`).
    Executor(Box<Finished>),
}

/// FIFO of work ready to run.
pub type ReadyQueue = VecDeque<Ready>;
