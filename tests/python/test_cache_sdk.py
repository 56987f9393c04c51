"""The response cache through the official SDKs: an answer stored once is replayed to the
`openai` SDK whole and as a stream (with and without `include_usage`), and to the
`anthropic` SDK whole and as a stream, each parsed by the SDK's own stream parser."""

from __future__ import annotations

import uuid

import anthropic
import pytest

from conftest import API_KEY


@pytest.fixture()
def claude(gateway) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=f"http://{gateway.addr}", api_key=API_KEY, max_retries=0, timeout=10)
    yield c
    c.close()


def test_a_stored_answer_replays_through_both_sdks(client, claude, mock):
    prompt = f"Cache me {uuid.uuid4().hex}"
    messages = [{"role": "user", "content": prompt}]
    before = mock.stats()["requests"]

    raw = client.chat.completions.with_raw_response.create(model="mock-cached", max_tokens=64, messages=messages)
    assert raw.headers["x-sluice-cache"] == "miss"
    first = raw.parse()
    text = first.choices[0].message.content
    assert text

    # Whole, again: a hit, the same answer.
    raw = client.chat.completions.with_raw_response.create(model="mock-cached", max_tokens=64, messages=messages)
    assert raw.headers["x-sluice-cache"] == "hit"
    assert raw.parse().choices[0].message.content == text

    # As a stream, parsed by the openai SDK: role first, the text, finish_reason, no usage.
    raw = client.chat.completions.with_raw_response.create(
        model="mock-cached", max_tokens=64, messages=messages, stream=True
    )
    assert raw.headers["x-sluice-cache"] == "hit"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)

    # include_usage: a last chunk with usage and no choices.
    stream = client.chat.completions.create(
        model="mock-cached",
        max_tokens=64,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == first.usage.total_tokens

    # The anthropic SDK, whole and streamed, gets the same text in its own shape.
    msg = claude.messages.create(model="mock-cached", max_tokens=64, messages=messages)
    assert msg.type == "message"
    assert msg.content[0].text == text
    with claude.messages.stream(model="mock-cached", max_tokens=64, messages=messages) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == text
    assert final.stop_reason == "end_turn"

    # Only the first request reached the mock.
    assert mock.stats()["requests"] - before == 1


def test_a_legacy_completion_replays_through_the_sdk(client, mock):
    prompt = f"Once upon a time {uuid.uuid4().hex}"
    before = mock.stats()["requests"]
    raw = client.completions.with_raw_response.create(model="mock-cached", max_tokens=16, prompt=prompt)
    assert raw.headers["x-sluice-cache"] == "miss"
    text = raw.parse().choices[0].text
    assert text

    raw = client.completions.with_raw_response.create(model="mock-cached", max_tokens=16, prompt=prompt)
    assert raw.headers["x-sluice-cache"] == "hit"
    assert raw.parse().object == "text_completion"
    assert raw.parse().choices[0].text == text

    # As a stream, parsed by the openai SDK, with the usage chunk it asked for.
    raw = client.completions.with_raw_response.create(
        model="mock-cached", max_tokens=16, prompt=prompt, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-sluice-cache"] == "hit"
    chunks = list(raw.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] is not None
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert mock.stats()["requests"] - before == 1
