//! Routing and resilience end to end, with the mock's fault injection: balancing, retries,
//! breakers, fallbacks, deadlines and hedging, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// A config with one provider per address and one model group `m` over them.
fn group_config(addrs: &[SocketAddr], group_extra: &str, rest: &str) -> String {
    let mut out = String::from(
        "auth = \"none\"\n\n[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
    );
    for (i, a) in addrs.iter().enumerate() {
        out.push_str(&format!(
            "[[providers]]\nname = \"p{i}\"\nbase_url = \"http://{a}/v1\"\nfirst_byte_timeout_ms = 400\n\n"
        ));
    }
    let deps: Vec<String> = (0..addrs.len())
        .map(|i| format!("{{ provider = \"p{i}\", model = \"m{i}\" }}"))
        .collect();
    out.push_str(&format!(
        "[[models]]\nname = \"m\"\ndeployments = [{}]\n{group_extra}\n{rest}",
        deps.join(", ")
    ));
    out
}

fn ask(c: &mut Client, extra: &str) -> Response {
    c.post("/v1/chat/completions", &chat("m", false), extra)
}

fn failing_deployment_is_hidden_and_tripped(driver: &str) {
    let good = mock();
    let flaky = mock_with(MockConfig {
        fail_rate: 0.5,
        fail_status: 500,
        ..MockConfig::default()
    });
    let gw = Gateway::start(
        &group_config(
            &[good.addr(), flaky.addr()],
            "strategy = \"round-robin\"\nretry = { base_backoff_ms = 1 }\n",
            "",
        ),
        driver,
    );
    let mut c = gw.connect();
    for n in 0..1000 {
        let r = ask(&mut c, "");
        assert_eq!(r.status, 200, "request {n} failed: {}", r.text());
    }
    // The flaky one was tripped open, so it saw far fewer than its round-robin half.
    let flaky_seen = flaky.stats().requests;
    assert!(
        flaky_seen < 400,
        "flaky deployment got {flaky_seen} of ~1000 attempts"
    );
    let log = gw.lines().join("\n");
    assert!(
        log.contains("circuit breaker opened"),
        "no breaker trip logged"
    );
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert!(
        metrics.contains("sluice_retries_total{model=\"m\"}"),
        "{metrics}"
    );
}

fn latency_strategy_prefers_the_fast_one_and_recovers(driver: &str) {
    let fast = mock_with(MockConfig {
        ttft_ms: 2,
        ..MockConfig::default()
    });
    // A wide gap (2 vs 60 ms): on a loaded machine the fast mock's own scheduling delays
    // reach several milliseconds, and a 2 vs 20 ms pair was sometimes too close to tell.
    let slow = mock_with(MockConfig {
        ttft_ms: 60,
        ..MockConfig::default()
    });
    let slow_addr = slow.addr();
    let gw = Gateway::start(
        &group_config(
            &[fast.addr(), slow_addr],
            "strategy = \"latency\"\nbalance = { decay_ms = 300 }\n",
            "",
        ),
        driver,
    );
    let mut c = gw.connect();
    for _ in 0..300 {
        assert_eq!(ask(&mut c, "").status, 200);
    }
    let (f, s) = (fast.stats().requests, slow.stats().requests);
    assert!(
        f * 20 >= (f + s) * 17,
        "fast {f}, slow {s}: under 85 % to the fast one"
    );

    // The slow one speeds up: after the decay it wins its share back.
    slow.shutdown();
    let healed = MockServer::start(MockConfig {
        listen: slow_addr,
        workers: 1,
        ttft_ms: 2,
        ..MockConfig::default()
    })
    .unwrap();
    fast.reset_stats();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..400 {
        assert_eq!(ask(&mut c, "").status, 200);
    }
    let (f, s) = (fast.stats().requests, healed.stats().requests);
    assert!(s * 4 >= f + s, "after recovery: fast {f}, healed {s}");
}

fn hung_deployment_is_left_within_the_deadline(driver: &str) {
    let hung = mock_with(MockConfig {
        ttft_ms: 60_000,
        ..MockConfig::default()
    });
    let good = mock();
    let gw = Gateway::start(
        &group_config(&[hung.addr(), good.addr()], "strategy = \"priority\"\n", ""),
        driver,
    );
    let t0 = Instant::now();
    let r = ask(&mut gw.connect(), "x-sluice-deadline-ms: 3000\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sluice-deployment"), Some("p1/m1"));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        eventually(Duration::from_secs(2), || hung.stats().streams_cancelled
            >= 1),
        "the hung upstream request was not cancelled: {:?}",
        hung.stats()
    );
    let log = gw.access_lines(1);
    let attempts = &log[0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 2, "{attempts}");
    assert_eq!(attempts[0]["error"], "first_byte_timeout");
    assert_eq!(attempts[1]["status"], 200);
}

