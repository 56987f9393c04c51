//! OpenAI chat chunks translated event by event into a Responses API stream, for Responses
//! clients of a chat-completions upstream (and, through the chat translators, of Anthropic
//! and Gemini ones).
//!
//! | chat chunk | Responses events |
//! | --- | --- |
//! | the first chunk with a choice | `response.created`, `response.in_progress` |
//! | `delta.content` | (`response.output_item.added` message, `response.content_part.added`,) `response.output_text.delta` |
//! | `delta.tool_calls[i]` first seen | (the open item's `….done` events,) `response.output_item.added` function_call |
//! | `delta.tool_calls[i].function.arguments` | `response.function_call_arguments.delta` |
//! | `finish_reason` | kept for the status |
//! | `usage` chunk | usage kept |
//! | `data: [DONE]` (or the end) | the open item's `….done` events, `response.completed` (or `response.incomplete`) with every item and the usage |
//! | `event: error` / `{"error":…}` | `error` |
//!
//! Every event carries `sequence_number`, counting from 0. Items are sequential: a provider
//! that interleaves the argument fragments of parallel tool calls gets a new item each time
//! the call changes (as the Messages translator gets a new block).

use serde_json::{json, Value};

use super::super::chunk_events::{ChunkEvents, ChunkState, Emitter};
use super::super::{tool_call_id, ResponseContext, UpstreamError};
use super::{function_call_item, item_id, message_item, response_object, status_of};

/// The output item being written.
#[derive(Debug)]
enum Open {
    /// A message: its text so far.
    Message { text: String },
    /// A function call: the chat tool-call index, call id, name, arguments so far.
    Call {
        tool: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

#[derive(Debug)]
pub(crate) struct ResponsesStream {
    id: String,
    model: String,
    created: u64,
    /// Items already closed, as they appear in `response.output`.
    items: Vec<Value>,
    open: Option<Open>,
    finish: Option<String>,
    chunks: ChunkState,
}

impl ResponsesStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        ResponsesStream {
            id: ctx.id.to_owned(),
            model: ctx.model.to_owned(),
            created: ctx.created,
            items: Vec::new(),
            open: None,
            finish: None,
            chunks: ChunkState::new(Emitter::numbered()),
        }
    }

    fn ctx(&self) -> ResponseContext<'_> {
        ResponseContext {
            model: &self.model,
            id: &self.id,
            created: self.created,
            include_usage: true,
        }
    }
}

impl ChunkEvents for ResponsesStream {
    fn state(&mut self) -> &mut ChunkState {
        &mut self.chunks
    }

    fn state_ref(&self) -> &ChunkState {
        &self.chunks
    }

    fn finish_reason(&mut self, reason: &str, _out: &mut Vec<u8>) {
        self.finish = Some(reason.to_owned());
    }

    fn delta(&mut self, delta: &Value, out: &mut Vec<u8>) {
        let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
        if !text.is_empty() {
            if !matches!(self.open, Some(Open::Message { .. })) {
                self.close(out);
                let n = self.items.len();
                let id = item_id("msg", &self.id, n);
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": n, "item": message_item(&id, "", "in_progress")}),
                );
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({
                        "item_id": id, "output_index": n, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []},
                    }),
                );
                self.open = Some(Open::Message {
                    text: String::new(),
                });
            }
            if let Some(Open::Message { text: so_far }) = &mut self.open {
                so_far.push_str(text);
            }
            let n = self.items.len();
            self.emit(
                out,
                "response.output_text.delta",
                json!({
                    "item_id": item_id("msg", &self.id, n), "output_index": n,
                    "content_index": 0, "delta": text, "logprobs": [],
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
            let same = matches!(&self.open, Some(Open::Call { tool: t, .. }) if *t == tool);
            if !same {
                self.close(out);
                let call_id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| tool_call_id(&self.id, 0, tool));
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let n = self.items.len();
                let item = function_call_item(
                    &item_id("fc", &self.id, n),
                    &call_id,
                    &name,
                    "",
                    "in_progress",
                );
                self.emit(
                    out,
                    "response.output_item.added",
                    json!({"output_index": n, "item": item}),
                );
                self.open = Some(Open::Call {
                    tool,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            let args = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !args.is_empty() {
                if let Some(Open::Call { arguments, .. }) = &mut self.open {
                    arguments.push_str(args);
                }
                let n = self.items.len();
                self.emit(
                    out,
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id("fc", &self.id, n), "output_index": n, "delta": args}),
                );
            }
        }
    }

    fn opening(&mut self, out: &mut Vec<u8>) {
        let response = response_object(&self.ctx(), "in_progress", None, Vec::new(), None);
        self.emit(
            out,
            "response.created",
            json!({"response": response.clone()}),
        );
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    /// Ends the open item with its `….done` events.
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let n = self.items.len();
        let item = match open {
            Open::Message { text } => {
                let id = item_id("msg", &self.id, n);
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": n, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    out,
                    "response.content_part.done",
                    json!({
                        "item_id": id, "output_index": n, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []},
                    }),
                );
                message_item(&id, &text, "completed")
            }
            Open::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                let id = item_id("fc", &self.id, n);
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": n, "name": name, "arguments": arguments}),
                );
                function_call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": n, "item": item.clone()}),
        );
        self.items.push(item);
    }

    fn closing(&mut self, out: &mut Vec<u8>) {
        let (status, incomplete) = status_of(self.finish.as_deref().unwrap_or("stop"));
        let items = std::mem::take(&mut self.items);
        let response = response_object(
            &self.ctx(),
            status,
            incomplete,
            items,
            self.chunks.usage.as_ref(),
        );
        let name = if incomplete.is_some() {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(out, name, json!({"response": response}));
    }

    /// The `error` event that ends a failed stream.
    fn error_event(&mut self, out: &mut Vec<u8>, status: u16, err: &UpstreamError) {
        let body = super::error_json(status, err);
        let e = body.get("error").cloned().unwrap_or(Value::Null);
        self.emit(
            out,
            "error",
            json!({
                "code": e.get("code").cloned().unwrap_or(Value::Null),
                "message": e.get("message").cloned().unwrap_or(Value::Null),
                "param": null,
            }),
        );
    }
}
