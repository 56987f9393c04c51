//! The response cache across a fleet: two `sluice` processes sharing one real `redis-server`
//! (started here, stopped by PID) and one store file. An answer kept through replica A is
//! replayed by replica B without B going upstream (the mock's count proves it), a TTL is
//! honoured by the shared level, a clear reaches Redis, and with Redis down lookups are misses
//! served upstream, never errors.
//!
//! `redis-server` must be installed (`scripts/test.sh` installs it): a missing server fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::json;

fn prompt(text: &str) -> String {
    format!(
        r#"{{"model":"mock-fast","max_tokens":64,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    )
}

fn ask(gw: &Gw, key: &str, body: &str, extra: &str) -> Response {
    let mut c = Client::connect(gw.addr);
    c.post(
        "/v1/chat/completions",
        body,
        &format!("authorization: Bearer {key}\r\n{extra}"),
    )
}

/// The shared cache's entries in Redis.
fn entries(redis: &Redis) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", "sluice:c:*"])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn an_answer_kept_through_one_replica_is_a_hit_on_another_and_redis_down_is_a_miss() {
    let mock = mock();
    let dir = temp_dir("fleet-cache");
    let mut redis = Redis::start(&dir);
    let config = store_config(
        mock.addr(),
        &dir.join("s.db"),
        1,
        &format!(
            "[shared]\nredis_url = \"{}\"\nsync_interval_ms = 20\nlease_ttl_ms = 1000\ntimeout_ms = 200\n",
            redis.url()
        ),
    )
    .replace(
        "model = \"mock-model\" }]",
        "model = \"mock-model\" }]\ncache = { ttl_s = 600 }",
    );
    let a = start(&config, driver_name(false));
    let b = start(&config, driver_name(false));
    let (_, key) = a.create_key(json!({"name": "k", "team": "alpha"}));
    assert!(
        eventually(Duration::from_secs(3), || ask(
            &b,
            &key,
            &prompt("warm-up"),
            ""
        )
        .status
            == 200),
        "the key never reached B"
    );
    let upstream = mock.stats().requests;

    // Through A: a miss, kept in A and (in the background) in Redis.
    let body = prompt("What does a sluice gate do?");
    let first = ask(&a, &key, &body, "");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    assert_eq!(mock.stats().requests, upstream + 1);
    assert!(
        eventually(Duration::from_secs(3), || entries(&redis).len() >= 2),
        "the answers never reached Redis: {:?} {:?}",
        entries(&redis),
        [&a, &b].map(|g| {
            let m = g.metrics();
            ["writes", "dropped", "misses"]
                .map(|n| sample(&m, &format!("sluice_shared_cache_{n}_total")))
        })
    );
    let names = entries(&redis);
    assert!(names.iter().all(|n| n.len() < 100), "bounded key names");
    let ttl: i64 = redis.cli(&["PTTL", &names[0]]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 600_000,
        "every entry carries its TTL: {ttl}"
    );

    // Through B: its first level never saw it; Redis did. B does not go upstream.
    let second = ask(&b, &key, &body, "");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-sluice-cache"), Some("hit"));
    assert_eq!(second.body, first.body, "the stored answer, byte for byte");
    assert_eq!(mock.stats().requests, upstream + 1, "B never went upstream");
    assert_eq!(
        sample(&b.metrics(), "sluice_shared_cache_hits_total"),
        1.0,
        "a second-level hit"
    );
    // B kept it in its first level: again without Redis.
    let third = ask(&b, &key, &body, "");
    assert_eq!(third.header("x-sluice-cache"), Some("hit"));
    assert_eq!(sample(&b.metrics(), "sluice_shared_cache_hits_total"), 1.0);

    // Another tenant never sees it.
    let count = entries(&redis).len();
    let (_, other) = a.create_key(json!({"name": "o", "team": "beta"}));
    assert!(eventually(Duration::from_secs(3), || ask(
        &b,
        &other,
        &prompt("warm-up 2"),
        ""
    )
    .status
        == 200));
    let foreign = ask(&b, &other, &body, "");
    assert_eq!(foreign.header("x-sluice-cache"), Some("miss"));
    // (Both of its answers reach Redis before going on.)
    assert!(eventually(Duration::from_secs(3), || entries(&redis).len()
        >= count + 2));

    // A TTL of one second, through A: gone from Redis after it, so B goes upstream.
    let short = prompt("Which way does the water flow?");
    let before = mock.stats().requests;
    let count = entries(&redis).len();
    let r = ask(&a, &key, &short, "x-sluice-cache-ttl: 1\r\n");
    assert_eq!(r.header("x-sluice-cache"), Some("miss"));
    assert!(
        eventually(Duration::from_secs(3), || entries(&redis).len() > count),
        "{:?}",
        [&a, &b].map(|g| {
            let m = g.metrics();
            ["writes", "dropped", "misses"]
                .map(|n| sample(&m, &format!("sluice_shared_cache_{n}_total")))
        })
    );
    std::thread::sleep(Duration::from_millis(1300));
    let count = entries(&redis).len();
    let late = ask(&b, &key, &short, "");
    assert_eq!(late.status, 200);
    assert_eq!(late.header("x-sluice-cache"), Some("miss"), "the TTL held");
    assert_eq!(mock.stats().requests, before + 2);
    // (B's fresh answer reaches Redis before the clear.)
    assert!(eventually(Duration::from_secs(3), || entries(&redis).len() > count));

    // A clear through A's admin API empties the shared level too.
    let (status, _) = a.admin("DELETE", "/admin/cache", None);
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(3), || entries(&redis).is_empty()),
        "left in Redis: {:?}",
        entries(&redis)
    );

    // Redis down: lookups are misses served upstream, never errors.
    redis.stop();
    let before = mock.stats().requests;
    let down = prompt("Redis is down");
    for gw in [&a, &b, &a] {
        let r = ask(gw, &key, &down, "");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        mock.stats().requests,
        before + 2,
        "A's answer never reached B; A's first level still answers"
    );
    assert!(sample(&b.metrics(), "sluice_shared_cache_misses_total") >= 2.0);
}

