"""Amazon Bedrock end to end over sockets.

First AWS's own SDK (boto3's `bedrock-runtime` client: botocore signs with SigV4 and parses the
binary event stream) against the mock, which shows the mock speaks Bedrock's Converse shapes
and checks signatures as Bedrock does. Then the official openai and anthropic SDKs through the
real gateway to a `bedrock` deployment on that mock (the gateway signs with `aws-sigv4`):
chat and messages, whole and streamed, with usage and cost in the ledger, and a wrong secret
surfacing as the mock's 403."""

from __future__ import annotations

import os

import anthropic
import boto3
import botocore.exceptions
import openai
import pytest
from botocore.config import Config

from conftest import (
    API_KEY,
    MOCK_CHUNK_SIZE,
    MOCK_CHUNKS,
    config_preamble,
    ledger_row,
    start_gateway,
    stop,
)

EXPECTED_TEXT = "tok " * ((MOCK_CHUNKS * MOCK_CHUNK_SIZE) // 4)
# The mock's test credentials (loadtest/src/mock/bedrock.rs).
ACCESS_KEY_ID = "AKIDMOCKBEDROCK0001"
SECRET_ACCESS_KEY = "mock/bedrock+secret/key/0123456789abcdef"
MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"


def bedrock_client(mock, secret: str = SECRET_ACCESS_KEY):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=mock.url,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=10, connect_timeout=5),
    )


# --- AWS's own SDK against the mock ----------------------------------------------------------


def test_boto3_converse_on_the_mock(mock):
    client = bedrock_client(mock)
    messages = [{"role": "user", "content": [{"text": "Say hello."}]}]
    resp = client.converse(modelId=MODEL_ID, messages=messages, inferenceConfig={"maxTokens": 32})
    assert resp["output"]["message"]["content"][0]["text"] == EXPECTED_TEXT
    assert resp["stopReason"] == "end_turn"
    assert resp["usage"]["outputTokens"] == MOCK_CHUNKS
    events = list(client.converse_stream(modelId=MODEL_ID, messages=messages)["stream"])
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == EXPECTED_TEXT
    assert [k for e in events for k in e if k != "contentBlockDelta"] == [
        "messageStart",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[-1]["metadata"]["usage"]["outputTokens"] == MOCK_CHUNKS


def test_the_mock_refuses_a_wrong_signature(mock):
    client = bedrock_client(mock, secret="wrong-secret")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.converse(modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- through the gateway ---------------------------------------------------------------------


def bedrock_config(mock_addr: str, store) -> str:
    return config_preamble(store) + f"""\
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{mock_addr}"
[providers.aws]
region = "us-east-1"
access_key_id = "env:SLUICE_PYTEST_AWS_KEY_ID"
secret_access_key = "env:SLUICE_PYTEST_AWS_SECRET"

[[providers]]
name = "bedrock-wrong"
kind = "bedrock"
base_url = "http://{mock_addr}"
[providers.aws]
region = "us-east-1"
access_key_id = "env:SLUICE_PYTEST_AWS_KEY_ID"
secret_access_key = "env:SLUICE_PYTEST_AWS_WRONG_SECRET"

[[models]]
name = "claude-bedrock"
deployments = [{{ provider = "bedrock", model = "{MODEL_ID}" }}]

[[models]]
name = "claude-bedrock-wrong"
deployments = [{{ provider = "bedrock-wrong", model = "{MODEL_ID}" }}]

[prices."anthropic.claude-3-haiku"]
input_per_mtok = 0.25
output_per_mtok = 1.25
"""


@pytest.fixture(scope="module")
def bedrock_gw(mock, tmp_path_factory):
    d = tmp_path_factory.mktemp("bedrock")
    env = {
        "SLUICE_PYTEST_AWS_KEY_ID": ACCESS_KEY_ID,
        "SLUICE_PYTEST_AWS_SECRET": SECRET_ACCESS_KEY,
        "SLUICE_PYTEST_AWS_WRONG_SECRET": "not-the-secret-0000",
    }
    os.environ.update(env)
    try:
        gw = start_gateway(d, bedrock_config(mock.addr, d / "sluice.db"))
    finally:
        for k in env:
            os.environ.pop(k, None)
    gw.db = d / "sluice.db"
    gw.dir = d
    yield gw
    stop(gw.proc)


@pytest.fixture()
def oai(bedrock_gw) -> openai.OpenAI:
    c = openai.OpenAI(base_url=bedrock_gw.base_url, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.fixture()
def claude(bedrock_gw) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=f"http://{bedrock_gw.addr}", api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


def test_openai_sdk_chat_on_bedrock(oai, bedrock_gw):
    raw = oai.chat.completions.with_raw_response.create(
        model="claude-bedrock",
        max_tokens=32,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == EXPECTED_TEXT
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == MOCK_CHUNKS
    row = ledger_row(bedrock_gw, raw.headers["x-request-id"])
    assert row["status"] == 200 and row["output_tokens"] == MOCK_CHUNKS
    assert row["input_tokens"] >= 1 and row["cost_micros"] > 0


def test_openai_sdk_stream_on_bedrock(oai, bedrock_gw):
    raw = oai.chat.completions.with_raw_response.create(
        model="claude-bedrock",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == MOCK_CHUNKS
    row = ledger_row(bedrock_gw, raw.headers["x-request-id"])
    assert row["output_tokens"] == MOCK_CHUNKS and row["cost_micros"] > 0


def test_anthropic_sdk_on_bedrock(claude):
    msg = claude.messages.create(
        model="claude-bedrock",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert msg.content[0].text == EXPECTED_TEXT
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == MOCK_CHUNKS
    with claude.messages.stream(
        model="claude-bedrock", max_tokens=64, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == EXPECTED_TEXT
    assert final.usage.output_tokens == MOCK_CHUNKS
    assert final.stop_reason == "end_turn"


def test_wrong_secret_is_a_clear_403(oai, bedrock_gw):
    with pytest.raises(openai.PermissionDeniedError) as e:
        oai.chat.completions.create(model="claude-bedrock-wrong", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 403
    assert "signature" in e.value.message
    logs = "".join(p.read_text(errors="replace") for p in bedrock_gw.dir.glob("sluice.std*"))
    assert SECRET_ACCESS_KEY not in logs and "not-the-secret-0000" not in logs
    assert SECRET_ACCESS_KEY not in str(e.value.body)
