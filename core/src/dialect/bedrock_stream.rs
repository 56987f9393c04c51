//! Bedrock ConverseStream answers: the binary AWS event-stream framing decoded incrementally
//! ([`FrameDecoder`], any split of the input, one byte at a time included), its events
//! translated into OpenAI chunks ([`ChatStream`]), and for Anthropic and Responses clients a
//! second translation after it through the pivot ([`Relay`]).
//!
//! A frame (`application/vnd.amazon.eventstream`): total length (u32, big-endian), headers
//! length (u32), CRC32 of those 8 bytes, the headers (`name_len u8, name, type u8, value`),
//! the payload (JSON here), CRC32 of everything before it.
//!
//! | Bedrock event (`:event-type`) | OpenAI chunk |
//! | --- | --- |
//! | `messageStart` | `delta: {role: assistant, content: ""}` |
//! | `contentBlockStart` `toolUse` | `delta.tool_calls[i]` with `id`, `name`, `arguments: ""` |
//! | `contentBlockDelta` `text` | `delta.content` |
//! | `contentBlockDelta` `toolUse.input` | `delta.tool_calls[i].function.arguments` |
//! | `messageStop` | `finish_reason` |
//! | `metadata` (usage) | usage chunk (when asked), `data: [DONE]` |
//! | `:message-type` `exception` | `event: error` in OpenAI's shape (status from the type), `data: [DONE]` |
//! | `contentBlockStop`, reasoning deltas | nothing |

use serde_json::{json, Value};

use crate::sse::EventSplitter;
use crate::usage::Usage;

use super::bedrock::{finish_reason, usage};
use super::openai::{self, delta1, ChunkWriter};
use super::{ResponseContext, Translator, UpstreamError};

/// The largest frame accepted (Bedrock's own limit is 16 MiB of payload plus headers).
const MAX_FRAME: usize = 16 << 20 | 128 << 10;
/// Prelude (12 bytes) plus the message CRC (4).
const FRAME_OVERHEAD: usize = 16;

/// One decoded event-stream message.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// `:message-type` (`event`, `exception` or `error`).
    pub(crate) message_type: String,
    /// `:event-type`, or `:exception-type` of an exception, or `:error-code` of an error.
    pub(crate) kind: String,
    /// `:error-message` of an `error` message.
    pub(crate) error_message: Option<String>,
    pub(crate) payload: Vec<u8>,
}

/// Why a frame could not be read; the stream cannot go on after it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    Length(usize),
    PreludeCrc,
    MessageCrc,
    Headers,
}

impl FrameError {
    fn message(&self) -> String {
        let what = match self {
            FrameError::Length(n) => format!("a frame length of {n} bytes"),
            FrameError::PreludeCrc => "a prelude CRC that does not match".to_owned(),
            FrameError::MessageCrc => "a message CRC that does not match".to_owned(),
            FrameError::Headers => "headers that cannot be read".to_owned(),
        };
        format!("the bedrock upstream sent an event-stream frame with {what}")
    }
}

/// Decodes event-stream frames from bytes as they arrive. Holds at most one partial frame.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
    failed: bool,
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

impl FrameDecoder {
    /// Takes the next bytes and calls `on_frame` for every complete frame; after a framing
    /// error it reports it once and ignores the rest.
    pub(crate) fn handle_bytes(
        &mut self,
        input: &[u8],
        mut on_frame: impl FnMut(Result<Frame, FrameError>),
    ) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(input);
        let mut at = 0;
        while self.buf.len() - at >= 12 {
            let frame = &self.buf[at..];
            let total = be32(frame);
            if !(FRAME_OVERHEAD..=MAX_FRAME).contains(&total) {
                return self.fail(FrameError::Length(total), &mut on_frame);
            }
            if crc32fast::hash(&frame[..8]) as usize != be32(&frame[8..12]) {
                return self.fail(FrameError::PreludeCrc, &mut on_frame);
            }
            if frame.len() < total {
                break;
            }
            let result = parse_frame(&frame[..total]);
            at += total;
            let failed = result.is_err();
            on_frame(result);
            if failed {
                self.failed = true;
                self.buf = Vec::new();
                return;
            }
        }
        self.buf.drain(..at);
    }

    fn fail(&mut self, err: FrameError, on_frame: &mut impl FnMut(Result<Frame, FrameError>)) {
        self.failed = true;
        self.buf = Vec::new();
        on_frame(Err(err));
    }
}

