//! Request inspection and rewrite (`sluice_core::inspect`), against serde_json baselines.
//!
//! - `inspect/probe/*`: the gateway's borrowed probe of the routing fields.
//! - `inspect/serde_value/*`: a full `serde_json::Value` DOM of the same body, what a naive
//!   gateway would build.
//! - `inspect/serde_ignored/*`: `serde::de::IgnoredAny`, i.e. serde_json validating the JSON
//!   and building nothing: the floor for any serde-based probe.
//! - `inspect/utf8_only/*` and `inspect/serde_ignored_str/*`: the two passes `probe` makes
//!   (`std::str::from_utf8`, then serde_json over the `&str`), timed apart.
//! - `parsers/{walk,serde_probe,sonic_probe,sonic_get,simd_probe}/{1KB,10KB,200KB}`: the
//!   same routing fields read by `inspect` (what the gateway runs: a validating walk over the
//!   top-level members, serde only for bodies it does not settle), by serde_json's borrowed
//!   probe (`RawValue`s keep the spans; the path `inspect` used before the walk, and still its
//!   fallback), by sonic-rs into the same borrowed struct (`LazyValue`s keep the raw spans the splice
//!   rewrite needs), by sonic-rs's `get_many` (no full validation of the rest of the body),
//!   and by simd-json (parses in place, so on a copy of the body, copy included; its strings
//!   then point into the mutated copy, so spans into the original must be found again).
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

/// The probe's fields, for serde_json: raw borrowed values where the gateway keeps spans.
#[derive(serde::Deserialize)]
struct SerdeProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    stream_options: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

/// The probe's fields, for sonic-rs: raw borrowed values where the gateway keeps spans.
#[derive(serde::Deserialize)]
struct SonicProbe<'a> {
    #[serde(borrow, default)]
    model: Option<sonic_rs::LazyValue<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    stream_options: Option<sonic_rs::LazyValue<'a>>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

/// The probe's fields, for simd-json (strings borrowed from the mutated copy).
#[derive(serde::Deserialize)]
struct SimdProbe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a str>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

/// What the gateway takes from a probe: the model's length (its span), the stream flag,
/// whether stream options were sent, and the first output-token limit given.
type ProbeRead = (Option<usize>, Option<bool>, bool, Option<u64>);

impl SerdeProbe<'_> {
    fn read(&self) -> ProbeRead {
        let limit = self.max_tokens.or(self.max_completion_tokens);
        let m = self.model.map(|m| m.get().len());
        (
            m,
            self.stream,
            self.stream_options.is_some(),
            limit.or(self.max_output_tokens),
        )
    }
}

impl SonicProbe<'_> {
    fn read(&self) -> ProbeRead {
        let limit = self.max_tokens.or(self.max_completion_tokens);
        let m = self.model.as_ref().map(|m| m.as_raw_str().len());
        (
            m,
            self.stream,
            self.stream_options.is_some(),
            limit.or(self.max_output_tokens),
        )
    }
}

impl SimdProbe<'_> {
    fn read(&self) -> ProbeRead {
        let limit = self.max_tokens.or(self.max_completion_tokens);
        let m = self.model.map(str::len);
        (
            m,
            self.stream,
            self.stream_options.is_some(),
            limit.or(self.max_output_tokens),
        )
    }
}

const PARSER_SIZES: [(&str, usize); 3] =
    [("1KB", 1024), ("10KB", 10 * 1024), ("200KB", 200 * 1024)];

fn bench_parsers(c: &mut Criterion) {
    let mut g = c.benchmark_group("parsers");
    for (label, size) in PARSER_SIZES {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        // All five must read the same model, so none skips the work.
        let want = inspect(&body).unwrap().model;
        let serde: SerdeProbe<'_> = serde_json::from_slice(&body).unwrap();
        assert_eq!(serde.model.unwrap().get(), format!("\"{want}\""));
        let sonic: SonicProbe<'_> = sonic_rs::from_slice(&body).unwrap();
        assert_eq!(sonic.model.unwrap().as_raw_str(), format!("\"{want}\""));
        let mut copy = body.clone();
        let simd: SimdProbe<'_> = simd_json::serde::from_slice(&mut copy).unwrap();
        assert_eq!(simd.model, Some(want.as_str()));

        g.bench_with_input(BenchmarkId::new("walk", label), &body, |b, body| {
            b.iter(|| inspect(black_box(body)).unwrap())
        });
        // Over the same `&str` `inspect` makes (UTF-8 checked first, as it does).
        g.bench_with_input(BenchmarkId::new("serde_probe", label), &body, |b, body| {
            b.iter(|| {
                let text = std::str::from_utf8(black_box(body)).unwrap();
                let p: SerdeProbe<'_> = serde_json::from_str(text).unwrap();
                black_box(p.read())
            })
        });
        g.bench_with_input(BenchmarkId::new("sonic_probe", label), &body, |b, body| {
            b.iter(|| {
                let p: SonicProbe<'_> = sonic_rs::from_slice(black_box(body)).unwrap();
                black_box(p.read())
            })
        });
        g.bench_with_input(BenchmarkId::new("sonic_get", label), &body, |b, body| {
            let mut tree = sonic_rs::PointerTree::new();
            for field in ["model", "stream", "stream_options", "max_tokens"] {
                tree.add_path(&[field]);
            }
            b.iter(|| {
                let got = sonic_rs::get_many(black_box(body.as_slice()), &tree).unwrap();
                black_box(
                    got.iter()
                        .flatten()
                        .map(|v| v.as_raw_str().len())
                        .sum::<usize>(),
                )
            })
        });
        let mut scratch = Vec::with_capacity(body.len());
        g.bench_function(BenchmarkId::new("simd_probe", label), |b| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(black_box(&body));
                let p: SimdProbe<'_> = simd_json::serde::from_slice(&mut scratch).unwrap();
                black_box(p.read())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_inspect, bench_parsers, bench_rewrite);
criterion_main!(benches);
