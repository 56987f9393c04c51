//! Server-sent-event accounting for streamed responses (sans-IO).
//!
//! [`SseScanner`] takes the decoded response body in whatever pieces the
//! network delivers, splits it into lines and events, and classifies each
//! event:
//!
//! * **content**: an OpenAI chunk whose `choices[0].delta.content` is a
//!   non-empty string, or an Anthropic `content_block_delta` (by its `event:`
//!   name or its JSON `type`);
//! * **end**: `data: [DONE]` (OpenAI) or `message_stop` (Anthropic);
//! * anything else (role preambles, pings, usage) only counts as an event.
//!
//! It records the time of the first content event (time to first token) and
//! every gap between successive content events, flags the stream **stalled**
//! when a gap exceeds the stall bound, and [`StreamOutcome::lost`] tells
//! whether chunks went missing. Only a partial line is ever copied; the
//! carry buffer is kept across requests and capped at [`MAX_LINE`].

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use super::hist::Hist;

/// Longest SSE line accepted, in bytes; a longer one is a protocol error.
pub const MAX_LINE: usize = 1 << 20;

/// An SSE line longer than [`MAX_LINE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SSE line longer than {MAX_LINE} bytes")]
pub struct LineTooLong;

/// What one stream delivered, produced by [`SseScanner::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamOutcome {
    /// SSE events seen (content or not, the end marker included).
    pub events: u32,
    /// Events that carried content.
    pub content_events: u32,
    /// When the first content event arrived.
    pub first_content: Option<Instant>,
    /// Whether the end marker (`[DONE]` or `message_stop`) arrived.
    pub done: bool,
    /// Whether a gap between content events exceeded the stall bound.
    pub stalled: bool,
    /// The longest gap between content events.
    pub max_gap: Duration,
}

impl StreamOutcome {
    /// True when chunks are missing: fewer content events than
    /// `expect_chunks` (when given), or no end marker.
    pub fn lost(&self, expect_chunks: Option<u32>) -> bool {
        !self.done || expect_chunks.is_some_and(|n| self.content_events < n)
    }
}

/// Splits a streamed body into SSE events and accounts for them.
///
/// Call order per response: [`reset`](Self::reset), then
/// [`feed`](Self::feed) for each decoded body piece, then
/// [`finish`](Self::finish).
#[derive(Debug, Default)]
pub struct SseScanner {
    /// Bytes of a line not yet terminated by `\n` (never a complete line).
    carry: Vec<u8>,
    /// The current event has at least one field line.
    in_event: bool,
    /// The current event carries content.
    event_content: bool,
    outcome: StreamOutcome,
    last_content: Option<Instant>,
}

impl SseScanner {
    /// A scanner with an empty carry buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Clears all per-stream state, keeping the carry buffer's allocation.
    pub fn reset(&mut self) {
        self.carry.clear();
        self.in_event = false;
        self.event_content = false;
        self.outcome = StreamOutcome::default();
        self.last_content = None;
    }

    /// Feeds body bytes that arrived at `now`. Gaps between content events
    /// are recorded into `gaps`; a gap above `stall` marks the stream stalled.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        now: Instant,
        gaps: &mut Hist,
        stall: Duration,
    ) -> Result<(), LineTooLong> {
        if !self.carry.is_empty() {
            let Some(i) = memchr::memchr(b'\n', data) else {
                return self.keep(data);
            };
            self.keep(&data[..i])?;
            let line = std::mem::take(&mut self.carry);
            self.line(&line, now, gaps, stall);
            self.carry = line;
            self.carry.clear();
            data = &data[i + 1..];
        }
        while let Some(i) = memchr::memchr(b'\n', data) {
            self.line(&data[..i], now, gaps, stall);
            data = &data[i + 1..];
        }
        self.keep(data)
    }

    /// Ends the stream at `now`: an unterminated last line or event still
    /// counts, as a browser's `EventSource` would not, but as a lenient
    /// client should.
    pub fn finish(&mut self, now: Instant, gaps: &mut Hist, stall: Duration) -> StreamOutcome {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line, now, gaps, stall);
            self.carry = line;
            self.carry.clear();
        }
        self.dispatch(now, gaps, stall);
        self.outcome
    }

    fn keep(&mut self, partial: &[u8]) -> Result<(), LineTooLong> {
        if self.carry.len() + partial.len() > MAX_LINE {
            return Err(LineTooLong);
        }
        self.carry.extend_from_slice(partial);
        Ok(())
    }

    fn line(&mut self, line: &[u8], now: Instant, gaps: &mut Hist, stall: Duration) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(now, gaps, stall);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive ping
        }
        self.in_event = true;
        if let Some(value) = field(line, b"data") {
            match classify(value) {
                Class::Content => self.event_content = true,
                Class::End => self.outcome.done = true,
                Class::Other => {}
            }
        } else if let Some(name) = field(line, b"event") {
            match name {
                b"content_block_delta" => self.event_content = true,
                b"message_stop" => self.outcome.done = true,
                _ => {}
            }
        }
    }

    fn dispatch(&mut self, now: Instant, gaps: &mut Hist, stall: Duration) {
        if !self.in_event {
            return;
        }
        self.outcome.events += 1;
        if self.event_content {
            self.outcome.content_events += 1;
            match self.last_content {
                None => self.outcome.first_content = Some(now),
                Some(prev) => {
                    let gap = now.saturating_duration_since(prev);
                    gaps.record(gap);
                    self.outcome.max_gap = self.outcome.max_gap.max(gap);
                    if gap > stall {
                        self.outcome.stalled = true;
                    }
                }
            }
            self.last_content = Some(now);
        }
        self.in_event = false;
        self.event_content = false;
    }
}