/// One whole frame (its length and prelude checked).
fn parse_frame(frame: &[u8]) -> Result<Frame, FrameError> {
    let total = frame.len();
    let crc_at = total - 4;
    if crc32fast::hash(&frame[..crc_at]) as usize != be32(&frame[crc_at..]) {
        return Err(FrameError::MessageCrc);
    }
    let headers_len = be32(&frame[4..8]);
    let headers_end = 12usize
        .checked_add(headers_len)
        .filter(|e| *e <= crc_at)
        .ok_or(FrameError::Length(total))?;
    let mut out = Frame {
        payload: frame[headers_end..crc_at].to_vec(),
        ..Frame::default()
    };
    let mut h = &frame[12..headers_end];
    while let Some((&name_len, rest)) = h.split_first() {
        let name_len = usize::from(name_len);
        let name = rest.get(..name_len).ok_or(FrameError::Headers)?;
        let (&kind, rest) = rest[name_len..].split_first().ok_or(FrameError::Headers)?;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(FrameError::Headers),
        };
        let (value, rest) = match fixed {
            Some(n) => (None, rest.get(n..).ok_or(FrameError::Headers)?),
            None => {
                let len = rest.get(..2).ok_or(FrameError::Headers)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let value = rest.get(2..2 + len).ok_or(FrameError::Headers)?;
                (Some(value), &rest[2 + len..])
            }
        };
        if let (7, Some(v)) = (kind, value) {
            let v = String::from_utf8_lossy(v).into_owned();
            match name {
                b":message-type" => out.message_type = v,
                b":event-type" | b":exception-type" | b":error-code" => out.kind = v,
                b":error-message" => out.error_message = Some(v),
                _ => {}
            }
        }
        h = rest;
    }
    Ok(out)
}

/// The HTTP status Bedrock answers an exception type with, for exceptions inside a stream.
pub(crate) fn status_of(exception: &str) -> u16 {
    match exception.to_ascii_lowercase().trim_end_matches("exception") {
        "validation" => 400,
        "accessdenied" => 403,
        "resourcenotfound" => 404,
        "modeltimeout" => 408,
        "throttling" => 429,
        "modelstreamerror" => 424,
        "serviceunavailable" => 503,
        _ => 500,
    }
}

/// Bedrock stream events to OpenAI chunks.
#[derive(Debug)]
pub(crate) struct ChatStream {
    w: ChunkWriter,
    include_usage: bool,
    usage: Option<Usage>,
    /// (content block index, OpenAI tool-call index) of the tool blocks so far.
    tools: Vec<(u64, u64)>,
    complete: bool,
    done: bool,
}

impl ChatStream {
    pub(crate) fn new(ctx: &ResponseContext<'_>) -> Self {
        ChatStream {
            w: ChunkWriter::new(ctx),
            include_usage: ctx.include_usage,
            usage: None,
            tools: Vec::new(),
            complete: false,
            done: false,
        }
    }

