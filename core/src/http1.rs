//! HTTP/1.1 framing, sans-IO: request heads (with the smuggling rules), response heads, and a
//! streaming chunked-body decoder.
//!
//! httparse does the tokenising; this module owns the rules a proxy must add on top of it:
//! exactly one way to frame a body, bounded sizes, no obsolete line folding. Anything ambiguous
//! is refused with [`ErrorKind::RequestSmuggling`] and the connection is closed, because a proxy
//! and its upstream that disagree on where a request ends can be made to smuggle one.

use std::ops::Range;

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

fn smuggling(msg: &str) -> GatewayError {
    GatewayError::new(ErrorKind::RequestSmuggling, msg)
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
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

/// Parses a Content-Length value strictly: ASCII digits only, no sign, no list.
fn parse_content_length(value: &[u8]) -> Result<u64, GatewayError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(smuggling("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for d in value {
        n = n * 10 + u64::from(d - b'0');
    }
    Ok(n)
}

/// A parsed upstream response head. Like [`RequestHead`], names and values are offsets into
/// one copy of the raw head.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    raw: Vec<u8>,
    fields: Vec<(Range<usize>, Range<usize>)>,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the upstream connection can be reused after the body.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// All headers in order, as (name as sent, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|(n, v)| {
            (
                std::str::from_utf8(&self.raw[n.clone()]).unwrap_or(""),
                &self.raw[v.clone()],
            )
        })
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the body is an event stream.
    pub fn is_event_stream(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| starts_with_ignore_case(v, b"text/event-stream"))
    }
}

fn starts_with_ignore_case(v: &[u8], prefix: &[u8]) -> bool {
    v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Why an upstream response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFramingError {
    /// The head is over the limit.
    #[error("upstream response head exceeds {0} bytes")]
    TooLarge(usize),
    /// The head could not be parsed or framed unambiguously.
    #[error("malformed upstream response: {0}")]
    Malformed(String),
}

/// Parses an upstream response head. `head_request` says the request was a HEAD, which has no
/// body whatever the headers say. Interim 1xx answers are returned like any other; the caller
/// skips them.
pub fn parse_response_head(
    buf: &[u8],
    max_header_bytes: usize,
    head_request: bool,
) -> Result<Option<(ResponseHead, usize)>, UpstreamFramingError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header_bytes {
                return Err(UpstreamFramingError::TooLarge(max_header_bytes));
            }
            return Ok(None);
        }
        Err(e) => return Err(UpstreamFramingError::Malformed(e.to_string())),
    };
    let status = res.code.unwrap_or(0);
    let version = res.version.unwrap_or(1);
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| -> Range<usize> {
        match (s.as_ptr() as usize).checked_sub(base) {
            Some(start) if start + s.len() <= len => start..start + s.len(),
            _ => 0..0,
        }
    };
    let mut keep_alive = version == 1;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut fields = Vec::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        let value = trim(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)
                .map_err(|_| UpstreamFramingError::Malformed("invalid Content-Length".into()))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(UpstreamFramingError::Malformed(
                    "conflicting Content-Length".into(),
                ));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().map(trim).unwrap_or(b"");
            if last.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(UpstreamFramingError::Malformed(
                    "unsupported Transfer-Encoding".into(),
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
        }
        fields.push((offset(h.name.as_bytes()), offset(h.value)));
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::Empty
    } else if chunked {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); the connection is not
        // reused, since the upstream framed ambiguously.
        if content_length.is_some() {
            keep_alive = false;
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => {
                keep_alive = false;
                BodyFraming::UntilClose
            }
        }
    };
    Ok(Some((
        ResponseHead {
            status,
            raw: buf[..len].to_vec(),
            fields,
            body,
            keep_alive,
        },
        len,
    )))
}

/// Why a chunked body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// A chunk-size line that is not hex, or overflows.
    #[error("malformed chunk size")]
    BadSize,
    /// A missing CRLF after a chunk or in the framing.
    #[error("malformed chunk framing")]
    BadFraming,
    /// The decoded body is over the limit.
    #[error("chunked body exceeds the limit")]
    TooLarge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size.
    Size { digits: u8 },
    /// Inside a chunk extension (`;name=value`), until CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after the data.
    DataCr,
    /// Expecting LF after the data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line, until CR.
    TrailerLine,
    /// Expecting LF after a trailer line.
    TrailerLf,
    /// Expecting the final LF.
    FinalLf,
    /// The body is complete.
    Done,
}

/// One step of chunked decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedStep {
    /// Bytes of the input consumed by this step.
    pub consumed: usize,
    /// Body bytes found, as a range of the input (may be empty).
    pub data: Range<usize>,
    /// The terminating zero-size chunk and trailers were read.
    pub done: bool,
}

