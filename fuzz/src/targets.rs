//! The fuzz targets: each feeds one input to a sluice-core entry point and asserts its
//! invariants. A panic, in sluice-core or in an `assert!` here, is a finding.
//!
//! Split positions are drawn from a generator seeded by the input itself, so a failing input
//! replays exactly.

use serde_json::Value;
use sluice_core::dialect::{
    translate_request, translate_response, Dialect, Inbound, JsonMap, RequestOptions,
    ResponseContext, StreamTranslator,
};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::estimate::{self, ImageRule};
use sluice_core::http1::{
    begin_chunk, encode_chunk, end_chunk, parse_request_head, parse_response_head, ChunkedDecoder,
    HeadLimits, LAST_CHUNK,
};
use sluice_core::inspect::{estimate_prompt_tokens, inspect, rewrite, Rewrite};
use sluice_core::sse::SseScanner;

use crate::mutate::Shape;
use crate::rng::Rng;

/// A fuzz target.
pub struct Target {
    /// Its name: `--target NAME` and `corpus/NAME/`.
    pub name: &'static str,
    /// Runs one input; panics on a finding.
    pub run: fn(&[u8]),
    /// Input shape, for structure-aware mutation.
    pub shape: Shape,
    /// Tokens the mutator inserts.
    pub dict: &'static [&'static [u8]],
}

const HTTP_DICT: &[&[u8]] = &[
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: 18446744073709551616",
    b"Content-Length: +5",
    b"Content-Length: 5, 5",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, identity",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"Content-Type: text/event-stream",
    b"Host: example.com",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"\r\n",
    b"\n",
    b": ",
    b" chunked",
];

const CHUNKED_DICT: &[&[u8]] = &[
    b"0\r\n\r\n",
    b"\r\n",
    b";ext=1",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"X-Trailer: v",
    b"5\r\nhello\r\n",
];

const JSON_DICT: &[&[u8]] = &[
    b"\"model\":\"gpt-4o\",",
    b"\"stream\":true,",
    b"\"stream_options\":{\"include_usage\":false},",
    b"\"stream_options\":null,",
    b"\"max_tokens\":18446744073709551616,",
    b"\"n\":2,",
    b"\"tools\":[],",
    b"\"model\":\"a\",\"model\":\"b\",",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"[]",
    b"{}",
    b"\"",
];

const SSE_DICT: &[&[u8]] = &[
    b"data: [DONE]",
    b"data: {}",
    b"event: error",
    b"event: message_stop",
    b"event: message_delta",
    b"event: content_block_start",
    b"event: ping",
    b": comment",
    b"data:",
    b"id: 1",
    b"retry: 10",
    b"\"usage\":null",
    b"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}",
    b"\"choices\":[]",
    b"\"finishReason\":\"STOP\"",
    b"\r\n\r\n",
    b"\n\n",
];

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "request_head",
        run: request_head,
        shape: Shape::HttpHead,
        dict: HTTP_DICT,
    },
    Target {
        name: "response_head",
        run: response_head,
        shape: Shape::HttpHead,
        dict: HTTP_DICT,
    },
    Target {
        name: "chunked",
        run: chunked,
        shape: Shape::Chunked,
        dict: CHUNKED_DICT,
    },
    Target {
        name: "sse",
        run: sse,
        shape: Shape::Sse,
        dict: SSE_DICT,
    },
    Target {
        name: "inspect",
        run: inspect_rewrite,
        shape: Shape::Json,
        dict: JSON_DICT,
    },
    Target {
        name: "translate_request",
        run: translate_requests,
        shape: Shape::Json,
        dict: JSON_DICT,
    },
    Target {
        name: "translate_response",
        run: translate_responses,
        shape: Shape::Json,
        dict: JSON_DICT,
    },
    Target {
        name: "stream",
        run: stream,
        shape: Shape::Sse,
        dict: SSE_DICT,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// How to cut an input into reads: whole; one byte at a time (short inputs); in two at every
/// position (very short inputs) or at a few; and in random pieces. Positions come from the
/// input, and the engine varies inputs, so over a run many cuts are tried.
fn splits(data: &[u8]) -> Vec<Vec<usize>> {
    let len = data.len();
    let mut rng = Rng::from_bytes(data);
    let mut out = vec![vec![]];
    if len <= 300 {
        out.push((1..len).collect());
    }
    if len <= 64 {
        out.extend((1..len).map(|i| vec![i]));
    } else {
        out.extend((0..6).map(|_| vec![1 + rng.below(len - 1)]));
    }
    for _ in 0..2 {
        let mut cuts: Vec<usize> = (0..1 + rng.below(8)).map(|_| rng.below(len + 1)).collect();
        cuts.sort_unstable();
        out.push(cuts);
    }
    out
}

/// `data` cut at `cuts` (sorted positions).
fn pieces<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts {
        out.push(&data[start..c]);
        start = c;
    }
    out.push(&data[start..]);
    out
}

