//! The semantic cache end to end: embeddings from the mock through a model of the gateway,
//! a paraphrase hits, a different question misses, the lexical guard refuses negated and
//! renumbered paraphrases, an earlier turn or system prompt that differs misses, teams stay
//! apart, and an embeddings upstream that is down or slow makes a miss, never an error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::{json, Value};
use sluice_loadtest::mock::MockConfig;

/// The store config plus `mock-semantic` (semantic cache, threshold 0.6) whose embeddings come
/// from `mock-embed` at `embed_base`.
fn semantic_config(
    mock: std::net::SocketAddr,
    dir: &std::path::Path,
    embed_base: &str,
    timeout_ms: u64,
) -> String {
    store_config(
        mock,
        &dir.join("s.db"),
        1,
        &format!(
            r#"
[[providers]]
name = "embedder"
base_url = "{embed_base}"

[[models]]
name = "mock-embed"
deployments = [{{ provider = "embedder", model = "text-embedding-3-small" }}]

[[models]]
name = "mock-semantic"
deployments = [{{ provider = "mock", model = "mock-model" }}]
cache = {{ semantic = true, threshold = 0.6, embedding_model = "mock-embed", embedding_timeout_ms = {timeout_ms} }}
"#
        ),
    )
}

fn ask(gw: &Gw, key: &str, system: &str, question: &str) -> Response {
    let body = format!(
        r#"{{"model":"mock-semantic","max_tokens":32,"messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{question}"}}]}}"#
    );
    let r = gw.chat_as(key, &body, "");
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn cache_header(r: &Response) -> String {
    r.header("x-sluice-cache").unwrap_or("").to_string()
}

/// Chat requests the mock answered (embeddings not counted).
fn chats(mock: &sluice_loadtest::mock::MockServer, before: u64, embeds: u64) -> u64 {
    mock.stats().requests - before - embeds
}

both_drivers!(paraphrases_hit_and_the_guard_holds);

fn paraphrases_hit_and_the_guard_holds(driver: &str) {
    let mock = mock();
    let dir = temp_dir("cache-semantic");
    let base = format!("http://{}/v1", mock.addr());
    let gw = start(&semantic_config(mock.addr(), &dir, &base, 2000), driver);
    let (_, a) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let (_, b) = gw.create_key(json!({"name": "b", "team": "beta"}));
    let sys = "Answer briefly.";

    let first = ask(&gw, &a, sys, "What is the capital city of France?");
    assert_eq!(cache_header(&first), "miss");
    assert_eq!(mock.stats().requests, 2, "one embedding, one chat");
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");

    // A paraphrase: answered from the cache, marked with its similarity.
    let before = mock.stats().requests;
    let para = ask(&gw, &a, sys, "Tell me the capital city of France");
    let h = cache_header(&para);
    assert!(h.starts_with("semantic; similarity=0."), "{h}");
    let sim: f64 = h.rsplit('=').next().unwrap().parse().unwrap();
    assert!((0.6..1.0).contains(&sim), "{h}");
    assert_eq!(para.json()["choices"], first.json()["choices"]);
    assert_eq!(chats(&mock, before, 1), 0, "only the embedding went out");
    assert_eq!(mock.last_request().unwrap().path, "/v1/embeddings");

    // A different question, a negated and a renumbered paraphrase, another system prompt,
    // another team: misses.
    let before = mock.stats().requests;
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "How do I bake sourdough bread?")),
        "miss"
    );
    assert_eq!(
        cache_header(&ask(
            &gw,
            &a,
            sys,
            "What is not the capital city of France?"
        )),
        "miss",
        "negation"
    );
    assert_eq!(
        cache_header(&ask(
            &gw,
            &a,
            "Answer at length.",
            "Tell me the capital city of France"
        )),
        "miss",
        "system prompt"
    );
    assert_eq!(
        cache_header(&ask(&gw, &b, sys, "Tell me the capital city of France")),
        "miss",
        "team"
    );
    assert_eq!(chats(&mock, before, 4), 4);

    let dose = ask(&gw, &a, sys, "Is it safe to take 2 tablets of aspirin?");
    assert_eq!(cache_header(&dose), "miss");
    assert!(
        cache_header(&ask(&gw, &a, sys, "Is it safe to take 2 aspirin tablets"))
            .starts_with("semantic")
    );
    assert_eq!(
        cache_header(&ask(
            &gw,
            &a,
            sys,
            "Is it safe to take 20 tablets of aspirin?"
        )),
        "miss",
        "number"
    );
    assert_eq!(
        cache_header(&ask(
            &gw,
            &a,
            sys,
            "Is it not safe to take 2 tablets of aspirin?"
        )),
        "miss",
        "negation"
    );

    // An earlier turn that differs is another conversation.
    let body = r#"{"model":"mock-semantic","max_tokens":32,"messages":[{"role":"system","content":"Answer briefly."},{"role":"user","content":"We talk about Texas."},{"role":"assistant","content":"OK."},{"role":"user","content":"Tell me the capital city of France"}]}"#;
    assert_eq!(
        gw.chat_as(&a, body, "").header("x-sluice-cache"),
        Some("miss")
    );

    // A per-request threshold above the similarity refuses the hit.
    let body = r#"{"model":"mock-semantic","max_tokens":32,"messages":[{"role":"system","content":"Answer briefly."},{"role":"user","content":"Please tell me the capital city of France"}]}"#;
    let strict = gw.chat_as(&a, body, "x-sluice-cache-threshold: 0.999\r\n");
    assert_eq!(strict.header("x-sluice-cache"), Some("miss"));

    // Ledger and metrics (the embeddings' rows are the gateway's, counted apart).
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", "/admin/usage?limit=100", None);
        let rows: Vec<Value> = v["data"]
            .as_array()?
            .iter()
            .filter(|r| r["key_id"] != "gateway")
            .cloned()
            .collect();
        (rows.len() >= 12).then_some(rows)
    })
    .expect("ledger rows");
    let semantic: Vec<_> = rows.iter().filter(|r| r["cache"] == "semantic").collect();
    assert_eq!(semantic.len(), 2, "{rows:?}");
    assert!(semantic.iter().all(|r| r["cost_micros"] == 0));
    let text = gw.metrics();
    assert_eq!(
        sample(
            &text,
            "sluice_cache_semantic_hits_total{model=\"mock-semantic\"}"
        ),
        2.0
    );
    assert!(text.contains("sluice_cache_embedding_seconds_count{model=\"mock-embed\"}"));
    let (_, v) = gw.admin("GET", "/admin/cache", None);
    assert!(v["store"]["vectors"].as_u64().unwrap() >= 5, "{v}");
}

