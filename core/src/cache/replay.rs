//! Replay: a stored answer (the pivot, a whole chat completion) written in the shape the
//! client asked for — whole JSON or an event stream, OpenAI or Anthropic.
//!
//! An OpenAI stream is chunked like an upstream's: a first chunk with the role, the content in
//! word-sized pieces, each tool call, a last chunk with `finish_reason`, a usage chunk only
//! when the client asked for `stream_options.include_usage`, then `data: [DONE]`. An Anthropic
//! client gets the same chunks through the stream translator (`message_start` … `message_stop`).

use serde_json::{json, Map, Value};

use super::key::CallKind;
use super::StoredAnswer;
use crate::dialect::{self, Dialect, Inbound, ResponseContext, StreamTranslator};

/// Longest content piece of a replayed stream, in bytes.
const MAX_PIECE: usize = 32;

/// What the replay is written for.
#[derive(Clone, Copy, Debug)]
pub struct Replay<'a> {
    /// The API the client called (`None`: an endpoint answered as stored, e.g. embeddings).
    pub inbound: Option<Inbound>,
    /// The client asked for a stream.
    pub stream: bool,
    /// The OpenAI client asked for `stream_options.include_usage`.
    pub include_usage: bool,
    /// The model the client asked for (reported by translated answers).
    pub model: &'a str,
    /// The id of a translated answer (`msg_…`).
    pub id: &'a str,
    /// Unix seconds, for generated objects.
    pub created: u64,
}

/// The body a client gets for `stored`, and its content type.
pub fn body(stored: &StoredAnswer, r: &Replay<'_>) -> (Vec<u8>, &'static str) {
    let ctx = ResponseContext {
        model: r.model,
        id: r.id,
        created: r.created,
        include_usage: r.include_usage,
    };
    if stored.kind == CallKind::Completion {
        return if r.stream {
            (
                completion_chunks(&stored.body, r.include_usage),
                "text/event-stream",
            )
        } else {
            (stored.body.clone(), "application/json")
        };
    }
    match (r.inbound, r.stream) {
        (Some(Inbound::OpenAiChat), true) => {
            (chunks(&stored.body, r.include_usage), "text/event-stream")
        }
        (Some(Inbound::AnthropicMessages), true) => {
            let openai = chunks(&stored.body, true);
            let mut t = StreamTranslator::new(Dialect::OpenAi, Inbound::AnthropicMessages, ctx);
            let mut out = Vec::with_capacity(openai.len());
            t.handle_bytes(&openai, &mut out);
            t.finish(&mut out);
            (out, "text/event-stream")
        }
        (Some(Inbound::AnthropicMessages), false) => {
            let (out, _) = dialect::translate_response(
                Dialect::OpenAi,
                Inbound::AnthropicMessages,
                200,
                &stored.body,
                &ctx,
            );
            (out, "application/json")
        }
        _ => (stored.body.clone(), "application/json"),
    }
}