/// Positions whose prefixes are checked: all for short heads, a sample for long ones.
fn prefix_positions(len: usize, rng: &mut Rng) -> Vec<usize> {
    if len <= 1024 {
        (0..len).collect()
    } else {
        (0..64).map(|_| rng.below(len)).collect()
    }
}

const LIMITS: HeadLimits = HeadLimits {
    max_header_bytes: 16 * 1024,
    max_body_bytes: 1 << 20,
};

/// `parse_request_head`: a complete head parses the same alone, every prefix of it is
/// incomplete (a head split across reads is never refused), and the framing is consistent.
pub fn request_head(data: &[u8]) {
    let Some((head, len)) = (match parse_request_head(data, &LIMITS) {
        Ok(r) => r,
        Err(e) => {
            let _ = (e.status(), e.to_json());
            return;
        }
    }) else {
        assert!(
            data.len() <= LIMITS.max_header_bytes,
            "over-limit partial head accepted"
        );
        return;
    };
    assert!(len <= data.len() && len <= LIMITS.max_header_bytes);
    let again = parse_request_head(&data[..len], &LIMITS);
    let Ok(Some((h2, len2))) = again else {
        panic!("the head alone does not parse: {again:?}");
    };
    assert_eq!(len, len2);
    assert_eq!(format!("{head:?}"), format!("{h2:?}"));
    let mut rng = Rng::from_bytes(data);
    for k in prefix_positions(len, &mut rng) {
        let r = parse_request_head(&data[..k], &LIMITS);
        assert!(
            matches!(r, Ok(None)),
            "prefix {k} of a {len}-byte head: {r:?}"
        );
    }
    assert!(head.target().starts_with(head.path()));
    let _ = (head.method(), head.header_str("host"));
    for (name, value) in head.headers() {
        assert!(head.header(name).is_some() || name.is_empty());
        let _ = value;
    }
    match head.body {
        sluice_core::http1::BodyFraming::Chunked => {
            assert!(head.header("transfer-encoding").is_some());
            assert_eq!(head.version, 1);
        }
        sluice_core::http1::BodyFraming::Length(n) => {
            assert!(n > 0 && n <= LIMITS.max_body_bytes);
            assert!(head.header("content-length").is_some());
        }
        sluice_core::http1::BodyFraming::Empty => {}
        sluice_core::http1::BodyFraming::UntilClose => panic!("a request framed until close"),
    }
}

/// `parse_response_head`, for GET and HEAD: as [`request_head`], and a HEAD answer, a 1xx, a
/// 204 or a 304 has no body.
pub fn response_head(data: &[u8]) {
    for head_request in [false, true] {
        let Some((head, len)) =
            (match parse_response_head(data, LIMITS.max_header_bytes, head_request) {
                Ok(r) => r,
                Err(e) => {
                    let _ = e.to_string();
                    continue;
                }
            })
        else {
            assert!(data.len() <= LIMITS.max_header_bytes);
            continue;
        };
        assert!(len <= data.len());
        let again = parse_response_head(&data[..len], LIMITS.max_header_bytes, head_request);
        let Ok(Some((h2, len2))) = again else {
            panic!("the head alone does not parse: {again:?}");
        };
        assert_eq!(len, len2);
        assert_eq!(format!("{head:?}"), format!("{h2:?}"));
        let mut rng = Rng::from_bytes(data);
        for k in prefix_positions(len, &mut rng) {
            let r = parse_response_head(&data[..k], LIMITS.max_header_bytes, head_request);
            assert!(
                matches!(r, Ok(None)),
                "prefix {k} of a {len}-byte head: {r:?}"
            );
        }
        let no_body = head_request
            || (100..200).contains(&head.status)
            || head.status == 204
            || head.status == 304;
        if no_body {
            assert_eq!(head.body, sluice_core::http1::BodyFraming::Empty);
        }
        let _ = head.is_event_stream();
        assert_eq!(head.headers().count(), {
            let mut n = 0;
            for _ in head.headers() {
                n += 1;
            }
            n
        });
    }
}

