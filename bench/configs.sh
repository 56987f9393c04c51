# bench/configs.sh, sourced by the bench scripts: the two Sluice configs they measure, so
# that `bench/compare.sh`, `bench/callgrind-request.sh` and `bench/pgo-build.sh` run the
# same gateway.
#
# sluice_bench_config MODE LISTEN ADMIN_LISTEN MOCK_PORT STORE_DIR KEY  (TOML on stdout)
#   bare: no keys (the load generator sends none) and so no store, no access log.
#   full: what users run, the report's `sluice_full` row: keys required (one key with
#         limits far above what a bench sends), the SQLite ledger in STORE_DIR, the JSON
#         access log (on stdout: the caller sends it to a file), metrics on the admin
#         listener, prices for the mock's models.
# Both: one worker (pinned to the one core `taskset` allows when BENCH_PIN=true), the
# mock's chat, stream and embedding models. STORE_DIR and KEY are ignored by `bare`.
sluice_bench_config() {
  local mode=$1 listen=$2 admin=$3 mock_port=$4 dir=$5 key=$6
  local auth=none access=false
  [ "$mode" = full ] && auth=keys access=true
  cat <<EOF
# Written by bench/configs.sh ($mode).
auth = "$auth"

[server]
listen = "$listen"
workers = 1
pin_workers = ${BENCH_PIN:-false}
drain_timeout_ms = 1000
# compare.sh's idle-connections phase holds 10,000 client connections on the one worker.
max_connections_per_worker = 16384

[log]
level = "info"
format = "json"
access_log = $access

[admin]
enabled = true
listen = "$admin"

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$mock_port/v1"

[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "mock-model" }]

[[models]]
name = "mock-stream"
deployments = [{ provider = "mock", model = "mock-stream-model" }]

[[models]]
name = "mock-embed"
deployments = [{ provider = "mock", model = "mock-embed-model" }]
EOF
  [ "$mode" = full ] || return 0
  cat <<EOF

[store]
path = "$dir/sluice.db"

[[keys]]
name = "bench"
key = "$key"
team = "bench"
rpm = 1000000000
tpm = 1000000000000
budget_usd = 1000000000.0

[prices."mock-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[prices."mock-stream-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[prices."mock-embed-model"]
input_per_mtok = 0.02
output_per_mtok = 0.0
EOF
}
