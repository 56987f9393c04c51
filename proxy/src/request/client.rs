//! What goes back to the client of one request, shared by `forward` and `deliver`: what the
//! client asked of the connection ([`ClientSide`]), the response head written for an
//! upstream's answer, and a JSON error when nothing was sent yet.

use std::time::Instant;

use monoio::io::AsyncWriteRentExt;
use sluice_core::compress::Decision;
use sluice_core::error::GatewayError;
use sluice_core::http1::{is_hop_by_hop, ResponseHead};
use sluice_core::limits::RateLimitHeaders;

use crate::listen::client_io::ClientWrite;
use crate::listen::respond::{self, push_header, write_head_with, ClientFraming, HeaderValue};
use crate::request::settle::Answer;

/// What the client asked of the connection, and what the caller adds to the answer.
pub struct ClientSide<'r> {
    /// `x-request-id`.
    pub request_id: &'r str,
    /// The client speaks HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// The client wants to keep the connection.
    pub keep_alive: bool,
    /// When the request head arrived.
    pub started: Instant,
    /// Headers to add to whatever answer goes out (e.g. `x-sluice-cache`).
    pub extra_headers: Vec<(&'static str, HeaderValue)>,
    /// The key's `x-ratelimit-*` numbers, written after `extra_headers` on whatever answer
    /// goes out.
    pub rate_limits: RateLimitHeaders,
    /// The request's place in a trace, when traced (each attempt gets a span).
    pub trace: Option<crate::telemetry::context::RequestTrace>,
}

#[allow(clippy::too_many_arguments)]
/// Writes the response head: the upstream's end-to-end headers (its request id renamed so the
/// client sees ours), which deployment answered, the cost when known, the content coding the
/// gateway applied (`encoding`), and the caller's extras.
pub(crate) fn write_response_head(
    wire: &mut Vec<u8>,
    head: &ResponseHead,
    deployment: &str,
    framing: ClientFraming,
    keep_alive: bool,
    client: &ClientSide<'_>,
    cost_usd: Option<&str>,
    content_type: Option<&[u8]>,
    encoding: Decision,
) {
    let coded = encoding.coding.is_some();
    // Another coding is another representation (RFC 9110 §8.8.3): a strong validator of the
    // upstream's bytes is at most a weak one of ours.
    let weak_etag = coded
        .then(|| head.header("etag"))
        .flatten()
        .filter(|v| !v.starts_with(b"W/"))
        .map(|v| [&b"W/"[..], v].concat());
    // Each field straight into the head, in the order listed: no list of (name, value)
    // pairs built first (a 1 KiB array on the stack, and a push with its spill check per
    // field, was most of this function's code touched per answer).
    write_head_with(
        wire,
        head.status,
        &[],
        |out| {
            if let Some(ct) = content_type {
                push_header(out, "content-type", ct);
            }
            for (name, value) in head.headers() {
                // A translated body has our content type, and never the upstream's encoding.
                let replaced = content_type.is_some()
                    && (name.eq_ignore_ascii_case("content-type")
                        || name.eq_ignore_ascii_case("content-encoding"));
                if is_hop_by_hop(name) || replaced {
                    continue;
                }
                if coded && name.eq_ignore_ascii_case("content-encoding") {
                    continue;
                }
                if let (true, Some(weak)) = (name.eq_ignore_ascii_case("etag"), &weak_etag) {
                    push_header(out, name, weak);
                } else if name.eq_ignore_ascii_case("x-request-id") {
                    push_header(out, "x-upstream-request-id", value);
                } else {
                    push_header(out, name, value);
                }
            }
            if let Some(coding) = encoding.coding {
                push_header(out, "content-encoding", coding.token().as_bytes());
            }
            if encoding.vary {
                push_header(out, "vary", b"accept-encoding");
            }
            push_header(out, "x-sluice-deployment", deployment.as_bytes());
            if let Some(cost) = cost_usd {
                push_header(out, "x-sluice-cost-usd", cost.as_bytes());
            }
            for (name, value) in &client.extra_headers {
                push_header(out, name, value);
            }
            client.rate_limits.write_lines(out);
        },
        framing,
        keep_alive,
        client.request_id,
    );
}

