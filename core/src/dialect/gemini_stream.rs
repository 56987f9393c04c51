//! Gemini `streamGenerateContent?alt=sse` translated event by event into OpenAI chunks.
//!
//! Every Gemini event is a whole `GenerateContentResponse` holding the next text of each
//! candidate; function calls arrive whole (one chunk with `id`, `name` and all `arguments`),
//! `finishReason` on a candidate's last event, and `usageMetadata` (cumulative) on the events.
//! The stream has no end marker of its own, so [`ChatStream::finish`] writes the usage chunk
//! (when asked) and `data: [DONE]`.

use serde_json::Value;

use crate::usage::Usage;

use super::gemini::{finish_reason, read_parts, usage};
use super::openai::{self, ChunkWriter};
use super::{JsonMap, ResponseContext, UpstreamError};
use crate::sse::Event;

#[derive(Debug)]
pub(crate) struct ChatStream {
    w: ChunkWriter,
    include_usage: bool,
    usage: Option<Usage>,
    /// (candidate index, tool calls sent so far) of each candidate seen.
    candidates: Vec<(u64, u64)>,
    complete: bool,
    done: bool,
}

impl ChatStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        ChatStream {
            w: ChunkWriter::new(ctx),
            include_usage: ctx.include_usage,
            usage: None,
            candidates: Vec::new(),
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
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let (e, status) = UpstreamError::from_stream_event(err, "status");
            let status = status.unwrap_or(500);
            openai::write_stream_error(out, status, &e);
            self.done = true;
            return;
        }
        if let Some(u) = usage(v.get("usageMetadata")) {
            self.usage = Some(u);
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        let candidates = candidates.map(Vec::as_slice).unwrap_or_default();
        for (pos, cand) in candidates.iter().enumerate() {
            let index = cand
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let (first, sent) = match self.candidates.iter().position(|(i, _)| *i == index) {
                Some(at) => (false, at),
                None => {
                    self.candidates.push((index, 0));
                    (true, self.candidates.len() - 1)
                }
            };
            let tools_before = self.candidates.get(sent).map_or(0, |c| c.1);
            let (text, calls) = read_parts(cand, self.w.id(), index, tools_before);
            let mut delta = JsonMap::new();
            if first {
                delta.insert("role".into(), "assistant".into());
            }
            if !text.is_empty() || first {
                delta.insert("content".into(), text.into());
            }
            let tools_after = tools_before + calls.len() as u64;
            if !calls.is_empty() {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .zip(tools_before..)
                    .map(|(mut call, n)| {
                        if let Some(obj) = call.as_object_mut() {
                            obj.insert("index".into(), n.into());
                        }
                        call
                    })
                    .collect();
                delta.insert("tool_calls".into(), Value::Array(calls));
            }
            if let Some(c) = self.candidates.get_mut(sent) {
                c.1 = tools_after;
            }
            let finish = cand
                .get("finishReason")
                .and_then(Value::as_str)
                .map(|r| finish_reason(r, tools_after > 0));
            if finish.is_some() {
                self.complete = true;
            }
            if !delta.is_empty() || finish.is_some() {
                self.w.delta(out, index, delta, finish);
            }
        }
        if candidates.is_empty()
            && v.get("promptFeedback")
                .and_then(|p| p.get("blockReason"))
                .is_some()
        {
            self.complete = true;
            self.w.delta(out, 0, JsonMap::new(), Some("content_filter"));
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.done, true) {
            self.w.end(out, self.include_usage, self.usage.as_ref());
        }
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn complete(&self) -> bool {
        self.complete
    }
}
