"""The OpenAI SDK over TLS: a gateway of its own with `[server.tls]`, a private CA and a
`localhost` certificate made with the `openssl` command line, and an httpx client that trusts
only that CA. Covers a completion and a stream end to end through the TLS listener."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from conftest import API_KEY, MOCK_CHUNKS, binary, gateway_config, stop, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a `localhost` leaf signed by it: (ca.pem, cert.pem, key.pem)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, cwd=d, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sluice test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def tls_gateway(mock, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_pki(d)
    config = gateway_config(mock.addr, d / "sluice.db").replace(
        "workers = 2\n",
        f'workers = 2\n\n[server.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n',
        1,
    )
    path = d / "sluice.toml"
    path.write_text(config)
    stdout, stderr = d / "sluice.stdout", d / "sluice.stderr"
    env = os.environ.copy()
    env.pop("RUST_LOG", None)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [str(binary("sluice")), "serve", "--config", str(path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
        )
    logs = [stdout, stderr]

    def listening():
        for line in stdout.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("message") == "sluice listening" and rec.get("listen"):
                return rec["listen"]
        return None

    addr = wait_for("the gateway's `sluice listening` line", listening, proc, logs)
    port = addr.rsplit(":", 1)[1]
    ctx = ssl.create_default_context(cafile=str(ca))

    def ready():
        try:
            with urllib.request.urlopen(f"https://localhost:{port}/readyz", timeout=2,
                                        context=ctx) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for("GET /readyz over TLS answering 200", ready, proc, logs)
    yield f"https://localhost:{port}/v1", ca
    stop(proc)


@pytest.fixture()
def tls_client(tls_gateway):
    base_url, ca = tls_gateway
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(ca)))
    c = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=10,
                      http_client=http)
    yield c
    c.close()


def test_chat_over_tls(tls_client):
    r = tls_client.chat.completions.create(
        model="mock-fast", messages=[{"role": "user", "content": "hello"}]
    )
    assert r.choices[0].message.content
    assert r.usage.total_tokens > 0


def test_streaming_over_tls(tls_client):
    stream = tls_client.chat.completions.create(
        model="mock-stream", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    parts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(parts) == MOCK_CHUNKS


def test_untrusted_certificate_is_refused(tls_gateway):
    base_url, _ = tls_gateway
    c = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=5)
    with pytest.raises(openai.APIConnectionError):
        c.models.list()
    c.close()
