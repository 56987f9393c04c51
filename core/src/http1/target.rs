//! The request line (RFC 9112 §3) and the grammar of authorities, for the absolute-form target
//! and the `Host` field (RFC 9110 §7.2, RFC 3986 §3.2).
//!
//! Error messages here never quote what the client sent: they name the rule that failed.

use std::ops::Range;

use super::{is_tchar, smuggling};
use crate::error::{ErrorKind, GatewayError};

/// The four forms of request-target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`, what every client sends to an origin server.
    Origin,
    /// `http://host/path?query`: the authority wins over the `Host` field (RFC 9112 §3.2.2).
    Absolute,
    /// `host:port`, only with `CONNECT`.
    Authority,
    /// `*`, only with `OPTIONS`.
    Asterisk,
}

/// A parsed request line; every range is an offset into the buffer it came from.
#[derive(Clone, Debug)]
pub(super) struct RequestLine {
    pub method: Range<usize>,
    /// The target as sent.
    pub target: Range<usize>,
    /// The path and query of the target: all of it in origin-form, the part after the
    /// authority in absolute-form (possibly empty, or starting with `?`: the path is then `/`).
    pub path_query: Range<usize>,
    /// The authority of an absolute-form target.
    pub authority: Option<Range<usize>>,
    pub form: TargetForm,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1 (and for a higher minor version, RFC 9110 §2.5).
    pub version: u8,
    /// Where the header section starts (just after the request line's LF).
    pub end: usize,
}

fn invalid(msg: &str) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, msg)
}

/// Parses the request line at the start of `buf`, skipping empty lines before it (RFC 9112
/// §2.2). `Ok(None)` while the line is incomplete and what is there could still be valid.
// Longer than ~100 lines on purpose: the request line's grammar (method, one SP, the four
// request-target forms, one SP, version) read in one pass, each form a block with its test.
pub(super) fn parse_request_line(buf: &[u8]) -> Result<Option<RequestLine>, GatewayError> {
    let mut start = 0;
    loop {
        match &buf[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            [] | [b'\r'] => return Ok(None),
            _ => break,
        }
    }
    let Some(lf) = memchr::memchr(b'\n', &buf[start..]) else {
        // Refuse a line that cannot become a request (a TLS hello, binary junk) at once
        // instead of waiting for a line feed or the head limit.
        let method_so_far = buf[start..].split(|b| *b == b' ').next().unwrap_or(&[]);
        if !method_so_far.iter().copied().all(is_tchar) {
            return Err(smuggling("malformed request line"));
        }
        return Ok(None);
    };
    let end = start + lf + 1;
    // CRLF, or a bare LF (RFC 9112 §2.2 lets a recipient accept one); a CR anywhere else is a
    // bare CR, which the component checks below refuse.
    let line_end = if lf > 0 && buf[start + lf - 1] == b'\r' {
        start + lf - 1
    } else {
        start + lf
    };
    let line = &buf[start..line_end];
    // method SP request-target SP HTTP-version, single spaces (RFC 9112 §3).
    let mut parts = line.splitn(3, |b| *b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(smuggling("malformed request line"));
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        return Err(smuggling(
            "malformed request line: the method is not a token",
        ));
    }
    if target.is_empty() {
        return Err(smuggling(
            "malformed request line: one space between the parts",
        ));
    }
    let version = parse_version(version)?;
    let method_range = start..start + method.len();
    let target_start = method_range.end + 1;
    let target_range = target_start..target_start + target.len();
    if !target
        .iter()
        .all(|b| (0x21..=0x7e).contains(b) && *b != b'#')
    {
        return Err(invalid(
            "malformed request-target: only visible ASCII, and no fragment",
        ));
    }
    let mut path_query = target_range.clone();
    let mut authority = None;
    let form = if method == b"CONNECT" {
        if !valid_authority(target, true, true) {
            return Err(invalid(
                "CONNECT needs an authority-form target (host:port)",
            ));
        }
        TargetForm::Authority
    } else if target == b"*" {
        if method != b"OPTIONS" {
            return Err(invalid("the asterisk-form target is only for OPTIONS"));
        }
        TargetForm::Asterisk
    } else if target[0] == b'/' {
        TargetForm::Origin
    } else {
        let after_scheme = strip_prefix_ignore_case(target, b"http://")
            .or_else(|| strip_prefix_ignore_case(target, b"https://"))
            .ok_or_else(|| {
                invalid("the request-target must be origin-form or an http(s) absolute-form URI")
            })?;
        let auth_len = after_scheme
            .iter()
            .position(|b| matches!(b, b'/' | b'?'))
            .unwrap_or(after_scheme.len());
        // RFC 9110 §4.2.1: an http URI with an empty host MUST be rejected; userinfo is an
        // error too (§4.2.4), and `valid_authority` has no room for an `@`.
        if !valid_authority(&after_scheme[..auth_len], true, false) {
            return Err(invalid(
                "invalid authority in the absolute-form target (empty host, userinfo, or bad characters)",
            ));
        }
        let auth_start = target_range.end - after_scheme.len();
        authority = Some(auth_start..auth_start + auth_len);
        path_query = auth_start + auth_len..target_range.end;
        TargetForm::Absolute
    };
    Ok(Some(RequestLine {
        method: method_range,
        target: target_range,
        path_query,
        authority,
        form,
        version,
        end,
    }))
}

/// `HTTP-version = HTTP-name "/" DIGIT "." DIGIT`, case-sensitive (RFC 9112 §2.3).
fn parse_version(v: &[u8]) -> Result<u8, GatewayError> {
    let [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] = *v else {
        return Err(smuggling("malformed request line: bad HTTP-version"));
    };
    if !major.is_ascii_digit() || !minor.is_ascii_digit() {
        return Err(smuggling("malformed request line: bad HTTP-version"));
    }
    if major != b'1' {
        // 505 would name it better; 400 is what RFC 9110 §15.5.1 allows for any malformed
        // request, and the error kinds have no 505.
        return Err(invalid(&format!(
            "HTTP/{}.{} is not supported: this listener speaks HTTP/1.1",
            major as char, minor as char
        )));
    }
    Ok(u8::from(minor != b'0'))
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `authority` without userinfo: `host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3), the grammar of
/// the `Host` field (RFC 9110 §7.2). An empty host is valid in `Host` unless `host_required`.
pub(super) fn valid_authority(a: &[u8], host_required: bool, port_required: bool) -> bool {
    let (host, port) = if a.first() == Some(&b'[') {
        let Some(close) = a.iter().position(|b| *b == b']') else {
            return false;
        };
        let inner = &a[1..close];
        let literal_ok = !inner.is_empty()
            && if matches!(inner[0], b'v' | b'V') {
                // IPvFuture: "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
                inner[1..]
                    .iter()
                    .all(|b| is_unreserved(*b) || is_sub_delim(*b) || *b == b':')
            } else {
                inner
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            };
        if !literal_ok {
            return false;
        }
        match &a[close + 1..] {
            [] => (&a[..=close], None),
            [b':', port @ ..] => (&a[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match a.iter().position(|b| *b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    if host_required && host.is_empty() {
        return false;
    }
    if host.first() != Some(&b'[') && !valid_reg_name(host) {
        return false;
    }
    match port {
        Some(p) => p.iter().all(u8::is_ascii_digit) && !(port_required && p.is_empty()),
        None => !port_required,
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`; an IPv4 address is one too.
fn valid_reg_name(h: &[u8]) -> bool {
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        if b == b'%' {
            let hex = h.get(i + 1..i + 3);
            if !hex.is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(b) || is_sub_delim(b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}