/// A streaming, strict chunked decoder. It never copies: each call returns where the body bytes
/// are in the input. Feed it every byte in order; it keeps partial size lines in its state.
///
/// Call order: `decode(input)` repeatedly on `&input[consumed..]` until `consumed` reaches the
/// end of the input or `done` is true; bytes after `done` belong to the next message.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    remaining: u64,
    total: u64,
    max_total: u64,
    trailer_bytes: usize,
}

/// Longest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 8 * 1024;

impl ChunkedDecoder {
    /// A decoder refusing bodies larger than `max_total` bytes.
    pub fn new(max_total: u64) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            remaining: 0,
            total: 0,
            max_total,
            trailer_bytes: 0,
        }
    }

    /// Whether the final chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input` until a run of body bytes is found, the input ends, or the body ends.
    pub fn decode(&mut self, input: &[u8]) -> Result<ChunkedStep, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b';' | b'\r' if digits > 0 => {
                            self.state = if b == b';' {
                                ChunkState::Extension
                            } else {
                                ChunkState::SizeLf
                            };
                            i += 1;
                            continue;
                        }
                        _ => return Err(ChunkedError::BadSize),
                    };
                    if digits >= 16 {
                        return Err(ChunkedError::BadSize);
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = ChunkState::Size { digits: digits + 1 };
                    i += 1;
                }
                ChunkState::Extension => {
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        b'\n' => return Err(ChunkedError::BadFraming),
                        _ => {}
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    i += 1;
                    self.total = self.total.saturating_add(self.size);
                    if self.total > self.max_total {
                        return Err(ChunkedError::TooLarge);
                    }
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = ChunkState::Data;
                    }
                    self.size = 0;
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(ChunkedStep {
                        consumed: i + take,
                        data: i..i + take,
                        done: false,
                    });
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::Size { digits: 0 };
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::FinalLf
                    } else {
                        ChunkState::TrailerLine
                    };
                    self.bump_trailer()?;
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        b'\n' => return Err(ChunkedError::BadFraming),
                        _ => {}
                    }
                    self.bump_trailer()?;
                    i += 1;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::TrailerStart;
                    i += 1;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadFraming);
                    }
                    self.state = ChunkState::Done;
                    return Ok(ChunkedStep {
                        consumed: i + 1,
                        data: 0..0,
                        done: true,
                    });
                }
                ChunkState::Done => {
                    return Ok(ChunkedStep {
                        consumed: i,
                        data: 0..0,
                        done: true,
                    })
                }
            }
        }
        Ok(ChunkedStep {
            consumed: i,
            data: 0..0,
            done: self.state == ChunkState::Done,
        })
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TooLarge);
        }
        Ok(())
    }

    /// Decodes all of `input` and appends the body bytes to `out`; returns the bytes consumed
    /// (less than the input only when the body ended inside it) and whether it ended.
    pub fn decode_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ChunkedError> {
        let mut pos = 0;
        while pos < input.len() {
            let step = self.decode(&input[pos..])?;
            out.extend_from_slice(&input[pos + step.data.start..pos + step.data.end]);
            pos += step.consumed;
            if step.done {
                return Ok((pos, true));
            }
        }
        Ok((pos, self.is_done()))
    }
}

/// Appends one chunk of chunked transfer-coding framing `data` to `out`. Empty data writes
/// nothing (an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
    }
    out.reserve(hex.len() - i + data.len() + 4);
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Starts a chunk whose data the caller appends next, then closes with [`end_chunk`]; the size
/// is written afterwards into a fixed-width placeholder (leading zeros are valid hex), so the
/// data is copied once.
pub fn begin_chunk(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(b"00000000\r\n");
    at
}

