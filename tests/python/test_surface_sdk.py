"""The OpenAI surface beyond chat, through a real gateway in front of the mock, with the
official SDKs: model lookup, moderations, images, audio (a generated WAV up, binary audio
down), Anthropic's token counting, and the Responses API on an `anthropic` deployment and an
`openai` one. Usage and cost land in the ledger where the provider reports them."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from conftest import API_KEY, MOCK_CHUNKS, MOCK_CHUNK_SIZE, config_preamble, ledger_row, small_wav

EXPECTED_TEXT = ("tok " * ((MOCK_CHUNKS * MOCK_CHUNK_SIZE) // 4))


def surface_config(mock_addr: str, store) -> str:
    return config_preamble(store) + f"""\
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://{mock_addr}/v1"

[[providers]]
name = "mock-anthropic"
kind = "anthropic"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[[models]]
name = "omni-moderation-*"
deployments = [{{ provider = "mock", model = "*" }}]

[[models]]
name = "mock-image"
deployments = [{{ provider = "mock", model = "gpt-image-1" }}]

[[models]]
name = "mock-transcribe"
deployments = [{{ provider = "mock", model = "gpt-4o-transcribe" }}]

[[models]]
name = "mock-tts"
deployments = [{{ provider = "mock", model = "tts-1" }}]

[[models]]
name = "mock-anthropic"
deployments = [{{ provider = "mock-anthropic", model = "claude-mock" }}]

# A pattern group: /v1/models lists the upstream's models it serves.
[[models]]
name = "gpt-*"
deployments = [{{ provider = "mock", model = "*" }}]

[prices."gpt-image-1"]
input_per_mtok = 5.0
output_per_mtok = 40.0

