//! Upstream response heads.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::fields::FieldTable;
use super::{parse_content_length, proven_ascii, trim, BodyFraming, MAX_HEADERS};

/// A parsed upstream response head. Like [`RequestHead`](super::RequestHead), names and values are offsets into
/// one copy of the raw head, which holds the field table too (`FieldTable`).
#[derive(Clone, Debug)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    raw: Vec<u8>,
    /// The fields' offsets, stored in `raw` after the head.
    fields: FieldTable,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the upstream connection can be reused after the body.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// All headers in order, as (name as sent, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter(&self.raw).map(|(n, v)| {
            // SAFETY: names are tokens: httparse checked them.
            let name = unsafe { proven_ascii(&self.raw[n]) };
            (name, &self.raw[v])
        })
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        // Bytes compared as they are: no UTF-8 check of every name on every lookup.
        self.fields.find(&self.raw, name)
    }

    /// Whether the body is an event stream: SSE, or the AWS binary event stream of Bedrock's
    /// ConverseStream (`application/vnd.amazon.eventstream`, translated to SSE).
    pub fn is_event_stream(&self) -> bool {
        self.header("content-type").is_some_and(|v| {
            starts_with_ignore_case(v, b"text/event-stream")
                || starts_with_ignore_case(v, b"application/vnd.amazon.eventstream")
        })
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
    // Uninitialized slots: httparse writes only the ones it fills (an initialized array was
    // 3.2 KiB of stores, 50 cache lines of stack, on every answer). The default config is
    // what `Response::parse` uses.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots);
    let len = match parsed {
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
    let mut raw = Vec::with_capacity(len + res.headers.len() * FieldTable::ENTRY);
    raw.extend_from_slice(&buf[..len]);
    let table = res
        .headers
        .iter()
        .map(|h| (offset(h.name.as_bytes()), offset(h.value)));
    let Some(fields) = FieldTable::append(&mut raw, table) else {
        return Err(UpstreamFramingError::TooLarge(max_header_bytes));
    };
    Ok(Some((
        ResponseHead {
            status,
            raw,
            fields,
            body,
            keep_alive,
        },
        len,
    )))
}
