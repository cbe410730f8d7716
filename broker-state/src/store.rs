//! An in-memory store that applies [`StoreOp`]s and replays them into a fresh broker.
//! It stands in for the durable store in tests, and can be told to fail.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::event::{SessionRecord, StoreOp, StoredMessage};

/// Applies store operations in order; [`MemoryStore::replay`] gives the operations
/// that rebuild the same state in a fresh broker.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    sessions: BTreeMap<Bytes, (SessionRecord, BTreeMap<u64, StoredMessage>)>,
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
                    .or_insert_with(|| (rec.clone(), BTreeMap::new()));
                entry.0 = rec.clone();
            }
            StoreOp::SessionRemove { client_id } => {
                self.sessions.remove(client_id.as_bytes());
            }
            StoreOp::MessageEnqueue {
                client_id,
                seq,
                message,
            } => {
                if let Some((_, q)) = self.sessions.get_mut(client_id.as_bytes()) {
                    q.insert(*seq, message.clone());
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                if let Some((_, q)) = self.sessions.get_mut(client_id.as_bytes()) {
                    q.remove(seq);
                }
            }
            StoreOp::RetainSet(m) => {
                self.retained
                    .insert(m.publish.topic.as_shared().clone(), m.clone());
            }
            StoreOp::RetainClear { topic } => {
                self.retained.remove(topic.as_bytes());
            }
        }
        Ok(())
    }

    /// Sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Messages queued for a session.
    pub fn queued(&self, client_id: &str) -> usize {
        self.sessions
            .get(client_id.as_bytes())
            .map_or(0, |(_, q)| q.len())
    }

    /// The operations that rebuild this state: each session, then its messages in
    /// order, then the retained messages. Feed them to
    /// [`crate::Broker::handle_restore`].
    pub fn replay(&self) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for (rec, queue) in self.sessions.values() {
            ops.push(StoreOp::SessionUpsert(rec.clone()));
            for (seq, m) in queue {
                ops.push(StoreOp::MessageEnqueue {
                    client_id: rec.client_id.clone(),
                    seq: *seq,
                    message: m.clone(),
                });
            }
        }
        ops.extend(self.retained.values().cloned().map(StoreOp::RetainSet));
        ops
    }
}
