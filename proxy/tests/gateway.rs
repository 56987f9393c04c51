//! End-to-end tests of the data plane: the real `sluice` binary on 127.0.0.1, the mock
//! provider behind it, a plain client in front. Each runs under io_uring and epoll.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;

both_drivers!(
    non_streaming_round_trip,
    streaming_strips_injected_usage,
    streaming_keeps_usage_the_client_asked_for,
    stream_events_larger_than_a_read_arrive_whole,
    chunks_reach_the_client_before_the_upstream_finishes,
    keep_alive_reuses_both_sides,
    idle_connections_park,
    pipelined_requests_answer_in_order,
    pipelined_request_during_a_stream,
    chunked_request_body_and_expect_continue,
    errors_for_paths_methods_models_and_json,
    limits_and_smuggling_are_refused,
    client_disconnect_cancels_the_upstream,
    upstream_down_is_502_and_slow_is_504,
    stream_broken_midway_ends_with_sse_error,
    sigterm_drains_an_inflight_stream,
    every_access_line_is_written_whole_by_the_stop,
    models_health_and_readiness,
    passthrough_of_upstream_errors_and_other_endpoints,
);

fn non_streaming_round_trip(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "authorization: Bearer sk-client-secret\r\nx-request-id: my-req-1\r\nx-custom: kept\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["model"], "mock-model",
        "the upstream saw the deployment's model name"
    );
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(r.header("x-request-id"), Some("my-req-1"));
    assert_eq!(r.header("x-sluice-deployment"), Some("mock/mock-model"));
    assert!(r.header("content-length").is_some());

    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str()),
        "the provider key replaces the client's"
    );
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-request-id"), Some("my-req-1"));
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["model"], "mock-model");
    assert_eq!(body["messages"][0]["content"], "Say hello");

    let log = gw.access_lines(1);
    let line = &log[0];
    assert_eq!(line["request_id"], "my-req-1");
    assert_eq!(line["model"], "mock-fast");
    assert_eq!(line["deployment"], "mock/mock-model");
    assert_eq!(line["status"], 200);
    assert_eq!(line["output_tokens"], 8);
    assert!(line["input_tokens"].as_u64().unwrap() > 0);
    let all = gw.lines().join("\n");
    assert!(
        !all.contains("sk-client-secret"),
        "client key leaked into logs"
    );
    assert!(!all.contains(UPSTREAM_KEY), "provider key leaked into logs");
}

fn streaming_strips_injected_usage(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-stream", true), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !r.text().contains("usage"),
        "the client did not ask for usage: {}",
        r.text()
    );
    // role chunk + 8 content chunks + finish chunk + [DONE]
    assert_eq!(data.len(), 11, "{data:?}");
    for d in &data[..data.len() - 1] {
        let _: serde_json::Value = serde_json::from_str(d).expect("every event is valid JSON");
    }
    // The upstream was asked for usage, and the gateway recorded it.
    let seen: serde_json::Value = serde_json::from_str(&mock.last_request().unwrap().body).unwrap();
    assert_eq!(seen["stream_options"]["include_usage"], true);
    let log = gw.access_lines(1);
    assert_eq!(log[0]["output_tokens"], 8);
    assert_eq!(log[0]["tokens_estimated"], false);
    assert_eq!(log[0]["stream"], true);
}

/// A stream waits for its upstream's next event without a read buffer and takes a small one
/// from the worker's spares per read (`request::relay`): events several times that size are
/// read in many pieces and must reach the client whole, in order, and be counted.
fn stream_events_larger_than_a_read_arrive_whole(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    for round in 0..2 {
        let r = c.post(
            "/v1/chat/completions",
            &chat("mock-stream", true),
            "x-mock-chunks: 6\r\nx-mock-chunk-size: 10000\r\n",
        );
        assert_eq!(r.status, 200, "round {round}");
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let mut text = 0;
        for d in &data[..data.len() - 1] {
            let v: serde_json::Value =
                serde_json::from_str(d).expect("every event arrives whole, as valid JSON");
            text += v["choices"][0]["delta"]["content"]
                .as_str()
                .map_or(0, str::len);
        }
        assert_eq!(text, 6 * 10_000, "round {round}: all of the text");
    }
    let log = gw.access_lines(2);
    for line in &log {
        assert_eq!(line["stream"], true);
        assert_eq!(line["output_tokens"], 6, "{line}");
        assert_eq!(line["tokens_estimated"], false);
    }
}

fn streaming_keeps_usage_the_client_asked_for(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let body = r#"{"model":"mock-stream","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let r = gw.connect().post("/v1/chat/completions", body, "");
    let data = r.sse_data();
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 8);
}

