#!/usr/bin/env bash
# bench/pgo-build.sh [OUT_DIR]: a profile-guided (PGO) release build of `sluice`, to measure
# against the plain release build (the shipped build does not use it).
#
# Measured once (eighth session, `sluice-load compare`, one worker each on core 0, six
# interleaved rounds of 2 s, quiet machine): CPU per request at 5,000 req/s 82.5 µs against
# 83.0 and 84.0 for the plain build of the same commit (−1 %), at concurrency 1 87.3 against
# 88.5 and 89.2 µs (−1.6 %), closed loop of 64: 37.8k against 36.5k and 35.2k req/s (+5–7 %).
# Too little at low rates (where Sluice trails nginx) for a second build pipeline, for now.
#
#   1. builds an instrumented `sluice` (-Cprofile-generate) in its own target directory;
#   2. trains it on 127.0.0.1 against the bundled mock, in two gateways (bare; keys, SQLite
#      ledger, JSON access log and metrics on), with the request shapes production carries:
#      chat answers and event streams, one connection and many, an open loop at a steady
#      rate, Anthropic Messages translated to an OpenAI upstream, embeddings, and refusals
#      (unknown model, broken JSON, a missing key);
#   3. merges the profile (llvm-profdata from rustup's llvm-tools) and builds `sluice` with
#      it (-Cprofile-use). Result: OUT_DIR/sluice (default target/pgo/sluice).
#
# About 2.5 release builds and 40 s of training. Needs `rustup component add llvm-tools`.
# Every process it starts is stopped by its PID; traffic stays on 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/target/pgo}
PORT=${SLUICE_PGO_PORT:-19601}
BUILD=$ROOT/target/pgo-build
die() { echo "pgo-build: $*" >&2; exit 1; }
PROFDATA=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f 2>/dev/null | head -1)
[ -n "$PROFDATA" ] || die "llvm-profdata not found: rustup component add llvm-tools"
mkdir -p "$OUT"
RAW=$OUT/raw
rm -rf "$RAW"

echo "pgo-build: instrumented build" >&2
# Counters are placed before link-time optimization: the instrumented build skips LTO.
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$RAW" CARGO_PROFILE_RELEASE_LTO=off \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release --locked \
  --target-dir "$BUILD/gen" -p sluice-proxy --bin sluice)
(cd "$ROOT" && cargo build --release --locked -p sluice-loadtest --bin sluice-mock --bin sluice-load)
GEN=$BUILD/gen/release/sluice
MOCK=$ROOT/target/release/sluice-mock
LOAD=$ROOT/target/release/sluice-load

W=$(mktemp -d "${TMPDIR:-/tmp}/sluice-pgo.XXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
KEY=sk-sluice-pgo-0123456789abcdef
# shellcheck source=bench/configs.sh
. "$ROOT/bench/configs.sh"
gateway() { # MODE PORT (its admin listener on PORT + 1)
  sluice_bench_config "$1" "127.0.0.1:$2" "127.0.0.1:$(($2 + 1))" "$PORT" "$W" "$KEY" >"$W/$1.toml"
  "$GEN" serve --config "$W/$1.toml" >"$W/$1.log" 2>&1 &
  PIDS+=($!)
}
"$MOCK" --listen "127.0.0.1:$PORT" --workers 1 >"$W/mock.log" 2>&1 &
PIDS+=($!)
gateway bare $((PORT + 1))
gateway full $((PORT + 3))
for p in $((PORT + 1)) $((PORT + 3)); do
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$p/healthz" && break
    sleep 0.1
  done
done

echo "pgo-build: training" >&2
AUTH=(-H "authorization: Bearer $KEY")
STREAM=(--stream --expect-chunks 20 --expect-gap-ms 5 -H "x-mock-chunks: 20" -H "x-mock-chunk-delay-ms: 5")
printf '{"model":"mock-fast","max_tokens":64,"messages":[{"role":"user","content":"hello there"}]}' >"$W/messages.json"
printf '{"model":"mock-embed","input":["one","two","three"]}' >"$W/embed.json"
for p in $((PORT + 1)) $((PORT + 3)); do
  H=()
  [ "$p" = $((PORT + 3)) ] && H=("${AUTH[@]}")
  U=http://127.0.0.1:$p/v1
  L=(timeout -k 5 60 "$LOAD" run --threads 1 --quiet --duration 3s "${H[@]}")
  "${L[@]}" --url "$U/chat/completions" --concurrency 1 >/dev/null
  "${L[@]}" --url "$U/chat/completions" --concurrency 64 >/dev/null
  "${L[@]}" --url "$U/chat/completions" --rate 3000 --timeout 5s >/dev/null
  "${L[@]}" --url "$U/chat/completions" --concurrency 32 "${STREAM[@]}" >/dev/null
  # The load generator checks OpenAI chat answers; these two shapes are only exercised.
  "${L[@]}" --url "$U/messages" --concurrency 8 --body "$W/messages.json" \
    -H "anthropic-version: 2023-06-01" >/dev/null || true
  "${L[@]}" --url "$U/embeddings" --concurrency 8 --body "$W/embed.json" >/dev/null || true
  for _ in $(seq 200); do
    curl -s -o /dev/null "$U/chat/completions" "${H[@]}" -d '{"model":"nope","messages":[]}'
    curl -s -o /dev/null "$U/chat/completions" "${H[@]}" -d '{"model":'
  done
done
for _ in $(seq 200); do
  curl -s -o /dev/null "http://127.0.0.1:$((PORT + 3))/v1/chat/completions" \
    -d '{"model":"mock-fast","messages":[]}'
done
# A graceful stop writes the profile (at exit).
for p in "${PIDS[@]:1}"; do kill -TERM "$p"; done
for p in "${PIDS[@]:1}"; do wait "$p" 2>/dev/null || true; done
ls "$RAW"/*.profraw >/dev/null 2>&1 || die "no profile written (did the gateways exit cleanly?)"

echo "pgo-build: merge and optimized build" >&2
"$PROFDATA" merge -o "$OUT/sluice.profdata" "$RAW"
(cd "$ROOT" && RUSTFLAGS="-Cprofile-use=$OUT/sluice.profdata" \
  cargo build --release --locked --target-dir "$BUILD/use" -p sluice-proxy --bin sluice)
cp "$BUILD/use/release/sluice" "$OUT/sluice"
echo "pgo-build: $OUT/sluice" >&2
