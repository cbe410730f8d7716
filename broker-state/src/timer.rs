//! One timer queue for the whole broker.
//!
//! A binary heap of (deadline, timer). Timers are not cancelled in place: each
//! owner keeps its current deadline, and a popped timer whose deadline no longer
//! matches is stale and ignored. `poll_timeout` is a peek, O(1). When stale entries
//! outnumber live ones the heap is rebuilt, so churn cannot grow it without bound.
//! A stale entry can make `poll_timeout` report a deadline at which nothing is due;
//! `handle_timeout` is then a no-op, as the run-loop contract allows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ids::{ConnKey, SessionKey};

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    /// A connection's one timer: the connect timeout until CONNECT, then the
    /// keep-alive check.
    Conn(ConnKey),
    /// An offline session reaching its expiry.
    SessionExpiry(SessionKey),
    /// A delayed will becoming due.
    WillDelay(SessionKey),
}

/// A deadline queue over timers of kind `K`: the broker's own timers, and the
/// expiry of retained messages (keyed by topic, which is kept out of `TimerKind` so
/// that the per-connection entries stay small).
pub(crate) struct Timers<K = TimerKind> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord> Timers<K> {
    pub(crate) fn schedule(&mut self, at: Instant, kind: K) {
        self.heap.push(Reverse((at, kind)));
    }

    /// Drops stale entries once the heap holds more than `live_bound` of them; the
    /// caller passes twice the number of timers that can be live (at most two per
    /// connection and two per session), so the rebuild is amortised O(1).
    pub(crate) fn compact_if_over(
        &mut self,
        live_bound: usize,
        is_live: impl Fn(&K, Instant) -> bool,
    ) {
        if self.heap.len() <= live_bound.max(64) {
            return;
        }
        let entries = core::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse((at, k))| is_live(k, *at))
            .collect();
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the next timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[allow(dead_code)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