fn chunks_reach_the_client_before_the_upstream_finishes(driver: &str) {
    let mock = mock_with(MockConfig {
        chunks: 5,
        chunk_delay_ms: 150,
        ..MockConfig::default()
    });
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-stream", true), "");
    assert_eq!(r.status, 200);
    let first_content = r
        .arrivals
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("\"content\":\"tok"))
        .map(|(t, _)| *t)
        .expect("a content chunk");
    let last = r.arrivals.last().unwrap().0;
    // The stream takes >= 4 x 150 ms upstream; the first content chunk must not wait for it.
    assert!(
        last >= Duration::from_millis(600),
        "stream too fast: {last:?}"
    );
    assert!(
        first_content + Duration::from_millis(400) < last,
        "first content at {first_content:?}, end at {last:?}: the stream was buffered"
    );
    assert!(
        r.arrivals.len() >= 5,
        "chunks were merged: {}",
        r.arrivals.len()
    );
}

fn keep_alive_reuses_both_sides(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    for _ in 0..5 {
        let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
        assert_eq!(r.status, 200);
        assert!(!r.closed);
        let r = c.post("/v1/chat/completions", &chat("mock-stream", true), "");
        assert_eq!(r.status, 200);
        assert!(!r.closed);
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 10);
    assert_eq!(stats.connections, 1, "the upstream connection was reused");
    let log = gw.access_lines(10);
    assert_eq!(log[0]["upstream_reused"], false);
    assert_eq!(log[9]["upstream_reused"], true);
}

/// A keep-alive connection quiet for longer than the park delay (100 ms) gives its read and
/// buffer back and waits for readability alone: the next request on it, whole or split across
/// writes, is still answered; a parked connection still ends at the keep-alive timeout.
fn idle_connections_park(driver: &str) {
    let mock = mock();
    // The keep-alive limit leaves room for the 50 requests after the pause on a loaded
    // machine (each connection must still be open when its turn comes).
    let gw = Gateway::start(
        &config(mock.addr(), "keepalive_idle_timeout_ms = 4000", ""),
        driver,
    );
    let mut clients: Vec<Client> = (0..50).map(|_| gw.connect()).collect();
    for c in &mut clients {
        let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
        assert_eq!(r.status, 200);
    }
    std::thread::sleep(Duration::from_millis(400));
    for (i, c) in clients.iter_mut().enumerate() {
        let r = if i % 2 == 0 {
            c.post("/v1/chat/completions", &chat("mock-stream", true), "")
        } else {
            // The head first, the body after the connection woke up.
            let req = post_bytes("/v1/chat/completions", &chat("mock-fast", false), "");
            let (head, body) = req.split_at(req.find("\r\n\r\n").unwrap() + 4);
            c.send_raw(head.as_bytes());
            std::thread::sleep(Duration::from_millis(20));
            c.send_raw(body.as_bytes());
            c.read_response()
        };
        assert_eq!(r.status, 200, "request {i} after parking");
        assert!(!r.closed);
    }
    // Parked past the keep-alive timeout: closed by the gateway.
    assert!(clients[0].is_closed(Duration::from_secs(15)));
    assert_eq!(mock.stats().requests, 100);
}

fn pipelined_requests_answer_in_order(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let mut batch = post_bytes(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "x-request-id: one\r\n",
    );
    batch.push_str("GET /healthz HTTP/1.1\r\nhost: t\r\nx-request-id: two\r\n\r\n");
    batch.push_str(&post_bytes(
        "/v1/chat/completions",
        &chat("mock-stream", true),
        "x-request-id: three\r\n",
    ));
    c.send_raw(batch.as_bytes());
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let r = c.read_response();
            assert_eq!(r.status, 200);
            r.header("x-request-id").unwrap().to_string()
        })
        .collect();
    assert_eq!(ids, ["one", "two", "three"]);
}

