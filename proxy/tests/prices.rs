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
    // Counted at settlement, just after the answer is written: wait for the second one.
    let admin = gw.admin.unwrap();
    let series = "sluice_unpriced_requests_total{model=\"mock-stream\"}";
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            sample(&Client::connect(admin).get("/metrics").text(), series) == 2.0
        }),
        "{}",
        Client::connect(admin).get("/metrics").text()
    );
    let metrics = Client::connect(admin).get("/metrics").text();
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

/// An upstream that answers every request on one connection with `body` (as JSON), for the
/// usage shapes the bundled mock does not produce. Returns its address; the thread ends
/// with the test process.
fn fixed_upstream(body: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then the body its content-length announces.
            let want = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break Some(end + 4 + len);
                }
            };
            let Some(want) = want else { continue };
            while buf.len() < want {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    addr
}

/// Anthropic's cache reads and writes are priced apart from plain input, through the real
/// gateway: Opus 4.5 at $5 in, $0.50 cache read, $6.25 cache write, $25 out.
#[test]
fn anthropic_cache_writes_are_priced_at_the_write_rate() {
    let upstream = fixed_upstream(
        r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-opus-4-5-20251101","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1000,"cache_read_input_tokens":2000,"cache_creation_input_tokens":4000,"output_tokens":100}}"#,
    );
    let cfg = format!(
        r#"auth = "none"

[server]
listen = "127.0.0.1:0"
workers = 1

[admin]
listen = "127.0.0.1:0"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{upstream}/v1"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"

[[models]]
name = "opus"
deployments = [{{ provider = "anthropic", model = "claude-opus-4-5-20251101" }}]
"#
    );
    let gw = Gateway::start(&cfg, "epoll");
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("opus", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    // 1000 * 5 + 2000 * 0.5 + 4000 * 6.25 + 100 * 25 micro-USD (cache writes as plain input
    // would be 28 500).
    assert_eq!(r.header("x-sluice-cost-usd"), Some("0.033500"));
    assert_eq!(r.json()["usage"]["prompt_tokens"], 7000);
}
