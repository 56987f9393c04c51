"""Both official SDKs across dialects: the `anthropic` SDK against `/v1/messages` routed to
the OpenAI-shaped mock, and the `openai` SDK against an `anthropic` deployment on the mock's
Anthropic shape. Streaming and not, tools included."""

from __future__ import annotations

import anthropic
import pytest

from conftest import API_KEY, MOCK_CHUNKS

WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture()
def claude(gateway) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=f"http://{gateway.addr}", api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


def test_anthropic_sdk_on_openai_upstream(claude):
    msg = claude.messages.create(
        model="mock-fast",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[WEATHER_TOOL_ANTHROPIC],
    )
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.content[0].type == "text"
    assert "tok" in msg.content[0].text
    assert msg.usage.output_tokens == MOCK_CHUNKS
    assert msg.usage.input_tokens >= 1
    assert msg.stop_reason == "end_turn"


def test_anthropic_sdk_streaming_on_openai_upstream(claude):
    text = []
    with claude.messages.stream(
        model="mock-stream",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello."}],
    ) as stream:
        for chunk in stream.text_stream:
            text.append(chunk)
        final = stream.get_final_message()
    assert "".join(text).count("tok") >= 1
    assert final.usage.output_tokens == MOCK_CHUNKS


def test_anthropic_sdk_passthrough_to_anthropic_upstream(claude):
    msg = claude.messages.create(
        model="mock-anthropic",
        max_tokens=64,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert msg.model == "claude-mock"
    assert msg.usage.output_tokens == MOCK_CHUNKS


def test_openai_sdk_on_anthropic_upstream(client):
    resp = client.chat.completions.create(
        model="mock-anthropic",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        tools=[WEATHER_TOOL_OPENAI],
        tool_choice="auto",
    )
    assert resp.object == "chat.completion"
    assert "tok" in resp.choices[0].message.content
    assert resp.usage.completion_tokens == MOCK_CHUNKS


def test_openai_sdk_streaming_on_anthropic_upstream(client):
    stream = client.chat.completions.create(
        model="mock-anthropic",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.count("tok") >= 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == MOCK_CHUNKS


def test_openai_sdk_gets_400_for_n_on_anthropic(client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="mock-anthropic", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert "n" in str(e.value)
