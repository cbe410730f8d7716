//! Acknowledgements that wait for the store: a PUBACK or PUBREC goes out once the
//! message is durable for every persistent session it was queued to (and for the
//! retained store), a SUBACK or UNSUBACK once the session's record is, a PUBCOMP
//! once the released QoS 2 id is (otherwise a restart would drop the client's next
//! message with that id as a duplicate).
//!
//! Store effects are numbered in the order they are emitted (the n-th
//! `Event::Store` is number n, from 1; on a node of a cluster, a QoS 1 or 2
//! `ClusterOp::Forward` takes a number in the same sequence, see
//! `broker/cluster.rs`); the adapter applies them in that order and
//! says how far they are durable ([`Broker::handle_store_committed`]) or failed
//! ([`Broker::handle_store_failed`]). An acknowledgement whose packet caused store
//! effects waits for the last of them; so does every later acknowledgement to the
//! same connection, so that a client sees its acknowledgements in the order of its
//! packets [MQTT-4.6.0-2]. A packet that caused none (QoS 0, a clean session, a
//! message no persistent session wanted) is acknowledged at once.

use super::subscribe::RetainedFor;
use super::*;

/// The store's progress and the acknowledgements waiting for it.
#[derive(Default)]
pub(crate) struct Durability {
    /// Store effects emitted.
    pub(crate) emitted: u64,
    /// Store effects durable (or failed): the adapter's last word.
    pub(crate) done: u64,
    /// Waiting acknowledgements, in the order they were made (so `needs` only grows).
    pub(crate) held: VecDeque<HeldAck>,
}

pub(crate) struct HeldAck {
    /// The store effect that must be durable first.
    pub(crate) needs: u64,
    pub(crate) conn: ConnKey,
    pub(crate) item: Held,
    /// A SUBACK's retained messages, sent after it.
    pub(crate) then: Option<Box<RetainedFor>>,
}

/// What waits.
#[allow(clippy::large_enum_variant)] // a packet is the common case, not the outlier
pub(crate) enum Held {
    /// A packet: an acknowledgement, a PUBREL, a resent PUBLISH.
    Packet(Packet),
    /// A QoS 2 PUBLISH of a persistent session's window (see `push_flight`).
    Flight { id: PacketId, size: usize },
}

impl Broker {
    /// Emits a durable change (only called with `store_effects` on).
    pub(super) fn emit_store(&mut self, op: StoreOp) {
        self.durability.emitted += 1;
        self.events.push_back(Event::store(op));
    }

    /// Store effects emitted so far: the number of the last `Event::Store`.
    pub fn store_effects_emitted(&self) -> u64 {
        self.durability.emitted
    }

    /// Acknowledgements waiting for the store.
    pub fn acks_waiting_for_store(&self) -> usize {
        self.durability.held.len()
    }

    /// Sends `packet`, the acknowledgement of a packet whose handling began when
    /// `mark` store effects had been emitted: at once (true), or once what that
    /// handling emitted is durable (and after the connection's earlier waiting
    /// ones).
    pub(super) fn push_ack(&mut self, k: ConnKey, packet: Packet, mark: u64) -> bool {
        let d = &self.durability;
        let caused = d.emitted > mark && d.emitted > d.done;
        // Nothing waits anywhere (always so without a store): no lookup of the
        // connection's count on the per-message path.
        let behind = !d.held.is_empty() && self.conns.get(k).is_some_and(|c| c.held_acks > 0);
        if caused || behind {
            self.hold_for_store(k, Held::Packet(packet));
            return false;
        }
        self.push_out(k, packet);
        true
    }

    /// Holds `item` for connection `k` until everything the store was told so far
    /// is durable.
    fn hold_for_store(&mut self, k: ConnKey, item: Held) {
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        c.held_acks += 1;
        let needs = self.durability.emitted;
        self.durability.held.push_back(HeldAck {
            needs,
            conn: k,
            item,
            then: None,
        });
    }

