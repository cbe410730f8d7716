//! `brokk-store`: the broker's durable state in one embedded [redb] file.
//!
//! The broker core (`broker-state`) emits every durable change as a
//! [`broker_state::StoreOp`]. [`open`] opens (or creates) `<dir>/brokk.redb`, reads
//! it back as the ops that rebuild the same state (in exactly the order of
//! [`broker_state::MemoryStore::replay`]), and starts a writer thread. The adapter
//! then [`DurableStore::submit`]s batches of ops with a ticket and collects
//! [`Completion`]s with [`DurableStore::poll_completions`] (from any async runtime,
//! or none: it only stores a [`std::task::Waker`]).
//!
//! The writer thread ("brokk-store") commits with *group commit*: it blocks for the
//! first batch, takes every batch already waiting (bounded), applies them all in one
//! redb write transaction, commits once, and reports each ticket. See the crate's
//! README for the file layout, fsync policies, recovery and measured numbers.
//!
//! [redb]: https://docs.rs/redb

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod codec;
mod error;
mod recover;
mod tables;
mod writer;

use std::fs::{self, File};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker_state::StoreOp;
use redb::{Builder, CompactionMode, Database, ReadableDatabase};

pub use codec::FORMAT_VERSION;

/// The store file's value encodings (sessions, queue entries), for other
/// keepers of the same state: a cluster keeps its sessions in JetStream in
/// this form, so that both read one format.
pub mod records {
    pub use crate::codec::{
        decode_entry, decode_session, encode_new_entry, encode_session, BadRecord, Entry,
        Unencodable,
    };
}
pub use error::{StoreError, StoreErrorKind};
pub use recover::{RecoveryReport, TableSalvage};

use writer::{lock, Batch, Shared, Writer};

/// The database file's name inside the store directory.
pub const FILE_NAME: &str = "brokk.redb";
/// The lock file's name inside the store directory (held while a store is open).
pub const LOCK_FILE_NAME: &str = "brokk.lock";

/// redb's page cache. redb's default is 1 GiB; the broker keeps its state in
/// memory anyway, so the cache only serves the writer's lookups.
const CACHE_BYTES: usize = 64 << 20;

/// Compact at open when at least this much of the file is free...
const COMPACT_MIN_FREE: u64 = 16 << 20;
/// ...and the free part is more than 1/COMPACT_FREE_DIVISOR of the file.
const COMPACT_FREE_DIVISOR: u64 = 4;

/// When commits are made durable (fsynced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit is durable before its tickets complete (redb
    /// `Durability::Immediate`): a completed ticket survives a crash or power loss.
    Always,
    /// Commits are not fsynced (redb `Durability::None`) except one at most every
    /// `n` ms: a commit is durable if the last durable one is `n` ms old, and after
    /// non-durable commits the writer makes an empty durable commit `n` ms after the
    /// last durable one. A crash loses at most about the last `n` ms.
    EveryMs(u64),
    /// No fsync until [`DurableStore::flush_and_close`]. A crash of the process (not
    /// the machine) still loses the non-durable commits: redb keeps them in memory.
    Never,
}

/// Where the store lives and how it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Directory of the store; created if missing. The file is `<dir>/brokk.redb`.
    pub dir: PathBuf,
    /// When commits are fsynced.
    pub fsync: FsyncPolicy,
    /// If the file is damaged, move it aside and salvage what decodes, instead of
    /// refusing to open.
    pub recover: bool,
}

/// An open store, the ops that rebuild its state, and what recovery did (if it ran).
#[derive(Debug)]
pub struct Opened {
    /// The store, ready for [`DurableStore::submit`].
    pub store: DurableStore,
    /// Feed these to the broker's restore, in order.
    pub replay: Vec<StoreOp>,
    /// Set when the file was damaged and `recover` was on.
    pub recovery: Option<RecoveryReport>,
}

/// The outcome of one submitted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The ticket given to [`DurableStore::submit`].
    pub ticket: u64,
    /// `Ok` once the batch is committed (and durable under
    /// [`FsyncPolicy::Always`]); `Err` names the file and the problem.
    pub result: Result<(), String>,
}

