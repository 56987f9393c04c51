//! Google Vertex AI end to end through the real binary: Gemini and Anthropic models on the
//! mock's Vertex AI paths, with access tokens the gateway mints from a (test-only)
//! service-account key at the mock's token endpoint, which verifies the RS256 assertion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

const PREFIX: &str = "/v1/projects/sluice-test-project/locations/us-east5/publishers";

/// A copy of fixture key `name` whose `token_uri` is the mock's (with `?expires_in=` when
/// given), in a file of its own.
fn key_file(name: &str, mock: SocketAddr, expires_in: Option<u64>) -> PathBuf {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/vertex/");
    let text = std::fs::read_to_string(format!("{fixture}{name}")).unwrap();
    let mut key: serde_json::Value = serde_json::from_str(&text).unwrap();
    let query = expires_in.map_or(String::new(), |s| format!("?expires_in={s}"));
    key["token_uri"] = format!("http://{mock}/token{query}").into();
    let path = std::env::temp_dir().join(format!(
        "sluice-vertex-{}-{}-{name}",
        std::process::id(),
        mock.port()
    ));
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

fn vertex_config(mock: SocketAddr, key: &std::path::Path) -> String {
    format!(
        r#"auth = "none"

[server]
listen = "127.0.0.1:0"
workers = 1

[log]
level = "info"

[admin]
listen = "127.0.0.1:0"

[[providers]]
name = "vertex"
kind = "vertex"
project = "sluice-test-project"
region = "us-east5"
credentials = "file:{key}"
base_url = "http://{mock}"

[[models]]
name = "v-gemini"
deployments = [{{ provider = "vertex", model = "gemini-2.0-flash" }}]

[[models]]
name = "v-claude"
deployments = [{{ provider = "vertex", model = "claude-sonnet-4@20250514" }}]

[[models]]
name = "v-tuned"
deployments = [{{ provider = "vertex", model = "my-tuned-model", publisher = "anthropic" }}]
"#,
        key = key.display()
    )
}

fn messages(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"Say hello"}}]}}"#
    )
}

fn gemini_and_anthropic_whole_and_streamed(driver: &str) {
    let mock = mock();
    let key = key_file("test-sa.json", mock.addr(), None);
    let gw = Gateway::start(&vertex_config(mock.addr(), &key), driver);
    let mut c = gw.connect();
    let cases = [
        (
            "v-gemini",
            "google/models/gemini-2.0-flash:generateContent",
            "google/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        ),
        (
            "v-claude",
            "anthropic/models/claude-sonnet-4@20250514:rawPredict",
            "anthropic/models/claude-sonnet-4@20250514:streamRawPredict",
        ),
        (
            "v-tuned",
            "anthropic/models/my-tuned-model:rawPredict",
            "anthropic/models/my-tuned-model:streamRawPredict",
        ),
    ];
    let mut requests = 0;
    for (model, whole_path, stream_path) in cases {
        let r = c.post("/v1/chat/completions", &chat(model, false), "");
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion", "{model}");
        assert_eq!(v["usage"]["completion_tokens"], 8, "{model}");
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.path, format!("{PREFIX}/{whole_path}"));
        let bearer = seen.header("authorization").unwrap();
        assert!(bearer.starts_with("Bearer ya29.mock-"), "{bearer}");
        let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
        if whole_path.starts_with("anthropic") {
            assert_eq!(body["anthropic_version"], "vertex-2023-10-16");
            assert!(body.get("model").is_none(), "{body}");
            assert_eq!(body["messages"][0]["content"][0]["text"], "Say hello");
        } else {
            assert_eq!(body["contents"][0]["parts"][0]["text"], "Say hello");
        }
        let r = c.post("/v1/chat/completions", &chat(model, true), "");
        assert_eq!(r.status, 200, "{model}");
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}");
        let text: String = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text.len(), 8 * MockConfig::default().chunk_size, "{model}");
        assert_eq!(
            mock.last_request().unwrap().path,
            format!("{PREFIX}/{stream_path}")
        );
        requests += 2;
    }
    // An Anthropic client on an Anthropic model: the Messages body, moved to Vertex AI.
    let r = c.post("/v1/messages", &messages("v-claude", false), "");
    assert_eq!(
        (r.status, r.json()["type"].as_str()),
        (200, Some("message"))
    );
    let r = c.post("/v1/messages", &messages("v-claude", true), "");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("event: message_stop"), "{}", r.text());
    requests += 2;
    // Usage and cost of every request (gemini-2.0-flash and claude-sonnet-4 are priced).
    let log = gw.access_lines(requests);
    assert_eq!(log.len(), requests);
    for line in &log {
        assert_eq!(line["output_tokens"], 8, "{line}");
        if line["model"] != "v-tuned" {
            assert!(line["cost_usd"].as_f64().unwrap() > 0.0, "{line}");
        }
    }
    // One token served them all.
    assert_eq!(mock.stats().tokens_issued, 1);
    let _ = std::fs::remove_file(key);
}

