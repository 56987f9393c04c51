//! HTTP/1.1 framing (`sluice_core::http1`): request and response heads as OpenAI clients and
//! the OpenAI API send them, chunked decoding, and chunked framing of relayed SSE events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::sse_stream;
use sluice_core::http1::{
    begin_chunk, encode_chunk, end_chunk, parse_request_head, parse_response_head, BodyFraming,
    ChunkedDecoder, HeadLimits, LAST_CHUNK,
};

/// The head the openai Python SDK (1.x, over httpx) sends for `chat.completions.create`.
const REQUEST_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n\
host: api.openai.com\r\n\
accept-encoding: gzip, deflate\r\n\
connection: keep-alive\r\n\
accept: application/json\r\n\
content-type: application/json\r\n\
user-agent: OpenAI/Python 1.54.3\r\n\
x-stainless-lang: python\r\n\
x-stainless-package-version: 1.54.3\r\n\
x-stainless-os: Linux\r\n\
x-stainless-arch: x64\r\n\
x-stainless-runtime: CPython\r\n\
x-stainless-runtime-version: 3.12.7\r\n\
authorization: Bearer sk-proj-3x4mpleK3yN0tRe4lAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijklmnopqrstuv\r\n\
x-stainless-async: false\r\n\
x-stainless-retry-count: 0\r\n\
x-stainless-read-timeout: 600\r\n\
content-length: 1024\r\n\
\r\n";

/// The head api.openai.com answers a streamed chat completion with.
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Mon, 10 Mar 2025 01:31:23 GMT\r\n\
Content-Type: text/event-stream; charset=utf-8\r\n\
Transfer-Encoding: chunked\r\n\
Connection: keep-alive\r\n\
access-control-expose-headers: X-Request-ID\r\n\
openai-organization: user-abcdefghijklmnopqrstuvwx\r\n\
openai-processing-ms: 187\r\n\
openai-version: 2020-10-01\r\n\
x-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-limit-tokens: 30000000\r\n\
x-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-remaining-tokens: 29998870\r\n\
x-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-reset-tokens: 2ms\r\n\
x-request-id: req_6f2b3c9a1d8e4f5a7b0c2d4e6f8a1b3c\r\n\
strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n\
cf-cache-status: DYNAMIC\r\n\
set-cookie: __cf_bm=Qm9ndXNDb29raWVWYWx1ZUZvckJlbmNobWFya2luZ09ubHkuMTIzNDU2Nzg5MA-1741570283-1.0.1.1-AbCdEfGhIjKlMnOpQrStUvWxYz; path=/; expires=Mon, 10-Mar-25 02:01:23 GMT; domain=.api.openai.com; HttpOnly; Secure; SameSite=None\r\n\
X-Content-Type-Options: nosniff\r\n\
Server: cloudflare\r\n\
CF-RAY: 91e1c2d3e4f5a6b7-SJC\r\n\
alt-svc: h3=\":443\"; ma=86400\r\n\
\r\n";

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 32 * 1024,
    max_body_bytes: 16 * 1024 * 1024,
};

fn bench_heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("http1_head");
    let (head, len) = parse_request_head(REQUEST_HEAD, &LIMITS).unwrap().unwrap();
    assert_eq!(
        (len, head.body),
        (REQUEST_HEAD.len(), BodyFraming::Length(1024))
    );
    g.throughput(Throughput::Bytes(REQUEST_HEAD.len() as u64));
    g.bench_function("request_openai_sdk", |b| {
        b.iter(|| parse_request_head(black_box(REQUEST_HEAD), &LIMITS).unwrap())
    });
    let (head, len) = parse_response_head(RESPONSE_HEAD, 32 * 1024, false)
        .unwrap()
        .unwrap();
    assert!(head.is_event_stream() && head.body == BodyFraming::Chunked);
    assert_eq!(len, RESPONSE_HEAD.len());
    g.throughput(Throughput::Bytes(RESPONSE_HEAD.len() as u64));
    g.bench_function("response_openai", |b| {
        b.iter(|| parse_response_head(black_box(RESPONSE_HEAD), 32 * 1024, false).unwrap())
    });
    g.finish();
}

fn bench_chunked(c: &mut Criterion) {
    // 64 KB of body in 100-byte chunks, then the last chunk.
    let body: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let mut encoded = Vec::new();
    for piece in body.chunks(100) {
        encode_chunk(piece, &mut encoded);
    }
    encoded.extend_from_slice(LAST_CHUNK);
    let mut out = Vec::with_capacity(body.len());
    let mut d = ChunkedDecoder::new(u64::MAX);
    assert_eq!(
        d.decode_into(&encoded, &mut out).unwrap(),
        (encoded.len(), true)
    );
    assert_eq!(out, body);

    let mut g = c.benchmark_group("http1_chunked");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function(
        BenchmarkId::new("decode_into_64KB_100B_chunks", "whole"),
        |b| {
            b.iter(|| {
                out.clear();
                let mut d = ChunkedDecoder::new(u64::MAX);
                black_box(d.decode_into(black_box(&encoded), &mut out).unwrap())
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("decode_into_64KB_100B_chunks", "1400B"),
        |b| {
            b.iter(|| {
                out.clear();
                let mut d = ChunkedDecoder::new(u64::MAX);
                for seg in encoded.chunks(1400) {
                    black_box(d.decode_into(black_box(seg), &mut out).unwrap());
                }
                d.is_done()
            })
        },
    );

    // Framing relayed SSE events (~330 B each) one chunk per event, as the relay writes them.
    let stream = sse_stream(200, 4, false);
    let text = std::str::from_utf8(&stream).unwrap();
    let events: Vec<&[u8]> = text.split_inclusive("\n\n").map(str::as_bytes).collect();
    let mut framed = Vec::with_capacity(stream.len() + events.len() * 16);
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function(
        BenchmarkId::new("frame_sse_events", "begin_end_chunk"),
        |b| {
            b.iter(|| {
                framed.clear();
                for e in &events {
                    let at = begin_chunk(&mut framed);
                    framed.extend_from_slice(black_box(e));
                    end_chunk(&mut framed, at);
                }
                framed.len()
            })
        },
    );
    g.bench_function(BenchmarkId::new("frame_sse_events", "encode_chunk"), |b| {
        b.iter(|| {
            framed.clear();
            for e in &events {
                encode_chunk(black_box(e), &mut framed);
            }
            framed.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_heads, bench_chunked);
criterion_main!(benches);
