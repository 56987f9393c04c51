//! The mock provider on real sockets: server, std client, assert.
//!
//! Runs on the driver `SLUICE_DRIVER` picks; CI runs the file twice, once
//! with `SLUICE_DRIVER=epoll`.

// A failed unwrap is a failed test; clippy's test exemption does not reach
// the helpers of an integration test file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_loadtest::mock::{MockConfig, MockServer, MockStats};

fn start(cfg: MockConfig) -> MockServer {
    let cfg = MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    };
    MockServer::start(cfg).unwrap()
}

fn mock() -> MockServer {
    start(MockConfig::default())
}

/// A request with a JSON body.
fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: mock\r\n\r\n")
}

/// Polls `check` on the stats for up to `within`.
fn wait_for(mock: &MockServer, within: Duration, check: impl Fn(&MockStats) -> bool) -> MockStats {
    let deadline = Instant::now() + within;
    loop {
        let stats = mock.stats();
        if check(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

/// A blocking HTTP/1.1 client that keeps unread bytes between responses.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).unwrap();
    }

    /// Reads more bytes; false on EOF or reset.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "EOF before {n} bytes");
        }
        self.buf.drain(..n).collect()
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(String::from_utf8(line[..pos].to_vec()).unwrap());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads a status line and headers (skipping 1xx answers).
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let status_line = self.line().expect("EOF before a response");
            let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = Vec::new();
            loop {
                let line = self.line().unwrap();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            if status >= 200 {
                return (status, headers);
            }
        }
    }

    /// One chunk of a chunked body; `None` for the last chunk.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = usize::from_str_radix(&self.line()?, 16).unwrap();
        if size == 0 {
            assert_eq!(self.line().as_deref(), Some(""));
            return None;
        }
        let data = self.take(size);
        assert_eq!(self.take(2), b"\r\n");
        Some(data)
    }

    fn response(&mut self) -> Response {
        let (status, headers) = self.head();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            while let Some(chunk) = self.chunk() {
                response.body.extend_from_slice(&chunk);
            }
        } else {
            let len = response.header("content-length").unwrap().parse().unwrap();
            response.body = self.take(len);
        }
        response
    }

    fn request(&mut self, raw: &str) -> Response {
        self.send(raw);
        self.response()
    }

    /// True once the server closed the connection.
    fn at_eof(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }
}

fn once(addr: SocketAddr, raw: &str) -> Response {
    Client::connect(addr).request(raw)
}

/// The JSON payloads of an OpenAI stream body (`[DONE]` as a string).
fn openai_events(body: &str) -> Vec<Value> {
    body.split_terminator("\n\n")
        .map(|event| {
            let data = event.strip_prefix("data: ").unwrap();
            serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned()))
        })
        .collect()
}

