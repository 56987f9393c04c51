//! Response compression end to end: the real `sluice` binary in front of the mock, a plain
//! client (and curl) asking with `Accept-Encoding`. Every compressed answer is decompressed
//! and compared byte for byte with the identity answer to the same request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::*;

both_drivers!(
    codings_follow_the_clients_qvalues,
    small_answers_errors_and_head_go_as_they_are,
    event_streams_are_never_compressed,
    answers_over_a_mebibyte_compress_on_the_pool,
    compression_can_be_turned_off,
    curl_compressed_gets_the_same_bytes,
);

/// An embeddings request with `n` inputs (about 95 bytes of answer each).
fn embeddings(n: usize) -> String {
    let inputs: Vec<String> = (0..n).map(|i| format!("\"text {i}\"")).collect();
    format!(r#"{{"model":"mock-fast","input":[{}]}}"#, inputs.join(","))
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(body).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// Asserts `r` is `identity` compressed with `coding` (or not compressed at all for `None`).
fn assert_coded(r: &Response, coding: Option<&str>, identity: &[u8], what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert_eq!(r.header("content-encoding"), coding, "{what}");
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(
        length,
        r.body.len(),
        "{what}: content-length is the coded length"
    );
    match coding {
        Some(c) => {
            assert_eq!(r.header("vary"), Some("accept-encoding"), "{what}");
            assert!(r.body.len() < identity.len() / 4, "{what}: it got smaller");
            assert_eq!(
                decode(c, &r.body),
                identity,
                "{what}: same bytes once decoded"
            );
        }
        None => assert_eq!(r.body, identity, "{what}"),
    }
}

fn codings_follow_the_clients_qvalues(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let body = embeddings(2000);
    let identity = c.post("/v1/embeddings", &body, "");
    assert_eq!(identity.status, 200, "{}", identity.text());
    assert!(identity.body.len() > 150_000, "{}", identity.body.len());
    assert_eq!(identity.header("content-encoding"), None);
    // Large enough to compress: caches are told the bytes depend on Accept-Encoding.
    assert_eq!(identity.header("vary"), Some("accept-encoding"));
    assert_eq!(identity.json()["data"][1999]["index"], 1999);
    for (accept, coding) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("zstd", Some("zstd")),
        ("gzip, deflate, br", Some("br")),
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("gzip;q=0.5, br;q=0.8, zstd;q=0.1", Some("br")),
        ("zstd;q=0, br;q=0, gzip;q=0.001", Some("gzip")),
        ("zstd;q=0, *", Some("br")),
        ("*;q=0.2, gzip;q=0.3", Some("gzip")),
        ("identity, gzip;q=0.5", None),
        ("identity;q=0.5, gzip", Some("gzip")),
        ("deflate", None),
        ("", None),
        ("*;q=0", None),
        ("gzip;q=2", None),
        ("x-gzip", Some("gzip")),
    ] {
        let r = c.post(
            "/v1/embeddings",
            &body,
            &format!("accept-encoding: {accept}\r\n"),
        );
        assert_coded(&r, coding, &identity.body, accept);
        assert!(!r.closed, "{accept}: the connection stays open");
    }
    // Two field lines are one list (RFC 9110 §5.3).
    let r = c.post(
        "/v1/embeddings",
        &body,
        "accept-encoding: zstd;q=0.1\r\naccept-encoding: gzip\r\n",
    );
    assert_coded(&r, Some("gzip"), &identity.body, "two lines");
    // An HTTP/1.0 client: no chunked, the body ends with the connection.
    let mut old = gw.connect();
    old.send_raw(
        format!(
            "POST /v1/embeddings HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\naccept-encoding: gzip\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = old.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.closed);
    assert_eq!(decode("gzip", &r.body), identity.body);
    // The upstream is always asked for identity.
    assert_eq!(mock.last_request().unwrap().header("accept-encoding"), None);
    // A large chat answer too (about 64 KiB of text).
    let chat_body = chat("mock-fast", false);
    let sized = "x-mock-chunks: 64\r\nx-mock-chunk-size: 1024\r\n";
    let plain = c.post("/v1/chat/completions", &chat_body, sized);
    let r = c.post(
        "/v1/chat/completions",
        &chat_body,
        &format!("{sized}accept-encoding: br\r\n"),
    );
    assert_eq!(r.header("content-encoding"), Some("br"));
    let decoded: serde_json::Value = serde_json::from_slice(&decode("br", &r.body)).unwrap();
    let mut expected = plain.json();
    // Each answer has its own id; everything else is the same.
    expected["id"] = decoded["id"].clone();
    assert_eq!(decoded, expected);
    assert!(r.header("x-sluice-cost-usd").is_some() || r.header("x-sluice-deployment").is_some());
}

fn small_answers_errors_and_head_go_as_they_are(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let gzip = "accept-encoding: gzip, br, zstd\r\n";
    let small = c.post("/v1/chat/completions", &chat("mock-fast", false), gzip);
    assert_eq!(small.status, 200);
    assert_eq!(small.header("content-encoding"), None);
    assert_eq!(
        small.header("vary"),
        None,
        "too small to ever be compressed"
    );
    assert_eq!(small.json()["object"], "chat.completion");
    // A client that refuses identity gets even a small answer compressed.
    let refused = c.post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "accept-encoding: gzip, identity;q=0\r\n",
    );
    assert_eq!(refused.header("content-encoding"), Some("gzip"));
    let v: serde_json::Value = serde_json::from_slice(&decode("gzip", &refused.body)).unwrap();
    assert_eq!(v["object"], "chat.completion");
    // The gateway's own errors and the upstream's error answers stay readable JSON.
    let r = c.post("/v1/chat/completions", &chat("no-such-model", false), gzip);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.error_code(), "model_not_found");
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        &format!("{gzip}x-mock-status: 400\r\n"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("content-encoding"), None);
    assert!(r.json()["error"]["message"].is_string());
    let r = c.post("/v1/chat/completions", "{not json", gzip);
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-encoding"), None);
    // HEAD: no body, no coding.
    let mut h = gw.connect();
    h.send_raw(
        format!("HEAD /v1/models HTTP/1.1\r\nhost: t\r\nconnection: close\r\n{gzip}\r\n")
            .as_bytes(),
    );
    let mut raw = Vec::new();
    h.stream.read_to_end(&mut raw).unwrap();
    let (head, len) = sluice_core::http1::parse_response_head(&raw, 1 << 16, true)
        .unwrap()
        .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(len, raw.len(), "nothing after the head of a HEAD answer");
    let r = c.post("/v1/chat/completions", &chat("mock-fast", false), gzip);
    assert_eq!(r.status, 200);
}

fn event_streams_are_never_compressed(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let mut c = gw.connect();
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-stream", true),
        "accept-encoding: gzip, br, zstd, identity;q=0\r\nx-mock-chunks: 200\r\nx-mock-chunk-size: 512\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.len() > 200, "{}", data.len());
}

fn answers_over_a_mebibyte_compress_on_the_pool(driver: &str) {
    let mock = mock();
    // inline_max_bytes = 0: every compression goes through the threads.
    let extra = "\n[server.compression]\ninline_max_bytes = 0\nthreads = 1\n";
    let gw = Gateway::start(&config(mock.addr(), extra, ""), driver);
    let mut c = gw.connect();
    let body = embeddings(13_000);
    let identity = c.post("/v1/embeddings", &body, "");
    assert!(identity.body.len() > 1 << 20, "{}", identity.body.len());
    for coding in ["zstd", "gzip", "br"] {
        let r = c.post(
            "/v1/embeddings",
            &body,
            &format!("accept-encoding: {coding}\r\n"),
        );
        assert_coded(&r, Some(coding), &identity.body, coding);
    }
    // Several clients at once on one worker, each gets its own bytes back.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let addr = gw.addr;
            let body = embeddings(13_000 + i);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let plain = c.post("/v1/embeddings", &body, "");
                let r = c.post("/v1/embeddings", &body, "accept-encoding: zstd\r\n");
                (plain.body, r)
            })
        })
        .collect();
    for h in handles {
        let (plain, r) = h.join().unwrap();
        // A busy pool may answer identity; either way the bytes are right.
        let coding = r.header("content-encoding").map(str::to_string);
        assert_coded(&r, coding.as_deref(), &plain, "concurrent");
    }
    let access = gw.access_lines(2 + 3 + 8);
    let sizes: Vec<u64> = access
        .iter()
        .filter_map(|l| l["bytes_out"].as_u64())
        .collect();
    assert!(
        sizes.iter().any(|s| *s < identity.body.len() as u64 / 4),
        "the access log counts the bytes sent: {sizes:?}"
    );
    let metrics = Client::connect(gw.admin.expect("admin listener"))
        .get("/metrics")
        .text();
    for coding in ["zstd", "gzip", "br"] {
        let series =
            format!("sluice_compressed_responses_total{{coding=\"{coding}\",place=\"pool\"}}");
        assert!(metrics.contains(&series), "{series} in:\n{metrics}");
    }
    let saved: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_compression_saved_bytes_total "))
        .expect("saved bytes counted")
        .trim()
        .parse()
        .unwrap();
    assert!(saved > 3.0 * identity.body.len() as f64 * 0.75, "{saved}");
}

