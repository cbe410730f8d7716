//! Arbitrary operation sequences (accept, packets built from structured fields or
//! raw bytes, decode errors, closes, clock jumps) replayed into `Broker::handle`,
//! every output drained and checked after each step: no panic, output bytes decode
//! with mqtt-proto, limits and internal invariants hold. The check lives in
//! `broker-state/tests/support/fuzz_broker.rs`, shared with the stable replay test
//! `broker-state/tests/fuzz_corpus.rs`.
#![no_main]

#[allow(dead_code)]
mod broker_fuzz {
    include!("../../broker-state/tests/support/fuzz_broker.rs");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    broker_fuzz::check_broker(data);
});
