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

use crate::usage::{Usage, UsageProbe};

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
}

impl SseScanner {
    /// A scanner; `strip_usage_chunk` selects strip mode.
    pub fn new(strip_usage_chunk: bool) -> Self {
        SseScanner {
            strip_usage_chunk,
            splitter: EventSplitter::new(MAX_EVENT_BYTES),
            facts: Facts::default(),
            client_mid_event: false,
        }
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
                if facts.on_event(raw, strip) && strip {
                    write_without_null_usage(raw, out);
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
                if facts.on_event(raw, true) {
                    write_without_null_usage(raw, out);
                    wrote = true;
                }
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

impl Facts {
    /// Reads one complete event; returns whether strip mode forwards it.
    fn on_event(&mut self, raw: &[u8], strip: bool) -> bool {
        let Some(ev) = Event::parse(raw) else {
            return true;
        };
        if ev.is_done() {
            self.done = true;
            return true;
        }
        self.data_events += 1;
        self.model.on_data(&ev.data);
        if !crate::usage::mentions_usage_object(&ev.data) {
            return true;
        }
        let Some(probe) = UsageProbe::parse(&ev.data) else {
            return true;
        };
        let usage_only = probe.choices.as_ref().is_some_and(Vec::is_empty);
        let Some(u) = probe.usage() else {
            return true;
        };
        self.usage = Some(u);
        if usage_only && strip {
            self.data_events -= 1;
            return false;
        }
        true
    }
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(strip: bool, input: &[u8], cuts: &[usize]) -> (Vec<u8>, SseScanner) {
        let mut s = SseScanner::new(strip);
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(start, input.len());
            s.handle_bytes(&input[start..c], &mut out);
            start = c;
        }
        s.finish(&mut out);
        (out, s)
    }

    #[test]
    fn passthrough_forwards_everything_and_reads_usage() {
        let (out, s) = run(false, STREAM.as_bytes(), &[]);
        assert_eq!(out, STREAM.as_bytes());
        let u = s.usage().unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (5, 2));
        assert!(s.saw_done());
        assert_eq!(s.data_events(), 4);
    }

    #[test]
    fn reads_the_answered_model_from_the_first_chunk() {
        let input = b"data: {\"id\":\"c\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[]}\n\ndata: {\"id\":\"c\",\"model\":\"other\",\"choices\":[]}\n\ndata: [DONE]\n\n";
        for strip in [false, true] {
            let (_, s) = run(strip, input, &[7, 30]);
            assert_eq!(s.answered_model(), Some("gpt-4o-2024-08-06"));
        }
        let (_, none) = run(false, STREAM.as_bytes(), &[]);
        assert_eq!(none.answered_model(), None);
    }

    #[test]
    fn strip_removes_usage_chunk_and_nulls() {
        let (out, s) = run(true, STREAM.as_bytes(), &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert!(text.contains("\"content\":\"Hi\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(text.matches("data: ").count(), 4);
        assert_eq!(s.usage().unwrap().total_tokens(), 7);
        assert_eq!(s.data_events(), 3);
    }

    #[test]
    fn crlf_events_and_unterminated_tail() {
        let input = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\r\n\r\ndata: [DONE]";
        let (out, s) = run(true, input, &[10]);
        assert_eq!(out, b"data: [DONE]");
        assert!(s.saw_done());
        assert_eq!(s.usage().unwrap().total_tokens(), 2);
    }

    #[test]
    fn oversized_event_passes_unscanned() {
        let big = format!(
            "data: {}\n\ndata: [DONE]\n\n",
            "x".repeat(MAX_EVENT_BYTES + 10)
        );
        let (out, _) = run(
            true,
            big.as_bytes(),
            &[100, MAX_EVENT_BYTES / 2, MAX_EVENT_BYTES + 5],
        );
        assert_eq!(out, big.as_bytes());
    }

    /// Pieces of `input` cut at `cuts`, consecutive oversized pieces joined (how an oversized
    /// event is chunked depends on the reads; its bounds do not).
    fn pieces(max: usize, input: &[u8], cuts: &[usize]) -> Vec<(bool, Vec<u8>)> {
        let mut s = EventSplitter::new(max);
        let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut push = |piece: Piece<'_>| match piece {
            Piece::Event(raw) => got.push((false, raw.to_vec())),
            Piece::Oversized(raw) => match got.last_mut() {
                Some((true, prev)) => prev.extend_from_slice(raw),
                _ => got.push((true, raw.to_vec())),
            },
        };
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(start, input.len());
            s.handle_bytes(&input[start..c], &mut push);
            start = c;
        }
        s.finish(&mut push);
        got
    }

    fn events(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut s = EventSplitter::new(1 << 22);
        let mut got = Vec::new();
        let mut push = |ev: &Event<'_>| {
            got.push((
                String::from_utf8_lossy(ev.name).into_owned(),
                String::from_utf8_lossy(&ev.data).into_owned(),
            ))
        };
        for c in chunks {
            s.handle_events(c, &mut push);
        }
        s.finish_events(&mut push);
        got
    }

    #[test]
    fn splits_across_reads_and_line_endings() {
        let want = vec![
            ("a".to_owned(), "{\"x\":1}".to_owned()),
            (String::new(), "l1\nl2".to_owned()),
            (String::new(), "tail".to_owned()),
        ];
        let input =
            b"event: a\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: l1\ndata:l2\n\ndata: tail";
        assert_eq!(events(&[input]), want);
        let parts: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(events(&parts), want);
    }

    #[test]
    fn oversized_event_is_skipped_by_readers() {
        let big = vec![b'x'; (1 << 22) + 10];
        let got = events(&[b"data: ", &big, b"\n", b"\ndata: after\n\n"]);
        assert_eq!(got, vec![(String::new(), "after".to_owned())]);
    }

    #[test]
    fn oversized_whatever_the_reads() {
        let input = b"data: 0123456789\n\ndata: ok\n\n";
        let want = vec![
            (true, b"data: 0123456789\n\n".to_vec()),
            (false, b"data: ok\n\n".to_vec()),
        ];
        assert_eq!(pieces(12, input, &[]), want);
        assert_eq!(pieces(12, input, &[3, 16, 17]), want);
        // The blank line ending the oversized event straddles two reads.
        assert_eq!(pieces(12, input, &[17]), want);
    }

    #[test]
    fn mid_event_tracks_held_bytes() {
        let mut s = EventSplitter::new(8);
        s.handle_bytes(b"data: a\n\nda", |_| {});
        assert!(s.mid_event() && !s.in_oversized());
        s.handle_bytes(b"ta: long event\n", |_| {});
        assert!(s.mid_event() && s.in_oversized());
        s.handle_bytes(b"\n", |_| {});
        assert!(!s.mid_event());
    }

    #[test]
    fn passthrough_ending_mid_event_stays_mid_event_after_finish() {
        let mut s = SseScanner::new(false);
        let mut out = Vec::new();
        s.handle_bytes(b"data: {\"choices\":[]}\n\ndata: {\"cho", &mut out);
        assert!(s.client_mid_event());
        s.finish(&mut out);
        assert!(s.client_mid_event());
    }

    /// SSE-shaped bytes: fields, line endings, blank lines, usage chunks, stray bytes.
    fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
        let token = prop::sample::select(vec![
            &b"data: "[..],
            b"data:",
            b"event: e",
            b": c",
            b"\n",
            b"\r\n",
            b"\r",
            b"\n\n",
            b"{\"choices\":[{\"delta\":{}}],\"usage\":null}",
            b"{\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}",
            b"[DONE]",
            b"x",
            b"0123456789abcdef",
        ]);
        prop::collection::vec(token, 0..48).prop_map(|t| t.concat())
    }

