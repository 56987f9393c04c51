//! Handing free heap memory back to the system after a busy spell, so RSS returns near its
//! idle size: Rust's allocations go through mimalloc (per-thread heaps), C libraries' (SQLite)
//! through glibc's malloc (per-thread arenas). Each keeps freed pages unless asked.

/// Returns the memory the calling thread's mimalloc heap holds free (mimalloc returns emptied
/// pages only as its thread allocates and frees; an idle worker after a burst of connections
/// would otherwise keep their pages). Cheap when there is nothing to return: a worker calls it
/// about once a second, the ledger writer once it goes quiet.
pub fn return_free_memory() {
    // SAFETY: `mi_collect` has no preconditions: it walks the calling thread's mimalloc heap
    // and releases pages nothing is allocated in. Memory allocated by another allocator (the
    // library's tests run under the system allocator) is not touched.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Returns the free pages of glibc's arenas (every thread's) to the OS: what SQLite let go of
/// (`PRAGMA shrink_memory`) stays in its thread's arena otherwise.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas under their locks; it takes
    // no pointer from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returning_free_memory_is_safe_to_call_any_time() {
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![0u8; 100 + i]).collect();
        drop(v);
        return_free_memory();
        return_free_memory();
    }

    #[test]
    fn releasing_free_memory_is_safe_after_churn() {
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(blocks);
        release_free_memory();
        release_free_memory();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again[12345], 7);
    }
}
