//! The writer thread: group commit of submitted batches into redb.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use broker_state::StoreOp;
use redb::{Database, Durability};

use crate::tables::{prepare, Prepared, WriteTables};
use crate::{Completion, FsyncPolicy, StoreError, StoreErrorKind, StoreStats};

/// A group takes at most this many ops...
pub(crate) const GROUP_MAX_OPS: usize = 100_000;
/// ...and at most about this many bytes of message data (always at least one batch).
pub(crate) const GROUP_MAX_BYTES: usize = 64 << 20;

pub(crate) struct Batch {
    pub ops: Vec<StoreOp>,
    pub ticket: u64,
    /// Estimated bytes, for the group bound.
    pub size: usize,
}

/// What becomes of each op of a group (flattened, in order).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Fate {
    /// Written as it is.
    Keep,
    /// Undone within the group: a message queued and removed again in the same
    /// group (delivered and acknowledged while the group waited for the disk),
    /// with its flow state between. The final state is the same without them;
    /// only the remove, a lookup that finds nothing, reaches the tree: a
    /// subscriber that keeps up costs no inserts.
    Elided,
    /// A `MessageSent` or `MessageReleased` of a message queued earlier in the
    /// same group and not removed in it: applied to that enqueue's encoded entry
    /// before it is inserted, instead of a read and a rewrite of the entry in the
    /// tree (a message that goes straight into flight costs one insert).
    FoldInto(usize),
}

/// The fate of every op of `group`.
fn fates(group: &[Batch]) -> Vec<Fate> {
    use std::collections::HashMap;
    let ops: Vec<&StoreOp> = group.iter().flat_map(|b| b.ops.iter()).collect();
    let mut fates = vec![Fate::Keep; ops.len()];
    // (client id, seq) queued in this group -> the indices of its ops so far.
    let mut open: HashMap<(&[u8], u64), Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            // Queued again under the same seq (the broker does not, but the store
            // takes any history): the later one replaces it, and a remove ends both.
            StoreOp::MessageEnqueue { client_id, seq, .. } => {
                open.entry((client_id.as_bytes(), *seq))
                    .or_default()
                    .push(i);
            }
            StoreOp::MessageSent { client_id, seq, .. }
            | StoreOp::MessageReleased { client_id, seq } => {
                if let Some(v) = open.get_mut(&(client_id.as_bytes(), *seq)) {
                    v.push(i);
                }
            }
            // The remove itself is kept: a message under the same key may have
            // been stored before this group (not by the broker, whose seqs are
            // never reused within a session, but the store takes any history).
            StoreOp::MessageRemove { client_id, seq } => {
                if let Some(v) = open.remove(&(client_id.as_bytes(), *seq)) {
                    for j in v {
                        fates[j] = Fate::Elided;
                    }
                }
            }
            // A session removed (and perhaps created again, its seqs starting
            // over): what it queued before cannot pair with what comes after.
            StoreOp::SessionRemove { client_id } => {
                let cid = client_id.as_bytes();
                open.retain(|(c, _), v| {
                    if *c == cid {
                        fold(&ops, v, &mut fates);
                    }
                    *c != cid
                });
            }
            StoreOp::SessionUpsert(_)
            | StoreOp::RetainSet(_)
            | StoreOp::RetainClear { .. }
            | StoreOp::Qos2Received { .. }
            | StoreOp::Qos2Released { .. } => {}
        }
    }
    for v in open.values() {
        fold(&ops, v, &mut fates);
    }
    fates
}

/// The flow state of a message still queued at the end of its chain `v` (ops of
/// one key, in order) folds into the enqueue before it.
fn fold(ops: &[&StoreOp], v: &[usize], fates: &mut [Fate]) {
    let mut target = None;
    for &j in v {
        match ops[j] {
            StoreOp::MessageEnqueue { .. } => target = Some(j),
            _ => {
                if let Some(t) = target {
                    fates[j] = Fate::FoldInto(t);
                }
            }
        }
    }
}

