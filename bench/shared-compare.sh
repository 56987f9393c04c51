#!/usr/bin/env bash
# bench/shared-compare.sh: a brief look at what [shared] costs on the request path. Two
# gateways like compare.sh's sluice_full (keys, SQLite ledger, JSON access log), one worker
# each, one of them with [shared] on a local redis-server; sluice-load compares them against
# the mock at concurrency 1 and at 2,000 req/s (3 interleaved rounds of 2 s), then prints
# the Redis round trips the shared gateway made. Needs release binaries (cargo build
# --release -p sluice-proxy -p sluice-loadtest) and redis-server. Ports 19250-19263.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLUICE_TARGET_DIR:-$ROOT/target}/release
W=$(mktemp -d)
KEY=sk-sluice-bench-full-0123456789
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
redis-server --bind 127.0.0.1 --port 19250 --save "" --appendonly no --dir "$W" >/dev/null 2>&1 &
PIDS+=($!)
"$BIN/sluice-mock" --listen 127.0.0.1:19251 --workers 1 >"$W/mock.log" 2>&1 &
PIDS+=($!)
gw() { # name port admin shared
  cat >"$W/$1.toml" <<TOML
auth = "keys"
[server]
listen = "127.0.0.1:$2"
workers = 1
pin_workers = false
drain_timeout_ms = 1000
[log]
level = "info"
format = "json"
access_log = true
[admin]
enabled = true
listen = "127.0.0.1:$3"
[store]
path = "$W/$1.db"
[[keys]]
name = "bench"
key = "$KEY"
team = "bench"
rpm = 1000000000
tpm = 1000000000000
budget_usd = 1000000000.0
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:19251/v1"
[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "mock-model" }]
[prices."mock-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0
$4
TOML
  "$BIN/sluice" serve --config "$W/$1.toml" >"$W/$1.log" 2>&1 &
  PIDS+=($!)
}
gw full 19252 19262 ""
gw shared 19253 19263 $'[shared]\nredis_url = "redis://127.0.0.1:19250"'
sleep 2
H="authorization: Bearer $KEY"
rt() { curl -s 127.0.0.1:19263/metrics | awk '/^sluice_shared_round_trips_total/ {print $2}'; }
reqs() { curl -s 127.0.0.1:19263/metrics | awk '/^sluice_requests_total/ {s+=$2} END {print s+0}'; }
R0=$(rt); Q0=$(reqs)
for load in "--concurrency 1" "--rate 2000"; do
  echo "== $load"
  "$BIN/sluice-load" compare --direct http://127.0.0.1:19251/v1/chat/completions \
    --gateway "http://127.0.0.1:19252/v1/chat/completions" \
    --target "shared=http://127.0.0.1:19253/v1/chat/completions" \
    --target-header "gateway=$H" --target-header "shared=$H" \
    $load --rounds 3 --round-duration 2s 2>&1 | tail -25
done
R1=$(rt); Q1=$(reqs)
echo "redis round trips: $((${R1%.*} - ${R0%.*})) for $((${Q1%.*} - ${Q0%.*})) requests through the shared gateway"
