"""The OpenAI SDK over TLS: a gateway of its own with `[server.tls]`, a private CA and a
`localhost` certificate made with the `openssl` command line, and an httpx client that trusts
only that CA. Covers a completion and a stream end to end through the TLS listener."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from conftest import API_KEY, MOCK_CHUNKS, gateway_config, start_gateway, stop

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
    ctx = ssl.create_default_context(cafile=str(ca))

    def ready_over_tls(addr: str) -> bool:
        port = addr.rsplit(":", 1)[1]
        try:
            with urllib.request.urlopen(f"https://localhost:{port}/readyz", timeout=2,
                                        context=ctx) as r:
                return r.status == 200
        except OSError:
            return False

    gw = start_gateway(d, config, ready=ready_over_tls)
    port = gw.addr.rsplit(":", 1)[1]
    yield f"https://localhost:{port}/v1", ca
    stop(gw.proc)


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
