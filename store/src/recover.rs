//! Recovery: move a damaged file aside and salvage every record that still decodes.
//!
//! The steps keep the original's bytes untouched and leave no window in which
//! `brokk.redb` is missing:
//! 1. copy the damaged file to `brokk.redb.salvage-src` (redb may repair that copy
//!    in place while opening it);
//! 2. build `brokk.redb.salvage-new` from every record of the copy that decodes;
//! 3. hard-link the damaged file to `brokk.redb.damaged-<unix seconds>` (a copy
//!    where links are not supported), then rename the new file over `brokk.redb`.
//!
//! A crash before step 3 leaves the damaged file in place (the next `--recover`
//! starts again); after it, the salvaged file is in place.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use std::cmp::Ordering;

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, Value,
};

use crate::error::{StoreError, StoreErrorKind};
use crate::tables;
use crate::{codec, writer::panic_message};

/// What one table kept and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSalvage {
    /// Table name (`sessions`, `messages`, `qos2_in`, `retained`).
    pub table: &'static str,
    /// Records copied into the new file.
    pub kept: u64,
    /// Records read but dropped: they did not decode, or belonged to a session that
    /// was dropped (or is missing).
    pub dropped: u64,
    /// `false` when reading the table stopped early (or could not start): records
    /// past that point are lost and not counted in `dropped`.
    pub complete: bool,
}

/// What recovery did. Its `Display` is a paragraph for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The damaged file, as it was, under its new name.
    pub moved_to: PathBuf,
    /// The problem that started recovery.
    pub cause: String,
    /// Whether the damaged file could be read at all; if not, the store starts empty.
    pub opened: bool,
    /// Per table: kept, dropped.
    pub tables: Vec<TableSalvage>,
    /// Everything else worth knowing (errors met while reading).
    pub notes: Vec<String>,
}

impl RecoveryReport {
    /// Records dropped, all tables.
    pub fn dropped(&self) -> u64 {
        self.tables.iter().map(|t| t.dropped).sum()
    }

    /// Records kept, all tables.
    pub fn kept(&self) -> u64 {
        self.tables.iter().map(|t| t.kept).sum()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the store was damaged ({}); moved it aside to {}",
            self.cause,
            self.moved_to.display()
        )?;
        if !self.opened {
            f.write_str("; it could not be read at all, starting with an empty store")?;
        } else {
            f.write_str("; salvaged")?;
            for (i, t) in self.tables.iter().enumerate() {
                write!(
                    f,
                    "{} {}: {} kept, {} dropped{}",
                    if i == 0 { "" } else { ";" },
                    t.table,
                    t.kept,
                    t.dropped,
                    if t.complete {
                        ""
                    } else {
                        " (reading stopped early: more lost)"
                    }
                )?;
            }
        }
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn remove_if_exists(p: &Path) -> std::io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves the damaged `path` aside and puts a salvaged file in its place.
pub(crate) fn salvage(
    dir: &Path,
    path: &Path,
    cause: &StoreError,
) -> Result<RecoveryReport, StoreError> {
    let fail = |what: &str, e: &dyn fmt::Display| {
        StoreError::new(
            path,
            StoreErrorKind::Recovery,
            format!("recovery failed: {what}: {e}"),
        )
    };
    let scratch = dir.join(format!("{}.salvage-src", crate::FILE_NAME));
    let fresh = dir.join(format!("{}.salvage-new", crate::FILE_NAME));
    remove_if_exists(&scratch).map_err(|e| fail("cannot remove an old scratch copy", &e))?;
    remove_if_exists(&fresh).map_err(|e| fail("cannot remove an old salvage file", &e))?;

    let mut report = RecoveryReport {
        moved_to: PathBuf::new(),
        cause: cause.message().to_string(),
        opened: false,
        tables: ["sessions", "messages", "qos2_in", "retained"]
            .into_iter()
            .map(|table| TableSalvage {
                table,
                kept: 0,
                dropped: 0,
                complete: false,
            })
            .collect(),
        notes: Vec::new(),
    };

    let new_db = crate::builder()
        .create(&fresh)
        .map_err(|e| fail("cannot create the new file", &e))?;
    match crate::init_tables(&new_db) {
        Ok(()) => {}
        Err(crate::InitError::Redb(e)) => return Err(fail("cannot set up the new file", &e)),
        Err(crate::InitError::Store(e)) => {
            return Err(fail("cannot set up the new file", &e.at(&fresh)))
        }
    }

    if let Some(src) = open_damaged(path, &scratch, &mut report.notes) {
        report.opened = true;
        let txn = new_db
            .begin_write()
            .map_err(|e| fail("cannot write the new file", &e))?;
        {
            let mut out = Out::open(&txn).map_err(|e| fail("cannot write the new file", &e))?;
            match src.begin_read() {
                Ok(rtx) => copy_all(&rtx, &mut out, &mut report),
                Err(e) => report
                    .notes
                    .push(format!("the damaged file cannot be read: {e}")),
            }
        }
        let _ = src.close();
        let mut txn = txn;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| fail("cannot write the new file", &e))?;
        txn.commit()
            .map_err(|e| fail("cannot write the new file", &e))?;
    }
    if !report.opened {
        for t in &mut report.tables {
            t.complete = false;
        }
    }
    new_db
        .close()
        .map_err(|e| fail("cannot close the new file", &e))?;
    let _ = fs::remove_file(&scratch);

