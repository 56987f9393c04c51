//! The access line in JSON, written straight into a reused buffer.
//!
//! Going through `tracing`'s JSON formatter cost some 45,000 instructions per request on the
//! worker (a callgrind profile with keys, the ledger and the access log on: 30 % of the
//! whole process): a visitor per field, `fmt::Arguments` for every value, UTF-8 validation of
//! what it had just written, a `String` per attempt list. This writes the same object — the
//! same keys, `timestamp`, `level`, `message`, the fields, `target`; a field without a value
//! is left out as `tracing` leaves out a `None` — with one pass over each value, into a
//! per-worker buffer that is handed (moved, not copied) to the same background writer the
//! diagnostics use ([`super::log_writer`]), so the lines of both never interleave.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use sluice_core::calendar::{Date, DAY_S};
use sluice_core::decimal;

use crate::telemetry::log::{access_writer, AccessRecord, Attempt};

/// A field's key as one literal with its punctuation: `,"name":`.
macro_rules! k {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

impl AccessRecord {
    /// Emits the access line stamped now (see [`emit_at`](Self::emit_at)).
    pub fn emit(&self) {
        self.emit_at(crate::clock::unix_us());
    }

    /// Emits the access line stamped `unix_us` (wall-clock microseconds): formatted here
    /// into a reused buffer and handed to the log writer when the log is JSON, through
    /// `tracing` otherwise (which stamps its own time). Either way the log's level filter
    /// applies (target `sluice::access`).
    pub fn emit_at(&self, unix_us: u64) {
        if !tracing::enabled!(target: "sluice::access", tracing::Level::INFO) {
            return;
        }
        let Some(writer) = access_writer() else {
            return self.emit_with_tracing();
        };
        if BATCHED.get() {
            let full = PENDING.with_borrow_mut(|pending| {
                format(self, unix_us, pending);
                pending.len() >= BATCH_BYTES
            });
            if full {
                flush();
            }
            return;
        }
        // Lossy like every log line: a full writer drops it and counts the drop.
        with_line(self, unix_us, |line| writer.send_line(line));
    }
}

/// Bytes of access lines a worker gathers before handing them to the writer in one message.
///
/// One message per line meant one wake-up of the writer thread per request (a futex call
/// from the worker and a context switch, at thousands of requests a second); a worker
/// instead appends its lines to a buffer of its own and hands over the buffer when it holds
/// this much, and at least every quarter of a second ([`flush`], from the worker's
/// heartbeat, and when the worker stops). The buffer itself is handed over (no copy) and a
/// spare the writer emptied takes its place. The lines of one buffer are whole and in
/// order; a full writer drops the buffer and counts its lines.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Makes this thread (a data-plane worker) gather its access lines; call [`flush`] on it
/// from time to time and before it ends.
pub fn batch_on_this_thread() {
    BATCHED.set(true);
}

/// Hands this thread's gathered access lines to the writer.
pub fn flush() {
    PENDING.with_borrow_mut(|pending| {
        if pending.is_empty() {
            return;
        }
        if let Some(writer) = access_writer() {
            writer.hand_over(pending);
        }
        pending.clear();
        if pending.capacity() > 16 * BATCH_BYTES {
            *pending = Vec::new();
        }
        // One line past the batch size without growing: a spare, or a new buffer.
        pending.reserve(BATCH_BYTES + 4 * 1024);
    });
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static BATCHED: Cell<bool> = const { Cell::new(false) };
    static WHO: RefCell<Who> = RefCell::default();
    /// The last second [`timestamp`] wrote and its text up to the seconds
    /// (`2025-12-06T12:34:56`): every line of the same second copies it.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// The `method`, `path`, `key_id`, `team`, `model` and `deployment` fields of a worker's last
/// line, as written, and what they were written from. A client's requests nearly always repeat
/// them (the same endpoint, key, team, model and deployment), so they are escaped once and
/// copied after that.
#[derive(Default)]
struct Who {
    /// `None` until a line was written (then `text` holds its fields).
    method: Option<Cow<'static, str>>,
    path: Cow<'static, str>,
    key_id: Option<Arc<str>>,
    team: Option<Arc<str>>,
    model: Option<Vec<u8>>,
    deployment: Option<Vec<u8>>,
    text: Vec<u8>,
}

impl Who {
    /// Writes `rec`'s six fields, as [`Line::str_field`] and [`Line::opt_str`] each would.
    fn write(&mut self, rec: &AccessRecord, out: &mut Line) {
        let same_arc = |a: &Option<Arc<str>>, b: &Option<Arc<str>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        // The gateway's own methods and paths are borrowed statics: the same pointer, mostly.
        let same_cow = |a: &Cow<'static, str>, b: &Cow<'static, str>| {
            (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
        };
        let same_text = |a: &Option<Vec<u8>>, b: Option<&str>| a.as_deref() == b.map(str::as_bytes);
        if !(self
            .method
            .as_ref()
            .is_some_and(|m| same_cow(m, &rec.method))
            && same_cow(&self.path, &rec.path)
            && same_arc(&self.key_id, &rec.key_id)
            && same_arc(&self.team, &rec.team)
            && same_text(&self.model, rec.model.as_deref())
            && same_text(&self.deployment, rec.deployment.as_deref()))
        {
            self.method = Some(rec.method.clone());
            self.path.clone_from(&rec.path);
            self.key_id.clone_from(&rec.key_id);
            self.team.clone_from(&rec.team);
            let keep = |slot: &mut Option<Vec<u8>>, v: Option<&str>| match v {
                Some(v) => {
                    let buf = slot.get_or_insert_with(Vec::new);
                    buf.clear();
                    buf.extend_from_slice(v.as_bytes());
                }
                None => *slot = None,
            };
            keep(&mut self.model, rec.model.as_deref());
            keep(&mut self.deployment, rec.deployment.as_deref());
            self.text.clear();
            let mut text = Line::start(&mut self.text);
            write_who(&mut text, rec);
            text.finish(&mut self.text);
            if self.text.capacity() > 4096 {
                // A huge model name or path does not keep its buffers: the next line starts
                // over.
                *self = Who::default();
                write_who(out, rec);
                return;
            }
        }
        out.lit(&self.text);
    }
}

/// The fields [`Who`] keeps, written from `rec`.
fn write_who(out: &mut Line, rec: &AccessRecord) {
    out.str_field(k!("method"), &rec.method);
    out.str_field(k!("path"), &rec.path);
    out.opt_str(k!("key_id"), rec.key_id.as_deref());
    out.opt_str(k!("team"), rec.team.as_deref());
    out.opt_str(k!("model"), rec.model.as_deref());
    out.opt_str(k!("deployment"), rec.deployment.as_deref());
}

/// Formats `rec` as one JSON line stamped `unix_us` and passes it to `write` (a whole line,
/// newline included), from this worker's reused buffer.
pub fn with_line(rec: &AccessRecord, unix_us: u64, write: impl FnOnce(&[u8])) {
    LINE.with_borrow_mut(|out| {
        out.clear();
        format(rec, unix_us, out);
        write(out);
        if out.capacity() > 64 * 1024 {
            // One huge line (a long attempt list) does not keep its buffer.
            *out = Vec::with_capacity(1024);
        }
    });
}

/// Appends `rec`'s line, stamped `unix_us`, to `out`.
fn format(rec: &AccessRecord, unix_us: u64, out: &mut Vec<u8>) {
    let mut line = Line::start(out);
    line.record(rec, unix_us);
    line.finish(out);
}

/// Room made ahead of a line (zeroed, then written over), and the least a [`Line::room`] that
/// runs short adds: an access line is some 650 bytes.
const ROOM: usize = 1024;

/// Values below this many units print exactly as the `f64` `value / 10^scale` would: with at
/// most 15 significant digits, the decimal is the shortest that rounds to that `f64`.
const EXACT_BELOW: u64 = 1_000_000_000_000_000;

/// A line being written into a buffer taken whole for the time of it (see [`Line::start`]):
/// the bytes before `at` are written, those after it are room, made ahead (zeroed) and
/// written over by index.
///
/// Appending to the `Vec` byte run by byte run checked its capacity, and reloaded its length
/// and pointer from memory, at every write (a byte written through a pointer may be the
/// `Vec`'s own fields, as far as the compiler knows); here the buffer is a local of its own
/// and `at` a register, and a write is a bounds check and a copy of fixed size. Numbers are
/// written as a whole word of digits and `at` moved past the ones that count.
struct Line {
    v: Vec<u8>,
    at: usize,
}

impl Line {
    /// Starts writing after what `out` holds; [`finish`](Self::finish) puts the buffer back.
    fn start(out: &mut Vec<u8>) -> Line {
        let mut v = std::mem::take(out);
        let at = v.len();
        v.resize(at + ROOM, 0);
        Line { v, at }
    }

    /// Gives the buffer back to `out`, cut after what was written.
    fn finish(mut self, out: &mut Vec<u8>) {
        self.v.truncate(self.at);
        *out = self.v;
    }

    /// The next `n` bytes of room, made when short.
    #[inline(always)]
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.v.len() - self.at < n {
            self.grow(n);
        }
        let at = self.at;
        &mut self.v[at..at + n]
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, n: usize) {
        self.v.resize(self.at + n + ROOM, 0);
    }

    #[inline(always)]
    fn lit(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.at += bytes.len();
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.room(1)[0] = b;
        self.at += 1;
    }

    /// Writes the 8 bytes of `word` and keeps the first `len` (1 to 8): the others are room,
    /// written over next.
    #[inline(always)]
    fn word(&mut self, word: u64, len: usize) {
        self.room(8).copy_from_slice(&word.to_be_bytes());
        self.at += len.clamp(1, 8);
    }

    /// `value` in decimal, zero-padded to at least `width` digits (as `decimal::push` writes
    /// it): below 10^8, the digits as one word, shifted so the first leads.
    #[inline(always)]
    fn num(&mut self, value: u64, width: usize) {
        if value < 100_000_000 && width <= 8 {
            let v = value as u32;
            let count = v.checked_ilog10().map_or(1, |l| l as usize + 1).max(width);
            let digits = u64::from_be_bytes(decimal::eight(v));
            self.word(digits << (8 * (8 - count)), count);
        } else {
            self.num_long(value, width);
        }
    }

    /// [`num`](Self::num) from 10^8, or padded past 8 digits: the part above the last 8
    /// digits, then those 8.
    #[cold]
    #[inline(never)]
    fn num_long(&mut self, value: u64, width: usize) {
        const E8: u64 = 100_000_000;
        let width = width.min(20);
        self.num(value / E8, width.saturating_sub(8).max(1));
        self.word(u64::from_be_bytes(decimal::eight((value % E8) as u32)), 8);
    }

    /// A field's key, `name` made by `k!` (`,"name":`).
    #[inline(always)]
    fn key(&mut self, name: &str) {
        self.lit(name.as_bytes());
    }

    #[inline(always)]
    fn num_field(&mut self, name: &str, value: u64) {
        self.key(name);
        self.num(value, 1);
    }

    #[inline(always)]
    fn bool_field(&mut self, name: &str, value: bool) {
        self.key(name);
        self.lit(if value { b"true" } else { b"false" });
    }

    fn str_field(&mut self, name: &str, value: &str) {
        self.key(name);
        self.json_str(value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str_field(name, v);
        }
    }

    /// `value / 10^SCALE` as a JSON number, the same text as Rust's shortest round-trip form
    /// of that quotient as an `f64` (`1.5`, `0.000125`, `3`), without going through floating
    /// point. The scale is a constant, so the division and remainder by `10^SCALE` are
    /// multiplications.
    #[inline(always)]
    fn scaled_field<const SCALE: u32>(&mut self, name: &str, value: u64) {
        const ZEROS: u64 = u64::from_ne_bytes([b'0'; 8]);
        let unit = const { 10u64.pow(SCALE) };
        if value >= EXACT_BELOW {
            return self.float_field(name, value as f64 / unit as f64);
        }
        self.key(name);
        // The whole part, then the point and `SCALE` digits of the fraction (zero-padded)
        // with its trailing zeros cut, when there is a fraction.
        self.num(value / unit, 1);
        let frac = value % unit;
        if frac > 0 {
            self.byte(b'.');
            let digits = u64::from_be_bytes(decimal::eight(frac as u32));
            // Each trailing '0' is a zero byte at the low end of `digits ^ ZEROS`.
            let trailing = ((digits ^ ZEROS).trailing_zeros() / 8) as usize;
            let places = const { SCALE as usize };
            self.word(
                digits << (8 * (8 - places)),
                places.saturating_sub(trailing),
            );
        }
    }

    #[cold]
    #[inline(never)]
    fn float_field(&mut self, name: &str, value: f64) {
        self.key(name);
        if value.is_finite() {
            // Rust's shortest round-trip form, never an exponent: a valid JSON number.
            self.lit(value.to_string().as_bytes());
        } else {
            self.lit(b"null");
        }
    }

    /// `bytes` as a JSON string of lower-case hex.
    fn hex_field(&mut self, name: &str, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.key(name);
        let out = self.room(2 * bytes.len() + 2);
        out[0] = b'"';
        for (i, &b) in bytes.iter().enumerate() {
            out[1 + 2 * i] = HEX[(b >> 4) as usize];
            out[2 + 2 * i] = HEX[(b & 0xf) as usize];
        }
        out[1 + 2 * bytes.len()] = b'"';
        self.at += 2 * bytes.len() + 2;
    }

    /// `value` as a JSON string: quotes, backslashes and control characters escaped.
    fn json_str(&mut self, value: &str) {
        let bytes = value.as_bytes();
        let n = bytes.len();
        // The quotes and a word's slack past the end.
        let out = self.room(n + 2 + 8);
        out[0] = b'"';
        // Nothing to escape (every value we write, nearly): each 8-byte word is copied as it
        // is checked (copies of fixed size, no call); the last part word is the string's last
        // 8 bytes, over what was written, and a string shorter than a word goes byte by byte.
        let clean = if n < 8 {
            bytes.iter().enumerate().all(|(i, &b)| {
                out[1 + i] = b;
                ESCAPE[usize::from(b)] == 0
            })
        } else {
            let mut words = bytes.chunks_exact(8);
            let mut i = 1;
            words.by_ref().all(|word| {
                let mut w = [0u8; 8];
                w.copy_from_slice(word);
                out[i..i + 8].copy_from_slice(&w);
                i += 8;
                !dirty(w)
            }) && (words.remainder().is_empty() || {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[n - 8..]);
                out[n - 7..n + 1].copy_from_slice(&w);
                !dirty(w)
            })
        };
        if clean {
            out[n + 1] = b'"';
            self.at += n + 2;
        } else {
            self.json_str_escaped(bytes);
        }
    }

    /// [`json_str`](Self::json_str) of a string with something to escape, byte by byte.
    #[cold]
    #[inline(never)]
    fn json_str_escaped(&mut self, bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.byte(b'"');
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape = ESCAPE[b as usize];
            if escape == 0 {
                continue;
            }
            self.lit(&bytes[start..i]);
            if escape == b'u' {
                self.lit(b"\\u00");
                self.byte(HEX[(b >> 4) as usize]);
                self.byte(HEX[(b & 0xf) as usize]);
            } else {
                self.byte(b'\\');
                self.byte(escape);
            }
            start = i + 1;
        }
        self.lit(&bytes[start..]);
        self.byte(b'"');
    }

    /// The whole line of `rec`, stamped `unix_us`.
    fn record(&mut self, rec: &AccessRecord, unix_us: u64) {
        self.lit(b"{\"timestamp\":\"");
        self.timestamp(unix_us);
        self.lit(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        self.str_field(k!("request_id"), &rec.request_id);
        if let Some(t) = &rec.trace {
            // The ids of the request's server span, as the exported span carries them, so a
            // log line and its trace join on `trace_id`.
            self.hex_field(k!("trace_id"), &t.trace_id);
            self.hex_field(k!("span_id"), &t.span_id);
        }
        WHO.with_borrow_mut(|who| who.write(rec, self));
        // The model the upstream named, only when it is not the deployment's own
        // (`provider/model`).
        if let Some(answered) = rec.response_model.as_deref() {
            let configured = rec.deployment.as_deref().and_then(|d| d.split_once('/'));
            if configured.is_none_or(|(_, m)| m != answered) {
                self.str_field(k!("response_model"), answered);
            }
        }
        self.num_field(k!("status"), rec.status as u64);
        self.bool_field(k!("stream"), rec.stream);
        if let Some(u) = &rec.usage {
            self.num_field(k!("input_tokens"), u.input_tokens);
            self.num_field(k!("output_tokens"), u.output_tokens);
            self.num_field(k!("cached_tokens"), u.cached_tokens);
            self.num_field(k!("reasoning_tokens"), u.reasoning_tokens);
            self.bool_field(k!("tokens_estimated"), u.estimated);
        }
        if let Some(m) = rec.cost_micros {
            self.scaled_field::<6>(k!("cost_usd"), m);
        }
        if let Some(us) = rec.ttfb_us {
            self.scaled_field::<3>(k!("ttfb_ms"), us);
        }
        self.scaled_field::<3>(k!("total_ms"), rec.total_us);
        if let Some(us) = rec.upstream_us {
            self.scaled_field::<3>(k!("overhead_ms"), rec.total_us.saturating_sub(us));
        }
        self.num_field(k!("bytes_in"), rec.bytes_in);
        self.num_field(k!("bytes_out"), rec.bytes_out);
        if let Some(reused) = rec.upstream_reused {
            self.bool_field(k!("upstream_reused"), reused);
        }
        self.opt_str(k!("error"), rec.error.as_deref());
        if !rec.attempts.is_empty() {
            self.key(k!("attempts"));
            self.attempts(&rec.attempts);
        }
        self.bool_field(k!("client_cancelled"), rec.client_cancelled);
        self.opt_str(k!("cache"), rec.cache);
        if let Some(m) = rec.saved_micros {
            self.scaled_field::<6>(k!("saved_usd"), m);
        }
        self.lit(b",\"target\":\"sluice::access\"}\n");
    }

    /// The attempt list as a JSON array of objects (`deployment`, `start_us`, `end_us`,
    /// `status`, `error`): the value `serde_json::to_string(attempts)` writes. (Before 0.x it
    /// was that text inside a JSON string, escaped; see CHANGELOG.)
    fn attempts(&mut self, attempts: &[Attempt]) {
        self.byte(b'[');
        for (i, a) in attempts.iter().enumerate() {
            if i > 0 {
                self.byte(b',');
            }
            self.lit(br#"{"deployment":"#);
            self.json_str(&a.deployment);
            self.lit(br#","start_us":"#);
            self.num(a.start_us, 1);
            self.lit(br#","end_us":"#);
            self.num(a.end_us, 1);
            self.lit(br#","status":"#);
            self.num(u64::from(a.status), 1);
            self.lit(br#","error":"#);
            match a.error {
                Some(e) => self.json_str(e),
                None => self.lit(b"null"),
            }
            self.byte(b'}');
        }
        self.byte(b']');
    }

    /// RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it.
    fn timestamp(&mut self, unix_us: u64) {
        let secs = unix_us / 1_000_000;
        let (last, text) = SECOND.get();
        if last == secs {
            self.lit(&text);
        } else {
            let start = self.at;
            self.date_time(secs);
            let mut text = [0; 19];
            if let Some(written) = self.v.get(start..self.at) {
                if written.len() == text.len() {
                    text.copy_from_slice(written);
                    SECOND.set((secs, text));
                }
            }
        }
        self.byte(b'.');
        self.num(unix_us % 1_000_000, 6);
        self.byte(b'Z');
    }

    /// `secs` (unix seconds) as `YYYY-MM-DDTHH:MM:SS`.
    fn date_time(&mut self, secs: u64) {
        let date = Date::from_unix_s(secs);
        let in_day = secs % DAY_S;
        self.num(u64::try_from(date.year()).unwrap_or(0), 4);
        self.byte(b'-');
        self.num(u64::from(date.month()), 2);
        self.byte(b'-');
        self.num(u64::from(date.day()), 2);
        self.byte(b'T');
        self.num(in_day / 3600, 2);
        self.byte(b':');
        self.num(in_day / 60 % 60, 2);
        self.byte(b':');
        self.num(in_day % 60, 2);
    }
}

/// For each byte, what a JSON string holds in its place: 0 the byte itself, `u` a `\u00XX`
/// escape, else the character after a backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x7f] = b'u';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    // As serde_json (and so `tracing`'s JSON) writes them.
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table
};

/// Whether a word holds a byte a JSON string escapes: a control byte (below 0x20 or 0x7f),
/// a quote or a backslash (exact for "any").
fn dirty(w: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A zero byte in `x` sets the high bit of some byte of this (exact for "any").
    const fn zero(x: u64) -> u64 {
        x.wrapping_sub(ONES) & !x
    }
    let x = u64::from_ne_bytes(w);
    // A byte below 0x20: (x - 0x20 per byte) & !x has a high bit set (exact for "any").
    let control = x.wrapping_sub(0x20 * ONES) & !x;
    // The four tests' high bits together, tested once (no branch per test).
    (control
        | zero(x ^ (u64::from(b'"') * ONES))
        | zero(x ^ (u64::from(b'\\') * ONES))
        | zero(x ^ (0x7f * ONES)))
        & HIGHS
        != 0
}

#[cfg(test)]
#[path = "access_line_tests.rs"]
mod tests;
