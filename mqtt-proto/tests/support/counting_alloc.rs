// A counting global allocator, shared by `include!` between the fuzz targets
// (fuzz/fuzz_targets/*.rs), the corpus replay test (mqtt-proto/tests/fuzz_corpus.rs)
// and the allocation test of the benches (benches/tests/alloc_codec.rs), so all three
// measure allocations the same way.
//
// Counters are per thread: the test harness runs tests on several threads at once,
// and only the current thread's allocations belong to the code under test. The
// thread-locals are `const`-initialised `Cell`s without destructors, so touching
// them never allocates (no lazy initialisation, no destructor registration) and
// they are safe to use inside the allocator itself.

/// Counts allocations and allocated bytes on each thread, then defers to `System`.
pub struct CountingAlloc;

std::thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static ALLOCATED_BYTES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn record_allocation(bytes: usize) {
    // `try_with` fails only while the thread is being torn down; those allocations
    // belong to no measurement.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOCATED_BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

/// Allocations (including reallocations) made by this thread so far.
#[allow(dead_code)]
pub fn allocations() -> u64 {
    ALLOCATIONS.try_with(|c| c.get()).unwrap_or(0)
}

/// Bytes allocated by this thread so far; a reallocation counts its full new size,
/// since it may move the block.
#[allow(dead_code)]
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.try_with(|c| c.get()).unwrap_or(0)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged;
// the counters touch no allocator state.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        record_allocation(layout.size());
        // SAFETY: forwarded unchanged, see above.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        record_allocation(layout.size());
        // SAFETY: forwarded unchanged, see above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged, see above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(
        &self,
        ptr: *mut u8,
        layout: std::alloc::Layout,
        new_size: usize,
    ) -> *mut u8 {
        record_allocation(new_size);
        // SAFETY: forwarded unchanged, see above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;