    proptest! {
        /// However the stream is split across reads, the client receives the same bytes and the
        /// gateway the same usage.
        #[test]
        fn any_split_gives_same_result(cuts in prop::collection::vec(0usize..STREAM.len(), 0..8), strip in any::<bool>()) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (whole, s1) = run(strip, STREAM.as_bytes(), &[]);
            let (split, s2) = run(strip, STREAM.as_bytes(), &cuts);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(s1.usage(), s2.usage());
            prop_assert_eq!(s1.data_events(), s2.data_events());
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512), strip in any::<bool>()) {
            let (out, _) = run(strip, &input, &[7, 100]);
            if !strip { prop_assert_eq!(out, input); }
        }

        /// For any input and any split of it into reads, the splitter hands out the same events
        /// (and the same oversized runs) as for the whole input, and every byte exactly once.
        #[test]
        fn splitter_events_do_not_depend_on_reads(
            input in prop_oneof![sse_bytes(), prop::collection::vec(any::<u8>(), 0..256)],
            cuts in prop::collection::vec(0usize..400, 0..12),
            max in 3usize..64,
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = pieces(max, &input, &[]);
            let split = pieces(max, &input, &cuts);
            prop_assert_eq!(&whole, &split);
            let joined: Vec<u8> = whole.into_iter().flat_map(|(_, b)| b).collect();
            prop_assert_eq!(joined, input);
        }

        /// The scanner's output and facts do not depend on the reads either.
        #[test]
        fn scanner_does_not_depend_on_reads(
            input in sse_bytes(),
            cuts in prop::collection::vec(0usize..400, 0..12),
            strip in any::<bool>(),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (whole, s1) = run(strip, &input, &[]);
            let (split, s2) = run(strip, &input, &cuts);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(s1.usage(), s2.usage());
            prop_assert_eq!(s1.data_events(), s2.data_events());
            prop_assert_eq!(s1.saw_done(), s2.saw_done());
        }
    }
}
