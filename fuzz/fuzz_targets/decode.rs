//! Arbitrary bytes into a `Decoder` of every starting version: never panics, each
//! `decode` call allocates at most `decode_allocation_bound` of the bytes it was given
//! (see its docs for the derivation), and byte-at-a-time input decodes the same as
//! whole input. The check lives in `mqtt_proto::fuzzing`, shared with the stable
//! corpus replay test `mqtt-proto/tests/fuzz_corpus.rs`.
#![no_main]

include!("../../mqtt-proto/tests/support/counting_alloc.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mqtt_proto::fuzzing::check_decode(data, allocated_bytes);
});
