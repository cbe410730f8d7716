//! Replays the fuzz corpus and every saved crash artifact on stable Rust, through the
//! very checks the fuzz targets run (`mqtt_proto::fuzzing`), with the same counting
//! allocator (`tests/support/counting_alloc.rs`). A crash the fuzzer found once, kept
//! as `fuzz/artifacts/<target>/crash-*`, stays a regression test here after it is
//! fixed, without nightly or libFuzzer.

// Counting global allocator, shared with the fuzz targets.
include!("support/counting_alloc.rs");

use std::path::{Path, PathBuf};

use mqtt_proto::fuzzing::{check_decode, check_roundtrip};

const TARGETS: [&str; 2] = ["decode", "roundtrip"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file directly inside `dir` (a missing directory is empty: artifacts exist
/// only once something was found; any other failure to list it fails the test),
/// sorted for a stable order.
fn files(dir: &Path) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: cannot list: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

/// Runs both checks on each file; a panic names the file.
fn replay(paths: &[PathBuf]) {
    for path in paths {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| {
            check_decode(&data, allocated_bytes);
            check_roundtrip(&data);
        });
        if outcome.is_err() {
            panic!(
                "{} fails its fuzz check (input {:02x?}); reproduce with \
                 `cargo +nightly fuzz run <target> {}`",
                path.display(),
                data,
                path.display()
            );
        }
    }
}

/// The corpus files in `dir`, at least ten: the seeds are checked in, so fewer means
/// a wrong path or a lost corpus, and a replay of nothing would pass without
/// proving anything.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let corpus = files(dir);
    assert!(
        corpus.len() >= 10,
        "{}: {} fuzz corpus files, expected at least 10 (is the directory missing or empty?)",
        dir.display(),
        corpus.len()
    );
    corpus
}

#[test]
fn corpus_replays_cleanly() {
    for target in TARGETS {
        replay(&corpus(&fuzz_dir().join("corpus").join(target)));
    }
}

#[test]
#[should_panic(expected = "no-such-target: 0 fuzz corpus files, expected at least 10")]
fn missing_corpus_directory_fails() {
    corpus(&fuzz_dir().join("corpus").join("no-such-target"));
}

#[test]
#[should_panic(expected = "empty-corpus: 0 fuzz corpus files, expected at least 10")]
fn empty_corpus_directory_fails() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-corpus");
    std::fs::create_dir_all(&dir).expect("test setup: a failure here is the test failing");
    corpus(&dir);
}

#[test]
fn crash_artifacts_stay_fixed() {
    for target in TARGETS {
        replay(&files(&fuzz_dir().join("artifacts").join(target)));
    }
}

/// The allocation check is live in this binary: the counting allocator sees this
/// thread's allocations (if it did not, every bound would pass vacuously).
#[test]
fn counting_allocator_counts() {
    let before = allocated_bytes();
    let v = std::hint::black_box(vec![0u8; 1000]);
    assert!(allocated_bytes() - before >= 1000);
    drop(v);
}

/// The inputs the bound in `mqtt_proto::fuzzing::decode_allocation_bound` was derived
/// from, built at their worst (the smallest entries, so the most elements per input
/// byte), stay within it. Prints the measured bytes allocated per input byte.
#[test]
fn worst_case_inputs_stay_within_the_allocation_bound() {
    use bytes::BytesMut;
    use mqtt_proto::fuzzing::decode_allocation_bound;
    use mqtt_proto::{Decoder, ProtocolVersion};

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut n = body.len();
        loop {
            let b = (n % 128) as u8;
            n /= 128;
            out.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }
    let n = 4000;
    let unsubscribe = packet(0xA2, &[&[0, 1][..], &[0, 1, b'a'].repeat(n)].concat());
    let subscribe = packet(0x82, &[&[0, 1][..], &[0, 1, b'a', 0].repeat(n)].concat());
    let suback = packet(0x90, &[&[0, 1][..], &[0].repeat(n)].concat());
    // Subscription Identifiers (0x0B, 1): 2 bytes each, in a growing Vec.
    let ids = [0x0B, 0x01].repeat(n);
    let mut props = Vec::new();
    let mut len = ids.len();
    loop {
        let b = (len % 128) as u8;
        len /= 128;
        props.push(if len > 0 { b | 0x80 } else { b });
        if len == 0 {
            break;
        }
    }
    props.extend_from_slice(&ids);
    let publish_ids = packet(0x30, &[&[0, 1, b't'][..], &props].concat());
    // User properties interleaved with another property: gathered into one copy.
    let fragmented = [
        &[0x26, 0, 0, 0, 0][..],
        &[0x02, 0, 0, 0, 1],
        &[0x26, 0, 0, 0, 0],
    ]
    .concat();
    let publish_user = packet(
        0x30,
        &[&[0, 1, b't', fragmented.len() as u8][..], &fragmented].concat(),
    );

    use ProtocolVersion::{V3_1_1, V5};
    for (name, version, input) in [
        ("UNSUBSCRIBE of 1-byte filters", V3_1_1, unsubscribe),
        ("SUBSCRIBE of 1-byte filters", V3_1_1, subscribe),
        ("SUBACK", V3_1_1, suback),
        ("PUBLISH with 2-byte subscription ids", V5, publish_ids),
        ("PUBLISH with interleaved user properties", V5, publish_user),
    ] {
        let mut buf = BytesMut::from(&input[..]);
        let mut decoder = Decoder::with_version(version, u32::MAX);
        let before = allocated_bytes();
        let result = decoder.decode(&mut buf);
        let allocated = allocated_bytes() - before;
        assert!(matches!(result, Ok(Some(_))), "{name}: {result:?}");
        let bound = decode_allocation_bound(input.len()) as u64;
        eprintln!(
            "{name}: {allocated} bytes for {} input bytes ({:.2}/byte, bound {bound})",
            input.len(),
            allocated as f64 / input.len() as f64
        );
        assert!(allocated <= bound, "{name}: {allocated} > {bound}");
    }
}
