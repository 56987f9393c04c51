//! The Prometheus alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
//! (dashboards/sluice.json) only name series the gateway exports, and the rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `sluice_*`, `gen_ai_*` and `process_*` metric name written in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["sluice_", "gen_ai_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let before = start.checked_sub(1).map(|i| bytes[i]);
            let mut end = start;
            while end < bytes.len()
                && (bytes[end].is_ascii_lowercase()
                    || bytes[end].is_ascii_digit()
                    || bytes[end] == b'_')
            {
                end += 1;
            }
            from = end;
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            out.insert(text[start..end].to_string());
        }
    }
    out
}

/// What the gateway's source writes: metric names, and the label names of the gen_ai series.
fn exported() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut dirs = vec![repo().join("proxy/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                all.extend(names(&std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    all
}

fn check_named(file: &str, exported: &BTreeSet<String>) {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let mut unknown = Vec::new();
    for name in names(&text) {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        if !exported.contains(&name) && !exported.contains(base) {
            unknown.push(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "{file} names series the gateway does not export: {unknown:?}"
    );
}

#[test]
fn alerts_and_dashboard_name_only_exported_series() {
    let exported = exported();
    assert!(exported.contains("sluice_log_lines_dropped_total"));
    assert!(!exported.contains("sluice_log_lines_dropped"));
    check_named("deploy/prometheus/alerts.yml", &exported);
    check_named("dashboards/sluice.json", &exported);
    // The gen_ai series are grouped by the conventions' label, never by `model`.
    let dashboard = std::fs::read_to_string(repo().join("dashboards/sluice.json")).unwrap();
    let gen_ai = dashboard.lines().filter(|l| {
        l.contains("\"expr\"") && (l.contains("gen_ai_client_") || l.contains("gen_ai_server_"))
    });
    let mut seen = 0;
    for line in gen_ai {
        seen += 1;
        assert!(
            !line.contains("by (model") && !line.contains("{model=") && !line.contains(", model)"),
            "a gen_ai series selected or grouped by `model`: {line}"
        );
    }
    assert!(seen >= 5, "the dashboard's gen_ai panels");
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    let run = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
    };
    let Ok(check) = run(&["check", "rules", "alerts.yml"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install promtool (Debian package prometheus)"
        );
        eprintln!("promtool not installed: skipping `promtool check rules`");
        return;
    };
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = run(&["test", "rules", "alerts.test.yml"]).unwrap();
    assert!(
        test.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}
