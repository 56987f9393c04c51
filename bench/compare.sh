#!/usr/bin/env bash
# bench/compare.sh [--quick]: Sluice vs nginx vs the mock directly, on 127.0.0.1.
#
# Builds the release binaries, starts two mocks (one on the gateway's core for
# the direct-xcore baseline), two Sluice gateways (bare, and sluice_full with
# keys, the SQLite ledger, the access log and metrics) and nginx (a plain
# keep-alive reverse proxy on the same mock), runs the standard suite and the
# idle-connections phase with sluice-load and writes
# $OUT/report.md, $OUT/report.json and $OUT/latency.svg (OUT defaults to
# target/bench). See bench/README.md for what each number means.
#
# Environment:
#   SLUICE_TARGET_DIR        cargo target dir (default: <repo>/target)
#   SLUICE_BENCH_OUT         output dir (default: $SLUICE_TARGET_DIR/bench)
#   SLUICE_BENCH_PORT_BASE   ports used: base+1, base+2, base+80..82, base+90..91 (default 19100)
#   SLUICE_BENCH_NO_NGINX=1  skip nginx (no install, no runs)
#   SLUICE_BENCH_NO_BUILD=1  use the binaries already built
#   SLUICE_BENCH_SWEEP_GAP_MS chunk pacing of the concurrent-streams sweep (default 50)
#   SLUICE_BENCH_IDLE_CONNS  connections of the idle-connections phase (default 10000; 0 skips it)
#   SLUICE_DRIVER            passed through to Sluice and the mocks (io_uring or epoll)
set -euo pipefail

