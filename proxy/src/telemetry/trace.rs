//! OpenTelemetry traces: one server span per request and one client span per upstream
//! attempt, with the GenAI span attributes, exported as OTLP over HTTP/protobuf.
//!
//! Export runs on its own thread fed by a bounded channel: a worker only does a non-blocking
//! `try_send` of finished spans, and drops (and counts) them when the queue is full, so an
//! unreachable or slow collector costs nothing on the request path. The W3C `traceparent` of
//! each attempt is sent to the upstream.
//!
//! The OTLP messages are the subset of `opentelemetry/proto/trace/v1` the gateway fills,
//! declared with prost's derive (field numbers as in the upstream .proto files).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sluice_core::config::TracingConfig;

/// The OTLP protobuf messages (a subset).
#[allow(missing_docs)]
pub mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
        pub value: Option<any_value::Value>,
    }
    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
        }
    }
    /// `SpanKind` values.
    pub const SPAN_KIND_SERVER: i32 = 2;
    /// `SpanKind` values.
    pub const SPAN_KIND_CLIENT: i32 = 3;
    /// `StatusCode` values.
    pub const STATUS_OK: i32 = 1;
    /// `StatusCode` values.
    pub const STATUS_ERROR: i32 = 2;
}

use otlp::any_value::Value;

/// A string attribute.
pub fn attr_str(key: &str, v: impl Into<String>) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
    }
}

/// An integer attribute.
pub fn attr_int(key: &str, v: i64) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(Value::IntValue(v)),
        }),
    }
}

/// Spans dropped because the export queue was full or the collector failed.
pub static DROPPED_SPANS: AtomicU64 = AtomicU64::new(0);
/// Spans the collector accepted.
pub static EXPORTED_SPANS: AtomicU64 = AtomicU64::new(0);

static EXPORTER: OnceLock<Sender<otlp::Span>> = OnceLock::new();

/// Hands finished spans to the exporter; never blocks.
pub fn export(spans: impl IntoIterator<Item = otlp::Span>) {
    let Some(tx) = EXPORTER.get() else { return };
    for span in spans {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(span) {
            DROPPED_SPANS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether an exporter runs.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Starts the exporter thread when `otlp_endpoint` is set.
pub fn spawn(cfg: &TracingConfig) -> std::io::Result<()> {
    let Some(endpoint) = cfg.otlp_endpoint.clone() else {
        return Ok(());
    };
    let (tx, rx) = crossbeam_channel::bounded(cfg.max_queue_spans);
    if EXPORTER.set(tx).is_err() {
        return Ok(());
    }
    let exporter = Exporter {
        rx,
        host: endpoint.host.clone(),
        port: endpoint.port,
        host_header: endpoint.host_header.clone(),
        path: if endpoint.path_prefix.is_empty() {
            "/v1/traces".to_string()
        } else {
            endpoint.path_prefix.clone()
        },
        service: cfg.service_name.clone(),
        batch: cfg.max_batch_spans,
        flush: Duration::from_millis(cfg.flush_interval_ms),
        timeout: Duration::from_millis(cfg.export_timeout_ms),
    };
    std::thread::Builder::new()
        .name("sluice-otlp".into())
        .spawn(move || exporter.run())?;
    Ok(())
}

struct Exporter {
    rx: Receiver<otlp::Span>,
    host: String,
    port: u16,
    host_header: String,
    path: String,
    service: String,
    batch: usize,
    flush: Duration,
    timeout: Duration,
}

impl Exporter {
    fn run(self) {
        let mut pending = Vec::with_capacity(self.batch);
        loop {
            let deadline = Instant::now() + self.flush;
            while pending.len() < self.batch {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(span) => pending.push(span),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        self.send(&mut pending);
                        return;
                    }
                }
            }
            self.send(&mut pending);
        }
    }

    fn send(&self, spans: &mut Vec<otlp::Span>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(otlp::Resource {
                    attributes: vec![
                        attr_str("service.name", self.service.clone()),
                        attr_str("service.version", env!("CARGO_PKG_VERSION")),
                    ],
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "sluice".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: std::mem::take(spans),
                }],
            }],
        };
        let body = prost::Message::encode_to_vec(&request);
        match self.post(&body) {
            Ok(status) if (200..300).contains(&status) => {
                EXPORTED_SPANS.fetch_add(n, Ordering::Relaxed);
            }
            Ok(status) => {
                DROPPED_SPANS.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(status, "OTLP collector refused a batch");
            }
            Err(e) => {
                DROPPED_SPANS.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(error = %e, "OTLP export failed");
            }
        }
    }

    fn post(&self, body: &[u8]) -> std::io::Result<u16> {
        let addr: SocketAddr = (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("collector host does not resolve"))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.path,
            self.host_header,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line)?;
        std::str::from_utf8(&status_line[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line from the collector"))
    }
}