/// The embedding call goes through the gateway's routing: `mock-embed`'s first deployment is
/// down and first in priority, so the first embedding fails there and is retried on the
/// second. It is accounted to the gateway: a ledger row with key id `gateway`,
/// nothing on the caller's key.
#[test]
fn embeddings_are_routed_retried_and_accounted_to_the_gateway() {
    let mock = mock();
    let dir = temp_dir("cache-semantic-routed");
    let base = format!("http://{}/v1", mock.addr());
    let config = store_config(
        mock.addr(),
        &dir.join("s.db"),
        1,
        &format!(
            r#"
[[providers]]
name = "embedder-down"
base_url = "http://127.0.0.1:1/v1"

[[providers]]
name = "embedder"
base_url = "{base}"

[[models]]
name = "mock-embed"
strategy = "priority"
deployments = [
  {{ provider = "embedder-down", model = "text-embedding-3-small" }},
  {{ provider = "embedder", model = "text-embedding-3-small" }},
]

[[models]]
name = "mock-semantic"
deployments = [{{ provider = "mock", model = "mock-model" }}]
cache = {{ semantic = true, threshold = 0.6, embedding_model = "mock-embed", embedding_timeout_ms = 2000 }}
"#
        ),
    );
    let gw = start(&config, driver_name(false));
    let (a_id, a) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let sys = "Answer briefly.";
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "What is the capital city of France?")),
        "miss"
    );
    // Every paraphrase finds the first answer: each embedding got through.
    for q in [
        "Tell me the capital city of France",
        "Please tell me the capital city of France",
        "What's the capital city of France",
    ] {
        let h = cache_header(&ask(&gw, &a, sys, q));
        assert!(h.starts_with("semantic; similarity="), "{q}: {h}");
    }
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", "/admin/usage?limit=100", None);
        let rows = v["data"].as_array()?.clone();
        (rows.len() >= 8).then_some(rows)
    })
    .expect("ledger rows");
    let gateway: Vec<_> = rows.iter().filter(|r| r["key_id"] == "gateway").collect();
    assert_eq!(gateway.len(), 4, "one row per embedding: {rows:?}");
    assert!(gateway.iter().all(|r| r["model"] == "mock-embed"
        && r["team"].is_null()
        && r["request_id"].as_str().unwrap().ends_with("-embed")));
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r["key_id"] == a_id.as_str())
        .collect();
    assert_eq!(mine.len(), 4, "{rows:?}");
    assert!(mine.iter().all(|r| r["model"] == "mock-semantic"));
    // The down deployment's failures were seen by routing (counted as upstream errors).
    let text = gw.metrics();
    assert!(
        text.lines()
            .any(|l| l.starts_with("sluice_upstream_errors_total") && l.contains("embedder-down")),
        "{text}"
    );
}

