//! Codec benches: decode and encode of the packets in `brokk_benches`, and
//! decode + encode of the 64-byte PUBLISH together (the per-message work of a broker
//! that forwards it). Results and the command are in `benches/README.md`.
//!
//! Decoding takes packets off a read buffer that holds many, as a connection's
//! buffer does after a socket read. Refilling that buffer (the socket read's memcpy)
//! happens outside the timed loop, so a 16 KiB PUBLISH measures decoding, not
//! copying 16 KiB. Encoding appends to a reserved buffer that is cleared each time.
//! Decoded packets are handled by reference and dropped, as a broker does; a
//! `black_box` of the packet by value would time extra copies of a `Packet`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Bencher, Criterion, Throughput};
use mqtt_proto::{Decoder, Packet, ProtocolVersion};

use brokk_benches::{connect_v5, publish_16k_v311, publish_64_v311, publish_64_v5, wire};

struct Input {
    name: &'static str,
    version: ProtocolVersion,
    packet: Packet,
}

fn inputs() -> Vec<Input> {
    vec![
        Input {
            name: "publish_64B_v311",
            version: ProtocolVersion::V3_1_1,
            packet: publish_64_v311(),
        },
        Input {
            name: "publish_64B_v5_props",
            version: ProtocolVersion::V5,
            packet: publish_64_v5(),
        },
        Input {
            name: "publish_16KiB_v311",
            version: ProtocolVersion::V3_1_1,
            packet: publish_16k_v311(),
        },
        Input {
            name: "connect_v5_props",
            version: ProtocolVersion::V5,
            packet: connect_v5(),
        },
    ]
}

/// Times `handle` on each of `iters` packets decoded from a read buffer refilled,
/// untimed, with up to 4096 (or 1 MiB of) copies of the input at a time.
fn decode_loop(b: &mut Bencher, input: &Input, mut handle: impl FnMut(Packet)) {
    let len = input.packet.encoded_len(input.version);
    let copies = (1 << 20) / len.max(256);
    let copies = copies.clamp(1, 4096);
    let block = wire(&input.packet, input.version, copies);
    let mut buf = BytesMut::with_capacity(block.len());
    let is_connect = matches!(input.packet, Packet::Connect(_));
    let mut decoder = Decoder::with_version(input.version, u32::MAX);
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            buf.clear();
            buf.extend_from_slice(&block);
            let n = left.min(copies as u64);
            let start = Instant::now();
            for _ in 0..n {
                if is_connect {
                    // A server decodes one CONNECT per connection, before it knows
                    // the version: a fresh decoder each time.
                    decoder = Decoder::new(u32::MAX);
                }
                match decoder.decode(&mut buf) {
                    Ok(Some(p)) => handle(p),
                    other => panic!("bench input does not decode: {other:?}"),
                }
            }
            total += start.elapsed();
            left -= n;
        }
        total
    });
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for input in inputs() {
        group.throughput(Throughput::Bytes(
            input.packet.encoded_len(input.version) as u64
        ));
        group.bench_function(input.name, |b| {
            decode_loop(b, &input, |p| {
                black_box(&p);
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for input in inputs() {
        let len = input.packet.encoded_len(input.version);
        group.throughput(Throughput::Bytes(len as u64));
        let mut out = BytesMut::with_capacity(len);
        group.bench_function(input.name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&input.packet)
                    .encode(input.version, &mut out)
                    .expect("bench packets encode");
                black_box(&out);
            })
        });
    }
    group.finish();
}

/// What a broker does per forwarded message: decode it from the read buffer and
/// encode it into a write buffer.
fn decode_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_encode");
    for input in inputs().into_iter().take(2) {
        let len = input.packet.encoded_len(input.version);
        group.throughput(Throughput::Bytes(len as u64));
        let mut out = BytesMut::with_capacity(len);
        group.bench_function(input.name, |b| {
            decode_loop(b, &input, |p| {
                out.clear();
                p.encode(input.version, &mut out)
                    .expect("decoded packets encode");
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, decode_encode);
criterion_main!(benches);
