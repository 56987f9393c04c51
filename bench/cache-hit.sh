#!/usr/bin/env bash
# bench/cache-hit.sh [TARGET_DIR] [-n N] [--rounds R]: what an exact cache hit costs the gateway.
#
# Starts the mock on core 1 and Sluice (1 worker) on core 0 from TARGET_DIR/release (default
# <repo>/target; build the release binaries first), then runs sluice-load at concurrency 1,
# closed loop, N requests each (default 5000), in R interleaved rounds (default 3):
#   direct   the mock itself (the baseline the gateway adds to)
#   off      a group without a cache
#   nostore  the group's exact cache on, every request `cache-control: no-store`: the key is
#            computed, nothing read or kept (what the cache costs a request that opts out)
#   miss     the cache on, every request `cache-control: no-cache`: the key is computed, the
#            answer captured and stored again (a miss's work but the store's get, about
#            0.1 us: `cache_lookup/miss` in benches/cache.rs)
#   hit      the cache on, the same prompt: 100 % exact hits (the mock is not asked)
# and prints, per run, the gateway's CPU per request (user + system, from /proc/PID/stat), the
# p50 latency and the p50 the gateway adds over `direct` (for `hit`, the whole p50: nothing
# upstream). Everything on 127.0.0.1 (ports 19401, 19480); every process is stopped by PID.
set -euo pipefail

N=5000
ROUNDS=3
TARGET=
while [ $# -gt 0 ]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) TARGET=$(cd "$1" && pwd); shift ;;
  esac
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${TARGET:-$ROOT/target}/release
for b in sluice sluice-mock sluice-load; do
  [ -x "$BIN/$b" ] || { echo "cache-hit.sh: $BIN/$b missing (cargo build --release)" >&2; exit 66; }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

config() { # $1: the group's extra line
  cat <<EOF
auth = "none"
[server]
listen = "127.0.0.1:19480"
workers = 1
pin_workers = true
[log]
level = "warn"
access_log = false
[[providers]]
name = "mock"
base_url = "http://127.0.0.1:19401/v1"
[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "mock-model" }]
$1
EOF
}
config "" >"$WORK/off.toml"
config 'cache = { exact = true, ttl_s = 3600 }' >"$WORK/on.toml"

taskset -c 1 "$BIN/sluice-mock" --listen 127.0.0.1:19401 --workers 1 --pin >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
  curl -fs -o /dev/null -X POST -d '{"model":"m","messages":[{"role":"user","content":"hi"}]}' \
    http://127.0.0.1:19401/v1/chat/completions && break
  sleep 0.1
done
TCK=$(getconf CLK_TCK)

load() { # $1: url, $2: json out, rest: extra sluice-load args
  local url=$1 out=$2
  shift 2
  timeout 300 taskset -c 1 "$BIN/sluice-load" run --url "$url" --concurrency 1 \
    --requests "$N" -q --json "$out" "$@" >/dev/null 2>&1
}
p50() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['latency_us']['p50'])" "$1"; }

printf '%-6s %-7s %10s %10s %10s %12s\n' round run user_us sys_us cpu_us/req p50_us\(+added\)
for round in $(seq "$ROUNDS"); do
  load http://127.0.0.1:19401/v1/chat/completions "$WORK/direct.json"
  direct=$(p50 "$WORK/direct.json")
  printf '%-6s %-7s %10s %10s %10s %12s\n' "$round" direct - - - "$direct"
  for run in off nostore miss hit; do
    cfg=$WORK/on.toml
    extra=()
    case $run in
      off) cfg=$WORK/off.toml ;;
      nostore) extra=(-H 'cache-control: no-store') ;;
      miss) extra=(-H 'cache-control: no-cache') ;;
    esac
    taskset -c 0 "$BIN/sluice" serve --config "$cfg" >"$WORK/gw.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    for _ in $(seq 50); do
      curl -fs -o /dev/null http://127.0.0.1:19480/healthz && break
      sleep 0.1
    done
    url=http://127.0.0.1:19480/v1/chat/completions
    # Warm up (and, for `hit`, store the answer).
    N_SAVED=$N; N=500; load "$url" "$WORK/warm.json" "${extra[@]}"; N=$N_SAVED
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$gw/stat")
    load "$url" "$WORK/$run.json" "${extra[@]}"
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$gw/stat")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    p=$(p50 "$WORK/$run.json")
    python3 -c "
t=$TCK; n=$N; u=($u1-$u0)/t*1e6/n; s=($s1-$s0)/t*1e6/n
added = $p if '$run' == 'hit' else $p - $direct
print('%-6s %-7s %10.2f %10.2f %10.2f %7d(+%d)' % ('$round', '$run', u, s, u+s, $p, added))"
  done
done