#[test]
fn chat_answer_with_usage() {
    let mock = mock();
    let body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hello there"}]}"#;
    let res = once(mock.addr(), &post("/v1/chat/completions", "", body));
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let json = res.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-test");
    assert!(json["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(json["choices"][0]["message"]["content"], "tok ".repeat(8));
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    let prompt = (body.len() / 4) as u64;
    assert_eq!(json["usage"]["prompt_tokens"], prompt);
    assert_eq!(json["usage"]["completion_tokens"], 8);
    assert_eq!(json["usage"]["total_tokens"], prompt + 8);
    let stats = mock.stats();
    assert_eq!((stats.requests, stats.responses_completed), (1, 1));
    let seen = mock.last_request().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(seen.header("HOST"), Some("mock"));
    assert_eq!(seen.body, body);
}

#[test]
fn chat_stream_event_order() {
    let mock = mock();
    for include_usage in [true, false] {
        let body = format!(
            r#"{{"model":"m","stream":true,"stream_options":{{"include_usage":{include_usage}}}}}"#
        );
        let res = once(
            mock.addr(),
            &post("/v1/chat/completions", "x-mock-chunks: 3\r\n", &body),
        );
        assert_eq!(res.header("content-type"), Some("text/event-stream"));
        let events = openai_events(&res.text());
        let n = events.len();
        assert_eq!(n, if include_usage { 7 } else { 6 });
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        for event in &events[1..4] {
            assert_eq!(event["object"], "chat.completion.chunk");
            assert_eq!(event["choices"][0]["delta"]["content"], "tok ");
        }
        assert_eq!(events[4]["choices"][0]["finish_reason"], "stop");
        for event in &events[..5] {
            // `"usage":null` in every chunk only when usage was asked for.
            assert_eq!(event.get("usage").is_some(), include_usage);
            assert!(event["usage"].is_null());
        }
        if include_usage {
            assert_eq!(events[5]["choices"], Value::Array(vec![]));
            assert_eq!(events[5]["usage"]["completion_tokens"], 3);
        }
        assert_eq!(events[n - 1], "[DONE]");
    }
    let stats = mock.stats();
    assert_eq!((stats.streams_started, stats.streams_completed), (2, 2));
}

#[test]
fn stream_chunks_are_paced() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let headers = "x-mock-chunks: 4\r\nx-mock-chunk-delay-ms: 100\r\n";
    let sent = Instant::now();
    client.send(&post("/v1/chat/completions", headers, r#"{"stream":true}"#));
    client.head();
    let role = client.chunk().unwrap();
    assert!(String::from_utf8(role).unwrap().contains("assistant"));
    let first = client.chunk().unwrap();
    let first_at = sent.elapsed();
    assert!(String::from_utf8(first)
        .unwrap()
        .contains("\"content\":\"tok \""));
    while client.chunk().is_some() {}
    let all_at = sent.elapsed();
    assert!(
        first_at < Duration::from_millis(80),
        "first chunk at {first_at:?}"
    );
    assert!(
        all_at >= Duration::from_millis(290),
        "stream done at {all_at:?}"
    );
}

#[test]
fn completions_plain_and_streaming() {
    let mock = mock();
    let res = once(
        mock.addr(),
        &post("/v1/completions", "", r#"{"model":"davinci","prompt":"x"}"#),
    );
    let json = res.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["model"], "davinci");
    assert_eq!(json["choices"][0]["text"], "tok ".repeat(8));
    let body = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
    let res = once(
        mock.addr(),
        &post("/v1/completions", "x-mock-chunks: 2\r\n", body),
    );
    let events = openai_events(&res.text());
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["choices"][0]["text"], "tok ");
    assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[3]["usage"]["completion_tokens"], 2);
    assert_eq!(events[4], "[DONE]");
}

#[test]
fn embeddings_for_string_and_array() {
    let mock = mock();
    for (input, n) in [(r#""one""#, 1), (r#"["a","b","c"]"#, 3)] {
        let body = format!(r#"{{"model":"emb","input":{input}}}"#);
        let json = once(mock.addr(), &post("/v1/embeddings", "", &body)).json();
        assert_eq!(json["object"], "list");
        assert_eq!(json["model"], "emb");
        let data = json["data"].as_array().unwrap();
        assert_eq!(data.len(), n);
        for (i, item) in data.iter().enumerate() {
            assert_eq!(item["index"], i);
            let v: Vec<f64> = item["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(v.len(), 256);
            let norm: f64 = v.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-3, "unit length: {norm}");
        }
        assert_eq!(
            json["usage"]["total_tokens"],
            json["usage"]["prompt_tokens"]
        );
    }
}

#[test]
fn responses_and_models() {
    let mock = mock();
    let json = once(
        mock.addr(),
        &post("/v1/responses", "x-mock-chunks: 2\r\n", r#"{"model":"o"}"#),
    )
    .json();
    assert_eq!(json["object"], "response");
    assert_eq!(json["status"], "completed");
    assert_eq!(json["output"][0]["content"][0]["text"], "tok tok ");
    assert_eq!(json["usage"]["output_tokens"], 2);
    let total = json["usage"]["input_tokens"].as_u64().unwrap() + 2;
    assert_eq!(json["usage"]["total_tokens"], total);
    let models = once(mock.addr(), &get("/v1/models")).json();
    assert_eq!(models["object"], "list");
    assert!(models["data"].as_array().unwrap().len() >= 3);
    assert_eq!(models["data"][0]["object"], "model");
}

#[test]
fn anthropic_message() {
    let mock = mock();
    let body = r#"{"model":"claude-x","max_tokens":10,"messages":[]}"#;
    let json = once(mock.addr(), &post("/v1/messages", "", body)).json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["model"], "claude-x");
    assert!(json["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(json["content"][0]["text"], "tok ".repeat(8));
    assert_eq!(json["stop_reason"], "end_turn");
    assert_eq!(json["usage"]["input_tokens"], (body.len() / 4) as u64);
    assert_eq!(json["usage"]["output_tokens"], 8);
}

#[test]
fn anthropic_stream_events() {
    let mock = mock();
    let body = r#"{"model":"claude-x","stream":true}"#;
    let res = once(
        mock.addr(),
        &post("/v1/messages", "x-mock-chunks: 2\r\n", body),
    );
    let events: Vec<(String, Value)> = res
        .text()
        .split_terminator("\n\n")
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[0].1["message"]["model"], "claude-x");
    assert_eq!(
        events[0].1["message"]["usage"]["input_tokens"],
        (body.len() / 4) as u64
    );
    assert_eq!(events[2].1["delta"]["type"], "text_delta");
    assert_eq!(events[5].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[5].1["usage"]["output_tokens"], 2);
}

#[test]
fn injected_status_with_retry_after() {
    let mock = mock();
    let headers = "x-mock-status: 429\r\nx-mock-retry-after: 7\r\n";
    let res = once(mock.addr(), &post("/v1/chat/completions", headers, "{}"));
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("7"));
    let json = res.json();
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert!(json["error"]["message"].is_string());
    assert!(json["error"]["code"].is_null());
    assert_eq!(mock.stats().failures_injected, 1);
}

#[test]
fn fail_rate_one_always_fails() {
    let mock = start(MockConfig {
        fail_rate: 1.0,
        fail_status: 503,
        retry_after: Some(1),
        ..MockConfig::default()
    });
    let mut client = Client::connect(mock.addr());
    for _ in 0..3 {
        let res = client.request(&post("/v1/chat/completions", "", r#"{"stream":true}"#));
        assert_eq!(res.status, 503);
        assert_eq!(res.header("retry-after"), Some("1"));
        assert_eq!(res.json()["error"]["type"], "server_error");
    }
    // A request can turn the failures off.
    let res = client.request(&post(
        "/v1/chat/completions",
        "x-mock-fail-rate: 0\r\n",
        "{}",
    ));
    assert_eq!(res.status, 200);
    let stats = mock.stats();
    assert_eq!((stats.failures_injected, stats.streams_started), (3, 0));
}

#[test]
fn disconnect_after_n_chunks() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let headers = "x-mock-disconnect-after: 3\r\n";
    client.send(&post("/v1/chat/completions", headers, r#"{"stream":true}"#));
    assert_eq!(client.head().0, 200);
    let mut content = 0;
    let mut saw_end = false;
    while let Some(line) = client.line() {
        if line.contains("\"content\":\"tok") {
            content += 1;
        }
        saw_end |= line == "0" || line.contains("[DONE]");
    }
    assert_eq!(content, 3);
    assert!(!saw_end, "stream must end abruptly");

    // Non-streaming: closed without an answer.
    let mut client = Client::connect(mock.addr());
    client.send(&post(
        "/v1/chat/completions",
        "x-mock-disconnect-after: 0\r\n",
        "{}",
    ));
    assert!(client.at_eof());
    let stats = mock.stats();
    assert_eq!((stats.failures_injected, stats.streams_completed), (2, 0));
}

#[test]
fn stalled_request_cancelled_when_client_leaves() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    client.send(&post("/v1/chat/completions", "x-mock-stall: 1\r\n", "{}"));
    let stats = wait_for(&mock, Duration::from_secs(2), |s| s.stalls == 1);
    assert_eq!((stats.stalls, stats.streams_cancelled), (1, 0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(mock.stats().streams_cancelled, 0, "nothing cancelled yet");
    let closed = Instant::now();
    drop(client);
    let stats = wait_for(&mock, Duration::from_secs(1), |s| s.streams_cancelled == 1);
    assert_eq!(stats.streams_cancelled, 1);
    assert!(closed.elapsed() < Duration::from_secs(1));
}

#[test]
fn delayed_answer_cancelled_when_client_leaves() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    client.send(&post(
        "/v1/chat/completions",
        "x-mock-latency-ms: 5000\r\n",
        "{}",
    ));
    wait_for(&mock, Duration::from_secs(2), |s| s.requests == 1);
    drop(client);
    let stats = wait_for(&mock, Duration::from_secs(1), |s| s.streams_cancelled == 1);
    assert_eq!((stats.streams_cancelled, stats.responses_completed), (1, 0));
}

#[test]
fn client_closing_mid_stream_cancels_it() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let headers = "x-mock-chunks: 100\r\nx-mock-chunk-delay-ms: 20\r\n";
    client.send(&post("/v1/chat/completions", headers, r#"{"stream":true}"#));
    client.head();
    client.chunk().unwrap();
    client.chunk().unwrap();
    client.stream.shutdown(Shutdown::Both).unwrap();
    drop(client);
    let stats = wait_for(&mock, Duration::from_secs(1), |s| s.streams_cancelled == 1);
    assert_eq!(
        (
            stats.streams_started,
            stats.streams_completed,
            stats.streams_cancelled
        ),
        (1, 0, 1)
    );
}

#[test]
fn keep_alive_serves_requests_in_turn() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let first = client.request(&post("/v1/chat/completions", "", r#"{"model":"a"}"#));
    let second = client.request(&post("/v1/messages", "", r#"{"model":"b"}"#));
    let stream = client.request(&post("/v1/chat/completions", "", r#"{"stream":true}"#));
    let third = client.request(&get("/v1/models"));
    assert_eq!(first.json()["model"], "a");
    assert_eq!(second.json()["model"], "b");
    assert!(stream.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(third.status, 200);
    assert_eq!(mock.stats().connections, 1);
}

#[test]
fn pipelined_requests_answered_in_order() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let batch = [
        post("/v1/chat/completions", "", r#"{"model":"one"}"#),
        post(
            "/v1/chat/completions",
            "",
            r#"{"model":"two","stream":true}"#,
        ),
        post("/v1/messages", "", r#"{"model":"three"}"#),
    ]
    .concat();
    client.send(&batch);
    assert_eq!(client.response().json()["model"], "one");
    assert!(client.response().text().contains("\"model\":\"two\""));
    assert_eq!(client.response().json()["model"], "three");
}

#[test]
fn pipelined_request_kept_during_a_delayed_stream() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let headers = "x-mock-chunks: 3\r\nx-mock-chunk-delay-ms: 30\r\n";
    client.send(&post("/v1/chat/completions", headers, r#"{"stream":true}"#));
    client.head();
    client.chunk().unwrap();
    // Sent while the mock is watching the socket between chunks.
    client.send(&post("/v1/chat/completions", "", r#"{"model":"next"}"#));
    while client.chunk().is_some() {}
    assert_eq!(client.response().json()["model"], "next");
    let stats = mock.stats();
    assert_eq!((stats.streams_completed, stats.streams_cancelled), (1, 0));
}

#[test]
fn chunked_request_body() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let raw =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n\r\n\
               9\r\n{\"model\":\r\n8\r\n\"chunky\"\r\n1\r\n}\r\n0\r\n\r\n";
    let res = client.request(raw);
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["model"], "chunky");
    assert_eq!(mock.last_request().unwrap().body, r#"{"model":"chunky"}"#);
    // The connection is still usable after a chunked body.
    assert_eq!(client.request(&get("/v1/models")).status, 200);
}

#[test]
fn expect_continue_is_answered() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let body = r#"{"model":"later"}"#;
    client.send(&format!(
        "POST /v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    assert_eq!(client.line().unwrap(), "HTTP/1.1 100 Continue");
    assert_eq!(client.line().unwrap(), "");
    client.send(body);
    assert_eq!(client.response().json()["model"], "later");
}

#[test]
fn unknown_path_and_bad_json() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    let res = client.request(&post("/v2/nothing", "", "{}"));
    assert_eq!(res.status, 404);
    assert!(res.json()["error"]["message"].is_string());
    let res = client.request(&post("/v1/chat/completions", "", r#"{"model": "#));
    assert_eq!(res.status, 400);
    let json = res.json();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert!(json["error"]["code"].is_null());
    let res = client.request(&post("/v1/chat/completions", "x-mock-chunkz: 3\r\n", "{}"));
    assert_eq!(res.status, 400, "unknown x-mock header");
    // Still the same connection: client errors keep it alive.
    assert_eq!(client.request(&get("/v1/models")).status, 200);
}

#[test]
fn malformed_head_gets_400_and_close() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    client.send("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let res = client.response();
    assert_eq!(res.status, 400);
    assert_eq!(res.header("connection"), Some("close"));
    assert!(client.at_eof());
}

#[test]
fn stats_endpoint_and_reset() {
    let mock = mock();
    let mut client = Client::connect(mock.addr());
    client.request(&post("/v1/chat/completions", "", "{}"));
    let stats: MockStats =
        serde_json::from_slice(&client.request(&get("/mock/stats")).body).unwrap();
    assert_eq!((stats.requests, stats.responses_completed), (1, 1));
    let res = client.request(&post("/mock/reset", "", ""));
    assert_eq!(res.status, 200);
    let stats: MockStats =
        serde_json::from_slice(&client.request(&get("/mock/stats")).body).unwrap();
    assert_eq!(stats, MockStats::default());
}

#[test]
fn shutdown_closes_stalled_connections() {
    let mock = start(MockConfig {
        workers: 2,
        ..MockConfig::default()
    });
    let mut client = Client::connect(mock.addr());
    client.send(&post("/v1/chat/completions", "x-mock-stall: 1\r\n", "{}"));
    wait_for(&mock, Duration::from_secs(2), |s| s.stalls == 1);
    let started = Instant::now();
    mock.shutdown();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(client.at_eof());
}
