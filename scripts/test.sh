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
# nginx or prometheus for comparison runs. Pass `command:package` pairs.
APT_PACKAGES=(promtool:prometheus systemd-analyze:systemd redis-server:redis-server)
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

step "cargo build --workspace --bins --locked"
cargo build --workspace --bins --locked

step "cargo test --workspace --locked"
cargo test --workspace --locked

# The binaries cargo just built (target/ unless CARGO_TARGET_DIR says otherwise).
export SLUICE_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug"

step "pytest tests/python (driver: default, io_uring where the kernel allows it)"
env -u SLUICE_DRIVER python3 -m pytest -q tests/python

step "pytest tests/python (driver: epoll)"
SLUICE_DRIVER=epoll python3 -m pytest -q tests/python

step "all tests passed"
