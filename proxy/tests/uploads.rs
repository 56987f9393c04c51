//! Streamed multipart uploads through the real binary: a form is read only up to its `model`
//! field, routed, and the rest of the client's body is copied to the upstream as it arrives
//! (`content-length` or chunked), within `max_body_bytes`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;
use sluice_loadtest::mock::fnv1a;

const BOUNDARY: &str = "sluiceUploadBoundary7";
const MIB: usize = 1024 * 1024;

fn upload_config(mock: std::net::SocketAddr, max_body_bytes: usize) -> String {
    let mut cfg = config(
        mock,
        &format!("max_body_bytes = {max_body_bytes}\nbody_read_timeout_ms = 60000"),
        "",
    );
    cfg.push_str("\n[[models]]\nname = \"mock-transcribe\"\ndeployments = [{ provider = \"mock\", model = \"gpt-4o-transcribe\" }]\n");
    cfg
}

/// `len` bytes of "audio": every byte value, CRLFs included, never the boundary.
fn audio(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(7) % 251) as u8).collect()
}

/// A transcription form: `model` (when given) before or after the file part.
fn form(model: Option<&str>, model_first: bool, file: &[u8]) -> Vec<u8> {
    let field = |name: &str, value: &str| {
        format!(
            "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .into_bytes()
    };
    let mut b = Vec::with_capacity(file.len() + 512);
    if let (Some(m), true) = (model, model_first) {
        b.extend_from_slice(&field("model", m));
    }
    b.extend_from_slice(format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\ncontent-type: audio/wav\r\n\r\n").as_bytes());
    b.extend_from_slice(file);
    b.extend_from_slice(b"\r\n");
    if let (Some(m), false) = (model, model_first) {
        b.extend_from_slice(&field("model", m));
    }
    b.extend_from_slice(&field("language", "en"));
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn head(framing: &str) -> Vec<u8> {
    format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: t\r\ncontent-type: {}\r\n{framing}\r\n",
        content_type()
    )
    .into_bytes()
}

fn with_length(body: &[u8]) -> Vec<u8> {
    let mut req = head(&format!("content-length: {}\r\n", body.len()));
    req.extend_from_slice(body);
    req
}

/// `body` chunked in pieces of `piece` bytes.
fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut req = head("transfer-encoding: chunked\r\n");
    for c in body.chunks(piece) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// The gateway's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss(gw: &Gateway) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Sends `req` from another thread (the gateway reads it while the upstream takes it) and
/// reads the answer.
fn exchange(c: &mut Client, req: Vec<u8>) -> Response {
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The gateway may stop reading (a 413) and close: that is the test's to judge.
        let _ = w.write_all(&req);
    });
    let r = c.read_response();
    writer.join().unwrap();
    r
}

