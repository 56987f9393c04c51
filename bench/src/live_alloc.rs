//! A global allocator that keeps a histogram of *live* allocations: mimalloc underneath (the
//! allocator `sluice` runs with, so RSS and size classes are the real ones), with, per size
//! bucket, how many blocks are allocated and not yet freed, the bytes asked for and the bytes
//! mimalloc set aside for them (its size class). Used by the `stream-mem` binary to say what
//! each concurrent stream holds, and what stays after the load.
//!
//! Optionally, allocations in one size range can be traced: the next N of them (after
//! [`trace_from_now`]) record their call stack, and [`traced`] says, by stack, how many were
//! made and how many still hold memory. Tracing is slow (a stack capture per traced allocation) and is meant for
//! finding where a size comes from, not for measuring.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: sluice_bench::live_alloc::LiveAlloc = sluice_bench::live_alloc::LiveAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;

use sluice_proxy::alloc::Mimalloc as MiMalloc;

/// Exact buckets (8-byte steps) up to this size; log2 buckets above it.
const EXACT_MAX: usize = 32 * 1024;
const STEP: usize = 8;
const EXACT: usize = EXACT_MAX / STEP;
/// Log2 buckets from 2^15 to 2^47.
const LOG: usize = 33;
const BUCKETS: usize = EXACT + LOG;

struct Bucket {
    live: AtomicI64,
    bytes: AtomicI64,
    usable: AtomicI64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Bucket = Bucket {
    live: AtomicI64::new(0),
    bytes: AtomicI64::new(0),
    usable: AtomicI64::new(0),
};

static HIST: [Bucket; BUCKETS] = [EMPTY; BUCKETS];

thread_local! {
    // Const-initialized, no destructor: reading it never allocates.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn bucket(size: usize) -> usize {
    if size < EXACT_MAX {
        size / STEP
    } else {
        let log = (usize::BITS - 1 - size.leading_zeros()) as usize;
        (EXACT + log.saturating_sub(15)).min(BUCKETS - 1)
    }
}

/// The smallest size that falls in bucket `i`.
fn bucket_floor(i: usize) -> usize {
    if i < EXACT {
        i * STEP
    } else {
        1usize << (i - EXACT + 15)
    }
}

fn usable(ptr: *mut u8) -> usize {
    // SAFETY: `ptr` is a live block that mimalloc returned (the caller just got it, or is
    // about to free it); mi_usable_size only reads its page's metadata.
    unsafe { libmimalloc_sys::mi_usable_size(ptr.cast()) }
}

fn add(ptr: *mut u8, size: usize) {
    let b = &HIST[bucket(size)];
    b.live.fetch_add(1, Ordering::Relaxed);
    b.bytes.fetch_add(size as i64, Ordering::Relaxed);
    b.usable.fetch_add(usable(ptr) as i64, Ordering::Relaxed);
    trace_alloc(ptr, size);
}

fn sub(ptr: *mut u8, size: usize) {
    let b = &HIST[bucket(size)];
    b.live.fetch_sub(1, Ordering::Relaxed);
    b.bytes.fetch_sub(size as i64, Ordering::Relaxed);
    b.usable.fetch_sub(usable(ptr) as i64, Ordering::Relaxed);
    trace_free(ptr, size);
}

/// mimalloc, keeping the live histogram. Install with `#[global_allocator]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveAlloc;

// SAFETY: every method forwards to mimalloc with the caller's arguments unchanged, so its
// guarantees are ours; the bookkeeping touches atomics and a const thread-local, and the
// tracing (off unless asked for) takes a lock and allocates only with the thread marked as
// tracing, which keeps it from recursing.
unsafe impl GlobalAlloc for LiveAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            add(ptr, layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(ptr, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(ptr, layout.size());
        // SAFETY: `ptr` came from this allocator, hence from mimalloc, with this layout.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        sub(ptr, layout.size());
        // SAFETY: `ptr` came from mimalloc with `layout`; the caller upholds `realloc`'s
        // contract for `new_size`.
        let new = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if new.is_null() {
            // The old block is still there.
            add(ptr, layout.size());
        } else {
            add(new, new_size);
        }
        new
    }
}

/// One bucket of a [`Snapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Row {
    /// Smallest size in the bucket (exact to 8 bytes below 32 KiB, a power of two above).
    pub size: usize,
    /// Live blocks.
    pub live: i64,
    /// Bytes asked for by those blocks.
    pub bytes: i64,
    /// Bytes mimalloc set aside for them (their size classes).
    pub usable: i64,
}

