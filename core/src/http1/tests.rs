//! Unit tests of the HTTP/1 framing.

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
    assert_eq!(head.query(), Some("a=1"));
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
    // A request line that never ends within the limit: its target is too long (414).
    let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
    assert_eq!(kind(&long_target), ErrorKind::UriTooLong);
    let unfinished = format!("GET /{}", "a".repeat(2000));
    assert_eq!(kind(&unfinished), ErrorKind::UriTooLong);
    assert_eq!(ErrorKind::UriTooLong.status(), 414);
    assert!(ErrorKind::UriTooLong.closes_connection());
}

/// A head of `n` fields `x-k: k`, Host first; `end` closes it.
fn head_with_fields(n: usize, end: bool) -> String {
    let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for k in 1..n {
        s.push_str(&format!("x-{k}: {k}\r\n"));
    }
    if end {
        s.push_str("\r\n");
    }
    s
}

#[test]
fn heads_with_more_fields_than_the_first_slots_parse_whole() {
    let limits = HeadLimits {
        max_header_bytes: 8192,
        max_body_bytes: 1 << 20,
    };
    // Around the stack slots tried first (32), and up to the limit.
    for n in [1, 31, 32, 33, 64, MAX_HEADERS] {
        let text = head_with_fields(n, true);
        let (head, len) = parse_request_head(text.as_bytes(), &limits)
            .unwrap()
            .unwrap();
        assert_eq!(len, text.len(), "{n} fields");
        assert_eq!(head.headers().count(), n);
        assert_eq!(head.header("host"), Some(&b"x"[..]));
        if n > 1 {
            let last = (n - 1).to_string();
            assert_eq!(head.header(&format!("x-{last}")), Some(last.as_bytes()));
        }
        // Unfinished, it waits for more, whatever the count.
        let partial = head_with_fields(n, false);
        assert!(parse_request_head(partial.as_bytes(), &limits)
            .unwrap()
            .is_none());
    }
    let over = head_with_fields(MAX_HEADERS + 1, true);
    let err = parse_request_head(over.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.kind, ErrorKind::HeadersTooLarge);
    let over = head_with_fields(MAX_HEADERS + 1, false);
    let err = parse_request_head(over.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.kind, ErrorKind::HeadersTooLarge);
}

#[test]
fn response_heads_keep_every_field_up_to_the_limit() {
    for n in [0, 1, 33, MAX_HEADERS] {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for k in 0..n {
            text.push_str(&format!("x-{k}: {k}\r\n"));
        }
        text.push_str("\r\n");
        let (h, len) = parse_response_head(text.as_bytes(), 8192, false)
            .unwrap()
            .unwrap();
        assert_eq!(len, text.len());
        assert_eq!(h.headers().count(), n);
        if n > 0 {
            let last = (n - 1).to_string();
            assert_eq!(h.header(&format!("x-{last}")), Some(last.as_bytes()));
        }
        // Unfinished: more to read.
        assert!(
            parse_response_head(&text.as_bytes()[..len - 2], 8192, false)
                .unwrap()
                .is_none()
        );
    }
    let mut over = String::from("HTTP/1.1 200 OK\r\n");
    for k in 0..=MAX_HEADERS {
        over.push_str(&format!("x-{k}: {k}\r\n"));
    }
    over.push_str("\r\n");
    assert!(parse_response_head(over.as_bytes(), 8192, false).is_err());
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
    let (h, _) = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);
    let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive);
    let (h, _) = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.keep_alive);
    let (h, _) = parse(
        "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
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

/// The accessors that skip the UTF-8 check (`proven_ascii`) give exactly the bytes of the
/// head, on every target form, with and without a query, and on bytes the parser refuses
/// (which never reach them).
#[test]
fn accessors_of_parsed_heads_are_their_bytes() {
    let cases = [
        (
            "POST /v1/chat/completions?a=1&b=%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n",
            "/v1/chat/completions",
            "/v1/chat/completions?a=1&b=%C3%A9",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Weird_Name!: \u{e9}\r\n\r\n",
            "/v1/models",
            "/v1/models",
        ),
        (
            "GET http://h:8080 HTTP/1.1\r\nHost: h:8080\r\n\r\n",
            "/",
            "/",
        ),
        ("GET http://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", "/", "/?q=1"),
        ("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*", "*"),
        ("M-SEARCH /? HTTP/1.0\r\n\r\n", "/", "/?"),
        (
            "GET /v1/x?a?b=? HTTP/1.1\r\nHost: x\r\n\r\n",
            "/v1/x",
            "/v1/x?a?b=?",
        ),
    ];
    for (raw, path, target) in cases {
        let (head, _) = parse_request_head(raw.as_bytes(), &LIMITS)
            .unwrap()
            .unwrap();
        let line = raw.split("\r\n").next().unwrap();
        let mut parts = line.split(' ');
        assert_eq!(head.method(), parts.next().unwrap(), "{raw}");
        assert_eq!(head.raw_target(), parts.next().unwrap(), "{raw}");
        assert_eq!(head.path(), path, "{raw}");
        assert_eq!(head.target(), target, "{raw}");
        // The query is what follows the target's first `?`, as `split_once` finds it.
        let query = target.split_once('?').map(|(_, q)| q);
        assert_eq!(head.query(), query, "{raw}");
        for (name, _) in head.headers() {
            assert!(raw.contains(&format!("\r\n{name}:")), "{raw}: {name}");
        }
    }
    // Bytes outside ASCII in the line never make a head.
    for bad in [
        "G\u{e9}T / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: \xff\r\n\r\n";
    let (head, _) = parse_response_head(resp, 1024, false).unwrap().unwrap();
    let names: Vec<&str> = head.headers().map(|(n, _)| n).collect();
    assert_eq!(names, ["Content-Length", "X-A"]);
}

/// RFC 9110 §5.5: a control byte in a field value (other than HTAB) is refused, wherever it
/// sits in a value of any length; HTAB and obs-text are kept.
#[test]
fn control_bytes_in_values_are_refused() {
    for len in [0usize, 1, 15, 16, 17, 40] {
        for ctl in [0x01u8, 0x0b, 0x0c, 0x1f, 0x7f] {
            let mut raw =
                format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}", "v".repeat(len)).into_bytes();
            raw.push(ctl);
            raw.extend_from_slice(b"w\r\n\r\n");
            let got = parse_request_head(&raw, &LIMITS);
            assert!(got.is_err(), "{len} {ctl:#x}");
        }
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\tw\u{e9}\r\n\r\n",
            "v".repeat(len)
        );
        let (head, _) = parse(&raw).unwrap().unwrap();
        // (A value starting with HTAB loses it: white space around a value is not part of it.)
        assert_eq!(
            head.header("x-a").unwrap().len(),
            len + 3 + usize::from(len > 0)
        );
    }
}

#[test]
fn hop_by_hop_names_are_the_ten_in_any_case() {
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
    for h in HOP {
        assert!(super::is_hop_by_hop(h), "{h}");
        assert!(super::is_hop_by_hop(&h.to_ascii_uppercase()), "{h}");
    }
    for other in [
        "",
        "t",
        "tE-",
        "hosts",
        "content-type",
        "accept",
        "authorization",
        "x-request-id",
        "keep_alive",
        "upgrade-insecure-requests",
        "trailers",
        "expected",
        "connections",
    ] {
        assert!(!super::is_hop_by_hop(other), "{other}");
    }
}