usage() {
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $arg (try --help)" >&2; exit 64 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/configs.sh
. "$ROOT/bench/configs.sh"
TARGET_DIR=${SLUICE_TARGET_DIR:-$ROOT/target}
OUT=${SLUICE_BENCH_OUT:-$TARGET_DIR/bench}
RAW=$OUT/raw
BIN=$TARGET_DIR/release
PORT_BASE=${SLUICE_BENCH_PORT_BASE:-19100}
MOCK_PORT=$((PORT_BASE + 1))
XCORE_PORT=$((PORT_BASE + 2))
SLUICE_PORT=$((PORT_BASE + 80))
NGINX_PORT=$((PORT_BASE + 81))
FULL_PORT=$((PORT_BASE + 82))
ADMIN_PORT=$((PORT_BASE + 90))
FULL_ADMIN_PORT=$((PORT_BASE + 91))
# sluice_full's one virtual key: written into its config, sent by sluice-load.
FULL_KEY=sk-sluice-bench-full-0123456789
IDLE_CONNS=${SLUICE_BENCH_IDLE_CONNS:-10000}
PATH_=/v1/chat/completions
T0=$(date +%s)

log() { printf '[compare %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# The suite. Quick: same phases, short runs (< 2 min of load in all).
if [ "$QUICK" = 1 ]; then
  MODE=quick
  ROUNDS=2 ROUND_D=1s ROUND_S=1
  CLOSED_ROUNDS=2
  STREAM_ROUNDS=2 STREAM_D=1.5s STREAM_S=1.5
  SWEEP_COUNTS=512,2048 SWEEP_D=2s SWEEP_S=2
  WARM_D=0.5s
else
  MODE=full
  ROUNDS=4 ROUND_D=3s ROUND_S=3
  CLOSED_ROUNDS=3
  # Streams get 6 s rounds: at 150 a second a 3 s round held 450 streams, so its TTFT p99
  # was the 5th worst of them, and one scheduler hiccup decided a verdict.
  STREAM_ROUNDS=4 STREAM_D=6s STREAM_S=6
  SWEEP_COUNTS=256,1024,2048,4096 SWEEP_D=3s SWEEP_S=3
  WARM_D=1s
fi
RATES=(1000 5000)
CLOSED_CONNS=64
# Streams start open loop at a steady rate, evenly spaced (about 32 in flight, each
# ~215 ms), for every system alike. A closed loop of 32 kept them in lockstep: all 32
# started, and every chunk of all 32 arrived, in the same instant, so each round's p99 was
# the tail of its worst burst on the core the mock and the load generator share (the mock
# alone, no gateway in between, measured a TTFT p99 of 1.0-1.8 ms against a p50 of 0.28).
STREAM_CHUNKS=20 STREAM_GAP_MS=10 STREAM_RATE=150
# The concurrent-streams sweep paces chunks at 50 ms (20 tokens/s, a slow but real
# model): at 10 ms, 2048 streams are 200k events/s, which the mock and the load
# generator sharing one core cannot carry cleanly even with no gateway in between.
SWEEP_GAP_MS=${SLUICE_BENCH_SWEEP_GAP_MS:-50}

# ---------------------------------------------------------------------------
# Pinning. On 2 cores: the gateway (Sluice or nginx, one worker) owns core 0;
# the mock and the load generator share core 1; the direct-xcore mock sits on
# core 0, where the gateway runs, so that baseline pays the same cross-core
# hop the gateway path pays. With 3+ cores the load generator gets core 2.
NCPU=$(nproc)
if [ "$NCPU" -ge 3 ]; then
  GW_CORE=0 MOCK_CORE=1 LOAD_CORE=2
elif [ "$NCPU" -eq 2 ]; then
  GW_CORE=0 MOCK_CORE=1 LOAD_CORE=1
else
  GW_CORE=0 MOCK_CORE=0 LOAD_CORE=0
fi
XCORE_CORE=$GW_CORE
GW_WORKERS=1

# ---------------------------------------------------------------------------
# Processes: everything we start is recorded and stopped by PID on exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  mkdir -p "$OUT/logs"
  cp "$WORK"/*.log "$WORK"/*.toml "$WORK"/nginx/nginx.conf "$OUT/logs/" 2>/dev/null || true
  head -c 65536 "$WORK/full/access.jsonl" >"$OUT/logs/sluice-full-head.log" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until something answers HTTP on port $1 (5 s at most).
wait_port() {
  for _ in $(seq 100); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; then
      return 0
    fi
    sleep 0.05
  done
  return 1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sum of a /proc/PID/status field (VmRSS, VmHWM) over the given pids, in KiB.
kib() {
  local field=$1 sum=0 v
  shift
  for pid in "$@"; do
    v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# ---------------------------------------------------------------------------
# nginx: install from Debian's packages if missing.
NGINX=""
if [ "${SLUICE_BENCH_NO_NGINX:-0}" != 1 ]; then
  NGINX=$(command -v nginx || true)
  [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
  if [ -z "$NGINX" ]; then
    SUDO=""
    [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && SUDO="sudo -n"
    log "nginx missing: installing nginx-light from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    inst() { $SUDO apt-get install -y -q nginx-light >/dev/null 2>&1 || $SUDO apt-get install -y -q nginx >/dev/null 2>&1; }
    if ! inst; then
      log "install failed: apt-get update, then again"
      $SUDO apt-get update -q >/dev/null 2>&1 || true
      inst || true
    fi
    # The package starts a system nginx on port 80; it is not ours and not in the way.
    NGINX=$(command -v nginx || true)
    [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
    [ -z "$NGINX" ] && log "warning: could not install nginx; the report will have no nginx column"
  fi
fi
NGINX_VERSION=""
[ -n "$NGINX" ] && NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')

# ---------------------------------------------------------------------------
# Build.
B0=$(date +%s)
if [ "${SLUICE_BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building release binaries in $TARGET_DIR"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --quiet \
    -p sluice-proxy -p sluice-loadtest -p sluice-bench --bins) || die "build failed"
fi
BUILD_S=$(($(date +%s) - B0))
for b in sluice sluice-mock sluice-load sluice-bench-report; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing"
done
S0=$(date +%s)
LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg)

# More file descriptors for thousands of streams (children inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for p in $MOCK_PORT $XCORE_PORT $SLUICE_PORT $NGINX_PORT $FULL_PORT $ADMIN_PORT $FULL_ADMIN_PORT; do
  port_free "$p" || die "port $p is in use (set SLUICE_BENCH_PORT_BASE)"
done
rm -rf "$RAW"
mkdir -p "$RAW" "$OUT"

# ---------------------------------------------------------------------------
# Start the systems.
log "layout: gateway core $GW_CORE, mock core $MOCK_CORE, direct-xcore mock core $XCORE_CORE, load core $LOAD_CORE ($MODE)"
taskset -c "$MOCK_CORE" "$BIN/sluice-mock" --listen "127.0.0.1:$MOCK_PORT" --workers 1 --pin \
  >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
taskset -c "$XCORE_CORE" "$BIN/sluice-mock" --listen "127.0.0.1:$XCORE_PORT" --workers 1 --pin \
  >"$WORK/mock-xcore.log" 2>&1 &
PIDS+=($!)

BENCH_PIN=true sluice_bench_config bare "127.0.0.1:$SLUICE_PORT" "127.0.0.1:$ADMIN_PORT" \
  "$MOCK_PORT" "" "" >"$WORK/sluice.toml"
taskset -c "$GW_CORE" "$BIN/sluice" serve --config "$WORK/sluice.toml" >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!
PIDS+=("$SLUICE_PID")

# sluice_full: what users run (bench/configs.sh says what is on). The same core, one worker.
mkdir -p "$WORK/full"
BENCH_PIN=true sluice_bench_config full "127.0.0.1:$FULL_PORT" "127.0.0.1:$FULL_ADMIN_PORT" \
  "$MOCK_PORT" "$WORK/full" "$FULL_KEY" >"$WORK/sluice-full.toml"
# The access log is large (a line per request): it stays in the temp dir; its first
# 64 KiB are kept in logs/ and its line count in meta.json.
taskset -c "$GW_CORE" "$BIN/sluice" serve --config "$WORK/sluice-full.toml" \
  >"$WORK/full/access.jsonl" 2>&1 &
FULL_PID=$!
PIDS+=("$FULL_PID")

NGINX_PID="" NGINX_PIDS=()
if [ -n "$NGINX" ]; then
  mkdir -p "$WORK/nginx"
  USER_LINE=""
  [ "$(id -u)" = 0 ] && USER_LINE="user root;"
  cat >"$WORK/nginx/nginx.conf" <<EOF
# Written by bench/compare.sh: a plain keep-alive reverse proxy on the mock.
$USER_LINE
worker_processes $GW_WORKERS;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    # The same accept backlog as Sluice and the mock (nginx's default is 511).
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  taskset -c "$GW_CORE" "$NGINX" -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" \
    -e "$WORK/nginx-error.log" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
fi

wait_port "$MOCK_PORT" || die "mock did not start: $(cat "$WORK/mock.log")"
wait_port "$XCORE_PORT" || die "direct-xcore mock did not start: $(cat "$WORK/mock-xcore.log")"
wait_port "$SLUICE_PORT" || die "sluice did not start: $(tail -5 "$WORK/sluice.log")"
wait_port "$FULL_PORT" || die "sluice_full did not start: $(tail -5 "$WORK/full/access.jsonl")"
if [ -n "$NGINX_PID" ]; then
  if wait_port "$NGINX_PORT"; then
    sleep 0.2
    mapfile -t NGINX_PIDS < <(echo "$NGINX_PID"; ps -o pid= --ppid "$NGINX_PID" | tr -d ' ')
  else
    log "warning: nginx did not start ($(tail -3 "$WORK/nginx-error.log" 2>/dev/null)); no nginx column"
    NGINX_PID=""
  fi
fi
DRIVER=$(sed -n 's/.*"driver":"\([a-z_]*\)".*/\1/p' "$WORK/sluice.log" | head -1)

DIRECT=http://127.0.0.1:$MOCK_PORT$PATH_
XCORE=http://127.0.0.1:$XCORE_PORT$PATH_
GATEWAY=http://127.0.0.1:$SLUICE_PORT$PATH_
FULL=http://127.0.0.1:$FULL_PORT$PATH_
AUTH_HEADER="authorization: Bearer $FULL_KEY"
NGINX_URL=""
[ -n "$NGINX_PID" ] && NGINX_URL=http://127.0.0.1:$NGINX_PORT$PATH_

# One request per system and shape, so the suite does not run against a broken setup.
# check URL [HEADER]
check() {
  local url=$1 body out
  local hdr=(-H 'content-type: application/json')
  [ -n "${2:-}" ] && hdr+=(-H "$2")
  body='{"model":"mock-fast","messages":[{"role":"user","content":"hi"}]}'
  out=$(curl -sf --max-time 5 "$url" "${hdr[@]}" -d "$body") ||
    die "no answer from $url"
  case "$out" in *chat.completion*) ;; *) die "unexpected answer from $url: $out" ;; esac
  body='{"model":"mock-fast","stream":true,"messages":[{"role":"user","content":"hi"}]}'
  out=$(curl -sfN --max-time 5 "$url" "${hdr[@]}" \
    -H 'x-mock-chunks: 3' -d "$body" | grep -c '"content":"[^"]' || true)
  [ "$out" = 3 ] || die "stream through $url carried $out content chunks, not 3"
}
for u in "$DIRECT" "$XCORE" "$GATEWAY" $NGINX_URL; do check "$u"; done
check "$FULL" "$AUTH_HEADER"
# sluice_full really requires its key: without one the answer is 401.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$FULL" \
  -H 'content-type: application/json' -d '{"model":"mock-fast","messages":[]}' || true)
