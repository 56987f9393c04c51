//! A counting global allocator: every allocation (and reallocation) the process makes goes
//! to the system allocator and is counted, with the bytes asked for, except on threads that
//! opted out with [`skip_this_thread`] (a load generator's own thread, so that only the
//! gateway's allocations count). Used by the `alloc-count` binary:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: sluice_bench::alloc_count::CountingAlloc = sluice_bench::alloc_count::CountingAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Whether counted allocations also record where they were made (see [`trace_sites`]).
static TRACE: AtomicBool = AtomicBool::new(false);
/// The recorded sites: the size asked for and the call stack.
static SITES: Mutex<Vec<(usize, Backtrace)>> = Mutex::new(Vec::new());

thread_local! {
    // Const-initialized and without a destructor, so reading it never allocates (which
    // would recurse into the allocator).
    static SKIP: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread records a site: the recording's own allocations are neither
    /// counted nor recorded.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Starts (or stops) recording the call stack of every counted allocation. Slow (a
/// backtrace each): for a handful of requests, to list the allocation sites.
pub fn trace_sites(on: bool) {
    TRACE.store(on, Ordering::SeqCst);
}

/// The sites recorded so far (size asked for, call stack), emptied.
pub fn take_sites() -> Vec<(usize, Backtrace)> {
    let _guard = Guard::enter();
    SITES
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default()
}

/// Marks this thread as recording (see `IN_TRACE`) until dropped.
struct Guard;

impl Guard {
    fn enter() -> Guard {
        IN_TRACE.with(|t| t.set(true));
        Guard
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        IN_TRACE.with(|t| t.set(false));
    }
}

/// The system allocator, counting. Install with `#[global_allocator]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

/// Allocations and bytes asked for so far (reallocations count as allocations, with their
/// new size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls to alloc, alloc_zeroed and realloc.
    pub allocs: u64,
    /// Bytes those calls asked for.
    pub bytes: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            allocs: self.allocs.saturating_sub(earlier.allocs),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }
}

/// The counts so far, over every thread that did not opt out.
pub fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::Relaxed),
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Stops counting the calling thread's allocations.
pub fn skip_this_thread() {
    SKIP.with(|s| s.set(true));
}

fn count(size: usize) {
    // `try_with`: during thread teardown the slot may be gone; count then.
    if SKIP.try_with(Cell::get).unwrap_or(false) || IN_TRACE.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if TRACE.load(Ordering::Relaxed) {
        let _guard = Guard::enter();
        let bt = Backtrace::force_capture();
        if let Ok(mut sites) = SITES.lock() {
            sites.push((size, bt));
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// System's guarantees (alignment, size, ownership of the returned block) are ours; the
// counting only touches atomics and a const thread-local, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract (non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The lib's test binary runs on the counting allocator, so these exercise it.
    #[global_allocator]
    static ALLOC: CountingAlloc = CountingAlloc;

    #[test]
    fn counts_allocations_and_bytes_and_skips_opted_out_threads() {
        let before = counts();
        let mut v: Vec<u8> = Vec::with_capacity(4096);
        v.extend_from_slice(&[1; 4096]);
        v.reserve(100_000);
        let zeroed = vec![0u8; 1000];
        std::hint::black_box((&v, &zeroed));
        let d = counts().since(before);
        // Other tests run on other threads at the same time: at least ours are there.
        assert!(d.allocs >= 3, "{d:?}");
        assert!(d.bytes >= 4096 + 104_096 + 1000, "{d:?}");
        drop((v, zeroed));

        // A thread that opted out adds nothing of its own (others may still count, so
        // compare a large allocation with the total).
        let before = counts();
        std::thread::spawn(|| {
            skip_this_thread();
            let big: Vec<u8> = Vec::with_capacity(64 << 20);
            std::hint::black_box(&big);
        })
        .join()
        .unwrap_or_default();
        let d = counts().since(before);
        assert!(d.bytes < 64 << 20, "{d:?}");
    }
}
