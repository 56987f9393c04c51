//! The shared half of the translators that turn OpenAI chat chunks into a stream of named
//! events — Anthropic Messages (`messages_stream`) and the Responses API
//! (`responses::stream`): reading each chunk (the end, an upstream error, usage, choice 0's
//! delta and finish reason), the stream's life (opened once, ended once, nothing after an
//! error), and writing each event with its `type` (and, for the Responses API, its
//! `sequence_number`). Each translator says only what its events are ([`ChunkEvents`]).

use serde_json::Value;

use crate::sse::Event;
use crate::usage::Usage;

use super::events::write_named;
use super::UpstreamError;

/// Writes named events: `event: {name}` and a JSON body whose `type` is the name.
#[derive(Debug)]
pub(crate) struct Emitter {
    /// Each body carries `sequence_number`, counting from 0.
    numbered: bool,
    sequence: u64,
}

impl Emitter {
    /// Events without a sequence number (Anthropic Messages).
    pub(crate) fn plain() -> Self {
        Emitter {
            numbered: false,
            sequence: 0,
        }
    }

    /// Events numbered from 0 (the Responses API).
    pub(crate) fn numbered() -> Self {
        Emitter {
            numbered: true,
            sequence: 0,
        }
    }

    /// Writes event `name` with `body` (an object: `type` and the number are added to it).
    pub(crate) fn emit(&mut self, out: &mut Vec<u8>, name: &str, mut body: Value) {
        if let Some(o) = body.as_object_mut() {
            o.insert("type".into(), name.into());
            if self.numbered {
                o.insert("sequence_number".into(), self.sequence.into());
            }
        }
        if self.numbered {
            self.sequence += 1;
        }
        write_named(out, name, &body);
    }
}

/// What every chunk translator keeps.
#[derive(Debug)]
pub(crate) struct ChunkState {
    /// Writes the translator's events.
    pub(crate) events: Emitter,
    /// The opening events were written.
    started: bool,
    /// Usage the upstream reported.
    pub(crate) usage: Option<Usage>,
    /// The upstream sent its own end (`[DONE]`).
    complete: bool,
    /// The stream is over (ended, or failed): nothing more is written.
    done: bool,
}

impl ChunkState {
    pub(crate) fn new(events: Emitter) -> Self {
        ChunkState {
            events,
            started: false,
            usage: None,
            complete: false,
            done: false,
        }
    }
}

/// A translator of OpenAI chat chunks into named events: the events it writes at each step;
/// the provided methods read the chunks and keep the stream's life.
pub(crate) trait ChunkEvents {
    fn state(&mut self) -> &mut ChunkState;
    fn state_ref(&self) -> &ChunkState;

    /// The opening events, before the first content.
    fn opening(&mut self, out: &mut Vec<u8>);
    /// Choice 0's `delta`.
    fn delta(&mut self, delta: &Value, out: &mut Vec<u8>);
    /// Choice 0's `finish_reason`.
    fn finish_reason(&mut self, reason: &str, out: &mut Vec<u8>);
    /// Ends the open block or item.
    fn close(&mut self, out: &mut Vec<u8>);
    /// The closing events, after the last block or item was closed.
    fn closing(&mut self, out: &mut Vec<u8>);
    /// The error event that ends a failed stream.
    fn error_event(&mut self, out: &mut Vec<u8>, status: u16, err: &UpstreamError);

    /// Writes event `name` (see [`Emitter::emit`]).
    fn emit(&mut self, out: &mut Vec<u8>, name: &str, body: Value) {
        self.state().events.emit(out, name, body);
    }

    /// Takes one upstream event.
    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        if self.state_ref().done {
            return;
        }
        if ev.is_done() {
            self.state().complete = true;
            self.finish(out);
            return;
        }
        let Some(v) = ev.json() else {
            return;
        };
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let (e, status) = UpstreamError::from_stream_event(err, "type");
            self.fail(out, status.unwrap_or(500), &e);
            return;
        }
        if v.get("usage").is_some_and(|u| !u.is_null()) {
            if let Some(u) = crate::usage::from_body(&ev.data) {
                self.state().usage = Some(u);
            }
        }
        let choices = v.get("choices").and_then(Value::as_array);
        for choice in choices.map(Vec::as_slice).unwrap_or_default() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                continue;
            }
            self.start(out);
            if let Some(delta) = choice.get("delta") {
                self.delta(delta, out);
            }
            if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason(finish, out);
            }
        }
    }

    /// Writes the opening events, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.state().started, true) {
            self.opening(out);
        }
    }

    /// Ends the stream (the upstream's end, or the body's): opened if it was not, the open
    /// block closed, the closing events. Once.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.state().done, true) {
            return;
        }
        self.start(out);
        self.close(out);
        self.closing(out);
    }

    /// The upstream failed mid-stream: the error event ends the stream.
    fn fail(&mut self, out: &mut Vec<u8>, status: u16, err: &UpstreamError) {
        if !std::mem::replace(&mut self.state().done, true) {
            self.error_event(out, status, err);
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.state_ref().usage
    }

    fn complete(&self) -> bool {
        self.state_ref().complete
    }
}
