//! The response cache (`sluice_core::cache`): the exact key of 1 KB and 100 KB chat bodies,
//! a lookup that hits and one that misses, and the semantic index's exact search over 1,024
//! (what a worker scans itself), 10k (a full context, what a search thread scans) and 100k
//! unit vectors of 1,536 dimensions; it prints the bound a worker's own search stays within.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{chat_body, chat_response, SplitMix64};
use sluice_core::cache::key::exact_key_tree;
use sluice_core::cache::semantic::{
    normalised, SemanticIndex, SemanticQuery, INLINE_SCAN, MAX_PER_CONTEXT,
};
use sluice_core::cache::settings::CacheConfig;
use sluice_core::cache::{CacheKey, CallKind, KeyInput, MemoryStore, ResponseStore, StoredAnswer};
use sluice_core::dialect::Inbound;

fn input(body: &[u8]) -> KeyInput<'_> {
    KeyInput {
        scope: "team:search",
        kind: CallKind::Chat,
        inbound: Some(Inbound::OpenAiChat),
        model: "gpt-4o-mini",
        body,
    }
}

/// The exact key of a chat body: `streaming` (what the store computes: the canonical form
/// written straight from the bytes) against `tree` (the body parsed into a `serde_json::Value`
/// and written back, the path before; still the path of Anthropic requests).
fn key(c: &mut Criterion) {
    let store = MemoryStore::new(CacheConfig::default(), [9; 32]);
    let mut g = c.benchmark_group("cache_key");
    for size in [1024, 100 * 1024] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("streaming", size), &body, |b, body| {
            b.iter(|| store.key(&input(black_box(body))).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("tree", size), &body, |b, body| {
            b.iter(|| exact_key_tree(&[9; 32], &input(black_box(body))).unwrap())
        });
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let store = MemoryStore::new(CacheConfig::default(), [9; 32]);
    // A store with 10,000 answers of 2 KB in it.
    let mut keys = Vec::new();
    for i in 0..10_000u32 {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"prompt {i}"}}]}}"#
        );
        let k = store.key(&input(body.as_bytes())).unwrap();
        let answer = StoredAnswer {
            body: chat_response(2048),
            usage: None,
            cost_micros: Some(10),
            kind: CallKind::Chat,
        };
        store.insert(&k, answer, 3_600_000, 0);
        keys.push(k);
    }
    let hit = keys[4242];
    let miss = CacheKey {
        hash: [7; 32],
        ..hit
    };
    let mut g = c.benchmark_group("cache_lookup");
    g.bench_function("hit", |b| {
        b.iter(|| store.lookup(black_box(&hit), 1).unwrap())
    });
    g.bench_function("miss", |b| {
        b.iter(|| assert!(store.lookup(black_box(&miss), 1).is_none()))
    });
    g.finish();
}

fn semantic_search(c: &mut Criterion) {
    const DIMS: usize = 1536;
    let mut rng = SplitMix64::new(7);
    let mut vector = || {
        let v: Vec<f32> = (0..DIMS)
            .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        normalised(v).unwrap()
    };
    let q = SemanticQuery {
        context: [1; 32],
        text: "what is the capital of france".into(),
    };
    let k = CacheKey {
        hash: [2; 32],
        model_slot: 0,
        scope_slot: 0,
    };
    let mut g = c.benchmark_group("cache_semantic_search");
    g.sample_size(10);
    // 1,024: the most a worker scans itself (`INLINE_SCAN`); 10k: a full context, what a search
    // thread scans (`MAX_PER_CONTEXT`); 100k: ten full contexts, one searched, as a request does.
    for n in [INLINE_SCAN, MAX_PER_CONTEXT, 100_000] {
        // 100k vectors of 1,536 dimensions are 150 MiB as i8: bound the index accordingly.
        let index = SemanticIndex::new(1 << 31);
        for i in 0..n {
            let mut ctx = q.clone();
            // The probe's context (index 0) holds the first 10k.
            ctx.context[1] = 1 + (i / MAX_PER_CONTEXT) as u8;
            index.insert(&ctx, vector(), k, u64::MAX);
        }
        let probe = vector();
        g.throughput(Throughput::Elements(n.min(MAX_PER_CONTEXT) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &probe, |b, probe| {
            b.iter(|| index.search(&q, black_box(probe), 0.95, 0))
        });
        if n == MAX_PER_CONTEXT {
            // What a worker does with a full context when the search threads are busy: the
            // newest INLINE_SCAN vectors. Its slowest run is the bound the README states.
            g.throughput(Throughput::Elements(INLINE_SCAN as u64));
            g.bench_with_input(BenchmarkId::new("bounded", n), &probe, |b, probe| {
                b.iter(|| index.search_within(&q, black_box(probe), 0.95, 0, INLINE_SCAN))
            });
            let mut worst = std::time::Duration::ZERO;
            let mut all = Vec::with_capacity(200);
            for _ in 0..200 {
                let t = std::time::Instant::now();
                black_box(index.search_within(&q, &probe, 0.95, 0, INLINE_SCAN));
                let d = t.elapsed();
                worst = worst.max(d);
                all.push(d);
            }
            all.sort();
            println!(
                "cache_semantic_search bound: a worker scans at most {INLINE_SCAN} vectors of \
                 {DIMS} dims: median {:?}, p99 {:?}, max {:?} of 200 searches",
                all[100], all[197], worst
            );
        }
    }
    g.finish();
}

criterion_group!(benches, key, lookup, semantic_search);
criterion_main!(benches);