/// GenAI `gen_ai.operation.name` for a request path.
fn operation(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        "/v1/responses" => "chat",
        _ => "http",
    }
}

/// The spans of a finished traced request: its server span and one client span per
/// upstream attempt.
pub fn request_spans(
    rec: &crate::telemetry::log::AccessRecord,
    config: &sluice_core::config::Config,
) -> Vec<otlp::Span> {
    let Some(t) = rec.trace else {
        return Vec::new();
    };
    let at = |us: u64| rec.start_unix_ns + us * 1000;
    let op = operation(&rec.path);
    let model = rec.model.clone().unwrap_or_default();
    let status = |code: u16, error: Option<&str>| {
        Some(match error {
            Some(e) => otlp::Status {
                message: e.to_string(),
                code: otlp::STATUS_ERROR,
            },
            None if code >= 500 => otlp::Status {
                message: String::new(),
                code: otlp::STATUS_ERROR,
            },
            None => otlp::Status {
                message: String::new(),
                code: otlp::STATUS_OK,
            },
        })
    };
    let mut attributes = vec![
        attr_str("gen_ai.operation.name", op),
        attr_str("http.request.method", rec.method.clone()),
        attr_str("url.path", rec.path.clone()),
        attr_int("http.response.status_code", i64::from(rec.status)),
        attr_str("sluice.request_id", rec.request_id.clone()),
    ];
    if !model.is_empty() {
        attributes.push(attr_str("gen_ai.request.model", model.clone()));
    }
    if let Some(d) = &rec.deployment {
        attributes.push(attr_str("sluice.deployment", d.clone()));
    }
    if let Some(u) = rec.usage {
        attributes.push(attr_int("gen_ai.usage.input_tokens", u.input_tokens as i64));
        attributes.push(attr_int(
            "gen_ai.usage.output_tokens",
            u.output_tokens as i64,
        ));
    }
    if let Some(e) = &rec.error {
        attributes.push(attr_str("error.type", e.clone()));
    }
    let mut spans = Vec::with_capacity(1 + rec.attempts.len());
    spans.push(otlp::Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: if model.is_empty() {
            format!("{} {}", rec.method, rec.path)
        } else {
            format!("{op} {model}")
        },
        kind: otlp::SPAN_KIND_SERVER,
        start_time_unix_nano: rec.start_unix_ns,
        end_time_unix_nano: at(rec.total_us),
        attributes,
        status: status(rec.status, rec.error.as_deref()),
    });
    for a in &rec.attempts {
        let Some(span_id) = a.span_id else { continue };
        let mut attributes = vec![
            attr_str("gen_ai.operation.name", op),
            attr_str("sluice.deployment", a.deployment.clone()),
        ];
        if let Some(p) = config.providers.get(a.provider) {
            attributes.push(attr_str("gen_ai.system", "openai"));
            attributes.push(attr_str("server.address", p.endpoint.host.clone()));
            attributes.push(attr_int("server.port", i64::from(p.endpoint.port)));
        }
        if a.status != 0 {
            attributes.push(attr_int("http.response.status_code", i64::from(a.status)));
        }
        if let Some(e) = a.error {
            attributes.push(attr_str("error.type", e));
        }
        spans.push(otlp::Span {
            trace_id: t.trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: t.span_id.to_vec(),
            name: format!("{op} {}", a.deployment),
            kind: otlp::SPAN_KIND_CLIENT,
            start_time_unix_nano: at(a.start_us),
            end_time_unix_nano: at(a.end_us),
            attributes,
            status: status(a.status, a.error),
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_and_decode() {
        let req = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: None,
                scope_spans: vec![otlp::ScopeSpans {
                    scope: None,
                    spans: vec![otlp::Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "chat m".into(),
                        kind: otlp::SPAN_KIND_SERVER,
                        attributes: vec![attr_int("gen_ai.usage.input_tokens", 5)],
                        ..Default::default()
                    }],
                }],
            }],
        };
        let bytes = prost::Message::encode_to_vec(&req);
        let back: otlp::ExportTraceServiceRequest = prost::Message::decode(&bytes[..]).unwrap();
        assert_eq!(back, req);
    }
}
