//! Replays the broker fuzz target's saved corpus and crash artifacts
//! (`fuzz/corpus/broker/`, `fuzz/artifacts/broker/`) on stable, through the same
//! check the fuzzer runs (`tests/support/fuzz_broker.rs`), plus a few hundred
//! inputs from a fixed pseudo-random stream. The corpus is checked in, so a missing
//! or empty corpus directory fails the test rather than replaying nothing. Every
//! artifact is a bug that was fixed: it stays here as a regression.

use std::path::Path;

#[allow(dead_code)]
mod broker_fuzz {
    include!("support/fuzz_broker.rs");
}

/// Replays every file in `dir` and returns how many there were. A directory that
/// does not exist holds none (artifacts exist only once the fuzzer found something);
/// any other failure to list it fails the test.
fn replay_dir(dir: &Path) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("{}: cannot list: {e}", dir.display()),
    };
    let mut files: Vec<_> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: cannot list: {e}", dir.display()))
                .path()
        })
        .collect();
    files.sort();
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        let result = std::panic::catch_unwind(|| broker_fuzz::check_broker(&data));
        if result.is_err() {
            let (setup, ops) = broker_fuzz::parse(&data).expect("a failing input parses");
            panic!(
                "fuzz input {} fails: {:#?}\n{setup:#?}\n{ops:#?}",
                path.display(),
                setup.config()
            );
        }
    }
    files.len()
}

/// Replays the corpus in `dir`, which must hold at least one file: the seeds are
/// checked in, so none found means a wrong path or a lost corpus, and a replay of
/// nothing would pass without proving anything.
fn replay_corpus(dir: &Path) -> usize {
    let n = replay_dir(dir);
    assert!(
        n > 0,
        "{}: no fuzz corpus files to replay (the directory is missing or empty)",
        dir.display()
    );
    n
}

#[test]
fn broker_fuzz_corpus_and_artifacts_replay_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = replay_corpus(&fuzz.join("corpus/broker"));
    // Optional: the corpus just found shows that `fuzz` is the right directory.
    let artifacts = replay_dir(&fuzz.join("artifacts/broker"));
    eprintln!("replayed {corpus} corpus inputs and {artifacts} artifacts");
}

#[test]
#[should_panic(expected = "no-such-target: no fuzz corpus files to replay")]
fn missing_corpus_directory_fails() {
    replay_corpus(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/no-such-target"));
}

#[test]
#[should_panic(expected = "empty-broker-corpus: no fuzz corpus files to replay")]
fn empty_corpus_directory_fails() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-broker-corpus");
    std::fs::create_dir_all(&dir).expect("test setup: a failure here is the test failing");
    replay_corpus(&dir);
}

#[test]
fn broker_fuzz_check_holds_on_pseudo_random_inputs() {
    // xorshift64*: a fixed stream, so this test is deterministic.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..300 {
        let len = (next() % 2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        broker_fuzz::check_broker(&data);
    }
}
