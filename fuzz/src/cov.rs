//! Edge coverage from LLVM SanitizerCoverage, on stable Rust.
//!
//! `scripts/fuzz.sh` builds with `-C passes=sancov-module` and
//! `-C llvm-args=-sanitizer-coverage-inline-8bit-counters` (stable codegen flags; afl.rs and
//! libFuzzer use the same pass). LLVM then gives every edge an 8-bit counter, incremented
//! inline, and registers each module's counter array by calling
//! [`__sanitizer_cov_8bit_counters_init`] before `main`. After each input the engine folds the
//! counters into AFL-style hit-count classes ([`Seen::merge`]) and clears them.
//!
//! LLVM does not instrument functions named `__sanitizer_*`: the per-input scan and reset are
//! such functions, so they neither cost an increment per byte scanned nor write the counters
//! they read. They only do raw pointer arithmetic, so they call nothing instrumented.
//!
//! Without those flags (`cargo test`, `cargo run` by hand) no counters are registered:
//! [`edges`] is 0 and the engine mutates blindly.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Most counter arrays (one per instrumented codegen unit) tracked.
const MAX_REGIONS: usize = 1 << 14;

static mut REGIONS: [(usize, usize); MAX_REGIONS] = [(0, 0); MAX_REGIONS];
static N_REGIONS: AtomicUsize = AtomicUsize::new(0);
static N_COUNTERS: AtomicUsize = AtomicUsize::new(0);

/// Called once per instrumented module before `main`, with its counter array.
///
/// # Safety
/// Called by LLVM-inserted code with a valid `[start, stop)` range of counters, before any
/// other thread runs.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let n = N_REGIONS.load(Ordering::Relaxed);
    if start >= stop || n >= MAX_REGIONS {
        return;
    }
    let slot = (&raw mut REGIONS as *mut (usize, usize)).wrapping_add(n);
    *slot = (start as usize, stop as usize);
    N_REGIONS.store(n + 1, Ordering::Relaxed);
    N_COUNTERS.fetch_add(stop as usize - start as usize, Ordering::Relaxed);
}

/// Clears every counter.
///
/// # Safety
/// Single-threaded use, as the engine's.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_sluice_reset() {
    let regions = &raw const REGIONS as *const (usize, usize);
    let n = N_REGIONS.load(Ordering::Relaxed);
    let mut r = 0;
    while r < n {
        let (start, stop) = *regions.wrapping_add(r);
        (start as *mut u8).write_bytes(0, stop - start);
        r += 1;
    }
}

/// Folds the counters into `seen` (one bit per AFL hit-count class: 1, 2, 3, 4-7, 8-15,
/// 16-31, 32-127, 128+, for each edge in registration order); returns whether a bit was new,
/// and counts newly hit edges in `new_edges`.
///
/// # Safety
/// `seen` points to [`edges`] bytes; single-threaded use.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_sluice_merge(seen: *mut u8, new_edges: *mut usize) -> bool {
    let regions = &raw const REGIONS as *const (usize, usize);
    let n = N_REGIONS.load(Ordering::Relaxed);
    let mut new = false;
    let mut base = 0;
    let mut r = 0;
    while r < n {
        let (start, stop) = *regions.wrapping_add(r);
        let counters = start as *const u8;
        let len = stop - start;
        let mut i = 0;
        while i < len {
            let h = *counters.wrapping_add(i);
            if h != 0 {
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
                let s = seen.wrapping_add(base + i);
                if class & !*s != 0 {
                    if *s == 0 {
                        *new_edges = (*new_edges).wrapping_add(1);
                    }
                    *s |= class;
                    new = true;
                }
            }
            i += 1;
        }
        base += len;
        r += 1;
    }
    new
}

/// Instrumented edges in this binary (0 when built without coverage).
pub fn edges() -> usize {
    N_COUNTERS.load(Ordering::Relaxed)
}

/// Clears the counters before running an input.
pub fn reset() {
    // SAFETY: the engine is single-threaded; registration finished before `main`.
    unsafe { __sanitizer_sluice_reset() }
}

/// Coverage seen so far.
pub struct Seen {
    bits: Vec<u8>,
    /// Edges hit at least once.
    pub edges_hit: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            bits: vec![0; edges()],
            edges_hit: 0,
        }
    }
}

impl Seen {
    /// Merges the last run's counters; true when they show a new edge or hit-count class.
    pub fn merge(&mut self) -> bool {
        if self.bits.len() < edges() {
            return false;
        }
        // SAFETY: `bits` holds one byte per counter; the counters are read between runs.
        unsafe { __sanitizer_sluice_merge(self.bits.as_mut_ptr(), &mut self.edges_hit) }
    }
}
