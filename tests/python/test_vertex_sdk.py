"""Google Vertex AI end to end: the official openai and anthropic SDKs through the real
gateway to a `vertex` provider on the mock, for both publishers (Gemini and Anthropic
models). The gateway mints its access tokens from the test-only service-account key in
tests/fixtures/vertex at the mock's token endpoint, which checks the RS256 signature."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest

from conftest import (
    API_KEY,
    MOCK_CHUNK_SIZE,
    MOCK_CHUNKS,
    REPO,
    config_preamble,
    ledger_row,
)

EXPECTED_TEXT = "tok " * ((MOCK_CHUNKS * MOCK_CHUNK_SIZE) // 4)
FIXTURES = REPO / "tests" / "fixtures" / "vertex"


def vertex_config(mock_addr: str, store: Path) -> str:
    return config_preamble(store) + f"""\
[[providers]]
name = "vertex"
kind = "vertex"
project = "sluice-test-project"
region = "us-east5"
credentials = "env:SLUICE_PYTEST_VERTEX_KEY"
base_url = "http://{mock_addr}"

[[models]]
name = "vertex-gemini"
deployments = [{{ provider = "vertex", model = "gemini-2.0-flash" }}]

[[models]]
name = "vertex-claude"
deployments = [{{ provider = "vertex", model = "claude-sonnet-4@20250514" }}]
"""


@pytest.fixture(scope="module")
def vertex(mock, launch_gateway):
    key = json.loads((FIXTURES / "test-sa.json").read_text())
    key["token_uri"] = f"{mock.url}/token"
    return launch_gateway(
        lambda store: vertex_config(mock.addr, store),
        env={"SLUICE_PYTEST_VERTEX_KEY": json.dumps(key)},
        name="vertex",
    )


@pytest.fixture()
def oai(vertex) -> openai.OpenAI:
    c = openai.OpenAI(base_url=vertex.base_url, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.mark.parametrize(
    ("model", "deployment"),
    [("vertex-gemini", "vertex/gemini-2.0-flash"), ("vertex-claude", "vertex/claude-sonnet-4@20250514")],
)
def test_chat_on_both_publishers(oai, vertex, model, deployment):
    raw = oai.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == EXPECTED_TEXT
    assert resp.usage.completion_tokens == MOCK_CHUNKS
    row = ledger_row(vertex, raw.headers["x-request-id"])
    assert row["deployment"] == deployment and row["status"] == 200
    assert row["output_tokens"] == MOCK_CHUNKS and row["cost_micros"] > 0
    chunks = list(
        oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED_TEXT
    assert chunks[-1].usage.completion_tokens == MOCK_CHUNKS


@pytest.mark.parametrize("model", ["vertex-gemini", "vertex-claude"])
def test_responses_on_both_publishers(oai, model):
    resp = oai.responses.create(model=model, instructions="Be brief.", input="Say hello.")
    assert resp.output_text == EXPECTED_TEXT
    with oai.responses.stream(model=model, input="Say hello.") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == EXPECTED_TEXT
    assert final.usage.output_tokens == MOCK_CHUNKS


def test_anthropic_sdk_on_the_anthropic_publisher(vertex):
    c = anthropic.Anthropic(base_url=vertex.root, api_key=API_KEY, max_retries=0, timeout=10)
    msg = c.messages.create(model="vertex-claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == EXPECTED_TEXT
    assert msg.usage.output_tokens == MOCK_CHUNKS
    with c.messages.stream(model="vertex-claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        assert "".join(s.text_stream) == EXPECTED_TEXT
    c.close()
