//! The response cache end to end, through the real binary and the bundled mock: the second
//! identical request never reaches the mock, stream and non-stream clients and OpenAI and
//! Anthropic clients share entries, only complete answers are kept, the request's cache
//! directives, TTL, eviction within `max_bytes`, team isolation, the ledger and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use access::*;
use common::*;
use serde_json::{json, Value};

/// The store config with the exact cache on `mock-fast` and `mock-stream`; `cache_table` is
/// the `[cache]` table's body.
fn cache_config(mock: std::net::SocketAddr, dir: &std::path::Path, cache_table: &str) -> String {
    store_config(
        mock,
        &dir.join("s.db"),
        1,
        &format!("[cache]\n{cache_table}\n"),
    )
    .replace(
        "model = \"mock-model\" }]",
        "model = \"mock-model\" }]\ncache = { ttl_s = 600 }",
    )
    .replace(
        "model = \"mock-stream-model\" }]",
        "model = \"mock-stream-model\" }]\ncache = { ttl_s = 600, scope = \"global\" }",
    )
}

fn prompt_body(model: &str, stream: bool, prompt: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":64,{extra}"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    )
}

fn post_as(gw: &Gw, key: &str, path: &str, body: &str, extra: &str) -> Response {
    let mut c = Client::connect(gw.addr);
    c.post(
        path,
        body,
        &format!("authorization: Bearer {key}\r\n{extra}"),
    )
}