/// The chat completion `pivot` as an OpenAI chunk stream (see the module docs).
pub fn chunks(pivot: &[u8], include_usage: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(pivot.len() * 4);
    let Ok(Value::Object(whole)) = serde_json::from_slice::<Value>(pivot) else {
        out.extend_from_slice(b"data: [DONE]\n\n");
        return out;
    };
    let mut head = Map::new();
    for field in [
        "id",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
    ] {
        if let Some(v) = whole.get(field) {
            head.insert(field.into(), v.clone());
        }
    }
    head.insert("object".into(), "chat.completion.chunk".into());
    let emit = |out: &mut Vec<u8>, choices: Value, usage: Option<&Value>| {
        let mut chunk = head.clone();
        chunk.insert("choices".into(), choices);
        if let Some(u) = usage {
            chunk.insert("usage".into(), u.clone());
        }
        out.extend_from_slice(b"data: ");
        if let Ok(bytes) = serde_json::to_vec(&Value::Object(chunk)) {
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(b"\n\n");
    };
    let delta = |index: &Value, delta: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    for choice in whole
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let message = choice.get("message").cloned().unwrap_or(json!({}));
        let role = message.get("role").cloned().unwrap_or(json!("assistant"));
        emit(
            &mut out,
            delta(&index, json!({"role": role, "content": ""}), Value::Null),
            None,
        );
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            for piece in pieces(text) {
                emit(
                    &mut out,
                    delta(&index, json!({"content": piece}), Value::Null),
                    None,
                );
            }
        }
        if let Some(text) = message.get("refusal").and_then(Value::as_str) {
            emit(
                &mut out,
                delta(&index, json!({"refusal": text}), Value::Null),
                None,
            );
        }
        for (i, call) in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mut call = call.clone();
            if let Value::Object(m) = &mut call {
                m.insert("index".into(), json!(i));
            }
            emit(
                &mut out,
                delta(&index, json!({"tool_calls": [call]}), Value::Null),
                None,
            );
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        emit(&mut out, delta(&index, json!({}), finish), None);
    }
    if include_usage {
        if let Some(u) = whole.get("usage") {
            emit(&mut out, json!([]), Some(u));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// The text completion `whole` as an OpenAI completions stream: each choice's text in
/// word-sized pieces, a last chunk with its `finish_reason`, a usage chunk only when asked,
/// then `data: [DONE]`.
pub fn completion_chunks(whole: &[u8], include_usage: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(whole.len() * 4);
    let Ok(Value::Object(whole)) = serde_json::from_slice::<Value>(whole) else {
        out.extend_from_slice(b"data: [DONE]\n\n");
        return out;
    };
    let mut head = Map::new();
    for field in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = whole.get(field) {
            head.insert(field.into(), v.clone());
        }
    }
    head.insert("object".into(), "text_completion".into());
    let emit = |out: &mut Vec<u8>, choices: Value, usage: Option<&Value>| {
        let mut chunk = head.clone();
        chunk.insert("choices".into(), choices);
        if let Some(u) = usage {
            chunk.insert("usage".into(), u.clone());
        }
        out.extend_from_slice(b"data: ");
        if let Ok(bytes) = serde_json::to_vec(&Value::Object(chunk)) {
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(b"\n\n");
    };
    for choice in whole
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = choice.get("index").cloned().unwrap_or(json!(0));
        let text = choice.get("text").and_then(Value::as_str).unwrap_or("");
        for piece in pieces(text) {
            let c =
                json!([{"index": index, "text": piece, "logprobs": null, "finish_reason": null}]);
            emit(&mut out, c, None);
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        let c = json!([{"index": index, "text": "", "logprobs": null, "finish_reason": finish}]);
        emit(&mut out, c, None);
    }
    if include_usage {
        if let Some(u) = whole.get("usage") {
            emit(&mut out, json!([]), Some(u));
        }
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

/// `text` in word-sized pieces (a word and the space before it), at most [`MAX_PIECE`] bytes,
/// cut on character boundaries; joined they are `text`.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    for (i, c) in text.char_indices() {
        let long = i - start >= MAX_PIECE;
        if (c.is_whitespace() && seen_word) || long {
            out.push(&text[start..i]);
            start = i;
            seen_word = false;
        }
        if !c.is_whitespace() {
            seen_word = true;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::capture::PivotCapture;
    use crate::filter::{BodyEnd, BodyFilter};

    const PIVOT: &str = r#"{"id":"c1","object":"chat.completion","created":7,"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, wonderful world of caches"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":6,"total_tokens":9}}"#;

    fn stored() -> StoredAnswer {
        StoredAnswer {
            body: PIVOT.as_bytes().to_vec(),
            usage: None,
            cost_micros: None,
            kind: CallKind::Chat,
        }
    }

    fn replay(inbound: Inbound, stream: bool, include_usage: bool) -> Vec<u8> {
        body(
            &stored(),
            &Replay {
                inbound: Some(inbound),
                stream,
                include_usage,
                model: "m",
                id: "msg_1",
                created: 9,
            },
        )
        .0
    }

    #[test]
    fn a_completion_replays_whole_or_as_a_stream_that_captures_back() {
        let whole = br#"{"id":"cmpl-1","object":"text_completion","created":7,"model":"m","choices":[{"index":0,"text":"Hello there world","logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#;
        let stored = StoredAnswer {
            body: whole.to_vec(),
            usage: None,
            cost_micros: None,
            kind: CallKind::Completion,
        };
        let r = |stream, include_usage| Replay {
            inbound: None,
            stream,
            include_usage,
            model: "m",
            id: "cmpl-x",
            created: 9,
        };
        assert_eq!(body(&stored, &r(false, false)).0, whole.to_vec());
        let (sse, ct) = body(&stored, &r(true, true));
        assert_eq!(ct, "text/event-stream");
        let text = String::from_utf8(sse.clone()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n") && text.contains("\"usage\""));
        let mut c = crate::cache::capture::PivotCapture::new(
            Dialect::OpenAi,
            CallKind::Completion,
            true,
            1 << 20,
            ("m", "i", 0),
        );
        let mut out = Vec::new();
        c.handle_bytes(&sse, &mut out);
        c.finish(true);
        let back: Value = serde_json::from_slice(&c.take().unwrap().body).unwrap();
        let orig: Value = serde_json::from_slice(whole).unwrap();
        assert_eq!(back["choices"], orig["choices"]);
        assert_eq!(back["usage"], orig["usage"]);
        let (no_usage, _) = body(&stored, &r(true, false));
        assert!(!String::from_utf8(no_usage).unwrap().contains("\"usage\""));
    }

    #[test]
    fn pieces_join_back() {
        for text in ["", "a", "  lead", "Hello there, world", &"é".repeat(40)] {
            assert_eq!(pieces(text).concat(), text);
            assert!(pieces(text).iter().all(|p| p.len() <= MAX_PIECE + 4));
        }
    }

    #[test]
    fn a_replayed_stream_captures_back_to_the_same_answer() {
        let sse = replay(Inbound::OpenAiChat, true, true);
        let text = String::from_utf8(sse.clone()).unwrap();
        assert!(text.starts_with("data: {"), "{text}");
        assert!(text.contains(r#""role":"assistant""#));
        assert!(text.contains(r#""total_tokens":9"#));
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut c = PivotCapture::new(
            Dialect::OpenAi,
            CallKind::Chat,
            true,
            1 << 20,
            ("m", "x", 0),
        );
        let mut out = Vec::new();
        BodyFilter::handle_bytes(&mut c, &sse, &mut out);
        BodyFilter::finish(&mut c, BodyEnd::Complete, &mut out);
        let back: Value = serde_json::from_slice(&c.take().unwrap().body).unwrap();
        let orig: Value = serde_json::from_str(PIVOT).unwrap();
        assert_eq!(back, orig);
        let no_usage = String::from_utf8(replay(Inbound::OpenAiChat, true, false)).unwrap();
        assert!(!no_usage.contains("total_tokens"), "usage only when asked");
    }

    #[test]
    fn anthropic_clients_get_their_own_shape() {
        let whole: Value =
            serde_json::from_slice(&replay(Inbound::AnthropicMessages, false, false)).unwrap();
        assert_eq!(whole["type"], "message");
        assert_eq!(
            whole["content"][0]["text"],
            "Hello there, wonderful world of caches"
        );
        let sse = String::from_utf8(replay(Inbound::AnthropicMessages, true, false)).unwrap();
        assert!(sse.contains("event: message_start"), "{sse}");
        assert!(sse.contains("event: message_stop"), "{sse}");
        let whole_openai = replay(Inbound::OpenAiChat, false, false);
        assert_eq!(whole_openai, PIVOT.as_bytes());
    }
}
