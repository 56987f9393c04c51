//! The OpenAI surface beyond chat through the real binary: model lookup and the upstream's
//! catalog for pattern groups, and the bad-input cases of the other endpoints.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

/// The test config plus a pattern group served by the mock with the client's model name.
fn pattern_config(mock: std::net::SocketAddr) -> String {
    let mut cfg = config(mock, "", "");
    cfg.push_str(
        "\n[[models]]\nname = \"gpt-*\"\ndeployments = [{ provider = \"mock\", model = \"*\" }]\n",
    );
    cfg
}

fn listed(gw: &Gateway) -> Vec<String> {
    let r = gw.connect().get("/v1/models");
    assert_eq!(r.status, 200);
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn models_list_and_lookup(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&pattern_config(mock.addr()), driver);
    // The catalog is fetched off the request path: wait until it is in.
    assert!(
        eventually(Duration::from_secs(10), || listed(&gw).len() > 2),
        "the upstream's models never appeared: {:?}",
        listed(&gw)
    );
    // Exact names first, then the upstream's ids that `gpt-*` serves (not the others).
    assert_eq!(
        listed(&gw),
        ["mock-fast", "mock-stream", "gpt-4o-mini", "gpt-4o"]
    );
    let mut c = gw.connect();
    let r = c.get("/v1/models/mock-fast");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["id"].as_str(), v["object"].as_str()),
        (Some("mock-fast"), Some("model"))
    );
    let r = c.get("/v1/models/gpt-4o");
    assert_eq!(
        (r.status, r.json()["owned_by"].as_str()),
        (200, Some("upstream"))
    );
    // A name the pattern matches but the upstream does not list; a name nothing serves.
    for id in ["gpt-nope", "claude-3-5-haiku-latest"] {
        let r = c.get(&format!("/v1/models/{id}"));
        assert_eq!(r.status, 404, "{id}");
        assert_eq!(r.error_code(), "model_not_found");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(id));
    }
    // HEAD: the same head, no body (the connection stays usable).
    let mut h = gw.connect();
    h.send_raw(b"HEAD /v1/models/gpt-nope HTTP/1.1\r\nhost: t\r\n\r\n");
    h.send_raw(b"GET /v1/models/mock-fast HTTP/1.1\r\nhost: t\r\n\r\n");
    let mut raw = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stream = &mut h.stream;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while !String::from_utf8_lossy(&raw).contains("\"mock-fast\"")
        && std::time::Instant::now() < deadline
    {
        let mut chunk = [0u8; 4096];
        if let Ok(n) = std::io::Read::read(stream, &mut chunk) {
            raw.extend_from_slice(&chunk[..n]);
        }
    }
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    let second = text
        .find("HTTP/1.1 200")
        .expect("the GET after the HEAD is answered");
    assert!(
        !text[..second].contains("model_not_found"),
        "HEAD carried a body: {text}"
    );
    // The echo of a long id is bounded.
    let long = "x".repeat(5000);
    let r = c.get(&format!("/v1/models/{long}"));
    assert_eq!(r.status, 404);
    assert!(r.text().len() < 1000, "{} bytes", r.text().len());
    // A reload fetches the catalog again for the new generation.
    gw.sighup();
    assert!(eventually(Duration::from_secs(10), || {
        gw.lines()
            .iter()
            .filter(|l| l.contains("config reloaded"))
            .count()
            > 0
            && listed(&gw).contains(&"gpt-4o".to_owned())
    }));
}

both_drivers!(models_list_and_lookup);

/// The test config plus a transcription group, an Anthropic deployment, and a small body limit.
fn surface_config(mock: std::net::SocketAddr) -> String {
    let mut cfg = config(mock, "max_body_bytes = 65536", "");
    cfg.push_str(&format!(
        "\n[[models]]\nname = \"mock-transcribe\"\ndeployments = [{{ provider = \"mock\", model = \"gpt-4o-transcribe\" }}]\n\n[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"http://{mock}/v1\"\napi_key = \"env:SLUICE_TEST_UPSTREAM_KEY\"\n\n[[models]]\nname = \"mock-anthropic\"\ndeployments = [{{ provider = \"claude\", model = \"claude-mock\" }}]\n\n[[providers]]\nname = \"chat-only\"\nbase_url = \"http://{mock}/v1\"\nresponses_api = false\n\n[[models]]\nname = \"mock-chat-only\"\ndeployments = [{{ provider = \"chat-only\", model = \"mock-model\" }}]\n"
    ));
    cfg
}

const BOUNDARY: &str = "sluiceTestBoundary42";