/// The text of a chat completion, whole or streamed.
fn content(r: &Response) -> String {
    if r.header("content-type") == Some("text/event-stream") {
        r.sse_data()
            .iter()
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    } else {
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The text of an Anthropic message, whole or streamed.
fn anthropic_content(r: &Response) -> String {
    if r.header("content-type") == Some("text/event-stream") {
        r.sse_data()
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["type"] == "content_block_delta")
            .filter_map(|v| v["delta"]["text"].as_str().map(String::from))
            .collect()
    } else {
        r.json()["content"][0]["text"].as_str().unwrap().to_string()
    }
}

both_drivers!(exact_hits_are_replayed_in_every_shape_and_accounted);

fn exact_hits_are_replayed_in_every_shape_and_accounted(driver: &str) {
    let mock = mock();
    let dir = temp_dir("cache-exact");
    let gw = start(&cache_config(mock.addr(), &dir, ""), driver);
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let chat = "/v1/chat/completions";
    let body = prompt_body("mock-fast", false, "What is a sluice?", "");

    let first = post_as(&gw, &key, chat, &body, "");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    assert_eq!(mock.stats().requests, 1);
    let original = content(&first);
    assert!(!original.is_empty());

    // Whole, again: never reaches the mock, the same bytes.
    let second = post_as(&gw, &key, chat, &body, "");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-sluice-cache"), Some("hit"));
    assert_eq!(second.body, first.body, "a whole hit is the stored answer");
    assert!(
        second.header("x-ratelimit-limit-requests").is_some()
            || second.header("x-request-id").is_some()
    );

    // The same request as a stream: a hit, chunked, role first, finish_reason, [DONE], no
    // usage chunk unless asked.
    let sse = post_as(
        &gw,
        &key,
        chat,
        &prompt_body("mock-fast", true, "What is a sluice?", ""),
        "",
    );
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("x-sluice-cache"), Some("hit"));
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let data = sse.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.len() >= 3, "{data:?}");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(content(&sse), original, "byte-equal content");
    let with_usage = post_as(
        &gw,
        &key,
        chat,
        &prompt_body(
            "mock-fast",
            true,
            "What is a sluice?",
            r#""stream_options":{"include_usage":true},"#,
        ),
        "",
    );
    assert_eq!(with_usage.header("x-sluice-cache"), Some("hit"));
    let usage_chunk = with_usage
        .sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .expect("a usage chunk when include_usage");
    assert!(usage_chunk["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // An Anthropic client of the same group gets the same answer in its own shape.
    let messages = r#"{"model":"mock-fast","max_tokens":64,"messages":[{"role":"user","content":"What is a sluice?"}]}"#;
    let whole = post_as(
        &gw,
        &key,
        "/v1/messages",
        messages,
        "anthropic-version: 2023-06-01\r\n",
    );
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.header("x-sluice-cache"), Some("hit"));
    assert_eq!(whole.json()["type"], "message");
    assert_eq!(anthropic_content(&whole), original);
    let streamed = post_as(
        &gw,
        &key,
        "/v1/messages",
        &messages.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""),
        "",
    );
    assert_eq!(streamed.header("x-sluice-cache"), Some("hit"));
    assert!(streamed.text().contains("event: message_stop"));
    assert_eq!(anthropic_content(&streamed), original);
    assert_eq!(
        mock.stats().requests,
        1,
        "every hit was answered by the gateway"
    );

    // A stream stored first answers a whole request (and the other way round).
    let s1 = post_as(
        &gw,
        &key,
        chat,
        &prompt_body("mock-fast", true, "Stream me", ""),
        "",
    );
    assert_eq!(s1.header("x-sluice-cache"), Some("miss"));
    let w1 = post_as(
        &gw,
        &key,
        chat,
        &prompt_body("mock-fast", false, "Stream me", ""),
        "",
    );
    assert_eq!(w1.header("x-sluice-cache"), Some("hit"), "{}", w1.text());
    assert_eq!(content(&w1), content(&s1));
    assert_eq!(mock.stats().requests, 2);

    // The ledger: hits cost nothing and say what they saved.
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", "/admin/usage?limit=100", None);
        let rows = v["data"].as_array()?.clone();
        (rows.len() >= 8).then_some(rows)
    })
    .expect("ledger rows");
    let hits: Vec<&Value> = rows.iter().filter(|r| r["cache"] == "hit").collect();
    let misses: Vec<&Value> = rows.iter().filter(|r| r["cache"] == "miss").collect();
    assert_eq!((hits.len(), misses.len()), (6, 2), "{rows:?}");
    assert!(misses
        .iter()
        .all(|r| r["cost_micros"].as_u64().unwrap() > 0));
    for h in &hits {
        assert_eq!(h["cost_micros"], 0, "{h}");
        assert_ne!(h["saved_usd"], "0.000000", "{h}");
    }

    // Metrics, with the model label.
    let text = gw.metrics();
    assert_eq!(
        sample(&text, "sluice_cache_hits_total{model=\"mock-fast\"}"),
        6.0
    );
    assert_eq!(
        sample(&text, "sluice_cache_misses_total{model=\"mock-fast\"}"),
        2.0
    );
    assert!(
        sample(
            &text,
            "sluice_cache_saved_tokens_total{model=\"mock-fast\"}"
        ) > 0.0
    );
    assert!(sample(&text, "sluice_cache_entries") >= 2.0);
    promtool_accepts(&text);

    // The admin API: stats, then clearing the model's entries makes the next request a miss.
    let (status, v) = gw.admin("GET", "/admin/cache", None);
    assert_eq!(status, 200);
    assert!(v["store"]["entries"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["groups"][0]["model"], "mock-fast");
    let (status, _) = gw.admin("DELETE", "/admin/cache?model=mock-fast", None);
    assert_eq!(status, 200);
    let after = post_as(&gw, &key, chat, &body, "");
    assert_eq!(after.header("x-sluice-cache"), Some("miss"));
    assert_eq!(mock.stats().requests, 3);
}

both_drivers!(only_complete_answers_are_kept_and_directives_hold);