fn large_uploads_stream_through(driver: &str) {
    let mock = mock();
    // The limit is above the upload: nothing is refused, and nothing is held whole either.
    let gw = Gateway::start(&upload_config(mock.addr(), 16 * MIB), driver);
    let file = audio(12 * MIB);
    let body = form(Some("mock-transcribe"), true, &file);
    let upstream = form(Some("gpt-4o-transcribe"), true, &file);
    let mut c = gw.connect();
    // Warm the gateway up with a small form so its steady state is in the baseline.
    let r = exchange(
        &mut c,
        with_length(&form(Some("mock-transcribe"), true, b"RIFF")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let before = peak_rss(&gw);

    let r = exchange(&mut c, with_length(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["text"].as_str().is_some());
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/audio/transcriptions");
    // Every byte arrived, in order, with the deployment's model in place of the client's.
    assert_eq!(seen.body_len, upstream.len());
    assert_eq!(seen.body_fnv, fnv1a(&upstream));
    let len = upstream.len().to_string();
    assert_eq!(seen.header("content-length"), Some(len.as_str()));
    // The gateway never held the body: held whole (and spliced), it would have added more
    // than the body's size to its peak.
    let grown = peak_rss(&gw).saturating_sub(before);
    assert!(grown < 6 * MIB, "peak RSS grew by {grown} bytes");

    // Chunked the same way, on the same connection (kept alive after a streamed body).
    let r = exchange(&mut c, chunked(&body, MIB / 2 + 3));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = mock.last_request().unwrap();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.body_len, upstream.len());
    assert_eq!(seen.body_fnv, fnv1a(&upstream));

    // Nor the chunked one.
    let grown = peak_rss(&gw).saturating_sub(before);
    assert!(grown < 6 * MIB, "peak RSS grew by {grown} bytes");

    // The connection still carries requests.
    let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
    assert_eq!(r.status, 200);
    let log = gw.access_lines(4);
    assert_eq!(log[1]["deployment"], "mock/gpt-4o-transcribe");
    assert_eq!(log[1]["status"], 200);
    // The access line counts the whole body, the streamed part included.
    assert_eq!(log[1]["bytes_in"], body.len() as u64);
    assert!(log[2]["bytes_in"].as_u64().unwrap() >= body.len() as u64);
}

both_drivers!(large_uploads_stream_through);

fn model_after_the_file_and_bad_forms(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&upload_config(mock.addr(), MIB), driver);
    let file = audio(300 * 1024);
    let mut c = gw.connect();
    // `model` after a file part: the file is held (within the limit) until the model is read.
    let r = exchange(
        &mut c,
        with_length(&form(Some("mock-transcribe"), false, &file)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let upstream = form(Some("gpt-4o-transcribe"), false, &file);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        (seen.body_len, seen.body_fnv),
        (upstream.len(), fnv1a(&upstream))
    );
    // Chunked, one small chunk at a time.
    let r = exchange(
        &mut c,
        chunked(&form(Some("mock-transcribe"), false, &file), 1000),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.last_request().unwrap().body_fnv, fnv1a(&upstream));

    // No `model` at all: the body is read to its end, and the answer is a 400 naming it
    // (the connection kept).
    let r = exchange(&mut c, with_length(&form(None, true, &file)));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    let r = exchange(&mut c, chunked(&form(None, true, &file), 4096));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");

    // An unknown model found before the file: refused (404) without reading the file, and
    // the connection, whose framing is now unknown, is closed.
    let mut c = gw.connect();
    let r = exchange(&mut c, with_length(&form(Some("nope"), true, &file)));
    assert_eq!(r.status, 404);
    assert!(c.is_closed(Duration::from_secs(5)));
}

both_drivers!(model_after_the_file_and_bad_forms);

fn over_the_limit_is_413(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&upload_config(mock.addr(), 256 * 1024), driver);
    // Framed by its length: refused from the head, before a byte is read or sent upstream.
    let mut c = gw.connect();
    let body = form(Some("mock-transcribe"), true, &audio(300 * 1024));
    let r = exchange(&mut c, with_length(&body));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // Chunked with the model first: streamed until the running total passes the limit, then
    // the upstream exchange is dropped and the client answered 413.
    let mut c = gw.connect();
    let r = exchange(&mut c, chunked(&body, 16 * 1024));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // The upstream never saw a whole request.
    assert!(mock.last_request().is_none());
    // A form within the limit still goes through.
    let mut c = gw.connect();
    let small = form(Some("mock-transcribe"), true, &audio(100 * 1024));
    let r = exchange(&mut c, chunked(&small, 16 * 1024));
    assert_eq!(r.status, 200, "{}", r.text());
}

both_drivers!(over_the_limit_is_413);

/// The upstream's 413 for [`early_answering_upstream`], so a test can tell it from the
/// gateway's own errors.
const EARLY_413: &str = r#"{"error":{"message":"the upstream takes no file this large","type":"invalid_request_error"}}"#;

/// An upstream that answers before the body ends: it reads a transcription request's head,
/// answers 413 and closes with the body unread, so the gateway's next writes of the body fail
/// (the peer is gone: a reset). A test fixture for that upstream behaviour, which the bundled
/// mock does not have (it drains a body it refused). Serves until it has answered once, for
/// at most 30 s; gives back the head it answered.
fn early_answering_upstream() -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no transcription request came");
            let mut s = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("accept: {e}"),
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            let end = loop {
                if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i);
                }
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break None,
                }
            };
            let Some(end) = end else { continue };
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            if !head.starts_with("POST /v1/audio/transcriptions ") {
                continue;
            }
            // The whole answer in one write, sent at once (no Nagle): `write!` on the socket
            // wrote it in four pieces, and a piece still queued when the socket closes below
            // is discarded with the reset (the body is unread). Under load (CI, once) the
            // gateway answered 502 here: most likely it got such a cut head.
            let answer = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{EARLY_413}",
                EARLY_413.len()
            );
            s.set_nodelay(true).unwrap();
            s.write_all(answer.as_bytes()).unwrap();
            // Dropped here with the body unread.
            return head;
        }
    });
    (addr, server)
}

