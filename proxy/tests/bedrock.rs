//! Amazon Bedrock end to end: the real `sluice` binary in front of the mock's Converse and
//! ConverseStream endpoints, which check every request's SigV4 signature (recomputed with
//! the `aws-sigv4` crate from the test credentials) and answer streams in the binary AWS
//! event-stream framing. OpenAI chat and Anthropic Messages clients, whole and streamed;
//! usage and cost in the ledger; a wrong secret is the mock's 403, surfaced clearly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::{json, Value};
use sluice_loadtest::mock::bedrock::{ACCESS_KEY_ID, SECRET_ACCESS_KEY};

const MODEL_ID: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const WRONG_SECRET: &str = "not-the-secret-access-key-0000";

fn bedrock_config(mock: std::net::SocketAddr, store: &std::path::Path) -> String {
    store_config(
        mock,
        store,
        1,
        &format!(
            r#"
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{mock}"
[providers.aws]
region = "us-east-1"
access_key_id = "env:SLUICE_TEST_AWS_KEY_ID"
secret_access_key = "env:SLUICE_TEST_AWS_SECRET"
session_token = "env:SLUICE_TEST_AWS_TOKEN"

[[providers]]
name = "bedrock-wrong"
kind = "bedrock"
base_url = "http://{mock}"
[providers.aws]
region = "us-east-1"
access_key_id = "env:SLUICE_TEST_AWS_KEY_ID"
secret_access_key = "env:SLUICE_TEST_AWS_WRONG_SECRET"

[[models]]
name = "claude-bedrock"
deployments = [{{ provider = "bedrock", model = "{MODEL_ID}" }}]

[[models]]
name = "claude-bedrock-wrong"
deployments = [{{ provider = "bedrock-wrong", model = "{MODEL_ID}" }}]

[prices."anthropic.claude-3-haiku"]
input_per_mtok = 0.25
output_per_mtok = 1.25
"#
        ),
    )
}