/// The live histogram at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Non-empty buckets, by size.
    pub rows: Vec<Row>,
}

impl Snapshot {
    /// Live blocks, bytes and usable bytes over all buckets.
    pub fn total(&self) -> Row {
        self.rows.iter().fold(Row::default(), |a, r| Row {
            size: 0,
            live: a.live + r.live,
            bytes: a.bytes + r.bytes,
            usable: a.usable + r.usable,
        })
    }

    /// What changed from `earlier` to `self`, bucket by bucket (buckets that did not change
    /// are left out).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut by: HashMap<usize, Row> = HashMap::new();
        for r in &self.rows {
            by.insert(r.size, *r);
        }
        for e in &earlier.rows {
            let r = by.entry(e.size).or_insert(Row {
                size: e.size,
                ..Row::default()
            });
            r.live -= e.live;
            r.bytes -= e.bytes;
            r.usable -= e.usable;
        }
        let mut rows: Vec<Row> = by
            .into_values()
            .filter(|r| r.live != 0 || r.bytes != 0)
            .collect();
        rows.sort_by_key(|r| r.size);
        Snapshot { rows }
    }
}

/// The live histogram now.
pub fn snapshot() -> Snapshot {
    let rows = HIST
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let live = b.live.load(Ordering::Relaxed);
            let bytes = b.bytes.load(Ordering::Relaxed);
            (live != 0 || bytes != 0).then(|| Row {
                size: bucket_floor(i),
                live,
                bytes,
                usable: b.usable.load(Ordering::Relaxed),
            })
        })
        .collect();
    Snapshot { rows }
}

// ---------------------------------------------------------------------------------------
// Tracing one size range.

static TRACE_ON: AtomicBool = AtomicBool::new(false);
static TRACE_MIN: AtomicUsize = AtomicUsize::new(0);
static TRACE_MAX: AtomicUsize = AtomicUsize::new(0);
static TRACE_LEFT: AtomicI64 = AtomicI64::new(0);

#[derive(Default)]
struct Traces {
    /// Traced live block → its stack's index.
    live: HashMap<usize, usize>,
    /// (stack, live blocks, live bytes, blocks allocated in all).
    stacks: Vec<(String, i64, i64, i64)>,
    index: HashMap<String, usize>,
}

static TRACES: Mutex<Option<Traces>> = Mutex::new(None);

/// Starts tracing the next `count` allocations of `min..=max` bytes (see the module docs).
pub fn trace_from_now(min: usize, max: usize, count: i64) {
    TRACE_MIN.store(min, Ordering::Relaxed);
    TRACE_MAX.store(max, Ordering::Relaxed);
    TRACE_LEFT.store(count, Ordering::Relaxed);
    TRACE_ON.store(true, Ordering::Release);
}

fn in_range(size: usize) -> bool {
    TRACE_ON.load(Ordering::Relaxed)
        && size >= TRACE_MIN.load(Ordering::Relaxed)
        && size <= TRACE_MAX.load(Ordering::Relaxed)
}