#[test]
fn embeddings_down_or_slow_fail_open() {
    let mock = mock();
    // Down: nothing listens on the embedder's port.
    let dir = temp_dir("cache-semantic-down");
    let gw = start(
        &semantic_config(mock.addr(), &dir, "http://127.0.0.1:1/v1", 200),
        driver_name(false),
    );
    let (_, a) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let sys = "Answer briefly.";
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "What is the capital city of France?")),
        "miss"
    );
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "Tell me the capital city of France")),
        "miss"
    );
    // The exact cache still works.
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "What is the capital city of France?")),
        "hit"
    );
    assert_eq!(mock.stats().requests, 2);
    drop(gw);

    // Slow: the embedder answers after a second, the timeout is 100 ms.
    let slow = mock_with(MockConfig {
        ttft_ms: 1000,
        ..MockConfig::default()
    });
    let dir = temp_dir("cache-semantic-slow");
    let base = format!("http://{}/v1", slow.addr());
    let gw = start(
        &semantic_config(mock.addr(), &dir, &base, 100),
        driver_name(false),
    );
    let (_, a) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let started = std::time::Instant::now();
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "What is the capital city of France?")),
        "miss"
    );
    assert_eq!(
        cache_header(&ask(&gw, &a, sys, "Tell me the capital city of France")),
        "miss"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let (_, v) = gw.admin("GET", "/admin/cache", None);
    assert_eq!(v["store"]["vectors"], 0, "{v}");
}

#[test]
fn the_example_config_serves_both_caches() {
    let mock = mock();
    let dir = temp_dir("cache-example");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/cache.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:9000", &mock.addr().to_string())
    .replace("127.0.0.1:8080", "127.0.0.1:0")
    .replace("127.0.0.1:8081", "127.0.0.1:0")
    .replace("workers = \"auto\"", "workers = 1")
    .replace(
        "[cache]",
        &format!(
            "[store]\npath = \"{}\"\n\n[cache]",
            dir.join("s.db").display()
        ),
    );
    let gw = start(&example, driver_name(false));
    let key = "sk-sluice-demo";
    let body =
        r#"{"model":"mock-fast","messages":[{"role":"user","content":"What is a sluice?"}]}"#;
    assert_eq!(
        gw.chat_as(key, body, "").header("x-sluice-cache"),
        Some("miss")
    );
    assert_eq!(
        gw.chat_as(key, body, "").header("x-sluice-cache"),
        Some("hit")
    );
    let q = |text: &str| {
        format!(r#"{{"model":"mock-semantic","messages":[{{"role":"user","content":"{text}"}}]}}"#)
    };
    let first = gw.chat_as(key, &q("What is the capital city of France?"), "");
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    let para = gw.chat_as(key, &q("Tell me the capital city of France"), "");
    let h = para.header("x-sluice-cache").unwrap_or("");
    assert!(h.starts_with("semantic; similarity="), "{h}");
    let (status, v) = gw.admin("GET", "/admin/cache", None);
    assert_eq!(status, 200);
    assert_eq!(v["groups"].as_array().unwrap().len(), 3, "{v}");
}