/// Counters of the writer thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Write transactions committed with batches (one per group).
    pub commits: u64,
    /// Batches completed `Ok`.
    pub batches: u64,
    /// Ops applied in committed transactions.
    pub ops_applied: u64,
    /// Durable commits (each one fsync of the file), including the empty ones that
    /// make earlier non-durable commits durable.
    pub fsyncs: u64,
    /// Bytes of keys and values written.
    pub bytes_written: u64,
    /// Time spent applying and committing groups, summed.
    pub commit_time_total: Duration,
    /// The longest one.
    pub commit_time_max: Duration,
    /// Batches completed with `Err`.
    pub failed_batches: u64,
    /// Commits that failed (or were refused by [`DurableStore::set_failing`]).
    pub failed_commits: u64,
    /// Ops not written because they cancelled out within their group (a message
    /// queued and acknowledged while the group waited for the disk).
    pub ops_elided: u64,
    /// `MessageSent` / `MessageReleased` ops written as part of the enqueue of
    /// their message in the same group instead of as a rewrite of its entry.
    pub ops_folded: u64,
}

/// The durable store: a handle to the writer thread.
///
/// Dropping it without [`DurableStore::flush_and_close`] still writes out what was
/// submitted and waits for the writer, but cannot report an error.
pub struct DurableStore {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    path: PathBuf,
    /// Held until the store is closed: the directory's lock.
    _lock: File,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DurableStore {
    /// Non-blocking: hands a batch of ops (applied in order, after all earlier
    /// batches, atomically with respect to a crash) to the writer thread. Its
    /// [`Completion`] carries `ticket`.
    pub fn submit(&self, ops: Vec<StoreOp>, ticket: u64) {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            // The writer is gone (it panicked outside the guarded commit path).
            self.shared.complete([Completion {
                ticket,
                result: Err(format!(
                    "{}: the store's writer thread has stopped",
                    self.path.display()
                )),
            }]);
            return;
        }
        let size = writer::estimate(&ops);
        lock(&self.shared.inbox)
            .batches
            .push_back(Batch { ops, ticket, size });
        self.shared.inbox_cv.notify_one();
    }

    /// Completed batches in submission order, appended to `out`: `Ready` if there
    /// were any. When there are none, registers `cx`'s waker (woken by the writer
    /// thread when some complete) and returns `Pending`.
    pub fn poll_completions(&self, cx: &mut Context<'_>, out: &mut Vec<Completion>) -> Poll<()> {
        let mut outbox = lock(&self.shared.outbox);
        if outbox.done.is_empty() {
            match &mut outbox.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        } else {
            out.extend(outbox.done.drain(..));
            Poll::Ready(())
        }
    }

