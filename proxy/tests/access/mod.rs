//! Harness for the keys, limits and crash tests: the real `sluice` binary with a store in a
//! temporary directory, an admin token, and helpers for the admin API.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Client, Gateway, Response};

/// The admin token every gateway here is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-9f8e7d6c5b4a";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config with keys required, a store at `store`, `workers` workers, the mock's two models
/// priced like gpt-4o (2.5 / 10 USD per million tokens), and `extra` appended (more
/// `[[keys]]`, `[limits]`, …).
pub fn store_config(mock: SocketAddr, store: &Path, workers: usize, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
workers = {workers}
pin_workers = false
drain_timeout_ms = 5000

[log]
level = "info"

[admin]
listen = "127.0.0.1:0"

[store]
path = "{store}"

[[providers]]
name = "mock"
base_url = "http://{mock}/v1"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[[models]]
name = "mock-stream"
deployments = [{{ provider = "mock", model = "mock-stream-model" }}]

[prices."mock-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[prices."mock-stream-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0

{extra}
"#,
        store = store.display()
    )
}

/// A running gateway with its store: the common harness's [`Gateway`] plus its admin address.
pub struct Gw {
    gw: Gateway,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl std::ops::Deref for Gw {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.gw
    }
}

impl std::ops::DerefMut for Gw {
    fn deref_mut(&mut self) -> &mut Gateway {
        &mut self.gw
    }
}

/// Starts `sluice serve` with `config` under `driver`, with the admin token set (unless
/// `admin_token` is false) and `env` added.
pub fn start_with(config: &str, driver: &str, admin_token: bool, env: &[(&str, &str)]) -> Gw {
    let mut all: Vec<(&str, &str)> = env.to_vec();
    if admin_token {
        all.push(("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN));
    }
    let gw = Gateway::start_with_env(config, driver, &all);
    Gw {
        addr: gw.addr,
        admin: gw.admin.expect("admin listener"),
        gw,
    }
}

/// [`start_with`] with the admin token and no extra environment.
pub fn start(config: &str, driver: &str) -> Gw {
    start_with(config, driver, true, &[])
}

impl Gw {
    /// One admin API call with the right token: (status, JSON).
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_as(Some(ADMIN_TOKEN), method, path, body)
    }

    /// One admin API call with `token`.
    pub fn admin_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut c = Client::connect(self.admin);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
        c.send_raw(
            format!(
                "{method} {path} HTTP/1.1\r\nhost: a\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response();
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        };
        (r.status, v)
    }

    /// Creates a key; returns (id, key).
    pub fn create_key(&self, body: Value) -> (String, String) {
        let (status, v) = self.admin("POST", "/admin/keys", Some(body));
        assert_eq!(status, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
        )
    }

    /// A chat request with `key` as Bearer token and `extra` header lines.
    pub fn chat_as(&self, key: &str, body: &str, extra: &str) -> Response {
        let mut c = Client::connect(self.addr);
        c.post(
            "/v1/chat/completions",
            body,
            &format!("authorization: Bearer {key}\r\n{extra}"),
        )
    }

    /// The Prometheus text of the admin listener.
    pub fn metrics(&self) -> String {
        let mut c = Client::connect(self.admin);
        c.get("/metrics").text()
    }
}

/// A chat body of exactly `len` bytes (padded in the message), with `max_tokens` and `stream`.
pub fn chat_body(model: &str, stream: bool, max_tokens: Option<u64>, len: usize) -> String {
    let max = max_tokens.map_or(String::new(), |m| format!(r#""max_tokens":{m},"#));
    let head = format!(
        r#"{{"model":"{model}","stream":{stream},{max}"messages":[{{"role":"user","content":""#
    );
    let tail = r#""}]}"#;
    let pad = len.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// The value of a sample in Prometheus text (`name{labels}` exactly as rendered), 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
