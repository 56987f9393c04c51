"""Fixtures: the bundled mock provider and a real `sluice` gateway in front of it.

Both processes are started once per session from prebuilt binaries:

- `SLUICE_BIN_DIR` (default `target/debug`, relative to the repository root) holds
  `sluice` and `sluice-mock`; `cargo build --workspace --bins` produces them.
- The environment is passed through, so `SLUICE_DRIVER=epoll` runs both processes on the
  epoll driver. `RUST_LOG` is removed for the gateway: the suite reads its info-level lines.

Ports are never guessed: both listen on port 0 and the suite reads the address each one
prints (the mock on stderr, the gateway in its first JSON log line on stdout).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sqlite3
import struct
import subprocess
import time
import urllib.error
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 15.0
STOP_GRACE_S = 5.0
# Fixed mock answer shape, so tests can assert exact text and token counts.
MOCK_CHUNKS = 8
MOCK_CHUNK_SIZE = 4
# The gateway requires keys: the suite's key is declared in the config (a literal key, as in
# examples/mock.toml: fine for tests and demos only).
API_KEY = "sk-sluice-pytest-3f9c2a7e"


def bin_dir() -> Path:
    d = Path(os.environ.get("SLUICE_BIN_DIR", "target/debug"))
    return d if d.is_absolute() else REPO / d


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not path.is_file():
        pytest.exit(
            f"{path} not found: run `cargo build --workspace --bins` or set SLUICE_BIN_DIR",
            returncode=2,
        )
    return path


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process is still there after the grace period."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_GRACE_S)


def wait_for(what: str, probe: Callable[[], object], proc: subprocess.Popen, logs: list[Path]):
    """Polls `probe` until it returns something truthy; fails with the logs on timeout or exit."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    status = proc.poll()
    stop(proc)
    tails = "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists())
    pytest.fail(
        f"{what} not seen within {STARTUP_TIMEOUT_S:.0f} s (exit status {status}):\n{tails}",
        pytrace=False,
    )


@dataclass
class Mock:
    addr: str
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/mock/stats", timeout=5) as r:
            return json.loads(r.read())


@dataclass
class Gateway:
    addr: str
    proc: subprocess.Popen
    stdout: Path
    config: Path
    # The SQLite store of a gateway started by `start_gateway_in` (the `gateway` and
    # `launch_gateway` fixtures), for `ledger_row`.
    db: Path | None = None
    # The admin listener's address, when the config has `[admin] listen`.
    admin: str | None = None
    _seen: int = field(default=0)

    @property
    def root(self) -> str:
        return f"http://{self.addr}"

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"

    def log_lines(self) -> list[dict]:
        """Every JSON line the gateway wrote to stdout so far."""
        out = []
        for line in self.stdout.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def access_line(self, request_id: str, timeout: float = 5.0) -> dict:
        """The access-log line of `request_id` (logs are written by a background thread)."""
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.log_lines():
                if rec.get("target") == "sluice::access" and rec.get("request_id") == request_id:
                    return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for request id {request_id!r} in {self.stdout}")
            time.sleep(0.05)


MOCK_LISTENING = re.compile(r"sluice-mock listening on (\S+)")


@pytest.fixture(scope="session")
def mock(tmp_path_factory) -> Mock:
    d = tmp_path_factory.mktemp("mock")
    stderr = d / "mock.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [
                str(binary("sluice-mock")),
                "--listen", "127.0.0.1:0",
                "--workers", "2",
                "--chunks", str(MOCK_CHUNKS),
                "--chunk-size", str(MOCK_CHUNK_SIZE),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=os.environ.copy(),
        )

    def listening():
        m = MOCK_LISTENING.search(stderr.read_text(errors="replace"))
        return m and m.group(1)

    addr = wait_for("the mock's listening line", listening, proc, [stderr])
    yield Mock(addr=addr, proc=proc)
    stop(proc)


def gateway_config(mock_addr: str, store: Path) -> str:
    """The session gateway's config: the shared preamble, then the mock (in the OpenAI and
    Anthropic dialects) and the model groups the SDK tests use."""
    return config_preamble(store) + f"""\
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[[models]]
name = "mock-stream"
deployments = [{{ provider = "mock", model = "mock-stream-model" }}]

# The same mock, spoken to in Anthropic's Messages dialect.
[[providers]]
name = "mock-anthropic"
kind = "anthropic"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "mock-anthropic"
deployments = [{{ provider = "mock-anthropic", model = "claude-mock" }}]

# The exact response cache (test_cache_sdk.py).
[[models]]
name = "mock-cached"
deployments = [{{ provider = "mock", model = "mock-model" }}]
cache = {{ ttl_s = 600 }}
"""


