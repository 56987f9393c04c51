//! Unit and property tests of the translators (the golden fixtures are in `tests/golden.rs`).

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::error::ErrorKind;

const PAIRS: [(Dialect, Inbound); 15] = [
    (Dialect::Bedrock, Inbound::OpenAiChat),
    (Dialect::Bedrock, Inbound::AnthropicMessages),
    (Dialect::Bedrock, Inbound::OpenAiResponses),
    (Dialect::OpenAi, Inbound::OpenAiChat),
    (Dialect::Azure, Inbound::OpenAiChat),
    (Dialect::Anthropic, Inbound::OpenAiChat),
    (Dialect::Gemini, Inbound::OpenAiChat),
    (Dialect::OpenAi, Inbound::AnthropicMessages),
    (Dialect::Azure, Inbound::AnthropicMessages),
    (Dialect::Anthropic, Inbound::AnthropicMessages),
    (Dialect::Gemini, Inbound::AnthropicMessages),
    (Dialect::OpenAi, Inbound::OpenAiResponses),
    (Dialect::Azure, Inbound::OpenAiResponses),
    (Dialect::Anthropic, Inbound::OpenAiResponses),
    (Dialect::Gemini, Inbound::OpenAiResponses),
];

fn ctx(include_usage: bool) -> ResponseContext<'static> {
    ResponseContext {
        model: "m",
        id: "chatcmpl-1",
        created: 1,
        include_usage,
    }
}

fn stream_all(
    from: Dialect,
    to: Inbound,
    include_usage: bool,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, StreamTranslator) {
    let mut t = StreamTranslator::new(from, to, ctx(include_usage));
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(start, input.len());
        t.handle_bytes(&input[start..c], &mut out);
        start = c;
    }
    t.finish(&mut out);
    (out, t)
}

#[test]
fn names_and_headers() {
    for d in Dialect::ALL {
        assert_eq!(Dialect::from_name(d.name()), Some(d));
    }
    assert_eq!(Dialect::from_name("sagemaker"), None);
    assert_eq!(
        Inbound::from_path("/v1/messages?beta=true"),
        Some(Inbound::AnthropicMessages)
    );
    assert_eq!(
        Inbound::from_path("/v1/chat/completions"),
        Some(Inbound::OpenAiChat)
    );
    assert_eq!(Inbound::from_path("/v1/embeddings"), None);
    assert_eq!(
        auth_headers(Dialect::OpenAi, "k"),
        vec![("authorization", "Bearer k".to_owned())]
    );
    assert_eq!(
        auth_headers(Dialect::Azure, "k"),
        vec![("api-key", "k".to_owned())]
    );
    assert_eq!(
        auth_headers(Dialect::Anthropic, "k"),
        vec![
            ("x-api-key", "k".to_owned()),
            ("anthropic-version", "2023-06-01".to_owned())
        ]
    );
    assert_eq!(
        auth_headers(Dialect::Gemini, "k"),
        vec![("x-goog-api-key", "k".to_owned())]
    );
}

#[test]
fn passthrough_keeps_bytes_but_the_model() {
    let body =
        br#"{"model":"alias", "messages":[{"role":"user","content":"hi"}], "weird":{"x":[1,2]}}"#;
    let t = translate_request(
        Inbound::OpenAiChat,
        Dialect::OpenAi,
        body,
        &RequestOptions::new("gpt-4o"),
    )
    .unwrap();
    assert_eq!(
        t.body,
        br#"{"model":"gpt-4o", "messages":[{"role":"user","content":"hi"}], "weird":{"x":[1,2]}}"#
    );
    assert_eq!(t.path, "/chat/completions");
    assert!(!t.stream && t.dropped_fields.is_empty());

    let body = br#"{"model":"claude","max_tokens":5,"messages":[],"stream":true}"#;
    let t = translate_request(
        Inbound::AnthropicMessages,
        Dialect::Anthropic,
        body,
        &RequestOptions::new("claude-x"),
    )
    .unwrap();
    assert_eq!(
        t.body,
        br#"{"model":"claude-x","max_tokens":5,"messages":[],"stream":true}"#
    );
    assert_eq!((t.path.as_str(), t.stream), ("/messages", true));
}

