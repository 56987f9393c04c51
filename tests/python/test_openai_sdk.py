"""The official `openai` Python SDK against a real `sluice` gateway in front of the mock.

What a client written for OpenAI sees must be what OpenAI would send: same shapes, same
streaming, same errors; plus the gateway's own headers and one access-log line per request.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai
import pytest

from conftest import API_KEY, MOCK_CHUNK_SIZE, MOCK_CHUNKS

MESSAGES = [{"role": "user", "content": "Say hello."}]
# The mock answers MOCK_CHUNKS pieces of MOCK_CHUNK_SIZE bytes of "tok " cycled.
EXPECTED_TEXT = ("tok " * MOCK_CHUNK_SIZE)[:MOCK_CHUNK_SIZE] * MOCK_CHUNKS
EMBEDDING_DIMS = 8


def new_request_id() -> str:
    return f"pytest-{uuid.uuid4().hex}"


# --- chat completions --------------------------------------------------------------------


def test_chat_non_streaming(client):
    resp = client.chat.completions.create(model="mock-fast", messages=MESSAGES)
    assert resp.object == "chat.completion"
    # The gateway rewrites the public name to the deployment's; the mock echoes it.
    assert resp.model == "mock-model"
    assert len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == EXPECTED_TEXT
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == MOCK_CHUNKS
    assert resp.usage.prompt_tokens >= 1
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_streaming_without_usage(client):
    stream = client.chat.completions.create(model="mock-stream", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert chunks, "no chunk received"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == "mock-stream-model"
        # The gateway asked the upstream for usage; the client did not, so it never sees it.
        assert c.usage is None
        assert c.choices, f"chunk with empty choices (the usage chunk leaked): {c}"
    content = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(content) == MOCK_CHUNKS
    assert "".join(content) == EXPECTED_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_streaming_raw_bytes_carry_no_usage(gateway):
    """Byte level: neither the usage chunk nor the `"usage":null` members the upstream adds."""
    body = {"model": "mock-stream", "messages": MESSAGES, "stream": True}
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert '"usage"' not in r.text
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert events[-1].strip() == "data: [DONE]"


def test_chat_streaming_with_usage(client):
    stream = client.chat.completions.create(
        model="mock-stream",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    content_chunks = [c for c in chunks[:-1] if c.choices and c.choices[0].delta.content]
    assert last.usage.completion_tokens == len(content_chunks) == MOCK_CHUNKS
    assert last.usage.prompt_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_failing_midway_ends_with_error_event(client):
    """The upstream drops the connection after 3 chunks: the SDK sees an error, not a cut."""
    stream = client.chat.completions.create(
        model="mock-stream",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-disconnect-after": "3"},
    )
    received = []
    with pytest.raises(openai.APIError) as exc:
        for c in stream:
            if c.choices and c.choices[0].delta.content:
                received.append(c.choices[0].delta.content)
    assert "stream interrupted" in exc.value.message
    assert 0 < len(received) <= 3


# --- other endpoints ---------------------------------------------------------------------


def test_completions(client):
    resp = client.completions.create(model="mock-fast", prompt="Say hello.")
    assert resp.object == "text_completion"
    assert resp.model == "mock-model"
    assert resp.choices[0].text == EXPECTED_TEXT
    assert resp.usage.completion_tokens == MOCK_CHUNKS


def test_completions_streaming(client):
    chunks = list(client.completions.create(model="mock-stream", prompt="Say hello.", stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == EXPECTED_TEXT


def test_embeddings_string_input(client):
    resp = client.embeddings.create(model="mock-fast", input="hello world")
    assert resp.model == "mock-model"
    assert len(resp.data) == 1
    assert resp.data[0].index == 0
    assert len(resp.data[0].embedding) == EMBEDDING_DIMS
    assert all(isinstance(x, float) for x in resp.data[0].embedding)
    assert resp.usage.prompt_tokens >= 1


def test_embeddings_list_input(client):
    inputs = ["one", "two", "three"]
    resp = client.embeddings.create(model="mock-fast", input=inputs, encoding_format="float")
    assert [d.index for d in resp.data] == [0, 1, 2]
    assert all(len(d.embedding) == EMBEDDING_DIMS for d in resp.data)


def test_large_embeddings_arrive_compressed(client, gateway):
    """Many inputs make a large answer: the SDK (httpx) asks for gzip by itself, the gateway
    compresses, httpx decompresses transparently, and the vectors are all there."""
    inputs = [f"text {i}" for i in range(2000)]
    raw = client.embeddings.with_raw_response.create(
        model="mock-fast", input=inputs, encoding_format="float"
    )
    assert raw.status_code == 200
    sent = raw.http_request.headers.get("accept-encoding", "")
    assert "gzip" in sent, sent
    coding = raw.headers.get("content-encoding")
    assert coding in ("gzip", "br", "zstd"), raw.headers
    assert raw.headers.get("vary") == "accept-encoding"
    resp = raw.parse()
    assert [d.index for d in resp.data] == list(range(2000))
    assert all(len(d.embedding) == EMBEDDING_DIMS for d in resp.data)
    # The same request without compression: same JSON, many times the bytes on the wire.
    body = {"model": "mock-fast", "input": inputs, "encoding_format": "float"}
    auth = {"authorization": f"Bearer {API_KEY}"}
    plain = httpx.post(
        f"{gateway.base_url}/embeddings", json=body, headers={**auth, "accept-encoding": "identity"}
    )
    assert plain.headers.get("content-encoding") is None
    packed = httpx.post(
        f"{gateway.base_url}/embeddings", json=body, headers={**auth, "accept-encoding": "gzip"}
    )
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.json() == plain.json()
    assert packed.num_bytes_downloaded * 4 < plain.num_bytes_downloaded


def test_responses(client):
    resp = client.responses.create(model="mock-fast", input="Say hello.")
    assert resp.model == "mock-model"
    assert resp.status == "completed"
    assert resp.output_text == EXPECTED_TEXT
    assert resp.usage.output_tokens == MOCK_CHUNKS


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["mock-fast", "mock-stream", "mock-anthropic"]


# --- errors ------------------------------------------------------------------------------


def test_unknown_model_is_404_naming_it(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model-42", messages=MESSAGES)
    assert exc.value.status_code == 404
    assert "no-such-model-42" in exc.value.message
    assert exc.value.code == "model_not_found"
    assert exc.value.type == "invalid_request_error"


def test_invalid_json_is_400_in_openai_shape(gateway):
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=b'{"model": "mock-fast", "messages": [',
        headers={"content-type": "application/json", "authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    assert "code" in err


def test_wrong_key_is_an_authentication_error(base_url):
    with openai.OpenAI(base_url=base_url, api_key="sk-sluice-wrong", max_retries=0, timeout=10) as c:
        with pytest.raises(openai.AuthenticationError) as exc:
            c.chat.completions.create(model="mock-fast", messages=MESSAGES)
    assert exc.value.status_code == 401
    assert exc.value.code == "invalid_api_key"


def test_upstream_error_status_passes_through(client):
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(
            model="mock-fast", messages=MESSAGES, extra_headers={"x-mock-status": "429"}
        )
    assert exc.value.status_code == 429


# --- headers and the access log ----------------------------------------------------------


def test_raw_response_headers(client):
    raw = client.chat.completions.with_raw_response.create(model="mock-fast", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers.get("x-request-id")
    assert raw.headers.get("x-sluice-deployment") == "mock/mock-model"
    assert raw.parse().choices[0].message.content == EXPECTED_TEXT


def test_incoming_request_id_is_echoed(client):
    rid = new_request_id()
    raw = client.chat.completions.with_raw_response.create(
        model="mock-fast", messages=MESSAGES, extra_headers={"x-request-id": rid}
    )
    assert raw.headers.get("x-request-id") == rid


def test_access_log_lines(client, gateway):
    rid_chat, rid_stream, rid_404 = new_request_id(), new_request_id(), new_request_id()
    resp = client.chat.completions.create(
        model="mock-fast", messages=MESSAGES, extra_headers={"x-request-id": rid_chat}
    )
    chunks = list(
        client.chat.completions.create(
            model="mock-stream", messages=MESSAGES, stream=True, extra_headers={"x-request-id": rid_stream}
        )
    )
    assert chunks
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="nope", messages=MESSAGES, extra_headers={"x-request-id": rid_404}
        )

    line = gateway.access_line(rid_chat)
    assert line["model"] == "mock-fast"
    assert line["deployment"] == "mock/mock-model"
    assert line["status"] == 200
    assert line["stream"] is False
    assert line["input_tokens"] == resp.usage.prompt_tokens
    assert line["output_tokens"] == resp.usage.completion_tokens

    line = gateway.access_line(rid_stream)
    assert line["model"] == "mock-stream"
    assert line["status"] == 200
    assert line["stream"] is True
    # Usage came from the chunk the gateway asked for (and stripped), so it is exact.
    assert line["output_tokens"] == MOCK_CHUNKS
    assert line.get("tokens_estimated") is False

    line = gateway.access_line(rid_404)
    assert line["model"] == "nope"
    assert line["status"] == 404

    log = gateway.stdout.read_text(errors="replace")
    assert API_KEY not in log, "the client's API key appears in the gateway's log"


# --- concurrency -------------------------------------------------------------------------


def test_async_concurrent_streams(base_url, mock):
    streams = 20
    before = mock.stats()

    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model="mock-stream",
            messages=[{"role": "user", "content": f"stream {i}"}],
            stream=True,
            # Slow chunks so that all streams are open at the same time.
            extra_headers={"x-mock-chunk-delay-ms": "20"},
        )
        parts, finish = [], None
        async for c in stream:
            assert c.choices and c.usage is None
            parts.append(c.choices[0].delta.content or "")
            finish = c.choices[0].finish_reason or finish
        assert finish == "stop"
        return "".join(parts)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=15) as client:
            return await asyncio.gather(*(one(client, i) for i in range(streams)))

    texts = asyncio.run(run())
    assert texts == [EXPECTED_TEXT] * streams
    after = mock.stats()
    assert after["streams_completed"] - before["streams_completed"] >= streams
