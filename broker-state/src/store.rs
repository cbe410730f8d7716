//! An in-memory store that applies [`StoreOp`]s and replays them into a fresh broker.
//! It stands in for the durable store in tests, and can be told to fail.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::event::{SessionRecord, StoreOp, StoredMessage};

/// A queued message as the store keeps it: the message, the packet id it went out
/// with (if it did), and whether its QoS 2 flow reached PUBREL (then only the id
/// matters).
#[derive(Debug, Clone)]
struct Entry {
    message: StoredMessage,
    packet_id: Option<u16>,
    released: bool,
}

#[derive(Debug, Clone)]
struct StoredSession {
    record: SessionRecord,
    queue: BTreeMap<u64, Entry>,
    qos2_in: BTreeSet<u16>,
}

/// Applies store operations in order; [`MemoryStore::replay`] gives the operations
/// that rebuild the same state in a fresh broker.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    sessions: BTreeMap<Bytes, StoredSession>,
    retained: BTreeMap<Bytes, StoredMessage>,
    fail: bool,
}

/// The store refused an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailed;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every operation fails (or succeeds again with `false`).
    pub fn set_failing(&mut self, fail: bool) {
        self.fail = fail;
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &StoreOp) -> Result<(), StoreFailed> {
        if self.fail {
            return Err(StoreFailed);
        }
        match op {
            StoreOp::SessionUpsert(rec) => {
                let entry = self
                    .sessions
                    .entry(rec.client_id.as_shared().clone())
                    .or_insert_with(|| StoredSession {
                        record: rec.clone(),
                        queue: BTreeMap::new(),
                        qos2_in: BTreeSet::new(),
                    });
                entry.record = rec.clone();
            }
            StoreOp::SessionRemove { client_id } => {
                self.sessions.remove(client_id.as_bytes());
            }
            StoreOp::MessageEnqueue {
                client_id,
                seq,
                message,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id.as_bytes()) {
                    s.queue.insert(
                        *seq,
                        Entry {
                            message: message.clone(),
                            packet_id: None,
                            released: false,
                        },
                    );
                }
            }
            StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
            } => {
                if let Some(e) = self.entry(client_id.as_bytes(), *seq) {
                    e.packet_id = Some(*packet_id);
                }
            }
            StoreOp::MessageReleased { client_id, seq } => {
                if let Some(e) = self.entry(client_id.as_bytes(), *seq) {
                    e.released = true;
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                if let Some(s) = self.sessions.get_mut(client_id.as_bytes()) {
                    s.queue.remove(seq);
                }
            }
            StoreOp::RetainSet(m) => {
                self.retained
                    .insert(m.publish.topic.as_shared().clone(), m.clone());
            }
            StoreOp::RetainClear { topic } => {
                self.retained.remove(topic.as_bytes());
            }
            StoreOp::Qos2Received {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id.as_bytes()) {
                    s.qos2_in.insert(*packet_id);
                }
            }
            StoreOp::Qos2Released {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(client_id.as_bytes()) {
                    s.qos2_in.remove(packet_id);
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, client_id: &[u8], seq: u64) -> Option<&mut Entry> {
        self.sessions.get_mut(client_id)?.queue.get_mut(&seq)
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Messages queued (or in flight) for a session.
    pub fn queued(&self, client_id: &str) -> usize {
        self.sessions
            .get(client_id.as_bytes())
            .map_or(0, |s| s.queue.len())
    }

    /// Retained messages held.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// The operations that rebuild this state: each session, then its messages in
    /// order (each followed by its flow state), then its incoming QoS 2 ids; then
    /// the retained messages. Feed them to [`crate::Broker::handle_restore`].
    pub fn replay(&self) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for s in self.sessions.values() {
            let client_id = &s.record.client_id;
            ops.push(StoreOp::SessionUpsert(s.record.clone()));
            for (&seq, e) in &s.queue {
                ops.push(StoreOp::MessageEnqueue {
                    client_id: client_id.clone(),
                    seq,
                    message: e.message.clone(),
                });
                if let Some(packet_id) = e.packet_id {
                    ops.push(StoreOp::MessageSent {
                        client_id: client_id.clone(),
                        seq,
                        packet_id,
                    });
                }
                if e.released {
                    ops.push(StoreOp::MessageReleased {
                        client_id: client_id.clone(),
                        seq,
                    });
                }
            }
            for &packet_id in &s.qos2_in {
                ops.push(StoreOp::Qos2Received {
                    client_id: client_id.clone(),
                    packet_id,
                });
            }
        }
        ops.extend(self.retained.values().cloned().map(StoreOp::RetainSet));
        ops
    }
}
