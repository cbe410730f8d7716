//! The codec's hot path allocates nothing: decoding a PUBLISH from a read buffer
//! that already holds it and encoding it into a reserved write buffer makes zero
//! heap allocations, counted by a counting global allocator (shared with the fuzz
//! targets) over 1000 iterations after a warm-up.
//!
//! The warm-up absorbs the one allocation `bytes` makes the first time a `Vec`-backed
//! `BytesMut` is split (its shared header); after that, each decoded packet is a
//! reference-counted slice of the read buffer.

include!("../../mqtt-proto/tests/support/counting_alloc.rs");

use bytes::BytesMut;
use mqtt_proto::{Decoder, Packet, ProtocolVersion};

use brokk_benches::{connect_v5, publish_16k_v311, publish_64_v311, publish_64_v5, wire};

const WARM_UP: usize = 100;
const MEASURED: usize = 1000;

/// Allocations made by `MEASURED` decode + encode iterations of `packet`.
fn allocations_per_1000(packet: &Packet, version: ProtocolVersion) -> u64 {
    let mut read = wire(packet, version, WARM_UP + MEASURED);
    let mut decoder = Decoder::with_version(version, u32::MAX);
    let mut out = BytesMut::with_capacity(packet.encoded_len(version));
    let mut step = |read: &mut BytesMut| {
        let decoded = match decoder.decode(read) {
            Ok(Some(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(&decoded, packet);
        out.clear();
        decoded.encode(version, &mut out).expect("encodes");
        assert_eq!(out.len(), packet.encoded_len(version));
    };
    for _ in 0..WARM_UP {
        step(&mut read);
    }
    let before = allocations();
    for _ in 0..MEASURED {
        step(&mut read);
    }
    let made = allocations() - before;
    assert!(read.is_empty());
    made
}

#[test]
fn publish_64_bytes_v311_decode_encode_allocates_nothing() {
    assert_eq!(
        allocations_per_1000(&publish_64_v311(), ProtocolVersion::V3_1_1),
        0
    );
}

#[test]
fn publish_64_bytes_v5_with_properties_decode_encode_allocates_nothing() {
    assert_eq!(
        allocations_per_1000(&publish_64_v5(), ProtocolVersion::V5),
        0
    );
}

#[test]
fn publish_16_kib_decode_encode_allocates_nothing() {
    assert_eq!(
        allocations_per_1000(&publish_16k_v311(), ProtocolVersion::V3_1_1),
        0
    );
}

/// `Packet::Connect` is boxed (so that every other packet is small): one
/// allocation per CONNECT, and nothing else.
#[test]
fn connect_v5_decode_encode_allocates_only_its_box() {
    assert_eq!(
        allocations_per_1000(&connect_v5(), ProtocolVersion::V5),
        1000
    );
}

/// The counter is live: without this, a broken allocator hook would make every
/// test above pass.
#[test]
fn counting_allocator_counts() {
    let before = allocations();
    let v = std::hint::black_box(vec![1u8; 64]);
    assert_eq!(allocations() - before, 1);
    drop(v);
}
