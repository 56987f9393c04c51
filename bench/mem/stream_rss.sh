#!/usr/bin/env bash
# bench/mem/stream_rss.sh [BIN_DIR] [COUNTS] [BASE_PORT]: the RSS of one sluice worker (no
# keys, no store: bench/compare.sh's bare `sluice`) before, while and after it carries
# streams, with the sweep of bench/compare.sh (COUNTS concurrent streams, each step 3 s of
# 20 chunks 50 ms apart), then the RSS 3 s after the load ended ("after"), as the bench
# reads it. Prints the peak, per-stream bytes over idle at the peak, and after vs idle.
#
#   bash bench/mem/stream_rss.sh target/release 2048            # peak at 2,048 streams
#   bash bench/mem/stream_rss.sh target/release 256,1024,2048,4096  # the bench's sweep
#
# Extra env: SLUICE_ENV="MIMALLOC_X=Y ..." is put in the gateway's environment;
# FULL=1 runs bench/compare.sh's sluice_full instead (keys, SQLite ledger, access log);
# SUITE=1 runs the request/response phases of bench/compare.sh's full suite first (closed
# loop of 64, open loop at 1k and 5k req/s, 32 streams; 10 s each), and reads "after" again
# 60 s later (the bench reads it after the other systems' sweeps).
set -u
BIN=${1:-target/release}; COUNTS=${2:-2048}; P=${3:-19401}
W=$(mktemp -d "${TMPDIR:-/tmp}/sluice-srss.XXXX"); ulimit -n "$(ulimit -Hn)"
"$BIN/sluice-mock" --listen 127.0.0.1:$P --workers 1 >$W/mock.log 2>&1 & MP=$!
KEY=sk-sluice-bench-0123456789abcdef
if [ "${FULL:-0}" = 1 ]; then
  AUTH='auth = "keys"'; HDR=(-H "authorization: Bearer $KEY")
  EXTRA=$(printf '[store]\npath = "%s/sluice.db"\n[[keys]]\nname = "bench"\nkey = "%s"\nteam = "bench"\nrpm = 1000000000\ntpm = 1000000000000\nbudget_usd = 1000000000.0\n[prices."mock-model"]\ninput_per_mtok = 2.5\noutput_per_mtok = 10.0\n' "$W" "$KEY")
  LOG='level = "info"
format = "json"
access_log = true'
else
  AUTH='auth = "none"'; HDR=(); EXTRA=""
  LOG='level = "warn"
access_log = false'
fi
cat >$W/s.toml <<T
$AUTH
[server]
listen = "127.0.0.1:$((P+1))"
workers = 1
max_connections_per_worker = 16384
drain_timeout_ms = 1000
[log]
$LOG
[admin]
listen = "127.0.0.1:$((P+2))"
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$P/v1"
[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "mock-model" }]
$EXTRA
T
env ${SLUICE_ENV:-} "$BIN/sluice" serve --config $W/s.toml >$W/s.log 2>&1 & SP=$!
sleep 1.5
kib() { awk -v f="$1:" '$1==f{print $2}' /proc/$2/status; }
# One request first, as the bench's check and warm-up do.
curl -s -o /dev/null "http://127.0.0.1:$((P+1))/v1/chat/completions" "${HDR[@]}" \
  -H 'content-type: application/json' -d '{"model":"mock-fast","messages":[{"role":"user","content":"hi"}]}'
sleep 1
idle=$(kib VmRSS $SP)
# SMAPS=1: the mappings holding the most RSS (KiB), at idle and after.
smaps() { awk '/^[0-9a-f]+-[0-9a-f]+ /{m=$1" "$6} /^Rss:/{r[m]+=$2} END{for(k in r) if (r[k]>=256) print r[k], k}' /proc/$SP/smaps | sort -rn | head -12; }
[ -n "${SMAPS:-}" ] && { echo "idle mappings:"; smaps; }
URL=http://127.0.0.1:$((P+1))/v1/chat/completions
if [ "${SUITE:-0}" = 1 ]; then
  L=("$BIN/sluice-load" run --url $URL --threads 1 --quiet --duration 10s "${HDR[@]}")
  timeout 60 "${L[@]}" --concurrency 64 >/dev/null 2>&1
  timeout 60 "${L[@]}" --rate 1000 --timeout 5s >/dev/null 2>&1
  timeout 60 "${L[@]}" --rate 5000 --timeout 5s >/dev/null 2>&1
  timeout 60 "${L[@]}" --concurrency 32 --stream --expect-chunks 20 --expect-gap-ms 10 \
    -H "x-mock-chunks: 20" -H "x-mock-chunk-delay-ms: 10" >/dev/null 2>&1
  echo "after the request/response phases: $(($(kib VmRSS $SP) / 1024)) MiB"
fi
timeout 120 "$BIN/sluice-load" streams --url http://127.0.0.1:$((P+1))/v1/chat/completions --counts "$COUNTS" --step-duration 3s --timeout 10s --threads 1 --quiet \
  --stream --expect-chunks 20 --expect-gap-ms 50 -H "x-mock-chunks: 20" -H "x-mock-chunk-delay-ms: 50" "${HDR[@]}" >$W/load.txt 2>&1 &
LP=$!; peak=0
while kill -0 $LP 2>/dev/null; do r=$(kib VmRSS $SP); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2; done
sleep 3
after=$(kib VmRSS $SP)
[ -n "${SMAPS:-}" ] && { echo "after mappings:"; smaps; }
last=${COUNTS##*,}
awk -v i=$idle -v p=$peak -v a=$after -v n=$last 'BEGIN {
  printf "idle %.1f MiB, peak %.1f MiB (%.1f KiB per stream over idle at %d), after %.1f MiB (%+.1f %% of idle)\n",
    i/1024, p/1024, (p-i)/n, n, a/1024, (a-i)*100/i }'
grep -E "^ *[0-9]+ " $W/load.txt | head -8
if [ "${SUITE:-0}" = 1 ]; then sleep 60; echo "60 s later: $(kib VmRSS $SP) KiB"; fi
[ -n "${KEEP:-}" ] && echo "kept $W"
kill $SP $MP; wait $SP $MP 2>/dev/null
[ -z "${KEEP:-}" ] && rm -rf $W
