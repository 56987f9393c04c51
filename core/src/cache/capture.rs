//! Answer capture: the upstream's answer turned into what the store keeps — the pivot shape
//! (a whole OpenAI chat completion, with its usage) — whatever the upstream's dialect and
//! whether it streamed.
//!
//! [`PivotCapture`] is a body filter placed first in the relay's chain: it passes every byte on
//! unchanged and builds the pivot beside it — a whole body is kept (bounded) and translated at
//! the end; a stream's events are assembled chunk by chunk (another dialect's events are first
//! translated to chat chunks), holding only the answer, not the wire bytes. Only a complete
//! answer comes out of [`PivotCapture::take`]: a body that ended cleanly, or a stream that
//! reached its terminal event (`[DONE]`, a `finish_reason` on every choice, Anthropic's
//! `message_stop`) with no error event. A cut, cancelled or errored answer is never kept.

use serde_json::{json, Map, Value};

use super::key::CallKind;
use super::StoredAnswer;
use crate::dialect::{self, Dialect, Inbound, ResponseContext, StreamTranslator};
use crate::sse::{Event, EventSplitter};
use crate::usage;

/// Largest SSE event looked at while assembling (a bigger one spoils the capture).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// The pivot of a whole (non-streaming) 2xx answer from an upstream speaking `from`; `None`
/// when it is not a valid answer. `ctx` names generated ids and the model of translated ones.
pub fn pivot_from_whole(
    from: Dialect,
    kind: CallKind,
    body: &[u8],
    ctx: &ResponseContext<'_>,
) -> Option<StoredAnswer> {
    pivot_from_whole_with(from, kind, body, ctx, None)
}

/// [`pivot_from_whole`] for a caller that already read `body`'s usage
/// (`usage::from_body(body)`, or the usage half of `usage::with_model`): when the pivot is
/// the body itself (an OpenAI or Azure answer), that usage is kept instead of parsing the
/// body once more.
pub fn pivot_from_whole_with(
    from: Dialect,
    kind: CallKind,
    body: &[u8],
    ctx: &ResponseContext<'_>,
    body_usage: Option<Option<usage::Usage>>,
) -> Option<StoredAnswer> {
    let mut same = false;
    let pivot = match (kind, from) {
        (CallKind::Embeddings, Dialect::OpenAi | Dialect::Azure) => {
            object(body)?;
            serde_json::from_slice::<DataProbe>(body).ok()?.data?;
            same = true;
            body.to_vec()
        }
        (CallKind::Embeddings, _) => return None,
        (CallKind::Chat | CallKind::Completion, Dialect::OpenAi | Dialect::Azure) => {
            object(body)?;
            serde_json::from_slice::<ChoicesProbe>(body).ok()?.choices?;
            same = true;
            body.to_vec()
        }
        (CallKind::Completion, _) => return None,
        (CallKind::Chat, _) => {
            let (out, _) = dialect::translate_response(from, Inbound::OpenAiChat, 200, body, ctx);
            object(&out)?;
            serde_json::from_slice::<ChoicesProbe>(&out).ok()?.choices?;
            out
        }
    };
    let usage = match body_usage {
        Some(known) if same => known,
        _ => usage::from_body(&pivot),
    };
    Some(StoredAnswer {
        usage,
        body: pivot,
        cost_micros: None,
        kind,
    })
}

/// An answer whose `choices` is an array, checked without building a JSON tree (the
/// elements are skipped, not kept; `null` or another type is `None`). Like a derived struct,
/// it refuses a body that repeats `choices` (a `Value` would keep the last).
#[derive(serde::Deserialize)]
struct ChoicesProbe {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
}

