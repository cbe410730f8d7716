//! The servers' global allocator: the system allocator, except for small
//! over-aligned blocks, which come from pools of their own.
//!
//! tokio gives every task cell and every socket registration (`ScheduledIo`) a
//! 128-byte alignment, so a connection's task and socket cost two `posix_memalign`
//! calls. glibc (2.36, Debian 12) serves an aligned request by carving a larger
//! chunk and does not hand a freed aligned chunk to the next aligned request of the
//! same size: with connections parking and resuming ([`crate::park`]), every task
//! and registration that ended left its chunk behind as free but resident memory
//! (`malloc_info` after 10,000 connections: 10,902 free 272-byte chunks and 3,494
//! of about 1 KiB, 830 bytes per connection).
//!
//! [`PooledAligned`] keeps blocks whose alignment is above 16 and at most 128 bytes
//! and whose size is at most 2 KiB in free lists by size (multiples of 128 bytes),
//! carved from 64 KiB chunks; a freed block is the next one handed out for its
//! size. The pools never shrink: they hold at most what was in use at the peak.
//! Everything else goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// Size step (and alignment) of the pooled blocks.
const STEP: usize = 128;
/// The largest pooled block.
const MAX_POOLED: usize = 2048;
/// Size classes: 128, 256, ..., 2048 bytes.
const CLASSES: usize = MAX_POOLED / STEP;
/// Memory taken from the system at a time for the pools.
const CHUNK: usize = 64 * 1024;

/// The global allocator of `brokk` and `brokk-smol` (see the module docs).
pub struct PooledAligned {
    pools: Mutex<Pools>,
}

struct Pools {
    /// Heads of the free lists; a free block's first word points to the next.
    free: [*mut u8; CLASSES],
    /// Unused rest of the current chunk.
    next: *mut u8,
    left: usize,
}

// SAFETY: the pointers are only read and written under the mutex, and the memory
// they point to belongs to the allocator, not to a thread.
unsafe impl Send for Pools {}

impl PooledAligned {
    /// An allocator with empty pools.
    pub const fn new() -> Self {
        PooledAligned {
            pools: Mutex::new(Pools {
                free: [ptr::null_mut(); CLASSES],
                next: ptr::null_mut(),
                left: 0,
            }),
        }
    }
}

impl Default for PooledAligned {
    fn default() -> Self {
        PooledAligned::new()
    }
}

/// The size class of a layout the pools serve, if they serve it.
fn class(layout: Layout) -> Option<usize> {
    let pooled = layout.align() > 16 && layout.align() <= STEP && layout.size() <= MAX_POOLED;
    pooled.then(|| layout.size().max(1).div_ceil(STEP) - 1)
}

impl Pools {
    /// A block of class `c`, or null when the system has no memory.
    ///
    /// # Safety
    /// The caller holds the mutex (it has `&mut self`).
    unsafe fn take(&mut self, c: usize) -> *mut u8 {
        let head = self.free[c];
        if !head.is_null() {
            // SAFETY: a free block starts with the pointer to the next free block.
            self.free[c] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = (c + 1) * STEP;
        if self.left < size {
            // The rest of the chunk (a multiple of STEP, smaller than `size`, so of
            // a class) becomes a free block of its size.
            if self.left >= STEP {
                // SAFETY: the rest is unused, STEP-aligned and of class left/STEP - 1.
                unsafe { self.give(self.left / STEP - 1, self.next) };
            }
            // SAFETY: the layout is non-zero and its alignment a power of two.
            let chunk = unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, STEP)) };
            if chunk.is_null() {
                return chunk;
            }
            self.next = chunk;
            self.left = CHUNK;
        }
        let block = self.next;
        // SAFETY: `size <= left`, so the block lies within the chunk.
        self.next = unsafe { block.add(size) };
        self.left -= size;
        block
    }

    /// Returns a block of class `c`.
    ///
    /// # Safety
    /// `block` came from `take(c)` and is no longer used.
    unsafe fn give(&mut self, c: usize, block: *mut u8) {
        // SAFETY: the block is at least STEP bytes, STEP-aligned and ours again.
        unsafe { block.cast::<*mut u8>().write(self.free[c]) };
        self.free[c] = block;
    }
}

