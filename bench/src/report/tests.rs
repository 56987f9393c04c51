//! The report end to end on a small run directory written here: every system gets an
//! object with the same fields, the targets are checked on medians of rounds, the
//! idle-connections phase lands in report.json and report.md.

// Test code may unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::{json, Value};

fn pct(p50: u64, p99: u64) -> Value {
    json!({"count": 100, "min": p50 / 2, "p50": p50, "p90": p99 - 1, "p99": p99,
           "p999": p99 + 1, "max": p99 + 2})
}

/// One round of a closed-loop phase: `rps` req/s at `p50`/`p99` µs, `cpu_us` of CPU
/// (a quarter in user space) over `requests`, the given pid.
fn round(rps: f64, p50: u64, p99: u64, pid: u32, cpu_us: u64, requests: u64) -> Value {
    json!({"requests": requests, "ok": requests, "achieved_rps": rps,
           "latency_us": pct(p50, p99), "errors": {"total": 0},
           "pids": [{"pid": pid, "cpu_us": cpu_us, "user_us": cpu_us / 4,
                     "requests": requests, "rss_peak_mib": 10.0}],
           "core_busy": [0.9, 1.0]})
}

fn target(name: &str, rounds: Vec<Value>) -> Value {
    json!({"name": name, "summary": rounds[rounds.len() / 2].clone(), "rounds": rounds})
}

fn compare_file(scale: f64) -> Value {
    let r = |rps: f64, p50, p99, pid, cpu| round(rps * scale, p50, p99, pid, cpu, 1000);
    json!({"rounds": 3, "round_duration_s": 1.0, "targets": [
        target("direct", vec![r(50.0, 100, 200, 0, 0), r(50.0, 100, 200, 0, 0), r(50.0, 100, 200, 0, 0)]),
        target("gateway", vec![r(40.0, 150, 300, 11, 30_000), r(41.0, 150, 300, 11, 30_000),
                               r(10.0, 900, 9000, 11, 90_000)]),
        target("sluice_full", vec![r(30.0, 170, 330, 12, 40_000), r(31.0, 170, 330, 12, 40_000),
                                   r(31.0, 170, 330, 12, 40_000)]),
        target("nginx", vec![r(40.0, 140, 290, 13, 25_000), r(40.0, 140, 290, 13, 25_000),
                             r(40.0, 140, 290, 13, 25_000)]),
    ]})
}

#[test]
fn writes_every_system_the_targets_and_the_idle_connections() {
    let dir = std::env::temp_dir().join(format!("sluice-bench-report-test-{}", std::process::id()));
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let meta = json!({
        "mode": "quick", "cores": 2, "sluice_pid": 11, "sluice_full_pid": 12,
        "nginx_pids": [13],
        "layout": {"gateway (sluice, nginx)": "0", "load generator": "1"},
        "c1": "c1.json", "rates": [{"rate": 5000, "file": "rate5000.json"}],
        "closed": {"conns": 64, "file": "closed64.json"},
        "rounds": {"c1": 3, "rate": 3, "closed": 3, "stream": 3},
        "idle_conns": {"connections": 10000, "systems": {
            "sluice": {"held": 10000, "before_kib": 10240, "held_kib": 30440,
                       "after_kib": 10752},
            "nginx": {"held": 10000, "before_kib": 4096, "held_kib": 9596, "after_kib": 4096}}},
        "rss_kib": {"sluice": {"idle": 10240, "after": 10752},
                    "sluice_full": {"idle": 12288, "after": 20480}},
        "sluice_full": {"access_log_lines": 4000, "store_dir_bytes": 65536},
    });
    std::fs::write(raw.join("meta.json"), meta.to_string()).unwrap();
    for (name, scale) in [("c1", 0.1), ("rate5000", 100.0), ("closed64", 1000.0)] {
        std::fs::write(
            raw.join(format!("{name}.json")),
            compare_file(scale).to_string(),
        )
        .unwrap();
    }
    let out = dir.join("out");
    super::write(&raw, &out).unwrap();
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // The same fields for every system.
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    for sys in ["direct", "direct_xcore", "nginx", "sluice_full"] {
        assert_eq!(keys(&report[sys]), keys(&report["sluice"]), "{sys}");
    }
    // Medians of rounds: the slow third round of the gateway does not move them.
    let m = &report["sluice"]["medians"];
    assert_eq!(m["closed_loop_rps"], 40_000.0);
    assert_eq!(m["added_p99_us_c1"], 100.0);
    assert_eq!(m["cpu_us_per_request"]["closed"]["total"], 30.0);
    assert_eq!(m["cpu_us_per_request"]["closed"]["kernel"], 22.5);
    assert_eq!(report["sluice"]["closed_loop_core_busy"], json!([0.9, 1.0]));
    // The idle connections: 20.2 MiB over 10k connections is 2.02 KiB each.
    assert_eq!(report["sluice"]["rss_idle_conns_10k_mib"], 29.73);
    assert_eq!(report["sluice"]["rss_after_conns_mib"], 10.5);
    assert_eq!(report["sluice"]["kib_per_idle_conn"], 2.02);
    assert!(report["sluice_full"]["rss_idle_conns_10k_mib"].is_null());

    let check = |prefix: &str| {
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["target"].as_str().unwrap().starts_with(prefix))
            .unwrap_or_else(|| panic!("no target {prefix}"))["pass"]
            .clone()
    };
    // 40k vs 40k req/s: within 3 %.
    assert_eq!(check("closed loop, 64 connections"), json!(true));
    // 30 µs vs nginx's 25 µs.
    assert_eq!(check("CPU per proxied request at 5000"), json!(false));
    // Added p99 at c=1: 100 vs nginx's 90 µs, more than 5 % over.
    assert_eq!(check("added p99 at concurrency 1"), json!(false));
    // sluice_full: 31k vs 40k req/s is 0.78×, beyond 15 %.
    assert_eq!(check("sluice_full (keys"), json!(false));
    assert_eq!(check("RSS per idle keep-alive connection"), json!(false));
    assert_eq!(check("RSS after the idle connections close"), json!(true));
    assert_eq!(check("sluice_full: RSS after the suite"), json!(false));
    // Phases that did not run are n/a, not failures.
    assert_eq!(check("streams: added TTFT p99"), Value::Null);
}
