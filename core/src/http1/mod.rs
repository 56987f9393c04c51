//! HTTP/1.1 framing, sans-IO: request heads (with the smuggling rules), response heads, and a
//! streaming chunked-body decoder.
//!
//! httparse does the tokenising; this module owns the rules a proxy must add on top of it:
//! exactly one way to frame a body, bounded sizes, no obsolete line folding. Anything ambiguous
//! is refused with [`ErrorKind::RequestSmuggling`] and the connection is closed, because a proxy
//! and its upstream that disagree on where a request ends can be made to smuggle one.

mod chunked;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use chunked::{
    begin_chunk, encode_chunk, end_chunk, ChunkedDecoder, ChunkedError, ChunkedStep, LAST_CHUNK,
};
pub use request::{parse_request_head, too_large_body, HeadLimits, RequestHead};
pub use response::{parse_response_head, ResponseHead, UpstreamFramingError};

use crate::error::{ErrorKind, GatewayError};

/// Most headers accepted in one request or response head.
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

pub(crate) fn smuggling(msg: &str) -> GatewayError {
    GatewayError::new(ErrorKind::RequestSmuggling, msg)
}

pub(crate) fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Parses a Content-Length value strictly: ASCII digits only, no sign, no list.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, GatewayError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(smuggling("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for d in value {
        n = n * 10 + u64::from(d - b'0');
    }
    Ok(n)
}

/// Whether a header is hop-by-hop or framing, and so never forwarded as is.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        "expect",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