fn only_complete_answers_are_kept_and_directives_hold(driver: &str) {
    let mock = mock();
    let dir = temp_dir("cache-directives");
    let gw = start(&cache_config(mock.addr(), &dir, ""), driver);
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let chat = "/v1/chat/completions";
    let requests = || mock.stats().requests;

    // A 500 is not kept.
    let body = prompt_body("mock-fast", false, "fails once", "");
    let r = post_as(&gw, &key, chat, &body, "x-mock-status: 500\r\n");
    assert_eq!(r.status, 500);
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!((r.status, r.header("x-sluice-cache")), (200, Some("miss")));
    let base = requests();
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("hit"));
    // From here on, counted from `base`.
    let requests = || mock.stats().requests - base;
    assert_eq!(requests(), 0);

    // A stream cut by the upstream is not kept.
    let body = prompt_body("mock-fast", true, "cut short", "");
    let r = post_as(
        &gw,
        &key,
        chat,
        &body,
        "x-mock-chunks: 8\r\nx-mock-disconnect-after: 2\r\n",
    );
    assert!(r.text().contains("stream interrupted"), "{}", r.text());
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    assert_eq!(requests(), 2);

    // A stream the client cancels is not kept.
    let body = prompt_body("mock-fast", true, "cancelled", "");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(
        post_bytes(
            chat,
            &body,
            &format!(
                "authorization: Bearer {key}\r\nx-mock-chunks: 50\r\nx-mock-chunk-delay-ms: 40\r\n"
            ),
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(n > 0);
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), || mock.stats().streams_cancelled
            >= 1),
        "the gateway cancelled upstream"
    );
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    assert_eq!(requests(), 4);

    // no-store: neither read nor written.
    let body = prompt_body("mock-fast", false, "private", "");
    for _ in 0..2 {
        let r = post_as(&gw, &key, chat, &body, "cache-control: no-store\r\n");
        assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    }
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(
        r.header("x-sluice-cache"),
        Some("miss"),
        "no-store kept nothing"
    );
    assert_eq!(requests(), 7);
    // no-cache: the lookup is skipped and the entry refreshed; then a hit again.
    let r = post_as(&gw, &key, chat, &body, "cache-control: no-cache\r\n");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("hit"));
    assert_eq!(requests(), 8);

    // x-sluice-cache-ttl: the entry expires.
    let body = prompt_body("mock-fast", false, "short lived", "");
    post_as(&gw, &key, chat, &body, "x-sluice-cache-ttl: 1\r\n");
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("hit"));
    std::thread::sleep(Duration::from_millis(1100));
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"), "expired");
    assert_eq!(requests(), 10);

    // n > 1 is never cached; a group without a cache says nothing.
    let body = prompt_body("mock-fast", false, "two please", r#""n":2,"#);
    post_as(&gw, &key, chat, &body, "");
    let r = post_as(&gw, &key, chat, &body, "");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    assert_eq!(requests(), 12);

    // Embeddings answers are cached too (whole).
    let body = r#"{"model":"mock-fast","input":["a sluice gate","a canal lock"]}"#;
    let first = post_as(&gw, &key, "/v1/embeddings", body, "");
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    let again = post_as(&gw, &key, "/v1/embeddings", body, "");
    assert_eq!(again.header("x-sluice-cache"), Some("hit"));
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.json()["data"][1]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        256
    );
    assert_eq!(requests(), 13);
}

#[test]
fn teams_never_see_each_others_entries() {
    let mock = mock();
    let dir = temp_dir("cache-teams");
    let config = cache_config(mock.addr(), &dir, "")
        + "\n[[keys]]\nname = \"off\"\nkey = \"sk-sluice-cache-off-0123456789\"\nteam = \"alpha\"\ncache = false\n";
    let gw = start(&config, driver_name(false));
    let (_, a) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let (_, a2) = gw.create_key(json!({"name": "a2", "team": "alpha"}));
    let (_, b) = gw.create_key(json!({"name": "b", "team": "beta"}));
    let chat = "/v1/chat/completions";
    let body = prompt_body("mock-fast", false, "team secret", "");
    assert_eq!(
        post_as(&gw, &a, chat, &body, "").header("x-sluice-cache"),
        Some("miss")
    );
    assert_eq!(
        post_as(&gw, &a2, chat, &body, "").header("x-sluice-cache"),
        Some("hit"),
        "same team"
    );
    assert_eq!(
        post_as(&gw, &b, chat, &body, "").header("x-sluice-cache"),
        Some("miss"),
        "other team"
    );
    assert_eq!(mock.stats().requests, 2);
    // `mock-stream` is scoped globally: shared across teams.
    let body = prompt_body("mock-stream", false, "public", "");
    assert_eq!(
        post_as(&gw, &a, chat, &body, "").header("x-sluice-cache"),
        Some("miss")
    );
    assert_eq!(
        post_as(&gw, &b, chat, &body, "").header("x-sluice-cache"),
        Some("hit")
    );
    // Keys that opt out (`cache = false` in the config, `"cache": false` on an admin key, or
    // in its metadata as before the setting was typed) are neither served nor kept.
    let (off_id, off) = gw.create_key(json!({"name": "off-api", "team": "alpha", "cache": false}));
    let (_, old_style) =
        gw.create_key(json!({"name": "old", "team": "alpha", "metadata": {"cache": false}}));
    let (status, listed) = gw.admin("GET", "/admin/keys", None);
    assert_eq!(status, 200);
    let cache_of = |name: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["cache"].clone())
    };
    assert_eq!(cache_of("off-api"), Some(json!(false)), "{listed}");
    assert_eq!(cache_of("old"), Some(json!(false)), "{listed}");
    assert_eq!(cache_of("a"), Some(json!(true)), "{listed}");
    let body = prompt_body("mock-fast", false, "team secret", "");
    let before = mock.stats().requests;
    for k in [
        off.as_str(),
        old_style.as_str(),
        "sk-sluice-cache-off-0123456789",
        "sk-sluice-cache-off-0123456789",
    ] {
        let r = post_as(&gw, k, chat, &body, "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-sluice-cache"), None);
    }
    assert_eq!(mock.stats().requests - before, 4);
    // Turned on again through the admin API, the key is served from the team's entry.
    let (status, on) = gw.admin(
        "PATCH",
        &format!("/admin/keys/{off_id}"),
        Some(json!({"cache": true})),
    );
    assert_eq!((status, &on["cache"]), (200, &json!(true)), "{on}");
    assert_eq!(
        post_as(&gw, &off, chat, &body, "").header("x-sluice-cache"),
        Some("hit")
    );
    // Clearing one team's scope leaves the other's.
    let body = prompt_body("mock-fast", false, "team secret", "");
    let (status, _) = gw.admin("DELETE", "/admin/cache?scope=team:alpha", None);
    assert_eq!(status, 200);
    assert_eq!(
        post_as(&gw, &a, chat, &body, "").header("x-sluice-cache"),
        Some("miss")
    );
    assert_eq!(
        post_as(&gw, &b, chat, &body, "").header("x-sluice-cache"),
        Some("hit")
    );
}

