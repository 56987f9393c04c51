//! Request heads: the request line, the fields, and the framing rules a server must add.

use std::ops::Range;

use super::fields::FieldTable;
use super::target::{parse_request_line, valid_authority, TargetForm};
use super::{parse_content_length, proven_ascii, smuggling, trim, BodyFraming, MAX_HEADERS};
use crate::error::{ErrorKind, GatewayError};

/// A parsed request head. Names and values are kept as offsets into `raw`, one allocation for
/// the whole head (its field table included: `FieldTable`).
#[derive(Clone, Debug)]
pub struct RequestHead {
    raw: Vec<u8>,
    method: Range<usize>,
    /// The path and query, in `raw` (after the head when an absolute-form target had no path).
    target: Range<usize>,
    /// Where the path ends in `target` (at its `?`, or at its end).
    path_end: usize,
    raw_target: Range<usize>,
    authority: Option<Range<usize>>,
    host_field: Option<Range<usize>>,
    form: TargetForm,
    /// The fields' offsets, stored in `raw` after the head.
    headers: FieldTable,
    /// `1` for HTTP/1.1 (or a higher 1.x, read as 1.1), `0` for HTTP/1.0.
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
        // SAFETY: the parser checked the method once: tchars only.
        unsafe { proven_ascii(&self.raw[self.method.clone()]) }
    }

    /// The request target in origin-form, e.g. `/v1/chat/completions?x=1`: as sent, or the
    /// path and query of an absolute-form target (`http://h/v1/models` gives `/v1/models`).
    pub fn target(&self) -> &str {
        // SAFETY: the parser checked the target once: visible ASCII only.
        unsafe { proven_ascii(&self.raw[self.target.clone()]) }
    }

    /// The request target exactly as sent.
    pub fn raw_target(&self) -> &str {
        // SAFETY: the parser checked the target once: visible ASCII only.
        unsafe { proven_ascii(&self.raw[self.raw_target.clone()]) }
    }

    /// Which of the four forms the target has.
    pub fn target_form(&self) -> TargetForm {
        self.form
    }

    /// The host the request is for: the authority of an absolute-form target, which wins over
    /// the `Host` field (RFC 9112 §3.2.2), else the `Host` field; `None` for an HTTP/1.0
    /// request without either.
    pub fn host(&self) -> Option<&str> {
        let range = self.authority.as_ref().or(self.host_field.as_ref())?;
        std::str::from_utf8(&self.raw[range.clone()]).ok()
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        // SAFETY: a prefix of the target, which the parser checked: visible ASCII only.
        unsafe { proven_ascii(&self.raw[self.target.start..self.path_end]) }
    }

    /// The query: what follows the target's first `?` (`None` without one). Found when the
    /// head was parsed: no scan of the target.
    pub fn query(&self) -> Option<&str> {
        if self.path_end == self.target.end {
            return None;
        }
        // SAFETY: a suffix of the target, which the parser checked: visible ASCII only.
        Some(unsafe { proven_ascii(&self.raw[self.path_end + 1..self.target.end]) })
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        // Bytes compared as they are: no UTF-8 check of every name on every lookup.
        self.headers.find(&self.raw, name)
    }

    /// The first value of header `name` as a string, when it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter(&self.raw).map(|(n, v)| {
            // SAFETY: names are tokens: httparse checked them.
            let name = unsafe { proven_ascii(&self.raw[n]) };
            (name, &self.raw[v])
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
/// len)))` with the head's length in bytes once complete, or the error to answer with. The
/// rules it enforces, and the tests that prove them, are listed in [the module
/// docs](super).
// Longer than ~100 lines on purpose: every request crosses it, and each block is one rule of
// RFC 9112/9110 in the order the checklist in `http1/mod.rs` lists them, with its test there.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, GatewayError> {
    let partial = || {
        if buf.len() > limits.max_header_bytes {
            Err(too_large_head(limits))
        } else {
            Ok(None)
        }
    };
    let Some(line) = parse_request_line(buf)? else {
        if buf.len() > limits.max_header_bytes {
            return Err(uri_too_long(limits));
        }
        return Ok(None);
    };
    if line.end > limits.max_header_bytes {
        return Err(uri_too_long(limits));
    }
    if line.form == TargetForm::Authority {
        // RFC 9110 §9.3.6: a tunnel, which a gateway to model APIs does not open.
        return Err(GatewayError::new(
            ErrorKind::NotImplemented,
            "CONNECT is not supported",
        ));
    }
    // httparse wants initialized slots: a few on the stack first (3.2 KiB of stores for all
    // `MAX_HEADERS`, 50 cache lines, were most of this function's data), all of them only for
    // a head with more. The same parse either way: more fields than slots is the only
    // outcome that differs, and it is parsed again.
    let mut few = [httparse::EMPTY_HEADER; FIRST_SLOTS];
    let mut all;
    let fields_at = &buf[line.end..];
    let parsed = match httparse::parse_headers(fields_at, &mut few) {
        Err(httparse::Error::TooManyHeaders) => {
            all = [httparse::EMPTY_HEADER; MAX_HEADERS];
            httparse::parse_headers(fields_at, &mut all)
        }
        other => other,
    };
    let (len, fields) = match parsed {
        Ok(httparse::Status::Complete((n, fields))) => {
            if line.end + n > limits.max_header_bytes {
                return Err(too_large_head(limits));
            }
            (line.end + n, fields)
        }
        Ok(httparse::Status::Partial) => return partial(),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(GatewayError::new(
                ErrorKind::HeadersTooLarge,
                format!("more than {MAX_HEADERS} request headers"),
            ))
        }
        Err(_) => {
            // A field name that is not a token, white space before the colon or before the
            // first field, obsolete line folding, a bare CR, a NUL: the framing cannot be
            // trusted.
            return Err(smuggling("malformed header field"));
        }
    };
    let base = buf.as_ptr() as usize;
    // Every slice httparse hands out borrows from the head in `buf`; anything else maps to an
    // empty range.
    let offset = |s: &[u8]| -> Range<usize> {
        match (s.as_ptr() as usize).checked_sub(base) {
            Some(start) if start + s.len() <= len => start..start + s.len(),
            _ => 0..0,
        }
    };
    let version = line.version;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut hosts = 0usize;
    let mut host_field = None;
    let mut keep_alive = version == 1;
    let mut expect_continue = false;
    for h in fields.iter() {
        // RFC 9110 §5.5: CR, LF and NUL in a value MUST be refused (httparse does); the other
        // controls are no field-vchar either.
        if has_control(h.value) {
            return Err(smuggling(
                "malformed header field: control character in a value",
            ));
        }
        let value = trim(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some() {
                return Err(smuggling("repeated Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if transfer_encoding.is_some() {
                return Err(smuggling("repeated Transfer-Encoding"));
            }
            transfer_encoding = Some(value);
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_field = Some(offset(value));
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
    // Framing first: these close the connection whatever else is wrong.
    let chunked = match transfer_encoding {
        None => false,
        // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty.
        Some(_) if version == 0 => {
            return Err(smuggling("Transfer-Encoding in an HTTP/1.0 request"))
        }
        Some(te) => {
            check_transfer_codings(te)?;
            true
        }
    };
    if chunked && content_length.is_some() {
        return Err(smuggling(
            "both Content-Length and Transfer-Encoding are present",
        ));
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
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any request with more
    // than one or with an invalid one.
    if hosts > 1 {
        return Err(smuggling("more than one Host header"));
    }
    if let Some(range) = &host_field {
        if !valid_authority(&buf[range.clone()], false, false) {
            return Err(GatewayError::new(
                ErrorKind::InvalidRequest,
                "invalid Host header: expected host[:port]",
            ));
        }
    } else if version == 1 {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    let mut target = line.path_query.clone();
    // `http://host` and `http://host?q` have the path `/` (RFC 9112 §3.2.2); it is kept after
    // the head, then the field table, so every range stays an offset into one allocation.
    let add_slash = line.form == TargetForm::Absolute && buf.get(target.start) != Some(&b'/');
    let extra = if add_slash { 1 + target.len() } else { 0 };
    let mut raw = Vec::with_capacity(len + extra + fields.len() * FieldTable::ENTRY);
    raw.extend_from_slice(&buf[..len]);
    if add_slash {
        let at = raw.len();
        raw.push(b'/');
        raw.extend_from_slice(&buf[target.clone()]);
        target = at..raw.len();
    }
    let table = fields
        .iter()
        .map(|h| (offset(h.name.as_bytes()), offset(h.value)));
    let Some(headers) = FieldTable::append(&mut raw, table) else {
        return Err(too_large_head(limits));
    };
    let path_end =
        memchr::memchr(b'?', &raw[target.clone()]).map_or(target.end, |i| target.start + i);
    Ok(Some((
        RequestHead {
            method: line.method,
            target,
            path_end,
            raw_target: line.target,
            authority: line.authority,
            host_field,
            form: line.form,
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

/// Whether a field value holds a control byte other than HTAB (DEL included). Written without
/// an early exit so that it compiles to a vector loop: every request's every value crosses it.
fn has_control(value: &[u8]) -> bool {
    value.iter().fold(false, |seen, &b| {
        seen | ((b < 0x20 && b != b'\t') | (b == 0x7f))
    })
}

/// RFC 9112 §6.1 and §7: the codings of a request's Transfer-Encoding. Chunked must be the
/// final one (else 400 and close), applied once; any other coding is one we do not implement
/// (501). Empty list elements are ignored (RFC 9110 §5.6.1).
fn check_transfer_codings(te: &[u8]) -> Result<(), GatewayError> {
    let codings: Vec<&[u8]> = te
        .split(|b| *b == b',')
        .map(trim)
        .filter(|c| !c.is_empty())
        .collect();
    match codings.split_last() {
        Some((last, others)) if last.eq_ignore_ascii_case(b"chunked") => {
            if others.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) {
                return Err(smuggling("chunked applied more than once"));
            }
            if !others.is_empty() {
                return Err(GatewayError::new(
                    ErrorKind::NotImplemented,
                    "only `Transfer-Encoding: chunked` is supported",
                ));
            }
            Ok(())
        }
        _ => Err(smuggling(
            "chunked must be the final transfer coding of a request",
        )),
    }
}

/// Fields parsed into stack slots before a head with more gets all `MAX_HEADERS` (an SDK
/// sends some 17).
const FIRST_SLOTS: usize = 32;

/// RFC 9112 §3: a request-target longer than we parse is a 414, not a 431.
// Cold, as the other errors here: out of line, so the parser every request crosses stays
// small (fewer instruction cache lines).
#[cold]
#[inline(never)]
fn uri_too_long(limits: &HeadLimits) -> GatewayError {
    GatewayError::new(
        ErrorKind::UriTooLong,
        format!("request line exceeds {} bytes", limits.max_header_bytes),
    )
}

#[cold]
#[inline(never)]
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
#[cold]
#[inline(never)]
pub fn too_large_body(limits: &HeadLimits) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("request body exceeds {} bytes", limits.max_body_bytes),
    )
}