/// A request pipelined while a stream is under way (after the client watch is posted, 20 ms
/// in): the watch sees bytes, not a close, so the stream runs to its end and the pipelined
/// request, left in the socket, is answered after it.
fn pipelined_request_during_a_stream(driver: &str) {
    let mock = mock_with(MockConfig {
        chunks: 8,
        chunk_delay_ms: 25,
        ..MockConfig::default()
    });
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    c.send_raw(
        post_bytes(
            "/v1/chat/completions",
            &chat("mock-stream", true),
            "x-request-id: first\r\n",
        )
        .as_bytes(),
    );
    // Well past the watch's arming (20 ms, plus one deadline tick), mid-stream.
    std::thread::sleep(Duration::from_millis(120));
    c.send_raw(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-request-id: second\r\n\r\n");
    let first = c.read_response();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-request-id"), Some("first"));
    let events = first.sse_data();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert!(events.len() >= 8, "{events:?}");
    let second = c.read_response();
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-request-id"), Some("second"));
    assert_eq!(mock.stats().streams_cancelled, 0, "{:?}", mock.stats());
}

fn chunked_request_body_and_expect_continue(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let body = chat("mock-fast", false);
    let (a, b) = body.split_at(10);
    let mut c = gw.connect();
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_str(&mock.last_request().unwrap().body).unwrap();
    assert_eq!(seen["messages"][0]["content"], "Say hello");

    // Expect: 100-continue gets the interim answer before the body is sent.
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut c.stream, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send_raw(body.as_bytes());
    assert_eq!(c.read_response().status, 200);
}

fn errors_for_paths_methods_models_and_json(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.get("/v1/nothing");
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_url"));
    let r = c.get("/v1/chat/completions");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = c.post("/v1/chat/completions", &chat("no-such-model", false), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "model_not_found")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    let r = c.post("/v1/chat/completions", "{not json", "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_request")
    );
    let r = c.post("/v1/chat/completions", r#"{"messages":[]}"#, "");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    // The connection survived every one of those.
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(mock.stats().requests, 0, "nothing reached the upstream");
}

fn limits_and_smuggling_are_refused(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(
        &config(
            mock.addr(),
            "max_header_bytes = 2048\nmax_body_bytes = 4096\nheader_read_timeout_ms = 300",
            "",
        ),
        driver,
    );
    let check = |raw: String, status: u16, code: &str| {
        let mut c = gw.connect();
        c.send_raw(raw.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, status, "{raw:?}: {}", r.text());
        assert_eq!(r.error_code(), code, "{raw:?}");
        assert!(r.closed, "{raw:?}: connection must close");
        assert!(
            c.is_closed(Duration::from_secs(2)),
            "{raw:?}: connection left open"
        );
    };
    let big_header = format!("x-big: {}\r\n", "a".repeat(3000));
    check(
        post_bytes("/v1/chat/completions", "{}", &big_header),
        431,
        "headers_too_large",
    );
    check(
        format!("GET /{} HTTP/1.1\r\nhost: t\r\n\r\n", "a".repeat(3000)),
        414,
        "uri_too_long",
    );
    check(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n".into(),
        413,
        "payload_too_large",
    );
    check(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n1388\r\n{}\r\n0\r\n\r\n",
            "a".repeat(5000)
        ),
        413,
        "payload_too_large",
    );
    for smuggle in [
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-a: b\r\n folded\r\ncontent-length: 2\r\n\r\n{}",
    ] {
        check(smuggle.to_string(), 400, "bad_framing");
    }
    // A head that never completes: 408 after the header timeout.
    let mut c = gw.connect();
    let t0 = Instant::now();
    c.send_raw(b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n");
    let r = c.read_response();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (408, "request_timeout")
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.stats().requests, 0);
}

fn client_disconnect_cancels_the_upstream(driver: &str) {
    let mock = mock_with(MockConfig {
        chunks: 50,
        chunk_delay_ms: 100,
        ..MockConfig::default()
    });
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    c.send_raw(post_bytes("/v1/chat/completions", &chat("mock-stream", true), "").as_bytes());
    // Wait for the stream to start, then hang up.
    let mut first = [0u8; 64];
    std::io::Read::read(&mut c.stream, &mut first).unwrap();
    drop(c);
    assert!(
        eventually(Duration::from_secs(2), || mock.stats().streams_cancelled
            == 1),
        "upstream stream not cancelled: {:?}",
        mock.stats()
    );
    // Also while the upstream is silent (a stalled request).
    let mut c = gw.connect();
    c.send_raw(
        post_bytes(
            "/v1/chat/completions",
            &chat("mock-fast", false),
            "x-mock-stall: 1\r\n",
        )
        .as_bytes(),
    );
    assert!(eventually(Duration::from_secs(2), || mock.stats().stalls == 1));
    drop(c);
    assert!(
        eventually(Duration::from_secs(2), || mock.stats().streams_cancelled
            == 2),
        "stalled upstream request not cancelled: {:?}",
        mock.stats()
    );
    let log = gw.access_lines(2);
    assert!(log.iter().all(|l| l["client_cancelled"] == true), "{log:?}");
    assert!(
        log[0]["output_tokens"].as_u64().unwrap() >= 1,
        "delivered tokens estimated"
    );
    assert_eq!(log[0]["tokens_estimated"], true);
}