#[test]
fn a_full_cache_evicts_and_never_grows_past_max_bytes() {
    let mock = mock();
    let dir = temp_dir("cache-evict");
    let max_bytes = 64 * 1024;
    let gw = start(
        &cache_config(
            mock.addr(),
            &dir,
            &format!("max_bytes = {max_bytes}\nmax_entry_bytes = 16384"),
        ),
        driver_name(false),
    );
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    // About 4 KiB per answer, 160 different prompts: ten times the bound.
    for i in 0..160 {
        let body = prompt_body("mock-fast", false, &format!("prompt number {i}"), "");
        let r = post_as(
            &gw,
            &key,
            "/v1/chat/completions",
            &body,
            "x-mock-chunks: 40\r\nx-mock-chunk-size: 100\r\n",
        );
        assert_eq!(r.status, 200);
        let (_, v) = gw.admin("GET", "/admin/cache", None);
        assert!(
            v["store"]["bytes"].as_u64().unwrap() <= max_bytes,
            "{}",
            v["store"]
        );
    }
    let (_, v) = gw.admin("GET", "/admin/cache", None);
    assert!(v["store"]["evictions"].as_u64().unwrap() > 100, "{v}");
    assert!(v["store"]["entries"].as_u64().unwrap() >= 4, "{v}");
    assert!(sample(&gw.metrics(), "sluice_cache_evictions_total") > 100.0);
}

/// `promtool check metrics` accepts the text (CI installs promtool).
fn promtool_accepts(text: &str) {
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => assert!(
            std::env::var_os("CI").is_none(),
            "CI must install promtool (Debian package prometheus)"
        ),
    }
}