/// Rough bytes a batch writes: payloads and topics plus a fixed cost per op.
pub(crate) fn estimate(ops: &[StoreOp]) -> usize {
    ops.iter()
        .map(|op| {
            64 + match op {
                StoreOp::MessageEnqueue { message, .. } | StoreOp::RetainSet(message) => {
                    message.publish.payload.len() + message.publish.topic.len()
                }
                StoreOp::SessionUpsert(rec) => {
                    rec.subscriptions.len() * 32
                        + rec
                            .will
                            .as_ref()
                            .map_or(0, |w| w.message.publish.payload.len())
                }
                _ => 0,
            }
        })
        .sum()
}

#[derive(Default)]
pub(crate) struct Inbox {
    pub batches: VecDeque<Batch>,
    pub closing: bool,
}

#[derive(Default)]
pub(crate) struct Outbox {
    pub done: VecDeque<Completion>,
    pub waker: Option<Waker>,
}

#[derive(Default)]
pub(crate) struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    ops: AtomicU64,
    fsyncs: AtomicU64,
    bytes: AtomicU64,
    commit_ns_total: AtomicU64,
    commit_ns_max: AtomicU64,
    failed_batches: AtomicU64,
    failed_commits: AtomicU64,
    elided: AtomicU64,
    folded: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> StoreStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            commits: g(&self.commits),
            batches: g(&self.batches),
            ops_applied: g(&self.ops),
            fsyncs: g(&self.fsyncs),
            bytes_written: g(&self.bytes),
            commit_time_total: Duration::from_nanos(g(&self.commit_ns_total)),
            commit_time_max: Duration::from_nanos(g(&self.commit_ns_max)),
            failed_batches: g(&self.failed_batches),
            failed_commits: g(&self.failed_commits),
            ops_elided: g(&self.elided),
            ops_folded: g(&self.folded),
        }
    }
}

/// What the broker's side and the writer thread share.
#[derive(Default)]
pub(crate) struct Shared {
    pub inbox: Mutex<Inbox>,
    pub inbox_cv: Condvar,
    pub outbox: Mutex<Outbox>,
    pub outbox_cv: Condvar,
    pub failing: AtomicBool,
    pub counters: Counters,
}

/// Locks, shrugging off poison: the data behind these locks stays consistent
/// whatever panicked (queues of owned values).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn complete(&self, done: impl IntoIterator<Item = Completion>) {
        let waker = {
            let mut out = lock(&self.outbox);
            out.done.extend(done);
            out.waker.take()
        };
        self.outbox_cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

enum Next {
    Work(Vec<Batch>),
    FlushDue,
    Close,
}

pub(crate) struct Writer {
    /// `None` after a failed reopen: every group then tries to reopen first.
    pub db: Option<Database>,
    pub path: PathBuf,
    pub policy: FsyncPolicy,
    pub shared: Arc<Shared>,
    pub reopen: fn(&std::path::Path) -> Result<Database, StoreError>,
    /// Time of the last durable commit.
    pub last_durable: Instant,
    /// Commits since the last durable one (their data is not yet fsynced).
    pub dirty: bool,
    /// A commit failed: redb refuses further writes until the file is reopened.
    pub broken: bool,
}

impl Writer {
    pub fn run(mut self) -> Result<(), StoreError> {
        loop {
            match self.next() {
                Next::Work(group) => self.process(group),
                Next::FlushDue => {
                    if self.durable_flush().is_err() {
                        // Try again one period later rather than spinning.
                        self.last_durable = Instant::now();
                    }
                }
                Next::Close => break,
            }
        }
        let flushed = if self.dirty {
            self.durable_flush()
                .map_err(|e| StoreError::new(&self.path, StoreErrorKind::Writer, e))
        } else {
            Ok(())
        };
        let closed = match self.db.take() {
            Some(db) => db.close().map_err(|e| {
                StoreError::new(
                    &self.path,
                    StoreErrorKind::Io,
                    format!("closing the database: {e}"),
                )
            }),
            None => Err(StoreError::new(
                &self.path,
                StoreErrorKind::Writer,
                "the database was lost after a failed commit and could not be reopened",
            )),
        };
        flushed.and(closed)
    }

    fn flush_deadline(&self) -> Option<Instant> {
        match self.policy {
            FsyncPolicy::EveryMs(ms) if self.dirty => {
                Some(self.last_durable + Duration::from_millis(ms))
            }
            _ => None,
        }
    }