/// `Some` when `body` starts (after whitespace) as a JSON object: a derived struct would also
/// read an array.
fn object(body: &[u8]) -> Option<()> {
    (body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')).then_some(())
}

/// An embeddings answer whose `data` is an array (see [`ChoicesProbe`]).
#[derive(serde::Deserialize)]
struct DataProbe {
    #[serde(default)]
    data: Option<Vec<serde::de::IgnoredAny>>,
}

/// What the capture does with the bytes.
enum Mode {
    /// A whole body, kept (bounded) and read at the end.
    Whole { copy: Vec<u8> },
    /// An event stream, assembled as it goes.
    Stream {
        /// Another dialect's stream, translated to chat chunks first.
        translator: Option<Box<StreamTranslator>>,
        scratch: Vec<u8>,
        splitter: EventSplitter,
        assembler: Box<Assembler>,
    },
}

/// A body filter that builds the pivot of the answer passing through (see the module docs).
pub struct PivotCapture {
    mode: Mode,
    from: Dialect,
    kind: CallKind,
    /// Largest answer kept.
    max: usize,
    /// For a translated whole answer: the model and id it reports.
    model: String,
    id: String,
    created: u64,
    /// Past `max`, or unreadable: nothing will be kept.
    spoiled: bool,
    result: Option<StoredAnswer>,
}

impl PivotCapture {
    /// A capture of an answer from an upstream speaking `from`; `stream` when it is an event
    /// stream; at most `max` bytes of answer. `model`, `id` and `created` are what a translated
    /// answer reports.
    pub fn new(
        from: Dialect,
        kind: CallKind,
        stream: bool,
        max: usize,
        (model, id, created): (&str, &str, u64),
    ) -> Self {
        let mode = if stream {
            let translator = match from {
                Dialect::OpenAi | Dialect::Azure => None,
                other => Some(Box::new(StreamTranslator::new(
                    other,
                    Inbound::OpenAiChat,
                    ResponseContext {
                        model,
                        id,
                        created,
                        include_usage: true,
                    },
                ))),
            };
            Mode::Stream {
                translator,
                scratch: Vec::new(),
                splitter: EventSplitter::new(MAX_EVENT_BYTES),
                assembler: Box::new(Assembler {
                    completion: kind == CallKind::Completion,
                    ..Assembler::default()
                }),
            }
        } else {
            Mode::Whole { copy: Vec::new() }
        };
        PivotCapture {
            mode,
            from,
            kind,
            max,
            model: model.to_owned(),
            id: id.to_owned(),
            created,
            // Embeddings never stream; completions only from OpenAI-shaped upstreams.
            spoiled: stream
                && (kind == CallKind::Embeddings
                    || (kind == CallKind::Completion
                        && !matches!(from, Dialect::OpenAi | Dialect::Azure))),
            result: None,
        }
    }

    /// The pivot of the answer, when it completed (call after the chain finished).
    pub fn take(&mut self) -> Option<StoredAnswer> {
        self.result.take()
    }

    fn assemble(&mut self, input: &[u8]) {
        let Mode::Stream {
            translator,
            scratch,
            splitter,
            assembler,
        } = &mut self.mode
        else {
            return;
        };
        let chunks: &[u8] = match translator {
            None => input,
            Some(t) => {
                scratch.clear();
                t.handle_bytes(input, scratch);
                scratch
            }
        };
        splitter.handle_bytes(chunks, |piece| match piece.event() {
            Some(ev) => assembler.on_event(&ev),
            None => {
                if matches!(piece, crate::sse::Piece::Oversized(_)) {
                    assembler.spoiled = true;
                }
            }
        });
        if assembler.content_bytes > self.max {
            self.spoiled = true;
        }
    }
}

impl PivotCapture {
    /// Takes the next piece of the body (any split), appends it unchanged to `out`, and builds
    /// the pivot beside it. (It is a body filter: `filter` chains it as `Stage::Pivot`.)
    pub fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(input);
        if self.spoiled {
            return;
        }
        if let Mode::Whole { copy } = &mut self.mode {
            if copy.len() + input.len() > self.max {
                self.spoiled = true;
                *copy = Vec::new();
            } else {
                copy.extend_from_slice(input);
            }
            return;
        }
        self.assemble(input);
    }

    /// The body ended; `complete` when the upstream finished it with framing intact (not
    /// failed, not cancelled). Builds the pivot when the answer is whole.
    pub fn finish(&mut self, complete: bool) {
        if self.spoiled || !complete {
            return;
        }
        let ctx = ResponseContext {
            model: &self.model,
            id: &self.id,
            created: self.created,
            include_usage: true,
        };
        match &mut self.mode {
            Mode::Whole { copy } => {
                self.result = pivot_from_whole(self.from, self.kind, copy, &ctx);
            }
            Mode::Stream {
                translator,
                scratch,
                splitter,
                assembler,
            } => {
                scratch.clear();
                if let Some(t) = translator {
                    // Another dialect's stream is complete only when it sent its own end.
                    if !t.upstream_complete() {
                        return;
                    }
                    t.finish(scratch);
                }
                splitter.handle_bytes(scratch, |piece| {
                    if let Some(ev) = piece.event() {
                        assembler.on_event(&ev);
                    }
                });
                splitter.finish_events(|ev| assembler.on_event(ev));
                self.result = assembler.build().map(|body| StoredAnswer {
                    usage: usage::from_body(&body),
                    body,
                    cost_micros: None,
                    kind: self.kind,
                });
            }
        }
    }
}