#[test]
fn identical_requests_in_flight_are_coalesced() {
    let mock = mock();
    let dir = temp_dir("cache-coalesce");
    let config = cache_config(mock.addr(), &dir, "").replace(
        "cache = { ttl_s = 600 }",
        "cache = { ttl_s = 600, coalesce = true }",
    );
    let gw = start(&config, driver_name(false));
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let chat = "/v1/chat/completions";
    let run = |prompt: &'static str, leader_extra: &'static str| {
        let body = prompt_body("mock-fast", false, prompt, "");
        std::thread::scope(|s| {
            let leader = s.spawn(|| {
                post_as(
                    &gw,
                    &key,
                    chat,
                    &body,
                    &format!("x-mock-latency-ms: 400\r\n{leader_extra}"),
                )
            });
            // The followers arrive while the leader is in flight.
            std::thread::sleep(Duration::from_millis(100));
            let followers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| post_as(&gw, &key, chat, &body, "")))
                .collect();
            let leader = leader.join().unwrap();
            let followers: Vec<Response> =
                followers.into_iter().map(|f| f.join().unwrap()).collect();
            (leader, followers)
        })
    };

    let (leader, followers) = run("coalesce me", "");
    assert_eq!(leader.header("x-sluice-cache"), Some("miss"));
    for f in &followers {
        assert_eq!(f.status, 200);
        assert_eq!(f.header("x-sluice-cache"), Some("hit; coalesced"));
        assert_eq!(content(f), content(&leader));
    }
    assert_eq!(
        mock.stats().requests,
        1,
        "one upstream request for five clients"
    );

    // A leader that fails hands nothing: its followers go upstream themselves.
    let before = mock.stats().requests;
    let (leader, followers) = run("the leader fails", "x-mock-status: 400\r\n");
    assert_eq!(leader.status, 400);
    for f in &followers {
        assert_eq!(f.status, 200, "{}", f.text());
        assert_ne!(f.header("x-sluice-cache"), Some("hit; coalesced"));
    }
    assert!(mock.stats().requests - before >= 2);
}

/// The cache beside the other endpoints and compression: only chat, Messages and embeddings
/// answers are cached (a token count, a moderation or a Responses call in a group with a cache
/// always goes its own way); a miss is captured before it is compressed for the client, and
/// a hit is replayed compressed too; clearing the cache is in the audit log.
#[test]
fn other_endpoints_and_compression_beside_the_cache() {
    use std::io::Read as _;
    let mock = mock();
    let dir = temp_dir("cache-beside");
    let gw = start(&cache_config(mock.addr(), &dir, ""), "epoll");
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let requests = || mock.stats().requests;

    // Embeddings large enough to be compressed (200 inputs of 256 dimensions).
    let inputs: Vec<String> = (0..200).map(|i| format!("\"text {i}\"")).collect();
    let body = format!(r#"{{"model":"mock-fast","input":[{}]}}"#, inputs.join(","));
    let gzip = "accept-encoding: gzip\r\n";
    let miss = post_as(&gw, &key, "/v1/embeddings", &body, gzip);
    assert_eq!(miss.status, 200, "{}", miss.text());
    assert_eq!(miss.header("x-sluice-cache"), Some("miss"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    let mut identity = Vec::new();
    flate2::read::GzDecoder::new(&miss.body[..])
        .read_to_end(&mut identity)
        .unwrap();
    let hit = post_as(&gw, &key, "/v1/embeddings", &body, gzip);
    assert_eq!(hit.header("x-sluice-cache"), Some("hit"));
    assert_eq!(
        hit.header("content-encoding"),
        Some("gzip"),
        "a hit is compressed like a miss"
    );
    assert_eq!(hit.header("vary"), Some("accept-encoding"));
    let mut replayed = Vec::new();
    flate2::read::GzDecoder::new(&hit.body[..])
        .read_to_end(&mut replayed)
        .unwrap();
    assert_eq!(
        replayed, identity,
        "the upstream's bytes were kept, not ours"
    );
    // A client that accepts no coding gets the same bytes as they are.
    let plain = post_as(&gw, &key, "/v1/embeddings", &body, "");
    assert_eq!(plain.header("x-sluice-cache"), Some("hit"));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, identity);
    assert_eq!(requests(), 1);
    // The access line (formatted without tracing) names the verdict and what the hit saved.
    let lines = gw.access_lines(3);
    let verdicts: Vec<&Value> = lines.iter().map(|l| &l["cache"]).collect();
    assert_eq!(
        verdicts,
        [&json!("miss"), &json!("hit"), &json!("hit")],
        "{lines:?}"
    );
    assert!(lines[1]["saved_usd"].is_number(), "{}", lines[1]);

    // Not cached: each call reaches the mock (or the local estimate) and says nothing.
    let moderation = r#"{"model":"mock-fast","input":"is this fine?"}"#;
    let responses = r#"{"model":"mock-fast","input":"Say hello","max_output_tokens":20}"#;
    for (path, body) in [
        ("/v1/moderations", moderation),
        ("/v1/responses", responses),
    ] {
        for _ in 0..2 {
            let before = requests();
            let r = post_as(&gw, &key, path, body, "");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.header("x-sluice-cache"), None, "{path}");
            assert_eq!(requests(), before + 1, "{path} went upstream");
        }
    }
    let count = r#"{"model":"mock-fast","messages":[{"role":"user","content":"Count me"}]}"#;
    for _ in 0..2 {
        let r = post_as(&gw, &key, "/v1/messages/count_tokens", count, "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-sluice-cache"), None);
        assert_eq!(r.header("x-sluice-estimate"), Some("true"));
    }

    // Clearing the cache is an audited change.
    let (status, _) = gw.admin("DELETE", "/admin/cache?model=mock-fast", None);
    assert_eq!(status, 200);
    let (status, audit) = gw.admin("GET", "/admin/audit", None);
    assert_eq!(status, 200, "{audit}");
    let entry = &audit["data"][0];
    assert_eq!(entry["action"], "cache.clear", "{audit}");
    assert_eq!(entry["target"], "model=mock-fast scope=*", "{audit}");
    assert_eq!(entry["status"], 200);
    let (status, _) = gw.admin("GET", "/admin/cache", None);
    assert_eq!(status, 200);
    let (_, audit) = gw.admin("GET", "/admin/audit", None);
    assert_eq!(
        audit["data"].as_array().unwrap().len(),
        2,
        "reads are not audited: {audit}"
    );
}

