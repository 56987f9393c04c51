//! Routing: the balancer's weighted pick (`sluice_core::balance::Balancer::pick`) and model group
//! lookup (`sluice_core::config::Config::model`) in a 50-model config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sluice_bench::SplitMix64;
use sluice_core::balance::{BalanceConfig, Balancer, Strategy};
use sluice_core::config::{Config, Deployment};

fn deployments(n: usize) -> Vec<Deployment> {
    let mut rng = SplitMix64::new(n as u64);
    (0..n)
        .map(|i| Deployment {
            provider: i % 3,
            model: format!("model-{i}"),
            weight: rng.range(1, 100) as u32,
            label: format!("p{}/model-{i}", i % 3),
            rpm: None,
            tpm: None,
        })
        .collect()
}

fn bench_pick(c: &mut Criterion) {
    let mut rng = SplitMix64::new(7);
    let rolls: Vec<u64> = (0..1024).map(|_| rng.next_u64()).collect();
    let mut g = c.benchmark_group("pick_weighted");
    let now = std::time::Instant::now();
    for n in [2, 4, 16] {
        let ds = deployments(n);
        let weights: Vec<u32> = ds.iter().map(|d| d.weight).collect();
        let mut balancer =
            Balancer::with_config(Strategy::Weighted, &weights, &BalanceConfig::default());
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                balancer.pick(now, rolls[i], |_| true).unwrap()
            })
        });
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
