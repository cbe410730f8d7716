//! The redb tables, applying [`StoreOp`]s to them, and reading them back as the
//! replay.

use broker_state::StoreOp;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, Table, TableDefinition};

use crate::codec::{self, BadRecord, Unencodable};

/// Client id -> session record.
pub const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// (client id, seq) -> queue entry (message, packet id, released flag).
pub const MESSAGES: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("messages");
/// (client id, packet id) -> (): incoming QoS 2 ids awaiting PUBREL.
pub const QOS2_IN: TableDefinition<(&[u8], u16), ()> = TableDefinition::new("qos2_in");
/// Topic -> retained message.
pub const RETAINED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("retained");
/// Name -> number: the store format version.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The key of the format version in [`META`].
pub const FORMAT_KEY: &str = "format_version";

/// A record that did not decode: where, and why.
#[derive(Debug)]
pub struct BadAt {
    pub table: &'static str,
    pub key: String,
    pub reason: BadRecord,
}

impl core::fmt::Display for BadAt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "table {}, key {}: the record does not decode: {}",
            self.table, self.key, self.reason
        )
    }
}

/// Reading the tables failed.
#[derive(Debug)]
pub enum ReadFailure {
    /// redb refused (checksum, I/O...), while doing `what`.
    Redb(&'static str, redb::Error),
    /// A record did not decode.
    Bad(BadAt),
}

impl<E: Into<redb::Error>> From<(&'static str, E)> for ReadFailure {
    fn from((what, e): (&'static str, E)) -> Self {
        ReadFailure::Redb(what, e.into())
    }
}

/// A key for messages: bytes as text where they are text.
pub fn show_bytes(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

// ---- writing ----------------------------------------------------------------------

/// An operation with its values already encoded: a batch is prepared whole before
/// the transaction, so an op without a stored form fails its batch alone.
pub enum Prepared<'a> {
    Upsert {
        cid: &'a [u8],
        value: Vec<u8>,
    },
    Remove {
        cid: &'a [u8],
    },
    Enqueue {
        cid: &'a [u8],
        seq: u64,
        value: Vec<u8>,
    },
    Sent {
        cid: &'a [u8],
        seq: u64,
        packet_id: u16,
    },
    Released {
        cid: &'a [u8],
        seq: u64,
    },
    MessageRemove {
        cid: &'a [u8],
        seq: u64,
    },
    RetainSet {
        topic: &'a [u8],
        value: Vec<u8>,
    },
    RetainClear {
        topic: &'a [u8],
    },
    Qos2Received {
        cid: &'a [u8],
        packet_id: u16,
    },
    Qos2Released {
        cid: &'a [u8],
        packet_id: u16,
    },
    /// A `Sent` or `Released` already applied to the entry of the `Enqueue`
    /// before it in the same group (see the writer's `Fate::FoldInto`):
    /// nothing left to write.
    Folded,
}

impl Prepared<'_> {
    /// Applies this op, a `Sent` or `Released`, to `enqueue`, an `Enqueue` of
    /// the same message earlier in the group, and leaves `Folded` in its place.
    /// False (and nothing changed) for any other pair.
    pub fn fold_into(&mut self, enqueue: &mut Prepared<'_>) -> bool {
        let Prepared::Enqueue { value, .. } = enqueue else {
            return false;
        };
        let done = match self {
            Prepared::Sent { packet_id, .. } => codec::entry_mark_sent(value, *packet_id),
            Prepared::Released { .. } => codec::entry_mark_released(value),
            _ => return false,
        };
        if done.is_err() {
            return false;
        }
        *self = Prepared::Folded;
        true
    }
}

/// Encodes what `op` will write.
pub fn prepare(op: &StoreOp) -> Result<Prepared<'_>, Unencodable> {
    Ok(match op {
        StoreOp::SessionUpsert(rec) => Prepared::Upsert {
            cid: rec.client_id.as_bytes(),
            value: codec::encode_session(rec)?,
        },
        StoreOp::SessionRemove { client_id } => Prepared::Remove {
            cid: client_id.as_bytes(),
        },
        StoreOp::MessageEnqueue {
            client_id,
            seq,
            message,
        } => Prepared::Enqueue {
            cid: client_id.as_bytes(),
            seq: *seq,
            value: codec::encode_new_entry(message)?,
        },
        StoreOp::MessageSent {
            client_id,
            seq,
            packet_id,
        } => Prepared::Sent {
            cid: client_id.as_bytes(),
            seq: *seq,
            packet_id: *packet_id,
        },
        StoreOp::MessageReleased { client_id, seq } => Prepared::Released {
            cid: client_id.as_bytes(),
            seq: *seq,
        },
        StoreOp::MessageRemove { client_id, seq } => Prepared::MessageRemove {
            cid: client_id.as_bytes(),
            seq: *seq,
        },
        StoreOp::RetainSet(m) => Prepared::RetainSet {
            topic: m.publish.topic.as_bytes(),
            value: codec::encode_retained(m)?,
        },
        StoreOp::RetainClear { topic } => Prepared::RetainClear {
            topic: topic.as_bytes(),
        },
        StoreOp::Qos2Received {
            client_id,
            packet_id,
        } => Prepared::Qos2Received {
            cid: client_id.as_bytes(),
            packet_id: *packet_id,
        },
        StoreOp::Qos2Released {
            client_id,
            packet_id,
        } => Prepared::Qos2Released {
            cid: client_id.as_bytes(),
            packet_id: *packet_id,
        },
    })
}

