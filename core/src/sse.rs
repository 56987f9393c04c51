//! Server-sent events: the one event splitter, and relay scanning that finds the usage in a
//! stream without re-serialising it.
//!
//! [`EventSplitter`] cuts a byte stream into events however the reads split it; everything
//! that reads SSE in the gateway goes through it: [`SseScanner`] here and the stream
//! translators in [`crate::dialect`]. [`Event::parse`] reads an event's fields.
//!
//! The relay hands every upstream read to [`SseScanner::handle_bytes`], which appends what the
//! client should receive to an output buffer and keeps the few facts the gateway needs: the
//! final usage, whether `[DONE]` was seen, and how many data events went by.
//!
//! Two modes:
//! - **passthrough** (the client asked for usage itself): every input byte is forwarded at once;
//!   the scanner only keeps a copy of a trailing partial event so it can read usage that spans
//!   two reads.
//! - **strip** (the gateway added `stream_options.include_usage`): complete events are forwarded
//!   at once except the usage-only chunk (`"choices":[]` with a `usage`), and the `"usage":null`
//!   that providers then add to every other chunk is cut out, so the client sees exactly what it
//!   asked for. A trailing partial event is held until its end arrives — providers write whole
//!   events, so in practice nothing waits.

use std::borrow::Cow;

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde_json::Value;

use crate::usage::Usage;

/// Largest event the scanner holds back; a longer one is forwarded unscanned.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------------------------

/// A run of stream bytes handed out by [`EventSplitter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One whole event, its terminating blank line included — except the last one handed out by
    /// [`EventSplitter::finish`], which lacked it.
    Event(&'a [u8]),
    /// Part of an event longer than the splitter's cap, handed out unread.
    Oversized(&'a [u8]),
}

impl<'a> Piece<'a> {
    /// The event's fields, for an [`Piece::Event`] that has data.
    pub fn event(&self) -> Option<Event<'a>> {
        match *self {
            Piece::Event(raw) => Event::parse(raw),
            Piece::Oversized(_) => None,
        }
    }
}

/// Splits a byte stream into SSE events, holding only a trailing partial event between reads.
///
/// Call [`handle_bytes`](Self::handle_bytes) with every read, then [`finish`](Self::finish)
/// once. Every input byte is handed out exactly once, in order, so the pieces joined are the
/// input. Events end at a blank line (`\n\n` or `\n\r\n`). An event longer than the cap (its
/// blank line included) comes out as [`Piece::Oversized`] pieces, whatever the reads were: the
/// pieces' kinds and event bounds depend only on the bytes, never on how they were split.
#[derive(Debug)]
pub struct EventSplitter {
    max_event_bytes: usize,
    /// The start of an event whose end has not arrived; never holds a whole event. Inside an
    /// oversized event only its last two bytes, so a blank line split across reads is seen.
    pending: Vec<u8>,
    /// How far `pending` was searched for an event end: the search resumes there, so an event
    /// trickling in over many reads is searched once, not once per read.
    searched: usize,
    /// Inside an oversized event: pieces are [`Piece::Oversized`] until its end.
    oversized: bool,
}

impl EventSplitter {
    /// A splitter that holds at most `max_event_bytes` of an event (at least 3).
    pub fn new(max_event_bytes: usize) -> Self {
        EventSplitter {
            max_event_bytes: max_event_bytes.max(3),
            pending: Vec::new(),
            searched: 0,
            oversized: false,
        }
    }

