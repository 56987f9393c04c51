//! Edge coverage from LLVM SanitizerCoverage, on stable Rust.
//!
//! `scripts/fuzz.sh` builds with `-C passes=sancov-module` and
//! `-C llvm-args=-sanitizer-coverage-trace-pc-guard` (both stable codegen flags; afl.rs uses the
//! same ones). LLVM then gives every edge a 32-bit guard and calls
//! [`__sanitizer_cov_trace_pc_guard`] on it; we number the guards at start-up and count hits in
//! a 64 KiB map, AFL style. LLVM does not instrument functions named `__sanitizer_*`, and these
//! two only do raw pointer arithmetic, so they never call back into themselves.
//!
//! Without those flags (`cargo test`, `cargo run` by hand) nothing calls them: [`edges`] is 0
//! and the engine mutates blindly.

use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes in the hit-count map (a power of two).
pub const MAP_SIZE: usize = 1 << 16;

/// A hit-count or seen-bits map, aligned so it can be read a word at a time.
#[repr(C, align(64))]
pub struct Map([u8; MAP_SIZE]);

static mut MAP: Map = Map([0; MAP_SIZE]);
static GUARDS: AtomicU32 = AtomicU32::new(0);

/// Called once per instrumented module before `main`, with its guard array.
///
/// # Safety
/// Called by LLVM-inserted code with a valid `[start, stop)` range of guards.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard_init(start: *mut u32, stop: *mut u32) {
    if start == stop || *start != 0 {
        return;
    }
    let mut p = start;
    while p < stop {
        // Ids start at 1; 0 would mean "not numbered".
        let id = GUARDS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        *p = id;
        p = p.wrapping_add(1);
    }
}

/// Called on every instrumented edge.
///
/// # Safety
/// Called by LLVM-inserted code with a pointer to one of the guards passed to
/// [`__sanitizer_cov_trace_pc_guard_init`].
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_trace_pc_guard(guard: *const u32) {
    let i = (*guard as usize) & (MAP_SIZE - 1);
    let cell = (&raw mut MAP as *mut u8).wrapping_add(i);
    *cell = (*cell).wrapping_add(1);
}

/// Merges the hit counts into `seen` (one bit per AFL hit-count class: 1, 2, 3, 4-7, 8-15,
/// 16-31, 32-127, 128+); returns whether a bit was new and counts newly hit edges in
/// `new_edges`.
///
/// Named `__sanitizer_*` so that LLVM leaves it uninstrumented: it runs after every input
/// over the whole map, and instrumented it would cost more than most targets and write into
/// the map it reads. It only does raw pointer reads and arithmetic, so it calls nothing that
/// is instrumented.
///
/// # Safety
/// `seen` points to a [`Map`]; nothing else touches the map meanwhile.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_sluice_merge(seen: *mut Map, new_edges: *mut usize) -> bool {
    let hits = &raw const MAP as *const u8;
    let seen = seen as *mut u8;
    let mut new = false;
    let mut w = 0;
    while w < MAP_SIZE {
        // Both maps are 64-byte aligned, so each word read is aligned.
        if *(hits.wrapping_add(w) as *const u64) != 0 {
            let mut i = w;
            while i < w + 8 {
                let h = *hits.wrapping_add(i);
                let class: u8 = if h >= 128 {
                    128
                } else if h >= 32 {
                    64
                } else if h >= 16 {
                    32
                } else if h >= 8 {
                    16
                } else if h >= 4 {
                    8
                } else if h == 3 {
                    4
                } else {
                    h
                };
                let s = seen.wrapping_add(i);
                if class & !*s != 0 {
                    if *s == 0 {
                        *new_edges = (*new_edges).wrapping_add(1);
                    }
                    *s |= class;
                    new = true;
                }
                i += 1;
            }
        }
        w += 8;
    }
    new
}

/// Instrumented edges in this binary (0 when built without coverage).
pub fn edges() -> u32 {
    GUARDS.load(Ordering::Relaxed)
}

/// Clears the hit counts before running an input.
pub fn reset() {
    // SAFETY: the fuzzer is single-threaded; the only other writer is the instrumentation on
    // this same thread.
    unsafe { (&raw mut MAP as *mut u8).write_bytes(0, MAP_SIZE) }
}

/// Coverage seen so far.
pub struct Seen {
    bits: Box<Map>,
    /// Edges hit at least once.
    pub edges_hit: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            bits: Box::new(Map([0; MAP_SIZE])),
            edges_hit: 0,
        }
    }
}

impl Seen {
    /// Merges the last run's hit counts; true when they show a new edge or hit-count class.
    pub fn merge(&mut self) -> bool {
        // SAFETY: `bits` is a Map; the map is read between runs, when nothing writes it.
        unsafe { __sanitizer_sluice_merge(&mut *self.bits, &mut self.edges_hit) }
    }
}
