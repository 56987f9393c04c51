//! The command line: `check-config` (positional, `--config`, `SLUICE_CONFIG`), refusing a bad
//! config before binding any port, the admin API's clients (`teams`, `keys update`, `spend`,
//! `usage`) against a real gateway, and the generated completions and man page.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::process::{Command, Output};

use access::{start, store_config, temp_dir, ADMIN_TOKEN};
use common::*;
use serde_json::Value;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn check_config_prints_what_would_be_served() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mock.toml");
    let out = sluice().args(["check-config", example]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("model mock-fast -> mock/mock-model"),
        "{text}"
    );
    assert!(
        text.contains("model mock-stream -> mock/mock-stream-model"),
        "{text}"
    );
    assert!(text.contains("config ok"), "{text}");
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // examples/fleet.toml reads its PostgreSQL URL from the environment.
            let out = sluice()
                .arg("check-config")
                .arg(&path)
                .env("SLUICE_PG_URL", "postgres://sluice@127.0.0.1:5432/sluice")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "examples/ should hold the mock and resilience configs"
    );
}

#[test]
fn bad_config_fails_with_the_path_and_exit_64() {
    let dir = std::env::temp_dir();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
        ("[server]\nworkers = 0\n", "server.workers"),
        (
            "[[providers]]\nname = \"p\"\nbase_url = \"http://x\"\napi_key = \"sk-inline-secret\"\n",
            "providers[0].api_key",
        ),
        (
            "[[models]]\nname = \"m\"\ndeployments = [{ provider = \"nope\", model = \"x\" }]\n",
            "models[0].deployments[0].provider",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("sluice-bad-{}-{i}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        for sub in [&["check-config"][..], &["serve", "--config"][..]] {
            let out = sluice().args(sub).arg(&path).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{sub:?} {text}: {err}");
            assert!(
                err.contains(needle),
                "{sub:?}: `{err}` does not name `{needle}`"
            );
            assert!(
                !err.contains("sk-inline-secret"),
                "the secret was echoed: {err}"
            );
        }
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn env_overrides_apply_and_an_unknown_one_is_refused_with_its_name() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mock.toml");
    let out = sluice()
        .args(["check-config", example])
        .env("SLUICE__SERVER__LISTEN", "127.0.0.1:18099")
        .env("SLUICE__SERVER__WORKERS", "3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen 127.0.0.1:18099 (3 workers"), "{text}");

    for sub in [&["check-config"][..], &["serve", "--config"][..]] {
        let out = sluice()
            .args(sub)
            .arg(example)
            .env("SLUICE__SERVER__LISTN", "127.0.0.1:1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{sub:?}: {err}");
        assert!(err.contains("SLUICE__SERVER__LISTN"), "{sub:?}: {err}");
    }
}