fn retry_after_is_honoured_when_it_fits(driver: &str) {
    let limited = mock_with(MockConfig {
        fail_rate: 1.0,
        fail_status: 429,
        retry_after: Some(1),
        ..MockConfig::default()
    });
    let good = mock();
    let gw = Gateway::start(
        &group_config(
            &[limited.addr(), good.addr()],
            "strategy = \"priority\"\n",
            "",
        ),
        driver,
    );
    let t0 = Instant::now();
    let r = ask(&mut gw.connect(), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "did not wait: {:?}",
        t0.elapsed()
    );

    // A Retry-After longer than the deadline is not waited on: the other deployment answers.
    let long = mock_with(MockConfig {
        fail_rate: 1.0,
        fail_status: 429,
        retry_after: Some(30),
        ..MockConfig::default()
    });
    let gw = Gateway::start(
        &group_config(&[long.addr(), good.addr()], "strategy = \"priority\"\n", ""),
        driver,
    );
    let t0 = Instant::now();
    let r = ask(&mut gw.connect(), "x-sluice-deadline-ms: 5000\r\n");
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "waited: {:?}",
        t0.elapsed()
    );

    // Alone, with a Retry-After beyond the deadline: the 429 comes back, not a wait.
    let gw = Gateway::start(&group_config(&[long.addr()], "", ""), driver);
    let t0 = Instant::now();
    let r = ask(&mut gw.connect(), "x-sluice-deadline-ms: 2000\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

fn fallback_group_answers_then_503(driver: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let backup = mock();
    let fallback = format!(
        "[[providers]]\nname = \"backup\"\nbase_url = \"http://{}/v1\"\n\n[[models]]\nname = \"backup\"\ndeployments = [{{ provider = \"backup\", model = \"b\" }}]\n",
        backup.addr()
    );
    let gw = Gateway::start(
        &group_config(
            &[dead],
            "fallbacks = [\"backup\"]\nretry = { max_attempts = 2, base_backoff_ms = 1 }\n",
            &fallback,
        ),
        driver,
    );
    let r = ask(&mut gw.connect(), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sluice-deployment"), Some("backup/b"));
    let seen: serde_json::Value =
        serde_json::from_str(&backup.last_request().unwrap().body).unwrap();
    assert_eq!(seen["model"], "b");

    // Fallback down too: 503 JSON with Retry-After.
    let dead2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let fallback = fallback.replace(&backup.addr().to_string(), &dead2.to_string());
    let gw = Gateway::start(
        &group_config(
            &[dead],
            "fallbacks = [\"backup\"]\nretry = { max_attempts = 2, base_backoff_ms = 1 }\n",
            &fallback,
        ),
        driver,
    );
    let r = ask(&mut gw.connect(), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "upstream_unavailable")
    );
    assert!(r.header("retry-after").is_some());
}

fn all_breakers_open_fail_fast(driver: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(
        &group_config(
            &[dead],
            "retry = { max_attempts = 1 }\nbreaker = { consecutive_failures = 2, cooldown_ms = 5000 }\n",
            "",
        ),
        driver,
    );
    let mut c = gw.connect();
    assert_eq!(ask(&mut c, "").status, 502);
    assert_eq!(ask(&mut c, "").status, 502);
    let t0 = Instant::now();
    let r = ask(&mut c, "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "upstream_unavailable")
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&wait), "retry-after {wait}");
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "not fast: {:?}",
        t0.elapsed()
    );
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_circuit_breaker_state") && l.ends_with(" 2")),
        "{metrics}"
    );
}