// SAFETY: pooled blocks are STEP-aligned (chunks are, and every block size is a
// multiple of STEP) and at least as large as the layout asks; a block is handed
// out at most once until it is freed. Everything else is the system allocator's.
unsafe impl GlobalAlloc for PooledAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            Some(c) => match self.pools.lock() {
                // SAFETY: the guard is the mutex held.
                Ok(mut pools) => unsafe { pools.take(c) },
                Err(_) => ptr::null_mut(),
            },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class(layout) {
            // SAFETY: as for alloc; the block is then ours to write.
            Some(_) => unsafe {
                let block = self.alloc(layout);
                if !block.is_null() {
                    ptr::write_bytes(block, 0, layout.size());
                }
                block
            },
            // SAFETY: forwarded with the caller's guarantees (calloc skips zeroing
            // fresh pages).
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class(layout) {
            Some(c) => {
                if let Ok(mut pools) = self.pools.lock() {
                    // SAFETY: a block of this layout came from `take(c)`.
                    unsafe { pools.give(c, block) };
                }
            }
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class(layout).is_none() && class(new_layout).is_none() {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // SAFETY: as for alloc and dealloc; the copy stays within both blocks.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_blocks_are_aligned_distinct_and_reused() {
        let a = PooledAligned::new();
        let layout =
            Layout::from_size_align(256, 128).expect("a power-of-two alignment and a small size");
        // SAFETY: every block is freed once with its own layout.
        unsafe {
            let blocks: Vec<*mut u8> = (0..600).map(|_| a.alloc(layout)).collect();
            for (i, b) in blocks.iter().enumerate() {
                assert!(!b.is_null());
                assert_eq!(*b as usize % 128, 0);
                ptr::write_bytes(*b, i as u8, 256);
            }
            // more than one chunk's worth, no overlaps: each still holds its mark
            for (i, b) in blocks.iter().enumerate() {
                assert!(std::slice::from_raw_parts(*b, 256)
                    .iter()
                    .all(|&x| x == i as u8));
            }
            let last = *blocks.last().expect("600 blocks were taken");
            a.dealloc(last, layout);
            let again = a.alloc_zeroed(layout);
            assert_eq!(again, last, "a freed block is the next one handed out");
            assert!(std::slice::from_raw_parts(again, 256)
                .iter()
                .all(|&x| x == 0));
            for b in blocks {
                a.dealloc(b, layout);
            }
        }
    }

    #[test]
    fn realloc_moves_between_pool_and_system_keeping_the_bytes() {
        let a = PooledAligned::new();
        let small =
            Layout::from_size_align(100, 64).expect("a power-of-two alignment and a small size");
        // SAFETY: each block is used within its size and freed with its layout.
        unsafe {
            let b = a.alloc(small);
            assert_eq!(b as usize % 64, 0);
            ptr::write_bytes(b, 7, 100);
            let big = a.realloc(b, small, 5000);
            assert_eq!(big as usize % 64, 0);
            assert!(std::slice::from_raw_parts(big, 100).iter().all(|&x| x == 7));
            let big_layout = Layout::from_size_align(5000, 64)
                .expect("a power-of-two alignment and a small size");
            let back = a.realloc(big, big_layout, 200);
            assert!(std::slice::from_raw_parts(back, 100)
                .iter()
                .all(|&x| x == 7));
            a.dealloc(
                back,
                Layout::from_size_align(200, 64)
                    .expect("a power-of-two alignment and a small size"),
            );
            // ordinary layouts are the system's
            let plain =
                Layout::from_size_align(64, 8).expect("a power-of-two alignment and a small size");
            let p = a.alloc(plain);
            assert!(!p.is_null());
            a.dealloc(p, plain);
        }
    }
}