/// One tool call being assembled.
#[derive(Default)]
struct ToolCall {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

/// One choice being assembled.
#[derive(Default)]
struct Choice {
    index: u64,
    role: Option<Value>,
    content: Option<String>,
    /// A text completion's text.
    text: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<(u64, ToolCall)>,
    finish_reason: Option<Value>,
}

/// Chat completion chunks assembled into one chat completion.
#[derive(Default)]
struct Assembler {
    head: Map<String, Value>,
    choices: Vec<Choice>,
    usage: Option<Value>,
    done: bool,
    spoiled: bool,
    content_bytes: usize,
    /// Text completion chunks (`choices[].text`), built into a `text_completion`.
    completion: bool,
}

impl Assembler {
    fn on_event(&mut self, ev: &Event<'_>) {
        if ev.is_done() {
            self.done = true;
            return;
        }
        let Some(Value::Object(chunk)) = ev.json() else {
            self.spoiled = true;
            return;
        };
        if chunk.contains_key("error") || !ev.name.is_empty() && ev.name != b"message" {
            self.spoiled = true;
            return;
        }
        for field in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = chunk.get(field).filter(|v| !v.is_null()) {
                self.head.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            self.on_choice(c);
        }
    }

    fn on_choice(&mut self, c: &Value) {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
        let pos = match self.choices.iter().position(|x| x.index == index) {
            Some(p) => p,
            None => {
                self.choices.push(Choice {
                    index,
                    ..Choice::default()
                });
                self.choices.len() - 1
            }
        };
        let Some(acc) = self.choices.get_mut(pos) else {
            return;
        };
        if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
            acc.finish_reason = Some(f.clone());
        }
        if let Some(text) = c.get("text").and_then(Value::as_str) {
            self.content_bytes += text.len();
            acc.text.get_or_insert_with(String::new).push_str(text);
        }
        let Some(delta) = c.get("delta") else { return };
        if let Some(r) = delta.get("role").filter(|r| !r.is_null()) {
            acc.role.get_or_insert_with(|| r.clone());
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.content_bytes += text.len();
            acc.content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
            self.content_bytes += text.len();
            acc.refusal.get_or_insert_with(String::new).push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let at = match acc.tool_calls.iter().position(|(k, _)| *k == i) {
                Some(p) => p,
                None => {
                    acc.tool_calls.push((i, ToolCall::default()));
                    acc.tool_calls.len() - 1
                }
            };
            let Some((_, t)) = acc.tool_calls.get_mut(at) else {
                continue;
            };
            if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                t.id.get_or_insert_with(|| id.clone());
            }
            if let Some(k) = call.get("type").filter(|v| !v.is_null()) {
                t.kind.get_or_insert_with(|| k.clone());
            }
            if let Some(f) = call.get("function") {
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    t.name.push_str(n);
                }
                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                    self.content_bytes += a.len();
                    t.arguments.push_str(a);
                }
            }
        }
    }

    /// The whole chat completion, when the stream reached its end.
    fn build(&mut self) -> Option<Vec<u8>> {
        let finished =
            !self.choices.is_empty() && self.choices.iter().all(|c| c.finish_reason.is_some());
        if self.spoiled || !(self.done || finished) || self.choices.is_empty() {
            return None;
        }
        self.choices.sort_by_key(|c| c.index);
        if self.completion {
            return self.build_completion();
        }
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|c| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    c.role.clone().unwrap_or_else(|| "assistant".into()),
                );
                message.insert(
                    "content".into(),
                    c.content.clone().map_or(Value::Null, Value::String),
                );
                if let Some(r) = &c.refusal {
                    message.insert("refusal".into(), Value::String(r.clone()));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .iter()
                        .map(|(_, t)| {
                            json!({
                                "id": t.id.clone().unwrap_or(Value::Null),
                                "type": t.kind.clone().unwrap_or_else(|| "function".into()),
                                "function": {"name": t.name, "arguments": t.arguments},
                            })
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({
                    "index": c.index,
                    "message": Value::Object(message),
                    "logprobs": Value::Null,
                    "finish_reason": c.finish_reason.clone().unwrap_or_else(|| "stop".into()),
                })
            })
            .collect();
        let mut out = std::mem::take(&mut self.head);
        out.insert("object".into(), "chat.completion".into());
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage.take() {
            out.insert("usage".into(), u);
        }
        serde_json::to_vec(&Value::Object(out)).ok()
    }

    /// The whole text completion (the choices sorted, the stream ended).
    fn build_completion(&mut self) -> Option<Vec<u8>> {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|c| {
                json!({
                    "index": c.index,
                    "text": c.text.clone().unwrap_or_default(),
                    "logprobs": Value::Null,
                    "finish_reason": c.finish_reason.clone().unwrap_or_else(|| "stop".into()),
                })
            })
            .collect();
        let mut out = std::mem::take(&mut self.head);
        out.insert("object".into(), "text_completion".into());
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage.take() {
            out.insert("usage".into(), u);
        }
        serde_json::to_vec(&Value::Object(out)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, GatewayError};
    use crate::filter::{BodyEnd, BodyFilter};

    const STREAM: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
