//! Server-sent events relay scanning: find the usage in a stream without re-serialising it.
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

use memchr::memmem;

use crate::usage::{Usage, UsageProbe};

/// Largest event the scanner holds back; a longer one is forwarded unscanned.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Scans an SSE stream for usage; see the module docs for the two modes.
#[derive(Debug)]
pub struct SseScanner {
    strip_usage_chunk: bool,
    pending: Vec<u8>,
    usage: Option<Usage>,
    data_events: u64,
    done: bool,
    oversized: bool,
}

impl SseScanner {
    /// A scanner; `strip_usage_chunk` selects strip mode.
    pub fn new(strip_usage_chunk: bool) -> Self {
        SseScanner {
            strip_usage_chunk,
            pending: Vec::new(),
            usage: None,
            data_events: 0,
            done: false,
            oversized: false,
        }
    }

    /// Scans `input` (the next bytes of the stream) and appends what the client should receive
    /// to `out`.
    pub fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if !self.strip_usage_chunk {
            out.extend_from_slice(input);
        }
        if self.pending.is_empty() {
            let rest = self.scan(input, out);
            self.hold(&input[rest..], out);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(input);
            let rest = self.scan(&buf, out);
            buf.drain(..rest);
            self.pending = Vec::new();
            self.hold(&buf, out);
        }
    }

    /// Call when the upstream body ended: flushes a held partial event (strip mode) to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.strip_usage_chunk && !self.pending.is_empty() {
            let tail = std::mem::take(&mut self.pending);
            if self.on_event(&tail) {
                out.extend_from_slice(&tail);
            }
        }
        self.pending.clear();
    }

    /// The last usage the stream reported.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `data: [DONE]` was seen.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Whether the client has received part of an event whose end has not arrived yet
    /// (passthrough mode only; strip mode holds partial events back). An error event injected
    /// now must first end that event with a blank line.
    pub fn client_mid_event(&self) -> bool {
        !self.strip_usage_chunk && !self.pending.is_empty()
    }

    /// Data events seen (each about one output token in a chat stream), `[DONE]` excluded.
    pub fn data_events(&self) -> u64 {
        self.data_events
    }

    /// Keeps a partial event for the next read.
    fn hold(&mut self, tail: &[u8], out: &mut Vec<u8>) {
        if tail.is_empty() {
            return;
        }
        if self.pending.len() + tail.len() > MAX_EVENT_BYTES {
            // Too long to hold: give up on scanning this event and let it through.
            if self.strip_usage_chunk {
                out.extend_from_slice(&self.pending);
                out.extend_from_slice(tail);
            }
            self.pending.clear();
            self.oversized = true;
            return;
        }
        self.pending.extend_from_slice(tail);
    }

    /// Handles every complete event in `buf`; returns where the trailing partial event starts.
    fn scan(&mut self, buf: &[u8], out: &mut Vec<u8>) -> usize {
        let mut start = 0;
        while let Some(end) = event_end(&buf[start..]) {
            let event = &buf[start..start + end];
            if self.oversized {
                // The rest of an event we let through unscanned.
                self.oversized = false;
                if self.strip_usage_chunk {
                    out.extend_from_slice(event);
                }
            } else if self.on_event(event) && self.strip_usage_chunk {
                write_without_null_usage(event, out);
            }
            start += end;
        }
        if self.oversized {
            // Still inside the event we let through: no need to hold any of it.
            if self.strip_usage_chunk {
                out.extend_from_slice(&buf[start..]);
            }
            return buf.len();
        }
        start
    }

    /// Reads one complete event; returns whether it is forwarded.
    fn on_event(&mut self, event: &[u8]) -> bool {
        let mut keep = true;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                self.done = true;
                continue;
            }
            self.data_events += 1;
            if !crate::usage::mentions_usage_object(data) {
                continue;
            }
            if let Some(probe) = UsageProbe::parse(data) {
                let usage_only = probe.choices.as_ref().is_some_and(Vec::is_empty);
                if let Some(u) = probe.usage() {
                    self.usage = Some(u);
                    if usage_only && self.strip_usage_chunk {
                        keep = false;
                        self.data_events -= 1;
                    }
                }
            }
        }
        keep
    }
}

/// The length of the first complete event in `buf`, its terminating blank line included.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// Copies `event` to `out` without the `"usage":null` member providers add to every chunk
/// once usage is requested.
fn write_without_null_usage(event: &[u8], out: &mut Vec<u8>) {
    const WITH_COMMA_BEFORE: &[u8] = b",\"usage\":null";
    const WITH_COMMA_AFTER: &[u8] = b"\"usage\":null,";
    if let Some(i) = memmem::find(event, WITH_COMMA_BEFORE) {
        out.extend_from_slice(&event[..i]);
        out.extend_from_slice(&event[i + WITH_COMMA_BEFORE.len()..]);
    } else if let Some(i) = memmem::find(event, WITH_COMMA_AFTER) {
        out.extend_from_slice(&event[..i]);
        out.extend_from_slice(&event[i + WITH_COMMA_AFTER.len()..]);
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
    }
}
