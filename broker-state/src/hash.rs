//! A keyed hasher for the core's maps.
//!
//! Keys are client ids, topic levels and authentication names chosen by clients.
//! An unkeyed or merely seeded hash (FxHash and kin) lets a client pick keys that
//! collide whatever the seed, and flood one bucket (HashDoS; the test below shows
//! such a pair). SipHash-1-3 (std's own choice) under a secret 128-bit key does not:
//! the key comes from the broker's seed, which the server binaries draw from the
//! operating system at start. std's `RandomState` is not used because it reads the
//! OS itself, and the core gives the same outputs for the same inputs and seed.

use core::hash::BuildHasher;
use siphasher::sip::SipHasher13;
use std::collections::HashMap;

/// Builds SipHash-1-3 hashers under one secret key.
#[derive(Clone, Copy, Default)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    pub(crate) fn new(k0: u64, k1: u64) -> Self {
        SeededState { k0, k1 }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SipHasher13;
    #[inline]
    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

pub(crate) type Map<K, V> = HashMap<K, V, SeededState>;

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;

    /// The FxHash-style hasher the core used before: multiply-rotate from a seed.
    fn seeded_fx(seed: u64, bytes: &[u8]) -> u64 {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut h = seed;
        for c in bytes.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        h
    }

    fn keyed(state: SeededState, bytes: &[u8]) -> u64 {
        let mut h = state.build_hasher();
        h.write(bytes);
        h.finish()
    }

    /// Two keys whose words differ in bit 63 of the first and bit 4 of the second:
    /// the multiply keeps a top-bit difference as it is, the rotation moves it to bit
    /// 4, and the second word cancels it, whatever the seed.
    fn colliding_pair() -> ([u8; 16], [u8; 16]) {
        let a = *b"devices/sensor-1";
        let mut b = a;
        b[7] ^= 0x80;
        b[8] ^= 0x10;
        (a, b)
    }

    #[test]
    fn a_seeded_multiply_rotate_hash_collides_for_every_seed_hashdos() {
        let (a, b) = colliding_pair();
        for seed in [0, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(seeded_fx(seed, &a), seeded_fx(seed, &b), "seed {seed:#x}");
        }
    }

    #[test]
    fn the_keyed_hash_separates_that_pair_and_depends_on_the_key() {
        let (a, b) = colliding_pair();
        for (k0, k1) in [(0, 0), (1, 2), (0xdead_beef, 7), (u64::MAX, 3)] {
            let s = SeededState::new(k0, k1);
            assert_ne!(keyed(s, &a), keyed(s, &b), "key ({k0:#x}, {k1:#x})");
        }
        let one = keyed(SeededState::new(1, 2), &a);
        let other = keyed(SeededState::new(3, 4), &a);
        assert_ne!(one, other, "a different key gives a different hash");
        // Deterministic for one key: the core's outputs depend on its seed only.
        assert_eq!(one, keyed(SeededState::new(1, 2), &a));
    }
}
