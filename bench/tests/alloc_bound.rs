//! Holds the gateway to a bound on heap allocations per proxied non-streaming request
//! (issue 15: a small constant, independent of body size). Runs `alloc-count` (the real
//! gateway in-process under a counting allocator, in front of `sluice-mock`, which must be
//! built next to it: `cargo build --workspace --bins` does, as scripts/test.sh runs first).
//!
//! The bounds are counts, not timings. Set at 30 and 33 when the counts were 28.1 (bare) and
//! 31.2 (keys, ledger, access log); lowered to 18 and 28 when they were at most 16.1 and 25.4
//! (this test's 200 requests, debug build); to 15 and 25 when they were at most 14.1 and
//! 22.7. Raise them only with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

/// Bare gateway: allocations per request, at most.
const MAX_BARE: u32 = 15;
/// With keys, the SQLite ledger, the JSON access log and metrics.
const MAX_FULL: u32 = 25;

fn run(extra: &[&str], max: u32) {
    let exe = env!("CARGO_BIN_EXE_alloc-count");
    let mock = std::path::Path::new(exe).with_file_name("sluice-mock");
    assert!(
        mock.exists(),
        "{} is missing: run cargo build --workspace --bins first",
        mock.display()
    );
    let max = max.to_string();
    let out = Command::new(exe)
        .args(["--requests", "200", "--warmup", "50", "--max-allocs", &max])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run alloc-count: {e}"));
    // The table is on stdout (on stderr with --full, whose stdout is the access log).
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).into_owned();
        let cut = s.len().saturating_sub(2000);
        let cut = (cut..s.len())
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(s.len());
        s[cut..].to_string()
    };
    assert!(
        out.status.success(),
        "{}\n{}",
        tail(&out.stdout),
        tail(&out.stderr)
    );
}

#[test]
fn bare_gateway_stays_under_its_allocation_bound() {
    run(&[], MAX_BARE);
}

#[test]
fn full_gateway_stays_under_its_allocation_bound() {
    run(&["--full"], MAX_FULL);
}
