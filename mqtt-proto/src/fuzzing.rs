//! The checks the fuzz targets run, shared with the test that replays the saved
//! corpus and crash artifacts on stable (`tests/fuzz_corpus.rs`), so a finding is
//! re-checked by exactly the code that found it. Not a public API: hidden from the
//! docs, free to change.
//!
//! Every check panics on a violation; that panic is what the fuzzer reports.

use alloc::vec::Vec;
use bytes::BytesMut;

use crate::decode::{decode_packet, Decoder};
use crate::error::DecodeError;
use crate::packet::Packet;
use crate::types::ProtocolVersion;

/// The states a connection's decoder can start in: a server before CONNECT, and a
/// client (or a server after CONNECT) of each version.
pub const STARTING_VERSIONS: [Option<ProtocolVersion>; 4] = [
    None,
    Some(ProtocolVersion::V3_1),
    Some(ProtocolVersion::V3_1_1),
    Some(ProtocolVersion::V5),
];

/// The most bytes one [`Decoder::decode`] call may allocate when `buffered` bytes are
/// waiting in its buffer.
///
/// Why `12 * buffered + 256 + BOXED` holds (sizes on a 64-bit target, where `Bytes`
/// is 32 bytes): decoding copies no topic, string or payload, so what it allocates is
///
/// * the box of a CONNECT or CONNACK (`Packet` boxes those two variants so that
///   every other packet is smaller): a fixed size, the larger of the two, once per
///   packet, whatever its length (a 14-byte CONNECT allocates it whole);
/// * the `Shared` header `bytes` allocates the first time a `Vec`-backed `BytesMut`
///   is split (at most one per call, a few dozen bytes), and the one `Bytes::from`
///   may allocate for gathered user properties: both inside the constant;
/// * the filter list of a SUBSCRIBE, allocated once at its exact length: one 40-byte
///   `(TopicFilter, SubscriptionOptions)` per entry of at least 4 input bytes
///   (length, one character, options), 10 bytes per input byte;
/// * the filter list of an UNSUBSCRIBE: one 32-byte `TopicFilter` per entry of at
///   least 3 input bytes, under 11 bytes per input byte;
/// * the reason codes of a SUBACK or UNSUBACK: one byte per input byte;
/// * the Subscription Identifiers of a PUBLISH: 4 bytes each, from at least 2 input
///   bytes each, in a `Vec` that doubles from 4; counting every reallocation at its
///   full new size, at most 4 times the final length, 8 bytes per input byte (plus
///   16 for the first allocation); and at most one copy of the property block when
///   user properties are interleaved with other properties, 1 byte per input byte.
///
/// The worst case is therefore an UNSUBSCRIBE of one-character filters at 32/3 bytes
/// per input byte; 12 leaves a margin without hiding a quadratic or a
/// length-field-driven allocation, which is what this bound exists to catch.
pub const fn decode_allocation_bound(buffered: usize) -> usize {
    12 * buffered + 256 + BOXED
}

/// Bytes of the box a decoded CONNECT or CONNACK is allocated in.
const BOXED: usize = {
    let connect = core::mem::size_of::<crate::Connect>();
    let connack = core::mem::size_of::<crate::ConnAck>();
    if connect > connack {
        connect
    } else {
        connack
    }
};

/// Feeds `data` into a decoder of every starting version, whole and then one byte at a
/// time, and checks that:
///
/// * nothing panics;
/// * each `decode` call allocates at most [`decode_allocation_bound`] of the bytes
///   buffered, as reported by `allocated_bytes` (a running total of bytes allocated on
///   this thread, kept by the caller's counting global allocator; pass `|| 0` to skip);
/// * the byte-at-a-time run yields the same packets and the same final error as the
///   whole run: the decoder never depends on how input is split.
pub fn check_decode(data: &[u8], allocated_bytes: impl Fn() -> u64) {
    for start in STARTING_VERSIONS {
        let whole = decode_stream(start, data, data.len().max(1), &allocated_bytes);
        let bytewise = decode_stream(start, data, 1, &|| 0);
        assert_eq!(
            whole, bytewise,
            "start {start:?}: whole and byte-at-a-time decoding differ"
        );
    }
}

/// Decodes `data` with every starting version and checks each packet it yields with
/// [`check_packet`].
pub fn check_roundtrip(data: &[u8]) {
    for start in STARTING_VERSIONS {
        let mut decoder = new_decoder(start);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            // A decoder that returned a packet knows its version: it started with one,
            // or the packet was the CONNECT that taught it.
            let version = decoder.version().unwrap_or(ProtocolVersion::V5);
            check_packet(version, &packet);
        }
    }
}

/// Checks one decoded packet: it encodes at `version` without error, to exactly
/// `encoded_len` bytes, the encoding decodes to an equal packet, and encoding that
/// again gives the same bytes (the encoder's form is canonical).
pub fn check_packet(version: ProtocolVersion, packet: &Packet) {
    let len = packet.encoded_len(version);
    let mut out = BytesMut::new();
    if let Err(e) = packet.encode(version, &mut out) {
        panic!("decoded {packet:?} does not encode at {version}: {e}");
    }
    assert_eq!(
        out.len(),
        len,
        "encoded_len disagrees with encode: {packet:?}"
    );
    let encoded = out.freeze();
    let again = match decode_packet(Some(version), encoded.clone()) {
        Ok(p) => p,
        Err(e) => panic!("re-encoded {packet:?} as {encoded:02x?}, which fails to decode: {e}"),
    };
    assert_eq!(&again, packet, "decode(encode(p)) != p for {encoded:02x?}");
    let mut out2 = BytesMut::new();
    if let Err(e) = again.encode(version, &mut out2) {
        panic!("re-decoded {again:?} does not encode: {e}");
    }
    assert_eq!(out2, encoded, "encoding is not canonical");
}

/// Packets and final error of one run, for comparing runs.
type Outcome = (Vec<Packet>, Option<DecodeError>, Option<ProtocolVersion>);

fn new_decoder(start: Option<ProtocolVersion>) -> Decoder {
    // No packet size limit of our own: the input is the only limit, so every packet
    // the bytes can describe reaches the body decoders.
    match start {
        None => Decoder::new(u32::MAX),
        Some(v) => Decoder::with_version(v, u32::MAX),
    }
}

fn decode_stream(
    start: Option<ProtocolVersion>,
    data: &[u8],
    chunk: usize,
    allocated_bytes: &dyn Fn() -> u64,
) -> Outcome {
    let mut decoder = new_decoder(start);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let buffered = buf.len();
            let before = allocated_bytes();
            let result = decoder.decode(&mut buf);
            let allocated = allocated_bytes().wrapping_sub(before);
            let bound = decode_allocation_bound(buffered) as u64;
            assert!(
                allocated <= bound,
                "one decode allocated {allocated} bytes for {buffered} buffered bytes \
                 (bound {bound}): {result:?}"
            );
            match result {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(e) => return (packets, Some(e), decoder.version()),
            }
        }
    }
    (packets, None, decoder.version())
}
