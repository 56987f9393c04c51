//! Request heads: the request line, the fields, and the framing rules a server must add.

use std::ops::Range;

use super::{parse_content_length, smuggling, trim, BodyFraming, MAX_HEADERS};
use crate::error::{ErrorKind, GatewayError};

/// A parsed request head. Names and values are kept as offsets into `raw`, one allocation for
/// the whole head.
#[derive(Clone, Debug)]
pub struct RequestHead {
    raw: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the connection stays open after this exchange, as the client asked.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The method, e.g. `POST`.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    /// The request target as sent, e.g. `/v1/chat/completions?x=1`.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("")
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of header `name` as a string, when it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| {
            (
                std::str::from_utf8(&self.raw[n.clone()]).unwrap_or(""),
                &self.raw[v.clone()],
            )
        })
    }
}

/// Size limits for parsing.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Largest header block, request line included.
    pub max_header_bytes: usize,
    /// Largest body, whatever the framing.
    pub max_body_bytes: u64,
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and still within the limit, `Ok(Some((head,
/// len)))` with the head's length in bytes once complete, or the error to answer with.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, GatewayError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(too_large_head(limits));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::new(
                ErrorKind::HeadersTooLarge,
                format!("more than {MAX_HEADERS} request headers"),
            ))
        }
        Err(e) => {
            // A line starting with white space is obsolete line folding; httparse refuses it
            // as a bad header name. Either way the framing cannot be trusted.
            return Err(smuggling(&format!("malformed request head: {e}")));
        }
    };
    if len > limits.max_header_bytes {
        return Err(too_large_head(limits));
    }
    let base = buf.as_ptr() as usize;
    // Every slice httparse hands out borrows from `buf`; anything else maps to an empty range.
    let offset = |s: &[u8]| -> Range<usize> {
        match (s.as_ptr() as usize).checked_sub(base) {
            Some(start) if start + s.len() <= buf.len() => start..start + s.len(),
            _ => 0..0,
        }
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        headers.push((offset(h.name.as_bytes()), offset(h.value)));
        let value = trim(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some() {
                return Err(smuggling("repeated Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding {
                return Err(smuggling("repeated Transfer-Encoding"));
            }
            transfer_encoding = true;
            if value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(GatewayError::new(
                    ErrorKind::NotImplemented,
                    "only `Transfer-Encoding: chunked` is supported",
                ));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|b| *b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version == 1;
            } else {
                return Err(GatewayError::new(
                    ErrorKind::InvalidRequest,
                    "unsupported Expect header",
                ));
            }
        }
    }
    if chunked && content_length.is_some() {
        return Err(smuggling(
            "both Content-Length and Transfer-Encoding are present",
        ));
    }
    if chunked && version == 0 {
        return Err(smuggling("Transfer-Encoding in an HTTP/1.0 request"));
    }
    let body = if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyFraming::Empty,
            Some(n) if n > limits.max_body_bytes => {
                return Err(too_large_body(limits));
            }
            Some(n) => BodyFraming::Length(n),
        }
    };
    let raw = buf[..len].to_vec();
    Ok(Some((
        RequestHead {
            method: offset(method.as_bytes()),
            target: offset(target.as_bytes()),
            raw,
            headers,
            version,
            body,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

fn too_large_head(limits: &HeadLimits) -> GatewayError {
    GatewayError::new(
        ErrorKind::HeadersTooLarge,
        format!(
            "request header block exceeds {} bytes",
            limits.max_header_bytes
        ),
    )
}

/// The 413 for a body over `limits.max_body_bytes`.
pub fn too_large_body(limits: &HeadLimits) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds {} bytes", limits.max_body_bytes),
    )
}