    /// Waits for work: the batches waiting (bounded), a due durable flush, or close.
    fn next(&self) -> Next {
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if !inbox.batches.is_empty() {
                let mut group = Vec::new();
                let (mut ops, mut bytes) = (0usize, 0usize);
                while let Some(b) = inbox.batches.front() {
                    if !group.is_empty()
                        && (ops + b.ops.len() > GROUP_MAX_OPS || bytes + b.size > GROUP_MAX_BYTES)
                    {
                        break;
                    }
                    ops += b.ops.len();
                    bytes += b.size;
                    if let Some(b) = inbox.batches.pop_front() {
                        group.push(b);
                    }
                }
                return Next::Work(group);
            }
            if inbox.closing {
                return Next::Close;
            }
            inbox = match self.flush_deadline() {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Next::FlushDue;
                    }
                    self.shared
                        .inbox_cv
                        .wait_timeout(inbox, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self
                    .shared
                    .inbox_cv
                    .wait(inbox)
                    .unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn durability(&self) -> Durability {
        match self.policy {
            FsyncPolicy::Always => Durability::Immediate,
            FsyncPolicy::Never => Durability::None,
            FsyncPolicy::EveryMs(ms) => {
                if self.last_durable.elapsed() >= Duration::from_millis(ms) {
                    Durability::Immediate
                } else {
                    Durability::None
                }
            }
        }
    }

    /// The database, reopened first if a failed commit left it refusing writes.
    fn db(&mut self) -> Result<&Database, String> {
        if self.broken || self.db.is_none() {
            if let Some(db) = self.db.take() {
                // The close may fail too (the same I/O problem); the reopen repairs.
                let _ = db.close();
            }
            self.broken = false;
            match (self.reopen)(&self.path) {
                Ok(db) => {
                    self.db = Some(db);
                    // What the failed commit left is either durable or rolled back.
                    self.dirty = false;
                }
                Err(e) => return Err(format!("reopening after a failed commit: {e}")),
            }
        }
        self.db
            .as_ref()
            .ok_or_else(|| "the database is not open".to_string())
    }

    fn process(&mut self, group: Vec<Batch>) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        let started = Instant::now();
        if self.shared.failing.load(Ordering::Relaxed) {
            let msg = format!(
                "{}: commit refused: the store is set to fail (test hook)",
                self.path.display()
            );
            c.failed_batches
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            c.failed_commits.fetch_add(1, Ordering::Relaxed);
            self.shared.complete(group.iter().map(|b| Completion {
                ticket: b.ticket,
                result: Err(msg.clone()),
            }));
            return;
        }
        let path = self.path.display().to_string();
        let fates = fates(&group);
        c.elided.fetch_add(
            fates.iter().filter(|f| **f == Fate::Elided).count() as u64,
            Ordering::Relaxed,
        );
        // Each batch prepared whole (or failed alone), its ops with their index
        // in the group.
        let mut start = 0;
        let mut prepared: Vec<Result<Vec<(usize, Prepared<'_>)>, String>> = group
            .iter()
            .map(|b| {
                let first = start;
                start += b.ops.len();
                b.ops
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| fates[first + k] != Fate::Elided)
                    .map(|(k, op)| prepare(op).map(|p| (first + k, p)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{path}: batch {} cannot be stored: {}", b.ticket, e.0))
            })
            .collect();
        c.folded
            .fetch_add(fold_prepared(&mut prepared, &fates), Ordering::Relaxed);
        let durability = self.durability();
        let outcome = match self.db() {
            Err(e) => Err(format!("{path}: {e}")),
            Ok(db) => match catch_unwind(AssertUnwindSafe(|| commit(db, durability, &prepared))) {
                Ok(Ok(counts)) => Ok(counts),
                Ok(Err(e)) => Err(format!("{path}: commit failed: {e}")),
                Err(panic) => Err(format!(
                    "{path}: commit failed: the writer panicked: {}",
                    panic_message(&panic)
                )),
            },
        };
        let elapsed = started.elapsed();
        match &outcome {
            Ok((ops, bytes)) => {
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.ops.fetch_add(*ops, Ordering::Relaxed);
                c.bytes.fetch_add(*bytes, Ordering::Relaxed);
                let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
                c.commit_ns_total.fetch_add(ns, Ordering::Relaxed);
                c.commit_ns_max.fetch_max(ns, Ordering::Relaxed);
                if matches!(durability, Durability::Immediate) {
                    c.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.last_durable = Instant::now();
                    self.dirty = false;
                } else {
                    self.dirty = true;
                }
            }
            Err(_) => {
                c.failed_commits.fetch_add(1, Ordering::Relaxed);
                self.broken = true;
            }
        }
        let done: Vec<Completion> = group
            .iter()
            .zip(&prepared)
            .map(|(b, p)| {
                let result = match (p, &outcome) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(_), Ok(_)) => Ok(()),
                    (Ok(_), Err(e)) => Err(e.clone()),
                };
                if result.is_ok() {
                    c.batches.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.failed_batches.fetch_add(1, Ordering::Relaxed);
                }
                Completion {
                    ticket: b.ticket,
                    result,
                }
            })
            .collect();
        drop(prepared);
        self.shared.complete(done);
    }

    /// An empty durable commit: makes the non-durable commits before it durable.
    fn durable_flush(&mut self) -> Result<(), String> {
        let path = self.path.display().to_string();
        let result = self.db().and_then(|db| {
            catch_unwind(AssertUnwindSafe(|| commit(db, Durability::Immediate, &[])))
                .map_err(|p| format!("the writer panicked: {}", panic_message(&p)))?
                .map_err(|e| format!("{path}: durable commit failed: {e}"))
        });
        match result {
            Ok(_) => {
                self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.last_durable = Instant::now();
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.shared
                    .counters
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                self.broken = true;
                Err(e)
            }
        }
    }
}

/// Folds the ops whose fate is `FoldInto` into their enqueue, where both their
/// batches were prepared (an op of a batch that failed is not applied at all);
/// returns how many were folded.
fn fold_prepared(
    prepared: &mut [Result<Vec<(usize, Prepared<'_>)>, String>],
    fates: &[Fate],
) -> u64 {
    let mut folded_ops = 0;
    // Where each prepared op is: (batch, position), by index in the group.
    let mut at = vec![None; fates.len()];
    for (b, batch) in prepared.iter().enumerate() {
        for (i, (k, _)) in batch.iter().flatten().enumerate() {
            at[*k] = Some((b, i));
        }
    }
    for (k, fate) in fates.iter().enumerate() {
        let Fate::FoldInto(t) = *fate else { continue };
        let (Some((b, i)), Some((bt, it))) = (at[k], at[t]) else {
            continue;
        };
        // Two distinct ops (t < k), perhaps of one batch: take the later one out
        // while it is folded in.
        let Some(Ok(batch)) = prepared.get_mut(b) else {
            continue;
        };
        let mut op = core::mem::replace(&mut batch[i].1, Prepared::Folded);
        let folded = match prepared.get_mut(bt) {
            Some(Ok(target)) => op.fold_into(&mut target[it].1),
            _ => false,
        };
        if !folded {
            if let Some(Ok(batch)) = prepared.get_mut(b) {
                batch[i].1 = op;
            }
        } else {
            folded_ops += 1;
        }
    }
    folded_ops
}

/// One write transaction applying every prepared batch: (ops, bytes) written.
fn commit(
    db: &Database,
    durability: Durability,
    prepared: &[Result<Vec<(usize, Prepared<'_>)>, String>],
) -> Result<(u64, u64), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(durability).map_err(|e| e.to_string())?;
    let (mut ops, mut bytes) = (0u64, 0u64);
    {
        let mut tables = WriteTables::open(&txn).map_err(|e| e.to_string())?;
        for (_, op) in prepared.iter().flatten().flatten() {
            if matches!(op, Prepared::Folded) {
                continue;
            }
            bytes += tables.apply(op).map_err(|e| e.to_string())?;
            ops += 1;
        }
    }
    txn.commit().map_err(|e| e.to_string())?;
    Ok((ops, bytes))
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}