#[test]
fn tokens_are_refreshed_off_the_data_plane_during_a_run() {
    let mock = mock();
    // Tokens that live 3 s: the gateway refreshes each after about 1.5 s.
    let key = key_file("test-sa.json", mock.addr(), Some(3));
    let gw = Gateway::start(&vertex_config(mock.addr(), &key), driver_name(false));
    let mut c = gw.connect();
    let mut sent = 0;
    let refreshed = eventually(Duration::from_secs(20), || {
        for model in ["v-gemini", "v-claude"] {
            let r = c.post("/v1/chat/completions", &chat(model, sent % 4 == 0), "");
            assert_eq!(r.status, 200, "request {sent} to {model}: {}", r.text());
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        mock.stats().tokens_issued >= 3
    });
    assert!(refreshed, "tokens issued: {}", mock.stats().tokens_issued);
    // Every request had a valid token: the mock refuses expired ones with 401.
    assert!(sent > 4);
    let _ = std::fs::remove_file(key);
}

#[test]
fn a_reload_that_keeps_the_key_keeps_its_token() {
    let mock = mock();
    let key = key_file("test-sa.json", mock.addr(), None);
    let cfg = vertex_config(mock.addr(), &key);
    let gw = Gateway::start(&cfg, driver_name(false));
    let ask = |model: &str| {
        gw.connect()
            .post("/v1/chat/completions", &chat(model, false), "")
            .status
    };
    assert_eq!(ask("v-gemini"), 200);
    // A new group on the same provider and key.
    let more = format!(
        "{cfg}\n[[models]]\nname = \"v-new\"\ndeployments = [{{ provider = \"vertex\", model = \"claude-3-5-haiku@20241022\" }}]\n"
    );
    std::fs::write(gw.config_path(), more).unwrap();
    gw.sighup();
    assert!(
        eventually(Duration::from_secs(5), || gw
            .lines()
            .iter()
            .any(|l| l.contains("config reloaded"))),
        "{:?}",
        gw.lines()
    );
    assert_eq!(ask("v-new"), 200);
    assert_eq!(mock.stats().tokens_issued, 1);
    let _ = std::fs::remove_file(key);
}

#[test]
fn a_key_the_token_endpoint_refuses_is_a_clear_503() {
    let mock = mock();
    let key = key_file("wrong-sa.json", mock.addr(), None);
    let gw = Gateway::start(&vertex_config(mock.addr(), &key), driver_name(false));
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("v-gemini", false), "");
    assert_eq!(r.status, 503, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("Vertex AI access token")
            && message.contains("invalid_grant")
            && message.contains("Invalid JWT Signature"),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    assert_eq!(mock.stats().tokens_issued, 0);
    // No model request reached the upstream without a token.
    assert!(mock
        .last_request()
        .is_some_and(|r| r.path.starts_with("/token")));
    // The failure is counted.
    let metrics = Client::connect(gw.admin.unwrap()).get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_vertex_token_failures_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let _ = std::fs::remove_file(key);
}

#[test]
fn a_file_that_is_not_a_service_account_key_is_refused_at_start() {
    let path = std::env::temp_dir().join(format!("sluice-vertex-bad-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"type":"authorized_user","client_id":"x"}"#).unwrap();
    let cfg = vertex_config("127.0.0.1:9".parse().unwrap(), &path);
    let cfg_path =
        std::env::temp_dir().join(format!("sluice-vertex-bad-{}.toml", std::process::id()));
    std::fs::write(&cfg_path, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("providers[0].credentials") && err.contains("service_account"),
        "{err}"
    );
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(cfg_path);
}

/// Active health checks reach Vertex AI with the access token data requests carry.
fn health_checks_carry_the_access_token(driver: &str) {
    let mock = mock();
    let key = key_file("test-sa.json", mock.addr(), None);
    let config = vertex_config(mock.addr(), &key).replacen(
        "base_url = ",
        "health_check = { path = \"/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict\", interval_ms = 100, timeout_ms = 1000 }\nbase_url = ",
        1,
    );
    let _gw = Gateway::start(&config, driver);
    let mut probe = None;
    let seen = eventually(Duration::from_secs(10), || {
        probe = mock
            .last_request()
            .filter(|r| r.header("user-agent") == Some("sluice-health"));
        probe.is_some()
    });
    assert!(seen, "no health check reached the mock");
    let probe = probe.unwrap();
    assert_eq!(probe.method, "GET");
    assert!(probe.path.starts_with(PREFIX), "{}", probe.path);
    let auth = probe.header("authorization").expect("a bearer token");
    assert!(auth.starts_with("Bearer ") && auth.len() > 20, "{auth}");
    assert!(mock.stats().tokens_issued >= 1);
    let _ = std::fs::remove_file(key);
}

both_drivers!(
    gemini_and_anthropic_whole_and_streamed,
    health_checks_carry_the_access_token
);
