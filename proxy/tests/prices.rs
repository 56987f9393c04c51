//! Prices through the real binary: a LiteLLM-format catalog file (`[pricing] catalog_file`)
//! prices a model the bundled table does not know, a model without any price is a warning at
//! start and counted per request in `sluice_unpriced_requests_total{model}`, and a catalog
//! that cannot be read is refused before anything binds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::process::Command;

use access::sample;
use common::*;

#[test]
fn catalog_prices_and_unpriced_models_are_counted() {
    let mock = mock();
    let dir = std::env::temp_dir().join(format!("sluice-prices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let catalog = dir.join("model_prices_and_context_window.json");
    std::fs::write(
        &catalog,
        r#"{"sample_spec": {"input_cost_per_token": 0, "mode": "chat"},
            "mock-model": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                           "litellm_provider": "openai", "mode": "chat"}}"#,
    )
    .unwrap();
    let pricing = format!("\n[pricing]\ncatalog_file = \"{}\"\n", catalog.display());
    let cfg = config(mock.addr(), &pricing, "");
    let mut gw = Gateway::start(&cfg, "epoll");

    // Priced from the catalog: the cost header is its price times the usage reported.
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-fast", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let usage = &r.json()["usage"];
    let (input, output) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let micros = input * 2 + output * 8;
    assert!(micros > 0);
    assert_eq!(
        r.header("x-sluice-cost-usd"),
        Some(sluice_core::cost::format_usd(micros).as_str())
    );

    // No price anywhere: a warning at start, and a counter per request.
    let warned = gw
        .lines()
        .iter()
        .any(|l| l.contains("no price") && l.contains("mock/mock-stream-model"));
    assert!(warned, "{:?}", gw.lines());
    assert!(!gw
        .lines()
        .iter()
        .any(|l| l.contains("no price") && l.contains("mock/mock-model")));
    for _ in 0..2 {
        let r = gw
            .connect()
            .post("/v1/chat/completions", &chat("mock-stream", false), "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-sluice-cost-usd"), None);
    }
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert_eq!(
        sample(
            &metrics,
            "sluice_unpriced_requests_total{model=\"mock-stream\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert!(!metrics.contains("sluice_unpriced_requests_total{model=\"mock-fast\"}"));
    gw.sigterm();
    gw.wait_exit(std::time::Duration::from_secs(10));

    // check-config shows the catalog and the warning; an unreadable catalog is exit 64.
    let file = dir.join("sluice.toml");
    std::fs::write(&file, &cfg).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", "--config"])
        .arg(&file)
        .env("SLUICE_TEST_UPSTREAM_KEY", "x")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("price catalog"), "{text}");
    assert!(
        text.contains("warning: no price for mock/mock-stream-model"),
        "{text}"
    );
    std::fs::remove_file(&catalog).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("SLUICE_TEST_UPSTREAM_KEY", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pricing.catalog_file"));
    let _ = std::fs::remove_dir_all(dir);
}
