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
use crate::listen::respond::{self, write_head_with, ClientFraming, HeaderValue};
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
    // On the stack for the usual head (no allocation per answer).
    let mut headers: smallvec::SmallVec<[(&str, &[u8]); 32]> = smallvec::SmallVec::new();
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
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
            headers.push((name, weak));
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            headers.push(("x-upstream-request-id", value));
        } else {
            headers.push((name, value));
        }
    }
    if let Some(coding) = encoding.coding {
        headers.push(("content-encoding", coding.token().as_bytes()));
    }
    if encoding.vary {
        headers.push(("vary", b"accept-encoding"));
    }
    headers.push(("x-sluice-deployment", deployment.as_bytes()));
    if let Some(cost) = cost_usd {
        headers.push(("x-sluice-cost-usd", cost.as_bytes()));
    }
    for (name, value) in &client.extra_headers {
        headers.push((name, &value[..]));
    }
    write_head_with(
        wire,
        head.status,
        &headers,
        |out| client.rate_limits.write_lines(out),
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
