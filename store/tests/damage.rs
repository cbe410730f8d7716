//! Test 4: power loss and damage, on copies of a real file. Opening a damaged copy
//! without `recover` returns all committed data or an error naming the file, never
//! a panic; with `recover` it always opens and the report names the moved file.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use broker_state::{MemoryStore, StoreOp};
use brokk_store::{FsyncPolicy, StoreErrorKind};

const PAGE: u64 = 4096;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A store with a few hundred sessions, their queues and retained messages,
/// written in several commits; returns its directory and the expected replay.
fn build(dir: &Path) -> Vec<StoreOp> {
    let mut mem = MemoryStore::new();
    let opened = common::open(dir, FsyncPolicy::Always);
    for chunk in 0..10u32 {
        let mut ops = Vec::new();
        for i in 0..30u32 {
            let n = chunk * 30 + i;
            let name = format!("client-{n:04}");
            ops.push(StoreOp::SessionUpsert(common::session(&name, n)));
            for seq in 0..5 {
                ops.push(StoreOp::MessageEnqueue {
                    client_id: common::cid(&name),
                    seq,
                    message: common::rich_message(&format!("t/{n}/{seq}"), n),
                });
            }
            ops.push(StoreOp::MessageSent {
                client_id: common::cid(&name),
                seq: 0,
                packet_id: 1,
            });
            ops.push(StoreOp::Qos2Received {
                client_id: common::cid(&name),
                packet_id: n as u16 + 1,
            });
            ops.push(StoreOp::RetainSet(common::rich_message(
                &format!("r/{n}"),
                n,
            )));
        }
        // Some churn, so that the file has freed pages too.
        if chunk > 0 {
            ops.push(StoreOp::SessionRemove {
                client_id: common::cid(&format!("client-{:04}", chunk * 30 - 1)),
            });
        }
        for op in &ops {
            mem.apply(op).unwrap();
        }
        opened.store.submit(ops, u64::from(chunk));
        let done = common::wait_for(&opened.store, 1);
        assert_eq!(done[0].result, Ok(()));
    }
    opened.store.flush_and_close().unwrap();
    mem.replay()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn copy_to(original: &Path, root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(original, dir.join("brokk.redb")).unwrap();
    dir
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Opens the damaged copy both ways and checks the rules. Returns whether the
/// plain open refused it.
fn check(dir: &Path, expected: &[StoreOp], what: &str) -> bool {
    let file = dir.join("brokk.redb");
    let panics_before = PANICS.load(Ordering::SeqCst);
    let refused = match brokk_store::open(&common::options(dir, FsyncPolicy::Always)) {
        Ok(opened) => {
            assert!(
                opened.replay == expected,
                "{what}: opened without error but the data differs ({} ops, {} expected)",
                opened.replay.len(),
                expected.len()
            );
            opened.store.flush_and_close().unwrap();
            false
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&*file.to_string_lossy()),
                "{what}: the error does not name the file: {text}"
            );
            assert_eq!(e.kind(), StoreErrorKind::Damaged, "{what}: {text}");
            assert!(text.contains("--recover"), "{what}: {text}");
            eprintln!("{what}: refused: {text}");
            true
        }
    };
    let panics = PANICS.load(Ordering::SeqCst) - panics_before;
    if panics > 0 {
        eprintln!("{what}: redb panicked {panics} time(s) (caught, reported as damage)");
    }
    let mut opts = common::options(dir, FsyncPolicy::Always);
    opts.recover = true;
    let opened = match brokk_store::open(&opts) {
        Ok(o) => o,
        Err(e) => panic!("{what}: open with recover failed: {e}"),
    };
    if refused {
        let report = opened
            .recovery
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: recovered without a report"));
        let text = report.to_string();
        eprintln!("{what}: {text}");
        assert!(report.moved_to.exists(), "{what}: {text}");
        assert!(
            text.contains(&*report.moved_to.to_string_lossy()),
            "{what}: the report does not name the moved file: {text}"
        );
        // The salvage is a subset of what was there.
        for op in &opened.replay {
            assert!(expected.contains(op), "{what}: salvage invented {op:?}");
        }
    } else {
        assert!(opened.recovery.is_none(), "{what}");
        assert!(opened.replay == expected, "{what}");
    }
    opened.store.flush_and_close().unwrap();
    // After recovery the file opens cleanly.
    let again = common::open(dir, FsyncPolicy::Always);
    assert!(again.recovery.is_none());
    again.store.flush_and_close().unwrap();
    refused
}

#[test]
fn damaged_copies_are_refused_or_complete_and_always_recoverable() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let root = tempfile::tempdir().unwrap();
    let src_dir = root.path().join("original");
    let expected = build(&src_dir);
    let original = src_dir.join("brokk.redb");
    let len = fs::metadata(&original).unwrap().len();
    eprintln!("original: {len} bytes, {} ops", expected.len());
    assert!(
        len > 64 * PAGE,
        "the test file is too small to damage meaningfully"
    );
    let pages = len / PAGE;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("damage test seed {seed}");
    let mut rng = Rng(seed);
    let mut refused = 0;

    // The untouched copy opens with everything.
    let dir = copy_to(&original, root.path(), "intact");
    assert!(!check(&dir, &expected, "intact"));

    // Truncated tails: one page, several pages, half the file, all but the header.
    for (i, cut) in [PAGE, 7 * PAGE, len / 2, len - PAGE]
        .into_iter()
        .enumerate()
    {
        let dir = copy_to(&original, root.path(), &format!("truncated-{i}"));
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("brokk.redb"))
            .unwrap();
        f.set_len(len - cut).unwrap();
        refused += usize::from(check(&dir, &expected, &format!("truncated by {cut}")));
    }

    // The last 4 KiB zeroed.
    let dir = copy_to(&original, root.path(), "zero-tail");
    overwrite(&dir.join("brokk.redb"), len - PAGE, &[0; PAGE as usize]);
    refused += usize::from(check(&dir, &expected, "last 4 KiB zeroed"));

    // Torn pages: random bytes over one page in the middle third (several tries,
    // each on a fresh copy), plus the header page.
    for i in 0..8 {
        let page = if i == 0 {
            0
        } else {
            pages / 3 + rng.next() % (pages / 3)
        };
        let dir = copy_to(&original, root.path(), &format!("torn-{i}"));
        let garbage: Vec<u8> = (0..PAGE).map(|_| rng.next() as u8).collect();
        overwrite(&dir.join("brokk.redb"), page * PAGE, &garbage);
        refused += usize::from(check(&dir, &expected, &format!("torn page {page}")));
    }

    // The whole file zeroed.
    let dir = copy_to(&original, root.path(), "all-zero");
    overwrite(&dir.join("brokk.redb"), 0, &vec![0; len as usize]);
    assert!(
        check(&dir, &expected, "all zero"),
        "a zeroed file must be refused"
    );
    refused += 1;

    eprintln!(
        "{refused} damaged copies refused; panics caught: {}",
        PANICS.load(Ordering::SeqCst)
    );
}
