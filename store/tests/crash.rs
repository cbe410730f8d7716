//! Test 3: crash safety. A child process (this test binary, re-executed) submits
//! batches and prints each ticket as soon as its completion arrives; the parent
//! kills it with SIGKILL at a random moment and reopens the store: every printed
//! ticket must be in the file, and what is in the file is a prefix of the batches
//! (each batch whole).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_state::StoreOp;
use brokk_store::FsyncPolicy;

const CHILD_ENV: &str = "BROKK_STORE_CRASH_CHILD";
const POLICY_ENV: &str = "BROKK_STORE_CRASH_POLICY";
const ROUND_ENV: &str = "BROKK_STORE_CRASH_ROUND";
const MESSAGES_PER_BATCH: u64 = 3;

fn session_name(round: u64, ticket: u64) -> String {
    format!("r{round}-{ticket:07}")
}

fn batch(round: u64, ticket: u64) -> Vec<StoreOp> {
    let name = session_name(round, ticket);
    let mut ops = common::session_with_messages(&name, MESSAGES_PER_BATCH, &[ticket as u8; 100]);
    ops.push(StoreOp::RetainSet(common::message(
        &format!("retained/{name}"),
        b"r",
        mqtt_proto::QoS::AtMostOnce,
    )));
    ops
}

/// The child: submits forever (well, for a minute), printing completed tickets.
fn child(dir: &str, policy: FsyncPolicy, round: u64) {
    let opened = match brokk_store::open(&common::options(Path::new(dir), policy)) {
        Ok(o) => o,
        Err(e) => {
            println!("\nOPEN-FAILED {e}");
            return;
        }
    };
    let store = opened.store;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nREADY");
    let _ = out.flush();
    let started = Instant::now();
    let (mut next, mut done) = (0u64, 0u64);
    let mut completions = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        while next < done + 16 {
            store.submit(batch(round, next), next);
            next += 1;
        }
        completions.clear();
        store.wait_completions(&mut completions, Duration::from_millis(100));
        for c in &completions {
            assert_eq!(c.ticket, done);
            if c.result.is_ok() {
                // Printed, and flushed, only once the batch is committed.
                let _ = writeln!(out, "TICKET {}", c.ticket);
                let _ = out.flush();
            }
            done += 1;
        }
    }
}

#[test]
fn crash_child_entry_point() {
    // Only does something when re-executed by the tests below.
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let policy = match std::env::var(POLICY_ENV).as_deref() {
            Ok("always") => FsyncPolicy::Always,
            _ => FsyncPolicy::EveryMs(20),
        };
        let round = std::env::var(ROUND_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(&dir, policy, round);
    }
}

struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("crash test seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs one child until killed; returns the tickets it printed, with the time each
/// was read, and the moment of the kill.
fn run_and_kill(
    dir: &Path,
    policy: &str,
    round: u64,
    kill_after: Duration,
) -> (Vec<(u64, Instant)>, Instant) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(POLICY_ENV, policy)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let printed: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let ready = Arc::new(Mutex::new(None::<Instant>));
    let reader = {
        let printed = printed.clone();
        let ready = ready.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = line.strip_prefix("TICKET ") {
                    printed
                        .lock()
                        .unwrap()
                        .push((t.trim().parse().unwrap(), Instant::now()));
                } else if line.contains("READY") {
                    *ready.lock().unwrap() = Some(Instant::now());
                } else if line.contains("OPEN-FAILED") {
                    panic!("child: {line}");
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.lock().unwrap().is_none() && printed.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the child never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    child.wait().unwrap();
    reader.join().unwrap();
    let printed = std::mem::take(&mut *printed.lock().unwrap());
    (printed, killed_at)
}

/// Tickets of `round` present in the store, checking each batch is whole.
fn present(dir: &Path, round: u64) -> BTreeSet<u64> {
    let opened = match brokk_store::open(&common::options(dir, FsyncPolicy::Always)) {
        Ok(o) => o,
        Err(e) => panic!("reopen after a crash failed: {e}"),
    };
    assert!(opened.recovery.is_none());
    let prefix = format!("r{round}-");
    let mut sessions = BTreeSet::new();
    let mut messages = std::collections::BTreeMap::<u64, u64>::new();
    let mut retained = BTreeSet::new();
    let ticket_of = |name: &str| {
        name.strip_prefix(&prefix)
            .map(|t| t.parse::<u64>().unwrap())
    };
    for op in &opened.replay {
        match op {
            StoreOp::SessionUpsert(r) => {
                if let Some(t) = ticket_of(r.client_id.as_str()) {
                    sessions.insert(t);
                }
            }
            StoreOp::MessageEnqueue { client_id, .. } => {
                if let Some(t) = ticket_of(client_id.as_str()) {
                    *messages.entry(t).or_default() += 1;
                }
            }
            StoreOp::RetainSet(m) => {
                if let Some(t) = m.publish.topic.as_str().strip_prefix("retained/") {
                    if let Some(t) = ticket_of(t) {
                        retained.insert(t);
                    }
                }
            }
            _ => {}
        }
    }
    for t in &sessions {
        assert_eq!(
            messages.get(t).copied(),
            Some(MESSAGES_PER_BATCH),
            "batch {t} is not whole"
        );
    }
    assert_eq!(sessions, retained, "batches are not whole");
    opened.store.flush_and_close().unwrap();
    sessions
}

fn check_prefix(present: &BTreeSet<u64>, seed_info: &str) {
    if let Some(&max) = present.last() {
        assert_eq!(
            present.len() as u64,
            max + 1,
            "{seed_info}: the batches in the file are not a prefix: a later batch survived an earlier one"
        );
    }
}

#[test]
fn sigkill_never_loses_a_completed_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new();
    // The same directory across rounds: each round also reopens after the
    // previous crash.
    for round in 0..4 {
        let kill_after = Duration::from_millis(50 + rng.below(700));
        let (printed, _) = run_and_kill(dir.path(), "always", round, kill_after);
        let present = present(dir.path(), round);
        let info = format!(
            "round {round}, killed after {kill_after:?}, {} printed, {} present",
            printed.len(),
            present.len()
        );
        eprintln!("{info}");
        for (t, _) in &printed {
            assert!(
                present.contains(t),
                "{info}: ticket {t} was completed but lost"
            );
        }
        check_prefix(&present, &info);
    }
}

/// EveryMs(20): a ticket completed well over 20 ms before the kill is durable.
#[test]
fn sigkill_with_every_ms_loses_at_most_the_last_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new();
    for round in 0..2 {
        let kill_after = Duration::from_millis(1500 + rng.below(700));
        let (printed, killed_at) = run_and_kill(dir.path(), "every", round, kill_after);
        let present = present(dir.path(), round);
        let info = format!(
            "round {round}, killed after {kill_after:?}, {} printed, {} present",
            printed.len(),
            present.len()
        );
        eprintln!("{info}");
        // One second of slack for a loaded machine.
        for (t, at) in &printed {
            if killed_at.duration_since(*at) > Duration::from_secs(1) {
                assert!(present.contains(t), "{info}: ticket {t} lost");
            }
        }
        assert!(
            printed.iter().any(
                |(t, at)| killed_at.duration_since(*at) > Duration::from_secs(1)
                    && present.contains(t)
            ),
            "{info}: nothing old enough to check"
        );
        check_prefix(&present, &info);
    }
}
