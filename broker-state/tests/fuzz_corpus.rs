//! Replays the broker fuzz target's saved corpus and crash artifacts
//! (`fuzz/corpus/broker/`, `fuzz/artifacts/broker/`) on stable, through the same
//! check the fuzzer runs (`tests/support/fuzz_broker.rs`), plus a few hundred
//! inputs from a fixed pseudo-random stream so the check runs even without a
//! corpus. Every artifact is a bug that was fixed: it stays here as a regression.

use std::path::Path;

#[allow(dead_code)]
mod broker_fuzz {
    include!("support/fuzz_broker.rs");
}

fn replay_dir(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
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

#[test]
fn broker_fuzz_corpus_and_artifacts_replay_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = replay_dir(&fuzz.join("corpus/broker"));
    let artifacts = replay_dir(&fuzz.join("artifacts/broker"));
    eprintln!("replayed {corpus} corpus inputs and {artifacts} artifacts");
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
