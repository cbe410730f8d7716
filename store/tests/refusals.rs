//! Tests 5 and 6: a second open is refused; a failing store fails its tickets;
//! unknown format versions are refused by name.

mod common;

use broker_state::StoreOp;
use brokk_store::{FsyncPolicy, StoreErrorKind};

#[test]
fn second_open_in_the_same_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::open(dir.path(), FsyncPolicy::Always);
    let err = brokk_store::open(&common::options(dir.path(), FsyncPolicy::Always))
        .expect_err("second open must be refused");
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::InUse, "{text}");
    assert!(text.contains("brokk.redb"), "{text}");
    assert!(
        text.contains("is in use by another brokk process"),
        "{text}"
    );
    // Even with --recover: the file is not touched.
    let mut opts = common::options(dir.path(), FsyncPolicy::Always);
    opts.recover = true;
    assert_eq!(
        brokk_store::open(&opts).expect_err("refused").kind(),
        StoreErrorKind::InUse
    );
    first.store.flush_and_close().unwrap();
    // Closed: it opens again. (A child process that another test forks at this
    // moment holds copies of our descriptors until its exec: retry briefly.)
    let mut tries = 0;
    let again = loop {
        match brokk_store::open(&common::options(dir.path(), FsyncPolicy::Always)) {
            Ok(o) => break o,
            Err(e) if e.kind() == StoreErrorKind::InUse && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen after close failed: {e}"),
        }
    };
    again.store.flush_and_close().unwrap();
}

/// redb's own lock on the file (without brokk's lock file): another handle on the
/// same file is refused as "in use" too.
#[test]
fn redb_locks_the_file_itself() {
    let dir = tempfile::tempdir().unwrap();
    let first = common::open(dir.path(), FsyncPolicy::Always);
    let err = redb::Database::create(dir.path().join("brokk.redb")).expect_err("locked");
    assert!(
        matches!(err, redb::DatabaseError::DatabaseAlreadyOpen),
        "{err}"
    );
    first.store.flush_and_close().unwrap();
}

