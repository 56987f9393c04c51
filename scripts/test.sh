#!/usr/bin/env bash
# The test command: Rust unit and integration tests, then the official OpenAI Python SDK
# against the real gateway, under the default I/O driver and under epoll.
#
#   bash scripts/test.sh
#
# Runs from any directory; builds into the default target dir (target/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

# System packages some steps may need, installed only when one is missing (apt-get update
# runs at most once). promtool checks the /metrics output; later steps append to APT_PACKAGES, e.g.
# nginx or prometheus for comparison runs. Pass `command:package` pairs. chromium runs the admin
# page's browser test (tests/python/test_admin_ui.py, through Playwright; no browser download);
# redis-server backs the fleet's shared limits and cache (proxy/tests/fleet.rs, fleet_cache.rs).
APT_PACKAGES=(promtool:prometheus systemd-analyze:systemd curl:curl chromium:chromium redis-server:redis-server)
ensure_apt_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd="${pair%%:*}"
        pkg="${pair#*:}"
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    step "apt-get install ${missing[*]}"
    if [ -z "${SLUICE_APT_UPDATED:-}" ]; then
        "${sudo[@]}" apt-get update -qq
        export SLUICE_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if [ "${#APT_PACKAGES[@]}" -gt 0 ]; then
    ensure_apt_packages "${APT_PACKAGES[@]}"
fi

step "python deps (tests/python/requirements.txt)"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

# One PostgreSQL server for the whole run, in a temporary directory on a loopback port, owned
# by the `postgres` user (initdb refuses root), stopped by its PID on exit. The store tests
# create a database per case on it (SLUICE_TEST_PG_URL); tests that stop and restart
# PostgreSQL start their own.
start_postgres() {
    local bin dir port
    # The server binaries live outside PATH (/usr/lib/postgresql/<version>/bin), so look for
    # initdb there; install Debian's postgresql without the default cluster it would create.
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        ensure_apt_packages pg_ctlcluster:postgresql-common
        sed -ri 's/^#?\s*create_main_cluster\b.*$/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf 2>/dev/null || true
        ensure_apt_packages initdb-is-not-in-path:postgresql
    fi
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
        exit 1
    fi
    dir="$(mktemp -d /tmp/sluice-test-pg.XXXXXX)"
    local as=()
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U sluice --auth=trust -E UTF8 --no-sync >/dev/null
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    PG_PID="$(head -n 1 "$dir/data/postmaster.pid")"
    PG_DIR="$dir"
    export SLUICE_TEST_PG_URL="postgres://sluice@127.0.0.1:$port/postgres"
    echo "postgresql $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $PG_PID)"
}
stop_postgres() {
    if [ -n "${PG_PID:-}" ]; then
        kill -INT "$PG_PID" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$PG_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if [ -n "${PG_DIR:-}" ]; then
        rm -rf "$PG_DIR"
    fi
}
trap stop_postgres EXIT
step "postgresql for the store tests"
start_postgres

step "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

step "cargo test --workspace --locked"
cargo test --workspace --locked

# The binaries cargo just built (target/ unless CARGO_TARGET_DIR says otherwise).
export SLUICE_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug"

step "deploy/kubernetes: schemas, ServiceMonitor CRD, cross-references, check-config"
python3 scripts/check-manifests.py

step "pytest tests/python (driver: default, io_uring where the kernel allows it)"
env -u SLUICE_DRIVER python3 -m pytest -q tests/python

step "pytest tests/python (driver: epoll)"
SLUICE_DRIVER=epoll python3 -m pytest -q tests/python

step "all tests passed"
