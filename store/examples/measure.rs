//! Measures the store on this machine (not a test: it prints numbers).
//!
//! ```text
//! cargo run -p brokk-store --release --example measure -- load [sessions] [messages]
//! cargo run -p brokk-store --release --example measure -- commit [seconds]
//! ```
//!
//! `load`: writes `sessions` (default 100,000) sessions with `messages` (default
//! 10) queued messages of 100 bytes each, closes, then times reopen + replay.
//!
//! `commit`: FsyncPolicy::Always, one op per batch (a 100-byte MessageEnqueue),
//! submitted as fast as completions allow with 1, 64 and 4096 batches in flight;
//! prints commits/s (= fsyncs/s), batches/s and ops/s.

use std::time::{Duration, Instant};

use broker_state::{SessionRecord, StoreOp, StoredMessage};
use brokk_store::{Completion, FsyncPolicy, StoreOptions};
use bytes::Bytes;
use mqtt_proto::{
    MqttString, Publish, PublishProperties, QoS, SubscriptionOptions, TopicFilter, TopicName,
};

fn cid(n: usize) -> MqttString {
    MqttString::copy_from_str(&format!("client-{n:07}")).expect("client id")
}

fn message(n: u64) -> StoredMessage {
    StoredMessage {
        publish: Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::copy_from_str("devices/42/telemetry").expect("topic"),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![n as u8; 100]),
        },
        expires_at_unix_ms: None,
    }
}

fn session(n: usize) -> StoreOp {
    StoreOp::SessionUpsert(SessionRecord {
        client_id: cid(n),
        authentication_name: Some("user".into()),
        expiry_interval: 86_400,
        expires_at_unix_ms: Some(1_800_000_000_000),
        subscriptions: vec![(
            TopicFilter::copy_from_str("devices/+/telemetry").expect("filter"),
            SubscriptionOptions::qos(QoS::AtLeastOnce),
            None,
        )],
        will: None,
    })
}

fn wait(store: &brokk_store::DurableStore, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    while out.len() < n {
        store.wait_completions(&mut out, Duration::from_secs(1));
    }
    for c in &out {
        if let Err(e) = &c.result {
            panic!("batch {} failed: {e}", c.ticket);
        }
    }
    out
}

fn load(sessions: usize, messages: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        dir: dir.path().to_path_buf(),
        fsync: FsyncPolicy::Never,
        recover: false,
    };
    let started = Instant::now();
    let store = brokk_store::open(&opts).expect("open").store;
    let per_batch = 1_000;
    let mut tickets = 0;
    for chunk in (0..sessions).step_by(per_batch) {
        let mut ops = Vec::new();
        for n in chunk..(chunk + per_batch).min(sessions) {
            ops.push(session(n));
            for seq in 0..messages {
                ops.push(StoreOp::MessageEnqueue {
                    client_id: cid(n),
                    seq,
                    message: message(seq),
                });
            }
        }
        store.submit(ops, tickets);
        tickets += 1;
        if tickets % 8 == 0 {
            wait(&store, 8);
        }
    }
    wait(&store, (tickets % 8) as usize);
    store.flush_and_close().expect("close");
    let len = std::fs::metadata(dir.path().join(brokk_store::FILE_NAME))
        .expect("file")
        .len();
    println!(
        "wrote {sessions} sessions x {messages} messages in {:.2?}: file {:.1} MiB",
        started.elapsed(),
        len as f64 / (1 << 20) as f64
    );
    {
        let db = redb::Database::open(dir.path().join(brokk_store::FILE_NAME)).expect("redb");
        let txn = db.begin_write().expect("txn");
        let st = txn.stats().expect("stats");
        println!(
            "  redb: {} pages allocated ({:.1} MiB), {:.1} MiB stored in leaves, {:.1} MiB metadata, {:.1} MiB fragmented",
            st.allocated_pages(),
            (st.allocated_pages() * st.page_size() as u64) as f64 / (1 << 20) as f64,
            st.stored_bytes() as f64 / (1 << 20) as f64,
            st.metadata_bytes() as f64 / (1 << 20) as f64,
            st.fragmented_bytes() as f64 / (1 << 20) as f64,
        );
        txn.abort().expect("abort");
    }
    if let Ok(keep) = std::env::var("MEASURE_KEEP") {
        std::fs::copy(dir.path().join(brokk_store::FILE_NAME), &keep).expect("keep");
    }
    for run in 1..=3 {
        let started = Instant::now();
        let opened = brokk_store::open(&opts).expect("reopen");
        let elapsed = started.elapsed();
        println!(
            "reopen + replay #{run}: {} ops in {elapsed:.2?}",
            opened.replay.len()
        );
        let started = Instant::now();
        drop(opened.replay);
        opened.store.flush_and_close().expect("close");
        println!(
            "  (dropping the replay and closing: {:.2?}; file now {:.1} MiB)",
            started.elapsed(),
            std::fs::metadata(dir.path().join(brokk_store::FILE_NAME))
                .expect("file")
                .len() as f64
                / (1 << 20) as f64
        );
    }
}

fn commit(seconds: u64) {
    for in_flight in [1u64, 64, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            dir: dir.path().to_path_buf(),
            fsync: FsyncPolicy::Always,
            recover: false,
        };
        let store = brokk_store::open(&opts).expect("open").store;
        store.submit(vec![session(0)], 0);
        wait(&store, 1);
        let before = store.stats();
        let started = Instant::now();
        let (mut submitted, mut done) = (1u64, 1u64);
        let mut out = Vec::new();
        while started.elapsed() < Duration::from_secs(seconds) {
            while submitted < done + in_flight {
                store.submit(
                    vec![StoreOp::MessageEnqueue {
                        client_id: cid(0),
                        seq: submitted,
                        message: message(submitted),
                    }],
                    submitted,
                );
                submitted += 1;
            }
            out.clear();
            store.wait_completions(&mut out, Duration::from_millis(100));
            done += out.len() as u64;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let s = store.stats();
        let commits = s.commits - before.commits;
        let ops = s.ops_applied - before.ops_applied;
        println!(
            "Always, {in_flight:>4} in flight: {:>8.0} commits/s (fsyncs), {:>9.0} batches/s = ops/s, \
             mean commit {:.2?}, max {:.2?}",
            commits as f64 / elapsed,
            ops as f64 / elapsed,
            s.commit_time_total / s.commits.max(1) as u32,
            s.commit_time_max
        );
        store.flush_and_close().expect("close");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u64| {
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("load") => load(num(1, 100_000) as usize, num(2, 10)),
        Some("commit") => commit(num(1, 5)),
        _ => {
            load(100_000, 10);
            commit(5);
        }
    }
}
