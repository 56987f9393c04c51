//! The access line in JSON, written straight into a reused buffer.
//!
//! Going through `tracing`'s JSON formatter cost some 45,000 instructions per request on the
//! worker (a callgrind profile with keys, the ledger and the access log on: 30 % of the
//! whole process): a visitor per field, `fmt::Arguments` for every value, UTF-8 validation of
//! what it had just written, a `String` per attempt list. This writes the same object — the
//! same keys, `timestamp`, `level`, `message`, the fields, `target`; a field without a value
//! is left out as `tracing` leaves out a `None` — with one pass over each value, into a
//! per-worker buffer that is handed to the same background writer the diagnostics use, so
//! the lines of both never interleave.

use std::cell::{Cell, RefCell};
use std::io::Write as _;

use sluice_core::calendar::{Date, DAY_S};

use crate::telemetry::log::{access_writer, AccessRecord};

impl AccessRecord {
    /// Emits the access line: formatted here into a reused buffer and handed to the log
    /// writer when the log is JSON, through `tracing` otherwise. Either way the log's level
    /// filter applies (target `sluice::access`).
    pub fn emit(&self) {
        if !tracing::enabled!(target: "sluice::access", tracing::Level::INFO) {
            return;
        }
        let Some(writer) = access_writer() else {
            return self.emit_with_tracing();
        };
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
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
        with_line(self, unix_us, |line| {
            // Lossy like every log line: a full writer drops it and counts the drop.
            let _ = writer.clone().write_all(line);
        });
    }
}

/// Bytes of access lines a worker gathers before handing them to the writer in one message.
///
/// One message per line meant one wake-up of the writer thread per request (a futex call
/// from the worker and a context switch, at thousands of requests a second); a worker
/// instead appends its lines to a buffer of its own and hands over the buffer when it holds
/// this much, and at least every quarter of a second ([`flush`], from the worker's
/// heartbeat, and when the worker stops). The lines of one buffer are whole and in order;
/// a full writer drops the buffer and counts one dropped line.
pub const BATCH_BYTES: usize = 16 * 1024;

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
            let _ = writer.clone().write_all(pending);
        }
        pending.clear();
        if pending.capacity() > 16 * BATCH_BYTES {
            *pending = Vec::with_capacity(2 * BATCH_BYTES);
        }
    });
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static BATCHED: Cell<bool> = const { Cell::new(false) };
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
    str_field(out, "request_id", &rec.request_id);
    if let Some(t) = &rec.trace {
        // The ids of the request's server span, as the exported span carries them, so a log
        // line and its trace join on `trace_id`.
        hex_field(out, "trace_id", &t.trace_id);
        hex_field(out, "span_id", &t.span_id);
    }
    str_field(out, "method", &rec.method);
    str_field(out, "path", &rec.path);
    opt_str(out, "key_id", rec.key_id.as_deref());
    opt_str(out, "team", rec.team.as_deref());
    opt_str(out, "model", rec.model.as_deref());
    opt_str(out, "deployment", rec.deployment.as_deref());
    // The model the upstream named, only when it is not the deployment's own (`provider/model`).
    if let Some(answered) = rec.response_model.as_deref() {
        let configured = rec.deployment.as_deref().and_then(|d| d.split_once('/'));
        if configured.is_none_or(|(_, m)| m != answered) {
            str_field(out, "response_model", answered);
        }
    }
    num_field(out, "status", rec.status as u64);
    bool_field(out, "stream", rec.stream);
    if let Some(u) = &rec.usage {
        num_field(out, "input_tokens", u.input_tokens);
        num_field(out, "output_tokens", u.output_tokens);
        num_field(out, "cached_tokens", u.cached_tokens);
        num_field(out, "reasoning_tokens", u.reasoning_tokens);
        bool_field(out, "tokens_estimated", u.estimated);
    }
    if let Some(m) = rec.cost_micros {
        float_field(out, "cost_usd", m as f64 / 1e6);
    }
    if let Some(us) = rec.ttfb_us {
        float_field(out, "ttfb_ms", us as f64 / 1000.0);
    }
    float_field(out, "total_ms", rec.total_us as f64 / 1000.0);
    if let Some(us) = rec.upstream_us {
        float_field(
            out,
            "overhead_ms",
            rec.total_us.saturating_sub(us) as f64 / 1000.0,
        );
    }
    num_field(out, "bytes_in", rec.bytes_in);
    num_field(out, "bytes_out", rec.bytes_out);
    if let Some(reused) = rec.upstream_reused {
        bool_field(out, "upstream_reused", reused);
    }
    opt_str(out, "error", rec.error.as_deref());
    if !rec.attempts.is_empty() {
        // A string holding the JSON list, as before (log pipelines already parse it so).
        let list = serde_json::to_string(&rec.attempts).unwrap_or_default();
        str_field(out, "attempts", &list);
    }
    bool_field(out, "client_cancelled", rec.client_cancelled);
    opt_str(out, "cache", rec.cache);
    if let Some(m) = rec.saved_micros {
        float_field(out, "saved_usd", m as f64 / 1e6);
    }
    out.extend_from_slice(b",\"target\":\"sluice::access\"}\n");
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
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
    let _ = write!(out, "{value}");
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