def config_preamble(store) -> str:
    """The start every SDK test's gateway config shares: an ephemeral listener, two workers,
    JSON logs, an admin listener, the SQLite store at `store` (for `ledger_row`) and the
    test key; the caller appends its providers and models."""
    return f"""\
[server]
listen = "127.0.0.1:0"
workers = 2

[log]
level = "info"
format = "json"

[admin]
listen = "127.0.0.1:0"

[store]
path = "{store}"
flush_interval_ms = 50

[[keys]]
name = "pytest"
key = "{API_KEY}"

"""


def log_field(stdout: Path, matches: Callable[[dict], bool], name: str):
    """Field `name` of the first JSON line in `stdout` that `matches` and has it; None until
    there is one."""
    for line in stdout.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and matches(rec) and rec.get(name):
            return rec[name]
    return None


def readyz_over_http(addr: str) -> bool:
    """Whether `GET /readyz` on `addr` (host:port, plain HTTP) answers 200."""
    try:
        with urllib.request.urlopen(f"http://{addr}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_gateway(d: Path, config_text: str, env: dict[str, str] | None = None,
                  ready: Callable[[str], bool] = readyz_over_http) -> Gateway:
    """Starts `sluice serve` with `config_text` (written to `d`), with `env` added to its
    environment, and waits until `ready(listen_addr)` holds (by default: `/readyz` answers
    200 over plain HTTP) and its admin listener, if the config has one, is bound. The caller
    stops it with `stop(gateway.proc)`; tests use the `gateway` and `launch_gateway`
    fixtures, which do."""
    config = d / "sluice.toml"
    config.write_text(config_text)
    stdout, stderr = d / "sluice.stdout", d / "sluice.stderr"
    extra = env or {}
    env = os.environ.copy()
    env.pop("RUST_LOG", None)
    env.update(extra)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [str(binary("sluice")), "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
        )
    logs = [stdout, stderr]

    def listening():
        return log_field(stdout, lambda rec: rec.get("message") == "sluice listening", "listen")

    addr = wait_for("the gateway's `sluice listening` line", listening, proc, logs)

    wait_for("GET /readyz answering 200", lambda: ready(addr), proc, logs)

    def admin_addr():
        return log_field(stdout, lambda rec: "admin listener" in str(rec.get("message")), "admin")

    # The `[admin]` table's own lines: up to the next table header.
    section = re.search(r"(?ms)^\[admin\]\s*$(.*?)(?=^\[|\Z)", config_text)
    admin = None
    if section and re.search(r"(?m)^\s*listen\s*=", section.group(1)):
        admin = wait_for("the admin listener's line", admin_addr, proc, logs)
    return Gateway(addr=addr, proc=proc, stdout=stdout, config=config, admin=admin)


def start_gateway_in(tmp_path_factory, name: str, config: Callable[[Path], str], env: dict[str, str] | None = None) -> Gateway:
    """`start_gateway` in a fresh directory `name`, with `config(store)` given the path its
    `[store]` should use (kept as `gateway.db` for `ledger_row`)."""
    d = tmp_path_factory.mktemp(name)
    store = d / "sluice.db"
    gw = start_gateway(d, config(store), env)
    gw.db = store
    return gw


@pytest.fixture(scope="module")
def launch_gateway(tmp_path_factory):
    """Starts gateways with a test module's own config, stopped when the module's tests end.

    `launch_gateway(config, env=None, name="gateway")`: `config(store)` returns the config
    text, given the path its `[store]` should use (kept as `gateway.db` for `ledger_row`);
    `env` adds variables (`env:` secrets) to that process's environment only.
    """
    started: list[Gateway] = []

    def launch(config: Callable[[Path], str], env: dict[str, str] | None = None, name: str = "gateway") -> Gateway:
        gw = start_gateway_in(tmp_path_factory, name, config, env)
        started.append(gw)
        return gw

    yield launch
    for gw in started:
        stop(gw.proc)


@pytest.fixture(scope="session")
def gateway(mock, tmp_path_factory) -> Gateway:
    gw = start_gateway_in(tmp_path_factory, "gateway", lambda store: gateway_config(mock.addr, store))
    yield gw
    stop(gw.proc)


def ledger_row(gw, request_id: str, timeout: float = 5.0) -> dict:
    """The ledger row of `request_id` (the ledger is written in batches off the data plane)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            con = sqlite3.connect(f"file:{gw.db}?mode=ro", uri=True, timeout=1)
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM ledger WHERE request_id = ?", (request_id,)).fetchone()
            con.close()
            if row is not None:
                return dict(row)
        except sqlite3.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no ledger row for {request_id!r}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def base_url(gateway) -> str:
    return gateway.base_url


@pytest.fixture()
def client(base_url) -> openai.OpenAI:
    c = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


def small_wav(tenths: int = 1) -> bytes:
    """`tenths` tenths of a second of a 440 Hz tone, 16 kHz mono 16-bit PCM."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        frames = b"".join(
            struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000))) for i in range(1600)
        )
        w.writeframes(frames * tenths)
    return buf.getvalue()
