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

static mut MAP: [u8; MAP_SIZE] = [0; MAP_SIZE];
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

/// AFL's hit-count classes: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+, one bit each.
fn bucket(hits: u8) -> u8 {
    match hits {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        128..=255 => 128,
    }
}

/// Coverage seen so far, one bit per (edge, hit-count class).
pub struct Seen {
    bits: Vec<u8>,
    /// Edges hit at least once.
    pub edges_hit: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            bits: vec![0; MAP_SIZE],
            edges_hit: 0,
        }
    }
}

impl Seen {
    /// Merges the last run's hit counts; true when they show a new edge or hit-count class.
    pub fn merge(&mut self) -> bool {
        // SAFETY: as in `reset`; the map is read between runs, when nothing writes it.
        let map: &[u8] =
            unsafe { std::slice::from_raw_parts(&raw const MAP as *const u8, MAP_SIZE) };
        let mut new = false;
        for (chunk, seen) in map.chunks_exact(8).zip(self.bits.chunks_exact_mut(8)) {
            if chunk.iter().all(|b| *b == 0) {
                continue;
            }
            for (hits, s) in chunk.iter().zip(seen.iter_mut()) {
                let b = bucket(*hits);
                if b & !*s != 0 {
                    if *s == 0 {
                        self.edges_hit += 1;
                    }
                    *s |= b;
                    new = true;
                }
            }
        }
        new
    }
}