/// What a chunked decode produced: the body so far, input consumed, whether it ended; or the
/// error.
type Decoded = Result<(Vec<u8>, usize, bool), sluice_core::http1::ChunkedError>;

fn decode_pieces(data: &[u8], cuts: &[usize], max: u64) -> Decoded {
    let mut d = ChunkedDecoder::new(max);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in pieces(data, cuts) {
        let (n, done) = d.decode_into(piece, &mut out)?;
        consumed += n;
        if done {
            assert!(d.is_done());
            return Ok((out, consumed, true));
        }
        assert_eq!(n, piece.len(), "stopped early without ending");
    }
    assert!(!d.is_done());
    Ok((out, consumed, false))
}

/// `ChunkedDecoder`: the same body, end and error however the input is cut into reads; and
/// `encode_chunk` / `begin_chunk` + `end_chunk` output decodes back to its data.
pub fn chunked(data: &[u8]) {
    for max in [1 << 20, 16] {
        let whole = decode_pieces(data, &[], max);
        for cuts in splits(data) {
            let split = decode_pieces(data, &cuts, max);
            assert_eq!(whole, split, "cut at {cuts:?}, limit {max}");
        }
        if let Ok((body, _, _)) = &whole {
            assert!(body.len() as u64 <= max);
        }
    }
    // Round trip: the input as a body, written in chunks of random sizes.
    let mut rng = Rng::from_bytes(data);
    let mut framed = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(300));
        let (piece, tail) = rest.split_at(n);
        if rng.one_in(2) {
            encode_chunk(piece, &mut framed);
        } else {
            let at = begin_chunk(&mut framed);
            framed.extend_from_slice(piece);
            end_chunk(&mut framed, at);
        }
        rest = tail;
    }
    let at = begin_chunk(&mut framed);
    end_chunk(&mut framed, at);
    encode_chunk(b"", &mut framed);
    framed.extend_from_slice(LAST_CHUNK);
    let decoded = decode_pieces(&framed, &[], u64::MAX);
    assert_eq!(decoded, Ok((data.to_vec(), framed.len(), true)));
}

#[derive(Debug, PartialEq)]
struct SseOutcome {
    out: Vec<u8>,
    usage: Option<sluice_core::usage::Usage>,
    done: bool,
    events: u64,
}

fn scan_pieces(data: &[u8], cuts: &[usize], strip: bool) -> SseOutcome {
    let mut s = SseScanner::new(strip);
    let mut out = Vec::new();
    for piece in pieces(data, cuts) {
        s.handle_bytes(piece, &mut out);
        if !strip {
            assert!(!s.client_mid_event() || !out.is_empty());
        }
    }
    s.finish(&mut out);
    SseOutcome {
        out,
        usage: s.usage(),
        done: s.saw_done(),
        events: s.data_events(),
    }
}

/// `SseScanner` in both modes: the same output, usage, `[DONE]` and event count however the
/// stream is cut; passthrough forwards every byte unchanged.
pub fn sse(data: &[u8]) {
    for strip in [false, true] {
        let whole = scan_pieces(data, &[], strip);
        if !strip {
            assert_eq!(whole.out, data, "passthrough changed the stream");
        } else {
            assert!(whole.out.len() <= data.len(), "strip mode grew the stream");
        }
        for cuts in splits(data) {
            let split = scan_pieces(data, &cuts, strip);
            assert_eq!(whole, split, "cut at {cuts:?}, strip {strip}");
        }
    }
}

