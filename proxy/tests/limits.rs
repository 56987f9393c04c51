//! Limits and budgets end to end, on two workers with many concurrent clients: rpm, tpm and
//! concurrency never over-admit, settlement charges what was used (streams and cancelled
//! streams included), and a budget holds at its edge with 100 concurrent requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use access::*;
use common::*;
use serde_json::{json, Value};

both_drivers!(
    rpm_holds_across_workers_for_keys_and_teams,
    tpm_reserves_then_settles,
    concurrency_never_over_admits,
    settlement_after_streams_and_cancelled_streams,
    budget_edge_with_100_concurrent_requests,
    rpm_headers_count_down_the_window,
);

/// `x-ratelimit-*-requests` follow the window: 2, 1, 0 left after three requests of an rpm-3
/// key, the reset is when the first of them leaves (under a minute), and the fourth is refused
/// with a `Retry-After` within the minute.
fn rpm_headers_count_down_the_window(driver: &str) {
    let mock = mock();
    let dir = temp_dir("rpm-headers");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    let (_, key) = gw.create_key(json!({"name": "three", "rpm": 3}));
    let started = Instant::now();
    for left in ["2", "1", "0"] {
        let r = gw.chat_as(&key, &chat("mock-fast", false), "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some(left));
        let reset = r.header("x-ratelimit-reset-requests").unwrap();
        // At most a minute: `1m0s`, `59.98s`, `20ms` (OpenAI's way of writing durations).
        let within = reset == "1m0s"
            || reset
                .strip_suffix("ms")
                .is_some_and(|v| v.parse::<u64>().is_ok())
            || reset
                .strip_suffix('s')
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v <= 60.0);
        assert!(within, "reset {reset}");
    }
    let r = gw.chat_as(&key, &chat("mock-fast", false), "");
    if started.elapsed() < Duration::from_secs(60) {
        assert_eq!(r.status, 429, "{}", r.text());
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
    }
    // A window, not a bucket: rpm 30 spent, 2.5 s later (a bucket would have refilled one
    // request every 2 s) still nothing while the minute lasts.
    let (_, key) = gw.create_key(json!({"name": "thirty", "rpm": 30}));
    let started = Instant::now();
    for _ in 0..30 {
        let r = gw.chat_as(&key, &chat("mock-fast", false), "");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let r = gw.chat_as(&key, &chat("mock-fast", false), "");
    if started.elapsed() < Duration::from_secs(60) {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    }
}

/// Sends `n` requests at once (one connection each, released together); returns the
/// responses and the time from release to the last answer.
fn burst(gw: &Gw, key: &str, n: usize, body: &str, extra: &str) -> (Vec<Response>, Duration) {
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (barrier, addr) = (barrier.clone(), gw.addr);
            let (body, extra) = (
                body.to_string(),
                format!("authorization: Bearer {key}\r\n{extra}"),
            );
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                barrier.wait();
                c.post("/v1/chat/completions", &body, &extra)
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let out: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (out, t0.elapsed())
}

fn count(rs: &[Response], status: u16) -> usize {
    rs.iter().filter(|r| r.status == status).count()
}

/// Ledger rows of `key_id` once at least `n` answered 200 are there.
fn ledger_rows(gw: &Gw, key_id: &str, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(5), || {
        let (_, v) = gw.admin(
            "GET",
            &format!("/admin/usage?key_id={key_id}&limit=10000"),
            None,
        );
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        (rows.iter().filter(|r| r["status"] == 200).count() >= n).then_some(rows)
    })
    .unwrap_or_else(|| panic!("fewer than {n} ledger rows for {key_id}"))
}

fn ledger_cost(rows: &[Value]) -> u64 {
    rows.iter()
        .map(|r| r["cost_micros"].as_u64().unwrap())
        .sum()
}

fn key_view(gw: &Gw, id: &str) -> Value {
    gw.admin("GET", &format!("/admin/keys/{id}"), None).1
}

