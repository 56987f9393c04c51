"""Gemini and Azure OpenAI end to end over sockets.

First the providers' own official SDKs (`google-genai`, `openai.AzureOpenAI`) against the
mock, which shows the mock speaks their shapes (paths, `api-version`, `api-key`,
`x-goog-api-key`, `alt=sse` streams). Then the openai SDK through the real gateway to a
`gemini` and an `azure` deployment on that mock: chat completions and the Responses API,
whole and streamed, with usage in the ledger."""

from __future__ import annotations


import openai
import pytest
from google import genai
from google.genai import types

from conftest import API_KEY, MOCK_CHUNKS, MOCK_CHUNK_SIZE, config_preamble, ledger_row, small_wav

EXPECTED_TEXT = "tok " * ((MOCK_CHUNKS * MOCK_CHUNK_SIZE) // 4)
UPSTREAM_KEY = "sk-cloud-upstream-7d1e"
AZURE_API_VERSION = "2024-10-21"


# --- the official SDKs against the mock ----------------------------------------------------


def test_google_genai_sdk_on_the_mock(mock):
    client = genai.Client(
        api_key=UPSTREAM_KEY, http_options=types.HttpOptions(base_url=mock.url, api_version="v1beta")
    )
    resp = client.models.generate_content(model="gemini-2.0-flash", contents="Say hello.")
    assert resp.text == EXPECTED_TEXT
    assert resp.usage_metadata.candidates_token_count == MOCK_CHUNKS
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert text == EXPECTED_TEXT


def test_azure_openai_sdk_on_the_mock(mock):
    client = openai.AzureOpenAI(
        azure_endpoint=mock.url, api_key=UPSTREAM_KEY, api_version=AZURE_API_VERSION, max_retries=0, timeout=10
    )
    resp = client.chat.completions.create(model="prod-gpt4o", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content == EXPECTED_TEXT
    chunks = list(
        client.chat.completions.create(
            model="prod-gpt4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED_TEXT
    # The mock refuses what Azure refuses: no api-version.
    bare = openai.OpenAI(base_url=f"{mock.url}/openai/deployments/prod-gpt4o", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bare.chat.completions.create(model="prod-gpt4o", messages=[{"role": "user", "content": "hi"}])


SPEECH_BYTES = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(i % 256 for i in range(256 * MOCK_CHUNKS))


def test_azure_openai_sdk_surface_on_the_mock(mock):
    """The AzureOpenAI client's own paths for moderations, images and audio, on the mock."""
    client = openai.AzureOpenAI(
        azure_endpoint=mock.url, api_key=UPSTREAM_KEY, api_version=AZURE_API_VERSION, max_retries=0, timeout=10
    )
    assert client.moderations.create(model="omni-moderation-latest", input="hi").results[0].flagged is False
    assert client.images.generate(model="gpt-image-1", prompt="a cat").data[0].b64_json == "bW9jaw=="
    t = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.wav", small_wav(), "audio/wav"))
    assert t.text == EXPECTED_TEXT
    assert client.audio.speech.create(model="tts-prod", voice="alloy", input="hi").content == SPEECH_BYTES


# --- through the gateway -------------------------------------------------------------------


def clouds_config(mock_addr: str, store) -> str:
    return config_preamble(store) + f"""\
[[providers]]
name = "gem"
kind = "gemini"
base_url = "http://{mock_addr}/v1beta"
api_key = "env:SLUICE_PYTEST_CLOUD_KEY"

[[providers]]
name = "az"
kind = "azure"
base_url = "http://{mock_addr}"
api_key = "env:SLUICE_PYTEST_CLOUD_KEY"
api_version = "{AZURE_API_VERSION}"

[[models]]
name = "mock-gemini"
deployments = [{{ provider = "gem", model = "gemini-2.0-flash" }}]

[[models]]
name = "mock-azure"
deployments = [{{ provider = "az", model = "prod-gpt4o" }}]

# The rest of the surface on Azure deployments (deployment names as an Azure resource has them).
[[models]]
name = "azure-moderation"
deployments = [{{ provider = "az", model = "omni-moderation-latest" }}]

[[models]]
name = "azure-image"
deployments = [{{ provider = "az", model = "gpt-image-1" }}]

[[models]]
name = "azure-transcribe"
deployments = [{{ provider = "az", model = "gpt-4o-transcribe" }}]

[[models]]
name = "azure-tts"
deployments = [{{ provider = "az", model = "tts-prod" }}]

[prices."gpt-image-1"]
input_per_mtok = 5.0
output_per_mtok = 40.0

[prices."gpt-4o-transcribe"]
input_per_mtok = 2.5
output_per_mtok = 10.0
"""


@pytest.fixture(scope="module")
def clouds(mock, launch_gateway):
    return launch_gateway(
        lambda store: clouds_config(mock.addr, store),
        env={"SLUICE_PYTEST_CLOUD_KEY": UPSTREAM_KEY},
        name="clouds",
    )


@pytest.fixture()
def oai(clouds) -> openai.OpenAI:
    c = openai.OpenAI(base_url=clouds.base_url, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.mark.parametrize("model", ["mock-gemini", "mock-azure"])
def test_chat_through_the_gateway(oai, clouds, model):
    raw = oai.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == EXPECTED_TEXT
    assert resp.usage.completion_tokens == MOCK_CHUNKS
    row = ledger_row(clouds, raw.headers["x-request-id"])
    assert row["output_tokens"] == MOCK_CHUNKS and row["status"] == 200
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


@pytest.mark.parametrize("model", ["mock-gemini", "mock-azure"])
def test_responses_through_the_gateway(oai, model):
    resp = oai.responses.create(model=model, instructions="Be brief.", input="Say hello.")
    assert resp.output_text == EXPECTED_TEXT
    assert resp.usage.output_tokens == MOCK_CHUNKS
    with oai.responses.stream(model=model, input="Say hello.") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == EXPECTED_TEXT
    assert final.usage.output_tokens == MOCK_CHUNKS


# --- the rest of the surface on Azure deployments ------------------------------------------


def test_azure_moderations_and_images_through_the_gateway(oai, clouds):
    raw = oai.moderations.with_raw_response.create(model="azure-moderation", input="I like cats.")
    assert raw.parse().results[0].flagged is False
    assert ledger_row(clouds, raw.headers["x-request-id"])["deployment"] == "az/omni-moderation-latest"
    raw = oai.images.with_raw_response.generate(model="azure-image", prompt="a cat", size="1024x1024")
    img = raw.parse()
    assert img.data[0].b64_json == "bW9jaw=="
    row = ledger_row(clouds, raw.headers["x-request-id"])
    assert row["deployment"] == "az/gpt-image-1" and row["output_tokens"] == MOCK_CHUNKS
    # Priced as gpt-image-1 (the config's [prices]: per million tokens $5 in, $40 out).
    want = img.usage.input_tokens * 5.0 + img.usage.output_tokens * 40.0
    assert abs(row["cost_micros"] - want) <= 1, row


def test_azure_audio_through_the_gateway(oai, clouds):
    wav = small_wav()
    raw = oai.audio.transcriptions.with_raw_response.create(
        model="azure-transcribe", file=("hello.wav", wav, "audio/wav"), language="en"
    )
    assert raw.parse().text == EXPECTED_TEXT
    row = ledger_row(clouds, raw.headers["x-request-id"])
    assert row["deployment"] == "az/gpt-4o-transcribe" and row["output_tokens"] == MOCK_CHUNKS
    assert row["cost_micros"] > 0
    raw = oai.audio.speech.with_raw_response.create(model="azure-tts", voice="alloy", input="Hello there.")
    assert raw.headers["content-type"] == "audio/mpeg"
    assert raw.content == SPEECH_BYTES
