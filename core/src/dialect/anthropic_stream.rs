//! Anthropic Messages streams: translated event by event into OpenAI chunks, or passed through
//! with the usage read on the side.
//!
//! | Anthropic event | OpenAI chunk |
//! | --- | --- |
//! | `message_start` | `delta: {role: assistant, content: ""}` (input usage recorded) |
//! | `content_block_start` `tool_use` | `delta.tool_calls[i]` with `id`, `name`, `arguments: ""` |
//! | `content_block_delta` `text_delta` | `delta.content` |
//! | `content_block_delta` `input_json_delta` | `delta.tool_calls[i].function.arguments` |
//! | `message_delta` | `finish_reason` (output usage recorded) |
//! | `message_stop` | usage chunk (when asked), `data: [DONE]` |
//! | `error` | `event: error` in OpenAI's shape, `data: [DONE]` |
//! | `ping`, thinking blocks, `content_block_stop` | nothing |

use serde_json::Value;

use crate::usage::Usage;

use super::anthropic::{finish_reason, AnthropicUsage};
use super::openai::{self, delta1, ChunkWriter};
use super::{ResponseContext, UpstreamError};
use crate::sse::Event;

/// The event an Anthropic stream ends with, for one that ended without it.
pub(crate) const MESSAGE_STOP: &[u8] =
    b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

/// The HTTP status Anthropic answers an error type with, for errors inside a stream.
pub(crate) fn status_of(error_type: &str) -> u16 {
    match error_type {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 529,
        _ => 500,
    }
}

fn event_type(ev: &Event<'_>, v: &Value) -> String {
    v.get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(ev.name).into_owned())
}

/// Reads usage from an Anthropic stream passed through unchanged.
#[derive(Debug, Default)]
pub(crate) struct UsageScan {
    usage: AnthropicUsage,
    complete: bool,
    /// `message_start.message.model`, bounded.
    model: Option<String>,
}

impl UsageScan {
    pub(crate) fn on_event(&mut self, ev: &Event<'_>) {
        let Some(v) = ev.json() else {
            return;
        };
        match event_type(ev, &v).as_str() {
            "message_start" => {
                let message = v.get("message");
                self.usage.update(message.and_then(|m| m.get("usage")));
                self.model = message
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .and_then(crate::answered_model::bounded);
            }
            "message_delta" => self.usage.update(v.get("usage")),
            "message_stop" => self.complete = true,
            _ => {}
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }

    pub(crate) fn complete(&self) -> bool {
        self.complete
    }

    pub(crate) fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

/// Anthropic events to OpenAI chunks.
#[derive(Debug)]
pub(crate) struct ChatStream {
    w: ChunkWriter,
    include_usage: bool,
    usage: AnthropicUsage,
    /// (Anthropic block index, OpenAI tool-call index) of the tool blocks so far.
    tools: Vec<(u64, u64)>,
    complete: bool,
    done: bool,
}

impl ChatStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        ChatStream {
            w: ChunkWriter::new(ctx),
            include_usage: ctx.include_usage,
            usage: AnthropicUsage::default(),
            tools: Vec::new(),
            complete: false,
            done: false,
        }
    }

    pub(crate) fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let Some(v) = ev.json() else {
            return;
        };
        match event_type(ev, &v).as_str() {
            "message_start" => {
                self.usage
                    .update(v.get("message").and_then(|m| m.get("usage")));
                let mut delta = delta1("role", "assistant".into());
                delta.insert("content".into(), "".into());
                self.w.delta(out, 0, delta, None);
            }
            "content_block_start" => self.block_start(&v, out),
            "content_block_delta" => self.block_delta(&v, out),
            "message_delta" => {
                self.usage.update(v.get("usage"));
                if let Some(stop) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.w
                        .delta(out, 0, Default::default(), Some(finish_reason(stop)));
                }
            }
            "message_stop" => {
                self.complete = true;
                self.end(out);
            }
            "error" => {
                let (e, _) = UpstreamError::from_stream_event(
                    v.get("error").unwrap_or(&Value::Null),
                    "type",
                );
                let status = status_of(e.kind.as_deref().unwrap_or(""));
                openai::write_stream_error(out, status, &e);
                self.done = true;
            }
            _ => {}
        }
    }

    fn block_start(&mut self, v: &Value, out: &mut Vec<u8>) {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(block) = v.get("content_block") else {
            return;
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.w.delta(out, 0, delta1("content", text.into()), None);
                }
            }
            Some("tool_use") => {
                let tool_index = self.tools.len() as u64;
                self.tools.push((index, tool_index));
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                // `input` is `{}` at the start; the JSON arrives as deltas. A provider that sends
                // it whole here gets it forwarded as the first arguments fragment.
                let args = match block.get("input") {
                    Some(Value::Object(o)) if !o.is_empty() => Value::Object(o.clone()).to_string(),
                    _ => String::new(),
                };
                let mut call = openai::tool_call(id, name, args);
                if let Some(obj) = call.as_object_mut() {
                    obj.insert("index".into(), tool_index.into());
                }
                self.w
                    .delta(out, 0, delta1("tool_calls", Value::Array(vec![call])), None);
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, v: &Value, out: &mut Vec<u8>) {
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Some(delta) = v.get("delta") else {
            return;
        };
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.w.delta(out, 0, delta1("content", text.into()), None);
                }
            }
            Some("input_json_delta") => {
                let Some(&(_, tool_index)) = self.tools.iter().find(|(b, _)| *b == index) else {
                    return;
                };
                let part = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if part.is_empty() {
                    return;
                }
                let call = serde_json::json!({
                    "index": tool_index,
                    "function": {"arguments": part},
                });
                self.w
                    .delta(out, 0, delta1("tool_calls", Value::Array(vec![call])), None);
            }
            _ => {}
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.done, true) {
            self.w
                .end(out, self.include_usage, self.usage.usage().as_ref());
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        self.end(out);
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage.usage()
    }

    pub(crate) fn complete(&self) -> bool {
        self.complete
    }
}