    /// Blocking variant of [`DurableStore::poll_completions`] for code without a
    /// runtime: waits up to `timeout` for completions; returns how many it appended.
    pub fn wait_completions(&self, out: &mut Vec<Completion>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut outbox = lock(&self.shared.outbox);
        while outbox.done.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            outbox = self
                .shared
                .outbox_cv
                .wait_timeout(outbox, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let n = outbox.done.len();
        out.extend(outbox.done.drain(..));
        n
    }

    /// The writer's counters.
    pub fn stats(&self) -> StoreStats {
        self.shared.counters.snapshot()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Graceful shutdown: waits until every submitted batch is committed, makes the
    /// last commits durable (fsync) and closes the file. Completions of the batches
    /// still pending are produced but nobody polls them any more.
    pub fn flush_and_close(mut self) -> Result<(), StoreError> {
        self.close_inner()
    }

    /// Test hook: from now on every commit fails (its tickets complete with `Err`),
    /// until called with `false`.
    pub fn set_failing(&self, fail: bool) {
        self.shared.failing.store(fail, Ordering::Relaxed);
    }

    fn close_inner(&mut self) -> Result<(), StoreError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        lock(&self.shared.inbox).closing = true;
        self.shared.inbox_cv.notify_all();
        match thread.join() {
            Ok(result) => result,
            Err(panic) => Err(StoreError::new(
                &self.path,
                StoreErrorKind::Writer,
                format!(
                    "the writer thread panicked: {}",
                    writer::panic_message(&*panic)
                ),
            )),
        }
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        let _ = self.close_inner();
    }
}

/// Opens (or creates) the store in `opts.dir`, reads it back, and starts the
/// writer thread.
///
/// Errors name the file: another process holds it ([`StoreErrorKind::InUse`]), it
/// is damaged and `recover` is off ([`StoreErrorKind::Damaged`]), a newer brokk
/// wrote it ([`StoreErrorKind::UnknownVersion`]), or the system refused.
pub fn open(opts: &StoreOptions) -> Result<Opened, StoreError> {
    let dir = &opts.dir;
    fs::create_dir_all(dir)
        .map_err(|e| StoreError::io(dir, "cannot create the store directory", e))?;
    let path = dir.join(FILE_NAME);
    let lock_file = lock_dir(dir, &path)?;
    let (db, replay, recovery) = match load(&path) {
        Ok((db, replay)) => (db, replay, None),
        Err(e) if e.is_damage() && opts.recover => {
            let report = recover::salvage(dir, &path, &e)?;
            let (db, replay) = load(&path).map_err(|e2| {
                StoreError::new(
                    &path,
                    StoreErrorKind::Recovery,
                    format!("the salvaged file does not open: {e2}"),
                )
            })?;
            (db, replay, Some(report))
        }
        Err(e) => return Err(e),
    };
    let shared = Arc::new(Shared::default());
    let w = Writer {
        db: Some(db),
        path: path.clone(),
        policy: opts.fsync,
        shared: shared.clone(),
        reopen,
        last_durable: Instant::now(),
        dirty: false,
        broken: false,
    };
    let thread = std::thread::Builder::new()
        .name("brokk-store".into())
        .spawn(move || w.run())
        .map_err(|e| StoreError::io(&path, "cannot start the writer thread", e))?;
    Ok(Opened {
        store: DurableStore {
            shared,
            thread: Some(thread),
            path,
            _lock: lock_file,
        },
        replay,
        recovery,
    })
}

/// Takes `<dir>/brokk.lock` (an advisory whole-file lock, released when the
/// process dies), so that a second brokk on the same directory is refused before it
/// touches the database (redb's own lock on the file would refuse it too, but only
/// after recovery might have moved the file).
fn lock_dir(dir: &Path, path: &Path) -> Result<File, StoreError> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::io(&lock_path, "cannot create the lock file", e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::new(
            path,
            StoreErrorKind::InUse,
            format!(
                "is in use by another brokk process (it holds {})",
                lock_path.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => {
            Err(StoreError::io(&lock_path, "cannot lock the store", e))
        }
    }
}

pub(crate) fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_cache_size(CACHE_BYTES);
    // Verify every page's checksum at open: a file changed behind redb's back
    // (torn write, bit rot, truncation) is reported as corrupted instead of read.
    b.set_check_integrity_on_open(true);
    b
}

/// The writer's way back after a failed commit (redb refuses writes until the
/// file is reopened, which repairs it).
fn reopen(path: &Path) -> Result<Database, StoreError> {
    catch_unwind(AssertUnwindSafe(|| {
        builder()
            .open(path)
            .map_err(|e| error::from_redb(path, "cannot reopen", e.into()))
    }))
    .unwrap_or_else(|p| {
        Err(StoreError::damaged(
            path,
            format!("redb panicked reopening it: {}", writer::panic_message(&*p)),
        ))
    })
}

/// Opens the file, checks its format, compacts it if free space dominates, and
/// reads the replay. A panic inside redb (it may panic on some damaged files) is
/// reported as damage.
fn load(path: &Path) -> Result<(Database, Vec<StoreOp>), StoreError> {
    catch_unwind(AssertUnwindSafe(|| load_inner(path))).unwrap_or_else(|p| {
        Err(StoreError::damaged(
            path,
            format!("redb panicked reading it: {}", writer::panic_message(&*p)),
        ))
    })
}

fn load_inner(path: &Path) -> Result<(Database, Vec<StoreOp>), StoreError> {
    let r = |what: &'static str| move |e: redb::Error| error::from_redb(path, what, e);
    let mut db = builder()
        .create(path)
        .map_err(|e| r("cannot open")(e.into()))?;
    init_tables(&db).map_err(|e| match e {
        InitError::Redb(e) => r("cannot set up the tables")(e),
        InitError::Store(e) => e.at(path),
    })?;
    maybe_compact(&mut db, path)?;
    let rtx = db
        .begin_read()
        .map_err(|e| r("cannot begin reading")(e.into()))?;
    let replay = tables::replay(&rtx).map_err(|e| match e {
        tables::ReadFailure::Redb(what, e) => r(what)(e),
        tables::ReadFailure::Bad(bad) => StoreError::damaged(path, bad.to_string()),
    })?;
    drop(rtx);
    Ok((db, replay))
}

pub(crate) enum InitError {
    Redb(redb::Error),
    Store(PendingError),
}

/// An error whose path is filled in by the caller.
pub(crate) struct PendingError(StoreErrorKind, String);

impl PendingError {
    fn at(self, path: &Path) -> StoreError {
        StoreError::new(path, self.0, self.1)
    }
}

impl<E: Into<redb::Error>> From<E> for InitError {
    fn from(e: E) -> Self {
        InitError::Redb(e.into())
    }
}

/// Checks the format version (writing it into a new file) and creates the tables.
pub(crate) fn init_tables(db: &Database) -> Result<(), InitError> {
    use redb::{ReadableTable, TableHandle};
    let txn = db.begin_write()?;
    let existing: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    {
        let mut meta = txn.open_table(tables::META)?;
        let version = meta.get(tables::FORMAT_KEY)?.map(|v| v.value());
        match version {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(InitError::Store(PendingError(
                    StoreErrorKind::UnknownVersion,
                    format!(
                        "unknown store format version {v} (this brokk reads version \
                         {FORMAT_VERSION}): it was written by a newer brokk; refusing to open it"
                    ),
                )))
            }
            None if !existing.is_empty() => {
                return Err(InitError::Store(PendingError(
                    StoreErrorKind::Damaged,
                    format!(
                        "has tables ({}) but no store format version: not a brokk store",
                        existing.join(", ")
                    ),
                )))
            }
            None => {
                meta.insert(tables::FORMAT_KEY, u64::from(FORMAT_VERSION))?;
            }
        }
    }
    txn.open_table(tables::SESSIONS)?;
    txn.open_table(tables::MESSAGES)?;
    txn.open_table(tables::QOS2_IN)?;
    txn.open_table(tables::RETAINED)?;
    txn.commit()?;
    Ok(())
}

