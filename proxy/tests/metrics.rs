//! Metrics change as expected after known traffic, and the output is valid Prometheus text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// Parses Prometheus text into `name{labels}` → value (labels as written).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The value of the sample named `name` whose labels include all of `labels`.
fn value(s: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .iter()
        .filter(|(k, _)| {
            k.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} is ambiguous: {found:?}"
    );
    found.first().copied().unwrap_or(0.0)
}

fn scrape(gw: &Gateway) -> String {
    let mut c = Client::connect(gw.admin.expect("admin listener"));
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    r.text()
}

fn metrics_after_known_traffic(driver: &str) {
    let mock = mock();
    // One attempt per request and no breaker, so every request is counted as it was sent.
    let cfg = config(mock.addr(), "", "").replace(
        "model = \"mock-model\" }]\n",
        "model = \"mock-model\" }]\nretry = { max_attempts = 1 }\nbreaker = { enabled = false }\n",
    );
    let gw = Gateway::start(&cfg, driver);
    let mut c = gw.connect();
    for _ in 0..3 {
        assert_eq!(
            c.post("/v1/chat/completions", &chat("mock-fast", false), "")
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            c.post("/v1/chat/completions", &chat("mock-stream", true), "")
                .status,
            200
        );
    }
    assert_eq!(
        c.post("/v1/chat/completions", &chat("nope", false), "")
            .status,
        404
    );
    assert_eq!(
        c.post(
            "/v1/chat/completions",
            &chat("mock-fast", false),
            "x-mock-status: 503\r\n"
        )
        .status,
        503
    );
    // Clients that hang up right after reading their whole answer did not cancel anything.
    for _ in 0..10 {
        let mut once = gw.connect();
        assert_eq!(
            once.post(
                "/v1/chat/completions",
                &chat("mock-fast", false),
                "x-mock-status: 503\r\n"
            )
            .status,
            503
        );
        drop(once);
        let mut once = gw.connect();
        assert_eq!(
            once.post("/v1/chat/completions", &chat("mock-stream", true), "")
                .status,
            200
        );
    }
    // The access line is written after the metrics are recorded.
    gw.access_lines(27);
    let text = scrape(&gw);
    let s = samples(&text);
    let fast_ok = [
        ("model", "mock-fast"),
        ("status_class", "2xx"),
        ("stream", "false"),
    ];
    assert_eq!(value(&s, "sluice_requests_total", &fast_ok), 3.0, "{text}");
    assert_eq!(
        value(&s, "sluice_client_cancelled_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "sluice_requests_total",
            &[
                ("model", "mock-stream"),
                ("stream", "true"),
                ("deployment", "mock/mock-stream-model"),
                ("provider", "mock")
            ]
        ),
        12.0
    );
    assert_eq!(
        value(
            &s,
            "sluice_requests_total",
            &[("model", "none"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "sluice_requests_total",
            &[("model", "mock-fast"), ("status_class", "5xx")]
        ),
        11.0
    );
    // Tokens: the mock answers 8 output tokens per request.
    assert_eq!(
        value(
            &s,
            "sluice_tokens_total",
            &[("model", "mock-fast"), ("gen_ai_token_type", "output")]
        ),
        24.0
    );
    assert_eq!(
        value(
            &s,
            "sluice_tokens_total",
            &[("model", "mock-stream"), ("gen_ai_token_type", "output")]
        ),
        96.0
    );
    assert!(
        value(
            &s,
            "sluice_tokens_total",
            &[("model", "mock-fast"), ("gen_ai_token_type", "input")]
        ) > 0.0
    );
    // Histograms: counts and buckets.
    assert_eq!(
        value(
            &s,
            "sluice_request_duration_seconds_count",
            &[("model", "mock-fast"), ("stream", "false")]
        ),
        14.0
    );
    assert_eq!(
        value(
            &s,
            "sluice_request_duration_seconds_bucket",
            &[("model", "mock-fast"), ("stream", "false"), ("le", "+Inf")]
        ),
        14.0
    );
    assert_eq!(
        value(
            &s,
            "gen_ai_server_time_to_first_token_seconds_count",
            &[("gen_ai_request_model", "mock-stream")]
        ),
        12.0
    );
    assert_eq!(
        value(
            &s,
            "gen_ai_server_time_per_output_token_seconds_count",
            &[("gen_ai_request_model", "mock-stream")]
        ),
        12.0
    );
    assert_eq!(
        value(
            &s,
            "gen_ai_client_token_usage_count",
            &[
                ("gen_ai_request_model", "mock-fast"),
                ("gen_ai_token_type", "output")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "gen_ai_client_token_usage_sum",
            &[
                ("gen_ai_request_model", "mock-fast"),
                ("gen_ai_token_type", "output")
            ]
        ),
        24.0
    );
    // Each family has its own buckets: token counts in powers of four (8 output tokens a
    // request: none at or below 4, all three at or below 16), the overhead from 5 µs.
    let output_tokens = |le| {
        value(
            &s,
            "gen_ai_client_token_usage_bucket",
            &[
                ("gen_ai_request_model", "mock-fast"),
                ("gen_ai_token_type", "output"),
                ("le", le),
            ],
        )
    };
    assert_eq!((output_tokens("4"), output_tokens("16")), (0.0, 3.0));
    assert!(
        s.keys()
            .any(|k| k.starts_with("sluice_gateway_overhead_seconds_bucket{")
                && k.contains("model=\"mock-fast\"")
                && k.contains("le=\"0.000005\"")),
        "no overhead bucket at 5 µs"
    );
    // The GenAI series carry the conventions' label names.
    assert_eq!(
        value(
            &s,
            "gen_ai_client_operation_duration_seconds_count",
            &[
                ("gen_ai_operation_name", "chat"),
                ("gen_ai_provider_name", "openai"),
                ("gen_ai_request_model", "mock-fast")
            ]
        ),
        14.0
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("gen_ai_")
                && (l.contains("{model=\"") || l.contains(",model=\""))),
        "gen_ai_* series use gen_ai_request_model, not model"
    );
    // Counters are counters; the process metrics are there.
    assert!(text.contains("# TYPE sluice_log_lines_dropped_total counter\n"));
    assert!(!text.contains("sluice_log_lines_dropped "));
    assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&s, "process_open_fds", &[]) >= 3.0);
    assert!(value(&s, "process_start_time_seconds", &[]) > 1.6e9);
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split(' ').skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "a counter ends in _total and only a counter does: {line}"
        );
    }
    assert!(
        value(
            &s,
            "sluice_gateway_overhead_seconds_count",
            &[("model", "mock-fast")]
        ) >= 3.0
    );
    // One keep-alive client connection, one upstream connection reused for the rest.
    assert_eq!(
        value(
            &s,
            "sluice_upstream_connections_opened_total",
            &[("provider", "mock")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "sluice_upstream_connections_reused_total",
            &[("provider", "mock")]
        ),
        25.0
    );
    assert_eq!(
        value(&s, "sluice_inflight_requests", &[("worker", "0")]),
        0.0
    );
    assert_eq!(value(&s, "sluice_open_streams", &[("worker", "0")]), 0.0);
    // The one-shot connections close shortly after their answers.
    assert!(eventually(Duration::from_secs(2), || value(
        &samples(&scrape(&gw)),
        "sluice_client_connections",
        &[("worker", "0")]
    ) == 1.0));

    // Upstream errors by kind.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw2 = Gateway::start(&config(dead, "", ""), driver);
    assert_eq!(
        gw2.connect()
            .post("/v1/chat/completions", &chat("mock-fast", false), "")
            .status,
        502
    );
    gw2.access_lines(1);
    let s2 = samples(&scrape(&gw2));
    assert_eq!(
        value(
            &s2,
            "sluice_upstream_errors_total",
            &[("provider", "mock"), ("kind", "connect")]
        ),
        3.0,
        "three attempts (the default retry policy) each failed to connect"
    );

    // promtool, when installed (CI installs it), accepts the output.
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
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
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install promtool (Debian package prometheus)"
        );
        eprintln!("promtool not installed: skipping `promtool check metrics`");
    }
}

fn metrics_on_main_listener_only_when_enabled(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    assert_eq!(gw.connect().get("/metrics").status, 404);
    let cfg = config(mock.addr(), "", "").replace("[admin]\n", "[admin]\nmetrics_on_main = true\n");
    let gw = Gateway::start(&cfg, driver);
    let r = gw.connect().get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("sluice_build_info"));
    let _ = Duration::ZERO;
}

both_drivers!(
    metrics_after_known_traffic,
    metrics_on_main_listener_only_when_enabled
);
