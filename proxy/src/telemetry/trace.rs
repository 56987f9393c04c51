//! OpenTelemetry traces: one server span per request and one client span per upstream
//! attempt, with the GenAI span attributes, exported as OTLP over HTTP/protobuf.
//!
//! Export runs on its own thread fed by a bounded channel: a worker only does a non-blocking
//! `try_send` of finished spans, and drops (and counts) them when the queue is full, so an
//! unreachable or slow collector costs nothing on the request path. The W3C `traceparent` of
//! each attempt is sent to the upstream.
//!
//! The OTLP messages are `opentelemetry-proto`'s prost types ([`otlp`]). Spans carry the
//! OpenTelemetry GenAI semantic-convention attributes: `gen_ai.operation.name`,
//! `gen_ai.provider.name` (the deployment's real provider: `openai`, `azure.ai.openai`,
//! `anthropic`, `gcp.gemini`), `gen_ai.request.model`, `gen_ai.response.model` (the model the
//! upstream's answer named, bounded; the deployment's configured model when it named none) and
//! `gen_ai.usage.input_tokens` / `output_tokens`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sluice_core::config::{ProviderKind, TracingConfig};

/// The OTLP protobuf messages the gateway fills, from `opentelemetry-proto`.
pub mod otlp {
    pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    pub use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    pub use opentelemetry_proto::tonic::resource::v1::Resource;
    pub use opentelemetry_proto::tonic::trace::v1::{
        span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
    };
}

use otlp::any_value::Value;

/// `gen_ai.provider.name` of a provider dialect, as the GenAI conventions name them.
pub fn provider_name(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Vertex(_) => "gcp.vertex_ai",
        ProviderKind::Bedrock => "aws.bedrock",
    }
}

/// A string attribute.
pub fn attr_str(key: &str, v: impl Into<String>) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(key: &str, v: i64) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(Value::IntValue(v)),
        }),
        ..Default::default()
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
    let path = if endpoint.path_prefix.is_empty() {
        "/v1/traces"
    } else {
        endpoint.path_prefix.as_str()
    };
    let scheme = if endpoint.tls { "https" } else { "http" };
    let mut resource = vec![
        attr_str("service.name", cfg.service_name.clone()),
        attr_str("service.version", env!("CARGO_PKG_VERSION")),
    ];
    for (k, v) in &cfg.resource_attributes {
        if k != "service.version" {
            resource.push(attr_str(k, v.clone()));
        }
    }
    let exporter = Exporter {
        rx,
        url: format!("{scheme}://{}{path}", endpoint.host_header),
        headers: cfg
            .otlp_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_string()))
            .collect(),
        resource,
        batch: cfg.max_batch_spans,
        flush: Duration::from_millis(cfg.flush_interval_ms),
        agent: crate::blocking_http::agent(Duration::from_millis(cfg.export_timeout_ms)),
    };
    std::thread::Builder::new()
        .name("sluice-otlp".into())
        .spawn(move || exporter.run())?;
    Ok(())
}

struct Exporter {
    rx: Receiver<otlp::Span>,
    /// The traces URL (`http` or `https`).
    url: String,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (secrets: never logged).
    headers: Vec<(String, String)>,
    resource: Vec<otlp::KeyValue>,
    batch: usize,
    flush: Duration,
    agent: ureq::Agent,
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
                    attributes: self.resource.clone(),
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "sluice".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: std::mem::take(spans),
                    ..Default::default()
                }],
                ..Default::default()
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

    fn post(&self, body: &[u8]) -> Result<u16, ureq::Error> {
        let mut req = self
            .agent
            .post(&self.url)
            .header("content-type", "application/x-protobuf");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut response = req.send(body)?;
        // Read the (small) reply so the connection can be kept for the next batch.
        let _ = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_vec();
        Ok(response.status().as_u16())
    }
}

/// GenAI `gen_ai.operation.name` for a request path.
pub fn operation(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" | "/v1/responses" | "/v1/messages" => "chat",
        "/v1/completions" => "text_completion",
        "/v1/embeddings" => "embeddings",
        _ => "http",
    }
}

fn status(code: u16, error: Option<&str>) -> Option<otlp::Status> {
    let (message, code) = match error {
        Some(e) => (e.to_string(), otlp::StatusCode::Error),
        None if code >= 500 => (String::new(), otlp::StatusCode::Error),
        None => (String::new(), otlp::StatusCode::Ok),
    };
    Some(otlp::Status {
        message,
        code: code as i32,
    })
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
    let group = rec.route.and_then(|(g, _)| config.models.get(g));
    // The deployment that answered, and the upstream model it was asked for.
    let served = rec.route.and_then(|(_, d)| group?.deployments.get(d?));
    let provider_of = |p: usize| config.providers.get(p).map(|p| provider_name(p.kind));
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
    if let Some(d) = served {
        if let Some(p) = provider_of(d.provider) {
            attributes.push(attr_str("gen_ai.provider.name", p));
        }
        if rec.status < 400 {
            // What the upstream's answer named (bounded); the configured model when it named
            // none (Bedrock).
            let answered = rec.response_model.as_ref().unwrap_or(&d.model);
            attributes.push(attr_str("gen_ai.response.model", answered.clone()));
        }
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
        kind: otlp::SpanKind::Server as i32,
        start_time_unix_nano: rec.start_unix_ns,
        end_time_unix_nano: at(rec.total_us),
        attributes,
        status: status(rec.status, rec.error.as_deref()),
        ..Default::default()
    });
    for a in &rec.attempts {
        let Some(span_id) = a.span_id else { continue };
        let mut attributes = vec![
            attr_str("gen_ai.operation.name", op),
            attr_str("sluice.deployment", a.deployment.clone()),
        ];
        if let Some(name) = provider_of(a.provider) {
            attributes.push(attr_str("gen_ai.provider.name", name));
        }
        if let Some(p) = config.providers.get(a.provider) {
            attributes.push(attr_str("server.address", p.endpoint.host.clone()));
            attributes.push(attr_int("server.port", i64::from(p.endpoint.port)));
        }
        let upstream_model = group
            .and_then(|g| g.deployments.iter().find(|d| d.label == a.deployment))
            .map(|d| d.model.clone());
        if let Some(m) = &upstream_model {
            attributes.push(attr_str("gen_ai.request.model", m.clone()));
            if (200..300).contains(&a.status) {
                let answered = a.response_model.as_ref().unwrap_or(m);
                attributes.push(attr_str("gen_ai.response.model", answered.clone()));
            }
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
            name: format!(
                "{op} {}",
                upstream_model.as_deref().unwrap_or(&a.deployment)
            ),
            kind: otlp::SpanKind::Client as i32,
            start_time_unix_nano: at(a.start_us),
            end_time_unix_nano: at(a.end_us),
            attributes,
            status: status(a.status, a.error),
            ..Default::default()
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_has_its_semconv_provider_name() {
        assert_eq!(provider_name(ProviderKind::OpenAi), "openai");
        assert_eq!(provider_name(ProviderKind::Azure), "azure.ai.openai");
        assert_eq!(provider_name(ProviderKind::Anthropic), "anthropic");
        assert_eq!(provider_name(ProviderKind::Gemini), "gcp.gemini");
    }

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
                        kind: otlp::SpanKind::Server as i32,
                        attributes: vec![attr_int("gen_ai.usage.input_tokens", 5)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = prost::Message::encode_to_vec(&req);
        let back: otlp::ExportTraceServiceRequest = prost::Message::decode(&bytes[..]).unwrap();
        assert_eq!(back, req);
    }
}
