//! Whatever decodes from arbitrary bytes re-encodes to `encoded_len` bytes that
//! decode to an equal packet, canonically. The check lives in
//! `mqtt_proto::fuzzing`, shared with the stable corpus replay test
//! `mqtt-proto/tests/fuzz_corpus.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mqtt_proto::fuzzing::check_roundtrip(data);
});
