//! Logging: diagnostics and one access line per request, through `tracing`, written by a
//! background thread ([`super::log_writer`]) so a slow terminal or disk never blocks a worker.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use sluice_core::config::LogConfig;
use sluice_core::usage::Usage;
use tracing_subscriber::EnvFilter;

use super::log_writer::{LogGuard, LogWriter, QUEUE_LIMIT_BYTES};

/// The background writer of every log line.
static WRITER: OnceLock<LogWriter> = OnceLock::new();

/// Whether access lines are written without `tracing` (the JSON format).
static JSON: OnceLock<bool> = OnceLock::new();

/// The background writer when the log is JSON (access lines are handed to it directly).
pub(crate) fn access_writer() -> Option<&'static LogWriter> {
    WRITER.get().filter(|_| JSON.get() == Some(&true))
}

/// Log lines dropped because the writer fell behind (its queue is bounded).
pub fn dropped_lines() -> usize {
    WRITER.get().map_or(0, LogWriter::dropped_lines)
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping it writes out
/// every line queued before.
pub fn init(cfg: &LogConfig) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = LogWriter::spawn(std::io::stdout(), QUEUE_LIMIT_BYTES).ok()?;
    if WRITER.set(writer.clone()).is_err() {
        // Installed before (tests): the first writer stays.
        return None;
    }
    let _ = JSON.set(cfg.json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let installed = if cfg.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    installed.ok().map(|_| guard)
}

/// One upstream attempt of a request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    /// `provider/model`.
    pub deployment: String,
    /// Provider index (not logged).
    #[serde(skip)]
    pub provider: usize,
    /// Its span id when traced (not logged).
    #[serde(skip)]
    pub span_id: Option<[u8; 8]>,
    /// Microseconds after the request head when the attempt started.
    pub start_us: u64,
    /// Microseconds after the request head when it ended.
    pub end_us: u64,
    /// Upstream status, 0 when none arrived.
    pub status: u16,
    /// Failure label, if it failed.
    pub error: Option<&'static str>,
    /// The model its answer named, for the attempt that was delivered (not logged per
    /// attempt: the access line has it once).
    #[serde(skip)]
    pub response_model: Option<String>,
}

/// Methods a request head commonly carries, kept as they are written (a method is
/// case-sensitive).
const METHODS: [&str; 7] = ["POST", "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"];

/// A request's method for its record: a known one borrowed (no allocation per request), any
/// other copied.
pub fn method_text(method: &str) -> Cow<'static, str> {
    match METHODS.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_owned()),
    }
}

/// What one request did, logged as one line when it ends. Never holds a key.
#[derive(Debug, Default)]
pub struct AccessRecord {
    /// `x-request-id`.
    pub request_id: String,
    /// HTTP method (borrowed when it is a known one: see [`method_text`]).
    pub method: Cow<'static, str>,
    /// Request path (borrowed when it is one of the gateway's own: see
    /// `listen::endpoints::recorded_path`).
    pub path: Cow<'static, str>,
    /// The virtual key's id (never the key itself), shared with the key's entry.
    pub key_id: Option<Arc<str>>,
    /// The key's team, shared with the team's entry.
    pub team: Option<Arc<str>>,
    /// Model the client asked for.
    pub model: Option<String>,
    /// `provider/model` that answered.
    pub deployment: Option<String>,
    /// The model the upstream's answer named, bounded (`gen_ai.response.model`).
    pub response_model: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// Whether the answer was an event stream.
    pub stream: bool,
    /// Tokens, when known.
    pub usage: Option<Usage>,
    /// What the request cost, in micro-USD, when its usage and price are known.
    pub cost_micros: Option<u64>,
    /// (model group, deployment) indices into the config, once routed; the deployment is
    /// `None` when the request failed before any could be tried.
    pub route: Option<(usize, Option<usize>)>,
    /// Microseconds from the request head to the first response byte sent.
    pub ttfb_us: Option<u64>,
    /// Microseconds from the request head to the first byte of the upstream's answer body.
    pub first_token_us: Option<u64>,
    /// Microseconds from the request head to the end of the response.
    pub total_us: u64,
    /// Microseconds spent waiting on the upstream (head and body).
    pub upstream_us: Option<u64>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response bytes written.
    pub bytes_out: u64,
    /// Whether the upstream connection was reused.
    pub upstream_reused: Option<bool>,
    /// Error label, when the request failed.
    pub error: Option<String>,
    /// The client went away before the end.
    pub client_cancelled: bool,
    /// Every upstream attempt, in order.
    pub attempts: Vec<Attempt>,
    /// The request's place in a trace, when traced.
    pub trace: Option<crate::telemetry::context::RequestTrace>,
    /// Wall-clock start, in unix nanoseconds (set when traced).
    pub start_unix_ns: u64,
    /// The response cache's verdict (`hit`, `semantic`, `miss`) in a group with a cache.
    pub cache: Option<&'static str>,
    /// What a cache hit saved, in micro-USD.
    pub saved_micros: Option<u64>,
}

impl AccessRecord {
    /// The access line through `tracing` (the human format; the JSON format is written
    /// without it, see `AccessRecord::emit` in the telemetry's access_line module).
    pub(crate) fn emit_with_tracing(&self) {
        let usage = self.usage.unwrap_or_default();
        let has_usage = self.usage.is_some();
        let attempts = (!self.attempts.is_empty())
            .then(|| serde_json::to_string(&self.attempts).unwrap_or_default());
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let trace_id = self.trace.map(|t| hex(&t.trace_id));
        let span_id = self.trace.map(|t| hex(&t.span_id));
        tracing::info!(
            target: "sluice::access",
            request_id = %self.request_id,
            trace_id = trace_id.as_deref(),
            span_id = span_id.as_deref(),
            method = %self.method,
            path = %self.path,
            key_id = self.key_id.as_deref(),
            team = self.team.as_deref(),
            model = self.model.as_deref(),
            deployment = self.deployment.as_deref(),
            status = self.status,
            stream = self.stream,
            input_tokens = has_usage.then_some(usage.input_tokens),
            output_tokens = has_usage.then_some(usage.output_tokens),
            cached_tokens = has_usage.then_some(usage.cached_tokens),
            reasoning_tokens = has_usage.then_some(usage.reasoning_tokens),
            tokens_estimated = has_usage.then_some(usage.estimated),
            cost_usd = self.cost_micros.map(|m| m as f64 / 1e6),
            ttfb_ms = self.ttfb_us.map(|u| u as f64 / 1000.0),
            total_ms = self.total_us as f64 / 1000.0,
            overhead_ms = self.upstream_us.map(|u| self.total_us.saturating_sub(u) as f64 / 1000.0),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            upstream_reused = self.upstream_reused,
            error = self.error.as_deref(),
            attempts = attempts.as_deref(),
            client_cancelled = self.client_cancelled,
            cache = self.cache,
            saved_usd = self.saved_micros.map(|m| m as f64 / 1e6),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_are_borrowed_others_kept_as_written() {
        assert!(matches!(method_text("POST"), Cow::Borrowed("POST")));
        for odd in ["post", "PROPFIND", ""] {
            let m = method_text(odd);
            assert!(matches!(m, Cow::Owned(_)) && m == odd);
        }
    }
}
