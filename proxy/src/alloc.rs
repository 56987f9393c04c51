//! The global allocator: mimalloc, entered by its plain `mi_malloc` family whenever the
//! layout allows, as Rust's own `System` allocator enters `malloc`.
//!
//! `mimalloc::MiMalloc` sends every allocation through `mi_malloc_aligned`. That call takes
//! mimalloc's fast path only for a block of at most 1 KiB whose free list happens to start
//! aligned; anything larger (a request's state, its body, a head's buffer: some six blocks
//! a request) goes through the generic aligned path, a few hundred instructions more each.
//! `mi_malloc` already returns blocks aligned to 16 bytes (8 for blocks of at most 8 bytes:
//! mimalloc rounds its small size classes to 16-byte multiples), so a layout whose alignment
//! is at most 16 and at most its size needs nothing more.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` guarantees (mimalloc's `MI_MAX_ALIGN_SIZE`), for blocks of at least that
/// size.
const MIN_ALIGN: usize = 16;

/// mimalloc, through `mi_malloc` / `mi_zalloc` / `mi_realloc` when the layout allows (see
/// the module docs), through the aligned calls otherwise.
pub struct Mimalloc;

/// Whether `mi_malloc(size)` is aligned enough for `layout`: the same rule as `System`'s
/// (`align <= MIN_ALIGN && align <= size`).
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every method forwards to mimalloc, which returns blocks of at least the requested
// size or null. The plain calls are used only when their alignment suffices (`plain`:
// mimalloc aligns every block of more than 8 bytes to 16, and smaller ones to 8, which is
// at least their layout's alignment since a layout's size is a multiple of its alignment);
// all others go through the aligned calls. `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: a plain call only when its alignment suffices (see the impl's comment).
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the new block keeps `layout`'s alignment
        // (the plain call only when 16-byte alignment, or 8 for at most 8 bytes, suffices).
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size up to 1100 bytes (mimalloc's small blocks end at 1 KiB) and a few larger, every alignment up to 4 KiB: the block is
    /// aligned, writable over its size, zeroed when asked, keeps its bytes when it grows or
    /// shrinks, and is freed.
    #[test]
    fn blocks_are_aligned_and_keep_their_bytes() {
        let a = Mimalloc;
        let sizes = (1..=1100usize).chain([1500, 2048, 4096, 6000, 65_536, 1 << 20, 5 << 20]);
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero-size layout; each block is freed once, with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let grown = size * 2 + 8;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "grown {size} align {align}");
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|b| *b == 0xab));
                    let shrunk = size.div_ceil(2);
                    let grown_layout = Layout::from_size_align(grown, align).unwrap();
                    let r = a.realloc(q, grown_layout, shrunk);
                    assert!(!r.is_null());
                    assert_eq!(r as usize % align, 0, "shrunk {size} align {align}");
                    assert!(std::slice::from_raw_parts(r, shrunk)
                        .iter()
                        .all(|b| *b == 0xab));
                    a.dealloc(r, Layout::from_size_align(shrunk, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    fn the_plain_rule_is_systems() {
        assert!(plain(1, 1));
        assert!(plain(8, 8));
        assert!(plain(16, 16));
        assert!(plain(16, 4096));
        assert!(!plain(16, 8));
        assert!(!plain(32, 64));
        assert!(!plain(128, 8192));
    }
}