    // Keep the damaged bytes under a new name, then replace the file atomically.
    let base = format!("{}.damaged-{}", crate::FILE_NAME, unix_seconds());
    let mut moved = dir.join(&base);
    let mut n = 1;
    while moved.exists() {
        n += 1;
        moved = dir.join(format!("{base}-{n}"));
    }
    if fs::hard_link(path, &moved).is_err() {
        fs::copy(path, &moved).map_err(|e| fail("cannot move the damaged file aside", &e))?;
    }
    fs::rename(&fresh, path).map_err(|e| fail("cannot put the salvaged file in place", &e))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    report.moved_to = moved;
    Ok(report)
}

/// Opens a copy of the damaged file: first with redb's integrity check and
/// repair; if that fails, trusting the file as it is (reads may then meet garbage,
/// which the decoders and the panic guard catch). A file cut short is first
/// extended back to the length redb expects (the lost pages read as zeros: the
/// records in them are lost, the others can be read).
fn open_damaged(path: &Path, scratch: &Path, notes: &mut Vec<String>) -> Option<Database> {
    let mut layout_len: Option<u64> = None;
    let mut attempts = vec![true, false];
    let mut i = 0;
    while let Some(&check) = attempts.get(i) {
        i += 1;
        if let Err(e) = fs::copy(path, scratch) {
            notes.push(format!("cannot copy the damaged file: {e}"));
            return None;
        }
        if let Some(len) = layout_len {
            let extended = fs::OpenOptions::new()
                .write(true)
                .open(scratch)
                .and_then(|f| f.set_len(len));
            if let Err(e) = extended {
                notes.push(format!("cannot extend the copy to {len} bytes: {e}"));
            }
        }
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut b = crate::builder();
            b.set_check_integrity_on_open(check);
            b.open(scratch)
        }));
        let how = match (check, layout_len) {
            (true, _) => "with its integrity check".to_string(),
            (false, None) => "without the integrity check".to_string(),
            (false, Some(n)) => format!("extended to {n} bytes, without the integrity check"),
        };
        match opened {
            Ok(Ok(db)) => return Some(db),
            Ok(Err(e)) => {
                let text = e.to_string();
                notes.push(format!("redb cannot open it {how}: {text}"));
                if layout_len.is_none() {
                    if let Some(n) = truncated_layout_len(&text) {
                        layout_len = Some(n);
                        attempts.push(false);
                    }
                }
            }
            Err(p) => notes.push(format!(
                "redb panicked opening it {how}: {}",
                panic_message(&*p)
            )),
        }
    }
    None
}

/// The length redb expects of a truncated file, from its error message
/// ("File truncated below stored layout: file_len=.., layout_len=..").
fn truncated_layout_len(message: &str) -> Option<u64> {
    let rest = &message[message.find("layout_len=")? + "layout_len=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&n: &u64| n <= 1 << 40)
}

struct Out<'t> {
    sessions: Table<'t, &'static [u8], &'static [u8]>,
    messages: Table<'t, (&'static [u8], u64), &'static [u8]>,
    qos2_in: Table<'t, (&'static [u8], u16), ()>,
    retained: Table<'t, &'static [u8], &'static [u8]>,
}

impl<'t> Out<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Out {
            sessions: txn.open_table(tables::SESSIONS)?,
            messages: txn.open_table(tables::MESSAGES)?,
            qos2_in: txn.open_table(tables::QOS2_IN)?,
            retained: txn.open_table(tables::RETAINED)?,
        })
    }
}