#[test]
fn connections_over_the_limit_get_503() {
    let mock = mock();
    let gw = Gateway::start(
        &config(mock.addr(), "max_connections_per_worker = 2", ""),
        driver_name(true),
    );
    let mut a = gw.connect();
    let mut b = gw.connect();
    assert_eq!(a.get("/healthz").status, 200);
    assert_eq!(b.get("/healthz").status, 200);
    let mut c = gw.connect();
    let r = c.read_response();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.error_code(), "overloaded");
    drop(a);
    assert!(eventually(std::time::Duration::from_secs(2), || {
        let mut d = gw.connect();
        d.get("/healthz").status == 200
    }));
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn check_config_takes_the_file_three_ways_and_prints_no_rust_names() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/mock.toml");
    let positional = stdout(
        &sluice()
            .env_remove("SLUICE_CONFIG")
            .args(["check-config", example])
            .output()
            .unwrap(),
    );
    let flag = stdout(
        &sluice()
            .env_remove("SLUICE_CONFIG")
            .args(["check-config", "--config", example])
            .output()
            .unwrap(),
    );
    let env = stdout(
        &sluice()
            .env("SLUICE_CONFIG", example)
            .arg("check-config")
            .output()
            .unwrap(),
    );
    assert_eq!(positional, flag);
    assert_eq!(positional, env);
    assert!(positional.contains("driver auto"), "{positional}");
    assert!(
        positional.contains("provider mock (openai)"),
        "{positional}"
    );
    assert!(
        positional.contains("provider mock-anthropic (anthropic)"),
        "{positional}"
    );
    for debug_name in ["OpenAi", "Anthropic)", "Auto", "IoUring", "Epoll", "Some("] {
        assert!(
            !positional.contains(debug_name),
            "{debug_name}: {positional}"
        );
    }
    // No file at all is a usage error, not a panic.
    let out = sluice()
        .env_remove("SLUICE_CONFIG")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    // `serve` and `doctor` read SLUICE_CONFIG too: a bad file there is refused with exit 64.
    let bad = std::env::temp_dir().join(format!("sluice-env-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "[server]\nworkers = 0\n").unwrap();
    for sub in [&["serve"][..], &["doctor"][..], &[][..]] {
        let out = sluice()
            .env("SLUICE_CONFIG", &bad)
            .args(sub)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{sub:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("server.workers"));
    }
    let _ = std::fs::remove_file(bad);
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let text = stdout(&sluice().args(["completions", shell]).output().unwrap());
        for sub in ["check-config", "spend", "usage", "teams", "audit"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // The bash script is valid bash.
    let script =
        std::env::temp_dir().join(format!("sluice-completion-{}.bash", std::process::id()));
    std::fs::write(
        &script,
        sluice()
            .args(["completions", "bash"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _ = std::fs::remove_file(script);

    let page = stdout(&sluice().arg("man").output().unwrap());
    assert!(page.contains(".TH sluice 1"), "{page}");
    assert!(
        page.contains("spend") && page.contains("check\\-config"),
        "{page}"
    );
    let dir = std::env::temp_dir().join(format!("sluice-man-{}", std::process::id()));
    stdout(
        &sluice()
            .args(["man", "--out-dir"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    for page in [
        "sluice.1",
        "sluice-spend.1",
        "sluice-teams-update.1",
        "sluice-keys-update.1",
    ] {
        assert!(dir.join(page).is_file(), "{page}");
    }
    let _ = std::fs::remove_dir_all(dir);
    // A closed pipe is not a crash.
    let mut child = sluice()
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// `teams`, `keys update`, `spend` and `usage` against a real gateway, as an operator runs
/// them: tables by default, `--csv`, and `--json` printing exactly what the API returns.
#[test]
fn admin_commands_manage_teams_and_report_spend() {
    let mock = mock();
    let dir = temp_dir("cli-admin");
    let gw = start(
        &store_config(mock.addr(), &dir.join("s.db"), 1, ""),
        "epoll",
    );
    let admin = format!("http://{}", gw.admin);
    let run = |args: &[&str]| {
        sluice()
            .args(args)
            .env("SLUICE_ADMIN_URL", &admin)
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    };

    // Teams.
    let text = stdout(&run(&[
        "teams",
        "create",
        "research",
        "--rpm",
        "100",
        "--budget-usd",
        "50",
    ]));
    assert!(text.starts_with("TEAM "), "{text}");
    assert!(
        text.contains("research") && text.contains("$50 monthly"),
        "{text}"
    );
    stdout(&run(&["teams", "create", "ops"]));
    let list = stdout(&run(&["teams", "list"]));
    let names: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["ops", "research"], "{list}");
    let text = stdout(&run(&[
        "teams", "update", "research", "--tpm", "5000", "--clear", "rpm",
    ]));
    let shown: Value =
        serde_json::from_str(&stdout(&run(&["teams", "show", "research", "--json"]))).unwrap();
    assert_eq!(
        (shown["rpm"].clone(), shown["tpm"].clone()),
        (Value::Null, 5000.into()),
        "{text}"
    );
    let out = run(&["teams", "update", "research"]);
    assert_eq!(out.status.code(), Some(64), "nothing to change");
    let out = run(&["teams", "update", "research", "--clear", "models"]);
    assert_eq!(out.status.code(), Some(64));
    let out = run(&["teams", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    assert!(stdout(&run(&["teams", "delete", "ops"])).contains("deleted team ops"));

    // Keys: create in a team, update limits, then use them.
    let created: Value = serde_json::from_str(&stdout(&run(&[
        "keys", "create", "--name", "reporter", "--team", "research", "--rpm", "10", "--json",
    ])))
    .unwrap();
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let text = stdout(&run(&[
        "keys",
        "update",
        id,
        "--rpm",
        "20",
        "--max-concurrency",
        "4",
        "--clear",
        "budget-usd",
    ]));
    assert!(text.lines().nth(1).unwrap().starts_with(id), "{text}");
    let shown: Value =
        serde_json::from_str(&stdout(&run(&["keys", "show", id, "--json"]))).unwrap();
    assert_eq!(
        (shown["rpm"].as_u64(), shown["max_concurrency"].as_u64()),
        (Some(20), Some(4))
    );
    assert_eq!(shown["cache"], true, "the cache serves a key by default");
    // The per-key cache setting: off at creation, on again by an update.
    let off: Value = serde_json::from_str(&stdout(&run(&[
        "keys",
        "create",
        "--name",
        "uncached",
        "--team",
        "research",
        "--no-cache",
        "--json",
    ])))
    .unwrap();
    assert_eq!(off["cache"], false, "{off}");
    let off_id = off["id"].as_str().unwrap();
    let table = stdout(&run(&["keys", "show", off_id]));
    assert!(table.lines().next().unwrap().ends_with("CACHE"), "{table}");
    assert!(table.lines().nth(1).unwrap().ends_with("off"), "{table}");
    stdout(&run(&["keys", "update", off_id, "--cache", "true"]));
    let on: Value =
        serde_json::from_str(&stdout(&run(&["keys", "show", off_id, "--json"]))).unwrap();
    assert_eq!(on["cache"], true, "{on}");
    for _ in 0..3 {
        assert_eq!(gw.chat_as(key, &chat("mock-fast", false), "").status, 200);
    }
    assert_eq!(gw.chat_as(key, &chat("mock-stream", true), "").status, 200);
    // The ledger writer commits in the background.
    assert!(eventually(std::time::Duration::from_secs(5), || {
        gw.admin("GET", "/admin/usage", None).1["data"]
            .as_array()
            .map(Vec::len)
            == Some(4)
    }));

    // Spend: --json is the API's own answer, byte for byte.
    for group in ["team", "key", "model", "deployment", "day"] {
        let cli = stdout(&run(&["spend", "--group-by", group, "--json"]));
        let mut c = Client::connect(gw.admin);
        c.send_raw(
            format!(
                "GET /admin/spend?group_by={group} HTTP/1.1\r\nhost: a\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(cli.trim_end(), c.read_response().text(), "{group}");
    }
    let table = stdout(&run(&["spend", "--group-by", "model"]));
    assert!(table.starts_with("GROUP "), "{table}");
    let fast = table.lines().find(|l| l.starts_with("mock-fast")).unwrap();
    assert_eq!(fast.split_whitespace().nth(1), Some("3"), "{table}");
    assert!(table.contains("2 groups, 4 requests"), "{table}");
    let csv = stdout(&run(&[
        "spend",
        "--group-by",
        "team",
        "--from",
        "2024-01-01",
        "--csv",
    ]));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("team,requests,input_tokens,output_tokens,cached_tokens,reasoning_tokens,cost_usd")
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!((row[0], row[1]), ("research", "4"), "{csv}");
    assert!(row[6].parse::<f64>().unwrap() > 0.0, "{csv}");
    // A range with nothing in it.
    let empty = stdout(&run(&[
        "spend",
        "--from",
        "2020-01-01",
        "--to",
        "2020-02-01",
        "--csv",
    ]));
    assert_eq!(empty.lines().count(), 1, "{empty}");
    let out = run(&["spend", "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("YYYY-MM-DD"));
    assert_eq!(run(&["spend", "--csv", "--json"]).status.code(), Some(2));

    // Usage of one key.
    let usage = stdout(&run(&["usage", "--key", id]));
    assert!(usage.starts_with("TIME (UTC)"), "{usage}");
    assert_eq!(usage.lines().count(), 5, "{usage}");
    assert_eq!(usage.lines().filter(|l| l.contains("mock-fast")).count(), 3);
    let csv = stdout(&run(&["usage", "--key", id, "--csv", "--limit", "2"]));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("time_utc,request_id,key_id,team,model"),
        "{csv}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&run(&["usage", "--key", id, "--json"]))).unwrap();
    assert_eq!(json["data"].as_array().unwrap().len(), 4);
    assert!(json["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["key_id"] == id));
    let none = stdout(&run(&["usage", "--key", "key_none"]));
    assert!(none.contains("no requests"), "{none}");
    assert!(!usage.contains(key) && !csv.contains(key));

    // The changes are in the audit log, made by the CLI.
    let (_, log) = gw.admin("GET", "/admin/audit", None);
    let cli_actions: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["via"] == "cli")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        cli_actions.contains(&"teams.create") && cli_actions.contains(&"keys.update"),
        "{log}"
    );
    // And `sluice audit` reads it: a table, CSV, or the API's JSON.
    let table = stdout(&run(&["audit"]));
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    let first = table.lines().nth(1).unwrap();
    assert!(
        first.contains("teams.delete") || first.contains("keys.update"),
        "{table}"
    );
    assert!(
        table.contains("admin-") && table.contains(" cli "),
        "{table}"
    );
    let csv = stdout(&run(&["audit", "--limit", "1", "--csv"]));
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.starts_with("time_utc,actor,via,action,target,status"));
    let json: Value = serde_json::from_str(&stdout(&run(&["audit", "--json"]))).unwrap();
    assert_eq!(json, log);
    assert!(!table.contains(ADMIN_TOKEN));
    // Without the token: a usage error.
    let out = sluice()
        .args(["spend"])
        .env("SLUICE_ADMIN_URL", &admin)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