    /// Hands every piece `input` completes to `on_piece`.
    pub fn handle_bytes(&mut self, input: &[u8], mut on_piece: impl FnMut(Piece<'_>)) {
        if self.pending.is_empty() {
            // No copy: scan the read where it lies and keep only its partial tail.
            let rest = self.scan(input, 0, &mut on_piece);
            self.pending
                .extend_from_slice(input.get(rest..).unwrap_or_default());
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            let from = self.searched;
            buf.extend_from_slice(input);
            let rest = self.scan(&buf, from, &mut on_piece);
            buf.drain(..rest.min(buf.len()));
            self.pending = buf;
        }
        // Every position but the last two was looked at; those two may start a blank line.
        self.searched = self.pending.len().saturating_sub(2);
        self.cap(&mut on_piece);
    }

    /// Same as [`handle_bytes`](Self::handle_bytes), handing out only the events that have data
    /// (oversized events, comments and keep-alives are skipped).
    pub fn handle_events(&mut self, input: &[u8], mut on_event: impl FnMut(&Event<'_>)) {
        self.handle_bytes(input, |piece| {
            if let Some(ev) = piece.event() {
                on_event(&ev);
            }
        });
    }

    /// The stream ended: hands out the held bytes, a final event that lacked its blank line.
    pub fn finish(&mut self, mut on_piece: impl FnMut(Piece<'_>)) {
        let tail = std::mem::take(&mut self.pending);
        self.searched = 0;
        let oversized = std::mem::replace(&mut self.oversized, false);
        if tail.is_empty() {
            return;
        }
        on_piece(if oversized {
            Piece::Oversized(&tail)
        } else {
            Piece::Event(&tail)
        });
    }

    /// Same as [`finish`](Self::finish), handing out only an event that has data.
    pub fn finish_events(&mut self, mut on_event: impl FnMut(&Event<'_>)) {
        self.finish(|piece| {
            if let Some(ev) = piece.event() {
                on_event(&ev);
            }
        });
    }

    /// Whether the bytes so far end inside an event (held, or oversized and passed on).
    pub fn mid_event(&self) -> bool {
        !self.pending.is_empty() || self.oversized
    }

    /// Whether the bytes so far end inside an oversized event.
    pub fn in_oversized(&self) -> bool {
        self.oversized
    }

    /// Hands out every event ending in `buf`, searching for the first end from `from`; returns
    /// where the trailing partial event starts.
    fn scan(&mut self, buf: &[u8], from: usize, on_piece: &mut impl FnMut(Piece<'_>)) -> usize {
        let mut start = 0;
        let mut from = from;
        while let Some(end) = event_end(buf, from) {
            let raw = buf.get(start..end).unwrap_or_default();
            if std::mem::replace(&mut self.oversized, false) || raw.len() > self.max_event_bytes {
                on_piece(Piece::Oversized(raw));
            } else {
                on_piece(Piece::Event(raw));
            }
            start = end;
            from = end;
        }
        start
    }

    /// Passes on all but the last two held bytes once the held event is oversized.
    fn cap(&mut self, on_piece: &mut impl FnMut(Piece<'_>)) {
        if !self.oversized && self.pending.len() <= self.max_event_bytes {
            return;
        }
        self.oversized = true;
        let cut = self.pending.len().saturating_sub(2);
        if cut > 0 {
            on_piece(Piece::Oversized(
                self.pending.get(..cut).unwrap_or_default(),
            ));
            self.pending.drain(..cut);
        }
        self.searched = 0;
    }
}

/// The end (exclusive) of the first event in `buf`, its blank line included, looking for the
/// blank line's first `\n` from `from` on.
fn event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut from = from;
    while let Some(i) = buf.get(from..).and_then(|b| memchr::memchr(b'\n', b)) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// One event's fields: its `event:` name (empty when none) and its `data:` lines joined.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, empty when none.
    pub name: &'a [u8],
    /// The `data:` lines, joined with `\n`; borrowed unless there were several.
    pub data: Cow<'a, [u8]>,
}

impl<'a> Event<'a> {
    /// Reads the fields of one event; `None` when it has no data (comments, keep-alives).
    pub fn parse(raw: &'a [u8]) -> Option<Event<'a>> {
        if let Some(ev) = Self::one_data_line(raw) {
            return Some(ev);
        }
        Self::parse_general(raw)
    }

    /// [`Event::parse`] line by line, for any event.
    fn parse_general(raw: &'a [u8]) -> Option<Event<'a>> {
        let mut name: &[u8] = b"";
        let mut data: Option<Cow<'_, [u8]>> = None;
        // Lines found with memchr: splitting on a byte predicate walks every byte in Rust,
        // and every event of every stream comes through here.
        let mut rest = raw;
        while !rest.is_empty() {
            let line = match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let line = rest.get(..i).unwrap_or_default();
                    rest = rest.get(i + 1..).unwrap_or_default();
                    line
                }
                None => std::mem::take(&mut rest),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b":") {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => (
                    line.get(..i).unwrap_or_default(),
                    line.get(i + 1..).unwrap_or_default(),
                ),
                None => (line, &b""[..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match field {
                b"event" => name = value,
                b"data" => {
                    data = Some(match data {
                        None => Cow::Borrowed(value),
                        Some(prev) => {
                            let mut joined = prev.into_owned();
                            joined.push(b'\n');
                            joined.extend_from_slice(value);
                            Cow::Owned(joined)
                        }
                    })
                }
                _ => {}
            }
        }
        data.map(|data| Event { name, data })
    }

    /// The common event, one `data:` line and its blank line (or none, at the end of a
    /// stream), read with one search: what the general loop reads of it.
    #[inline]
    fn one_data_line(raw: &'a [u8]) -> Option<Event<'a>> {
        let rest = raw.strip_prefix(b"data:")?;
        let i = memchr::memchr(b'\n', rest)?;
        let after = rest.get(i + 1..).unwrap_or_default();
        if !(after.is_empty() || after == b"\n" || after == b"\r\n") {
            return None;
        }
        let line = rest.get(..i).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some(Event {
            name: b"",
            data: Cow::Borrowed(line.strip_prefix(b" ").unwrap_or(line)),
        })
    }

    /// `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data.as_ref() == b"[DONE]"
    }

    /// The data as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.data).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Relay scanning
// ---------------------------------------------------------------------------------------------

/// Scans an SSE stream for usage; see the module docs for the two modes.
#[derive(Debug)]
pub struct SseScanner {
    strip_usage_chunk: bool,
    splitter: EventSplitter,
    facts: Facts,
    /// The bytes written to the client so far end inside an event.
    client_mid_event: bool,
}

/// What the scanner learnt from the events so far.
#[derive(Debug, Default)]
struct Facts {
    usage: Option<Usage>,
    data_events: u64,
    done: bool,
    /// The chunks' `model`, read from the first ones only.
    model: crate::answered_model::ModelWatch,
    /// Whether the answered model is wanted (see [`SseScanner::without_model`]).
    model_wanted: bool,
}

impl SseScanner {
    /// A scanner; `strip_usage_chunk` selects strip mode.
    pub fn new(strip_usage_chunk: bool) -> Self {
        SseScanner {
            strip_usage_chunk,
            splitter: EventSplitter::new(MAX_EVENT_BYTES),
            facts: Facts {
                model_wanted: true,
                ..Facts::default()
            },
            client_mid_event: false,
        }
    }

    /// The same scanner, not reading the answered model (nothing will ask for it: no access
    /// line, no trace). Reading it parses the first chunk's JSON and copies the name, about a
    /// tenth of what starting a stream costs the worker.
    pub fn without_model(mut self) -> Self {
        self.facts.model_wanted = false;
        self
    }

    /// Scans `input` (the next bytes of the stream) and appends what the client should receive
    /// to `out`.
    pub fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let strip = self.strip_usage_chunk;
        if !strip {
            out.extend_from_slice(input);
        }
        let facts = &mut self.facts;
        self.splitter.handle_bytes(input, |piece| match piece {
            Piece::Event(raw) => {
                let forward = facts.on_event(raw, strip);
                if strip {
                    forward.write(raw, out);
                }
            }
            // Too long to hold: let it through unscanned.
            Piece::Oversized(raw) => {
                if strip {
                    out.extend_from_slice(raw);
                }
            }
        });
        self.client_mid_event = if strip {
            self.splitter.in_oversized()
        } else {
            self.splitter.mid_event()
        };
    }

    /// Call when the upstream body ended: flushes a held partial event (strip mode) to `out`.
    /// In passthrough mode the client already has those bytes and they are not read.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.strip_usage_chunk {
            self.splitter.finish(|_| {});
            return;
        }
        let facts = &mut self.facts;
        let mut wrote = false;
        self.splitter.finish(|piece| match piece {
            Piece::Event(raw) => {
                wrote = facts.on_event(raw, true).write(raw, out);
            }
            Piece::Oversized(raw) => {
                out.extend_from_slice(raw);
                wrote = true;
            }
        });
        // What was flushed lacked its blank line.
        self.client_mid_event = wrote;
    }

    /// The last usage the stream reported.
    pub fn usage(&self) -> Option<Usage> {
        self.facts.usage
    }

    /// Whether `data: [DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.facts.done
    }

    /// The model the chunks say answered (bounded), when they named one.
    pub fn answered_model(&self) -> Option<&str> {
        self.facts.model.model()
    }

    /// [`answered_model`](Self::answered_model), moved out: the stream is over.
    pub fn take_answered_model(&mut self) -> Option<String> {
        self.facts.model.take()
    }

    /// Whether the client has received part of an event whose end has not arrived yet (still
    /// true after [`finish`](Self::finish) when the stream ended so). An error event injected
    /// now must first end that event with a blank line.
    pub fn client_mid_event(&self) -> bool {
        self.client_mid_event
    }

    /// Data events seen (each about one output token in a chat stream), `[DONE]` excluded.
    pub fn data_events(&self) -> u64 {
        self.facts.data_events
    }
}

/// What strip mode forwards of an event (passthrough mode forwards every byte as it came).
#[derive(Debug, PartialEq, Eq)]
enum Forward {
    /// Not the usage chunk: the event without its `"usage":null`, found by
    /// [`write_without_null_usage`].
    Search,
    /// Not the usage chunk, its `"usage"` members already looked at: the event without the
    /// bytes at this range (`,"usage":null` or `"usage":null,`), or whole.
    Cut(Option<std::ops::Range<usize>>),
    /// The usage-only chunk the gateway asked for: dropped.
    Drop,
}

impl Forward {
    /// Appends what strip mode forwards of `raw` to `out`; whether anything was.
    fn write(self, raw: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Forward::Search => write_without_null_usage(raw, out),
            Forward::Cut(None) => out.extend_from_slice(raw),
            Forward::Cut(Some(cut)) => {
                out.extend_from_slice(raw.get(..cut.start).unwrap_or_default());
                out.extend_from_slice(raw.get(cut.end..).unwrap_or_default());
            }
            Forward::Drop => return false,
        }
        true
    }
}

/// One pass over an event for its `"usage"` members: whether the data has one whose value is
/// an object (what [`crate::usage::mentions_usage_object`] says of the data) and where the
/// `"usage":null` strip mode cuts is (what [`write_without_null_usage`] cuts of the raw
/// event), found by one search of `"usage"` instead of three.
struct UsageSpots {
    object: bool,
    cut: Option<std::ops::Range<usize>>,
}

impl UsageSpots {
    /// `data` is the event's data, borrowed from `raw`, starting at `raw[data_at]`.
    fn find(raw: &[u8], data_at: usize, data: &[u8]) -> UsageSpots {
        static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
        const KEY: usize = b"\"usage\"".len();
        let mut object = false;
        // The first `,"usage":null` wins over the first `"usage":null,`, as in
        // `write_without_null_usage`.
        let mut before: Option<std::ops::Range<usize>> = None;
        let mut after: Option<std::ops::Range<usize>> = None;
        // The data is searched as `mentions_usage_object` searches it: from its start, each
        // search resuming after the last match.
        let mut mention_from = data_at;
        let mut from = 0;
        while let Some(i) = raw.get(from..).and_then(|r| USAGE.find(r)) {
            let at = from + i;
            let rest = raw.get(at + KEY..).unwrap_or_default();
            if rest.starts_with(b":null") {
                if before.is_none() && at > 0 && raw.get(at - 1) == Some(&b',') {
                    before = Some(at - 1..at + KEY + 5);
                }
                if after.is_none() && rest.get(5) == Some(&b',') {
                    after = Some(at..at + KEY + 6);
                }
            }
            if !object && at >= mention_from && at + KEY <= data_at + data.len() {
                let value = data.get(at - data_at + KEY..).unwrap_or_default();
                object = crate::usage::usage_value_is_object(value);
                mention_from = at + KEY;
            }
            // `"usage"` may start at this one's closing quote.
            from = at + KEY - 1;
        }
        UsageSpots {
            object,
            cut: before.or(after),
        }
    }
}

impl Facts {
    /// Reads one complete event; returns what strip mode (`strip`) forwards of it.
    fn on_event(&mut self, raw: &[u8], strip: bool) -> Forward {
        let Some(ev) = Event::parse(raw) else {
            return Forward::Search;
        };
        if ev.is_done() {
            self.done = true;
            return Forward::Search;
        }
        self.data_events += 1;
        if self.model_wanted {
            self.model.on_data(&ev.data);
        }
        // The data borrowed from the event (one `data:` line, the common case): one search
        // for both questions; otherwise (several lines joined) the two searches.
        let (object, forward) = match data_offset(raw, &ev) {
            Some(at) => {
                let spots = UsageSpots::find(raw, at, &ev.data);
                (spots.object, Forward::Cut(spots.cut))
            }
            None => (
                crate::usage::mentions_usage_object(&ev.data),
                Forward::Search,
            ),
        };
        if !object {
            return forward;
        }
        let Some((usage, usage_only)) = crate::usage::in_event(&ev.data) else {
            return forward;
        };
        self.usage = Some(usage);
        if usage_only && strip {
            self.data_events -= 1;
            return Forward::Drop;
        }
        forward
    }
}

/// Where the data of `ev` starts in `raw`, the event it was read from, when it is a slice of
/// it (one `data:` line).
fn data_offset(raw: &[u8], ev: &Event<'_>) -> Option<usize> {
    let Cow::Borrowed(data) = &ev.data else {
        return None;
    };
    let at = (data.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    (at + data.len() <= raw.len()).then_some(at)
}

/// Copies `event` to `out` without the `"usage":null` member providers add to every chunk
/// once usage is requested.
fn write_without_null_usage(event: &[u8], out: &mut Vec<u8>) {
    // Built once: `memmem::find` builds a searcher on every call, and this runs on every
    // chunk of every stream whose usage the gateway asked for.
    static WITH_COMMA_BEFORE: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b",\"usage\":null"));
    static WITH_COMMA_AFTER: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\"usage\":null,"));
    const CUT: usize = b",\"usage\":null".len();
    if let Some(i) = WITH_COMMA_BEFORE.find(event) {
        out.extend_from_slice(&event[..i]);
        out.extend_from_slice(&event[i + CUT..]);
    } else if let Some(i) = WITH_COMMA_AFTER.find(event) {
        out.extend_from_slice(&event[..i]);
        out.extend_from_slice(&event[i + CUT..]);
    } else {
        out.extend_from_slice(event);
    }
}

#[cfg(test)]
mod tests;