/// The value of `name: value` (one optional space after the colon).
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Content,
    End,
    Other,
}

/// Classifies one `data:` payload without building a JSON tree.
fn classify(data: &[u8]) -> Class {
    if data == b"[DONE]" {
        return Class::End;
    }
    match serde_json::from_slice::<Chunk>(data) {
        Ok(c) if c.choices.0 || c.kind == Kind::ContentBlockDelta => Class::Content,
        Ok(c) if c.kind == Kind::MessageStop => Class::End,
        _ => Class::Other,
    }
}

/// The two fields of a chunk that matter; everything else is skipped.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: FirstChoiceHasContent,
    #[serde(rename = "type", default)]
    kind: Kind,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: NonEmptyStr,
}

/// `choices[0].delta.content` is a non-empty string; other choices are skipped.
#[derive(Default)]
struct FirstChoiceHasContent(bool);

impl<'de> Deserialize<'de> for FirstChoiceHasContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoiceHasContent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a choices array")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstChoiceHasContent(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first: Option<Choice> = seq.next_element()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoiceHasContent(
                    first.and_then(|c| c.delta).is_some_and(|d| d.content.0),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON string that is non-empty; `null` and other types read as empty.
#[derive(Default)]
struct NonEmptyStr(bool);

impl<'de> Deserialize<'de> for NonEmptyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmptyStr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NonEmptyStr(!v.is_empty()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(NonEmptyStr(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Content parts: non-empty when the array has an element.
                let any = seq.next_element::<IgnoredAny>()?.is_some();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NonEmptyStr(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// The Anthropic event `type`, compared without allocating.
#[derive(Default, PartialEq, Eq)]
enum Kind {
    ContentBlockDelta,
    MessageStop,
    #[default]
    Other,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(match v {
                    "content_block_delta" => Kind::ContentBlockDelta,
                    "message_stop" => Kind::MessageStop,
                    _ => Kind::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(100);

    fn openai(content: &str) -> String {
        format!("data: {{\"id\":\"x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}}}}]}}\n\n")
    }

    fn scan(pieces: &[(&[u8], u64)]) -> (StreamOutcome, Hist) {
        let t0 = Instant::now();
        let mut s = SseScanner::new();
        let mut gaps = Hist::new().unwrap();
        for (p, ms) in pieces {
            s.feed(p, t0 + Duration::from_millis(*ms), &mut gaps, STALL)
                .unwrap();
        }
        let end = t0 + Duration::from_millis(pieces.last().map_or(0, |p| p.1));
        (s.finish(end, &mut gaps, STALL), gaps)
    }

    #[test]
    fn openai_stream_any_split() {
        let body = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}}}}]}}\n\n{}{}{}data: [DONE]\n\n",
            openai("\"Hel\""),
            openai("\"lo \\\"w\\\"\""),
            openai("null"),
        );
        for cut in 0..body.len() {
            let (a, b) = body.as_bytes().split_at(cut);
            let (o, gaps) = scan(&[(a, 0), (b, 10)]);
            assert_eq!(
                (o.events, o.content_events, o.done),
                (5, 2, true),
                "cut at {cut}"
            );
            assert_eq!(gaps.len(), 1);
            assert!(!o.lost(Some(2)) && o.lost(Some(3)));
        }
    }

    #[test]
    fn anthropic_stream_and_crlf() {
        let body = "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n\
                    event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\r\n\r\n\
                    : ping\r\n\r\n\
                    event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
        let (o, _) = scan(&[(body.as_bytes(), 0)]);
        assert_eq!((o.events, o.content_events, o.done), (3, 1, true));
    }

    #[test]
    fn stall_and_loss() {
        let c = openai("\"a\"");
        let (o, gaps) = scan(&[(c.as_bytes(), 0), (c.as_bytes(), 50), (c.as_bytes(), 350)]);
        assert!(o.stalled && o.lost(None));
        assert_eq!(o.max_gap, Duration::from_millis(300));
        assert_eq!(gaps.len(), 2);
        let (o, _) = scan(&[(c.as_bytes(), 0), (b"data: [DONE]", 10)]);
        assert!(
            !o.stalled && o.done,
            "unterminated final event still counts"
        );
    }

    #[test]
    fn long_line_is_refused() {
        let mut s = SseScanner::new();
        let mut gaps = Hist::new().unwrap();
        let chunk = vec![b'x'; MAX_LINE / 2 + 1];
        let now = Instant::now();
        assert!(s.feed(&chunk, now, &mut gaps, STALL).is_ok());
        assert_eq!(s.feed(&chunk, now, &mut gaps, STALL), Err(LineTooLong));
    }
}