/// `inspect` + `rewrite`: a no-op rewrite copies the body; any other yields a body that
/// inspects to the edited values and the same others.
pub fn inspect_rewrite(data: &[u8]) {
    assert!(estimate_prompt_tokens(data.len()) >= 1);
    // The image-aware estimate: never more text than bytes, never below one token.
    let scan = estimate::scan(data);
    assert!(scan.text_bytes <= data.len() as u64);
    for rule in [ImageRule::OpenAi, ImageRule::Anthropic, ImageRule::Gemini] {
        assert!(scan.tokens(rule) >= 1);
    }
    let Ok(ins) = inspect(data) else {
        return;
    };
    assert!(!ins.model.is_empty());
    let models = [
        None,
        Some("gpt-4o-mini"),
        Some("a\"b\\c\u{1F600}\n"),
        Some(ins.model.as_str()),
    ];
    for model in models {
        for force in [false, true] {
            let edits = Rewrite {
                model,
                force_include_usage: force,
            };
            let mut out = Vec::new();
            rewrite(data, &ins, edits, &mut out);
            if edits.is_noop(&ins) {
                assert_eq!(out, data, "a no-op rewrite changed the body");
                continue;
            }
            let after = match inspect(&out) {
                Ok(a) => a,
                Err(e) => panic!(
                    "rewritten body does not inspect: {e:?}\n{}",
                    String::from_utf8_lossy(&out)
                ),
            };
            assert_eq!(after.model, model.unwrap_or(&ins.model));
            assert_eq!(after.stream, ins.stream);
            assert_eq!(after.max_tokens, ins.max_tokens);
            assert_eq!(after.include_usage, ins.include_usage || force);
        }
    }
}

const INBOUNDS: [Inbound; 3] = [
    Inbound::OpenAiChat,
    Inbound::AnthropicMessages,
    Inbound::OpenAiResponses,
];

fn is_native(from: Dialect, to: Inbound) -> bool {
    matches!(
        (from, to),
        (Dialect::OpenAi | Dialect::Azure, Inbound::OpenAiChat)
            | (Dialect::Anthropic, Inbound::AnthropicMessages)
    )
}

/// `translate_request` for every client API and upstream, with and without provider extras:
/// a translation is a JSON object with a path; a refusal is a client error.
pub fn translate_requests(data: &[u8]) {
    let input_is_json = serde_json::from_slice::<Value>(data).is_ok();
    let mut extra = JsonMap::new();
    extra.insert("top_k".into(), 40.into());
    extra.insert(
        "generationConfig".into(),
        serde_json::json!({"candidateCount": 1, "nested": {"a": [1, 2]}}),
    );
    for from in INBOUNDS {
        for to in Dialect::ALL {
            for with_extra in [false, true] {
                let mut opts = RequestOptions::new("upstream-model");
                if with_extra {
                    opts.extra = Some(&extra);
                    opts.azure_deployment = Some("dep/loy ment");
                    opts.azure_api_version = Some("2024-10-21");
                    opts.default_max_tokens = 1;
                }
                match translate_request(from, to, data, &opts) {
                    Ok(t) => {
                        assert!(
                            t.path.starts_with('/'),
                            "{from:?} -> {to:?}: path {}",
                            t.path
                        );
                        if is_native(to, from) && !input_is_json {
                            // Passthrough copies the client's bytes; serde_json reads more
                            // than it accepts into a Value (a lone `\ud800` escape).
                            continue;
                        }
                        let v: Value = match serde_json::from_slice(&t.body) {
                            Ok(v) => v,
                            Err(e) => panic!(
                                "{from:?} -> {to:?}: translated body is not JSON ({e}): {}",
                                String::from_utf8_lossy(&t.body)
                            ),
                        };
                        assert!(v.is_object(), "{from:?} -> {to:?}: body is not an object");
                    }
                    Err(e) => assert!(
                        (400..500).contains(&e.status()),
                        "{from:?} -> {to:?}: refused with {e:?}"
                    ),
                }
            }
        }
    }
}