fn compression_can_be_turned_off(driver: &str) {
    let mock = mock();
    let extra = "\n[server.compression]\nenabled = false\n";
    let gw = Gateway::start(&config(mock.addr(), extra, ""), driver);
    let mut c = gw.connect();
    let body = embeddings(2000);
    let r = c.post(
        "/v1/embeddings",
        &body,
        "accept-encoding: gzip, br, zstd\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), None);
    assert_eq!(r.json()["data"][1999]["index"], 1999);
}

fn curl_compressed_gets_the_same_bytes(driver: &str) {
    let mock = mock();
    let gw = Gateway::start(&config(mock.addr(), "", ""), driver);
    let body = embeddings(3000);
    let url = format!("http://{}/v1/embeddings", gw.addr);
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-H", "content-type: application/json"])
            .args(extra)
            .args(["--data-binary", &body, &url])
            .stdin(Stdio::null())
            .output()
            .expect("curl runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let plain = curl(&[]);
    let decoded = curl(&["--compressed"]);
    assert_eq!(decoded, plain);
    // What went over the wire was compressed (curl asks for what it can decode).
    let raw = curl(&["-H", "accept-encoding: gzip"]);
    assert!(
        raw.len() < plain.len() / 4,
        "{} vs {}",
        raw.len(),
        plain.len()
    );
    assert_eq!(decode("gzip", &raw), plain);
}