/// Copies one table's records that `take` accepts (it returns whether it kept the
/// record; `Err` only for a failure to write). Reads forward; if that stops at a
/// damaged page (an error or a panic inside redb), reads backward from the end
/// down to the last record read forward, so that one damaged page costs only the
/// records under it.
fn salvage_table<K: Key + 'static, V: Value + 'static>(
    rtx: &ReadTransaction,
    def: TableDefinition<K, V>,
    t: &mut TableSalvage,
    notes: &mut Vec<String>,
    mut take: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>) -> Result<bool, String>,
) {
    let name = t.table;
    let table = match catch_unwind(AssertUnwindSafe(|| rtx.open_table(def))) {
        Ok(Ok(table)) => table,
        Ok(Err(e)) => {
            notes.push(format!("table {name}: cannot be opened: {e}"));
            return;
        }
        Err(p) => {
            notes.push(format!(
                "table {name}: redb panicked opening it: {}",
                panic_message(&*p)
            ));
            return;
        }
    };
    let mut last: Option<Vec<u8>> = None;
    let forward = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let key = K::as_bytes(&k.value()).as_ref().to_vec();
            if take(k.value(), v.value())? {
                t.kept += 1;
            } else {
                t.dropped += 1;
            }
            last = Some(key);
        }
        Ok(())
    }));
    let stopped = match forward {
        Ok(Ok(())) => {
            t.complete = true;
            return;
        }
        Ok(Err(e)) => e,
        Err(p) => format!("redb panicked: {}", panic_message(&*p)),
    };
    let mut from_end = 0u64;
    let backward = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for row in table.iter().map_err(|e| e.to_string())?.rev() {
            let (k, v) = row.map_err(|e| e.to_string())?;
            if let Some(last) = &last {
                if K::compare(K::as_bytes(&k.value()).as_ref(), last) != Ordering::Greater {
                    break;
                }
            }
            if take(k.value(), v.value())? {
                t.kept += 1;
            } else {
                t.dropped += 1;
            }
            from_end += 1;
        }
        Ok(())
    }));
    let back = match backward {
        Ok(Ok(())) => String::new(),
        Ok(Err(e)) => format!(", then stopped again: {e}"),
        Err(p) => format!(", then redb panicked: {}", panic_message(&*p)),
    };
    notes.push(format!(
        "table {name}: reading stopped at a damaged page ({stopped}); read {from_end} more records backward from the end{back}"
    ));
}

/// Copies each table, sessions first (messages and QoS 2 ids are kept only for a
/// kept session).
fn copy_all(rtx: &ReadTransaction, out: &mut Out<'_>, report: &mut RecoveryReport) {
    let mut kept_sessions: HashSet<Vec<u8>> = HashSet::new();
    let RecoveryReport { tables, notes, .. } = report;
    let [s, m, q, r] = &mut tables[..] else {
        return;
    };
    let Out {
        sessions,
        messages,
        qos2_in,
        retained,
    } = out;
    salvage_table(rtx, tables::SESSIONS, s, notes, |key, value| {
        let ok = codec::client_id_from_key(key)
            .and_then(|cid| codec::decode_session(cid, value))
            .is_ok();
        if ok {
            sessions.insert(key, value).map_err(|e| e.to_string())?;
            kept_sessions.insert(key.to_vec());
        }
        Ok(ok)
    });
    salvage_table(rtx, tables::MESSAGES, m, notes, |(cid, seq), value| {
        let ok = kept_sessions.contains(cid) && codec::decode_entry(value).is_ok();
        if ok {
            messages
                .insert((cid, seq), value)
                .map_err(|e| e.to_string())?;
        }
        Ok(ok)
    });
    salvage_table(rtx, tables::QOS2_IN, q, notes, |(cid, id), ()| {
        let ok = kept_sessions.contains(cid);
        if ok {
            qos2_in.insert((cid, id), ()).map_err(|e| e.to_string())?;
        }
        Ok(ok)
    });
    salvage_table(rtx, tables::RETAINED, r, notes, |key, value| {
        let ok = codec::decode_retained(value).is_ok_and(|m| m.publish.topic.as_bytes() == key);
        if ok {
            retained.insert(key, value).map_err(|e| e.to_string())?;
        }
        Ok(ok)
    });
}
