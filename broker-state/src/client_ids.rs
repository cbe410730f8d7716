//! Sessions by client id: a hash table of session keys alone.
//!
//! The client id is already in the session, so the table keeps only the
//! 8-byte key and compares and rehashes through the session slab
//! (`hashbrown::HashTable`, the table behind std's `HashMap`). A map from the id
//! (a 32-byte `Bytes`) to the key cost about 67 bytes a session, 41 of them
//! buckets; this costs about 15.

use hashbrown::HashTable;

use crate::hash::SeededState;
use crate::ids::{SessionKey, Slab};
use crate::session::Session;
use core::hash::BuildHasher;

pub(crate) struct ClientIds {
    table: HashTable<SessionKey>,
    hasher: SeededState,
}

impl ClientIds {
    pub(crate) fn new(hasher: SeededState) -> Self {
        ClientIds {
            table: HashTable::new(),
            hasher,
        }
    }

    fn hash(&self, client_id: &[u8]) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// The session with this client id.
    pub(crate) fn get(&self, sessions: &Slab<Session>, client_id: &[u8]) -> Option<SessionKey> {
        self.table
            .find(self.hash(client_id), |&k| id_of(sessions, k) == client_id)
            .copied()
    }

    /// Adds session `sk` (already in `sessions`) under its client id, replacing
    /// whatever session had it.
    pub(crate) fn insert(&mut self, sessions: &Slab<Session>, sk: SessionKey) {
        let client_id = id_of(sessions, sk);
        let hash = self.hash(client_id);
        let hasher = self.hasher;
        match self.table.entry(
            hash,
            |&k| id_of(sessions, k) == client_id,
            |&k| hasher.hash_one(id_of(sessions, k)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = sk,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(sk);
            }
        }
    }

    /// Forgets session `sk`, filed under `client_id` (its session may already
    /// be out of the slab).
    pub(crate) fn remove(&mut self, client_id: &[u8], sk: SessionKey) {
        if let Ok(e) = self.table.find_entry(self.hash(client_id), |&k| k == sk) {
            e.remove();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// The client id of session `k`; empty for a key no longer in the slab (which
/// the broker never leaves in the table: the invariants check says so).
fn id_of(sessions: &Slab<Session>, k: SessionKey) -> &[u8] {
    sessions.get(k).map_or(&[], |s| s.client_id.as_bytes())
}
