//! Sessions in JetStream: the cluster's store of every persistent session, so
//! that a session outlives the node it was on and moves with its client.
//!
//! The core's store effects ([`StoreOp`]) of a node of a cluster come here
//! instead of a local file. They are kept in the KV bucket `<prefix>_state`,
//! one key per thing, so that each effect is one small write and a node can
//! read one session without reading the others (`S` is the client identifier
//! in base64url, which has no `.`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `S.r` | the session record (`brokk_store::records::encode_session`) | `SessionUpsert` |
//! | `S.m.<seq>` | a queued message (`encode_new_entry`) | `MessageEnqueue` |
//! | `S.p.<seq>` | the packet id it went out with (2 bytes) | `MessageSent` |
//! | `S.x.<seq>` | its QoS 2 flow reached PUBREC (empty) | `MessageReleased` |
//! | `S.i.<id>` | a QoS 2 packet id received and not yet released (empty) | `Qos2Received` |
//!
//! A key that goes (`MessageRemove`, `Qos2Released`) is purged with a marker
//! that JetStream itself forgets after [`MARKER_TTL`], so that a queue that
//! keeps moving leaves nothing behind; a session that ends is purged whole
//! (the stream's purge by subject). Retained messages are not here: the
//! retained bucket, written by every retained forward, is the cluster's
//! retained store.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use broker_state::{StoreOp, StoredMessage};
use brokk_store::records;
use bytes::Bytes;
use futures_util::StreamExt;
use mqtt_proto::MqttString;

/// How long JetStream keeps the marker of a purged key.
pub const MARKER_TTL: Duration = Duration::from_secs(60);

const SENT: u8 = 1;
const RELEASED: u8 = 2;

/// A client identifier as the bucket's keys and the claims name it.
pub fn session_key(client_id: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id)
}

/// Which per-message keys exist beside `S.m.<seq>` (`SENT`, `RELEASED`), per
/// session and sequence number: what a removal purges.
pub(crate) type Marks = HashMap<u64, u8>;

/// The writer of this node's sessions into the bucket.
pub(crate) struct StateStore {
    pub(crate) kv: jetstream::kv::Store,
    js: jetstream::Context,
    marks: HashMap<String, Marks>,
    /// The headers of a purge (the same for every key), made once.
    purge_headers: async_nats::HeaderMap,
}

/// Why the cluster's store could not do what it was asked.
#[derive(Debug)]
pub(crate) struct StateError(pub(crate) String);

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(what: &str, e: impl core::fmt::Display) -> StateError {
    StateError(format!("{what}: {e}"))
}

impl StateStore {
    pub(crate) fn new(kv: jetstream::kv::Store, js: jetstream::Context) -> Self {
        let mut purge_headers = async_nats::HeaderMap::new();
        purge_headers.insert("KV-Operation", "PURGE");
        purge_headers.insert("Nats-Rollup", "sub");
        purge_headers.insert("Nats-TTL", MARKER_TTL.as_secs().to_string().as_str());
        StateStore {
            kv,
            js,
            marks: HashMap::new(),
            purge_headers,
        }
    }

    /// The subject of key `<s>.<kind>.<n>` (one allocation).
    fn subject(&self, s: &str, kind: char, n: impl core::fmt::Display) -> String {
        format!("{}{s}.{kind}.{n}", self.kv.prefix)
    }

    /// Marks that message `seq` of session `s` has a `flag` key too.
    fn mark(&mut self, s: String, seq: u64, flag: u8) {
        *self.marks.entry(s).or_default().entry(seq).or_default() |= flag;
    }

    /// Records what the keys of a session read from the bucket are, so that
    /// its later removals purge them.
    pub(crate) fn adopt(&mut self, client_id: &[u8], marks: Marks) {
        self.marks.insert(session_key(client_id), marks);
    }

    /// Forgets a session that left this node (another node holds it now).
    pub(crate) fn forget(&mut self, client_id: &[u8]) {
        self.marks.remove(&session_key(client_id));
    }