[ "$code" = 401 ] || die "sluice_full answered $code without a key, not 401"
# ... and serves its metrics (on the admin listener), which count the requests above.
# (Read whole first: `grep -q` quits at its first match, and under pipefail curl's next write
# to the closed pipe would fail the check.)
metrics=$(curl -sf --max-time 5 "http://127.0.0.1:$FULL_ADMIN_PORT/metrics" || true)
grep -q '^sluice_' <<<"$metrics" ||
  die "sluice_full serves no metrics on 127.0.0.1:$FULL_ADMIN_PORT/metrics"
sleep 1
FULL_RSS_IDLE=$(kib VmRSS "$FULL_PID")
SLUICE_RSS_IDLE=$(kib VmRSS "$SLUICE_PID")
NGINX_RSS_IDLE=0
[ -n "$NGINX_PID" ] && NGINX_RSS_IDLE=$(kib VmRSS "${NGINX_PIDS[@]}")
log "idle RSS: sluice $((SLUICE_RSS_IDLE / 1024)) MiB, sluice_full $((FULL_RSS_IDLE / 1024)) MiB, nginx $((NGINX_RSS_IDLE / 1024)) MiB (driver ${DRIVER:-?})"

# ---------------------------------------------------------------------------
# Load. Every sluice-load call runs pinned to LOAD_CORE and under a timeout.
LOAD=(taskset -c "$LOAD_CORE" "$BIN/sluice-load")
COMMON=(--threads 1 --pin-cores "$LOAD_CORE" --quiet)
PID_ARGS=(--pid "$SLUICE_PID" --pid "$FULL_PID")
for p in "${NGINX_PIDS[@]}"; do PID_ARGS+=(--pid "$p"); done
TARGETS=(--direct "$DIRECT" --direct-xcore "$XCORE" --gateway "$GATEWAY"
  --target "sluice_full=$FULL" --target-header "sluice_full=$AUTH_HEADER")