/// Frames worth showing: the source lines of ours and the runtime's (inlined frames too),
/// without the allocator and std plumbing.
fn stack_key() -> String {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let mut out: Vec<String> = Vec::new();
    for line in bt.lines() {
        let Some(at) = line.trim().strip_prefix("at ") else {
            continue;
        };
        let at = match at.find("/monoio-") {
            Some(i) => &at[i + 1..],
            None => at,
        };
        if at.contains("live_alloc") || !(at.starts_with("./") || at.starts_with("monoio-")) {
            continue;
        }
        out.push(at.trim_start_matches("./").to_string());
        if out.len() == 7 {
            break;
        }
    }
    out.join("\n    ")
}

fn trace_alloc(ptr: *mut u8, size: usize) {
    if !in_range(size) || IN_TRACE.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    if TRACE_LEFT.fetch_sub(1, Ordering::Relaxed) <= 0 {
        return;
    }
    IN_TRACE.with(|t| t.set(true));
    if std::env::var_os("STREAM_MEM_RAW").is_some()
        && TRACE_LEFT.load(Ordering::Relaxed) % 5000 == 0
    {
        eprintln!("{}", std::backtrace::Backtrace::force_capture());
    }
    let key = format!("{size} B\n    {}", stack_key());
    if let Ok(mut guard) = TRACES.lock() {
        let t = guard.get_or_insert_with(Traces::default);
        let i = match t.index.get(&key) {
            Some(&i) => i,
            None => {
                t.stacks.push((key.clone(), 0, 0, 0));
                t.index.insert(key, t.stacks.len() - 1);
                t.stacks.len() - 1
            }
        };
        if let Some(s) = t.stacks.get_mut(i) {
            s.1 += 1;
            s.2 += size as i64;
            s.3 += 1;
        }
        t.live.insert(ptr as usize, i);
    }
    IN_TRACE.with(|t| t.set(false));
}

fn trace_free(ptr: *mut u8, size: usize) {
    if !in_range(size) || IN_TRACE.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    IN_TRACE.with(|t| t.set(true));
    if let Ok(mut guard) = TRACES.lock() {
        if let Some(t) = guard.as_mut() {
            if let Some(i) = t.live.remove(&(ptr as usize)) {
                if let Some(s) = t.stacks.get_mut(i) {
                    s.1 -= 1;
                    s.2 -= size as i64;
                }
            }
        }
    }
    IN_TRACE.with(|t| t.set(false));
}

/// The traced stacks: (stack, live blocks, live bytes, blocks allocated since tracing
/// started), most allocated first.
pub fn traced() -> Vec<(String, i64, i64, i64)> {
    IN_TRACE.with(|t| t.set(true));
    let mut out = match TRACES.lock() {
        Ok(guard) => guard
            .as_ref()
            .map(|t| t.stacks.to_vec())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    out.sort_by_key(|s| -s.3);
    IN_TRACE.with(|t| t.set(false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_size_in_order() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(10_240), 10_240 / 8);
        assert_eq!(bucket_floor(bucket(10_240)), 10_240);
        assert_eq!(bucket_floor(bucket(40_000)), 32 * 1024);
        assert_eq!(bucket(usize::MAX), BUCKETS - 1);
        let mut last = 0;
        for s in [1, 8, 100, 4096, 32 * 1024 - 1, 32 * 1024, 1 << 20, 1 << 40] {
            let b = bucket(s);
            assert!(b >= last);
            assert!(bucket_floor(b) <= s);
            last = b;
        }
    }

    #[test]
    fn since_subtracts_bucket_by_bucket() {
        let a = Snapshot {
            rows: vec![Row {
                size: 16,
                live: 3,
                bytes: 48,
                usable: 48,
            }],
        };
        let b = Snapshot {
            rows: vec![
                Row {
                    size: 16,
                    live: 5,
                    bytes: 80,
                    usable: 80,
                },
                Row {
                    size: 1024,
                    live: 1,
                    bytes: 1000,
                    usable: 1024,
                },
            ],
        };
        let d = b.since(&a);
        assert_eq!(d.rows.len(), 2);
        assert_eq!(d.total().live, 3);
        assert_eq!(d.total().usable, 32 + 1024);
    }
}