fn rpm_holds_across_workers_for_keys_and_teams(driver: &str) {
    let mock = mock();
    let dir = temp_dir("rpm");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    let (_, key) = gw.create_key(json!({"name": "k", "rpm": 20}));
    let (rs, took) = burst(&gw, &key, 60, &chat("mock-fast", false), "");
    let ok = count(&rs, 200);
    // rpm is a sliding 60 s window: exactly 20 while the burst lasts under a minute.
    let windows = took.as_secs() as usize / 60 + 1;
    assert!(ok >= 20 && ok <= 20 * windows, "admitted {ok} in {took:?}");
    assert_eq!(ok + count(&rs, 429), 60);
    for r in rs.iter().filter(|r| r.status == 429) {
        assert_eq!(r.error_code(), "rate_limit_exceeded");
        assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("20"));
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let refused = 60 - ok;
    let m = gw.metrics();
    assert_eq!(
        sample(&m, r#"sluice_rate_limited_total{scope="requests"}"#) as usize,
        refused,
        "{m}"
    );

    // A team's limit is shared by its keys.
    gw.admin("POST", "/admin/teams", Some(json!({"name": "t", "rpm": 6})));
    let (_, a) = gw.create_key(json!({"name": "a", "team": "t"}));
    let (_, b) = gw.create_key(json!({"name": "b", "team": "t"}));
    let (ra, _) = burst(&gw, &a, 6, &chat("mock-fast", false), "");
    let (rb, _) = burst(&gw, &b, 6, &chat("mock-fast", false), "");
    let ok = count(&ra, 200) + count(&rb, 200);
    assert!((6..=7).contains(&ok), "team admitted {ok}");
    let refused = rb.iter().find(|r| r.status == 429).expect("b refused");
    assert!(refused.text().contains("team `t`"), "{}", refused.text());
    let _ = std::fs::remove_dir_all(dir);
}

fn tpm_reserves_then_settles(driver: &str) {
    let mock = mock();
    let dir = temp_dir("tpm");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    let (id, key) = gw.create_key(json!({"name": "k", "tpm": 3000}));
    // 400 bytes: a 100-token prompt estimate, plus max_tokens 100: 200 tokens reserved each.
    let body = chat_body("mock-fast", false, Some(100), 400);
    assert_eq!(body.len(), 400);
    let (rs, took) = burst(&gw, &key, 40, &body, "x-mock-latency-ms: 800\r\n");
    let ok = count(&rs, 200);
    let bound = (3000.0 + 3000.0 * took.as_secs_f64() / 60.0) as usize / 200;
    assert!(ok <= bound && ok >= 10, "admitted {ok}, bound {bound}");
    let refused = rs.iter().find(|r| r.status == 429).unwrap();
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("x-ratelimit-limit-tokens"), Some("3000"));

    // Settled with real usage (about 108 tokens each): the difference came back.
    let rows = ledger_rows(&gw, &id, ok);
    let used: u64 = rows
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["input_tokens"].as_u64().unwrap() + r["output_tokens"].as_u64().unwrap())
        .sum();
    assert!(used < ok as u64 * 200, "used {used}");
    let r = gw.chat_as(&key, &chat_body("mock-fast", false, Some(10), 40), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let remaining: u64 = r
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // Without refunds nothing (or one request's worth) would be left.
    assert!(
        remaining + 20 >= 3000 - used.min(3000) - 20,
        "remaining {remaining}, used {used}"
    );
    assert!(remaining > 3000 - ok as u64 * 200, "remaining {remaining}");

    // Larger than the bucket: 429 without Retry-After (waiting cannot help).
    let r = gw.chat_as(&key, &chat_body("mock-fast", false, Some(5000), 100), "");
    assert_eq!(
        (r.status, r.error_code()),
        (429, "rate_limit_exceeded".to_string())
    );
    assert!(r.header("retry-after").is_none());
    assert!(r.text().contains("too large"), "{}", r.text());
    let _ = std::fs::remove_dir_all(dir);
}

