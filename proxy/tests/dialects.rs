//! Provider dialects through the real binary: OpenAI clients on an Anthropic deployment,
//! Anthropic clients (`/v1/messages`) on an OpenAI deployment and on an Anthropic one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

fn dialect_config(mock: std::net::SocketAddr) -> String {
    config(mock, "", "").replace(
        "[[models]]\nname = \"mock-fast\"",
        &format!(
            "[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"http://{mock}/v1\"\napi_key = \"env:SLUICE_TEST_UPSTREAM_KEY\"\ndefault_max_tokens = 512\n\n[[models]]\nname = \"mock-anthropic\"\ndeployments = [{{ provider = \"claude\", model = \"claude-mock\" }}]\n\n[[models]]\nname = \"mock-fast\""
        ),
    )
}

fn messages(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"system":"Be brief.","messages":[{{"role":"user","content":"Say hello"}}]}}"#
    )
}

fn openai_client_on_anthropic_deployment(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&dialect_config(mock.addr()), driver);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        r#"{"model":"mock-anthropic","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello"}]}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-anthropic");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("tok"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(r.header("x-sluice-deployment"), Some("claude/claude-mock"));
    assert!(
        r.header("x-sluice-cost-usd").is_none(),
        "no price is known for claude-mock"
    );
    // The upstream got the Messages API: path, headers, body.
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(UPSTREAM_KEY));
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["model"], "claude-mock");
    assert_eq!(body["system"], "Be brief.");
    assert_eq!(body["max_tokens"], 512);

    // Streaming, translated event by event.
    let r = c.post(
        "/v1/chat/completions",
        r#"{"model":"mock-anthropic","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#,
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "tok ".repeat(8));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
    let log = gw.access_lines(2);
    assert_eq!(log[1]["output_tokens"], 8);
    assert_eq!(log[1]["tokens_estimated"], false);

    // A request Anthropic cannot express: 400 naming the field.
    let r = c.post(
        "/v1/chat/completions",
        r#"{"model":"mock-anthropic","n":2,"messages":[{"role":"user","content":"hi"}]}"#,
        "",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
    // Endpoints the dialect has no equivalent for.
    let r = c.post(
        "/v1/embeddings",
        r#"{"model":"mock-anthropic","input":"x"}"#,
        "",
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

fn anthropic_client_on_openai_and_anthropic_deployments(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&dialect_config(mock.addr()), driver);
    let mut c = gw.connect();
    // Translated to an OpenAI-compatible upstream and back.
    let r = c.post(
        "/v1/messages",
        &messages("mock-fast", false),
        "x-api-key: sk-client\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["usage"]["output_tokens"], 8);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["model"], "mock-model");

    // Streaming: Anthropic's event sequence.
    let r = c.post("/v1/messages", &messages("mock-fast", true), "");
    assert_eq!(r.status, 200);
    let text = r.text();
    for event in [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("event: {event}")),
            "{event} missing: {text}"
        );
    }
    assert!(!text.contains("[DONE]"));

    // Passthrough to an Anthropic upstream.
    let r = c.post("/v1/messages", &messages("mock-anthropic", true), "");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("event: message_stop"));
    let log = gw.access_lines(3);
    assert_eq!(
        log[2]["output_tokens"], 8,
        "usage read from Anthropic events: {}",
        log[2]
    );
    let r = c.post("/v1/messages", &messages("mock-anthropic", false), "");
    assert_eq!(r.json()["type"], "message");
    assert_eq!(mock.last_request().unwrap().path, "/v1/messages");
}

fn cost_header_for_priced_models(driver: &str) {
    let mock = mock();
    let cfg =
        config(mock.addr(), "", "").replace("model = \"mock-model\"", "model = \"gpt-4o-mini\"");
    let gw = Gateway::start(&cfg, driver);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-fast", false), "");
    assert_eq!(r.status, 200);
    let usage = &r.json()["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    // gpt-4o-mini list price: $0.15 in, $0.60 out per million tokens.
    let expected = (p * 0.15 + c * 0.60) / 1e6;
    let got: f64 = r
        .header("x-sluice-cost-usd")
        .expect("cost header")
        .parse()
        .unwrap();
    assert!(
        (got - expected).abs() < 1e-6,
        "cost {got}, expected {expected}"
    );
    let log = gw.access_lines(1);
    assert!((log[0]["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-6);
}

both_drivers!(
    cost_header_for_priced_models,
    openai_client_on_anthropic_deployment,
    anthropic_client_on_openai_and_anthropic_deployments
);
