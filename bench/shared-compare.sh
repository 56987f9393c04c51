#!/usr/bin/env bash
# bench/shared-compare.sh [--quick] [--rounds N] [--redis-url URL]: what [shared] costs.
#
# Two gateways configured like compare.sh's sluice_full (a required key with rpm, tpm and
# budget far above the load, the SQLite ledger, the JSON access log to a file, metrics), one
# worker each, pinned to the same core: `full` without [shared], `shared` with [shared] on a
# redis-server this script starts in a temp dir on a free port (or on --redis-url, a Redis on
# 127.0.0.1 that it then never stops). With sluice-load, interleaved in rounds with the mock
# alone (`direct`):
#   c1         concurrency 1: added latency over direct
#   rate5000   5,000 req/s open loop: added latency, achieved rate, errors, CPU per request
#   closed64   64 connections closed loop: req/s and CPU per request
# then, on the shared gateway alone:
#   redis      Redis traffic idle and per 1,000 requests at 5,000 and 2,000 req/s
#   outage     2,000 req/s with Redis up, then stopped (SIGTERM, waited for), then restarted
#              ("recovered", once the gateway says its limits are global again), and one
#              run during which Redis is killed (SIGKILL) 1 s in ("transition")
# The outage phases need a Redis of our own: with --redis-url they are skipped.
#
# Writes $OUT/report.md, $OUT/report.json and $OUT/raw/ (OUT: $SLUICE_TARGET_DIR/bench/shared).
# Medians over rounds are taken per round first (a gateway's p50 minus direct's p50 in the
# same round), then across rounds; the spread is the rounds' max - min.
#
#   --quick       3 rounds of 1 s, outage runs of 2 s (about a minute of load)
#   --rounds N    rounds per interleaved phase (default 5; at least 3 for the report)
#   --redis-url   redis://127.0.0.1:PORT of a running Redis (default: start one)
#
# Needs release binaries (cargo build --release -p sluice-proxy -p sluice-loadtest --bins),
# redis-server and redis-cli, taskset, curl, python3. Everything on 127.0.0.1; every process
# started is stopped by PID; each load run is under a timeout. Environment: SLUICE_TARGET_DIR,
# SLUICE_BENCH_OUT, SLUICE_BENCH_PORT_BASE (first port tried, default 19250).
set -euo pipefail

usage() { sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0 ROUNDS="" REDIS_URL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --rounds) ROUNDS=${2:-}; shift 2 ;;
    --redis-url) REDIS_URL=${2:-}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "shared-compare.sh: unknown argument $1 (try --help)" >&2; exit 64 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  MODE=quick ROUNDS=${ROUNDS:-3} ROUND_D=1 OUTAGE_D=2
else
  MODE=full ROUNDS=${ROUNDS:-5} ROUND_D=3 OUTAGE_D=4