/// A transcription form: a binary file part (with CRLFs and a fake delimiter inside), then the
/// given fields.
fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\ncontent-type: audio/wav\r\n\r\n").as_bytes());
    b.extend_from_slice(b"RIFF\r\n--sluice\r\n");
    b.extend((0..2048u32).map(|i| (i % 251) as u8));
    b.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        b.extend_from_slice(
            format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn post_form(c: &mut Client, content_type: &str, body: &[u8]) -> Response {
    let mut req = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: t\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    c.send_raw(&req);
    c.read_response()
}

fn multipart_forms(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&surface_config(mock.addr()), driver);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let mut c = gw.connect();
    // The model comes after the file: found, routed, and replaced by the deployment's.
    let r = post_form(
        &mut c,
        &ct,
        &form(&[("model", "mock-transcribe"), ("language", "en")]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["text"].as_str().unwrap().contains("tok"));
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/audio/transcriptions");
    assert_eq!(seen.header("content-type"), Some(ct.as_str()));
    assert!(
        seen.body.contains("\r\n\r\ngpt-4o-transcribe\r\n--"),
        "{}",
        seen.body
    );
    assert!(!seen.body.contains("mock-transcribe"));
    assert!(seen.body.contains("name=\"language\"\r\n\r\nen\r\n"));
    let log = gw.access_lines(1);
    assert_eq!(log[0]["deployment"], "mock/gpt-4o-transcribe");
    assert_eq!(log[0]["output_tokens"], 8);

    // No model field, a model that is not text, a body not framed by its boundary, a
    // content type that is not a form: 400s naming what is wrong, the connection kept.
    let r = post_form(&mut c, &ct, &form(&[("language", "en")]));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    let r = post_form(&mut c, &ct, b"--other\r\n\r\nx\r\n--other--\r\n");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("boundary"), "{}", r.text());
    let r = post_form(
        &mut c,
        "application/json",
        b"{\"model\":\"mock-transcribe\"}",
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("multipart/form-data"));
    // An unknown model in the form is a 404 like anywhere else.
    let r = post_form(&mut c, &ct, &form(&[("model", "nope")]));
    assert_eq!(r.status, 404);

    // A form over max_body_bytes is refused from its head: 413 before any body byte is sent.
    let mut c = gw.connect();
    c.send_raw(
        format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: t\r\ncontent-type: {ct}\r\ncontent-length: 10000000\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // Chunked, it is refused as soon as the running total passes the limit.
    let mut c = gw.connect();
    c.send_raw(
        format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: t\r\ncontent-type: {ct}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .as_bytes(),
    );
    // One chunk over the limit (the socket buffers take it whole).
    let mut framed = format!("{:x}\r\n", 70_000).into_bytes();
    framed.extend(std::iter::repeat_n(b'a', 70_000));
    framed.extend_from_slice(b"\r\n");
    c.send_raw(&framed);
    let status = c.read_response().status;
    assert_eq!(status, 413);
}

fn error_param(r: &Response) -> String {
    r.json()["error"]["param"].as_str().unwrap_or("").to_owned()
}

fn responses_and_count_tokens(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&surface_config(mock.addr()), driver);
    let mut c = gw.connect();
    // Stateless use on an Anthropic deployment: translated both ways.
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-anthropic","instructions":"Be brief.","input":"Say hello","max_output_tokens":50}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert!(v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("tok"));
    assert_eq!(v["usage"]["output_tokens"], 8);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    let sent: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(
        (sent["system"].as_str(), sent["max_tokens"].as_u64()),
        (Some("Be brief."), Some(50))
    );

    // Streamed: Responses events from the Anthropic stream.
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-anthropic","input":"Say hello","stream":true}"#,
        "",
    );
    assert_eq!(r.status, 200);
    let names: Vec<String> = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("response.created"));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    assert!(
        names
            .iter()
            .filter(|n| *n == "response.output_text.delta")
            .count()
            >= 1
    );

    // State the upstream cannot keep, and hosted tools: 400 naming the field.
    for (body, param) in [
        (
            r#"{"model":"mock-anthropic","input":"x","previous_response_id":"resp_1"}"#,
            "previous_response_id",
        ),
        (
            r#"{"model":"mock-anthropic","input":"x","store":true}"#,
            "store",
        ),
        (
            r#"{"model":"mock-anthropic","input":"x","tools":[{"type":"web_search"}]}"#,
            "tools",
        ),
        (
            r#"{"model":"mock-anthropic","input":[{"type":"item_reference","id":"x"}]}"#,
            "input",
        ),
    ] {
        let r = c.post("/v1/responses", body, "");
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(error_param(&r), param, "{body}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    // An OpenAI deployment takes it as it came (passthrough).
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-fast","input":"x","previous_response_id":"resp_1"}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.last_request().unwrap().path, "/v1/responses");

    // An OpenAI-compatible server without /responses: translated to chat completions.
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-chat-only","input":"Say hello","stream":true}"#,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.last_request().unwrap().path, "/v1/chat/completions");
    let last: serde_json::Value = serde_json::from_str(r.sse_data().last().unwrap()).unwrap();
    assert_eq!(last["response"]["usage"]["output_tokens"], 8);
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-chat-only","input":"x","previous_response_id":"resp_1"}"#,
        "",
    );
    assert_eq!(
        (r.status, error_param(&r).as_str()),
        (400, "previous_response_id")
    );

    // count_tokens: passed through to Anthropic, estimated (and marked) otherwise.
    let body = r#"{"model":"mock-anthropic","messages":[{"role":"user","content":"Count me"}]}"#;
    let r = c.post("/v1/messages/count_tokens", body, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["input_tokens"].as_u64().unwrap() >= 1);
    assert_eq!(r.header("x-sluice-estimate"), None);
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert_eq!(seen.header("x-api-key"), Some(UPSTREAM_KEY));
    assert!(seen.body.contains("claude-mock"));
    let r = c.post(
        "/v1/messages/count_tokens",
        &body.replace("mock-anthropic", "mock-fast"),
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-sluice-estimate"), Some("true"));
    assert!(r.json()["input_tokens"].as_u64().unwrap() >= 1);
    let r = c.post("/v1/messages/count_tokens", r#"{"model":"mock-fast"}"#, "");
    assert_eq!((r.status, error_param(&r).as_str()), (400, "messages"));
}

both_drivers!(multipart_forms, responses_and_count_tokens);

/// Gemini and Azure deployments on the mock's Gemini and Azure shapes.
fn cloud_config(mock: std::net::SocketAddr) -> String {
    let mut cfg = config(mock, "", "");
    cfg.push_str(&format!(
        r#"
[[providers]]
name = "gem"
kind = "gemini"
base_url = "http://{mock}/v1beta"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"

[[providers]]
name = "az"
kind = "azure"
base_url = "http://{mock}"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"
api_version = "2024-10-21"

[[models]]
name = "mock-gemini"
deployments = [{{ provider = "gem", model = "gemini-2.0-flash" }}]

[[models]]
name = "mock-azure"
deployments = [{{ provider = "az", model = "prod-gpt4o" }}]
"#
    ));
    cfg
}

fn gemini_and_azure_deployments(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&cloud_config(mock.addr()), driver);
    let mut c = gw.connect();
    // Chat, whole and streamed, on each.
    for (model, path, auth) in [
        (
            "mock-gemini",
            "/v1beta/models/gemini-2.0-flash:generateContent",
            "x-goog-api-key",
        ),
        (
            "mock-azure",
            "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
            "api-key",
        ),
    ] {
        let r = c.post("/v1/chat/completions", &chat(model, false), "");
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("tok"));
        assert_eq!(v["usage"]["completion_tokens"], 8, "{model}");
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.path, path);
        assert_eq!(seen.header(auth), Some(UPSTREAM_KEY), "{model}");
        assert!(seen.header("authorization").is_none(), "{model}");

        let body = chat(model, true).replace(
            "\"stream\":true",
            "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
        );
        let r = c.post("/v1/chat/completions", &body, "");
        assert_eq!(r.status, 200);
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}");
        let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 8, "{model}");
        let text: String = data
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text.matches("tok").count(), 8, "{model}: {text}");
    }
    assert_eq!(
        mock.last_request().unwrap().path,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    // A Responses client of both (stateless translation), streamed from Gemini.
    for model in ["mock-gemini", "mock-azure"] {
        let r = c.post(
            "/v1/responses",
            &format!(r#"{{"model":"{model}","input":"Say hello"}}"#),
            "",
        );
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        assert_eq!(r.json()["usage"]["output_tokens"], 8, "{model}");
    }
    let r = c.post(
        "/v1/responses",
        r#"{"model":"mock-gemini","input":"Say hello","stream":true}"#,
        "",
    );
    assert_eq!(r.status, 200);
    assert!(mock
        .last_request()
        .unwrap()
        .path
        .ends_with(":streamGenerateContent?alt=sse"));
    let last = r.sse_data().last().cloned().unwrap();
    let done: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["usage"]["output_tokens"], 8);
}

both_drivers!(gemini_and_azure_deployments);
