//! Routing as the gateway runs it: a deployment pick by `sluice_core::balance::Balancer::pick`
//! for every strategy the config offers, on 2 and 8 deployments, and the model group lookup
//! (`sluice_core::config::Config::model`) in a 50-model config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice_bench::SplitMix64;
use sluice_core::balance::{BalanceConfig, Balancer, Outcome, Strategy};
use sluice_core::config::Config;

/// A balancer over `n` deployments with random weights, warmed like a worker's after some
/// traffic: every deployment has a latency estimate, and some have requests in flight.
fn warm_balancer(strategy: Strategy, n: usize, t0: Instant) -> Balancer {
    let mut rng = SplitMix64::new(n as u64);
    let weights: Vec<u32> = (0..n).map(|_| rng.range(1, 100) as u32).collect();
    let mut b = Balancer::with_config(strategy, &weights, &BalanceConfig::default());
    for i in 0..n {
        b.on_start(i, t0);
        let latency = Duration::from_millis(rng.range(50, 500) as u64);
        b.on_end(i, t0 + latency, Outcome::success(latency));
        for _ in 0..rng.range(0, 3) {
            b.on_start(i, t0 + latency);
        }
    }
    b
}

/// One pick, every deployment usable (a request's first attempt with all breakers closed).
/// Time moves on by a millisecond a pick, so `latency` decays its estimates as it would live;
/// the rolls are precomputed.
fn bench_pick(c: &mut Criterion) {
    let mut rng = SplitMix64::new(7);
    let rolls: Vec<u64> = (0..1024).map(|_| rng.next_u64()).collect();
    // The only clock read: a base for synthetic time.
    let t0 = Instant::now();
    let mut g = c.benchmark_group("balancer_pick");
    for strategy in Strategy::ALL {
        for n in [2, 8] {
            let mut b = warm_balancer(strategy, n, t0);
            let mut now = t0 + Duration::from_secs(1);
            let mut i = 0;
            g.bench_function(BenchmarkId::new(strategy.as_str(), n), |bench| {
                bench.iter(|| {
                    i = (i + 1) & 1023;
                    now += Duration::from_millis(1);
                    b.pick(now, rolls[i], |_| true).unwrap()
                })
            });
        }
    }
    g.finish();
}

/// 40 exact model names and 10 `prefix*` patterns, three providers, one to three
/// deployments each.
fn config_text() -> String {
    let mut t = String::from("[server]\nlisten = \"127.0.0.1:8080\"\n");
    for p in ["openai", "azure", "local"] {
        t.push_str(&format!(
            "[[providers]]\nname = \"{p}\"\nbase_url = \"http://127.0.0.1:9000/{p}/v1\"\n"
        ));
    }
    for i in 0..40 {
        t.push_str(&format!(
            "[[models]]\nname = \"team{i}-chat-large\"\ndeployments = [\
             {{ provider = \"openai\", model = \"gpt-4o\", weight = 3 }}, \
             {{ provider = \"azure\", model = \"gpt-4o-{i}\" }}]\n"
        ));
    }
    for i in 0..10 {
        t.push_str(&format!(
            "[[models]]\nname = \"family{i}-*\"\ndeployments = [{{ provider = \"local\", model = \"*\" }}]\n"
        ));
    }
    t
}

fn bench_model_lookup(c: &mut Criterion) {
    let config = Config::from_toml(&config_text(), &HashMap::<String, String>::new()).unwrap();
    assert_eq!(config.models.len(), 50);
    let cases = [
        ("exact", "team23-chat-large"),
        // Patterns are tried longest first; all have the same length here, so this one, listed
        // last, is tried last.
        ("pattern_last", "family9-2025-01-01"),
        ("miss", "unknown-model"),
    ];
    let mut g = c.benchmark_group("config_model");
    for (label, name) in cases {
        assert_eq!(config.model(name).is_some(), label != "miss", "{label}");
        g.bench_function(label, |b| b.iter(|| config.model(black_box(name))));
    }
    g.finish();
}

criterion_group!(benches, bench_pick, bench_model_lookup);
criterion_main!(benches);