/// Answers an error as JSON when nothing was sent to the client yet.
pub(crate) async fn answer_error(
    wr: &mut ClientWrite,
    err: GatewayError,
    client: &ClientSide<'_>,
    answer: &mut Answer,
) -> bool {
    let keep_alive = client.keep_alive && !err.kind.closes_connection();
    let mut rate_limits: Vec<(&str, HeaderValue)> = Vec::new();
    client
        .rate_limits
        .each(|n, v| rate_limits.push((n, HeaderValue::from_slice(v))));
    let extra: Vec<(&str, &[u8])> = client
        .extra_headers
        .iter()
        .chain(&rate_limits)
        .map(|(n, v)| (*n, &v[..]))
        .collect();
    let bytes = respond::error_with(&err, &extra, keep_alive, client.request_id);
    answer.status = err.status();
    answer.bytes_out = bytes.len() as u64;
    let (res, _) = wr.write_all(bytes).await;
    if res.is_ok() {
        answer.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
    }
    keep_alive && res.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::compress::Coding;
    use sluice_core::http1::parse_response_head;
    use sluice_core::limits::Snapshot;

    fn client(extra: Vec<(&'static str, HeaderValue)>, limits: bool) -> ClientSide<'static> {
        let snapshot = Snapshot {
            limit: 60,
            remaining: 59,
            reset_ms: 1_000,
        };
        ClientSide {
            request_id: "req-1",
            http10: false,
            keep_alive: true,
            started: Instant::now(),
            extra_headers: extra,
            rate_limits: RateLimitHeaders {
                requests: limits.then_some(snapshot),
                tokens: None,
            },
            trace: None,
        }
    }

    fn head(
        upstream: &str,
        client: &ClientSide<'_>,
        cost: Option<&str>,
        content_type: Option<&[u8]>,
        encoding: Decision,
        framing: ClientFraming,
    ) -> String {
        let (head, _) = parse_response_head(upstream.as_bytes(), 8192, false)
            .unwrap()
            .unwrap();
        let mut wire = b"before".to_vec();
        write_response_head(
            &mut wire,
            &head,
            "dep-a",
            framing,
            client.keep_alive,
            client,
            cost,
            content_type,
            encoding,
        );
        String::from_utf8(wire).unwrap()
    }

    /// Every rule of the head, byte for byte: hop-by-hop fields dropped, the upstream's request
    /// id renamed, a translated body's content type and a coding's replacements, a weakened
    /// validator, then deployment, cost, extras, rate limits, ours.
    #[test]
    fn the_answers_head_keeps_its_order_and_rules() {
        let upstream = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\nX-Request-Id: up-9\r\nETag: \"v1\"\r\nContent-Encoding: identity\r\nKeep-Alive: timeout=5\r\nX-Other: o\r\nContent-Length: 2\r\n\r\n";
        let plain = client(Vec::new(), false);
        assert_eq!(
            head(
                upstream,
                &plain,
                None,
                None,
                Decision::default(),
                ClientFraming::Length(7)
            ),
            "beforeHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-upstream-request-id: up-9\r\nETag: \"v1\"\r\nContent-Encoding: identity\r\nX-Other: o\r\nx-sluice-deployment: dep-a\r\nx-request-id: req-1\r\ncontent-length: 7\r\n\r\n"
        );
        let extras = client(
            vec![("x-sluice-cache", HeaderValue::from_slice(b"miss"))],
            true,
        );
        let coded = Decision {
            coding: Some(Coding::Gzip),
            vary: true,
        };
        assert_eq!(
            head(
                upstream,
                &extras,
                Some("0.000123"),
                Some(b"application/json"),
                coded,
                ClientFraming::Chunked
            ),
            "beforeHTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream-request-id: up-9\r\nETag: W/\"v1\"\r\nX-Other: o\r\ncontent-encoding: gzip\r\nvary: accept-encoding\r\nx-sluice-deployment: dep-a\r\nx-sluice-cost-usd: 0.000123\r\nx-sluice-cache: miss\r\nx-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 59\r\nx-ratelimit-reset-requests: 1s\r\nx-request-id: req-1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