[ -n "$NGINX_URL" ] && TARGETS+=(--nginx "$NGINX_URL")
NT=4
[ -n "$NGINX_URL" ] && NT=5
STREAM_ARGS=(--stream --expect-chunks "$STREAM_CHUNKS" --expect-gap-ms "$STREAM_GAP_MS"
  -H "x-mock-chunks: $STREAM_CHUNKS" -H "x-mock-chunk-delay-ms: $STREAM_GAP_MS")
SWEEP_ARGS=(--stream --expect-chunks "$STREAM_CHUNKS" --expect-gap-ms "$SWEEP_GAP_MS"
  -H "x-mock-chunks: $STREAM_CHUNKS" -H "x-mock-chunk-delay-ms: $SWEEP_GAP_MS")

# bounded SECONDS NAME ARGS...: runs sluice-load, report in $RAW/NAME.{json,txt}.
bounded() {
  local limit=$1 name=$2
  shift 2
  if ! timeout -k 5 "$limit" "${LOAD[@]}" "$@" --json "$RAW/$name.json" >"$RAW/$name.txt" 2>&1; then
    log "warning: $name failed or timed out: $(tail -3 "$RAW/$name.txt")"
    rm -f "$RAW/$name.json"
  fi
}
# compare_phase NAME ROUNDS ROUND_S ROUND_D ARGS...
compare_phase() {
  local name=$1 rounds=$2 secs=$3 dur=$4
  shift 4
  local expect
  expect=$(awk -v r="$rounds" -v s="$secs" -v n="$NT" 'BEGIN { printf "%d", r * s * n }')
  log "$name: ${rounds} rounds × ${dur} × $NT targets (~${expect}s)"
  bounded $((expect * 2 + 30)) "$name" compare "${TARGETS[@]}" --rounds "$rounds" \
    --round-duration "$dur" "${COMMON[@]}" "${PID_ARGS[@]}" "$@"
}

