//! SSE framing for the translators: split upstream bytes into events, write events out.

use std::borrow::Cow;

use serde_json::Value;

/// Largest event held back for translation. A longer one is skipped whole (a translator cannot
/// read half a JSON document); providers send events far smaller.
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;

/// The OpenAI end of stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// One complete event: its `event:` name (empty when none) and its `data:` lines joined.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) data: Cow<'a, [u8]>,
}

impl Event<'_> {
    /// `data: [DONE]`.
    pub(crate) fn is_done(&self) -> bool {
        self.data.as_ref() == b"[DONE]"
    }

    /// The data as JSON, if it is.
    pub(crate) fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.data).ok()
    }
}

/// Splits a byte stream into events, holding only a trailing partial event between reads.
#[derive(Debug, Default)]
pub(crate) struct EventSplitter {
    /// Bytes of an event whose end has not arrived yet.
    pending: Vec<u8>,
    /// Inside an oversized event: drop everything up to its end.
    skipping: bool,
}

impl EventSplitter {
    /// Calls `on_event` for every event `input` completes.
    pub(crate) fn feed(&mut self, input: &[u8], mut on_event: impl FnMut(&Event<'_>)) {
        if self.pending.is_empty() {
            let rest = self.scan(input, &mut on_event);
            self.hold(input.get(rest..).unwrap_or_default());
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(input);
            let rest = self.scan(&buf, &mut on_event);
            buf.drain(..rest.min(buf.len()));
            self.pending = buf;
            self.cap();
        }
    }

    /// The stream ended: dispatches a final event that lacked its blank line.
    pub(crate) fn finish(&mut self, mut on_event: impl FnMut(&Event<'_>)) {
        let tail = std::mem::take(&mut self.pending);
        if !std::mem::replace(&mut self.skipping, false) {
            if let Some(ev) = parse_event(&tail) {
                on_event(&ev);
            }
        }
    }

    /// Whether part of an event is held.
    pub(crate) fn mid_event(&self) -> bool {
        !self.pending.is_empty()
    }

    fn scan(&mut self, buf: &[u8], on_event: &mut impl FnMut(&Event<'_>)) -> usize {
        let mut start = 0;
        while let Some(len) = buf.get(start..).and_then(event_end) {
            let raw = buf.get(start..start + len).unwrap_or_default();
            if std::mem::replace(&mut self.skipping, false) {
                // The end of an oversized event.
            } else if let Some(ev) = parse_event(raw) {
                on_event(&ev);
            }
            start += len;
        }
        start
    }

    fn hold(&mut self, tail: &[u8]) {
        self.pending.extend_from_slice(tail);
        self.cap();
    }

    fn cap(&mut self) {
        if self.pending.len() > MAX_EVENT_BYTES {
            // Keep two bytes so a blank line split across reads is still seen.
            let cut = self.pending.len() - 2;
            self.pending.drain(..cut);
            self.skipping = true;
        }
    }
}

/// The length of the first complete event in `buf`, its terminating blank line included.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
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

/// Reads the fields of one event; `None` when it has no data (comments, keep-alives).
fn parse_event(raw: &[u8]) -> Option<Event<'_>> {
    let mut name: &[u8] = b"";
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in raw.split(|b| *b == b'\n') {
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

/// Writes `data: {json}` and a blank line.
pub(crate) fn write_data(out: &mut Vec<u8>, json: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&super::to_vec(json));
    out.extend_from_slice(b"\n\n");
}

/// Writes `event: {name}`, `data: {json}` and a blank line.
pub(crate) fn write_named(out: &mut Vec<u8>, name: &str, json: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, json);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut s = EventSplitter::default();
        let mut got = Vec::new();
        for c in chunks {
            s.feed(c, |ev| {
                got.push((
                    String::from_utf8_lossy(ev.name).into_owned(),
                    String::from_utf8_lossy(&ev.data).into_owned(),
                ))
            });
        }
        s.finish(|ev| {
            got.push((
                String::from_utf8_lossy(ev.name).into_owned(),
                String::from_utf8_lossy(&ev.data).into_owned(),
            ))
        });
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
        assert_eq!(collect(&[input]), want);
        let parts: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(collect(&parts), want);
    }

    #[test]
    fn oversized_event_is_skipped() {
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let got = collect(&[b"data: ", &big, b"\n", b"\ndata: after\n\n"]);
        assert_eq!(got, vec![(String::new(), "after".to_owned())]);
    }
}