fi
case "$ROUNDS" in '' | *[!0-9]*) echo "--rounds takes a number" >&2; exit 64 ;; esac
[ "$ROUNDS" -ge 1 ] || { echo "--rounds must be at least 1" >&2; exit 64; }
RATE=5000 OUTAGE_RATE=2000 CLOSED_CONNS=64 TRANSITION_D=$((OUTAGE_D + 1))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/configs.sh
. "$ROOT/bench/configs.sh"
TARGET_DIR=${SLUICE_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
OUT=${SLUICE_BENCH_OUT:-$TARGET_DIR/bench/shared}
RAW=$OUT/raw
KEY=sk-sluice-bench-full-0123456789
T0=$(date +%s)
log() { printf '[shared-compare %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for b in sluice sluice-mock sluice-load; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing (cargo build --release -p sluice-proxy -p sluice-loadtest --bins)"
done
for c in redis-cli taskset curl python3; do
  command -v "$c" >/dev/null || die "$c missing"
done
OWN_REDIS=1
if [ -n "$REDIS_URL" ]; then
  OWN_REDIS=0
  case "$REDIS_URL" in
    redis://127.0.0.1:[0-9]*) ;;
    *) die "--redis-url must be redis://127.0.0.1:PORT (all traffic stays on loopback)" ;;
  esac
  REDIS_PORT=${REDIS_URL#redis://127.0.0.1:}
  REDIS_PORT=${REDIS_PORT%%/*}
else
  command -v redis-server >/dev/null || die "redis-server missing (or pass --redis-url)"
fi

# Pinning as in compare.sh: both gateways on core 0 (one is under load at a time), the mock
# and the load generator on core 1 (core 2 for the load generator with 3+ cores); Redis on
# the mock's core (its own with 4+ cores).
NCPU=$(nproc)
if [ "$NCPU" -ge 4 ]; then
  GW_CORE=0 MOCK_CORE=1 LOAD_CORE=2 REDIS_CORE=3
elif [ "$NCPU" -eq 3 ]; then
  GW_CORE=0 MOCK_CORE=1 LOAD_CORE=2 REDIS_CORE=1
elif [ "$NCPU" -eq 2 ]; then
  GW_CORE=0 MOCK_CORE=1 LOAD_CORE=1 REDIS_CORE=1
else
  GW_CORE=0 MOCK_CORE=0 LOAD_CORE=0 REDIS_CORE=0
fi

# ---------------------------------------------------------------------------
# Processes: everything started is recorded and stopped by PID on exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-shared-compare.XXXXXX")
PIDS=()
REDIS_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}" $REDIS_PID; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}" $REDIS_PID; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
  mkdir -p "$OUT/logs"
  cp "$WORK"/*.log "$WORK"/*.toml "$OUT/logs/" 2>/dev/null || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# pick_port FIRST: sets PORT to the first free port from FIRST not picked before.
PICKED=" "
pick_port() {
  PORT=$1
  while ! port_free "$PORT" || [[ "$PICKED" == *" $PORT "* ]]; do
    PORT=$((PORT + 1))
    [ "$PORT" -lt 65000 ] || die "no free port"
  done
  PICKED+="$PORT "
}
wait_http() { # PORT: something answers HTTP (5 s at most)
  for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    sleep 0.05
  done
  return 1
}

BASE=${SLUICE_BENCH_PORT_BASE:-19250}
if [ "$OWN_REDIS" = 1 ]; then pick_port "$BASE"; REDIS_PORT=$PORT; fi
pick_port $((BASE + 1)); MOCK_PORT=$PORT
pick_port $((BASE + 2)); FULL_PORT=$PORT
pick_port $((BASE + 3)); SHARED_PORT=$PORT
pick_port $((BASE + 12)); FULL_ADMIN=$PORT
pick_port $((BASE + 13)); SHARED_ADMIN=$PORT
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}
rm -rf "$RAW"
mkdir -p "$RAW"
LOADAVG_START=$(cut -d' ' -f1 /proc/loadavg)

rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
start_redis() {
  mkdir -p "$WORK/redis"
  taskset -c "$REDIS_CORE" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$WORK/redis" >>"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do
    [ "$(rcli PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  die "redis-server did not start: $(tail -3 "$WORK/redis.log")"
}
# stop_redis SIGNAL: stops our Redis by PID and waits until it is gone.
stop_redis() {
  kill "-$1" "$REDIS_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=""
}
if [ "$OWN_REDIS" = 1 ]; then
  start_redis
else
  [ "$(rcli PING 2>/dev/null)" = PONG ] || die "no Redis answers on $REDIS_URL"
fi

# INFO snapshots cost Redis commands and reads of their own: measured now, before any
# gateway connects, and taken off every delta.
snap_redis() { rcli INFO all 2>/dev/null | tr -d '\r' >"$RAW/$1.redis.txt" || true; }
for i in 1 2 3; do snap_redis "calibrate$i"; done

taskset -c "$MOCK_CORE" "$BIN/sluice-mock" --listen "127.0.0.1:$MOCK_PORT" --workers 1 --pin \
  >"$WORK/mock.log" 2>&1 &
PIDS+=($!)

gateway() { # NAME PORT ADMIN_PORT EXTRA
  mkdir -p "$WORK/$1"
  # compare.sh's sluice_full (bench/configs.sh), with EXTRA (the [shared] table) after it.
  { BENCH_PIN=true sluice_bench_config full "127.0.0.1:$2" "127.0.0.1:$3" "$MOCK_PORT" \
    "$WORK/$1" "$KEY"; printf '%s\n' "$4"; } >"$WORK/$1.toml"
  # The access log (a line per request) stays in the temp dir.
  taskset -c "$GW_CORE" "$BIN/sluice" serve --config "$WORK/$1.toml" \
    >"$WORK/$1/access.jsonl" 2>"$WORK/$1.log" &
  GW_PID=$!
  PIDS+=("$GW_PID")
}
gateway full "$FULL_PORT" "$FULL_ADMIN" ""
FULL_PID=$GW_PID
gateway shared "$SHARED_PORT" "$SHARED_ADMIN" "[shared]
redis_url = \"$REDIS_URL\"
on_unavailable = \"local\"
key_prefix = \"sluice-bench-$$:\""
SHARED_PID=$GW_PID

wait_http "$MOCK_PORT" || die "mock did not start: $(tail -3 "$WORK/mock.log")"
wait_http "$FULL_PORT" || die "full did not start: $(tail -3 "$WORK/full/access.jsonl" "$WORK/full.log")"
wait_http "$SHARED_PORT" ||
  die "shared did not start: $(tail -3 "$WORK/shared/access.jsonl" "$WORK/shared.log")"

DIRECT=http://127.0.0.1:$MOCK_PORT/v1/chat/completions
FULL=http://127.0.0.1:$FULL_PORT/v1/chat/completions
SHARED=http://127.0.0.1:$SHARED_PORT/v1/chat/completions
H="authorization: Bearer $KEY"
BODY='{"model":"mock-fast","messages":[{"role":"user","content":"hi"}]}'
for u in "$FULL" "$SHARED"; do
  out=$(curl -sf --max-time 5 "$u" -H "$H" -H 'content-type: application/json' -d "$BODY") ||
    die "no answer from $u"
  case "$out" in *chat.completion*) ;; *) die "unexpected answer from $u: $out" ;; esac
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$u" \
    -H 'content-type: application/json' -d "$BODY" || true)
  [ "$code" = 401 ] || die "$u answered $code without a key, not 401"
done

metric() { # NAME: the shared gateway's metric (summed over labels), empty when absent
  curl -s --max-time 2 "http://127.0.0.1:$SHARED_ADMIN/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) print s }'
}
limits_mode() { # the shared gateway's /readyz "shared.limits"
  curl -s --max-time 2 "http://127.0.0.1:$SHARED_PORT/readyz" |
    sed -n 's/.*"limits" *: *"\([a-z_]*\)".*/\1/p'
}
# snap NAME: Redis INFO, the shared gateway's metrics and /readyz, at once.
snap() {
  snap_redis "$1"
  curl -s --max-time 2 "http://127.0.0.1:$SHARED_ADMIN/metrics" >"$RAW/$1.metrics.txt" || true
  curl -s --max-time 2 "http://127.0.0.1:$SHARED_PORT/readyz" >"$RAW/$1.readyz.json" || true
  date +%s.%N >"$RAW/$1.time"
}
# wait_limits MODE SECONDS: until /readyz says MODE; prints the seconds it took, or "timeout".
wait_limits() {
  local t0 i
  t0=$(date +%s%N)
  for i in $(seq $(($2 * 20))); do
    if [ "$(limits_mode)" = "$1" ]; then
      echo $((($(date +%s%N) - t0) / 1000000))
      return 0
    fi
    sleep 0.05
  done
  echo timeout
}
[ "$(wait_limits global 5)" != timeout ] || die "the shared gateway's limits never became global"
[ -n "$(metric sluice_shared_available)" ] || die "no sluice_shared_available in the metrics"

# ---------------------------------------------------------------------------
LOAD=(taskset -c "$LOAD_CORE" "$BIN/sluice-load")
COMMON=(--threads 1 --pin-cores "$LOAD_CORE" --quiet --timeout 5s)
bounded() { # SECONDS NAME ARGS...: one sluice-load run, report in $RAW/NAME.{json,txt}
  local limit=$1 name=$2
  shift 2
  if ! timeout -k 5 "$limit" "${LOAD[@]}" "$@" --json "$RAW/$name.json" >"$RAW/$name.txt" 2>&1; then
    log "warning: $name failed or timed out: $(tail -3 "$RAW/$name.txt")"
    rm -f "$RAW/$name.json"
  fi
}
compare_phase() { # NAME ARGS...
  local name=$1
  shift
  log "$name: $ROUNDS rounds × ${ROUND_D}s × 3 targets"
  bounded $((ROUNDS * ROUND_D * 3 * 2 + 30)) "$name" compare --direct "$DIRECT" \
    --gateway "$FULL" --target "shared=$SHARED" \
    --target-header "gateway=$H" --target-header "shared=$H" \
    --rounds "$ROUNDS" --round-duration "${ROUND_D}s" --pid "$FULL_PID" --pid "$SHARED_PID" \
    "${COMMON[@]}" "$@"
}
shared_run() { # NAME SECONDS ARGS...: the shared gateway alone, at OUTAGE_RATE unless told
  local name=$1 secs=$2
  shift 2
  bounded $((secs * 2 + 20)) "$name" run --url "$SHARED" -H "$H" --duration "${secs}s" \
    --pid "$SHARED_PID" "${COMMON[@]}" "$@"
}

log "layout: gateways core $GW_CORE, mock core $MOCK_CORE, load core $LOAD_CORE, redis core $REDIS_CORE ($MODE, $NCPU cores)"
log "warm-up"
for u in "$FULL" "$SHARED"; do
  timeout -k 5 30 "${LOAD[@]}" run --url "$u" -H "$H" --concurrency 8 --duration 1s \
    "${COMMON[@]}" >/dev/null 2>&1 || log "warning: warm-up of $u failed"
done

compare_phase c1 --concurrency 1
compare_phase "rate$RATE" --rate "$RATE"
compare_phase "closed$CLOSED_CONNS" --concurrency "$CLOSED_CONNS"

# Redis traffic: idle, then per request at two rates (the shared gateway alone).
log "redis traffic: idle 3 s, then ${OUTAGE_D}s at $RATE and at $OUTAGE_RATE req/s"
snap idle0
sleep 3
snap idle1
shared_run "redis$RATE" "$OUTAGE_D" --rate "$RATE"
snap "redis$RATE"
shared_run up "$OUTAGE_D" --rate "$OUTAGE_RATE"
snap up

OUTAGE_META='"skipped": "not our Redis (--redis-url)"'
if [ "$OWN_REDIS" = 1 ]; then
  log "outage: Redis stopped (SIGTERM), ${OUTAGE_D}s at $OUTAGE_RATE req/s"
  stop_redis TERM
  DEGRADE_MS=$(wait_limits degraded_local 5)
  snap down0
  shared_run down "$OUTAGE_D" --rate "$OUTAGE_RATE"
  snap down1
  log "outage: Redis restarted, ${OUTAGE_D}s at $OUTAGE_RATE req/s once limits are global"
  start_redis
  RECOVER_MS=$(wait_limits global 10)
  snap recovered0
  shared_run recovered "$OUTAGE_D" --rate "$OUTAGE_RATE"
  snap recovered1
  log "transition: ${TRANSITION_D}s at $OUTAGE_RATE req/s, Redis killed (SIGKILL) 1 s in"
  timeout -k 5 $((TRANSITION_D * 2 + 20)) "${LOAD[@]}" run --url "$SHARED" -H "$H" \
    --duration "${TRANSITION_D}s" --rate "$OUTAGE_RATE" --pid "$SHARED_PID" "${COMMON[@]}" \
    --json "$RAW/transition.json" >"$RAW/transition.txt" 2>&1 &
  LPID=$!
  PIDS+=("$LPID")
  sleep 1
  stop_redis KILL
  wait "$LPID" || log "warning: transition run failed: $(tail -3 "$RAW/transition.txt")"
  snap transition
  start_redis
  TRANSITION_RECOVER_MS=$(wait_limits global 10)
  OUTAGE_META="\"stop_signal\": \"TERM\", \"transition_signal\": \"KILL\", \"transition_kill_after_s\": 1,
    \"degraded_after_ms\": \"$DEGRADE_MS\", \"global_again_after_ms\": \"$RECOVER_MS\",
    \"transition_global_again_after_ms\": \"$TRANSITION_RECOVER_MS\""
fi
kill -0 "$FULL_PID" 2>/dev/null || die "full died: $(tail -5 "$WORK/full.log")"
kill -0 "$SHARED_PID" 2>/dev/null || die "shared died: $(tail -5 "$WORK/shared.log")"

GIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)" ] && GIT="$GIT+dirty"
cat >"$RAW/meta.json" <<EOF
{
  "mode": "$MODE", "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "git": "$GIT", "cores": $NCPU,
  "layout": {"gateways": $GW_CORE, "mock": $MOCK_CORE, "load": $LOAD_CORE, "redis": $REDIS_CORE},
  "rounds": $ROUNDS, "round_duration_s": $ROUND_D, "rate": $RATE, "closed_conns": $CLOSED_CONNS,
  "outage_rate": $OUTAGE_RATE, "outage_duration_s": $OUTAGE_D, "transition_duration_s": $TRANSITION_D,
  "own_redis": $([ "$OWN_REDIS" = 1 ] && echo true || echo false),
  "redis_version": "$(redis-server --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p')",
  "full_pid": $FULL_PID, "shared_pid": $SHARED_PID,
  "outage": {$OUTAGE_META},
  "loadavg": [$LOADAVG_START, $(cut -d' ' -f1 /proc/loadavg)],
  "suite_s": $(($(date +%s) - T0))
}
EOF
python3 "$ROOT/bench/shared-report.py" "$RAW" "$OUT" || die "report failed"
log "done in $(($(date +%s) - T0)) s: $OUT/report.md and $OUT/report.json"