[prices."gpt-4o-transcribe"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[prices."claude-mock"]
input_per_mtok = 3.0
output_per_mtok = 15.0
"""


@pytest.fixture(scope="module")
def surface(mock, launch_gateway):
    return launch_gateway(lambda store: surface_config(mock.addr, store), name="surface")


@pytest.fixture()
def oai(surface) -> openai.OpenAI:
    c = openai.OpenAI(base_url=surface.base_url, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


@pytest.fixture()
def claude(surface) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=surface.root, api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


# --- models ------------------------------------------------------------------------------


def test_models_retrieve_and_list(oai):
    m = oai.models.retrieve("mock-fast")
    assert (m.id, m.object) == ("mock-fast", "model")
    with pytest.raises(openai.NotFoundError) as e:
        oai.models.retrieve("no-such-model")
    assert e.value.code == "model_not_found"
    # The pattern group lists the upstream's gpt-* models once the catalog is in.
    deadline = time.monotonic() + 10
    while True:
        ids = [m.id for m in oai.models.list()]
        if "gpt-4o" in ids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "gpt-4o-mini" in ids and "gpt-4o" in ids, ids
    assert "claude-3-5-haiku-latest" not in ids and "text-embedding-3-small" not in ids
    assert oai.models.retrieve("gpt-4o").id == "gpt-4o"


# --- moderations, images, audio ----------------------------------------------------------


def test_moderations_with_the_default_model(oai, surface):
    raw = oai.moderations.with_raw_response.create(input="I like cats.")
    mod = raw.parse()
    assert mod.results[0].flagged is False
    assert mod.model == "omni-moderation-latest"
    row = ledger_row(surface, raw.headers["x-request-id"])
    assert row["model"] == "omni-moderation-latest" and row["status"] == 200


def test_images_generate_with_usage_and_cost(oai, surface):
    raw = oai.images.with_raw_response.generate(model="mock-image", prompt="a cat", size="1024x1024")
    img = raw.parse()
    assert img.data[0].b64_json == "bW9jaw=="
    assert img.usage.output_tokens == MOCK_CHUNKS
    row = ledger_row(surface, raw.headers["x-request-id"])
    assert row["deployment"] == "mock/gpt-image-1"
    assert row["output_tokens"] == MOCK_CHUNKS and row["input_tokens"] == img.usage.input_tokens
    want = (img.usage.input_tokens * 5.0 + img.usage.output_tokens * 40.0)
    assert abs(row["cost_micros"] - want) <= 1, row


def test_audio_transcription_of_a_wav(oai, surface):
    wav = small_wav()
    raw = oai.audio.transcriptions.with_raw_response.create(
        model="mock-transcribe", file=("hello.wav", wav, "audio/wav"), language="en"
    )
    t = raw.parse()
    assert t.text == EXPECTED_TEXT
    row = ledger_row(surface, raw.headers["x-request-id"])
    # The mock answers with token usage; the form went through whole (prompt ~ body / 4).
    assert row["deployment"] == "mock/gpt-4o-transcribe"
    assert row["output_tokens"] == MOCK_CHUNKS
    assert row["input_tokens"] >= len(wav) // 4
    assert row["cost_micros"] > 0


def test_a_long_recording_is_streamed_to_the_upstream(oai, surface):
    # A minute of audio (~1.9 MB): the SDK sends `model` before the file, so the gateway
    # routes on it and streams the file on as it arrives rather than reading it whole.
    wav = small_wav(600)
    raw = oai.audio.transcriptions.with_raw_response.create(
        model="mock-transcribe", file=("long.wav", wav, "audio/wav")
    )
    assert raw.parse().text == EXPECTED_TEXT
    row = ledger_row(surface, raw.headers["x-request-id"])
    assert row["deployment"] == "mock/gpt-4o-transcribe"
    # The mock counts a quarter token per byte it received: the whole file reached it.
    assert row["input_tokens"] >= len(wav) // 4


def test_audio_speech_is_relayed_byte_for_byte(oai):
    raw = oai.audio.speech.with_raw_response.create(model="mock-tts", voice="alloy", input="Hello there.")
    assert raw.headers["content-type"] == "audio/mpeg"
    expected = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(i % 256 for i in range(256 * MOCK_CHUNKS))
    assert raw.content == expected
    # Larger than the gateway buffers (1 MiB): relayed as it arrives, still byte for byte.
    chunks = 5000
    with oai.audio.speech.with_streaming_response.create(
        model="mock-tts", voice="alloy", input="Hello there.", extra_headers={"x-mock-chunks": str(chunks)}
    ) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        audio = resp.read()
    assert audio == b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(i % 256 for i in range(256 * chunks))


# --- Anthropic token counting ------------------------------------------------------------


def test_count_tokens_passthrough_and_estimate(claude):
    msgs = [{"role": "user", "content": "Count these words for me, please."}]
    # An anthropic deployment counts exactly (the mock answers its prompt estimate).
    raw = claude.messages.with_raw_response.count_tokens(model="mock-anthropic", messages=msgs)
    exact = raw.parse()
    assert exact.input_tokens >= 1
    assert raw.headers.get("x-sluice-estimate") is None
    assert raw.headers.get("x-sluice-deployment") == "mock-anthropic/claude-mock"
    # An OpenAI deployment cannot count: the gateway estimates and says so.
    raw = claude.messages.with_raw_response.count_tokens(
        model="mock-fast", system="Be brief.", messages=msgs
    )
    est = raw.parse()
    assert raw.headers["x-sluice-estimate"] == "true"
    assert 5 <= est.input_tokens <= 40, est.input_tokens


# --- Responses API -----------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("model", ["mock-anthropic", "mock-fast"])
def test_responses_create(oai, surface, model):
    raw = oai.responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="Say hello.", tools=[WEATHER]
    )
    resp = raw.parse()
    assert resp.status == "completed"
    assert resp.output_text == EXPECTED_TEXT
    assert resp.usage.output_tokens == MOCK_CHUNKS
    row = ledger_row(surface, raw.headers["x-request-id"])
    assert row["output_tokens"] == MOCK_CHUNKS
    if model == "mock-anthropic":
        assert resp.id.startswith("resp_")
        assert row["deployment"] == "mock-anthropic/claude-mock"
        assert row["cost_micros"] > 0


@pytest.mark.parametrize("model", ["mock-anthropic", "mock-fast"])
def test_responses_stream(oai, model):
    deltas = []
    with oai.responses.stream(model=model, input=[{"role": "user", "content": "Say hello."}]) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == EXPECTED_TEXT
    assert final.output_text == EXPECTED_TEXT
    assert final.status == "completed"
    assert final.usage.output_tokens == MOCK_CHUNKS


def test_responses_state_is_refused_on_anthropic_naming_the_field(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="mock-anthropic", input="And then?", previous_response_id="resp_1")
    assert e.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model="mock-anthropic", input="hi", tools=[{"type": "web_search"}])
    assert e.value.param == "tools"
    # OpenAI deployments take the request as it came.
    resp = oai.responses.create(model="mock-fast", input="And then?", previous_response_id="resp_1")
    assert resp.status == "completed"


def test_responses_function_call_round_trip_on_anthropic(oai):
    """The SDK's own item shapes (a function call and its output) are accepted and translated."""
    first = oai.responses.create(model="mock-anthropic", input="Weather in Paris?", tools=[WEATHER])
    resp = oai.responses.create(
        model="mock-anthropic",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            *[item.model_dump(exclude_none=True) for item in first.output],
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C and sunny"},
        ],
        store=False,
    )
    assert resp.status == "completed"
    assert resp.output_text == EXPECTED_TEXT
