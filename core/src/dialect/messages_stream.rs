//! OpenAI chunks translated event by event into an Anthropic Messages stream, for Anthropic
//! clients of an OpenAI-compatible (or, through it, Gemini) upstream.
//!
//! | OpenAI chunk | Anthropic events |
//! | --- | --- |
//! | the first chunk with a choice | `message_start` |
//! | `delta.content` | (`content_block_stop`, `content_block_start` text,) `content_block_delta` `text_delta` |
//! | `delta.tool_calls[i]` with an `id`/`name` first seen | (`content_block_stop`,) `content_block_start` `tool_use` |
//! | `delta.tool_calls[i].function.arguments` | `content_block_delta` `input_json_delta` |
//! | `finish_reason` | `content_block_stop`; the stop reason is kept |
//! | `usage` chunk | usage kept |
//! | `data: [DONE]` (or the end) | `message_delta` (stop reason, usage), `message_stop` |
//! | `event: error` / `{"error":…}` | `event: error` in Anthropic's shape |
//!
//! Blocks are sequential: a provider that interleaves the argument fragments of parallel tool
//! calls gets each fragment sent to its own block index, which may already be closed.

use serde_json::{json, Value};

use crate::usage::Usage;

use super::events::write_named;
use super::messages::{error_json, stop_reason, usage_json};
use super::{tool_call_id, ResponseContext, UpstreamError};
use crate::sse::Event;

#[derive(Debug)]
pub(crate) struct MessagesStream {
    id: String,
    model: String,
    started: bool,
    /// The open block: (index, is text).
    open: Option<(u64, bool)>,
    next_block: u64,
    /// (OpenAI tool-call index, Anthropic block index).
    tools: Vec<(u64, u64)>,
    stop: Option<&'static str>,
    usage: Option<Usage>,
    complete: bool,
    done: bool,
}

impl MessagesStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        MessagesStream {
            id: ctx.id.to_owned(),
            model: ctx.model.to_owned(),
            started: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            stop: None,
            usage: None,
            complete: false,
            done: false,
        }
    }

    pub(crate) fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if ev.is_done() {
            self.complete = true;
            self.end(out);
            return;
        }
        let Some(v) = ev.json() else {
            return;
        };
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let (e, status) = UpstreamError::from_stream_event(err, "type");
            let status = status.unwrap_or(500);
            write_named(out, "error", &error_json(status, &e));
            self.done = true;
            return;
        }
        if v.get("usage").is_some_and(|u| !u.is_null()) {
            if let Some(u) = crate::usage::from_body(&ev.data) {
                self.usage = Some(u);
            }
        }
        let choices = v.get("choices").and_then(Value::as_array);
        for choice in choices.map(Vec::as_slice).unwrap_or_default() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            self.start(out);
            if let Some(delta) = choice.get("delta") {
                self.on_delta(delta, out);
            }
            if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                self.stop = Some(stop_reason(finish));
                self.close(out);
            }
        }
    }

    fn on_delta(&mut self, delta: &Value, out: &mut Vec<u8>) {
        let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
        if !text.is_empty() {
            let index = match self.open {
                Some((i, true)) => i,
                _ => self.open_block(out, json!({"type": "text", "text": ""}), true),
            };
            write_named(
                out,
                "content_block_delta",
                &json!({
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": text},
                }),
            );
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        for (pos, call) in calls
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let tool = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let f = call.get("function");
            let block = match self.tools.iter().find(|(t, _)| *t == tool) {
                Some(&(_, b)) => b,
                None => {
                    let id = call
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .unwrap_or_else(|| tool_call_id(&self.id, 0, tool));
                    let name = f
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let b = self.open_block(
                        out,
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        false,
                    );
                    self.tools.push((tool, b));
                    b
                }
            };
            let args = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !args.is_empty() {
                write_named(
                    out,
                    "content_block_delta",
                    &json!({
                        "type": "content_block_delta",
                        "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": args},
                    }),
                );
            }
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        write_named(
            out,
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                },
            }),
        );
    }

    fn open_block(&mut self, out: &mut Vec<u8>, block: Value, text: bool) -> u64 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        write_named(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some((index, text));
        index
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            write_named(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.start(out);
        self.close(out);
        write_named(
            out,
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage_json(self.usage.as_ref()),
            }),
        );
        write_named(out, "message_stop", &json!({"type": "message_stop"}));
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        self.end(out);
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn complete(&self) -> bool {
        self.complete
    }
}
