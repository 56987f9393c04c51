//! HTTP/1.1 framing, sans-IO: request heads (with the smuggling rules), response heads, and a
//! streaming chunked-body decoder.
//!
//! The request line is parsed here (`target`); httparse tokenises the header section; this
//! module owns the rules a server must add on top: exactly one way to frame a body, bounded
//! sizes, no obsolete line folding. Anything ambiguous about framing is refused with
//! [`ErrorKind::RequestSmuggling`] and the connection is closed, because a proxy and its
//! upstream that disagree on where a request ends can be made to smuggle one. Error messages
//! name the rule that failed and never quote the request.
//!
//! # RFC 9112 / RFC 9110 §5 checklist (server side)
//!
//! Rule → where it is enforced → the test in `core/tests/rfc9112.rs` that proves it. "400"
//! is `InvalidRequest` or `RequestSmuggling` (both 400; every head error closes the
//! connection in the proxy).
//!
//! | Rule | Where | Test |
//! |---|---|---|
//! | §2.2 CRLF ends a line; a bare LF MAY be accepted | `target::parse_request_line`, httparse | `bare_lf_line_endings_are_accepted` |
//! | §2.2 SHOULD ignore empty lines before the request line | `target::parse_request_line` | `empty_lines_before_the_request_line_are_ignored` |
//! | §2.2 bare CR MUST be invalid (or replaced by SP) → 400 | request line checks, httparse, `ChunkedDecoder` | `bare_cr_is_refused`, `trailer_fields_follow_the_field_grammar` |
//! | §2.2 whitespace between start-line and first field MUST be rejected (or the lines skipped) → 400 | httparse `parse_headers` | `whitespace_between_start_line_and_first_field_is_refused` |
//! | §2.2 SHOULD 400 and close on input that is not HTTP | `target::parse_request_line` (even before LF) | `garbage_is_refused_before_a_line_feed` |
//! | §3 method is a token | `target::parse_request_line` | `method_is_a_token` |
//! | §3 exactly one SP between method, target and version | `target::parse_request_line` | `request_line_parts_are_separated_by_one_space` |
//! | §2.3 `HTTP/DIGIT.DIGIT`, case-sensitive | `target::parse_version` | `http_version_syntax_is_exact` |
//! | §2.3 / RFC 9110 §15.6.6 major version ≠ 1 refused: 400 (505 has no `ErrorKind`) | `target::parse_version` | `major_version_other_than_1_is_refused` |
//! | RFC 9110 §2.5 SHOULD read a higher 1.x minor as 1.1 | `target::parse_version` | `higher_minor_version_is_read_as_1_1` |
//! | §3.2.1 origin-form | `target::parse_request_line` | `origin_form_is_accepted` |
//! | §3.2.2 MUST accept absolute-form; its authority wins over `Host` ([`RequestHead::host`]); [`RequestHead::target`] is the origin-form | `target::parse_request_line`, `request::parse_request_head` | `absolute_form_is_accepted_and_its_authority_wins_over_host`, `absolute_form_without_a_path_has_path_slash` |
//! | RFC 9110 §4.2.1/§4.2.4 http URI with empty host MUST be rejected; userinfo is an error | `target::valid_authority` | `absolute_form_with_empty_host_userinfo_or_other_scheme_is_refused` |
//! | §3.2.3 authority-form only with CONNECT (CONNECT itself → 501) | `target::parse_request_line`, `request::parse_request_head` | `authority_form_is_only_for_connect` |
//! | §3.2.4 asterisk-form only with OPTIONS | `target::parse_request_line` | `asterisk_form_is_only_for_options` |
//! | §3.2 / RFC 3986 target is visible ASCII, no fragment (SHOULD 400) | `target::parse_request_line` | `request_target_is_visible_ascii_without_fragment` |
//! | §3.2 HTTP/1.1 request without `Host` MUST → 400 | `request::parse_request_head` | `http11_request_without_host_is_400` |
//! | §3.2 more than one `Host` line MUST → 400 (any version) | `request::parse_request_head` | `more_than_one_host_is_400` |
//! | §3.2 invalid `Host` value MUST → 400 (`uri-host [":" port]`) | `target::valid_authority` | `invalid_host_value_is_400`, `valid_host_values_are_accepted` |
//! | §3.2 HTTP/1.0 without `Host` is fine | `request::parse_request_head` | `http10_request_without_host_is_accepted` |
//! | §5.1 field-name is a token | httparse `parse_headers` | `field_name_is_a_token` |
//! | §5.1 whitespace between field-name and colon MUST → 400 | httparse `parse_headers` | `whitespace_between_field_name_and_colon_is_400` |
//! | §5.2 obs-fold MUST → 400 (or be replaced) | httparse `parse_headers` | `obs_fold_is_400` |
//! | RFC 9110 §5.5 CR, LF, NUL in a value MUST → reject (other CTLs too) | httparse, `request::parse_request_head` | `nul_cr_lf_and_controls_in_field_values_are_400` |
//! | RFC 9110 §5.1 field names are case-insensitive | [`RequestHead::header`], `request::parse_request_head` | `field_names_are_case_insensitive` |
//! | RFC 9110 §5.5 leading/trailing OWS is not part of the value | httparse, `trim` | `field_values_are_trimmed_of_whitespace` |
//! | RFC 9110 §5.6.1 MUST ignore empty list elements | `Connection`, `request::check_transfer_codings` | `list_fields_ignore_empty_elements` |
//! | §6.1 TE whose final coding is not chunked MUST → 400 and close | `request::check_transfer_codings` | `transfer_encoding_whose_final_coding_is_not_chunked_is_400` |
//! | §7 chunked MUST NOT be applied twice → 400 | `request::check_transfer_codings` | `chunked_applied_twice_is_400` |
//! | §6.1 unknown coding SHOULD → 501 | `request::check_transfer_codings` | `unknown_coding_before_chunked_is_501` |
//! | §6.1 TE in HTTP/1.0 MUST be treated as faulty framing → 400, close | `request::parse_request_head` | `transfer_encoding_in_http10_is_faulty_framing` |
//! | §6.3 CL with TE → 400, close (MAY reject; we do) | `request::parse_request_head` | `content_length_with_transfer_encoding_is_400` |
//! | §6.3 invalid CL MUST → 400 (lists, even equal ones, refused) | `parse_content_length` | `invalid_content_length_is_400` |
//! | §6.3 neither CL nor TE: no body | `request::parse_request_head` | `no_length_and_no_coding_means_no_body` |
//! | §7.1 chunk-size is 1*HEXDIG; overflow MUST be handled | [`ChunkedDecoder`] | `chunk_size_is_hex_and_bounded` |
//! | §7.1 chunk-data ends in CRLF | [`ChunkedDecoder`] | `chunk_data_ends_in_crlf` |
//! | §7.1.1 chunk-ext grammar; MUST ignore unknown extensions | `ChunkedDecoder::extension` | `chunk_extensions_follow_their_grammar_and_are_ignored` |
//! | §7.1.1 bound the total length of extensions → 4xx | [`MAX_CHUNK_EXT_BYTES`] per chunk; all together at most that plus the body size | `chunk_extensions_are_bounded` |
//! | §7.1.2 trailer section is field lines; never merged into the header section (discarded) | [`ChunkedDecoder`] | `trailer_fields_follow_the_field_grammar` |
//! | §7.1.2 bounded trailer section | [`MAX_TRAILER_BYTES`] | `trailer_section_is_bounded` |
//! | §7.1 last-chunk is `1*"0" [chunk-ext] CRLF` | [`ChunkedDecoder`] | `last_chunk_is_one_or_more_zeros` |
//! | Errors never quote the request | every `GatewayError` here | `errors_never_quote_the_request` |
//!
//! RFC 9112 §3 "a request-target longer than any URI it wishes to parse MUST get 414": a request
//! line over `max_header_bytes` gets 414 (`partial_head_waits_then_overflows`), the rest of an
//! oversized head 431. Known gap: a major version other than 1 gets 400 (which the RFC allows),
//! not 505.
//! Repeated `Transfer-Encoding` lines are refused rather than combined (stricter, never
//! ambiguous).

