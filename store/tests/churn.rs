//! Bounded under churn: creating and removing many sessions (with queued
//! messages) leaves a file no bigger than a small multiple of one holding only
//! what is live. 200,000 sessions in release builds (20,000 in debug builds, where
//! it would take minutes); `BROKK_STORE_CHURN_SESSIONS` overrides.

mod common;

use std::path::Path;

use broker_state::StoreOp;
use brokk_store::{DurableStore, FsyncPolicy};

const LIVE: usize = 1_000;
const MESSAGES: u64 = 3;

fn total() -> usize {
    std::env::var("BROKK_STORE_CHURN_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            20_000
        } else {
            200_000
        })
}

fn name(n: usize) -> String {
    format!("churn-client-{n:08}")
}

fn create(range: std::ops::Range<usize>) -> Vec<StoreOp> {
    let mut ops = Vec::new();
    for n in range {
        ops.extend(common::session_with_messages(
            &name(n),
            MESSAGES,
            &[n as u8; 100],
        ));
        ops.push(StoreOp::MessageSent {
            client_id: common::cid(&name(n)),
            seq: 0,
            packet_id: 1,
        });
        ops.push(StoreOp::Qos2Received {
            client_id: common::cid(&name(n)),
            packet_id: 5,
        });
    }
    ops
}

fn remove(range: std::ops::Range<usize>) -> Vec<StoreOp> {
    range
        .map(|n| StoreOp::SessionRemove {
            client_id: common::cid(&name(n)),
        })
        .collect()
}

fn run(store: &DurableStore, ops: Vec<StoreOp>) {
    store.submit(ops, 0);
    let done = common::wait_for(store, 1);
    assert_eq!(done[0].result, Ok(()));
}

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("brokk.redb")).unwrap().len()
}

fn churn(policy: FsyncPolicy) {
    let total = total();
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), policy);
    let store = opened.store;
    let mut peak = 0;
    let rounds = total / LIVE;
    for round in 0..rounds {
        let start = round * LIVE;
        let mut ops = create(start..start + LIVE);
        if round > 0 {
            ops.extend(remove(start - LIVE..start));
        }
        run(&store, ops);
        let len = file_len(dir.path());
        peak = peak.max(len);
        if round % (rounds / 10).max(1) == 0 {
            eprintln!("{policy:?}: round {round}/{rounds}: file {len} bytes");
        }
    }
    let stats = store.stats();
    store.flush_and_close().unwrap();
    let churned = file_len(dir.path());

    // Reopen (which may compact) and check only the live sessions are there.
    let reopened = common::open(dir.path(), policy);
    let sessions = reopened
        .replay
        .iter()
        .filter(|op| matches!(op, StoreOp::SessionUpsert(_)))
        .count();
    assert_eq!(sessions, LIVE);
    assert_eq!(reopened.replay.len(), LIVE * (2 + MESSAGES as usize + 1));
    reopened.store.flush_and_close().unwrap();
    let after_reopen = file_len(dir.path());

    // The same live data written once into a fresh file.
    let fresh = tempfile::tempdir().unwrap();
    let opened = common::open(fresh.path(), policy);
    run(&opened.store, create((rounds - 1) * LIVE..rounds * LIVE));
    opened.store.flush_and_close().unwrap();
    let baseline = file_len(fresh.path());

    eprintln!(
        "{policy:?}: {total} sessions churned: peak {peak} bytes, at close {churned}, \
         after reopen {after_reopen}; live data alone {baseline} ({stats:?})"
    );
    let bound = 4 * baseline + (1 << 20);
    assert!(
        peak <= bound,
        "{policy:?}: the file grew to {peak} bytes under churn; live data takes {baseline}"
    );
    assert!(after_reopen <= bound);
}

#[test]
fn churn_always() {
    churn(FsyncPolicy::Always);
}

#[test]
fn churn_every_ms() {
    churn(FsyncPolicy::EveryMs(10));
}

#[test]
fn churn_never() {
    churn(FsyncPolicy::Never);
}

/// After most of the data is gone, reopening compacts the file.
#[test]
fn reopen_compacts_after_mass_removal() {
    let dir = tempfile::tempdir().unwrap();
    let opened = common::open(dir.path(), FsyncPolicy::Never);
    let n = 20_000;
    for chunk in (0..n).step_by(5_000) {
        let mut ops = Vec::new();
        for i in chunk..chunk + 5_000 {
            ops.extend(common::session_with_messages(&name(i), 5, &[1; 200]));
        }
        run(&opened.store, ops);
    }
    run(&opened.store, remove(10..n));
    opened.store.flush_and_close().unwrap();
    let before = file_len(dir.path());
    let reopened = common::open(dir.path(), FsyncPolicy::Never);
    assert_eq!(reopened.replay.len(), 10 * 6);
    reopened.store.flush_and_close().unwrap();
    let after = file_len(dir.path());
    eprintln!("after removing all but 10 of {n} sessions: {before} bytes; reopened: {after}");
    assert!(before > 16 << 20, "the test needs a bigger file ({before})");
    assert!(after < before / 4, "not compacted: {before} -> {after}");
}