fn an_upstream_that_refuses_the_body_is_heard(driver: &str) {
    // An upstream that answers and closes mid-body: the gateway's copy of the body fails,
    // and then the answer the upstream gave, not a gateway error, reaches the client.
    let (upstream, answered) = early_answering_upstream();
    let gw = Gateway::start(&upload_config(upstream, 32 * MIB), driver);
    let body = form(Some("mock-transcribe"), true, &audio(17 * MIB));
    let mut c = gw.connect();
    let r = exchange(&mut c, with_length(&body));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.text(), EARLY_413);
    assert_eq!(
        r.header("x-sluice-deployment"),
        Some("mock/gpt-4o-transcribe")
    );
    let head = answered.join().unwrap();
    assert!(head.contains("content-length: "), "{head}");
    let log = gw.access_lines(1);
    assert_eq!(log[0]["status"], 413);

    // The mock answers 413 from the head too, but drains the body before it closes: the
    // gateway sends it all and then reads the answer.
    let mock = mock();
    let gw = Gateway::start(&upload_config(mock.addr(), 32 * MIB), driver);
    let mut c = gw.connect();
    let r = exchange(&mut c, with_length(&body));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        r.header("x-sluice-deployment"),
        Some("mock/gpt-4o-transcribe")
    );
}

both_drivers!(an_upstream_that_refuses_the_body_is_heard);

fn attempts(line: &serde_json::Value) -> Vec<serde_json::Value> {
    let list = &line["attempts"];
    list.as_array().unwrap().clone()
}

fn a_streamed_upload_is_retried_only_before_its_body_went_out(driver: &str) {
    let mock = mock();
    let mut cfg = upload_config(mock.addr(), 16 * MIB);
    cfg.push_str(
        "\n[[providers]]\nname = \"dead\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\n\
         [[models]]\nname = \"two\"\nstrategy = \"priority\"\nretry = { base_backoff_ms = 0, max_backoff_ms = 0 }\n\
         deployments = [{ provider = \"mock\", model = \"first\" }, { provider = \"mock\", model = \"second\" }]\n\n\
         [[models]]\nname = \"dead-first\"\nstrategy = \"priority\"\nretry = { base_backoff_ms = 0, max_backoff_ms = 0 }\n\
         deployments = [{ provider = \"dead\", model = \"x\" }, { provider = \"mock\", model = \"alive\" }]\n",
    );
    let gw = Gateway::start(&cfg, driver);
    let file = audio(2 * MIB);
    let failing = |body: &[u8]| {
        let mut req = head(&format!(
            "x-mock-status: 500\r\ncontent-length: {}\r\n",
            body.len()
        ));
        req.extend_from_slice(body);
        req
    };
    // A small form, read whole, is retried on the other deployment as any request is.
    let mut c = gw.connect();
    let r = exchange(&mut c, failing(&form(Some("two"), true, b"RIFF")));
    assert_eq!(r.status, 500);
    assert!(attempts(&gw.access_lines(1)[0]).len() >= 2);
    // A streamed one went out whole to the first deployment and cannot be sent again: its
    // answer is the answer, after one attempt.
    let mut c = gw.connect();
    let r = exchange(&mut c, failing(&form(Some("two"), true, &file)));
    assert_eq!(r.status, 500);
    let log = gw.access_lines(2);
    let tried = attempts(&log[1]);
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0]["deployment"], "mock/first");
    // A deployment that cannot be reached took nothing of the body: the next one gets it.
    let mut c = gw.connect();
    let body = form(Some("dead-first"), true, &file);
    let r = exchange(&mut c, with_length(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let log = gw.access_lines(3);
    let tried = attempts(&log[2]);
    assert_eq!(tried.len(), 2, "{tried:?}");
    assert_eq!(log[2]["deployment"], "mock/alive");
    let upstream = form(Some("alive"), true, &file);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        (seen.body_len, seen.body_fnv),
        (upstream.len(), fnv1a(&upstream))
    );
}

both_drivers!(a_streamed_upload_is_retried_only_before_its_body_went_out);
