//! A small, fast, deterministic hasher for the core's maps.
//!
//! std's `RandomState` seeds from the OS, which would make iteration order (and so
//! outputs) differ between runs; the core must give the same outputs for the same
//! inputs. Keys are client ids and topic levels chosen by clients, so a per-broker
//! seed (from the config's rng seed) keeps flooding one bucket expensive to plan.

use core::hash::{BuildHasher, Hasher};
use std::collections::HashMap;

/// FxHash-style multiply-rotate hasher with a seed.
#[derive(Clone, Copy)]
pub(crate) struct SeededHasher {
    hash: u64,
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 59);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Final avalanche so that the low bits hashbrown uses depend on every input bit.
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

impl SeededHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

/// Builds [`SeededHasher`]s from one seed.
#[derive(Clone, Copy, Default)]
pub(crate) struct SeededState {
    seed: u64,
}

impl SeededState {
    pub(crate) fn new(seed: u64) -> Self {
        SeededState { seed }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;
    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher { hash: self.seed }
    }
}

pub(crate) type Map<K, V> = HashMap<K, V, SeededState>;