log "warm-up"
for u in "$DIRECT" "$XCORE" "$GATEWAY" $NGINX_URL; do
  timeout -k 5 30 "${LOAD[@]}" run --url "$u" --concurrency 8 --duration "$WARM_D" \
    "${COMMON[@]}" >/dev/null 2>&1 || log "warning: warm-up of $u failed"
done
timeout -k 5 30 "${LOAD[@]}" run --url "$FULL" --concurrency 8 --duration "$WARM_D" \
  -H "$AUTH_HEADER" "${COMMON[@]}" >/dev/null 2>&1 || log "warning: warm-up of $FULL failed"

compare_phase c1 "$ROUNDS" "$ROUND_S" "$ROUND_D" --concurrency 1
RATE_META=""
for r in "${RATES[@]}"; do
  compare_phase "rate$r" "$ROUNDS" "$ROUND_S" "$ROUND_D" --rate "$r" --timeout 5s
  RATE_META+="${RATE_META:+, }{\"rate\": $r, \"file\": \"rate$r.json\"}"
done
compare_phase "closed$CLOSED_CONNS" "$CLOSED_ROUNDS" "$ROUND_S" "$ROUND_D" --concurrency "$CLOSED_CONNS"
compare_phase stream "$STREAM_ROUNDS" "$STREAM_S" "$STREAM_D" --rate "$STREAM_RATE" --timeout 10s \
  "${STREAM_ARGS[@]}"

# RSS after the request/response phases, before the sweep opens thousands of streams.
SLUICE_RSS_MID=$(kib VmRSS "$SLUICE_PID")
FULL_RSS_MID=$(kib VmRSS "$FULL_PID")
NGINX_RSS_MID=0
[ -n "$NGINX_PID" ] && NGINX_RSS_MID=$(kib VmRSS "${NGINX_PIDS[@]}")