    /// Writes `ops` in order, and waits until JetStream has stored every one
    /// of them (or `patience` is over).
    ///
    /// While JetStream refuses (it elects a new leader for the bucket after a
    /// NATS server died, which takes seconds), the whole batch is written
    /// again: this node alone writes its sessions' keys, so writing the same
    /// changes again in order ends in the same state.
    pub(crate) async fn apply(
        &mut self,
        ops: &[StoreOp],
        patience: Duration,
    ) -> Result<(), StateError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut again = false;
        loop {
            match self.apply_once(ops, patience, again).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "the cluster's store refused; writing again");
                    again = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// `again`: the batch was written before, in part: a removal purges
    /// every key a message may have (its marks are gone with the first try).
    async fn apply_once(
        &mut self,
        ops: &[StoreOp],
        patience: Duration,
        again: bool,
    ) -> Result<(), StateError> {
        let mut acks = Vec::new();
        let mut failed = None;
        for op in ops {
            if let Err(e) = self.send(op, &mut acks, patience, again).await {
                failed.get_or_insert(e);
            }
            // A publish beyond async-nats's limit of unanswered ones would
            // wait for a permit that only awaiting these frees.
            if acks.len() >= MAX_ACKS_WAITING {
                if let Err(e) = settle(&mut acks, patience).await {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Err(e) = settle(&mut acks, patience).await {
            failed.get_or_insert(e);
        }
        failed.map_or(Ok(()), Err)
    }

    async fn put(
        &self,
        subject: String,
        value: Bytes,
        acks: &mut Vec<PublishAckFuture>,
    ) -> Result<(), StateError> {
        let ack = self
            .js
            .publish(subject, value)
            .await
            .map_err(|e| error("writing a session to JetStream", e))?;
        acks.push(ack);
        Ok(())
    }

    async fn purge(
        &self,
        subject: String,
        acks: &mut Vec<PublishAckFuture>,
    ) -> Result<(), StateError> {
        let ack = self
            .js
            .publish_with_headers(subject, self.purge_headers.clone(), Bytes::new())
            .await
            .map_err(|e| error("purging a session's key in JetStream", e))?;
        acks.push(ack);
        Ok(())
    }

    async fn send(
        &mut self,
        op: &StoreOp,
        acks: &mut Vec<PublishAckFuture>,
        patience: Duration,
        again: bool,
    ) -> Result<(), StateError> {
        match op {
            StoreOp::SessionUpsert(rec) => {
                let s = session_key(rec.client_id.as_bytes());
                let value = records::encode_session(rec)
                    .map_err(|e| error("encoding a session record", e.0))?;
                let subject = format!("{}{s}.r", self.kv.prefix);
                self.marks.entry(s).or_default();
                self.put(subject, value.into(), acks).await
            }
            StoreOp::SessionRemove { client_id } => {
                let s = session_key(client_id.as_bytes());
                self.marks.remove(&s);
                // Whatever was written for it must be stored before the purge,
                // which JetStream handles apart from the writes.
                settle(acks, patience).await?;
                purge_session(&self.kv, &s).await
            }
            StoreOp::MessageEnqueue {
                client_id,
                seq,
                message,
            } => {
                let s = session_key(client_id.as_bytes());
                let value = records::encode_new_entry(message)
                    .map_err(|e| error("encoding a queued message", e.0))?;
                let subject = self.subject(&s, 'm', seq);
                self.marks.entry(s).or_default().insert(*seq, 0);
                self.put(subject, value.into(), acks).await
            }
            StoreOp::MessageSent {
                client_id,
                seq,
                packet_id,
            } => {
                let s = session_key(client_id.as_bytes());
                let subject = self.subject(&s, 'p', seq);
                self.mark(s, *seq, SENT);
                let value = Bytes::copy_from_slice(&packet_id.to_be_bytes());
                self.put(subject, value, acks).await
            }
            StoreOp::MessageReleased { client_id, seq } => {
                let s = session_key(client_id.as_bytes());
                let subject = self.subject(&s, 'x', seq);
                self.mark(s, *seq, RELEASED);
                self.put(subject, Bytes::new(), acks).await
            }
            StoreOp::MessageRemove { client_id, seq } => {
                let s = session_key(client_id.as_bytes());
                let marks = self
                    .marks
                    .get_mut(&s)
                    .and_then(|m| m.remove(seq))
                    .unwrap_or(if again { SENT | RELEASED } else { 0 });
                self.purge(self.subject(&s, 'm', seq), acks).await?;
                if marks & SENT != 0 {
                    self.purge(self.subject(&s, 'p', seq), acks).await?;
                }
                if marks & RELEASED != 0 {
                    self.purge(self.subject(&s, 'x', seq), acks).await?;
                }
                Ok(())
            }
            StoreOp::Qos2Received {
                client_id,
                packet_id,
            } => {
                let s = session_key(client_id.as_bytes());
                self.put(self.subject(&s, 'i', packet_id), Bytes::new(), acks)
                    .await
            }
            StoreOp::Qos2Released {
                client_id,
                packet_id,
            } => {
                let s = session_key(client_id.as_bytes());
                self.purge(self.subject(&s, 'i', packet_id), acks).await
            }
            // The retained bucket is the cluster's retained store.
            StoreOp::RetainSet(_) | StoreOp::RetainClear { .. } => Ok(()),
        }
    }
}

/// The most JetStream publishes one writer leaves unanswered before it
/// awaits them: async-nats lets a context have 5,000 (`max_ack_inflight`),
/// and a publish beyond them waits for a permit for ever, so a batch that
/// publishes everything before awaiting anything must stop below it.
pub(crate) const MAX_ACKS_WAITING: usize = 2_048;

/// Waits for every acknowledgement in `acks` (at most `patience`).
async fn settle(acks: &mut Vec<PublishAckFuture>, patience: Duration) -> Result<(), StateError> {
    let all =
        futures_util::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future));
    let results = tokio::time::timeout(patience, all)
        .await
        .map_err(|_| StateError("JetStream did not store the session's changes in time".into()))?;
    for r in results {
        r.map_err(|e| error("JetStream refused a session's change", e))?;
    }
    Ok(())
}

/// Removes everything the bucket holds of session `s`.
pub(crate) async fn purge_session(kv: &jetstream::kv::Store, s: &str) -> Result<(), StateError> {
    kv.stream
        .purge()
        .filter(format!("{}{s}.>", kv.prefix))
        .await
        .map_err(|e| error("purging a session in JetStream", e))?;
    Ok(())
}

/// What the bucket holds of the session of `client_id`, as the records that
/// restore it (its record first, then its messages in order, what went out of
/// them, and its received QoS 2 packet ids), and which per-message keys exist.
/// Nothing when there is no session, or when it expired while nobody held it
/// (`now_ms`: the wall clock), which is then purged.
pub(crate) async fn read_session(
    kv: &jetstream::kv::Store,
    client_id: &MqttString,
    now_ms: u64,
    patience: Duration,
) -> Result<(Vec<StoreOp>, Marks), StateError> {
    let s = session_key(client_id.as_bytes());
    let bad = |key: &str, e: &dyn core::fmt::Display| {
        StateError(format!(
            "the session of {:?} in JetStream bucket {} is damaged: key {key}: {e}",
            client_id.as_str(),
            kv.name
        ))
    };
    let record = kv
        .entry(format!("{s}.r"))
        .await
        .map_err(|e| error("reading a session from JetStream", e))?;
    let Some(record) = record.filter(|e| e.operation == jetstream::kv::Operation::Put) else {
        return Ok((Vec::new(), Marks::new()));
    };
    let rec = records::decode_session(client_id.clone(), &record.value)
        .map_err(|e| bad(&record.key, &e))?;
    if rec.expires_at_unix_ms.is_some_and(|at| at <= now_ms) {
        purge_session(kv, &s).await?;
        return Ok((Vec::new(), Marks::new()));
    }
    // Every key of the session, the record's included, so the watch has at
    // least one entry and the last says none is left (`delta` 0).
    let read = async {
        let mut watch = kv
            .watch_with_history(format!("{s}.>"))
            .await
            .map_err(|e| error("reading a session from JetStream", e))?;
        let mut entries = Vec::new();
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| error("reading a session from JetStream", e))?;
            let last = entry.delta == 0;
            entries.push(entry);
            if last {
                break;
            }
        }
        Ok::<_, StateError>(entries)
    };
    let entries = tokio::time::timeout(patience, read)
        .await
        .map_err(|_| StateError("JetStream did not hand the session over in time".into()))??;
    let mut messages: Vec<(u64, StoredMessage)> = Vec::new();
    let mut sent: Vec<(u64, u16)> = Vec::new();
    let mut released: Vec<u64> = Vec::new();
    let mut incoming: Vec<u16> = Vec::new();
    for entry in entries {
        if entry.operation != jetstream::kv::Operation::Put {
            continue;
        }
        let Some(rest) = entry.key.strip_prefix(&s).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let (kind, n) = rest.split_once('.').unwrap_or((rest, ""));
        let number = || n.parse::<u64>().map_err(|e| bad(&entry.key, &e));
        match kind {
            "r" => {}
            "m" => {
                let e = records::decode_entry(&entry.value).map_err(|e| bad(&entry.key, &e))?;
                messages.push((number()?, e.message));
            }
            "p" => {
                let id: [u8; 2] = entry.value[..]
                    .try_into()
                    .map_err(|_| bad(&entry.key, &"a packet id is 2 bytes"))?;
                sent.push((number()?, u16::from_be_bytes(id)));
            }
            "x" => released.push(number()?),
            "i" => {
                let id = u16::try_from(number()?).map_err(|e| bad(&entry.key, &e))?;
                incoming.push(id);
            }
            other => return Err(bad(&entry.key, &format!("unknown kind {other:?}"))),
        }
    }
    messages.sort_by_key(|(seq, _)| *seq);
    sent.sort_by_key(|(seq, _)| *seq);
    released.sort_unstable();
    let mut marks = Marks::new();
    let mut ops = vec![StoreOp::SessionUpsert(rec)];
    for (seq, message) in messages {
        marks.insert(seq, 0);
        ops.push(StoreOp::MessageEnqueue {
            client_id: client_id.clone(),
            seq,
            message,
        });
    }
    for (seq, packet_id) in sent {
        *marks.entry(seq).or_default() |= SENT;
        ops.push(StoreOp::MessageSent {
            client_id: client_id.clone(),
            seq,
            packet_id,
        });
    }
    for seq in released {
        *marks.entry(seq).or_default() |= RELEASED;
        ops.push(StoreOp::MessageReleased {
            client_id: client_id.clone(),
            seq,
        });
    }
    for packet_id in incoming {
        ops.push(StoreOp::Qos2Received {
            client_id: client_id.clone(),
            packet_id,
        });
    }
    Ok((ops, marks))
}