/// Applying an op failed.
#[derive(Debug)]
pub enum ApplyError {
    Redb(redb::Error),
    /// A stored entry that MessageSent / MessageReleased must patch is damaged.
    Bad(BadAt),
}

impl From<redb::StorageError> for ApplyError {
    fn from(e: redb::StorageError) -> Self {
        ApplyError::Redb(e.into())
    }
}

impl core::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApplyError::Redb(e) => write!(f, "{e}"),
            ApplyError::Bad(b) => write!(f, "{b}"),
        }
    }
}

/// The tables of one write transaction.
pub struct WriteTables<'t> {
    sessions: Table<'t, &'static [u8], &'static [u8]>,
    messages: Table<'t, (&'static [u8], u64), &'static [u8]>,
    qos2_in: Table<'t, (&'static [u8], u16), ()>,
    retained: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> WriteTables<'t> {
    pub fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(WriteTables {
            sessions: txn.open_table(SESSIONS)?,
            messages: txn.open_table(MESSAGES)?,
            qos2_in: txn.open_table(QOS2_IN)?,
            retained: txn.open_table(RETAINED)?,
        })
    }

    fn has_session(&self, cid: &[u8]) -> Result<bool, ApplyError> {
        Ok(self.sessions.get(cid)?.is_some())
    }

    /// Applies one op with `MemoryStore::apply`'s semantics; returns the bytes
    /// written (keys and values).
    pub fn apply(&mut self, op: &Prepared<'_>) -> Result<u64, ApplyError> {
        match op {
            Prepared::Upsert { cid, value } => {
                self.sessions.insert(*cid, value.as_slice())?;
                Ok((cid.len() + value.len()) as u64)
            }
            Prepared::Remove { cid } => {
                if self.sessions.remove(*cid)?.is_some() {
                    self.messages
                        .retain_in((*cid, 0u64)..=(*cid, u64::MAX), |_, _| false)?;
                    self.qos2_in
                        .retain_in((*cid, 0u16)..=(*cid, u16::MAX), |_, _| false)?;
                }
                Ok(0)
            }
            Prepared::Enqueue { cid, seq, value } => {
                if !self.has_session(cid)? {
                    return Ok(0);
                }
                self.messages.insert((*cid, *seq), value.as_slice())?;
                Ok((cid.len() + 8 + value.len()) as u64)
            }
            Prepared::Sent {
                cid,
                seq,
                packet_id,
            } => self.patch(cid, *seq, |v| codec::entry_set_sent(v, *packet_id)),
            Prepared::Released { cid, seq } => self.patch(cid, *seq, codec::entry_set_released),
            Prepared::MessageRemove { cid, seq } => {
                self.messages.remove((*cid, *seq))?;
                Ok(0)
            }
            Prepared::RetainSet { topic, value } => {
                self.retained.insert(*topic, value.as_slice())?;
                Ok((topic.len() + value.len()) as u64)
            }
            Prepared::RetainClear { topic } => {
                self.retained.remove(*topic)?;
                Ok(0)
            }
            Prepared::Qos2Received { cid, packet_id } => {
                if !self.has_session(cid)? {
                    return Ok(0);
                }
                self.qos2_in.insert((*cid, *packet_id), ())?;
                Ok((cid.len() + 2) as u64)
            }
            Prepared::Qos2Released { cid, packet_id } => {
                self.qos2_in.remove((*cid, *packet_id))?;
                Ok(0)
            }
            Prepared::Folded => Ok(0),
        }
    }

    /// Rewrites an existing entry's header; nothing if there is no such entry (its
    /// session is gone or it was removed), as `MemoryStore` does.
    fn patch(
        &mut self,
        cid: &[u8],
        seq: u64,
        f: impl FnOnce(&[u8]) -> Result<Vec<u8>, BadRecord>,
    ) -> Result<u64, ApplyError> {
        let new = match self.messages.get((cid, seq))? {
            None => return Ok(0),
            Some(old) => f(old.value()).map_err(|reason| {
                ApplyError::Bad(BadAt {
                    table: "messages",
                    key: format!("({}, {seq})", show_bytes(cid)),
                    reason,
                })
            })?,
        };
        self.messages.insert((cid, seq), new.as_slice())?;
        Ok((cid.len() + 8 + new.len()) as u64)
    }
}