/// Semantic entries: a prompt kept through A reaches B's index through the Redis stream (as
/// it arrives) and C's (a replica started afterwards reads the stream from its start); a
/// paraphrase through either is answered without a chat upstream.
#[test]
fn a_semantic_entry_kept_through_one_replica_feeds_every_replicas_index() {
    let mock = mock();
    let dir = temp_dir("fleet-cache-semantic");
    let redis = Redis::start(&dir);
    let config = store_config(
        mock.addr(),
        &dir.join("s.db"),
        1,
        &format!(
            r#"
[[providers]]
name = "embedder"
base_url = "http://{}/v1"

[[models]]
name = "mock-embed"
deployments = [{{ provider = "embedder", model = "text-embedding-3-small" }}]

[[models]]
name = "mock-semantic"
deployments = [{{ provider = "mock", model = "mock-model" }}]
cache = {{ semantic = true, threshold = 0.6, embedding_model = "mock-embed", embedding_timeout_ms = 2000 }}

[shared]
redis_url = "{}"
sync_interval_ms = 20
lease_ttl_ms = 1000
timeout_ms = 200
"#,
            mock.addr(),
            redis.url()
        ),
    );
    let semantic = |gw: &Gw, key: &str, question: &str| -> Response {
        let body = format!(
            r#"{{"model":"mock-semantic","max_tokens":32,"messages":[{{"role":"system","content":"Answer briefly."}},{{"role":"user","content":"{question}"}}]}}"#
        );
        let r = gw.chat_as(key, &body, "");
        assert_eq!(r.status, 200, "{}", r.text());
        r
    };
    let vectors = |gw: &Gw| gw.admin("GET", "/admin/cache", None).1["store"]["vectors"].as_u64();
    let a = start(&config, driver_name(false));
    let b = start(&config, driver_name(false));
    let (_, key) = a.create_key(json!({"name": "k", "team": "alpha"}));
    assert!(eventually(Duration::from_secs(3), || b
        .chat_as(&key, &chat("mock-fast", false), "")
        .status
        == 200));

    let first = semantic(&a, &key, "What is the capital city of France?");
    assert_eq!(first.header("x-sluice-cache"), Some("miss"));
    assert!(
        eventually(Duration::from_secs(3), || vectors(&b) == Some(1)),
        "B's index never heard of it (stream length {})",
        redis.cli(&["XLEN", "sluice:sem"])
    );
    let before = mock.stats().requests;
    let para = semantic(&b, &key, "Tell me the capital city of France");
    let mark = para.header("x-sluice-cache").unwrap_or("").to_string();
    assert!(mark.starts_with("semantic; similarity="), "{mark}");
    assert_eq!(para.json()["choices"], first.json()["choices"]);
    assert_eq!(
        mock.stats().requests,
        before + 1,
        "only the embedding went upstream"
    );

    // A replica started now reads the stream from its start.
    let c = start(&config, driver_name(false));
    assert!(eventually(Duration::from_secs(3), || vectors(&c) == Some(1)));
    let before = mock.stats().requests;
    let again = semantic(&c, &key, "Tell me the capital city of France");
    assert!(again
        .header("x-sluice-cache")
        .unwrap_or("")
        .starts_with("semantic"));
    assert_eq!(mock.stats().requests, before + 1);
    // A's own entry is not fed back to A twice.
    assert_eq!(vectors(&a), Some(1));
}