/// Compacts when a good part of the file is free pages. redb reuses freed pages,
/// so under steady churn the file stays a small multiple of the live data (see
/// the churn test); what this reclaims is the space left after the live data
/// shrank, or after bulk loads (which leave half-filled pages behind). Measured: a
/// 269 MiB file holding 173 MiB of pages compacts in 0.3 s.
fn maybe_compact(db: &mut Database, path: &Path) -> Result<(), StoreError> {
    let file_len = fs::metadata(path)
        .map_err(|e| StoreError::io(path, "cannot read the file's size", e))?
        .len();
    if file_len < COMPACT_MIN_FREE {
        return Ok(());
    }
    let r = |what: &'static str| move |e: redb::Error| error::from_redb(path, what, e);
    let txn = db
        .begin_write()
        .map_err(|e| r("cannot measure the file")(e.into()))?;
    let stats = txn
        .stats()
        .map_err(|e| r("cannot measure the file")(e.into()))?;
    txn.abort()
        .map_err(|e| r("cannot measure the file")(e.into()))?;
    let free = file_len.saturating_sub(stats.allocated_pages() * stats.page_size() as u64);
    if free >= COMPACT_MIN_FREE && free > file_len / COMPACT_FREE_DIVISOR {
        db.compact(CompactionMode::Balanced)
            .map_err(|e| r("cannot compact the file")(e.into()))?;
    }
    Ok(())
}