/// A second process is refused (the test binary re-executes itself).
#[test]
fn second_process_is_refused() {
    if let Ok(dir) = std::env::var("BROKK_STORE_SECOND_OPEN") {
        // Child: report what open said.
        match brokk_store::open(&common::options(dir.as_ref(), FsyncPolicy::Always)) {
            Ok(_) => println!("RESULT opened"),
            Err(e) => println!("RESULT {:?} {e}", e.kind()),
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first = common::open(dir.path(), FsyncPolicy::Always);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "second_process_is_refused",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BROKK_STORE_SECOND_OPEN", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.find("RESULT").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("child said nothing: {stdout}"));
    assert!(line.starts_with("RESULT InUse"), "{line}");
    assert!(
        line.contains("is in use by another brokk process"),
        "{line}"
    );
    first.store.flush_and_close().unwrap();
}

#[test]
fn failing_store_fails_tickets_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    let store = opened.store;
    store.submit(common::session_with_messages("ok1", 1, b"a"), 1);
    assert_eq!(common::wait_for(&store, 1)[0].result, Ok(()));
    store.set_failing(true);
    store.submit(common::session_with_messages("lost", 1, b"b"), 2);
    store.submit(common::session_with_messages("lost2", 1, b"b"), 3);
    let done = common::wait_for(&store, 2);
    assert_eq!(
        done.iter().map(|c| c.ticket).collect::<Vec<_>>(),
        vec![2, 3]
    );
    for c in &done {
        let e = c.result.as_ref().expect_err("must fail");
        assert!(e.contains("brokk.redb"), "{e}");
    }
    assert!(store.stats().failed_batches >= 2);
    store.set_failing(false);
    store.submit(common::session_with_messages("ok2", 1, b"c"), 4);
    let done = common::wait_for(&store, 1);
    assert_eq!((done[0].ticket, done[0].result.clone()), (4, Ok(())));
    store.flush_and_close().unwrap();
    let reopened = common::open(dir.path(), FsyncPolicy::Always);
    let sessions: Vec<String> = reopened
        .replay
        .iter()
        .filter_map(|op| match op {
            StoreOp::SessionUpsert(r) => Some(r.client_id.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(sessions, vec!["ok1", "ok2"]);
}

/// A batch with an op that has no stored form fails alone; the batches committed
/// with it in the same group are unaffected.
#[test]
fn unencodable_batch_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    let store = opened.store;
    let mut bad = common::message("t", b"x", mqtt_proto::QoS::AtMostOnce);
    // Correlation data longer than a binary field can be.
    bad.publish.properties.correlation_data = Some(bytes::Bytes::from(vec![0u8; 70_000]));
    for t in 0..20u64 {
        let ops = if t == 10 {
            vec![StoreOp::RetainSet(bad.clone())]
        } else {
            common::session_with_messages(&format!("c{t}"), 1, b"y")
        };
        store.submit(ops, t);
    }
    let done = common::wait_for(&store, 20);
    for c in &done {
        assert_eq!(c.result.is_ok(), c.ticket != 10, "{c:?}");
    }
    store.flush_and_close().unwrap();
    assert_eq!(
        common::open(dir.path(), FsyncPolicy::Never).replay.len(),
        38
    );
}

fn write_raw(path: &std::path::Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

#[test]
fn unknown_format_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    common::open(dir.path(), FsyncPolicy::Always)
        .store
        .flush_and_close()
        .unwrap();
    let path = dir.path().join("brokk.redb");
    write_raw(&path, |txn| {
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        txn.open_table(meta)
            .unwrap()
            .insert("format_version", 2)
            .unwrap();
    });
    for recover in [false, true] {
        let mut opts = common::options(dir.path(), FsyncPolicy::Always);
        opts.recover = recover;
        let err = brokk_store::open(&opts).expect_err("version 2 must be refused");
        let text = err.to_string();
        assert_eq!(err.kind(), StoreErrorKind::UnknownVersion, "{text}");
        assert!(text.contains("brokk.redb"), "{text}");
        assert!(text.contains("unknown store format version 2"), "{text}");
    }
    // Nothing was moved aside.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn unknown_record_version_is_damage_naming_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Always);
    opened
        .store
        .submit(common::session_with_messages("good", 2, b"p"), 0);
    common::wait_for(&opened.store, 1);
    opened.store.flush_and_close().unwrap();
    let path = dir.path().join("brokk.redb");
    write_raw(&path, |txn| {
        let sessions: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("sessions");
        txn.open_table(sessions)
            .unwrap()
            .insert(&b"future-client"[..], &[9u8, 0, 0, 0][..])
            .unwrap();
    });
    let err = brokk_store::open(&common::options(dir.path(), FsyncPolicy::Always))
        .expect_err("a version 9 record must be refused");
    let text = err.to_string();
    assert_eq!(err.kind(), StoreErrorKind::Damaged, "{text}");
    for want in [
        "brokk.redb",
        "table sessions",
        "future-client",
        "unknown record format version 9",
        "--recover",
    ] {
        assert!(text.contains(want), "{want:?} missing in {text}");
    }
    // With recover: the record is dropped, the rest kept, the damaged file moved aside.
    let mut opts = common::options(dir.path(), FsyncPolicy::Always);
    opts.recover = true;
    let opened = brokk_store::open(&opts).unwrap();
    let report = opened.recovery.expect("a report");
    assert!(report.moved_to.exists(), "{report}");
    assert!(
        report
            .moved_to
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("brokk.redb.damaged-"),
        "{report}"
    );
    let sessions = report
        .tables
        .iter()
        .find(|t| t.table == "sessions")
        .unwrap();
    assert_eq!((sessions.kept, sessions.dropped), (1, 1), "{report}");
    assert!(report
        .to_string()
        .contains(&*report.moved_to.to_string_lossy()));
    assert_eq!(opened.replay.len(), 3);
    opened.store.flush_and_close().unwrap();
}