/// Legacy `/v1/completions` answers are cached exactly like chat: stream and non-stream
/// requests share an entry, replayed in the completions shape (`text`, `[DONE]`, usage only
/// when asked), and never cross into chat's entries.
#[test]
fn legacy_completions_are_cached_like_chat() {
    let mock = mock();
    let dir = temp_dir("cache-completions");
    let gw = start(&cache_config(mock.addr(), &dir, ""), driver_name(false));
    let (_, key) = gw.create_key(json!({"name": "a", "team": "alpha"}));
    let requests = || mock.stats().requests;
    let path = "/v1/completions";
    let body = |stream: bool, extra: &str| {
        format!(
            r#"{{"model":"mock-fast","stream":{stream},{extra}"max_tokens":16,"prompt":"Once upon a time"}}"#
        )
    };
    let text_of = |r: &Response| -> String {
        if r.header("content-type") == Some("text/event-stream") {
            r.sse_data()
                .iter()
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["choices"][0]["text"].as_str().map(String::from))
                .collect()
        } else {
            r.json()["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let miss = post_as(&gw, &key, path, &body(false, ""), "");
    assert_eq!(miss.status, 200, "{}", miss.text());
    assert_eq!(miss.header("x-sluice-cache"), Some("miss"));
    let text = text_of(&miss);
    assert!(!text.is_empty());
    let hit = post_as(&gw, &key, path, &body(false, ""), "");
    assert_eq!(hit.header("x-sluice-cache"), Some("hit"));
    assert_eq!(hit.json()["object"], "text_completion");
    assert_eq!(text_of(&hit), text);
    let usage = r#""stream_options":{"include_usage":true},"#;
    let streamed = post_as(&gw, &key, path, &body(true, usage), "");
    assert_eq!(streamed.header("x-sluice-cache"), Some("hit"));
    assert_eq!(streamed.header("content-type"), Some("text/event-stream"));
    assert_eq!(text_of(&streamed), text);
    let data = streamed.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().any(|d| d.contains("\"usage\"")), "{data:?}");
    let plain = post_as(&gw, &key, path, &body(true, ""), "");
    assert!(!plain.sse_data().iter().any(|d| d.contains("\"usage\"")));
    assert_eq!(requests(), 1, "only the first reached the mock");

    // A streamed miss is kept too, and answers a whole request.
    let other = |stream: bool| {
        format!(
            r#"{{"model":"mock-fast","stream":{stream},"max_tokens":16,"prompt":"In a land far away"}}"#
        )
    };
    let first = post_as(&gw, &key, path, &other(true), "");
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    let again = post_as(&gw, &key, path, &other(false), "");
    assert_eq!(
        again.header("x-sluice-cache"),
        Some("hit"),
        "{}",
        again.text()
    );
    assert_eq!(text_of(&again), text_of(&first));
    assert_eq!(requests(), 2);

    // The same words as a chat request are another kind of call.
    let chat = prompt_body("mock-fast", false, "Once upon a time", "");
    let r = post_as(&gw, &key, "/v1/chat/completions", &chat, "");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
}
