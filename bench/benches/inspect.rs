//! Request inspection and rewrite (`sluice_core::inspect`), against serde_json baselines.
//!
//! - `inspect/probe/*`: the gateway's borrowed probe of the routing fields.
//! - `inspect/serde_value/*`: a full `serde_json::Value` DOM of the same body, what a naive
//!   gateway would build.
//! - `inspect/serde_ignored/*`: `serde::de::IgnoredAny`, i.e. serde_json validating the JSON
//!   and building nothing: the floor for any serde-based probe.
//! - `inspect/utf8_only/*` and `inspect/serde_ignored_str/*`: the two passes `probe` makes
//!   (`std::str::from_utf8`, then serde_json over the `&str`), timed apart.
//! - `rewrite/*`: splicing the upstream model name (and `stream_options.include_usage`) into a
//!   copy of the body, into a reused buffer as the proxy does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::chat_body;
use sluice_core::inspect::{inspect, rewrite, Rewrite};

const SIZES: [(&str, usize); 2] = [("1KB", 1024), ("100KB", 100 * 1024)];

fn bench_inspect(c: &mut Criterion) {
    let mut g = c.benchmark_group("inspect");
    for (label, size) in SIZES {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("probe", label), &body, |b, body| {
            b.iter(|| inspect(black_box(body)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("serde_value", label), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("serde_ignored", label),
            &body,
            |b, body| {
                b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
            },
        );
        // The two passes `inspect` makes, apart: UTF-8 validation, then serde_json over a &str.
        g.bench_with_input(BenchmarkId::new("utf8_only", label), &body, |b, body| {
            b.iter(|| std::str::from_utf8(black_box(body)).unwrap().len())
        });
        let text = std::str::from_utf8(&body).unwrap();
        g.bench_with_input(
            BenchmarkId::new("serde_ignored_str", label),
            text,
            |b, text| {
                b.iter(|| serde_json::from_str::<serde::de::IgnoredAny>(black_box(text)).unwrap())
            },
        );
    }
    g.finish();
}

fn bench_rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    for (label, size) in SIZES {
        let body = chat_body(size);
        // The same body with `stream_options` present but false: the merge path re-serialises
        // that object.
        let with_opts = String::from_utf8(body.clone())
            .unwrap()
            .replacen(
                r#""stream":true,"#,
                r#""stream":true,"stream_options":{"include_usage":false},"#,
                1,
            )
            .into_bytes();
        let cases: [(&str, &[u8], Rewrite<'_>); 3] = [
            (
                "model",
                &body,
                Rewrite {
                    model: Some("mock-model-2024-08-06"),
                    force_include_usage: false,
                },
            ),
            (
                "model+insert_usage",
                &body,
                Rewrite {
                    model: Some("mock-model-2024-08-06"),
                    force_include_usage: true,
                },
            ),
            (
                "model+merge_usage",
                &with_opts,
                Rewrite {
                    model: Some("mock-model-2024-08-06"),
                    force_include_usage: true,
                },
            ),
        ];
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (name, input, edits) in cases {
            let inspected = inspect(input).unwrap();
            assert!(!edits.is_noop(&inspected));
            let mut out = Vec::with_capacity(input.len() + 128);
            g.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| {
                    out.clear();
                    rewrite(black_box(input), &inspected, edits, &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_inspect, bench_rewrite);
criterion_main!(benches);
