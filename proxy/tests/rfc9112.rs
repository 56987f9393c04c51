//! RFC 9112 on the client listener, end to end: raw bytes from a plain TCP client to the real
//! `sluice` binary (the mock provider behind it), under io_uring and epoll. The rules
//! themselves are proven one by one in `core/tests/rfc9112.rs`; this checks that the binary
//! answers them with the right status, an OpenAI-style JSON error, and a closed connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

both_drivers!(
    host_rules,
    request_line_and_field_rules,
    chunked_body_rules,
    a_huge_model_name_is_not_echoed,
    a_huge_invalid_field_is_not_echoed,
);

/// Sends `raw` on a new connection; asserts `status`, the error `code`, and that the server
/// closed the connection after answering.
fn refused(gw: &Gateway, raw: &[u8], status: u16, code: &str) {
    let shown = String::from_utf8_lossy(&raw[..raw.len().min(120)]).into_owned();
    let mut c = gw.connect();
    c.send_raw(raw);
    let r = c.read_response();
    assert_eq!(r.status, status, "{shown:?}: {}", r.text());
    assert_eq!(r.error_code(), code, "{shown:?}");
    assert!(r.closed, "{shown:?}: no `connection: close`");
    assert!(
        c.is_closed(Duration::from_secs(2)),
        "{shown:?}: connection left open"
    );
}

fn host_rules(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request with no Host, two, or an invalid one.
    refused(
        &gw,
        b"GET /healthz HTTP/1.1\r\n\r\n",
        400,
        "invalid_request",
    );
    refused(
        &gw,
        b"GET /healthz HTTP/1.1\r\nhost: a\r\nhost: a\r\n\r\n",
        400,
        "bad_framing",
    );
    refused(
        &gw,
        b"GET /healthz HTTP/1.1\r\nhost: user@a.example\r\n\r\n",
        400,
        "invalid_request",
    );
    refused(
        &gw,
        b"GET /healthz HTTP/1.1\r\nhost: a b\r\n\r\n",
        400,
        "invalid_request",
    );
    // HTTP/1.0 without Host is fine; the connection closes since 1.0 did not ask to keep it.
    let mut c = gw.connect();
    c.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.is_closed(Duration::from_secs(2)));
    // Absolute-form is accepted (RFC 9112 §3.2.2), on a kept-alive connection, and routes by
    // its path; the chat request reaches the upstream.
    let mut c = gw.connect();
    c.send_raw(b"GET http://gw.example:8080/healthz HTTP/1.1\r\nhost: other\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.closed);
    let r = c.post(
        "http://gw.example/v1/chat/completions",
        &chat("mock-fast", false),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.stats().requests, 1);
}

fn request_line_and_field_rules(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    for (raw, code) in [
        // A major version other than 1 (the HTTP/2 preface, too).
        (
            &b"GET /healthz HTTP/2.0\r\nhost: t\r\n\r\n"[..],
            "invalid_request",
        ),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "invalid_request"),
        // Two spaces, a method that is not a token.
        (b"GET  /healthz HTTP/1.1\r\nhost: t\r\n\r\n", "bad_framing"),
        (b"G(T /healthz HTTP/1.1\r\nhost: t\r\n\r\n", "bad_framing"),
        // Field names: not a token, white space before the colon.
        (
            b"GET /healthz HTTP/1.1\r\nhost: t\r\nbad name: x\r\n\r\n",
            "bad_framing",
        ),
        (b"GET /healthz HTTP/1.1\r\nhost : t\r\n\r\n", "bad_framing"),
        // NUL and other controls in a value.
        (
            b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-a: a\x00b\r\n\r\n",
            "bad_framing",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-a: a\x01b\r\n\r\n",
            "bad_framing",
        ),
        // White space before the first field.
        (b"GET /healthz HTTP/1.1\r\n host: t\r\n\r\n", "bad_framing"),
        // authority-form without CONNECT, asterisk-form without OPTIONS.
        (
            b"GET gw.example:443 HTTP/1.1\r\nhost: t\r\n\r\n",
            "invalid_request",
        ),
        (b"GET * HTTP/1.1\r\nhost: t\r\n\r\n", "invalid_request"),
    ] {
        refused(&gw, raw, 400, code);
    }
    refused(
        &gw,
        b"CONNECT gw.example:443 HTTP/1.1\r\nhost: gw.example:443\r\n\r\n",
        501,
        "not_implemented",
    );
    assert_eq!(mock.stats().requests, 0, "nothing reached the upstream");
}

fn chunked_body_rules(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n";
    // A chunk extension without a name; one over the bound.
    refused(
        &gw,
        format!("{head}2;=x\r\n{{}}\r\n0\r\n\r\n").as_bytes(),
        400,
        "bad_framing",
    );
    refused(
        &gw,
        format!("{head}2;{}\r\n{{}}\r\n0\r\n\r\n", "e".repeat(5000)).as_bytes(),
        400,
        "bad_framing",
    );
    // A trailer section over the bound, and a malformed trailer field.
    let trailers = "x-trailer: 0123456789abcdef0123456789abcdef\r\n".repeat(300);
    refused(
        &gw,
        format!("{head}2\r\n{{}}\r\n0\r\n{trailers}\r\n").as_bytes(),
        400,
        "bad_framing",
    );
    refused(
        &gw,
        format!("{head}2\r\n{{}}\r\n0\r\nx-t : 1\r\n\r\n").as_bytes(),
        400,
        "bad_framing",
    );
    // chunked that is not the final coding; any Transfer-Encoding in HTTP/1.0.
    refused(
        &gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        400,
        "bad_framing",
    );
    refused(
        &gw,
        b"POST /v1/chat/completions HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_framing",
    );
    // Valid extensions and trailers are read and ignored.
    let body = chat("mock-fast", false);
    let mut c = gw.connect();
    c.send_raw(
        format!(
            "{head}{:x} ; a=1 ;b=\"q \\\" x\"\r\n{body}\r\n0;last\r\nx-t: 1\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.closed);
    assert_eq!(mock.stats().requests, 1);
}

/// A 1 MiB model name to an unknown model: a 404 whose body is under 1 KiB.
fn a_huge_model_name_is_not_echoed(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "max_body_bytes = 4194304", ""), driver);
    let model = "m".repeat(1 << 20);
    let mut c = gw.connect();
    let r = c.post("/v1/chat/completions", &chat(&model, false), "");
    assert_eq!(r.status, 404, "{}", &r.text()[..r.text().len().min(300)]);
    assert_eq!(r.error_code(), "model_not_found");
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    assert_eq!(c.get("/healthz").status, 200, "the connection survived");
}

/// A 1 MiB string where a boolean belongs: a 400 whose body is under 1 KiB.
fn a_huge_invalid_field_is_not_echoed(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "max_body_bytes = 4194304", ""), driver);
    let mut c = gw.connect();
    let body = format!(
        r#"{{"model":"mock-fast","stream":"{}","messages":[]}}"#,
        "s".repeat(1 << 20)
    );
    let r = c.post("/v1/chat/completions", &body, "");
    assert_eq!(r.status, 400, "{}", &r.text()[..r.text().len().min(300)]);
    assert_eq!(r.error_code(), "invalid_request");
    assert!(r.body.len() < 1024, "{} bytes", r.body.len());
    assert_eq!(c.get("/healthz").status, 200, "the connection survived");
    assert_eq!(mock.stats().requests, 0);
}