fn upstream_down_is_502_and_slow_is_504(driver: &str) {
    // A port nothing listens on.
    let (_held, dead) = refused_port();
    let gw = Gateway::start(&config(dead, "", ""), driver);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-fast", false), "");
    assert_eq!((r.status, r.error_code().as_str()), (502, "upstream_error"));

    let mock = mock();
    let gw = Gateway::start(
        &config(mock.addr(), "", "first_byte_timeout_ms = 300"),
        driver,
    );
    let t0 = Instant::now();
    let r = gw.connect().post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "x-mock-ttft-ms: 5000\r\n",
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    // Stalls between chunks hit the idle timeout: the stream ends with an error event.
    let gw = Gateway::start(&config(mock.addr(), "", "idle_timeout_ms = 300"), driver);
    let r = gw.connect().post(
        "/v1/chat/completions",
        &chat("mock-stream", true),
        "x-mock-chunk-delay-ms: 3000\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("event: error"), "{}", r.text());
    assert!(r.text().contains("upstream_timeout"));
}

fn stream_broken_midway_ends_with_sse_error(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-stream", true),
        "x-mock-disconnect-after: 2\r\n",
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\"content\":\"tok"), "{text}");
    assert!(text.contains("event: error\ndata: {\"error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!r.closed, "the chunked framing stayed intact");
    // And the connection still works.
    assert_eq!(c.get("/healthz").status, 200);
}

fn sigterm_drains_an_inflight_stream(driver: &str) {
    let mock = mock_with(MockConfig {
        chunks: 10,
        chunk_delay_ms: 100,
        ..MockConfig::default()
    });
    let mut gw = Gateway::start(&config(mock.addr(), "drain_timeout_ms = 10000", ""), driver);
    let mut c = gw.connect();
    c.send_raw(post_bytes("/v1/chat/completions", &chat("mock-stream", true), "").as_bytes());
    assert!(eventually(Duration::from_secs(2), || mock
        .stats()
        .streams_started
        == 1));
    gw.sigterm();
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(data.len(), 13, "the whole stream arrived");
    assert!(
        c.is_closed(Duration::from_secs(2)),
        "a draining gateway closes idle connections"
    );
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert_eq!(mock.stats().streams_completed, 1);
}

/// The worker gathers access lines and hands them to the log writer in batches: a line must
/// still reach the log soon when traffic stops, and a graceful stop must write every line
/// of every request whole.
fn every_access_line_is_written_whole_by_the_stop(driver: &str) {
    let mock = mock();
    let mut gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let id = |i: usize| format!("batch-req-{i}");
    let one = |c: &mut Client, i: usize| {
        let extra = format!("x-request-id: {}\r\n", id(i));
        let r = c.post("/v1/chat/completions", &chat("mock-fast", false), &extra);
        assert_eq!(r.status, 200);
    };
    // One request, then quiet: its line arrives without a stop (the worker's heartbeat).
    one(&mut c, 0);
    assert_eq!(
        gw.access_lines(1).len(),
        1,
        "a lone line never reached the log"
    );
    // Many, then a stop right away: every line is written, whole, once.
    let n = 400;
    for i in 1..=n {
        one(&mut c, i);
    }
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    let mut seen: Vec<String> = gw
        .lines()
        .iter()
        .filter(|l| l.contains("\"sluice::access\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..=n).map(id).collect();
    want.sort();
    assert_eq!(seen, want);
}

fn models_health_and_readiness(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.get("/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-fast", "mock-stream"]);
    assert_eq!(c.get("/healthz").json()["status"], "ok");
    assert_eq!(c.get("/readyz").status, 200);

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&config(dead, "", ""), driver);
    let r = gw.connect().get("/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["reason"], "no upstream reachable");
}

fn passthrough_of_upstream_errors_and_other_endpoints(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "x-mock-status: 429\r\nx-mock-retry-after: 7\r\n",
    );
    assert_eq!(r.status, 429, "the provider's own answer passes through");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(r.json()["error"].is_object());
    let r = c.post(
        "/v1/embeddings",
        r#"{"model":"mock-fast","input":["a","b"]}"#,
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = c.post(
        "/v1/completions",
        r#"{"model":"mock-fast","prompt":"x"}"#,
        "",
    );
    assert_eq!(r.status, 200);
    let r = c.post("/v1/responses", r#"{"model":"mock-fast","input":"x"}"#, "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.last_request().unwrap().path, "/v1/responses");
    let log = gw.access_lines(4);
    assert_eq!(log[0]["status"], 429);
    assert!(
        log[1]["input_tokens"].as_u64().unwrap() > 0,
        "embeddings usage read"
    );
    assert!(
        log[3]["output_tokens"].as_u64().is_some(),
        "responses usage read: {}",
        log[3]
    );
}
