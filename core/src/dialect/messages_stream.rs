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

use super::chunk_events::{ChunkEvents, ChunkState, Emitter};
use super::events::write_named;
use super::messages::{error_json, stop_reason, usage_json};
use super::{tool_call_id, ResponseContext, UpstreamError};

#[derive(Debug)]
pub(crate) struct MessagesStream {
    id: String,
    model: String,
    /// The open block: (index, is text).
    open: Option<(u64, bool)>,
    next_block: u64,
    /// (OpenAI tool-call index, Anthropic block index).
    tools: Vec<(u64, u64)>,
    stop: Option<&'static str>,
    chunks: ChunkState,
}

impl MessagesStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        MessagesStream {
            id: ctx.id.to_owned(),
            model: ctx.model.to_owned(),
            open: None,
            next_block: 0,
            tools: Vec::new(),
            stop: None,
            chunks: ChunkState::new(Emitter::plain()),
        }
    }

    fn open_block(&mut self, out: &mut Vec<u8>, block: Value, text: bool) -> u64 {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        self.emit(
            out,
            "content_block_start",
            json!({"index": index, "content_block": block}),
        );
        self.open = Some((index, text));
        index
    }
}

impl ChunkEvents for MessagesStream {
    fn state(&mut self) -> &mut ChunkState {
        &mut self.chunks
    }

    fn state_ref(&self) -> &ChunkState {
        &self.chunks
    }

    fn error_event(&mut self, out: &mut Vec<u8>, status: u16, err: &UpstreamError) {
        write_named(out, "error", &error_json(status, err));
    }

    fn finish_reason(&mut self, reason: &str, out: &mut Vec<u8>) {
        self.stop = Some(stop_reason(reason));
        self.close(out);
    }

    fn delta(&mut self, delta: &Value, out: &mut Vec<u8>) {
        let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
        if !text.is_empty() {
            let index = match self.open {
                Some((i, true)) => i,
                _ => self.open_block(out, json!({"type": "text", "text": ""}), true),
            };
            self.emit(
                out,
                "content_block_delta",
                json!({
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
                self.emit(
                    out,
                    "content_block_delta",
                    json!({
                        "index": block,
                        "delta": {"type": "input_json_delta", "partial_json": args},
                    }),
                );
            }
        }
    }

    fn opening(&mut self, out: &mut Vec<u8>) {
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        self.emit(out, "message_start", json!({ "message": message }));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            self.emit(out, "content_block_stop", json!({ "index": index }));
        }
    }

    fn closing(&mut self, out: &mut Vec<u8>) {
        let usage = usage_json(self.chunks.usage.as_ref());
        self.emit(
            out,
            "message_delta",
            json!({
                "delta": {"stop_reason": self.stop.unwrap_or("end_turn"), "stop_sequence": null},
                "usage": usage,
            }),
        );
        self.emit(out, "message_stop", json!({}));
    }
}
