//! What the broker holds right now, for metrics: counted when asked (a scrape),
//! never on the per-message path.

use super::*;

/// The broker's current sizes. [`Broker::gauges`] walks the sessions to count
/// them: call it for a metrics scrape, not per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Transport connections (including those still before CONNECT).
    pub connections: usize,
    /// Sessions with a connection.
    pub sessions_online: usize,
    /// Sessions without one (persistent sessions waiting for their client).
    pub sessions_offline: usize,
    /// Subscriptions of every session.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained_messages: usize,
    /// Their size in bytes (topic and payload).
    pub retained_bytes: usize,
    /// Messages queued in sessions, not yet in flight.
    pub queued_messages: usize,
    /// Their approximate size in bytes.
    pub queued_bytes: usize,
    /// QoS 1 and 2 messages sent and not yet acknowledged.
    pub inflight: usize,
}

impl Broker {
    /// The broker's current sizes (walks every session).
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            connections: self.conns.len(),
            subscriptions: self.router.len(),
            retained_messages: self.retained.len(),
            retained_bytes: self.retained.bytes(),
            ..Gauges::default()
        };
        for (_, s) in self.sessions.iter() {
            if s.conn.is_some() {
                g.sessions_online += 1;
            } else {
                g.sessions_offline += 1;
            }
            g.queued_messages += s.flows.queue.len();
            g.queued_bytes += s.flows.queue_bytes;
            g.inflight += s.flows.inflight.len();
        }
        g
    }
}