mod chunked;
mod fields;
mod request;
mod response;
mod target;
#[cfg(test)]
mod tests;

pub use chunked::{
    begin_chunk, encode_chunk, end_chunk, ChunkedDecoder, ChunkedError, ChunkedStep, LAST_CHUNK,
    MAX_CHUNK_EXT_BYTES, MAX_TRAILER_BYTES,
};
pub use request::{parse_request_head, too_large_body, HeadLimits, RequestHead};
pub use response::{parse_response_head, ResponseHead, UpstreamFramingError};
pub use target::TargetForm;

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

// Cold: every error of the parsers every request crosses is made out of line.
#[cold]
#[inline(never)]
pub(crate) fn smuggling(msg: &str) -> GatewayError {
    GatewayError::new(ErrorKind::RequestSmuggling, msg)
}

/// `tchar` (RFC 9110 §5.6.2): what a method, a field name or a chunk-extension name is made of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes the parser has already proved ASCII (a method token, a request-target, a field
/// name), as `&str`, without checking them again on every call.
///
/// # Safety
///
/// `bytes` must be ASCII: only ranges of a parsed head whose bytes the parser checked byte
/// by byte (`parse_request_line` or httparse: a method is tchars, a request-target bytes in
/// 0x21..=0x7e and the `/` the parser may add, a field name a token), or an empty range.
/// Anything else goes through `std::str::from_utf8`. The heads' fields are private, so only
/// the parser makes those ranges; `tests::accessors_of_parsed_heads_are_their_bytes` checks
/// each accessor against `from_utf8` on heads of every target form, and debug builds check
/// the bytes here.
#[inline]
pub(crate) unsafe fn proven_ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii(), "proven_ascii on non-ASCII bytes");
    // SAFETY: ASCII is valid UTF-8, and the caller guarantees ASCII (see # Safety).
    unsafe { std::str::from_utf8_unchecked(bytes) }
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
///
/// Every forwarded header of every request and answer crosses it: the name's length picks
/// the one or two names it can be, each compared as a constant.
pub fn is_hop_by_hop(name: &str) -> bool {
    let is = |h: &str| name.eq_ignore_ascii_case(h);
    match name.len() {
        2 => is("te"),
        4 => is("host"),
        6 => is("expect"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        14 => is("content-length"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        _ => false,
    }
}