/// Finishes the chunk started at `at`; an empty chunk is removed (it would end the body).
pub fn end_chunk(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 10;
    if len == 0 {
        out.truncate(at);
        return;
    }
    debug_assert!(len <= u32::MAX as usize);
    for i in 0..8 {
        out[at + 7 - i] = b"0123456789abcdef"[(len >> (4 * i)) & 0xf];
    }
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_body_bytes: 1 << 20,
    };

    fn parse(s: &str) -> Result<Option<(RequestHead, usize)>, GatewayError> {
        parse_request_head(s.as_bytes(), &LIMITS)
    }

    fn kind(s: &str) -> ErrorKind {
        parse(s).unwrap_err().kind
    }

    #[test]
    fn parses_a_post_with_length() {
        let (head, len) = parse("POST /v1/chat/completions?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nX-Thing:  v \r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(head.method(), "POST");
        assert_eq!(head.path(), "/v1/chat/completions");
        assert_eq!(head.target(), "/v1/chat/completions?a=1");
        assert_eq!(head.body, BodyFraming::Length(12));
        assert!(head.keep_alive);
        assert_eq!(head.header("x-thing"), Some(&b"v"[..]));
        assert_eq!(len, 85);
    }

    #[test]
    fn partial_head_waits_then_overflows() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert_eq!(kind(&big), ErrorKind::HeadersTooLarge);
        let big_complete = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(kind(&big_complete), ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn smuggling_cases_are_refused() {
        let cases = [
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nX-A: b\r\n  folded\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ];
        for c in cases {
            assert_eq!(kind(c), ErrorKind::RequestSmuggling, "{c:?}");
        }
        assert_eq!(
            kind("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            ErrorKind::NotImplemented
        );
    }

    #[test]
    fn body_over_limit_is_413() {
        assert_eq!(
            kind("POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            ErrorKind::PayloadTooLarge
        );
    }

    #[test]
    fn connection_and_expect() {
        let (h, _) = parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) =
            parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue);
        assert_eq!(h.body, BodyFraming::Chunked);
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new(1 << 20);
        let mut out = Vec::new();
        let (n, done) = d.decode_into(input, &mut out)?;
        Ok((out, n, done))
    }

    #[test]
    fn chunked_decodes_with_extensions_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, n, done) = decode_all(body).unwrap();
        assert_eq!(out, b"hello world");
        assert!(done);
        assert_eq!(&body[n..], b"NEXT");
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        assert_eq!(decode_all(b"zz\r\n").unwrap_err(), ChunkedError::BadSize);
        assert_eq!(decode_all(b"\r\n").unwrap_err(), ChunkedError::BadSize);
        assert_eq!(
            decode_all(b"3\r\nabcX\r\n").unwrap_err(),
            ChunkedError::BadFraming
        );
        assert_eq!(decode_all(b"3\nabc").unwrap_err(), ChunkedError::BadSize);
        assert_eq!(
            decode_all(b"11111111111111111\r\n").unwrap_err(),
            ChunkedError::BadSize
        );
        let mut d = ChunkedDecoder::new(4);
        assert_eq!(
            d.decode_into(b"5\r\nhello\r\n", &mut Vec::new())
                .unwrap_err(),
            ChunkedError::TooLarge
        );
    }

    #[test]
    fn response_framing() {
        let (h, len) = parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            1024,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        assert!(h.is_event_stream());
        assert!(h.keep_alive);
        assert_eq!(len, 80);
        let (h, _) = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", 1024, false)
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyFraming::UntilClose);
        assert!(!h.keep_alive);
        let (h, _) = parse_response_head(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            1024,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.body, BodyFraming::Empty);
        assert!(parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            1024,
            false
        )
        .is_err());
    }

    #[test]
    fn encode_chunk_frames_hex() {
        let mut out = Vec::new();
        encode_chunk(&[b'a'; 26], &mut out);
        encode_chunk(b"", &mut out);
        assert_eq!(&out[..4], b"1a\r\n");
        let (decoded, _, _) = decode_all(&[&out[..], LAST_CHUNK].concat()).unwrap();
        assert_eq!(decoded, vec![b'a'; 26]);
    }

    #[test]
    fn placeholder_chunks_decode() {
        let mut out = Vec::new();
        let at = begin_chunk(&mut out);
        out.extend_from_slice(&[b'z'; 300]);
        end_chunk(&mut out, at);
        let at = begin_chunk(&mut out);
        end_chunk(&mut out, at);
        assert_eq!(&out[..10], b"0000012c\r\n");
        assert_eq!(out.len(), 312);
        out.extend_from_slice(LAST_CHUNK);
        let (decoded, _, done) = decode_all(&out).unwrap();
        assert!(done);
        assert_eq!(decoded, vec![b'z'; 300]);
    }

    proptest! {
        /// However the encoded body is split across reads, the decoder yields the same bytes.
        #[test]
        fn chunked_roundtrip_any_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
            cut in prop::collection::vec(0usize..300, 0..6),
        ) {
            let mut wire = Vec::new();
            for c in &chunks { encode_chunk(c, &mut wire); }
            wire.extend_from_slice(LAST_CHUNK);
            let mut cuts: Vec<usize> = cut.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut d = ChunkedDecoder::new(u64::MAX);
            let mut out = Vec::new();
            let mut start = 0;
            for end in cuts {
                let (n, _) = d.decode_into(&wire[start..end], &mut out).unwrap();
                prop_assert_eq!(n, end - start);
                start = end;
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(out, chunks.concat());
        }

        /// Arbitrary bytes never panic the head parser or the decoder.
        #[test]
        fn arbitrary_input_never_panics(input in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request_head(&input, &LIMITS);
            let _ = parse_response_head(&input, 1024, false);
            let _ = ChunkedDecoder::new(1 << 20).decode_into(&input, &mut Vec::new());
        }
    }
}