data: [DONE]\n\n";

    fn capture(stream: bool) -> PivotCapture {
        PivotCapture::new(
            Dialect::OpenAi,
            CallKind::Chat,
            stream,
            1 << 20,
            ("m", "chatcmpl-x", 1),
        )
    }

    #[test]
    fn a_known_usage_is_kept_for_a_body_kept_as_it_is() {
        let ctx = ResponseContext {
            model: "m",
            id: "chatcmpl-x",
            created: 1,
            include_usage: true,
        };
        let body = br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let read = usage::from_body(body);
        assert_eq!(read.map(|u| u.total_tokens()), Some(5));
        // Whatever the caller read is what is kept (the body is not parsed again)...
        let known = pivot_from_whole_with(Dialect::OpenAi, CallKind::Chat, body, &ctx, Some(read));
        assert_eq!(known.map(|a| a.usage), Some(read));
        let none = pivot_from_whole_with(Dialect::OpenAi, CallKind::Chat, body, &ctx, Some(None));
        assert_eq!(none.map(|a| a.usage), Some(None));
        // ...and without it, the same usage is read as before.
        let read_again = pivot_from_whole(Dialect::OpenAi, CallKind::Chat, body, &ctx);
        assert_eq!(read_again.map(|a| a.usage), Some(read));
    }

    #[test]
    fn a_whole_answer_is_kept_only_with_an_array_of_choices() {
        let ctx = ResponseContext {
            model: "m",
            id: "chatcmpl-x",
            created: 1,
            include_usage: true,
        };
        let whole = |kind, body: &str| {
            pivot_from_whole(Dialect::OpenAi, kind, body.as_bytes(), &ctx).map(|a| a.body)
        };
        let ok = r#" {"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        assert_eq!(whole(CallKind::Chat, ok), Some(ok.as_bytes().to_vec()));
        assert!(whole(CallKind::Chat, r#"{"choices":null}"#).is_none());
        assert!(whole(CallKind::Chat, r#"{"choices":{}}"#).is_none());
        assert!(whole(CallKind::Chat, r#"{"id":"c"}"#).is_none());
        assert!(whole(CallKind::Chat, r#"[[{"index":0}]]"#).is_none());
        assert!(whole(CallKind::Chat, r#"{"choices":[]"#).is_none());
        assert!(whole(CallKind::Embeddings, r#"{"data":[{"embedding":[0.5]}]}"#).is_some());
        assert!(whole(CallKind::Embeddings, r#"{"data":"x"}"#).is_none());
    }

    fn run(c: &mut PivotCapture, parts: &[&[u8]], end: BodyEnd<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            BodyFilter::handle_bytes(c, p, &mut out);
        }
        BodyFilter::finish(c, end, &mut out);
        out
    }

    #[test]
    fn a_complete_stream_becomes_one_completion_with_usage() {
        let mut c = capture(true);
        let bytes = STREAM.as_bytes();
        let out = run(&mut c, &[&bytes[..50], &bytes[50..]], BodyEnd::Complete);
        assert_eq!(out, bytes, "bytes pass through unchanged");
        let got = c.take().unwrap();
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "c1");
        assert_eq!(got.usage.unwrap().total_tokens(), 5);
    }

    #[test]
    fn cut_failed_or_cancelled_streams_are_not_kept() {
        let bytes = STREAM.as_bytes();
        let cut = &bytes[..bytes.len() / 2];
        let mut c = capture(true);
        run(&mut c, &[cut], BodyEnd::Complete);
        assert!(c.take().is_none(), "no terminal event");
        let mut c = capture(true);
        let err = GatewayError::new(ErrorKind::UpstreamTimeout, "stalled");
        run(&mut c, &[bytes], BodyEnd::Failed(&err));
        assert!(c.take().is_none());
        let mut c = capture(true);
        run(&mut c, &[bytes], BodyEnd::Cancelled);
        assert!(c.take().is_none());
        let mut c = capture(true);
        let with_error = format!(
            "{}data: {{\"error\":{{\"message\":\"x\"}}}}\n\ndata: [DONE]\n\n",
            &STREAM[..200]
        );
        run(&mut c, &[with_error.as_bytes()], BodyEnd::Complete);
        assert!(c.take().is_none(), "an error event spoils the answer");
    }

    #[test]
    fn whole_bodies_are_kept_within_the_bound() {
        let body = br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        let mut c = capture(false);
        run(&mut c, &[body], BodyEnd::Complete);
        let got = c.take().unwrap();
        assert_eq!(got.body, body);
        let mut small =
            PivotCapture::new(Dialect::OpenAi, CallKind::Chat, false, 10, ("m", "i", 0));
        run(&mut small, &[body], BodyEnd::Complete);
        assert!(small.take().is_none());
        let mut c = capture(false);
        run(
            &mut c,
            &[br#"{"error":{"message":"no"}}"#],
            BodyEnd::Complete,
        );
        assert!(c.take().is_none());
    }

    #[test]
    fn a_completion_stream_becomes_one_text_completion() {
        let stream = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\"Hello\",\"logprobs\":null,\"finish_reason\":null}]}\n\n\
data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":7,\"model\":\"m\",\"choices\":[{\"index\":0,\"text\":\" world\",\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n\
data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":7,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n\
data: [DONE]\n\n";
        let mut c = PivotCapture::new(
            Dialect::OpenAi,
            CallKind::Completion,
            true,
            1 << 20,
            ("m", "i", 0),
        );
        run(&mut c, &[stream.as_bytes()], BodyEnd::Complete);
        let kept = c.take().unwrap();
        assert_eq!(kept.kind, CallKind::Completion);
        let v: Value = serde_json::from_slice(&kept.body).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello world");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(kept.usage.unwrap().total_tokens(), 5);
        let mut other = PivotCapture::new(
            Dialect::Anthropic,
            CallKind::Completion,
            true,
            1 << 20,
            ("m", "i", 0),
        );
        run(&mut other, &[stream.as_bytes()], BodyEnd::Complete);
        assert!(
            other.take().is_none(),
            "completions only from OpenAI-shaped upstreams"
        );
    }

    #[test]
    fn an_anthropic_stream_is_kept_in_the_chat_shape() {
        let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi there\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut c = PivotCapture::new(
            Dialect::Anthropic,
            CallKind::Chat,
            true,
            1 << 20,
            ("m", "chatcmpl-x", 1),
        );
        run(&mut c, &[events.as_bytes()], BodyEnd::Complete);
        let got = c.take().unwrap();
        let v: Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(got.usage.unwrap().output_tokens, 2);
        let mut cut = PivotCapture::new(
            Dialect::Anthropic,
            CallKind::Chat,
            true,
            1 << 20,
            ("m", "chatcmpl-x", 1),
        );
        run(&mut cut, &[&events.as_bytes()[..400]], BodyEnd::Complete);
        assert!(cut.take().is_none());
    }
}