    pub(crate) fn on_frame(&mut self, frame: Result<Frame, FrameError>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let err = UpstreamError {
                    message: e.message(),
                    kind: None,
                };
                openai::write_stream_error(out, 502, &err);
                self.done = true;
                return;
            }
        };
        let v: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
        if frame.message_type != "event" {
            let message = frame
                .error_message
                .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| "the bedrock upstream stream failed".to_owned());
            let err = UpstreamError {
                message,
                kind: Some(frame.kind.clone()).filter(|k| !k.is_empty()),
            };
            openai::write_stream_error(out, status_of(&frame.kind), &err);
            self.done = true;
            return;
        }
        match frame.kind.as_str() {
            "messageStart" => {
                let mut delta = delta1("role", "assistant".into());
                delta.insert("content".into(), "".into());
                self.w.delta(out, 0, delta, None);
            }
            "contentBlockStart" => {
                let index = block_index(&v);
                let Some(tool) = v.get("start").and_then(|s| s.get("toolUse")) else {
                    return;
                };
                let tool_index = self.tools.len() as u64;
                self.tools.push((index, tool_index));
                let id = tool.get("toolUseId").and_then(Value::as_str).unwrap_or("");
                let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
                let mut call = openai::tool_call(id, name, String::new());
                if let Some(obj) = call.as_object_mut() {
                    obj.insert("index".into(), tool_index.into());
                }
                self.w
                    .delta(out, 0, delta1("tool_calls", Value::Array(vec![call])), None);
            }
            "contentBlockDelta" => self.block_delta(&v, out),
            "messageStop" => {
                self.complete = true;
                let stop = v
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                self.w
                    .delta(out, 0, Default::default(), Some(finish_reason(stop)));
            }
            "metadata" => {
                if let Some(u) = usage(v.get("usage")) {
                    self.usage = Some(u);
                }
                if self.complete {
                    self.end(out);
                }
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, v: &Value, out: &mut Vec<u8>) {
        let Some(delta) = v.get("delta") else {
            return;
        };
        if let Some(text) = delta.get("text").and_then(Value::as_str) {
            if !text.is_empty() {
                self.w.delta(out, 0, delta1("content", text.into()), None);
            }
            return;
        }
        let Some(part) = delta
            .get("toolUse")
            .and_then(|t| t.get("input"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        else {
            return;
        };
        let index = block_index(v);
        let Some(&(_, tool_index)) = self.tools.iter().find(|(b, _)| *b == index) else {
            return;
        };
        let call = json!({ "index": tool_index, "function": { "arguments": part } });
        self.w
            .delta(out, 0, delta1("tool_calls", Value::Array(vec![call])), None);
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if !std::mem::replace(&mut self.done, true) {
            self.w.end(out, self.include_usage, self.usage.as_ref());
        }
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

fn block_index(v: &Value) -> u64 {
    v.get("contentBlockIndex")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A ConverseStream relayed to a client: frames decoded, translated to OpenAI chunks, and for
/// other clients translated again from those chunks.
#[derive(Debug)]
pub(crate) struct Relay {
    decoder: FrameDecoder,
    first: ChatStream,
    second: Option<(EventSplitter, Translator)>,
    scratch: Vec<u8>,
}

impl Relay {
    pub(crate) fn new(first: ChatStream, second: Option<Translator>) -> Self {
        Relay {
            decoder: FrameDecoder::default(),
            first,
            second: second.map(|t| (super::events::splitter(), t)),
            scratch: Vec::new(),
        }
    }

    pub(crate) fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let first = &mut self.first;
        match &mut self.second {
            None => self.decoder.handle_bytes(input, |f| first.on_frame(f, out)),
            Some((split, t)) => {
                let scratch = &mut self.scratch;
                self.decoder
                    .handle_bytes(input, |f| first.on_frame(f, scratch));
                split.handle_events(scratch, |ev| t.on_event(ev, out));
                scratch.clear();
            }
        }
    }

    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        match &mut self.second {
            None => self.first.finish(out),
            Some((split, t)) => {
                self.first.finish(&mut self.scratch);
                split.handle_events(&self.scratch, |ev| t.on_event(ev, out));
                split.finish_events(|ev| t.on_event(ev, out));
                t.finish(out);
                self.scratch.clear();
            }
        }
    }

    /// The second translator, when it is the Responses one (errors are written its way).
    pub(crate) fn second_mut(&mut self) -> Option<&mut Translator> {
        self.second.as_mut().map(|(_, t)| t)
    }

    pub(crate) fn complete(&self) -> bool {
        self.first.complete()
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.first.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with a string header, an int header and a bool header (types 7, 4, 0).
    fn frame(kind: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (name, value) in [(":message-type", "event"), (":event-type", kind)] {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(7);
            h.extend_from_slice(&(value.len() as u16).to_be_bytes());
            h.extend_from_slice(value.as_bytes());
        }
        h.extend_from_slice(b"\x05count\x04\x00\x00\x00\x07\x04flag\x00");
        let total = (16 + h.len() + payload.len()) as u32;
        let mut out = total.to_be_bytes().to_vec();
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    fn decode(input: &[u8], step: usize) -> Vec<Result<Frame, FrameError>> {
        let mut d = FrameDecoder::default();
        let mut frames = Vec::new();
        for chunk in input.chunks(step) {
            d.handle_bytes(chunk, |f| frames.push(f));
        }
        frames
    }

    #[test]
    fn frames_decode_whatever_the_split() {
        let mut input = frame("messageStart", br#"{"role":"assistant"}"#);
        input.extend(frame("metadata", b"{}"));
        for step in [1, 2, 7, input.len()] {
            let frames = decode(&input, step);
            assert_eq!(frames.len(), 2, "step {step}");
            let first = frames[0].as_ref().unwrap();
            assert_eq!(
                (first.message_type.as_str(), first.kind.as_str()),
                ("event", "messageStart")
            );
            assert_eq!(first.payload, br#"{"role":"assistant"}"#);
        }
    }

    #[test]
    fn bad_frames_fail_once() {
        let mut bad_prelude = frame("x", b"{}");
        bad_prelude[9] ^= 1;
        assert_eq!(decode(&bad_prelude, 1), vec![Err(FrameError::PreludeCrc)]);
        let mut too_long = frame("x", b"{}");
        too_long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let crc = crc32fast::hash(&too_long[..8]).to_be_bytes();
        too_long[8..12].copy_from_slice(&crc);
        assert!(matches!(
            decode(&too_long, 3)[..],
            [Err(FrameError::Length(_))]
        ));
        let mut twice = frame("x", b"{}");
        let n = twice.len();
        twice[n - 1] ^= 1;
        twice.extend(frame("y", b"{}"));
        assert_eq!(decode(&twice, 5), vec![Err(FrameError::MessageCrc)]);
    }
}