fn sse_json(r: &Response) -> Vec<Value> {
    r.sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn bedrock_end_to_end(driver: &str) {
    let mock = mock();
    let dir = temp_dir("bedrock");
    let env = [
        ("SLUICE_TEST_AWS_KEY_ID", ACCESS_KEY_ID),
        ("SLUICE_TEST_AWS_SECRET", SECRET_ACCESS_KEY),
        ("SLUICE_TEST_AWS_TOKEN", "session-token-abc"),
        ("SLUICE_TEST_AWS_WRONG_SECRET", WRONG_SECRET),
    ];
    let gw = start_with(
        &bedrock_config(mock.addr(), &dir.join("s.db")),
        driver,
        true,
        &env,
    );
    let (_, key) = gw.create_key(json!({"name": "bedrock-user"}));

    // OpenAI chat, whole: Converse, signed.
    let body = chat("claude-bedrock", false).replace("\"stream\"", "\"max_tokens\":16,\"stream\"");
    let r = gw.chat_as(&key, &body, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.matches("tok").count(), 8, "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    );
    let auth = seen.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"))
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{auth}"
    );
    assert_eq!(
        seen.header("x-amz-security-token"),
        Some("session-token-abc")
    );
    let sent: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent["messages"][0]["content"][0]["text"], "Say hello");
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 16);

    // OpenAI chat, streamed: the binary event stream becomes chunks, usage included.
    let body = chat("claude-bedrock", true).replace(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let r = gw.chat_as(&key, &body, "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(mock
        .last_request()
        .unwrap()
        .path
        .ends_with("/converse-stream"));
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    let chunks = sse_json(&r);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);

    // An Anthropic client of the same deployment, whole and streamed.
    let messages = |stream: bool| {
        format!(
            r#"{{"model":"claude-bedrock","max_tokens":32,"stream":{stream},"system":"Be brief.","messages":[{{"role":"user","content":"hi"}}]}}"#
        )
    };
    let mut c = Client::connect(gw.addr);
    let anthropic = format!("x-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n");
    let r = c.post("/v1/messages", &messages(false), &anthropic);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], text);
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 8);
    let sent: Value = serde_json::from_str(&mock.last_request().unwrap().body).unwrap();
    assert_eq!(sent["system"][0]["text"], "Be brief.");
    let r = c.post("/v1/messages", &messages(true), &anthropic);
    assert_eq!(r.status, 200);
    let events = sse_json(&r);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(events.last().unwrap()["type"], "message_stop");

    // A wrong secret: the mock's 403 (signature mismatch) reaches the client as an
    // OpenAI error, without any credential in it.
    let r = gw.chat_as(&key, &chat("claude-bedrock-wrong", false), "");
    assert_eq!(r.status, 403, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "permission_error");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("signature"), "{message}");
    for secret in [SECRET_ACCESS_KEY, WRONG_SECRET, "session-token-abc"] {
        assert!(!r.text().contains(secret));
        assert!(
            gw.lines().iter().all(|l| !l.contains(secret)),
            "{secret} logged"
        );
    }

    // The ledger: tokens and cost of the Bedrock calls.
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", "/admin/usage?limit=100", None);
        let rows = v["data"].as_array()?.clone();
        (rows.len() >= 5).then_some(rows)
    })
    .expect("ledger rows");
    let ok: Vec<&Value> = rows.iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(ok.len(), 4, "{rows:?}");
    for row in ok {
        assert_eq!(row["output_tokens"], 8, "{row}");
        assert!(row["input_tokens"].as_u64().unwrap() > 0, "{row}");
        assert!(row["cost_micros"].as_u64().unwrap() > 0, "{row}");
    }
    assert!(rows.iter().any(|r| r["status"] == 403), "{rows:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bedrock model ids and cross-region inference profiles, with no `[prices]` entry, cost what
/// the bundled table charges for the bare Anthropic name (`claude-sonnet-4-5`).
fn bedrock_ids_priced_from_the_bundled_table(driver: &str) {
    let mock = mock();
    let dir = temp_dir("bedrock-prices");
    let ids = [
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-haiku-4-5-20251001-v1:0",
    ];
    let models: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            format!(
                "[[models]]\nname = \"m{i}\"\ndeployments = [{{ provider = \"bedrock\", model = \"{id}\" }}]\n"
            )
        })
        .collect();
    let config = store_config(
        mock.addr(),
        &dir.join("s.db"),
        1,
        &format!(
            r#"
[[providers]]
name = "bedrock"
kind = "bedrock"
base_url = "http://{}"
[providers.aws]
region = "us-east-1"
access_key_id = "env:SLUICE_TEST_AWS_KEY_ID"
secret_access_key = "env:SLUICE_TEST_AWS_SECRET"

{models}"#,
            mock.addr()
        ),
    );
    let env = [
        ("SLUICE_TEST_AWS_KEY_ID", ACCESS_KEY_ID),
        ("SLUICE_TEST_AWS_SECRET", SECRET_ACCESS_KEY),
    ];
    let gw = start_with(&config, driver, true, &env);
    let (_, key) = gw.create_key(json!({"name": "bedrock-prices"}));
    for i in 0..ids.len() {
        let r = gw.chat_as(&key, &chat(&format!("m{i}"), false), "");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", "/admin/usage?limit=100", None);
        let rows = v["data"].as_array()?.clone();
        (rows.len() >= ids.len()).then_some(rows)
    })
    .expect("ledger rows");
    assert_eq!(rows.len(), ids.len(), "{rows:?}");
    for row in &rows {
        assert_eq!(row["status"], 200, "{row}");
        let input = row["input_tokens"].as_u64().unwrap();
        let output = row["output_tokens"].as_u64().unwrap();
        assert!(input > 0 && output > 0, "{row}");
        // $3/$15 per million tokens (Sonnet 4.5), $1/$5 (Haiku 4.5).
        let haiku = row["model"] == "m2" || row["model"].as_str().unwrap_or("").contains("haiku");
        let (i, o) = if haiku { (1, 5) } else { (3, 15) };
        assert_eq!(
            row["cost_micros"].as_u64().unwrap(),
            input * i + output * o,
            "{row}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Active health checks reach Bedrock signed, like data requests.
fn health_checks_are_signed(driver: &str) {
    let mock = mock();
    let dir = temp_dir("bedrock-health");
    let config = bedrock_config(mock.addr(), &dir.join("s.db")).replacen(
        "[providers.aws]",
        "health_check = { path = \"/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse\", interval_ms = 100, timeout_ms = 1000 }\n[providers.aws]",
        1,
    );
    let env = [
        ("SLUICE_TEST_AWS_KEY_ID", ACCESS_KEY_ID),
        ("SLUICE_TEST_AWS_SECRET", SECRET_ACCESS_KEY),
        ("SLUICE_TEST_AWS_TOKEN", "session-token-abc"),
        ("SLUICE_TEST_AWS_WRONG_SECRET", WRONG_SECRET),
    ];
    let gw = start_with(&config, driver, true, &env);
    let probe = wait_for(Duration::from_secs(10), || {
        mock.last_request()
            .filter(|r| r.header("user-agent") == Some("sluice-health"))
    })
    .expect("a health check");
    assert_eq!(probe.method, "GET");
    let auth = probe.header("authorization").expect("signed");
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"))
            && auth.contains("/us-east-1/bedrock/aws4_request"),
        "{auth}"
    );
    assert!(probe.header("x-amz-date").is_some());
    assert_eq!(
        probe.header("x-amz-security-token"),
        Some("session-token-abc")
    );
    assert!(gw.lines().iter().all(|l| !l.contains(SECRET_ACCESS_KEY)));
    let _ = std::fs::remove_dir_all(&dir);
}

both_drivers!(
    bedrock_end_to_end,
    bedrock_ids_priced_from_the_bundled_table,
    health_checks_are_signed
);
