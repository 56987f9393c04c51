//! SSE relay scanning (`sluice_core::sse::SseScanner`) and non-streaming usage extraction
//! (`sluice_core::usage::from_body`).
//!
//! The stream is a 500-token chat completion (4 content bytes per chunk, `"usage":null` in
//! every chunk as OpenAI sends once include_usage is on), fed to a fresh scanner per
//! iteration either one whole event per call (what a provider's writes look like) or in
//! 1400-byte slices (TCP segments, so events split across calls).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{chat_response, sse_stream};
use sluice_core::sse::SseScanner;
use sluice_core::usage;

/// Content chunks in the benched stream.
const EVENTS: usize = 500;
/// Content bytes per chunk (about one token).
const CONTENT_BYTES: usize = 4;
/// A TCP segment's worth of payload.
const SEGMENT: usize = 1400;

/// Splits a stream after each blank line, keeping the terminators.
fn events(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(i) = stream[start..].windows(2).position(|w| w == b"\n\n") {
        out.push(&stream[start..start + i + 2]);
        start += i + 2;
    }
    if start < stream.len() {
        out.push(&stream[start..]);
    }
    out
}

fn bench_scanner(c: &mut Criterion) {
    let stream = sse_stream(EVENTS, CONTENT_BYTES, true);
    let whole_events = events(&stream);
    let segments: Vec<&[u8]> = stream.chunks(SEGMENT).collect();
    let mut g = c.benchmark_group("sse_scan");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    for (mode, strip) in [("passthrough", false), ("strip", true)] {
        for (feed, pieces) in [("events", &whole_events), ("1400B", &segments)] {
            // Check once that the bench does the real work: usage found, [DONE] seen.
            let mut s = SseScanner::new(strip);
            let mut out = Vec::with_capacity(stream.len());
            for p in pieces.iter() {
                s.handle_bytes(p, &mut out);
            }
            s.finish(&mut out);
            assert!(s.usage().is_some() && s.saw_done(), "{mode}/{feed}");
            assert_eq!(s.data_events(), EVENTS as u64 + 2 + u64::from(!strip));

            g.bench_function(BenchmarkId::new(mode, feed), |b| {
                b.iter(|| {
                    out.clear();
                    let mut s = SseScanner::new(strip);
                    for p in pieces.iter() {
                        s.handle_bytes(black_box(p), &mut out);
                    }
                    s.finish(&mut out);
                    black_box(s.usage())
                })
            });
        }
    }
    // Baseline: the same stream without `"usage":null` in every chunk, so the `"usage"`
    // pre-filter skips all but the last chunk instead of JSON-parsing every one.
    let plain = sse_stream(EVENTS, CONTENT_BYTES, false);
    let plain_events = events(&plain);
    let mut out = Vec::with_capacity(plain.len());
    g.throughput(Throughput::Bytes(plain.len() as u64));
    g.bench_function(BenchmarkId::new("passthrough_no_nulls", "events"), |b| {
        b.iter(|| {
            out.clear();
            let mut s = SseScanner::new(false);
            for p in plain_events.iter() {
                s.handle_bytes(black_box(p), &mut out);
            }
            s.finish(&mut out);
            black_box(s.usage().unwrap())
        })
    });
    g.finish();
}

fn bench_usage_from_body(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_from_body");
    for (label, size) in [("1KB", 1024), ("64KB", 64 * 1024)] {
        let body = chat_response(size);
        assert!(usage::from_body(&body).is_some());
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| usage::from_body(black_box(body)).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_scanner, bench_usage_from_body);
criterion_main!(benches);
