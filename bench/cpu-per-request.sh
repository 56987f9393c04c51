#!/usr/bin/env bash
# bench/cpu-per-request.sh TARGET_DIR... [-n N]: the gateway's CPU per proxied request.
#
# For each target dir (release binaries built beforehand), starts the mock on core 1 and
# Sluice (1 worker) on core 0, warms up, sends N requests (default 100000) closed loop at
# 64 connections, and prints the gateway's user and system CPU per request from
# /proc/PID/stat, and the req/s. Given several dirs, runs them in turn, three rounds,
# interleaved, so they share the machine's noise. Everything on 127.0.0.1 (ports 19301,
# 19380, its admin 19381); every process is stopped by PID.
set -euo pipefail

N=100000
DIRS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) DIRS+=("$(cd "$1" && pwd)"); shift ;;
  esac
done
[ "${#DIRS[@]}" -gt 0 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${SLUICE_HARNESS_DIR:-${DIRS[0]}}/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=bench/configs.sh
. "$ROOT/bench/configs.sh"
BENCH_PIN=true sluice_bench_config bare 127.0.0.1:19380 127.0.0.1:19381 19301 "" "" >"$WORK/sluice.toml"

taskset -c 1 "$HARNESS/sluice-mock" --listen 127.0.0.1:19301 --workers 1 --pin >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
TCK=$(getconf CLK_TCK)
load() {
  timeout 120 taskset -c 1 "$HARNESS/sluice-load" run --url http://127.0.0.1:19380/v1/chat/completions \
    --concurrency 64 --requests "$1" -q
}

for round in 1 2 3; do
  for dir in "${DIRS[@]}"; do
    taskset -c 0 "$dir/release/sluice" serve --config "$WORK/sluice.toml" >"$WORK/gw.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    for _ in $(seq 50); do
      curl -fs -o /dev/null http://127.0.0.1:19380/healthz && break
      sleep 0.1
    done
    load 5000 >/dev/null 2>&1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$gw/stat")
    out=$(load "$N" 2>&1)
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$gw/stat")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    rps=$(printf '%s\n' "$out" | grep -o '= [0-9]* req/s' | grep -o '[0-9]*' || echo '?')
    python3 -c "t=$TCK; n=$N; u=($u1-$u0)/t*1e6/n; s=($s1-$s0)/t*1e6/n; print('round $round  %-40s user %5.2f us  sys %5.2f us  total %5.2f us/req  %s req/s' % ('$dir'[-40:], u, s, u+s, '$rps'))"
  done
done