    /// Queues the in-flight PUBLISH `id` (already in the session's window) for the
    /// wire. A QoS 2 PUBLISH whose packet id the store was just told (`wait`)
    /// goes out only once that is durable: a receiver keeps the id of a QoS 2
    /// message it acknowledged until the PUBREL, and treats a new message with the
    /// same id as a resend, so the broker must never hand out, after a restart,
    /// an id a receiver may still hold. Flights behind a waiting one wait too (the
    /// output queue sends a session's flights in window order).
    pub(super) fn push_flight(&mut self, k: ConnKey, id: PacketId, size: usize, wait: bool) {
        let d = &self.durability;
        let caused = wait && d.emitted > d.done;
        let Some(c) = self.conns.get_mut(k) else {
            return;
        };
        if caused || c.held_acks > 0 {
            return self.hold_for_store(k, Held::Flight { id, size });
        }
        c.out.push_flight(id, size, &mut self.out_pool);
        signal_transmit(c, &mut self.events, k);
    }

    /// What to do once the acknowledgement just held has gone out.
    pub(super) fn after_held_ack(&mut self, retained: RetainedFor) {
        if let Some(h) = self.durability.held.back_mut() {
            h.then = Some(Box::new(retained));
        }
    }

    /// The store has made every effect up to number `through` durable: the
    /// acknowledgements that waited for them go out.
    pub fn handle_store_committed(&mut self, now: Now, through: u64) {
        self.store_done(now, through, false);
    }

    /// The store could not make the effects up to number `through` durable (a
    /// write or sync failed). What waited for them is refused rather than
    /// acknowledged: a 5.0 PUBACK or PUBREC carries Unspecified error (0x80) and
    /// the QoS 2 id is free again; every other acknowledgement (3.1.1 PUBACK and
    /// PUBREC, SUBACK, UNSUBACK, PUBCOMP) cannot say so, and its connection is
    /// closed (5.0: DISCONNECT 0x80) so that the client does not take it for
    /// done. The messages stay routed in memory; they are not durable.
    pub fn handle_store_failed(&mut self, now: Now, through: u64) {
        self.store_done(now, through, true);
    }

    fn store_done(&mut self, now: Now, through: u64, failed: bool) {
        let d = &mut self.durability;
        d.done = d.done.max(through.min(d.emitted));
        while let Some(h) = self.durability.held.front() {
            if h.needs > self.durability.done {
                break;
            }
            let Some(h) = self.durability.held.pop_front() else {
                break;
            };
            let Some(c) = self.conns.get_mut(h.conn) else {
                continue;
            };
            c.held_acks -= 1;
            // A connection the broker is closing gets nothing more (its session,
            // if any, resends its window on the next connection).
            if matches!(c.state, ConnState::Closing { .. }) {
                continue;
            }
            let sk = c.session();
            match (h.item, failed) {
                // Not durable, but in flight in memory: it goes out (the store's
                // failure is reported; there is no durability left to keep).
                (Held::Flight { id, size }, _) => {
                    c.out.push_flight(id, size, &mut self.out_pool);
                    signal_transmit(c, &mut self.events, h.conn);
                }
                (Held::Packet(packet), true) => self.refuse_ack(now, h.conn, packet),
                (Held::Packet(packet), false) => {
                    self.push_out(h.conn, packet);
                    if let (Some(retained), Some(sk)) = (h.then, sk) {
                        self.send_retained(now, sk, *retained);
                    }
                }
            }
        }
    }

    /// An acknowledgement whose store effects failed.
    fn refuse_ack(&mut self, now: Now, k: ConnKey, packet: Packet) {
        let Some(c) = self.conns.get(k) else { return };
        if matches!(c.state, ConnState::Closing { .. }) {
            return;
        }
        let (v5, sk) = (c.version.is_v5(), c.session());
        self.stats.store_failures_refused += 1;
        match packet {
            Packet::PubAck(mut a) if v5 => {
                a.reason_code = ReasonCode::UnspecifiedError;
                a.properties = self.ack_properties(k, a.reason_code);
                self.push_out(k, Packet::PubAck(a));
            }
            Packet::PubRec(mut a) if v5 => {
                if let Some(s) = sk.and_then(|sk| self.sessions.get_mut(sk)) {
                    s.flows.incoming_qos2.release(a.packet_id);
                }
                a.reason_code = ReasonCode::UnspecifiedError;
                a.properties = self.ack_properties(k, a.reason_code);
                self.push_out(k, Packet::PubRec(a));
            }
            _ => self.violation(now, k, ReasonCode::UnspecifiedError),
        }
    }
}