fn concurrency_never_over_admits(driver: &str) {
    let mock = mock();
    let dir = temp_dir("conc");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    let (id, key) = gw.create_key(json!({"name": "k", "max_concurrency": 3}));
    let (rs, _) = burst(
        &gw,
        &key,
        24,
        &chat("mock-fast", false),
        "x-mock-latency-ms: 1500\r\n",
    );
    assert_eq!(count(&rs, 200), 3, "exactly the limit ran at once");
    for r in rs.iter().filter(|r| r.status == 429) {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.text().contains("in flight"));
    }
    // Slots are released when each answer has been written.
    assert!(
        wait_for(Duration::from_secs(2), || (key_view(&gw, &id)["in_flight"]
            == 0)
            .then_some(()))
        .is_some()
    );
    let m = gw.metrics();
    assert_eq!(
        sample(&m, r#"sluice_rate_limited_total{scope="concurrency"}"#),
        21.0
    );
    // Slots came back.
    assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// Posts a stream and reads until `events` data events arrived, then drops the connection.
fn cancel_after(gw: &Gw, key: &str, request_id: &str, events: usize) {
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra = format!(
        "authorization: Bearer {key}\r\nx-request-id: {request_id}\r\nx-mock-chunks: 60\r\nx-mock-chunk-delay-ms: 50\r\n"
    );
    s.write_all(post_bytes("/v1/chat/completions", &chat("mock-stream", true), &extra).as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("data: ").count() < events {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
}

fn settlement_after_streams_and_cancelled_streams(driver: &str) {
    let mock = mock();
    let dir = temp_dir("settle");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    let (id, key) = gw.create_key(json!({"name": "k", "tpm": 1000000, "max_concurrency": 10,
                                         "budget_usd": 10.0}));
    // A whole stream: real usage (the gateway asked the upstream for it).
    let r = gw.chat_as(&key, &chat("mock-stream", true), "x-request-id: full-1\r\n");
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-ratelimit-limit-tokens").is_some(),
        "headers on streams too"
    );
    // A cancelled stream: what was delivered, estimated.
    cancel_after(&gw, &key, "cut-1", 4);
    let rows = ledger_rows(&gw, &id, 2);
    let full = rows.iter().find(|r| r["request_id"] == "full-1").unwrap();
    assert_eq!(full["output_tokens"], 8);
    assert_eq!(full["estimated"], false);
    assert!(full["cost_micros"].as_u64().unwrap() > 0);
    let cut = rows.iter().find(|r| r["request_id"] == "cut-1").unwrap();
    assert_eq!(cut["estimated"], true, "{cut}");
    // The prompt is estimated from the request body, which a stream lets go of once it is
    // delivered (its scan is kept): an empty body would estimate 1 token.
    assert!(cut["input_tokens"].as_u64().unwrap() > 1, "{cut}");
    let delivered = cut["output_tokens"].as_u64().unwrap();
    assert!(
        (3..30).contains(&delivered),
        "charged {delivered} of 60 chunks"
    );
    assert!(cut["cost_micros"].as_u64().unwrap() > 0);
    // Nothing stays reserved, and the key's spend is what the ledger says.
    let ok = wait_for(Duration::from_secs(3), || {
        let v = key_view(&gw, &id);
        (v["in_flight"] == 0 && v["reserved_usd"].as_f64() == Some(0.0)).then_some(v)
    })
    .expect("reservations settled");
    let spend = (ok["spend_usd"].as_f64().unwrap() * 1e6).round() as u64;
    assert_eq!(spend, ledger_cost(&rows));
    let _ = std::fs::remove_dir_all(dir);
}

fn budget_edge_with_100_concurrent_requests(driver: &str) {
    let mock = mock();
    let dir = temp_dir("budget");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 2, ""), driver);
    // 5000 micro-USD. Each request reserves 50 prompt tokens at 2.5 and 100 output tokens at
    // 10: 1125 micro-USD; it costs about 205.
    let (id, key) = gw.create_key(json!({"name": "k", "budget_usd": 0.005}));
    let reservation = 1125;
    let body = chat_body("mock-fast", false, Some(100), 200);
    let (rs, _) = burst(&gw, &key, 100, &body, "x-mock-latency-ms: 500\r\n");
    let ok = count(&rs, 200);
    assert!((1..=4).contains(&ok), "admitted {ok}");
    let refused = rs.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.error_code(), "budget_exceeded");
    assert!(
        refused.header("retry-after").is_some(),
        "monthly: retry when it resets"
    );
    // Keep spending one by one until refused.
    let mut admitted = ok;
    loop {
        let mut r = gw.chat_as(&key, &body, "");
        if r.status != 200 {
            // The previous request settles just after its answer was written: until then its
            // reservation still counts. Ask again once it surely settled.
            assert_eq!(r.error_code(), "budget_exceeded");
            std::thread::sleep(Duration::from_millis(100));
            r = gw.chat_as(&key, &body, "");
        }
        if r.status != 200 {
            assert_eq!(r.error_code(), "budget_exceeded");
            break;
        }
        admitted += 1;
        assert!(admitted < 100, "the budget never ran out");
    }
    let rows = ledger_rows(&gw, &id, admitted);
    let spent = ledger_cost(&rows);
    assert!(spent <= 5000 + reservation, "spent {spent}");
    assert!(
        spent + reservation > 5000 - 300,
        "spent {spent}: the budget was used up"
    );
    let v = key_view(&gw, &id);
    assert_eq!(
        (v["spend_usd"].as_f64().unwrap() * 1e6).round() as u64,
        spent
    );
    let m = gw.metrics();
    assert!(sample(&m, "sluice_budget_rejections_total") >= 96.0, "{m}");
    let cost = sample(&m, r#"sluice_cost_usd_total{model="mock-fast"}"#);
    assert!(
        (cost * 1e6 - spent as f64).abs() < 1.0,
        "metric {cost} vs ledger {spent}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