/// `value` as a JSON string: quotes, backslashes and control characters escaped.
fn json_str(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber` writes it.
fn timestamp(unix_us: u64, out: &mut Vec<u8>) {
    let secs = unix_us / 1_000_000;
    let date = Date::from_unix_s(secs);
    let in_day = secs % DAY_S;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        date.year(),
        date.month(),
        date.day(),
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        unix_us % 1_000_000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::log::Attempt;
    use sluice_core::usage::Usage;

    fn line(rec: &AccessRecord) -> serde_json::Value {
        let mut text = Vec::new();
        with_line(rec, 1_765_024_496_123_456, |l| text.extend_from_slice(l));
        assert_eq!(text.last(), Some(&b'\n'));
        assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn a_full_record_reads_back_field_for_field() {
        let rec = AccessRecord {
            request_id: "req_\"1\"\\\n\u{1}é".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            key_id: Some("key_1".into()),
            team: Some("t".into()),
            model: Some("m".into()),
            deployment: Some("p/m".into()),
            status: 200,
            stream: true,
            usage: Some(Usage {
                input_tokens: 11,
                output_tokens: 3,
                cached_tokens: 1,
                reasoning_tokens: 2,
                estimated: false,
                ..Usage::default()
            }),
            cost_micros: Some(125),
            ttfb_us: Some(1500),
            total_us: 2250,
            upstream_us: Some(2000),
            bytes_in: 10,
            bytes_out: 20,
            upstream_reused: Some(true),
            error: Some("timeout".into()),
            attempts: vec![Attempt {
                deployment: "p/m".into(),
                provider: 0,
                span_id: None,
                start_us: 1,
                end_us: 2,
                status: 200,
                error: None,
                response_model: None,
            }],
            client_cancelled: false,
            cache: Some("hit"),
            saved_micros: Some(250),
            trace: Some(crate::telemetry::context::RequestTrace {
                trace_id: [0x4b, 0xf9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x47, 0x36],
                span_id: [0, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
                parent: None,
            }),
            ..AccessRecord::default()
        };
        let v = line(&rec);
        assert_eq!(v["timestamp"], "2025-12-06T12:34:56.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "sluice::access");
        assert_eq!(v["request_id"], "req_\"1\"\\\n\u{1}é");
        assert_eq!(v["trace_id"], "4bf90000000000000000000000004736");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["status"], 200);
        assert_eq!(v["stream"], true);
        assert_eq!(v["input_tokens"], 11);
        assert_eq!(v["reasoning_tokens"], 2);
        assert_eq!(v["tokens_estimated"], false);
        assert_eq!(v["cost_usd"].as_f64(), Some(0.000125));
        assert_eq!(v["ttfb_ms"].as_f64(), Some(1.5));
        assert_eq!(v["total_ms"].as_f64(), Some(2.25));
        assert_eq!(v["overhead_ms"].as_f64(), Some(0.25));
        assert_eq!(v["upstream_reused"], true);
        assert_eq!(v["error"], "timeout");
        let attempts: serde_json::Value =
            serde_json::from_str(v["attempts"].as_str().unwrap()).unwrap();
        assert_eq!(attempts[0]["deployment"], "p/m");
        assert_eq!(v["client_cancelled"], false);
        assert_eq!(v["cache"], "hit");
        assert_eq!(v["saved_usd"].as_f64(), Some(0.00025));
        assert!(v.get("response_model").is_none(), "{v}");
    }

    #[test]
    fn response_model_only_when_it_differs_from_the_deployment() {
        let rec = |answered: &str| AccessRecord {
            deployment: Some("p/gpt-4o".into()),
            response_model: Some(answered.into()),
            ..AccessRecord::default()
        };
        assert!(line(&rec("gpt-4o")).get("response_model").is_none());
        assert_eq!(
            line(&rec("gpt-4o-2024-08-06"))["response_model"],
            "gpt-4o-2024-08-06"
        );
    }

    #[test]
    fn fields_without_a_value_are_left_out() {
        let v = line(&AccessRecord {
            request_id: "r".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 404,
            ..AccessRecord::default()
        });
        for absent in [
            "key_id",
            "team",
            "model",
            "deployment",
            "input_tokens",
            "cost_usd",
            "ttfb_ms",
            "overhead_ms",
            "upstream_reused",
            "error",
            "attempts",
            "cache",
            "saved_usd",
            "trace_id",
            "span_id",
        ] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        assert_eq!(v["total_ms"].as_f64(), Some(0.0));
    }
}
