//! OpenAI chat completions: the passthrough request, and the shapes every other dialect is
//! translated into (completions, chunks, usage, errors).

use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::inspect::{self, Rewrite};
use crate::usage::{self, Usage};

use super::{events, finish_body, parse_object, RequestOptions, ResponseContext, Translated};
use super::{JsonMap, UpstreamError};

/// A body for an upstream that speaks the client's dialect: `model` spliced in place (the rest
/// copied byte for byte) and, for OpenAI streams, `stream_options.include_usage` forced so usage
/// is always read ([`super::StreamTranslator`] strips it again when the client did not ask).
/// With provider extras the body is parsed and merged instead.
pub(crate) fn passthrough_request(
    body: &[u8],
    opts: &RequestOptions<'_>,
    path: String,
    force_usage: bool,
) -> Result<Translated, GatewayError> {
    let inspected = inspect::inspect(body)?;
    let stream = inspected.stream;
    if opts.extra.is_some_and(|e| !e.is_empty()) {
        let mut map = parse_object(body)?;
        map.insert("model".into(), opts.upstream_model.into());
        if force_usage && stream {
            let mut so = match map.remove("stream_options") {
                Some(Value::Object(o)) => o,
                _ => JsonMap::new(),
            };
            so.insert("include_usage".into(), true.into());
            map.insert("stream_options".into(), Value::Object(so));
        }
        return Ok(finish_body(map, opts, path, stream, Vec::new()));
    }
    let edits = Rewrite {
        model: Some(opts.upstream_model),
        force_include_usage: force_usage && stream,
    };
    let body = if edits.is_noop(&inspected) {
        body.to_vec()
    } else {
        let mut out = Vec::with_capacity(body.len() + 64);
        inspect::rewrite(body, &inspected, edits, &mut out);
        out
    };
    Ok(Translated {
        body,
        path,
        stream,
        dropped_fields: Vec::new(),
    })
}

/// Reads an OpenAI completion (to translate it for an Anthropic client).
pub(crate) fn read_response(body: &[u8]) -> Option<(Value, Option<Usage>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if !v.get("choices").is_some_and(Value::is_array) {
        return None;
    }
    let usage = usage::from_body(body);
    Some((v, usage))
}

/// OpenAI's `usage` object.
pub(crate) fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    })
}

/// A `chat.completion` object.
pub(crate) fn completion(
    ctx: &ResponseContext<'_>,
    choices: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let mut v = json!({
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
    });
    if let (Some(u), Some(obj)) = (usage, v.as_object_mut()) {
        obj.insert("usage".into(), usage_json(u));
    }
    v
}

/// One choice of a completion.
pub(crate) fn choice(index: u64, text: String, tool_calls: Vec<Value>, finish: &str) -> Value {
    let mut message = JsonMap::new();
    message.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    json!({
        "index": index,
        "message": message,
        "logprobs": null,
        "finish_reason": finish,
    })
}

/// One tool call; `arguments` is a JSON string.
pub(crate) fn tool_call(id: &str, name: &str, arguments: String) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    })
}

/// OpenAI's `error.type` for an upstream status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An OpenAI error body for an upstream error; the provider's own type becomes `code`.
pub(crate) fn error_json(status: u16, err: &UpstreamError) -> Value {
    json!({
        "error": {
            "message": err.message,
            "type": error_type(status),
            "param": null,
            "code": err.kind,
        }
    })
}

/// Writes an error in the middle of an OpenAI stream, ending it.
pub(crate) fn write_stream_error(out: &mut Vec<u8>, status: u16, err: &UpstreamError) {
    events::write_named(out, "error", &error_json(status, err));
    out.extend_from_slice(events::DONE);
}

/// Writes `chat.completion.chunk` events.
#[derive(Debug)]
pub(crate) struct ChunkWriter {
    id: String,
    model: String,
    created: u64,
}

impl ChunkWriter {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        ChunkWriter {
            id: ctx.id.to_owned(),
            model: ctx.model.to_owned(),
            created: ctx.created,
        }
    }

    /// The id generated tool calls are derived from.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn write(&self, out: &mut Vec<u8>, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let (Some(u), Some(obj)) = (usage, chunk.as_object_mut()) {
            obj.insert("usage".into(), u);
        }
        events::write_data(out, &chunk);
    }

    /// A chunk with one choice's `delta` and `finish_reason`.
    pub(crate) fn delta(
        &self,
        out: &mut Vec<u8>,
        index: u64,
        delta: JsonMap,
        finish: Option<&str>,
    ) {
        let choice = json!({
            "index": index,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish,
        });
        self.write(out, Value::Array(vec![choice]), None);
    }

    /// The usage-only chunk (`"choices":[]`) that ends a stream with `include_usage`.
    pub(crate) fn usage(&self, out: &mut Vec<u8>, u: &Usage) {
        self.write(out, Value::Array(Vec::new()), Some(usage_json(u)));
    }

    /// The end of a stream: the usage chunk when asked and known, then `[DONE]`.
    pub(crate) fn end(&self, out: &mut Vec<u8>, include_usage: bool, usage: Option<&Usage>) {
        if let Some(u) = usage.filter(|_| include_usage) {
            self.usage(out, u);
        }
        out.extend_from_slice(events::DONE);
    }
}

/// A delta object with one key.
pub(crate) fn delta1(key: &str, value: Value) -> JsonMap {
    let mut m = JsonMap::new();
    m.insert(key.into(), value);
    m
}
