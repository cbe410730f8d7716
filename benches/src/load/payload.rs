//! The generator's message payload: who sent it, its sequence number and when.
//!
//! Layout (big-endian): magic `b"BRKL"`, publisher id (u32), sequence number (u64),
//! send time in nanoseconds since the generator started (u64), then padding up to
//! the payload size.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the header; payloads must be at least this long.
pub const HEADER_LEN: usize = 24;
const MAGIC: [u8; 4] = *b"BRKL";

/// Nanoseconds since the first call in this process (monotonic).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The fields a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Publisher id.
    pub publisher: u32,
    /// Sequence number, from 0 per publisher.
    pub seq: u64,
    /// Send time, [`now_ns`] of the sender.
    pub sent_ns: u64,
}

/// Writes `stamp` over the first [`HEADER_LEN`] bytes of `payload`.
pub fn write(payload: &mut [u8], stamp: Stamp) {
    payload[..4].copy_from_slice(&MAGIC);
    payload[4..8].copy_from_slice(&stamp.publisher.to_be_bytes());
    payload[8..16].copy_from_slice(&stamp.seq.to_be_bytes());
    payload[16..24].copy_from_slice(&stamp.sent_ns.to_be_bytes());
}

/// Reads a stamp, or `None` if `payload` is not one of ours.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < HEADER_LEN || payload[..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
    Some(Stamp {
        publisher: u32::from_be_bytes(payload[4..8].try_into().expect("4 bytes")),
        seq: u64_at(8),
        sent_ns: u64_at(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_refused() {
        let mut p = [0x55u8; 64];
        let s = Stamp {
            publisher: 7,
            seq: u64::from(u32::MAX) + 3,
            sent_ns: 123_456_789,
        };
        write(&mut p, s);
        assert_eq!(read(&p), Some(s));
        assert_eq!(read(&p[..HEADER_LEN - 1]), None);
        p[0] = b'X';
        assert_eq!(read(&p), None);
    }
}