#[test]
fn passthrough_with_extras_merges_deeply() {
    let extra: JsonMap = serde_json::from_value(json!({"metadata": {"b": 2}, "seed": 1})).unwrap();
    let opts = RequestOptions {
        extra: Some(&extra),
        ..RequestOptions::new("up")
    };
    let body = br#"{"model":"m","messages":[],"metadata":{"a":1},"stream":true}"#;
    let t = translate_request(Inbound::OpenAiChat, Dialect::OpenAi, body, &opts).unwrap();
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["model"], "up");
    assert_eq!(v["metadata"], json!({"a": 1, "b": 2}));
    assert_eq!(v["seed"], 1);
    assert_eq!(v["stream_options"]["include_usage"], true);
}

#[test]
fn paths() {
    let opts = RequestOptions {
        azure_api_version: Some("2025-01-01-preview"),
        ..RequestOptions::new("my deploy")
    };
    let body = br#"{"model":"m","messages":[]}"#;
    let t = translate_request(Inbound::OpenAiChat, Dialect::Azure, body, &opts).unwrap();
    assert_eq!(
        t.path,
        "/openai/deployments/my%20deploy/chat/completions?api-version=2025-01-01-preview"
    );
    let body = br#"{"model":"m","messages":[],"stream":true}"#;
    let t = translate_request(
        Inbound::OpenAiChat,
        Dialect::Gemini,
        body,
        &RequestOptions::new("models/gemini-2.5-pro"),
    )
    .unwrap();
    assert_eq!(
        t.path,
        "/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
}

#[test]
fn refusals_name_the_field() {
    let opts = RequestOptions::new("c");
    let cases: [(&[u8], &str, &str); 6] = [
        (br#"{"model":"m","messages":[],"n":3}"#, "n", "`n`"),
        (br#"{"messages":"hi"}"#, "messages", "`messages`"),
        (b"[1]", "", "JSON object"),
        (b"{", "", "invalid JSON"),
        (
            br#"{"messages":[{"role":"assistant","tool_calls":[{"id":"a","function":{"name":"f","arguments":"{not json"}}]}]}"#,
            "messages",
            "messages[0].tool_calls[0].function.arguments",
        ),
        (br#"{"messages":[{"role":"wizard","content":"x"}]}"#, "messages", "wizard"),
    ];
    for (body, param, needle) in cases {
        let e =
            translate_request(Inbound::OpenAiChat, Dialect::Anthropic, body, &opts).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.param.unwrap_or(""), param, "{}", e.message);
        assert!(e.message.contains(needle), "{}", e.message);
    }
    // Gemini can answer with several candidates, so `n` is mapped there.
    let t = translate_request(
        Inbound::OpenAiChat,
        Dialect::Gemini,
        br#"{"messages":[],"n":3}"#,
        &opts,
    )
    .unwrap();
    assert!(String::from_utf8(t.body)
        .unwrap()
        .contains("\"candidateCount\":3"));
}

#[test]
fn usage_is_the_same_whichever_dialect_answered() {
    let anthropic = br#"{"type":"message","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":70,"cache_read_input_tokens":20,"cache_creation_input_tokens":10,"output_tokens":5}}"#;
    let openai = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":20}}}"#;
    let gemini = br#"{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":5,"cachedContentTokenCount":20}}"#;
    let want = Some(Usage {
        input_tokens: 100,
        output_tokens: 5,
        cached_tokens: 20,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
    });
    for to in [
        Inbound::OpenAiChat,
        Inbound::AnthropicMessages,
        Inbound::OpenAiResponses,
    ] {
        for (from, body) in [
            (Dialect::Anthropic, &anthropic[..]),
            (Dialect::OpenAi, &openai[..]),
            (Dialect::Gemini, &gemini[..]),
        ] {
            // Only Anthropic reports cache writes (part of the input, priced apart).
            let written = |w: u64| {
                want.map(|u| Usage {
                    cache_write_tokens: w,
                    ..u
                })
            };
            let from_writes = if from == Dialect::Anthropic { 10 } else { 0 };
            let (out, usage) = translate_response(from, to, 200, body, &ctx(false));
            assert_eq!(usage, written(from_writes), "{from:?} -> {to:?}");
            // And the client reads the same numbers back (OpenAI's shape has no cache writes).
            let v: Value = serde_json::from_slice(&out).unwrap();
            let read = match to {
                Inbound::OpenAiChat | Inbound::OpenAiResponses => crate::usage::from_body(&out),
                Inbound::AnthropicMessages => anthropic::usage_from_body(&out),
            };
            let client_writes = if to == Inbound::AnthropicMessages {
                from_writes
            } else {
                0
            };
            assert_eq!(read, written(client_writes), "{from:?} -> {to:?}: {v}");
        }
    }
}

#[test]
fn unreadable_success_body_becomes_an_error() {
    let (out, usage) = translate_response(
        Dialect::Anthropic,
        Inbound::OpenAiChat,
        200,
        b"<html>",
        &ctx(false),
    );
    assert!(usage.is_none());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    let (out, _) = translate_response(
        Dialect::OpenAi,
        Inbound::AnthropicMessages,
        200,
        b"{}",
        &ctx(false),
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "error");
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_passthrough_stream_reads_usage() {
    let (out, t) = stream_all(
        Dialect::Anthropic,
        Inbound::AnthropicMessages,
        false,
        ANTHROPIC_STREAM.as_bytes(),
        &[5, 100],
    );
    assert_eq!(out, ANTHROPIC_STREAM.as_bytes());
    assert!(t.upstream_complete());
    let u = t.usage().unwrap();
    assert_eq!(
        (u.input_tokens, u.cached_tokens, u.output_tokens),
        (14, 4, 7)
    );

    // Cut before message_stop: finish closes the stream for the client.
    let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.len() - 10];
    let (out, t) = stream_all(
        Dialect::Anthropic,
        Inbound::AnthropicMessages,
        false,
        cut.as_bytes(),
        &[],
    );
    assert!(!t.upstream_complete());
    assert!(out.ends_with(b"\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[test]
fn openai_passthrough_stream_strips_forced_usage() {
    let input = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    );
    let (out, t) = stream_all(
        Dialect::OpenAi,
        Inbound::OpenAiChat,
        false,
        input.as_bytes(),
        &[],
    );
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("usage"), "{text}");
    assert_eq!(t.usage().unwrap().total_tokens(), 4);
    let (out, _) = stream_all(
        Dialect::OpenAi,
        Inbound::OpenAiChat,
        true,
        input.as_bytes(),
        &[],
    );
    assert_eq!(out, input.as_bytes());

    // Cut inside an event: the client still gets a well-formed end.
    let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"cho";
    for include in [false, true] {
        let (out, t) = stream_all(
            Dialect::OpenAi,
            Inbound::OpenAiChat,
            include,
            cut.as_bytes(),
            &[30],
        );
        assert!(!t.upstream_complete());
        assert!(
            out.ends_with(b"data: {\"cho\n\ndata: [DONE]\n\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

#[test]
fn error_event_speaks_the_client_dialect() {
    let err = GatewayError::new(ErrorKind::UpstreamTimeout, "upstream went quiet");
    let mut t = StreamTranslator::new(Dialect::OpenAi, Inbound::AnthropicMessages, ctx(false));
    let mut out = Vec::new();
    t.handle_bytes(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
        &mut out,
    );
    t.error_event(&err, &mut out);
    t.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("event: error\ndata: {\"error\":{\"message\":\"upstream went quiet\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"), "{text}");
    assert!(!text.contains("message_stop"));

    let mut t = StreamTranslator::new(Dialect::Anthropic, Inbound::AnthropicMessages, ctx(false));
    let mut out = Vec::new();
    t.handle_bytes(b"event: message_start\ndata: {\"ty", &mut out);
    t.error_event(&err, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with("event: message_start\ndata: {\"ty\n\nevent: error\n"),
        "{text}"
    );

    let mut t = StreamTranslator::new(Dialect::Gemini, Inbound::OpenAiChat, ctx(false));
    let mut out = Vec::new();
    t.error_event(&err, &mut out);
    assert_eq!(out, err.to_sse());
}

#[test]
fn include_usage_controls_the_usage_chunk() {
    for include in [false, true] {
        let (out, t) = stream_all(
            Dialect::Anthropic,
            Inbound::OpenAiChat,
            include,
            ANTHROPIC_STREAM.as_bytes(),
            &[],
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.contains("\"usage\""), include, "{text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(t.usage().unwrap().output_tokens, 7);
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests: any JSON never panics a translator.
// ---------------------------------------------------------------------------------------------

/// Field names and values the translators look at, so random documents reach deep code.
const WORDS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "tool_calls",
    "function",
    "name",
    "arguments",
    "tool_call_id",
    "tools",
    "tool_choice",
    "n",
    "stop",
    "stream",
    "max_tokens",
    "system",
    "input",
    "input_schema",
    "tool_use_id",
    "source",
    "data",
    "media_type",
    "candidates",
    "parts",
    "functionCall",
    "args",
    "usage",
    "usageMetadata",
    "choices",
    "delta",
    "index",
    "finish_reason",
    "stop_reason",
    "content_block",
    "partial_json",
    "error",
    "message",
    "input_tokens",
    "output_tokens",
    "promptTokenCount",
    "finishReason",
    "parameters",
    "properties",
    "items",
    "anyOf",
    "image",
    "tool_use",
    "tool_result",
    "text_delta",
    "input_json_delta",
    "message_start",
    "message_delta",
    "message_stop",
    "content_block_start",
    "content_block_delta",
    "user",
    "assistant",
    "tool",
    "developer",
    "auto",
    "any",
    "required",
    "none",
    "temperature",
    "metadata",
    "user_id",
    "detail",
    "file",
    "file_data",
    "response_format",
    "json_schema",
    "json_object",
    "schema",
    "stream_options",
    "include_usage",
    "parallel_tool_calls",
    "cache_control",
    "thought",
    "promptFeedback",
    "blockReason",
    "base64",
    "STOP",
    "MAX_TOKENS",
    "tool_calls",
    "length",
    "max_completion_tokens",
    "disable_parallel_tool_use",
    "stop_sequences",
    "input_audio",
    "cache_read_input_tokens",
    "prompt_tokens",
    "completion_tokens",
    "id",
    "code",
    "status",
    "data:image/png;base64,AAAA",
    "https://example.com/a.png",
    "{\"a\":1}",
    "{",
    "[DONE]",
    "",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(WORDS).prop_map(Value::from);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(2), Just(u64::MAX), any::<u64>()]
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        word.clone(),
        word,
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(WORDS).prop_map(str::to_owned),
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object (what a request or response body usually is).
fn arb_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(WORDS).prop_map(str::to_owned),
        arb_json(),
        0..8,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// A request skeleton (`messages` of role-tagged objects) with random innards.
fn arb_request() -> impl Strategy<Value = Value> {
    let roles = prop::sample::select(vec![
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "x",
    ]);
    let message = (
        roles,
        arb_json(),
        prop::collection::vec(arb_object(), 0..3),
        arb_object(),
    )
        .prop_map(|(role, content, calls, mut extra)| {
            if let Some(o) = extra.as_object_mut() {
                o.insert("role".into(), role.into());
                o.insert("content".into(), content);
                if !calls.is_empty() {
                    o.insert("tool_calls".into(), Value::Array(calls));
                }
            }
            extra
        });
    (arb_object(), prop::collection::vec(message, 0..5)).prop_map(|(mut req, messages)| {
        if let Some(o) = req.as_object_mut() {
            o.insert("messages".into(), Value::Array(messages));
        }
        req
    })
}

/// Event data shaped like Anthropic events, OpenAI chunks or Gemini responses.
fn arb_event_data(name: &'static str) -> impl Strategy<Value = Value> {
    (arb_object(), arb_object(), 0u64..4).prop_map(move |(inner, mut outer, index)| {
        if let Some(o) = outer.as_object_mut() {
            if !name.is_empty() {
                o.insert("type".into(), name.into());
            }
            o.insert("index".into(), index.into());
            match index {
                0 => {
                    o.insert("delta".into(), inner);
                }
                1 => {
                    o.insert("content_block".into(), inner);
                }
                2 => {
                    o.insert("choices".into(), json!([{"index": 0, "delta": inner}]));
                }
                _ => {
                    o.insert(
                        "candidates".into(),
                        json!([{"content": {"parts": [inner]}}]),
                    );
                }
            }
        }
        outer
    })
}

const EVENT_NAMES: &[&str] = &[
    "",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "error",
    "ping",
];

fn arb_sse() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop::sample::select(EVENT_NAMES)
                .prop_flat_map(|name| (Just(name), prop_oneof![arb_event_data(name), arb_json()])),
            any::<bool>(),
        )
            .prop_map(|((name, data), crlf)| (name, data, crlf)),
        0..8,
    )
    .prop_map(|events| {
        let mut out = Vec::new();
        for (name, data, crlf) in events {
            if !name.is_empty() {
                out.extend_from_slice(format!("event: {name}\n").as_bytes());
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&data).unwrap());
            out.extend_from_slice(if crlf { b"\r\n\r\n" } else { b"\n\n" });
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn requests_never_panic(body in prop_oneof![arb_request(), arb_object(), arb_json()], max in any::<u32>()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let extra: JsonMap = serde_json::from_value(json!({"extra": {"k": 1}})).unwrap();
        for (to, from) in PAIRS {
            for extra in [None, Some(&extra)] {
                let opts = RequestOptions { default_max_tokens: max, extra, ..RequestOptions::new("up/m") };
                if let Ok(t) = translate_request(from, to, &bytes, &opts) {
                    prop_assert!(serde_json::from_slice::<Value>(&t.body).is_ok());
                }
            }
        }
    }

    #[test]
    fn responses_never_panic(body in prop_oneof![arb_object(), arb_json()], status in prop::sample::select(vec![200u16, 201, 400, 429, 500, 529])) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for (from, to) in PAIRS {
            let (out, _) = translate_response(from, to, status, &bytes, &ctx(true));
            let passthrough = to.native() == from || (from == Dialect::Azure && to == Inbound::OpenAiChat);
            if !passthrough {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
        }
    }

    /// Any SSE stream of JSON events translates without panic, the same however it is split.
    #[test]
    fn streams_never_panic_and_ignore_splits(input in arb_sse(), cuts in prop::collection::vec(0usize..2048, 0..6), include in any::<bool>()) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        for (from, to) in PAIRS {
            let (whole, t1) = stream_all(from, to, include, &input, &[]);
            let (split, t2) = stream_all(from, to, include, &input, &cuts);
            prop_assert_eq!(&whole, &split, "{:?} -> {:?}", from, to);
            prop_assert_eq!(t1.usage(), t2.usage());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
        for (from, to) in PAIRS {
            let _ = stream_all(from, to, true, &input, &[3, 50]);
            let _ = translate_response(from, to, 200, &input, &ctx(false));
            let _ = translate_request(to, from, &input, &RequestOptions::new("m"));
        }
    }
}

#[test]
fn the_answered_model_is_read_from_bodies_and_streams() {
    let openai = br#"{"id":"c","model":"gpt-4o-2024-08-06","choices":[]}"#;
    assert_eq!(
        answered_model(Dialect::Azure, 200, openai).as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(answered_model(Dialect::OpenAi, 500, openai), None);
    let gemini = br#"{"candidates":[],"modelVersion":"gemini-2.0-flash-001"}"#;
    assert_eq!(
        answered_model(Dialect::Gemini, 200, gemini).as_deref(),
        Some("gemini-2.0-flash-001")
    );
    assert_eq!(answered_model(Dialect::Bedrock, 200, openai), None);

    // Anthropic's message_start, passed through and translated (once more for Responses).
    let with_model = ANTHROPIC_STREAM.replace(
        "\"id\":\"msg_1\"",
        "\"id\":\"msg_1\",\"model\":\"claude-x-1\"",
    );
    for to in [
        Inbound::AnthropicMessages,
        Inbound::OpenAiChat,
        Inbound::OpenAiResponses,
    ] {
        let (_, t) = stream_all(
            Dialect::Anthropic,
            to,
            false,
            with_model.as_bytes(),
            &[9, 70],
        );
        assert_eq!(t.answered_model(), Some("claude-x-1"), "{to:?}");
        let (_, none) = stream_all(
            Dialect::Anthropic,
            to,
            false,
            ANTHROPIC_STREAM.as_bytes(),
            &[],
        );
        assert_eq!(none.answered_model(), None, "{to:?}");
    }
    // OpenAI chunks, passed through and translated.
    let chunks = "data: {\"id\":\"c\",\"model\":\"gpt-x-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n";
    for to in [
        Inbound::OpenAiChat,
        Inbound::AnthropicMessages,
        Inbound::OpenAiResponses,
    ] {
        let (_, t) = stream_all(Dialect::OpenAi, to, true, chunks.as_bytes(), &[12]);
        assert_eq!(t.answered_model(), Some("gpt-x-1"), "{to:?}");
    }
    // Gemini's modelVersion.
    let gemini = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]},\"finishReason\":\"STOP\"}],\"modelVersion\":\"gemini-x-1\"}\n\n";
    let (_, t) = stream_all(
        Dialect::Gemini,
        Inbound::OpenAiChat,
        false,
        gemini.as_bytes(),
        &[],
    );
    assert_eq!(t.answered_model(), Some("gemini-x-1"));
}
