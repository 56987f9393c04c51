//! Virtual keys end to end: the admin API, the `sluice keys` CLI, static keys from the config,
//! 401/403 on the data plane, restarts, and no key material in the logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::json;

both_drivers!(key_lifecycle_through_the_admin_api);

fn key_lifecycle_through_the_admin_api(driver: &str) {
    let mock = mock();
    let dir = temp_dir("keys");
    let gw = start(&store_config(mock.addr(), &dir.join("s.db"), 1, ""), driver);
    let body = chat("mock-fast", false);

    // The admin API wants the token.
    let (s, v) = gw.admin_as(None, "GET", "/admin/keys", None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("invalid_admin_token"))
    );
    let (s, _) = gw.admin_as(Some("wrong"), "GET", "/admin/keys", None);
    assert_eq!(s, 401);

    let (s, team) = gw.admin(
        "POST",
        "/admin/teams",
        Some(json!({"name": "search", "rpm": 1000})),
    );
    assert_eq!(s, 201, "{team}");
    assert_eq!(
        gw.admin("POST", "/admin/teams", Some(json!({"name": "search"})))
            .0,
        409
    );
    let (s, created) = gw.admin(
        "POST",
        "/admin/keys",
        Some(
            json!({"name": "svc-a", "team": "search", "models": ["mock-fast"], "rpm": 60,
                    "tpm": 100000, "max_concurrency": 8, "budget_usd": 5.0,
                    "budget_period": "monthly", "metadata": {"owner": "ops"}}),
        ),
    );
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-sluice-") && key.len() == 53, "{key}");
    assert_eq!(created["team"], "search");
    assert_eq!(created["metadata"]["owner"], "ops");
    assert!(key.starts_with(created["prefix"].as_str().unwrap().trim_end_matches('…')));
    // Unknown fields and bad names are refused.
    let (s, v) = gw.admin("POST", "/admin/keys", Some(json!({"name": "x", "rpn": 1})));
    assert_eq!(s, 400, "{v}");
    let (s, _) = gw.admin("POST", "/admin/keys", Some(json!({"name": "a b"})));
    assert_eq!(s, 400);

    // The key works at once, as Bearer or x-api-key, with OpenAI's rate-limit headers.
    let r = gw.chat_as(&key, &body, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("59"));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    assert!(r.header("x-ratelimit-remaining-tokens").is_some());
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str()),
        "the virtual key is never sent upstream"
    );
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        &body,
        &format!("x-api-key: {key}\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // No key, a wrong key, a key of the right shape that does not exist: 401.
    let r = gw.connect().post("/v1/chat/completions", &body, "");
    assert_eq!((r.status, r.error_code()), (401, "invalid_api_key".into()));
    let r = gw.chat_as("sk-sluice-nope", &body, "");
    assert_eq!((r.status, r.error_code()), (401, "invalid_api_key".into()));
    assert!(
        !r.text().contains("sk-sluice-nope"),
        "the key is not echoed"
    );
    // A model outside the allow-list: 403.
    let r = gw.chat_as(&key, &chat("mock-stream", false), "");
    assert_eq!(
        (r.status, r.error_code()),
        (403, "model_not_allowed".into())
    );
    assert!(r.header("x-ratelimit-limit-requests").is_some());

    // Listing shows prefixes, never keys.
    let (s, list) = gw.admin("GET", "/admin/keys", None);
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&key[10..]));
    assert!(list["data"][0]["key"].is_null());
    let (s, one) = gw.admin("GET", &format!("/admin/keys/{id}"), None);
    assert_eq!((s, one["name"].as_str()), (200, Some("svc-a")));
    assert_eq!(gw.admin("GET", "/admin/keys/key_nope", None).0, 404);

    // PATCH takes effect on the next request.
    let (s, v) = gw.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"models": null, "rpm": 30})),
    );
    assert_eq!(s, 200, "{v}");
    let r = gw.chat_as(&key, &chat("mock-stream", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("30"));

    // Rotate: the new key works, the old one is refused at once.
    let (s, rotated) = gw.admin("POST", &format!("/admin/keys/{id}/rotate"), None);
    assert_eq!(s, 200, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert_eq!(rotated["id"].as_str(), Some(id.as_str()));
    assert_eq!(gw.chat_as(&key, &body, "").status, 401);
    assert_eq!(gw.chat_as(&new_key, &body, "").status, 200);

    // Disable, enable, expire, delete.
    assert_eq!(
        gw.admin("POST", &format!("/admin/keys/{id}/disable"), None)
            .0,
        200
    );
    let r = gw.chat_as(&new_key, &body, "");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("revoked"), "{}", r.text());
    assert_eq!(
        gw.admin("POST", &format!("/admin/keys/{id}/enable"), None)
            .0,
        200
    );
    assert_eq!(gw.chat_as(&new_key, &body, "").status, 200);
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    gw.admin(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"expires_at": past})),
    );
    let r = gw.chat_as(&new_key, &body, "");
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());

    // Teams list their keys; spend and usage come from the ledger.
    let (s, teams) = gw.admin("GET", "/admin/teams/search", None);
    assert_eq!((s, teams["keys"].as_u64()), (200, Some(1)));
    let rows = wait_for(Duration::from_secs(3), || {
        let (_, v) = gw.admin("GET", &format!("/admin/usage?key_id={id}"), None);
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        (rows.len() >= 5).then_some(rows)
    })
    .expect("usage rows in the ledger");
    assert!(rows.iter().all(|r| r["team"] == "search"));
    assert!(rows.iter().any(|r| r["status"] == 403));
    assert!(rows
        .iter()
        .any(|r| r["status"] == 200 && r["cost_micros"].as_u64().unwrap() > 0));
    let (s, spend) = gw.admin("GET", "/admin/spend?group_by=team", None);
    assert_eq!(s, 200, "{spend}");
    assert_eq!(spend["data"][0]["group"], "search");
    assert!(spend["data"][0]["cost_micros"].as_u64().unwrap() > 0);
    for by in ["key", "model", "deployment", "day"] {
        let (s, v) = gw.admin(
            "GET",
            &format!("/admin/spend?group_by={by}&from=2020-01-01"),
            None,
        );
        assert_eq!(s, 200, "{by}: {v}");
        assert!(!v["data"].as_array().unwrap().is_empty(), "{by}: {v}");
    }
    assert_eq!(gw.admin("GET", "/admin/spend?group_by=color", None).0, 400);

    assert_eq!(
        gw.admin("DELETE", &format!("/admin/keys/{id}"), None).0,
        200
    );
    assert_eq!(gw.admin("GET", &format!("/admin/keys/{id}"), None).0, 404);
    assert_eq!(gw.admin("DELETE", "/admin/teams/search", None).0, 200);

    // No key material in the logs.
    let log = gw.lines().join("\n");
    for k in [&key, &new_key] {
        assert!(!log.contains(&k[10..]), "a key leaked into the logs");
    }
    assert!(log.contains("admin: key created"));
    // Access lines name the key by id and team, never by the key (a worker hands its lines
    // to the writer in batches, at least every 250 ms: wait for them).
    let find = || {
        gw.lines()
            .into_iter()
            .filter(|l| l.contains("\"sluice::access\""))
            .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
            .find(|v| v["key_id"] == id.as_str())
    };
    assert!(eventually(Duration::from_secs(5), || find().is_some()));
    let line = find().expect("an access line with the key id");
    assert_eq!(line["team"], "search");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn admin_api_is_off_without_a_token() {
    let mock = mock();
    let dir = temp_dir("notoken");
    let gw = start_with(
        &store_config(mock.addr(), &dir.join("s.db"), 1, ""),
        driver_name(true),
        false,
        &[],
    );
    let (s, v) = gw.admin("GET", "/admin/keys", None);
    assert_eq!(s, 503);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SLUICE_ADMIN_TOKEN"),
        "{v}"
    );
    // Metrics stay open.
    assert!(gw.metrics().contains("sluice_cost_usd_total"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn static_keys_from_the_config() {
    let mock = mock();
    let dir = temp_dir("static");
    let extra = r#"
[[keys]]
name = "demo"
key = "sk-sluice-demo"
rpm = 600000

[[keys]]
name = "ci"
key = "env:TEST_CI_KEY"
team = "ci"
models = ["mock-*"]
"#;
    let env_key = "sk-sluice-ci-0123456789abcdef";
    let gw = start_with(
        &store_config(mock.addr(), &dir.join("s.db"), 1, extra),
        driver_name(true),
        true,
        &[("TEST_CI_KEY", env_key)],
    );
    assert_eq!(
        gw.chat_as("sk-sluice-demo", &chat("mock-fast", false), "")
            .status,
        200
    );
    assert_eq!(
        gw.chat_as(env_key, &chat("mock-stream", false), "").status,
        200
    );
    // Config keys are listed but read-only.
    let (_, list) = gw.admin("GET", "/admin/keys", None);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cfg_ci", "cfg_demo"]);
    assert_eq!(list["data"][1]["source"], "config");
    let (s, _) = gw.admin("POST", "/admin/keys/cfg_demo/disable", None);
    assert_eq!(s, 409);
    let log = gw.lines().join("\n");
    assert!(!log.contains(env_key));
    assert!(log.contains("never for production"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cli_manages_keys() {
    let mock = mock();
    let dir = temp_dir("cli");
    let gw = start(
        &store_config(mock.addr(), &dir.join("s.db"), 1, ""),
        driver_name(true),
    );
    let admin = format!("http://{}", gw.admin);
    let sluice = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("keys").args(args).args(["--admin", &admin]);
        cmd.env_remove("SLUICE_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("SLUICE_ADMIN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = sluice(&["list"], None);
    assert_eq!(out.status.code(), Some(64));
    let out = sluice(&["list"], Some("wrong"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    let out = sluice(
        &[
            "create",
            "--name",
            "cli-key",
            "--team",
            "ops",
            "--models",
            "mock-fast,mock-stream",
            "--rpm",
            "100",
        ],
        Some(ADMIN_TOKEN),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("the key is printed")
        .to_string();
    // A table: the header, then the key's row.
    assert!(text.starts_with("ID "), "{text}");
    let id = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(id.starts_with("key_"), "{text}");
    assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);

    let out = sluice(&["list"], Some(ADMIN_TOKEN));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&id) && text.contains("cli-key") && text.contains("active"),
        "{text}"
    );
    assert!(!text.contains(&key[10..]));
    let out = sluice(&["list", "--json"], Some(ADMIN_TOKEN));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"][0]["rpm"], 100);

    let out = sluice(&["rotate", &id], Some(ADMIN_TOKEN));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rotated = text
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap()
        .to_string();
    assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 401);
    assert_eq!(
        gw.chat_as(&rotated, &chat("mock-fast", false), "").status,
        200
    );

    let out = sluice(&["revoke", &id], Some(ADMIN_TOKEN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        gw.chat_as(&rotated, &chat("mock-fast", false), "").status,
        401
    );
    let out = sluice(&["revoke", "--delete", &id], Some(ADMIN_TOKEN));
    assert!(out.status.success());
    let out = sluice(&["show", &id], Some(ADMIN_TOKEN));
    assert!(!out.status.success());
    let log = gw.lines().join("\n");
    assert!(!log.contains(&key[10..]) && !log.contains(&rotated[10..]));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn restart_keeps_keys_and_spend() {
    let mock = mock();
    let dir = temp_dir("restart");
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 2, "");
    let mut gw = start(&cfg, driver_name(true));
    let (id, key) =
        gw.create_key(json!({"name": "k", "budget_usd": 1.0, "budget_period": "daily"}));
    gw.admin("POST", "/admin/teams", Some(json!({"name": "t", "rpm": 7})));
    for _ in 0..5 {
        assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    }
    // A request settles just after its answer is written: wait until all five have (up to
    // ~20 s: a loaded machine can be slow to commit, a correct gateway is never this late).
    let mut spend = 0.0;
    let settled = (0..2_000).any(|_| {
        // Ledger rows are written after settlement, so once all five are there the spend
        // read next is final.
        let (_, usage) = gw.admin("GET", "/admin/usage", None);
        let (_, before) = gw.admin("GET", &format!("/admin/keys/{id}"), None);
        spend = before["spend_usd"].as_f64().unwrap_or(0.0);
        if usage["data"].as_array().map_or(0, Vec::len) >= 5 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(
        settled && spend > 0.0,
        "requests never settled (spend {spend})"
    );
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(10)).unwrap().success());
    assert!(gw.lines().iter().any(|l| l.contains("ledger flushed")));

    let gw = start(&cfg, driver_name(true));
    let (s, after) = gw.admin("GET", &format!("/admin/keys/{id}"), None);
    assert_eq!(s, 200);
    assert_eq!(
        after["spend_usd"].as_f64().unwrap(),
        spend,
        "spend rebuilt from the store"
    );
    assert_eq!(gw.admin("GET", "/admin/teams/t", None).1["rpm"], 7);
    let (_, usage) = gw.admin("GET", "/admin/usage", None);
    assert_eq!(
        usage["data"].as_array().unwrap().len(),
        5,
        "SIGTERM flushed the ledger"
    );
    assert_eq!(gw.chat_as(&key, &chat("mock-fast", false), "").status, 200);
    let _ = std::fs::remove_dir_all(dir);
}