const CTX: ResponseContext<'static> = ResponseContext {
    model: "gpt-4o",
    id: "chatcmpl-fuzz",
    created: 1_700_000_000,
    include_usage: true,
};

/// `translate_response` for every upstream, client API and a few statuses: native pairs pass
/// the body through; translated ones always answer JSON, with usage only on success.
pub fn translate_responses(data: &[u8]) {
    for from in Dialect::ALL {
        for to in INBOUNDS {
            for status in [200, 201, 400, 429, 500, 503] {
                let ctx = ResponseContext {
                    id: match to {
                        Inbound::AnthropicMessages => "msg_fuzz",
                        Inbound::OpenAiResponses => "resp_fuzz",
                        Inbound::OpenAiChat => CTX.id,
                    },
                    ..CTX
                };
                let (body, usage) = translate_response(from, to, status, data, &ctx);
                let ok = (200..300).contains(&status);
                if !ok {
                    assert!(usage.is_none());
                }
                if is_native(from, to) {
                    assert_eq!(body, data);
                } else if let Err(e) = serde_json::from_slice::<Value>(&body) {
                    panic!(
                        "{from:?} -> {to:?} ({status}): answer is not JSON ({e}): {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
struct StreamOutcome {
    out: Vec<u8>,
    complete: bool,
    usage: Option<sluice_core::usage::Usage>,
}

fn translate_pieces(
    from: Dialect,
    to: Inbound,
    ctx: ResponseContext<'_>,
    data: &[u8],
    cuts: &[usize],
) -> StreamOutcome {
    let mut t = StreamTranslator::new(from, to, ctx);
    let mut out = Vec::new();
    for piece in pieces(data, cuts) {
        t.handle_bytes(piece, &mut out);
    }
    let complete = t.upstream_complete();
    t.finish(&mut out);
    StreamOutcome {
        out,
        complete,
        usage: t.usage(),
    }
}

/// Every `data:` line of a translated stream is JSON or `[DONE]`.
fn check_sse_json(out: &[u8], what: &str) {
    for line in out.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(payload) = line.strip_prefix(b"data:") {
            let payload = payload.trim_ascii();
            if payload == b"[DONE]" {
                continue;
            }
            if let Err(e) = serde_json::from_slice::<Value>(payload) {
                panic!(
                    "{what}: data line is not JSON ({e}): {}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }
}

/// `StreamTranslator` for every upstream and client API, with and without `include_usage`:
/// the same client stream, completeness and usage however the upstream stream is cut; a
/// translated stream carries only JSON data; `error_event` ends any stream without panicking.
pub fn stream(data: &[u8]) {
    let all_cuts = splits(data);
    // Azure streams are OpenAI streams (the same translator), and `include_usage` is drawn
    // from the input: six configurations per input instead of sixteen, for speed.
    let include_usage = Rng::from_bytes(data).one_in(2);
    for from in [
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Bedrock,
    ] {
        for to in INBOUNDS {
            {
                let ctx = ResponseContext {
                    include_usage,
                    ..CTX
                };
                let what = format!("{from:?} -> {to:?}, include_usage {include_usage}");
                let whole = translate_pieces(from, to, ctx, data, &[]);
                if !is_native(from, to) {
                    check_sse_json(&whole.out, &what);
                }
                for cuts in &all_cuts {
                    let split = translate_pieces(from, to, ctx, data, cuts);
                    assert_eq!(whole, split, "{what}: cut at {cuts:?}");
                }
                let mut t = StreamTranslator::new(from, to, ctx);
                let mut out = Vec::new();
                t.handle_bytes(data, &mut out);
                let err = GatewayError::new(ErrorKind::UpstreamTimeout, "upstream timed out");
                t.error_event(&err, &mut out);
                let len = out.len();
                t.handle_bytes(b"data: [DONE]\n\n", &mut out);
                t.finish(&mut out);
                assert_eq!(out.len(), len, "{what}: bytes written after error_event");
                if !is_native(from, to) {
                    check_sse_json(&out, &what);
                }
            }
        }
    }
}
