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
use std::io::Write as _;
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
    /// Writes `rec`'s six fields, as [`str_field`] and [`opt_str`] each would.
    fn write(&mut self, rec: &AccessRecord, out: &mut Vec<u8>) {
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
            write_who(&mut self.text, rec);
            if self.text.capacity() > 4096 {
                // A huge model name or path does not keep its buffers: the next line starts
                // over.
                *self = Who::default();
                write_who(out, rec);
                return;
            }
        }
        out.extend_from_slice(&self.text);
    }
}

/// The fields [`Who`] keeps, written from `rec`.
fn write_who(out: &mut Vec<u8>, rec: &AccessRecord) {
    str_field(out, k!("method"), &rec.method);
    str_field(out, k!("path"), &rec.path);
    opt_str(out, k!("key_id"), rec.key_id.as_deref());
    opt_str(out, k!("team"), rec.team.as_deref());
    opt_str(out, k!("model"), rec.model.as_deref());
    opt_str(out, k!("deployment"), rec.deployment.as_deref());
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

fn format(rec: &AccessRecord, unix_us: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(unix_us, out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
    str_field(out, k!("request_id"), &rec.request_id);
    if let Some(t) = &rec.trace {
        // The ids of the request's server span, as the exported span carries them, so a log
        // line and its trace join on `trace_id`.
        hex_field(out, k!("trace_id"), &t.trace_id);
        hex_field(out, k!("span_id"), &t.span_id);
    }
    WHO.with_borrow_mut(|who| who.write(rec, out));
    // The model the upstream named, only when it is not the deployment's own (`provider/model`).
    if let Some(answered) = rec.response_model.as_deref() {
        let configured = rec.deployment.as_deref().and_then(|d| d.split_once('/'));
        if configured.is_none_or(|(_, m)| m != answered) {
            str_field(out, k!("response_model"), answered);
        }
    }
    num_field(out, k!("status"), rec.status as u64);
    bool_field(out, k!("stream"), rec.stream);
    if let Some(u) = &rec.usage {
        num_field(out, k!("input_tokens"), u.input_tokens);
        num_field(out, k!("output_tokens"), u.output_tokens);
        num_field(out, k!("cached_tokens"), u.cached_tokens);
        num_field(out, k!("reasoning_tokens"), u.reasoning_tokens);
        bool_field(out, k!("tokens_estimated"), u.estimated);
    }
    if let Some(m) = rec.cost_micros {
        scaled_field::<6>(out, k!("cost_usd"), m);
    }
    if let Some(us) = rec.ttfb_us {
        scaled_field::<3>(out, k!("ttfb_ms"), us);
    }
    scaled_field::<3>(out, k!("total_ms"), rec.total_us);
    if let Some(us) = rec.upstream_us {
        scaled_field::<3>(out, k!("overhead_ms"), rec.total_us.saturating_sub(us));
    }
    num_field(out, k!("bytes_in"), rec.bytes_in);
    num_field(out, k!("bytes_out"), rec.bytes_out);
    if let Some(reused) = rec.upstream_reused {
        bool_field(out, k!("upstream_reused"), reused);
    }
    opt_str(out, k!("error"), rec.error.as_deref());
    if !rec.attempts.is_empty() {
        key(out, k!("attempts"));
        attempts(out, &rec.attempts);
    }
    bool_field(out, k!("client_cancelled"), rec.client_cancelled);
    opt_str(out, k!("cache"), rec.cache);
    if let Some(m) = rec.saved_micros {
        scaled_field::<6>(out, k!("saved_usd"), m);
    }
    out.extend_from_slice(b",\"target\":\"sluice::access\"}\n");
}

/// The attempt list as a JSON array of objects (`deployment`, `start_us`, `end_us`,
/// `status`, `error`): the value `serde_json::to_string(attempts)` writes, written straight
/// into `out`. (Before 0.x it was that text inside a JSON string, escaped; see CHANGELOG.)
fn attempts(out: &mut Vec<u8>, attempts: &[Attempt]) {
    out.push(b'[');
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"deployment":"#);
        json_str(out, &a.deployment);
        out.extend_from_slice(br#","start_us":"#);
        decimal::push(out, a.start_us, 1);
        out.extend_from_slice(br#","end_us":"#);
        decimal::push(out, a.end_us, 1);
        out.extend_from_slice(br#","status":"#);
        decimal::push(out, u64::from(a.status), 1);
        out.extend_from_slice(br#","error":"#);
        match a.error {
            Some(e) => json_str(out, e),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// Writes a field's key, `name` made by `k!` (`,"name":`).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(name.as_bytes());
}

fn str_field(out: &mut Vec<u8>, name: &str, value: &str) {
    key(out, name);
    json_str(out, value);
}

fn opt_str(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        str_field(out, name, v);
    }
}

fn num_field(out: &mut Vec<u8>, name: &str, value: u64) {
    key(out, name);
    decimal::push(out, value, 1);
}

/// Values below this many units print exactly as the `f64` `value / 10^scale` would: with at
/// most 15 significant digits, the decimal is the shortest that rounds to that `f64`.
const EXACT_BELOW: u64 = 1_000_000_000_000_000;

/// `value / 10^SCALE` as a JSON number, the same text as Rust's shortest round-trip form of
/// that quotient as an `f64` (`1.5`, `0.000125`, `3`), without going through floating point.
/// The scale is a constant, so the division and remainder by `10^SCALE` are multiplications.
fn scaled_field<const SCALE: u32>(out: &mut Vec<u8>, name: &str, value: u64) {
    let unit = const { 10u64.pow(SCALE) };
    if value >= EXACT_BELOW {
        return float_field(out, name, value as f64 / unit as f64);
    }
    key(out, name);
    // The whole part, then the point and `SCALE` digits of the fraction (zero-padded) with
    // its trailing zeros cut, when there is a fraction.
    decimal::push(out, value / unit, 1);
    let frac = value % unit;
    if frac > 0 {
        out.push(b'.');
        decimal::push_fraction(out, frac, SCALE as usize);
    }
}

/// `bytes` as a JSON string of lower-case hex.
fn hex_field(out: &mut Vec<u8>, name: &str, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    key(out, name);
    out.push(b'"');
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 0xf) as usize]);
    }
    out.push(b'"');
}

fn bool_field(out: &mut Vec<u8>, name: &str, value: bool) {
    key(out, name);
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn float_field(out: &mut Vec<u8>, name: &str, value: f64) {
    key(out, name);
    if value.is_finite() {
        // Rust's shortest round-trip form, never an exponent: a valid JSON number.
        let _ = write!(out, "{value}");
    } else {
        out.extend_from_slice(b"null");
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

/// `value` as a JSON string: quotes, backslashes and control characters escaped.
fn json_str(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let start = out.len();
    out.push(b'"');
    // Nothing to escape (every value we write, nearly): each 8-byte word is copied as it is
    // checked (copies of fixed size, no call); the last part word is the string's last 8
    // bytes, over what was written, and a string shorter than a word goes byte by byte.
    let clean = if bytes.len() < 8 {
        bytes.iter().all(|&b| ESCAPE[usize::from(b)] == 0) && {
            bytes.iter().for_each(|&b| out.push(b));
            true
        }
    } else {
        let mut words = bytes.chunks_exact(8);
        let clean = words.by_ref().all(|word| {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            !dirty(w) && {
                out.extend_from_slice(&w);
                true
            }
        });
        let rest = words.remainder().len();
        clean
            && (rest == 0 || {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[bytes.len() - 8..]);
                !dirty(w) && {
                    out.truncate(out.len() - (8 - rest));
                    out.extend_from_slice(&w);
                    true
                }
            })
    };
    if clean {
        out.push(b'"');
    } else {
        out.truncate(start);
        json_str_escaped(out, bytes);
    }
}

/// [`json_str`] of a string with something to escape, byte by byte.
fn json_str_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

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

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it.
fn timestamp(unix_us: u64, out: &mut Vec<u8>) {
    let secs = unix_us / 1_000_000;
    let (last, text) = SECOND.get();
    if last == secs {
        out.extend_from_slice(&text);
    } else {
        let start = out.len();
        date_time(secs, out);
        let mut text = [0; 19];
        if let Some(written) = out.get(start..) {
            if written.len() == text.len() {
                text.copy_from_slice(written);
                SECOND.set((secs, text));
            }
        }
    }
    out.push(b'.');
    decimal::push(out, unix_us % 1_000_000, 6);
    out.push(b'Z');
}

/// `secs` (unix seconds) as `YYYY-MM-DDTHH:MM:SS`.
fn date_time(secs: u64, out: &mut Vec<u8>) {
    let date = Date::from_unix_s(secs);
    let in_day = secs % DAY_S;
    decimal::push(out, u64::try_from(date.year()).unwrap_or(0), 4);
    out.push(b'-');
    decimal::push(out, u64::from(date.month()), 2);
    out.push(b'-');
    decimal::push(out, u64::from(date.day()), 2);
    out.push(b'T');
    decimal::push(out, in_day / 3600, 2);
    out.push(b':');
    decimal::push(out, in_day / 60 % 60, 2);
    out.push(b':');
    decimal::push(out, in_day % 60, 2);
}

#[cfg(test)]
#[path = "access_line_tests.rs"]
mod tests;