// ---- reading ----------------------------------------------------------------------

/// The operations that rebuild the stored state, in `MemoryStore::replay`'s order.
pub fn replay(rtx: &ReadTransaction) -> Result<Vec<StoreOp>, ReadFailure> {
    let sessions = rtx
        .open_table(SESSIONS)
        .map_err(|e| ("opening table sessions", e))?;
    let messages = rtx
        .open_table(MESSAGES)
        .map_err(|e| ("opening table messages", e))?;
    let qos2_in = rtx
        .open_table(QOS2_IN)
        .map_err(|e| ("opening table qos2_in", e))?;
    let retained = rtx
        .open_table(RETAINED)
        .map_err(|e| ("opening table retained", e))?;
    // A hint only: capped, so that a damaged length cannot ask for absurd memory.
    let count = |t: u64| usize::try_from(t.min(1 << 22)).unwrap_or(0);
    let mut ops = Vec::with_capacity(count(
        sessions
            .len()
            .map_err(|e| ("counting sessions", e))?
            .saturating_add(messages.len().map_err(|e| ("counting messages", e))?)
            .saturating_add(qos2_in.len().map_err(|e| ("counting qos2_in", e))?)
            .saturating_add(retained.len().map_err(|e| ("counting retained", e))?),
    ));
    for row in sessions.iter().map_err(|e| ("reading table sessions", e))? {
        let (k, v) = row.map_err(|e| ("reading table sessions", e))?;
        let key = k.value();
        let bad = |reason| {
            ReadFailure::Bad(BadAt {
                table: "sessions",
                key: show_bytes(key),
                reason,
            })
        };
        let client_id = codec::client_id_from_key(key).map_err(bad)?;
        let record = codec::decode_session(client_id.clone(), v.value()).map_err(bad)?;
        ops.push(StoreOp::SessionUpsert(record));
        let range = messages
            .range((key, 0u64)..=(key, u64::MAX))
            .map_err(|e| ("reading table messages", e))?;
        for row in range {
            let (k, v) = row.map_err(|e| ("reading table messages", e))?;
            let (_, seq) = k.value();
            let entry = codec::decode_entry(v.value()).map_err(|reason| {
                ReadFailure::Bad(BadAt {
                    table: "messages",
                    key: format!("({}, {seq})", show_bytes(key)),
                    reason,
                })
            })?;
            ops.push(StoreOp::MessageEnqueue {
                client_id: client_id.clone(),
                seq,
                message: entry.message,
            });
            if let Some(packet_id) = entry.packet_id {
                ops.push(StoreOp::MessageSent {
                    client_id: client_id.clone(),
                    seq,
                    packet_id,
                });
            }
            if entry.released {
                ops.push(StoreOp::MessageReleased {
                    client_id: client_id.clone(),
                    seq,
                });
            }
        }
        let range = qos2_in
            .range((key, 0u16)..=(key, u16::MAX))
            .map_err(|e| ("reading table qos2_in", e))?;
        for row in range {
            let (k, _) = row.map_err(|e| ("reading table qos2_in", e))?;
            let (_, packet_id) = k.value();
            ops.push(StoreOp::Qos2Received {
                client_id: client_id.clone(),
                packet_id,
            });
        }
    }
    for row in retained.iter().map_err(|e| ("reading table retained", e))? {
        let (k, v) = row.map_err(|e| ("reading table retained", e))?;
        let key = k.value();
        let bad = |reason| {
            ReadFailure::Bad(BadAt {
                table: "retained",
                key: show_bytes(key),
                reason,
            })
        };
        let message = codec::decode_retained(v.value()).map_err(bad)?;
        if message.publish.topic.as_bytes() != key {
            return Err(bad(BadRecord(
                "the message's topic is not its key".to_string(),
            )));
        }
        ops.push(StoreOp::RetainSet(message));
    }
    Ok(ops)
}