NCOUNTS=$(echo "$SWEEP_COUNTS" | tr ',' '\n' | wc -l)
SWEEP_FILES=""
sweep() {
  local sys=$1 url=$2
  shift 2
  log "stream sweep on $sys: counts $SWEEP_COUNTS × $SWEEP_D, chunks every $SWEEP_GAP_MS ms"
  bounded $((NCOUNTS * (SWEEP_S + 20) + 30)) "streams-$sys" streams --url "$url" \
    --counts "$SWEEP_COUNTS" --step-duration "$SWEEP_D" --timeout 10s "${COMMON[@]}" \
    "${SWEEP_ARGS[@]}" "$@"
  SWEEP_FILES+="${SWEEP_FILES:+, }\"$sys\": \"streams-$sys.json\""
}
sweep direct "$DIRECT"
sweep sluice "$GATEWAY" --pid "$SLUICE_PID"
sweep sluice_full "$FULL" --pid "$FULL_PID" -H "$AUTH_HEADER"
if [ -n "$NGINX_URL" ]; then
  NGINX_PID_ARGS=()
  for p in "${NGINX_PIDS[@]}"; do NGINX_PID_ARGS+=(--pid "$p"); done
  sweep nginx "$NGINX_URL" "${NGINX_PID_ARGS[@]}"
fi

# RSS after load: once the load generator's connections are gone.
sleep 3
kill -0 "$SLUICE_PID" 2>/dev/null || die "sluice died during the suite: $(tail -5 "$WORK/sluice.log")"
SLUICE_RSS_AFTER=$(kib VmRSS "$SLUICE_PID")
SLUICE_RSS_PEAK=$(kib VmHWM "$SLUICE_PID")
kill -0 "$FULL_PID" 2>/dev/null ||
  die "sluice_full died during the suite: $(tail -5 "$WORK/full/access.jsonl")"
FULL_RSS_AFTER=$(kib VmRSS "$FULL_PID")
FULL_RSS_PEAK=$(kib VmHWM "$FULL_PID")
NGINX_RSS_AFTER=0 NGINX_RSS_PEAK=0
if [ -n "$NGINX_PID" ]; then
  NGINX_RSS_AFTER=$(kib VmRSS "${NGINX_PIDS[@]}")
  NGINX_RSS_PEAK=$(kib VmHWM "${NGINX_PIDS[@]}")
fi

# ---------------------------------------------------------------------------
# Idle connections: IDLE_CONNS keep-alive connections to one gateway at a time, one request
# each, then held silent. RSS before (nothing connected), while held, and 3 s after they
# close. sluice-load prints "holding N connections" once they are all open, and closes them
# on SIGUSR1 (or after 60 s).
IDLE_META=""
# idle_conns SYSTEM URL HEADER PID...
idle_conns() {
  local sys=$1 url=$2 hdr=$3
  shift 3
  local pids=("$@") before held after out n lpid
  local hargs=()
  [ -n "$hdr" ] && hargs=(-H "$hdr")
  out=$RAW/idle-$sys.txt
  before=$(kib VmRSS "${pids[@]}")
  log "idle connections on $sys: $IDLE_CONNS keep-alive connections, one request each"
  timeout -k 5 150 "${LOAD[@]}" idle --url "$url" --connections "$IDLE_CONNS" --hold 60s \
    --open-timeout 80s "${hargs[@]}" --json "$RAW/idle-$sys.json" >"$out" 2>&1 &
  lpid=$!
  PIDS+=("$lpid")
  for _ in $(seq 1000); do
    grep -q '^holding' "$out" 2>/dev/null && break
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
  done
  n=$(sed -n 's/^holding \([0-9]*\) connections.*/\1/p' "$out")
  sleep 1
  held=$(kib VmRSS "${pids[@]}")
  # The signal goes to sluice-load itself (timeout's child), not to timeout, which would die
  # of it and leave sluice-load holding the connections.
  for c in $(ps -o pid= --ppid "$lpid"); do kill -USR1 "$c" 2>/dev/null || true; done
  wait "$lpid" || log "warning: idle on $sys failed: $(tail -2 "$out")"
  sleep 3
  after=$(kib VmRSS "${pids[@]}")
  log "idle connections on $sys: ${n:-0} held; RSS $((before / 1024)) → $((held / 1024)) → $((after / 1024)) MiB"
  IDLE_META+="${IDLE_META:+, }\"$sys\": {\"held\": ${n:-0}, \"before_kib\": $before, "
  IDLE_META+="\"held_kib\": $held, \"after_kib\": $after, \"file\": \"idle-$sys.json\"}"
}
if [ "$IDLE_CONNS" -gt 0 ]; then
  idle_conns sluice "$GATEWAY" "" "$SLUICE_PID"
  idle_conns sluice_full "$FULL" "$AUTH_HEADER" "$FULL_PID"
  [ -n "$NGINX_URL" ] && idle_conns nginx "$NGINX_URL" "" "${NGINX_PIDS[@]}"
