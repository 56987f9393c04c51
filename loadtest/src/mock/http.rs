//! HTTP/1.1 framing: request heads (httparse), request bodies (Content-Length
//! or chunked), and the bytes of response heads and chunks.
//!
//! No I/O here: functions take the bytes received so far and say whether a
//! whole request is there, so the connection loop decides when to read.

use std::ops::Range;

/// Most headers a request may carry.
pub(crate) const MAX_HEADERS: usize = 64;
/// Largest request head accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted (decoded).
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a request could not be framed. The connection answers the status and
/// closes, since the next request's start is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("malformed request head")]
    BadHead,
    #[error("request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length / Transfer-Encoding")]
    BadFraming,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
}

impl HttpError {
    /// The status answered for this error.
    pub(crate) fn status(self) -> u16 {
        match self {
            HttpError::BadHead | HttpError::BadFraming | HttpError::BadChunk => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head; strings borrow the receive buffer.
#[derive(Debug)]
pub(crate) struct Head<'h, 'b> {
    pub(crate) method: &'b str,
    pub(crate) path: &'b str,
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, blank line included.
    pub(crate) len: usize,
    pub(crate) framing: Framing,
    /// The client allows another request on this connection.
    pub(crate) keep_alive: bool,
    /// HTTP/1.0: no chunked responses.
    pub(crate) http10: bool,
    pub(crate) expect_continue: bool,
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_head<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Option<Head<'h, 'b>>, HttpError> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HttpError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::BadHead),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadHead);
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;

    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut connection_close = version == 0;
    let mut expect_continue = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_decimal(h.value).ok_or(HttpError::BadFraming)?;
            if length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadFraming);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a lone `chunked` is understood; anything else is refused
            // rather than guessed (request smuggling).
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(HttpError::BadFraming);
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return Err(HttpError::BadFraming),
        (_, true) => Framing::Chunked,
        (Some(n), false) if n > MAX_BODY_BYTES => return Err(HttpError::BodyTooLarge),
        (Some(n), false) => Framing::Length(n),
        (None, false) => Framing::Length(0),
    };
    Ok(Some(Head {
        method,
        path,
        headers,
        len,
        framing,
        keep_alive: !connection_close,
        http10: version == 0,
        expect_continue,
    }))
}

/// Where a complete body lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyAt {
    /// This range of the bytes given to [`locate_body`] (Content-Length).
    Inline(Range<usize>),
    /// In the scratch buffer, decoded from chunked encoding.
    Scratch,
}

/// Finds the end of the body that starts at `buf[0]`. Returns where the body
/// is and how many bytes of `buf` it used, or `Ok(None)` if incomplete.
/// Chunked bodies are decoded into `scratch` (cleared first).
pub(crate) fn locate_body(
    buf: &[u8],
    framing: Framing,
    scratch: &mut Vec<u8>,
) -> Result<Option<(BodyAt, usize)>, HttpError> {
    match framing {
        Framing::Length(n) if buf.len() >= n => Ok(Some((BodyAt::Inline(0..n), n))),
        Framing::Length(_) => Ok(None),
        Framing::Chunked => {
            scratch.clear();
            Ok(decode_chunked(buf, scratch)?.map(|used| (BodyAt::Scratch, used)))
        }
    }
}

/// Decodes a chunked body into `out`; returns the bytes used, trailers
/// included, or `None` if `buf` ends first.
fn decode_chunked(buf: &[u8], out: &mut Vec<u8>) -> Result<Option<usize>, HttpError> {
    let mut pos = 0;
    loop {
        let (size_end, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HttpError::BadChunk),
        };
        pos += size_end;
        let size = usize::try_from(size).map_err(|_| HttpError::BodyTooLarge)?;
        if size == 0 {
            return Ok(skip_trailers(&buf[pos..]).map(|n| pos + n));
        }
        if out.len().saturating_add(size) > MAX_BODY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        let Some(data) = buf.get(pos..pos + size + 2) else {
            return Ok(None);
        };
        if &data[size..] != b"\r\n" {
            return Err(HttpError::BadChunk);
        }
        out.extend_from_slice(&data[..size]);
        pos += size + 2;
    }
}

/// Skips trailer lines up to and including the blank line.
fn skip_trailers(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = memchr::memchr(b'\n', &buf[pos..])? + pos + 1;
        let blank = line_end - pos <= 2;
        pos = line_end;
        if blank {
            return Some(pos);
        }
    }
}

fn parse_decimal(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The interim answer to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body framing of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind<'a> {
    /// `Content-Length` with this many bytes, of this content type.
    Sized(&'a str, usize),
    /// An event stream of this content type (`text/event-stream`, or Bedrock's
    /// `application/vnd.amazon.eventstream`), chunked (or close-delimited for HTTP/1.0).
    EventStream(&'a str),
}

/// Appends a response head.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    body: BodyKind<'_>,
    retry_after_s: Option<u64>,
    close: bool,
    http10: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    match body {
        BodyKind::Sized(content_type, len) => {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(content_type.as_bytes());
            out.extend_from_slice(b"\r\ncontent-length: ");
            push_u64(out, len as u64);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::EventStream(content_type) => {
            out.extend_from_slice(b"content-type: ");
            out.extend_from_slice(content_type.as_bytes());
            out.extend_from_slice(b"\r\ncache-control: no-cache\r\n");
            if !http10 {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
    }
    if let Some(seconds) = retry_after_s {
        out.extend_from_slice(b"retry-after: ");
        push_u64(out, seconds);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `payload` as one HTTP chunk (or raw when not `chunked`).
pub(crate) fn write_chunk(out: &mut Vec<u8>, payload: &[u8], chunked: bool) {
    if !chunked {
        out.extend_from_slice(payload);
        return;
    }
    push_hex(out, payload.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `n` in decimal.
pub(crate) fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Mock Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Option<(usize, Framing, bool)>, HttpError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        Ok(parse_head(raw, &mut headers)?.map(|h| (h.len, h.framing, h.keep_alive)))
    }

    #[test]
    fn heads() {
        let raw = b"POST /v1/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            head(raw),
            Ok(Some((raw.len() - 3, Framing::Length(3), true)))
        );
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let close = b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n";
        assert_eq!(
            head(close),
            Ok(Some((close.len(), Framing::Length(0), false)))
        );
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(both), Err(HttpError::BadFraming));
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(gzip), Err(HttpError::BadFraming));
        assert_eq!(head(b"\x01\x02 nonsense\r\n\r\n"), Err(HttpError::BadHead));
    }

    #[test]
    fn chunked_bodies() {
        let mut scratch = Vec::new();
        let raw = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let found = locate_body(raw, Framing::Chunked, &mut scratch);
        assert_eq!(found, Ok(Some((BodyAt::Scratch, raw.len() - 4))));
        assert_eq!(scratch, b"abcde");
        for cut in 0..raw.len() - 4 {
            assert_eq!(
                locate_body(&raw[..cut], Framing::Chunked, &mut scratch),
                Ok(None)
            );
        }
        let bad = b"3\r\nabcX\r\n0\r\n\r\n";
        assert_eq!(
            locate_body(bad, Framing::Chunked, &mut scratch),
            Err(HttpError::BadChunk)
        );
    }

    #[test]
    fn framing_bytes() {
        let mut out = Vec::new();
        write_chunk(&mut out, &[b'x'; 26], true);
        assert_eq!(&out[..4], b"1a\r\n");
        out.clear();
        push_u64(&mut out, 0);
        push_u64(&mut out, 1_700_000_000);
        assert_eq!(out, b"01700000000");
    }
}
