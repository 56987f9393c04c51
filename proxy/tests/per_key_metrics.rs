//! `admin.per_key_metrics`: requests and cost by key and team, and each key's and team's
//! budget and what is left of it, on `/metrics` (and the output stays valid for promtool).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::json;

fn per_key_series(per_key: bool) {
    let mock = mock();
    let dir = temp_dir(if per_key { "perkey" } else { "perkey-off" });
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 1, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\nper_key_metrics = {per_key}\n"),
    );
    let gw = start(&cfg, driver_name(false));
    let (s, team) = gw.admin(
        "POST",
        "/admin/teams",
        Some(json!({"name": "search", "budget_usd": 20.0})),
    );
    assert_eq!(s, 201, "{team}");
    let (id, key) = gw.create_key(json!({"name": "svc", "team": "search", "budget_usd": 5.0}));
    let (_, other) = gw.create_key(json!({"name": "free"}));
    for _ in 0..3 {
        assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    }
    assert_eq!(
        gw.chat_as(&key, &chat("mock-fast", false), "x-mock-status: 503\r\n")
            .status,
        503
    );
    assert_eq!(
        gw.chat_as(&other, &chat("mock-fast", false), "").status,
        200
    );
    gw.access_lines(5);

    let requests =
        format!("sluice_key_requests_total{{key=\"{id}\",team=\"search\",status_class=\"2xx\"}}");
    let text = wait_for(Duration::from_secs(5), || {
        let t = gw.metrics();
        (sample(&t, &requests) == 3.0).then_some(t)
    });
    if !per_key {
        let t = gw.metrics();
        for absent in ["sluice_key_", "sluice_team_budget", "team=\""] {
            assert!(!t.contains(absent), "{absent} without per_key_metrics");
        }
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let text = text.expect("per-key request counter");
    assert_eq!(
        sample(
            &text,
            &format!(
                "sluice_key_requests_total{{key=\"{id}\",team=\"search\",status_class=\"5xx\"}}"
            )
        ),
        1.0
    );
    let cost_micros = sample(
        &text,
        &format!("sluice_key_cost_usd_micros_total{{key=\"{id}\",team=\"search\"}}"),
    );
    assert!(cost_micros > 0.0, "{text}");
    assert!(text.contains("# TYPE sluice_key_cost_usd_micros_total counter"));
    // Budgets: the limit and what is left, for the key and its team.
    assert_eq!(
        sample(
            &text,
            &format!("sluice_key_budget_usd{{key=\"{id}\",team=\"search\"}}")
        ),
        5.0
    );
    let left = sample(
        &text,
        &format!("sluice_key_budget_remaining_usd{{key=\"{id}\",team=\"search\"}}"),
    );
    assert!(
        (left - (5.0 - cost_micros / 1e6)).abs() < 1e-9,
        "{left} left after {cost_micros} micro-USD"
    );
    assert_eq!(
        sample(&text, "sluice_team_budget_usd{team=\"search\"}"),
        20.0
    );
    assert!(sample(&text, "sluice_team_budget_remaining_usd{team=\"search\"}") < 20.0);
    // A key without a budget has no budget series; its requests are counted.
    assert_eq!(
        text.matches("sluice_key_budget_usd{").count(),
        1,
        "only keys with a budget"
    );
    assert_eq!(text.matches("sluice_key_requests_total{").count(), 3);
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
        assert!(std::env::var_os("CI").is_none(), "CI must install promtool");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn per_key_metrics_count_requests_cost_and_budgets() {
    per_key_series(true);
}

#[test]
fn without_per_key_metrics_there_are_no_key_series() {
    per_key_series(false);
}
