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

    /// A block the stress test holds: where, its layout, the tag its pattern is
    /// derived from (the thread that wrote it and a serial number), and the thread
    /// that allocated it.
    struct Block {
        addr: usize,
        layout: Layout,
        tag: u64,
        origin: u64,
    }

    /// The bytes a block tagged `tag` holds: the tag at both ends and a byte derived
    /// from it in between, so that two blocks (nearly) never hold the same bytes.
    fn pattern(tag: u64, size: usize) -> Vec<u8> {
        let mut bytes = vec![(tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8; size];
        if size >= 16 {
            bytes[..8].copy_from_slice(&tag.to_le_bytes());
            bytes[size - 8..].copy_from_slice(&tag.to_le_bytes());
        }
        bytes
    }

    /// Many threads allocating, filling, checking and freeing blocks of the pooled
    /// layouts (every size class, every pooled alignment) and of others at once;
    /// some blocks are handed to another thread, which checks and frees (or keeps)
    /// them; some are grown or shrunk with realloc across the pool/system border.
    ///
    /// Every live block carries a pattern unique to it, checked before it is freed,
    /// reallocated or handed over, and every live block's address is in a shared
    /// set. So this fails when the pools hand one block to two owners at once (a
    /// free-list pop that races or does not advance the head: the address is
    /// already in the set, or the other owner's pattern is found), when blocks
    /// overlap (a size class too small for its layout, a chunk carved past its
    /// end, a block given back to the wrong class: a neighbour's pattern is
    /// overwritten), when a block is misaligned, when `alloc_zeroed` returns a used
    /// block without zeroing it, or when `realloc` loses bytes. A single-threaded
    /// test cannot show the first kind; here up to 8 threads contend for the pool
    /// mutex on every operation.
    #[test]
    fn concurrent_threads_never_share_or_overlap_blocks() {
        use std::collections::HashSet;
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        use std::sync::Mutex;

        const THREADS: u64 = 8;
        const OPS: usize = 20_000;
        /// Most blocks one thread holds at once.
        const HELD: usize = 48;
        const ZEROS: [u8; 8192] = [0; 8192];

        let layouts: Vec<Layout> = [
            // pooled: every class from the smallest to the largest, every alignment
            (1, 32),
            (8, 128),
            (100, 64),
            (128, 128),
            (129, 32),
            (256, 128),
            (300, 64),
            (640, 128),
            (1000, 32),
            (1500, 64),
            (1920, 128),
            (2048, 128),
            // not pooled: ordinary alignment, too large, too aligned
            (64, 8),
            (300, 16),
            (2049, 128),
            (5000, 64),
            (100, 256),
        ]
        .iter()
        .map(|&(size, align)| {
            Layout::from_size_align(size, align).expect("a power-of-two alignment")
        })
        .collect();
        assert!(layouts.iter().filter(|l| class(**l).is_some()).count() >= 10);

        let a = PooledAligned::new();
        let live = Mutex::new(HashSet::<usize>::new());
        // What the threads did, to show the interesting paths ran.
        let pooled_allocs = AtomicUsize::new(0);
        let foreign_frees = AtomicUsize::new(0);
        let reallocs = AtomicUsize::new(0);
        let exchange = Mutex::new(Vec::<Block>::new());
        // All threads start together, so that they contend from the first operation.
        let start = std::sync::Barrier::new(THREADS as usize);

        // Checks a block's pattern; `who` says which thread looks.
        let check = |b: &Block, who: u64, what: &str| {
            // SAFETY: the block is live and `layout.size()` bytes long.
            let bytes = unsafe { std::slice::from_raw_parts(b.addr as *const u8, b.layout.size()) };
            assert!(
                bytes == &pattern(b.tag, b.layout.size())[..],
                "thread {who}, {what}: block {:#x} {:?} (written by thread {}, serial {}) was \
                 overwritten: another owner, or an overlapping block",
                b.addr,
                b.layout,
                b.tag >> 32,
                b.tag & 0xFFFF_FFFF
            );
        };
        let claim = |addr: usize, layout: Layout, who: u64| {
            if class(layout).is_some() {
                pooled_allocs.fetch_add(1, Relaxed);
            }
            assert!(addr != 0, "thread {who}: out of memory for {layout:?}");
            assert_eq!(
                addr % layout.align(),
                0,
                "thread {who}: {layout:?} misaligned"
            );
            let fresh = live
                .lock()
                .expect("no thread panicked holding the set")
                .insert(addr);
            assert!(
                fresh,
                "thread {who}: block {addr:#x} handed out while still live"
            );
        };
        // Called before the block goes back: once freed it may be claimed again.
        let release = |addr: usize| {
            assert!(live
                .lock()
                .expect("no thread panicked holding the set")
                .remove(&addr));
        };

        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (a, layouts, exchange) = (&a, &layouts, &exchange);
                let (check, claim, release) = (&check, &claim, &release);
                let (foreign_frees, reallocs, start) = (&foreign_frees, &reallocs, &start);
                s.spawn(move || {
                    // xorshift64*, seeded per thread: deterministic choices.
                    let mut state = 0x2545_F491_4F6C_DD1D_u64 ^ (t + 1).wrapping_mul(0x9E37_79B9);
                    let mut next = move || {
                        state ^= state >> 12;
                        state ^= state << 25;
                        state ^= state >> 27;
                        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
                    };
                    let mut serial = 0u64;
                    let mut tag = move || {
                        serial += 1;
                        t << 32 | serial
                    };
                    let fill = |b: &Block| {
                        let bytes = pattern(b.tag, b.layout.size());
                        // SAFETY: the block is live, ours and `layout.size()` bytes long.
                        unsafe {
                            ptr::copy_nonoverlapping(bytes.as_ptr(), b.addr as *mut u8, bytes.len())
                        };
                    };
                    let mut held: Vec<Block> = Vec::new();
                    start.wait();
                    // OPS operations, and on (within bounds) until blocks have
                    // crossed threads: on a loaded machine the threads may run one
                    // after the other, and a thread then takes back its own blocks.
                    let mut done = 0;
                    while done < OPS || (foreign_frees.load(Relaxed) <= 200 && done < OPS * 50) {
                        done += 1;
                        let choice = next() % 10;
                        let pick = next() as usize;
                        match choice {
                            0..=3 if held.len() < HELD => {
                                let layout = layouts[pick % layouts.len()];
                                let zeroed = pick & 0x100 != 0;
                                // SAFETY: the layout has a non-zero size.
                                let addr = unsafe {
                                    if zeroed {
                                        a.alloc_zeroed(layout)
                                    } else {
                                        a.alloc(layout)
                                    }
                                } as usize;
                                claim(addr, layout, t);
                                if zeroed {
                                    // SAFETY: the block is live and `layout.size()` long.
                                    let bytes = unsafe {
                                        std::slice::from_raw_parts(addr as *const u8, layout.size())
                                    };
                                    assert!(
                                        bytes == &ZEROS[..layout.size()],
                                        "thread {t}: alloc_zeroed {layout:?} is not zero"
                                    );
                                }
                                let b = Block {
                                    addr,
                                    layout,
                                    tag: tag(),
                                    origin: t,
                                };
                                fill(&b);
                                held.push(b);
                            }
                            0..=5 if !held.is_empty() => {
                                let b = held.swap_remove(pick % held.len());
                                check(&b, t, "free");
                                release(b.addr);
                                // SAFETY: allocated by `a` with this layout, freed once.
                                unsafe { a.dealloc(b.addr as *mut u8, b.layout) };
                            }
                            6 if !held.is_empty() => {
                                let i = pick % held.len();
                                let old = &held[i];
                                check(old, t, "realloc");
                                let new_size = layouts[(pick >> 16) % layouts.len()].size();
                                let layout = Layout::from_size_align(new_size, old.layout.align())
                                    .expect("a power-of-two alignment");
                                release(old.addr);
                                // SAFETY: allocated by `a` with `old.layout`; the new
                                // layout is valid (checked above).
                                let addr =
                                    unsafe { a.realloc(old.addr as *mut u8, old.layout, new_size) }
                                        as usize;
                                claim(addr, layout, t);
                                reallocs.fetch_add(1, Relaxed);
                                let kept = old.layout.size().min(new_size);
                                // SAFETY: the block is live and at least `kept` long.
                                let bytes =
                                    unsafe { std::slice::from_raw_parts(addr as *const u8, kept) };
                                assert!(
                                    bytes == &pattern(old.tag, old.layout.size())[..kept],
                                    "thread {t}: realloc {:?} to {new_size} lost bytes",
                                    old.layout
                                );
                                let b = Block {
                                    addr,
                                    layout,
                                    tag: tag(),
                                    origin: t,
                                };
                                fill(&b);
                                held[i] = b;
                            }
                            7 if !held.is_empty() => {
                                let b = held.swap_remove(pick % held.len());
                                check(&b, t, "hand over");
                                exchange.lock().expect("no thread panicked").push(b);
                            }
                            _ => {
                                let taken = exchange.lock().expect("no thread panicked").pop();
                                if let Some(b) = taken {
                                    // Another thread's block (or our own, handed back).
                                    check(&b, t, "take over");
                                    if pick & 1 == 0 || held.len() >= HELD {
                                        if b.origin != t {
                                            foreign_frees.fetch_add(1, Relaxed);
                                        }
                                        release(b.addr);
                                        // SAFETY: allocated by `a` with this layout,
                                        // freed once, here (mostly) on a thread other than
                                        // the one that allocated it.
                                        unsafe { a.dealloc(b.addr as *mut u8, b.layout) };
                                    } else {
                                        let b = Block { tag: tag(), ..b };
                                        fill(&b);
                                        held.push(b);
                                    }
                                }
                            }
                        }
                    }
                    for b in held {
                        check(&b, t, "final free");
                        release(b.addr);
                        // SAFETY: allocated by `a` with this layout, freed once.
                        unsafe { a.dealloc(b.addr as *mut u8, b.layout) };
                    }
                });
            }
        });
        for b in exchange.into_inner().expect("no thread panicked") {
            check(&b, THREADS, "final free");
            foreign_frees.fetch_add(1, Relaxed);
            release(b.addr);
            // SAFETY: allocated by `a` with this layout, freed once.
            unsafe { a.dealloc(b.addr as *mut u8, b.layout) };
        }
        assert!(live.into_inner().expect("no thread panicked").is_empty());
        let (pooled, foreign, reallocs) = (
            pooled_allocs.into_inner(),
            foreign_frees.into_inner(),
            reallocs.into_inner(),
        );
        eprintln!(
            "{pooled} pooled allocations, {foreign} blocks freed on another thread, \
             {reallocs} reallocs"
        );
        assert!(
            pooled > 20_000 && foreign > 200 && reallocs > 5_000,
            "the paths under test hardly ran"
        );
    }
}