fi
ACCESS_LOG_LINES=$(grep -c 'sluice::access' "$WORK/full/access.jsonl" || true)
STORE_BYTES=$(du -sb "$WORK/full" | cut -f1)
SUITE_S=$(($(date +%s) - S0))
LOADAVG_END=$(cut -d' ' -f1 /proc/loadavg)

json_list() { local IFS=,; echo "[$*]"; }
GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)" ] && GIT="$GIT+dirty"
NGINX_META=null
[ -n "$NGINX_PID" ] && NGINX_META="\"$NGINX_VERSION\""
cat >"$RAW/meta.json" <<EOF
{
  "mode": "$MODE",
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "git": "$GIT",
  "cores": $NCPU,
  "driver": "${DRIVER:-}",
  "nginx_version": $NGINX_META,
  "layout": {"gateway (sluice, nginx)": "$GW_CORE", "mock": "$MOCK_CORE",
             "mock direct-xcore": "$XCORE_CORE", "load generator": "$LOAD_CORE"},
  "sluice_workers": $GW_WORKERS,
  "nginx_workers": $GW_WORKERS,
  "sluice_pid": $SLUICE_PID,
  "sluice_full_pid": $FULL_PID,
  "sluice_full": {"port": $FULL_PORT, "access_log_lines": ${ACCESS_LOG_LINES:-0},
                  "store_dir_bytes": ${STORE_BYTES:-0}},
  "nginx_pids": $(json_list ${NGINX_PID:+"${NGINX_PIDS[@]}"}),
  "c1": "c1.json",
  "rates": [$RATE_META],
  "closed": {"conns": $CLOSED_CONNS, "file": "closed$CLOSED_CONNS.json"},
  "stream": {"file": "stream.json", "chunks": $STREAM_CHUNKS, "gap_ms": $STREAM_GAP_MS,
             "rate": $STREAM_RATE},
  "sweep": {"counts": [$SWEEP_COUNTS], "chunks": $STREAM_CHUNKS, "gap_ms": $SWEEP_GAP_MS,
            "files": {$SWEEP_FILES}},
  "rounds": {"c1": $ROUNDS, "rate": $ROUNDS, "closed": $CLOSED_ROUNDS, "stream": $STREAM_ROUNDS},
  "idle_conns": {"connections": $IDLE_CONNS, "systems": {$IDLE_META}},
  "rss_kib": {
    "sluice": {"idle": $SLUICE_RSS_IDLE, "mid": $SLUICE_RSS_MID, "peak": $SLUICE_RSS_PEAK,
               "after": $SLUICE_RSS_AFTER},
    "sluice_full": {"idle": $FULL_RSS_IDLE, "mid": $FULL_RSS_MID, "peak": $FULL_RSS_PEAK,
                    "after": $FULL_RSS_AFTER},
    "nginx": {"idle": $NGINX_RSS_IDLE, "mid": $NGINX_RSS_MID, "peak": $NGINX_RSS_PEAK,
              "after": $NGINX_RSS_AFTER}
  },
  "loadavg": [$LOADAVG_START, $LOADAVG_END],
  "build_s": $BUILD_S,
  "suite_s": $SUITE_S
}
EOF

"$BIN/sluice-bench-report" --raw "$RAW" --out "$OUT" || die "report failed"
log "done in $(($(date +%s) - T0)) s (build ${BUILD_S} s, suite ${SUITE_S} s): $OUT/report.md"
