//! The admin web page and what it reads, through the real binary: the embedded files and
//! their Content-Security-Policy, the audit log, live traffic from the gateway's own counters,
//! upstream health, and the admin listener's bounded thread pool. The page itself is driven in
//! a real browser by `tests/python/test_admin_ui.py`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::{json, Value};

const DRIVER: &str = "epoll";

fn raw(gw: &Gw, request: &str) -> Response {
    let mut c = Client::connect(gw.admin);
    c.send_raw(request.as_bytes());
    c.read_response()
}

#[test]
fn page_is_embedded_and_served_under_a_strict_policy() {
    let mock = mock();
    let dir = temp_dir("ui-files");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 1, ""), DRIVER);
    let files = [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/chart.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ];
    for (path, kind) in files {
        // No token: the page carries no data of its own.
        let r = raw(&gw, &format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'") && csp.contains("style-src 'self'"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        let text = r.text();
        // Nothing from another origin: the only absolute URL is SVG's namespace name.
        let outside = text
            .replace("http://www.w3.org/2000/svg", "")
            .contains("://");
        assert!(!outside, "{path} refers to another origin");
        if kind == "text/html" {
            // No inline script or style (the policy would block them anyway).
            assert!(
                !text.contains("<script>") && !text.contains("style="),
                "{path}"
            );
            assert!(!text.contains("<style"), "{path}");
            for tag in text.split("<script").skip(1) {
                assert!(tag.trim_start().starts_with("src=\"/ui/"), "{tag}");
            }
        }
        if kind == "text/javascript" {
            // The token lives in session storage and travels as a header only.
            assert!(!text.contains("document.cookie") && !text.contains("localStorage"));
            assert!(
                !text.contains("innerHTML"),
                "{path}: data goes in as text only"
            );
        }
    }
    let app = raw(&gw, "GET /ui/app.js HTTP/1.1\r\nhost: a\r\n\r\n").text();
    assert!(app.contains("sessionStorage") && app.contains("authorization: \"Bearer \""));
    let mut c = Client::connect(gw.admin);
    c.send_raw(b"HEAD /ui/app.js HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
    let mut head = String::new();
    std::io::Read::read_to_string(&mut c.stream, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head}"
    );
    let missing = raw(&gw, "GET /ui/secret.txt HTTP/1.1\r\nhost: a\r\n\r\n");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "unknown_url");
    let post = raw(
        &gw,
        "POST /ui/app.js HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

/// The audit log names the token by id, records changes (not reads, not refused tokens), and
/// says whether they came from the page, the CLI or another client.
#[test]
fn admin_changes_land_in_the_audit_log() {
    let mock = mock();
    let dir = temp_dir("ui-audit");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 1, ""), DRIVER);
    let call = |method: &str, path: &str, client: &str, body: Option<Value>| {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = raw(
            &gw,
            &format!(
                "{method} {path} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
                 x-sluice-client: {client}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        (r.status, r.json())
    };
    let (s, key) = call(
        "POST",
        "/admin/keys",
        "ui",
        Some(json!({"name": "audited", "rpm": 10})),
    );
    assert_eq!(s, 201);
    let id = key["id"].as_str().unwrap().to_string();
    assert_eq!(
        call("POST", &format!("/admin/keys/{id}/disable"), "cli", None).0,
        200
    );
    assert_eq!(
        call(
            "PATCH",
            "/admin/keys/key_nope",
            "other",
            Some(json!({"rpm": 1}))
        )
        .0,
        404
    );
    assert_eq!(gw.admin("GET", "/admin/keys", None).0, 200);
    // A refused token changes nothing and is not recorded.
    assert_eq!(
        gw.admin_as(
            Some("wrong"),
            "POST",
            "/admin/teams",
            Some(json!({"name": "x"}))
        )
        .0,
        401
    );
    assert_eq!(
        gw.admin("POST", "/admin/teams", Some(json!({"name": "ops"})))
            .0,
        201
    );

    let (s, log) = gw.admin("GET", "/admin/audit", None);
    assert_eq!(s, 200, "{log}");
    let rows: Vec<(String, String, String, u64)> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["via"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |a: &str, t: &str, v: &str, s: u64| (a.to_string(), t.to_string(), v.to_string(), s);
    assert_eq!(
        rows,
        [
            row("teams.create", "ops", "api", 201),
            row("keys.update", "key_nope", "api", 404),
            row("keys.disable", &id, "cli", 200),
            row("keys.create", &id, "ui", 201),
        ],
        "newest first, reads and refused tokens left out"
    );
    let token_id = format!(
        "admin-{}",
        sluice_core::keys::to_hex(&sluice_core::keys::hash_key(ADMIN_TOKEN)[..4])
    );
    for e in log["data"].as_array().unwrap() {
        assert_eq!(e["actor"], token_id.as_str());
        assert!(e["ts_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    assert!(!log.to_string().contains(ADMIN_TOKEN));
    assert!(!log.to_string().contains(key["key"].as_str().unwrap()));
    let (_, me) = gw.admin("GET", "/admin/whoami", None);
    assert_eq!(me["token_id"], token_id.as_str());
    let (_, one) = gw.admin("GET", "/admin/audit?limit=1", None);
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(gw.admin("GET", "/admin/audit?limit=0", None).0, 400);
    // The gateway's log has the same lines, without the token.
    // (Written by the log thread: wait for it.)
    assert!(eventually(Duration::from_secs(5), || gw
        .lines()
        .join("\n")
        .contains("admin: audit")));
    assert!(!gw.lines().join("\n").contains(ADMIN_TOKEN));
}

/// `/admin/live` moves with traffic; `/admin/health` lists each deployment's breaker.
#[test]
fn live_traffic_and_upstream_health() {
    let mock = mock();
    let dir = temp_dir("ui-live");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 1, ""), DRIVER);
    let (s, before) = gw.admin("GET", "/admin/live", None);
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["requests_total"], 0.0);
    let (_, key) = gw.create_key(json!({"name": "live"}));
    for _ in 0..3 {
        assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    }
    assert_eq!(gw.chat_as(&key, &chat("mock-stream", true), "").status, 200);
    assert_eq!(
        gw.chat_as("sk-sluice-wrong", &chat("mock-fast", false), "")
            .status,
        401
    );
    let live = wait_for(Duration::from_secs(5), || {
        let (_, v) = gw.admin("GET", "/admin/live", None);
        (v["requests_total"].as_f64() >= Some(4.0)).then_some(v)
    })
    .expect("live counters never moved");
    let models = live["models"].as_array().unwrap();
    let fast = models.iter().find(|m| m["model"] == "mock-fast").unwrap();
    assert_eq!(fast["requests_total"], 3.0);
    assert!(fast["tokens_total"].as_f64().unwrap() > 0.0, "{fast}");
    assert!(fast["requests_per_s"].as_f64().unwrap() > 0.0, "{fast}");
    assert!(fast["latency_p50_ms"].as_f64().unwrap() > 0.0, "{fast}");
    assert!(fast["latency_p99_ms"].as_f64().unwrap() >= fast["latency_p50_ms"].as_f64().unwrap());
    let stream = models.iter().find(|m| m["model"] == "mock-stream").unwrap();
    assert!(stream["ttft_p50_ms"].as_f64().unwrap() > 0.0, "{stream}");
    assert!(live["window_s"].as_f64().unwrap() > 0.0);

    let (s, health) = gw.admin("GET", "/admin/health", None);
    assert_eq!(s, 200, "{health}");
    let deps = health["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 2, "{health}");
    let d = deps.iter().find(|d| d["model"] == "mock-fast").unwrap();
    assert_eq!(d["deployment"], "mock/mock-model");
    assert_eq!(d["provider"], "mock");
    assert_eq!(d["breaker"], "closed");
    assert_eq!(d["health"], "not_checked");
    assert_eq!(health["providers"][0]["name"], "mock");
    // Both want the token.
    assert_eq!(gw.admin_as(None, "GET", "/admin/live", None).0, 401);
    assert_eq!(gw.admin_as(None, "GET", "/admin/health", None).0, 401);
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A flood of idle admin connections neither starts a thread each nor blocks the listener:
/// past the pool and its queue, connections get a 503 at once.
#[test]
fn admin_listener_has_a_bounded_pool() {
    let mock = mock();
    let dir = temp_dir("ui-pool");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 1, ""), DRIVER);
    assert_eq!(gw.admin("GET", "/admin/keys", None).0, 200);
    let before = threads(gw.pid());
    // Idle connections: each holds a pool thread or a queue slot until it times out. While
    // all are held, 8 threads + 64 queue slots hold 72; the acceptor answers the other 28 at
    // once (which ones depends on how soon the threads wake, so they are counted, not named).
    let mut held: Vec<Client> = (0..100).map(|_| Client::connect(gw.admin)).collect();
    let answered = |held: &[Client]| {
        held.iter()
            .filter(|c| {
                c.stream.set_nonblocking(true).unwrap();
                let ready = c.stream.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
                c.stream.set_nonblocking(false).unwrap();
                ready
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(4), || answered(&held) >= 28),
        "only {} connections were refused",
        answered(&held)
    );
    let mut refused = 0;
    for c in held.iter_mut() {
        if c.stream.set_nonblocking(true).is_ok()
            && c.stream.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0)
        {
            c.stream.set_nonblocking(false).unwrap();
            let r = c.read_response();
            assert_eq!(r.status, 503);
            assert_eq!(r.error_code(), "overloaded");
            refused += 1;
        }
    }
    assert!(refused >= 28, "{refused}");
    let after = threads(gw.pid());
    assert!(after <= before + 1, "threads went from {before} to {after}");
    drop(held);
    // Once the idle connections are gone (closed or timed out), the API answers again.
    assert!(eventually(Duration::from_secs(20), || {
        let mut c = Client::connect(gw.admin);
        c.send_raw(
            format!("GET /admin/keys HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n")
                .as_bytes(),
        );
        c.read_response().status == 200
    }));
}
