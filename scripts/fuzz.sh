#!/usr/bin/env bash
# Fuzzes every sluice-core target in fuzz/ for FUZZ_SECONDS (default 30) each, on stable Rust:
# a release build with LLVM SanitizerCoverage edge counters (fuzz/src/cov.rs) and the mutation
# engine in fuzz/src/engine.rs. Fails on the first input that panics, saved under
# fuzz/artifacts/<target>/ (add it to fuzz/corpus/<target>/ once fixed).
#
#   bash scripts/fuzz.sh                      # all targets
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh stream chunked
#
# The seed corpus is also replayed by `cargo test` in fuzz/ (no instrumentation needed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

seconds="${FUZZ_SECONDS:-30}"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros: they are host
# programs that would otherwise need the coverage callbacks too.
host="$(rustc -vV | sed -n 's/^host: //p')"
flags_var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$flags_var"="-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 -C llvm-args=-sanitizer-coverage-inline-8bit-counters -C llvm-args=-sanitizer-coverage-prune-blocks=0"
# Its own target dir, so instrumented and plain builds do not rebuild each other.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target/fuzz}"

cargo build --locked --release --target "$host" --bin fuzz
bin="$CARGO_TARGET_DIR/$host/release/fuzz"

if [ "$#" -eq 0 ]; then
    set -- all
fi
for target in "$@"; do
    "$bin" --target "$target" --seconds "$seconds"
done