fn streams_fail_over_before_the_first_byte_only(driver: &str) {
    let broken = mock_with(MockConfig {
        fail_rate: 1.0,
        fail_status: 500,
        ..MockConfig::default()
    });
    let good = mock();
    let gw = Gateway::start(
        &group_config(
            &[broken.addr(), good.addr()],
            "strategy = \"priority\"\n",
            "",
        ),
        driver,
    );
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("m", true), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(r.sse_data().len(), 11);
    // After the first byte there is no failover: the stream ends with an error event.
    let r = gw.connect().post(
        "/v1/chat/completions",
        &chat("m", true),
        "x-mock-disconnect-after: 2\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("event: error"), "{}", r.text());
}

fn hedging_cuts_the_slow_tail(driver: &str) {
    let slow = mock_with(MockConfig {
        ttft_ms: 800,
        ..MockConfig::default()
    });
    let fast = mock();
    let gw = Gateway::start(
        &group_config(
            &[slow.addr(), fast.addr()],
            "strategy = \"round-robin\"\nhedge = { delay_ms = 50, max_percent = 100 }\n",
            "",
        ),
        driver,
    );
    let mut c = gw.connect();
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t0 = Instant::now();
        assert_eq!(ask(&mut c, "").status, 200);
        worst = worst.max(t0.elapsed());
    }
    assert!(
        worst < Duration::from_millis(600),
        "slowest request took {worst:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || slow.stats().streams_cancelled
            >= 1),
        "hedge losers were not cancelled: {:?}",
        slow.stats()
    );
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_hedges_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

fn health_checks_open_breakers_before_any_request(driver: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let good = mock();
    let cfg = group_config(
        &[dead, good.addr()],
        "strategy = \"priority\"\nbreaker = { consecutive_failures = 2, cooldown_ms = 60000 }\n",
        "",
    )
    .replace(
        "first_byte_timeout_ms = 400\n",
        "first_byte_timeout_ms = 400\nhealth_check = { path = \"/models\", interval_ms = 100, timeout_ms = 200 }\n",
    );
    let gw = Gateway::start(&cfg, driver);
    assert!(
        eventually(Duration::from_secs(3), || {
            let m = Client::connect(gw.admin.unwrap()).get("/metrics").text();
            m.lines().any(|l| {
                l.starts_with("sluice_circuit_breaker_state")
                    && l.contains("p0/m0")
                    && l.ends_with(" 2")
            })
        }),
        "the dead provider's breaker never opened from health checks"
    );
    // The first request goes straight to the healthy deployment.
    let r = ask(&mut gw.connect(), "");
    assert_eq!(r.status, 200);
    let log = gw.access_lines(1);
    let attempts = &log[0]["attempts"];
    assert_eq!(attempts.as_array().unwrap().len(), 1, "{attempts}");
    assert_eq!(attempts[0]["deployment"], "p1/m1");
    // The healthy mock saw the health checks too, and /readyz stays ready.
    assert!(eventually(Duration::from_secs(2), || good.stats().requests >= 3));
    assert_eq!(gw.connect().get("/readyz").status, 200);
}

fn provider_limits_are_never_exceeded(driver: &str) {
    let a = mock();
    let b = mock();
    let cfg = group_config(&[a.addr(), b.addr()], "strategy = \"priority\"\n", "")
        .replace("model = \"m0\" }", "model = \"m0\", rpm = 3 }");
    let gw = Gateway::start(&cfg, driver);
    let mut c = gw.connect();
    let served: Vec<String> = (0..5)
        .map(|_| {
            let r = ask(&mut c, "");
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-sluice-deployment").unwrap().to_string()
        })
        .collect();
    assert_eq!(served, ["p0/m0", "p0/m0", "p0/m0", "p1/m1", "p1/m1"]);
    assert_eq!(a.stats().requests, 3, "the provider's rpm was exceeded");

    // Alone at its limit: 429 from the gateway, nothing sent upstream.
    let only = mock();
    let cfg = group_config(&[only.addr()], "", "")
        .replace("model = \"m0\" }", "model = \"m0\", rpm = 2, tpm = 10000 }");
    let gw = Gateway::start(&cfg, driver);
    let mut c = gw.connect();
    assert_eq!(ask(&mut c, "").status, 200);
    assert_eq!(ask(&mut c, "").status, 200);
    let r = ask(&mut c, "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (429, "rate_limit_exceeded")
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(only.stats().requests, 2);
    // A request larger than the token limit can never pass: 429 without Retry-After.
    let gw = Gateway::start(&cfg, driver);
    let r = gw.connect().post(
        "/v1/chat/completions",
        r#"{"model":"m","max_tokens":50000,"messages":[{"role":"user","content":"hi"}]}"#,
        "",
    );
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
}

both_drivers!(
    provider_limits_are_never_exceeded,
    health_checks_open_breakers_before_any_request,
    failing_deployment_is_hidden_and_tripped,
    latency_strategy_prefers_the_fast_one_and_recovers,
    hung_deployment_is_left_within_the_deadline,
    retry_after_is_honoured_when_it_fits,
    fallback_group_answers_then_503,
    all_breakers_open_fail_fast,
    streams_fail_over_before_the_first_byte_only,
    hedging_cuts_the_slow_tail,
);
