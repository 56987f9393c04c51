//! Every MUST of RFC 9112 §2–§7 and RFC 9110 §5 that a server has, one test each, against the
//! public `sluice_core::http1` API. The checklist in `core/src/http1/mod.rs` names these tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_core::error::ErrorKind;
use sluice_core::http1::{
    parse_request_head, BodyFraming, ChunkedDecoder, ChunkedError, HeadLimits, RequestHead,
    TargetForm, MAX_CHUNK_EXT_BYTES, MAX_TRAILER_BYTES,
};

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 * 1024,
    max_body_bytes: 1 << 20,
};

fn ok(raw: &[u8]) -> RequestHead {
    match parse_request_head(raw, &LIMITS) {
        Ok(Some((head, len))) => {
            assert_eq!(len, raw.len(), "{:?}", String::from_utf8_lossy(raw));
            head
        }
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

/// The error kind and status `raw` is refused with; the message never quotes the input.
fn refused(raw: &[u8]) -> (ErrorKind, u16) {
    match parse_request_head(raw, &LIMITS) {
        Err(e) => {
            assert!(e.message.len() < 120, "long message: {}", e.message);
            (e.kind, e.status())
        }
        other => panic!("{:?} accepted: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn status(raw: &[u8]) -> u16 {
    refused(raw).1
}

fn decode(body: &[u8]) -> Result<(Vec<u8>, bool), ChunkedError> {
    let mut d = ChunkedDecoder::new(1 << 20);
    let mut out = Vec::new();
    let (n, done) = d.decode_into(body, &mut out)?;
    assert!(!done || n <= body.len());
    Ok((out, done))
}

// §2.2 Message parsing

#[test]
fn bare_lf_line_endings_are_accepted() {
    let h = ok(b"GET /v1/models HTTP/1.1\nHost: x\n\n");
    assert_eq!(h.path(), "/v1/models");
}

#[test]
fn empty_lines_before_the_request_line_are_ignored() {
    let h = ok(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.method(), "GET");
}

#[test]
fn bare_cr_is_refused() {
    assert_eq!(status(b"GET /\r HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\rHost: x\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"), 400);
}

#[test]
fn whitespace_between_start_line_and_first_field_is_refused() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n Host: x\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\n\tHost: x\r\n\r\n"), 400);
}

#[test]
fn garbage_is_refused_before_a_line_feed() {
    // A TLS ClientHello on the plain port: refused at once, not after the header timeout.
    assert!(parse_request_head(b"\x16\x03\x01\x02\x00\x01", &LIMITS).is_err());
    assert!(parse_request_head(b"POS", &LIMITS).unwrap().is_none());
}

// §3 Request line

#[test]
fn method_is_a_token() {
    for raw in [
        &b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(
        ok(b"M-SEARCH / HTTP/1.1\r\nHost: x\r\n\r\n").method(),
        "M-SEARCH"
    );
}

#[test]
fn request_line_parts_are_separated_by_one_space() {
    for raw in [
        &b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
        b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn http_version_syntax_is_exact() {
    for v in [
        "http/1.1",
        "HTTP/1.10",
        "HTTP/1",
        "HTTP/11.1",
        "HTTP/1.x",
        "HTTP/ 1.1",
    ] {
        let raw = format!("GET / {v}\r\nHost: x\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 400, "{v}");
    }
}

#[test]
fn major_version_other_than_1_is_refused() {
    for v in ["HTTP/2.0", "HTTP/0.9", "HTTP/3.0"] {
        let raw = format!("GET / {v}\r\nHost: x\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            (ErrorKind::InvalidRequest, 400),
            "{v}"
        );
    }
    // The HTTP/2 connection preface, sent to an HTTP/1 listener.
    assert_eq!(status(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400);
}

#[test]
fn higher_minor_version_is_read_as_1_1() {
    let h = ok(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n");
    assert_eq!(h.version, 1);
    assert!(h.keep_alive);
    assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").version, 0);
}

#[test]
fn origin_form_is_accepted() {
    let h = ok(b"POST /v1/chat/completions?a=1&b=%20 HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(h.target_form(), TargetForm::Origin);
    assert_eq!(h.target(), "/v1/chat/completions?a=1&b=%20");
    assert_eq!(h.raw_target(), h.target());
    assert_eq!(h.path(), "/v1/chat/completions");
    assert_eq!(h.host(), Some("gw"));
}

#[test]
fn absolute_form_is_accepted_and_its_authority_wins_over_host() {
    let h = ok(b"GET http://api.example:8080/v1/models?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(h.target_form(), TargetForm::Absolute);
    assert_eq!(h.target(), "/v1/models?x=1");
    assert_eq!(h.path(), "/v1/models");
    assert_eq!(h.host(), Some("api.example:8080"));
    assert_eq!(h.raw_target(), "http://api.example:8080/v1/models?x=1");
    let h = ok(b"GET HTTPS://[::1]/v1/models HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!((h.path(), h.host()), ("/v1/models", Some("[::1]")));
}

#[test]
fn absolute_form_without_a_path_has_path_slash() {
    let h = ok(b"GET http://api.example HTTP/1.1\r\nHost: api.example\r\n\r\n");
    assert_eq!(h.target(), "/");
    let h = ok(b"GET http://api.example?q=1 HTTP/1.1\r\nHost: api.example\r\nX: y\r\n\r\n");
    assert_eq!((h.target(), h.path()), ("/?q=1", "/"));
    assert_eq!(h.header("x"), Some(&b"y"[..]));
}

#[test]
fn absolute_form_with_empty_host_userinfo_or_other_scheme_is_refused() {
    for t in [
        "http:///v1/models",
        "http://:80/v1/models",
        "http://user@api.example/v1/models",
        "http://user:pw@api.example/",
        "ftp://api.example/v1/models",
        "http:/v1/models",
        "http://api.example:8x/",
    ] {
        let raw = format!("GET {t} HTTP/1.1\r\nHost: api.example\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 400, "{t}");
    }
}

#[test]
fn authority_form_is_only_for_connect() {
    assert_eq!(
        status(b"GET api.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
        400
    );
    assert_eq!(status(b"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(
        status(b"CONNECT api.example HTTP/1.1\r\nHost: x\r\n\r\n"),
        400
    );
    // A well-formed CONNECT: we open no tunnels.
    assert_eq!(
        refused(b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n"),
        (ErrorKind::NotImplemented, 501)
    );
}

#[test]
fn asterisk_form_is_only_for_options() {
    let h = ok(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((h.target_form(), h.target()), (TargetForm::Asterisk, "*"));
    assert_eq!(status(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

#[test]
fn request_target_is_visible_ascii_without_fragment() {
    for raw in [
        &b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert_eq!(status(raw), 400, "{:?}", String::from_utf8_lossy(raw));
    }
}

// §3.2 Host

#[test]
fn http11_request_without_host_is_400() {
    assert_eq!(
        refused(b"GET /v1/models HTTP/1.1\r\n\r\n"),
        (ErrorKind::InvalidRequest, 400)
    );
    // Also in absolute-form: the rule has no exception.
    assert_eq!(status(b"GET http://a/v1/models HTTP/1.1\r\n\r\n"), 400);
}

#[test]
fn http10_request_without_host_is_accepted() {
    let h = ok(b"GET /v1/models HTTP/1.0\r\n\r\n");
    assert_eq!(h.host(), None);
}

#[test]
fn more_than_one_host_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), 400);
}

#[test]
fn invalid_host_value_is_400() {
    for v in [
        "a b",
        "user@a.example",
        "a.example:8x",
        "a.example:80:80",
        "[::1",
        "[::1]x",
        "[zz::1]",
        "a.example/path",
        "a%zz.example",
        "a_\"b",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            (ErrorKind::InvalidRequest, 400),
            "{v}"
        );
    }
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n"), 400);
}

#[test]
fn valid_host_values_are_accepted() {
    for v in [
        "a.example",
        "a.example:8080",
        "127.0.0.1:1",
        "[::1]",
        "[::1]:8080",
        "[v1.fe80::a+en1]",
        "xn--bcher-kva.example",
        "caf%C3%A9.example",
        "",
        "a.example:",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
        assert_eq!(ok(raw.as_bytes()).host(), Some(v), "{v}");
    }
}

// §5 Field syntax (and RFC 9110 §5)

#[test]
fn field_name_is_a_token() {
    for line in ["Bad Name: x", "B(d: x", ": x", "B\"d: x", "nocolon"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 400, "{line}");
    }
}

#[test]
fn whitespace_between_field_name_and_colon_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: y\r\n\r\n"),
        400
    );
}

#[test]
fn obs_fold_is_400() {
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n"),
        400
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n"),
        400
    );
}

#[test]
fn nul_cr_lf_and_controls_in_field_values_are_400() {
    for v in [&b"a\x00b"[..], b"a\rb", b"a\x01b", b"a\x1bb", b"a\x7fb"] {
        let raw = [&b"GET / HTTP/1.1\r\nHost: x\r\nX: "[..], v, b"\r\n\r\n"].concat();
        assert_eq!(status(&raw), 400, "{v:?}");
    }
    // obs-text and HTAB are field content.
    let h = ok(b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\tok\r\n\r\n");
    assert_eq!(h.header("x"), Some("caf\u{e9}\tok".as_bytes()));
}

#[test]
fn field_names_are_case_insensitive() {
    let h = ok(b"POST / HTTP/1.1\r\nhOsT: x\r\nCONTENT-length: 2\r\n\r\n");
    assert_eq!(h.body, BodyFraming::Length(2));
    assert_eq!(h.header("Content-Length"), Some(&b"2"[..]));
    assert_eq!(h.host(), Some("x"));
}

#[test]
fn field_values_are_trimmed_of_whitespace() {
    let h = ok(b"POST / HTTP/1.1\r\nHost: \t x \t\r\nContent-Length:  \t7 \r\nX: a b  \r\n\r\n");
    assert_eq!(h.host(), Some("x"));
    assert_eq!(h.body, BodyFraming::Length(7));
    assert_eq!(h.header("x"), Some(&b"a b"[..]));
}

#[test]
fn list_fields_ignore_empty_elements() {
    let h = ok(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: , keep-alive ,, close,\r\n\r\n");
    assert!(!h.keep_alive);
    let h = ok(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked,\r\n\r\n");
    assert_eq!(h.body, BodyFraming::Chunked);
}

// §6 Message body

#[test]
fn transfer_encoding_whose_final_coding_is_not_chunked_is_400() {
    for te in ["gzip", "chunked, gzip", "", "chunked;x=1", "identity"] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            (ErrorKind::RequestSmuggling, 400),
            "{te:?}"
        );
    }
}

#[test]
fn chunked_applied_twice_is_400() {
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        400
    );
}

#[test]
fn unknown_coding_before_chunked_is_501() {
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        (ErrorKind::NotImplemented, 501)
    );
}

#[test]
fn transfer_encoding_in_http10_is_faulty_framing() {
    for te in ["chunked", "gzip", "gzip, chunked"] {
        let raw =
            format!("POST / HTTP/1.0\r\nTransfer-Encoding: {te}\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            (ErrorKind::RequestSmuggling, 400),
            "{te}"
        );
    }
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (ErrorKind::RequestSmuggling, 400)
    );
}

#[test]
fn invalid_content_length_is_400() {
    for cl in ["-1", "+1", "1,1", "0x10", "1 1", "", "99999999999999999999"] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(
            refused(raw.as_bytes()),
            (ErrorKind::RequestSmuggling, 400),
            "{cl:?}"
        );
    }
}

#[test]
fn no_length_and_no_coding_means_no_body() {
    assert_eq!(
        ok(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").body,
        BodyFraming::Empty
    );
}

// §7 Chunked transfer coding

#[test]
fn chunk_size_is_hex_and_bounded() {
    assert_eq!(
        decode(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().0,
        b"0123456789"
    );
    assert_eq!(decode(b"g\r\n").unwrap_err(), ChunkedError::BadSize);
    assert_eq!(decode(b"-1\r\n").unwrap_err(), ChunkedError::BadSize);
    assert_eq!(decode(b"0x5\r\n").unwrap_err(), ChunkedError::BadSize);
    assert_eq!(
        decode(b"10000000000000000\r\n").unwrap_err(),
        ChunkedError::BadSize
    );
}

#[test]
fn chunk_data_ends_in_crlf() {
    assert_eq!(
        decode(b"1\r\nab\r\n").unwrap_err(),
        ChunkedError::BadFraming
    );
    assert_eq!(
        decode(b"1\r\na\n0\r\n\r\n").unwrap_err(),
        ChunkedError::BadFraming
    );
    assert_eq!(decode(b"1\ra").unwrap_err(), ChunkedError::BadFraming);
}

#[test]
fn chunk_extensions_follow_their_grammar_and_are_ignored() {
    for ok_ext in [
        &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=b\r\nhello\r\n0\r\n\r\n",
        b"5;a=b;c;d=\"e f\"\r\nhello\r\n0\r\n\r\n",
        b"5 ; a = \"q \\\" x\" ; b\r\nhello\r\n0\r\n\r\n",
        b"5\t;a=1\r\nhello\r\n0;last=1\r\n\r\n",
    ] {
        let (body, done) = decode(ok_ext).unwrap_or_else(|e| panic!("{ok_ext:?}: {e}"));
        assert_eq!((body.as_slice(), done), (&b"hello"[..], true), "{ok_ext:?}");
    }
    for bad in [
        &b"5;\r\n"[..],
        b"5;=b\r\n",
        b"5;a=\r\n",
        b"5;a=\"open\r\n",
        b"5;a=b c\r\n",
        b"5 \r\n",
        b"5;a \r\n",
        b"5;a\x00\r\n",
        b"5;a=\"x\x01\"\r\n",
        b"5;a=b\"\r\n",
        b"5;a,b\r\n",
    ] {
        assert_eq!(
            decode(bad).unwrap_err(),
            ChunkedError::BadExtension,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn chunk_extensions_are_bounded() {
    let n = MAX_CHUNK_EXT_BYTES as usize;
    let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(n));
    assert_eq!(
        decode(long.as_bytes()).unwrap_err(),
        ChunkedError::ExtensionsTooLong
    );
    // All chunks together: small extensions add up once they outweigh the body.
    let many = "1;abcdefghijklmnop\r\nx\r\n".repeat(n / 8);
    assert_eq!(
        decode(many.as_bytes()).unwrap_err(),
        ChunkedError::ExtensionsTooLong
    );
    // A long stream whose extensions stay smaller than its data never trips the bound.
    let chunk = format!("40;id=1234567890\r\n{}\r\n", "d".repeat(64));
    let stream = format!("{}0\r\n\r\n", chunk.repeat(4 * n / 16));
    let (body, done) = decode(stream.as_bytes()).unwrap();
    assert!(done && body.len() == 64 * 4 * n / 16);
}

#[test]
fn trailer_fields_follow_the_field_grammar() {
    let (body, done) = decode(b"1\r\nx\r\n0\r\nX-T: 1\r\nY:\r\nZ:  a b \r\n\r\n").unwrap();
    assert_eq!((body.as_slice(), done), (&b"x"[..], true));
    for bad in [
        &b"0\r\nX-T : 1\r\n\r\n"[..],
        b"0\r\n folded\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n: v\r\n\r\n",
        b"0\r\nnocolon\r\n\r\n",
        b"0\r\nX: a\nb\r\n\r\n",
        b"0\r\nB(d: v\r\n\r\n",
        b"0\r\n\n",
    ] {
        assert_eq!(
            decode(bad).unwrap_err(),
            ChunkedError::BadTrailer,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        decode(b"0\r\nX: a\rb\r\n\r\n").unwrap_err(),
        ChunkedError::BadFraming
    );
}

#[test]
fn trailer_section_is_bounded() {
    let mut body = b"0\r\n".to_vec();
    while body.len() < MAX_TRAILER_BYTES + 64 {
        body.extend_from_slice(b"X-Trailer: 0123456789abcdef\r\n");
    }
    body.extend_from_slice(b"\r\n");
    assert_eq!(decode(&body).unwrap_err(), ChunkedError::TrailersTooLarge);
}

#[test]
fn last_chunk_is_one_or_more_zeros() {
    let (body, done) = decode(b"000;x=y\r\n\r\nNEXT").unwrap();
    assert!(body.is_empty() && done);
}

// Bounded echo

#[test]
fn errors_never_quote_the_request() {
    let marker = "Q".repeat(64 * 1024);
    for raw in [
        format!("GET /{marker} HTTP/2.0\r\nHost: x\r\n\r\n"),
        format!("GET /{marker} HTTP/1.1\r\nHost: {marker} y\r\n\r\n"),
        format!("G{marker}( / HTTP/1.1\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: x\r\n{marker} : y\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {marker}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: {marker}\r\n\r\n"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nExpect: {marker}\r\n\r\n"),
        format!("GET {marker}:1 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ] {
        let limits = HeadLimits {
            max_header_bytes: 1 << 20,
            max_body_bytes: 1 << 20,
        };
        let e = parse_request_head(raw.as_bytes(), &limits).unwrap_err();
        assert!(!e.message.contains("QQ"), "{}", e.message);
        assert!(e.to_json().len() < 1024);
    }
}
