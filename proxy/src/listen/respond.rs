//! Writing response heads and whole local responses to clients.

use sluice_core::error::{reason_phrase, GatewayError};

/// A header value added to an answer (`x-ratelimit-*`, `x-sluice-cache`), inline up to 24
/// bytes: no allocation per header.
pub type HeaderValue = smallvec::SmallVec<[u8; 24]>;

/// How a response body is delimited on the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients).
    Close,
}

/// Appends a response head. `headers` are written as given; framing, `x-request-id` and
/// `connection` are added here so no caller forgets them.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &[u8])],
    framing: ClientFraming,
    keep_alive: bool,
    request_id: &str,
) {
    write_head_with(
        out,
        status,
        headers,
        |_| {},
        framing,
        keep_alive,
        request_id,
    );
}

/// [`write_head`] with `lines` writing more header lines (each `name: value\r\n`) straight
/// into the head after `headers`: values rendered in place (`x-ratelimit-*`), not listed.
pub fn write_head_with(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &[u8])],
    lines: impl FnOnce(&mut Vec<u8>),
    framing: ClientFraming,
    keep_alive: bool,
    request_id: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa_u64(u64::from(status)).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        push_header(out, name, value);
    }
    lines(out);
    push_header(out, "x-request-id", request_id.as_bytes());
    match framing {
        ClientFraming::Length(n) => push_header(out, "content-length", itoa_u64(n).as_bytes()),
        ClientFraming::Chunked => push_header(out, "transfer-encoding", b"chunked"),
        ClientFraming::Close => {}
    }
    if !keep_alive || framing == ClientFraming::Close {
        push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one `name: value` line to a head.
pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A decimal rendering without going through `fmt`, on the stack (no allocation: heads
/// carry two or three numbers per request).
pub fn itoa_u64(mut n: u64) -> Decimal {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Decimal {
        digits,
        start: i as u8,
    }
}

/// A number's decimal digits (see [`itoa_u64`]).
#[derive(Clone, Copy)]
pub struct Decimal {
    digits: [u8; 20],
    /// Where the digits start in `digits` (they run to its end).
    start: u8,
}

impl Decimal {
    /// The digits, ASCII.
    pub fn as_bytes(&self) -> &[u8] {
        self.digits
            .get(usize::from(self.start)..)
            .unwrap_or_default()
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("0")
    }
}

/// A whole response with a JSON body.
pub fn json(
    status: u16,
    body: &[u8],
    extra: &[(&str, &[u8])],
    keep_alive: bool,
    request_id: &str,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(extra.len() + 1);
    headers.push(("content-type", b"application/json"));
    headers.extend_from_slice(extra);
    write_head(
        &mut out,
        status,
        &headers,
        ClientFraming::Length(body.len() as u64),
        keep_alive,
        request_id,
    );
    out.extend_from_slice(body);
    out
}

/// The OpenAI-style JSON error response for `err`, with `Retry-After` when it has one.
pub fn error(err: &GatewayError, keep_alive: bool, request_id: &str) -> Vec<u8> {
    error_with(err, &[], keep_alive, request_id)
}

/// [`error`] with extra headers (e.g. `Allow` on a 405).
pub fn error_with(
    err: &GatewayError,
    extra: &[(&str, &[u8])],
    keep_alive: bool,
    request_id: &str,
) -> Vec<u8> {
    let body = err.to_json();
    let retry;
    let mut headers: Vec<(&str, &[u8])> = extra.to_vec();
    if let Some(s) = err.retry_after_s {
        retry = itoa_u64(s);
        headers.push(("retry-after", retry.as_bytes()));
    }
    json(
        err.status(),
        &body,
        &headers,
        keep_alive && !err.kind.closes_connection(),
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_framing_and_id() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            200,
            &[("content-type", b"text/event-stream")],
            ClientFraming::Chunked,
            true,
            "req_1",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: req_1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(itoa_u64(0).as_str(), "0");
        assert_eq!(itoa_u64(7).as_bytes(), b"7");
        assert_eq!(
            itoa_u64(18446744073709551615).as_str(),
            "18446744073709551615"
        );
    }
}
