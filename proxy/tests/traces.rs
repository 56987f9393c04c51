//! Traces arrive at an OTLP receiver with the right parent/child structure, and the upstream
//! gets the attempt span as its `traceparent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use sluice_core::http1::{parse_request_head, BodyFraming, HeadLimits};
use sluice_core::traceparent::TraceParent;

/// What a collector received: each export request, decoded, with its headers.
#[derive(Default)]
struct Received {
    requests: Vec<(Vec<(String, String)>, ExportTraceServiceRequest)>,
}

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.requests
            .iter()
            .flat_map(|(_, r)| r.resource_spans.iter())
            .flat_map(|rs| rs.scope_spans.iter())
            .flat_map(|ss| ss.spans.iter().cloned())
            .collect()
    }
}

type Sink = Arc<Mutex<Received>>;

/// Reads one OTLP/HTTP export from `stream`, decodes it with opentelemetry-proto's types,
/// answers 200 and closes.
fn serve_one(mut stream: impl Read + Write, sink: &Sink) {
    let mut buf = Vec::new();
    let limits = HeadLimits {
        max_header_bytes: 1 << 16,
        max_body_bytes: 1 << 24,
    };
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Ok(Some((head, len))) = parse_request_head(&buf, &limits) {
            assert_eq!(head.path(), "/v1/traces");
            assert_eq!(
                head.header_str("content-type"),
                Some("application/x-protobuf")
            );
            let BodyFraming::Length(body) = head.body else {
                panic!("no body")
            };
            if buf.len() >= len + body as usize {
                let req: ExportTraceServiceRequest =
                    prost::Message::decode(&buf[len..len + body as usize]).unwrap();
                let headers = ["authorization", "x-team", "host"]
                    .iter()
                    .filter_map(|h| Some((h.to_string(), head.header_str(h)?.to_string())))
                    .collect();
                sink.lock().unwrap().requests.push((headers, req));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let _ = stream.flush();
                return;
            }
        }
    }
}

/// A minimal OTLP/HTTP receiver on 127.0.0.1, over TLS when `tls` is given.
fn receiver(tls: Option<Arc<rustls::ServerConfig>>) -> (std::net::SocketAddr, Sink) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sink: Sink = Arc::default();
    let into = sink.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            match &tls {
                None => serve_one(stream, &into),
                Some(config) => {
                    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    serve_one(rustls::StreamOwned::new(conn, stream), &into);
                }
            }
        }
    });
    (addr, sink)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn traces_have_parent_child_structure(driver: &str) {
    let (collector, received) = receiver(None);
    let mock = mock();
    let cfg = config(mock.addr(), "", "").replace(
        "[admin]\n",
        &format!("[tracing]\notlp_endpoint = \"http://{collector}/v1/traces\"\nflush_interval_ms = 50\n\n[admin]\n"),
    );
    let gw = Gateway::start(&cfg, driver);
    let client_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.connect().post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        &format!("traceparent: {client_parent}\r\n"),
    );
    assert_eq!(r.status, 200);
    // The upstream saw our attempt span, in the client's trace.
    let sent = mock.last_request().unwrap();
    let upstream_tp = TraceParent::parse(sent.header("traceparent").unwrap().as_bytes()).unwrap();
    assert_eq!(
        hex(&upstream_tp.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );

    assert!(eventually(Duration::from_secs(5), || received
        .lock()
        .unwrap()
        .spans()
        .len()
        >= 2));
    let spans = received.lock().unwrap().spans();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        hex(&server.parent_span_id),
        "00f067aa0ba902b7",
        "server span continues the client's"
    );
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(
        client.parent_span_id, server.span_id,
        "attempt span is a child of the request span"
    );
    assert_eq!(
        client.span_id,
        upstream_tp.span_id.to_vec(),
        "upstream got the attempt span"
    );
    assert_eq!(server.name, "chat mock-fast");
    assert!(server.end_time_unix_nano > server.start_time_unix_nano);
    assert!(client.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(client.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(
        attr(server, "gen_ai.request.model"),
        Some(&Value::StringValue("mock-fast".into()))
    );
    assert_eq!(
        attr(server, "gen_ai.usage.output_tokens"),
        Some(&Value::IntValue(8))
    );
    assert_eq!(
        attr(server, "gen_ai.operation.name"),
        Some(&Value::StringValue("chat".into()))
    );
    assert_eq!(
        attr(client, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(
        attr(client, "sluice.deployment"),
        Some(&Value::StringValue("mock/mock-model".into()))
    );
    for span in [server, client] {
        assert_eq!(
            attr(span, "gen_ai.provider.name"),
            Some(&Value::StringValue("openai".into()))
        );
        assert_eq!(
            attr(span, "gen_ai.response.model"),
            Some(&Value::StringValue("mock-model".into()))
        );
    }
    assert_eq!(
        attr(client, "gen_ai.request.model"),
        Some(&Value::StringValue("mock-model".into())),
        "the attempt names the upstream model it asked for"
    );
    assert!(matches!(
        attr(server, "gen_ai.usage.input_tokens"),
        Some(Value::IntValue(n)) if *n > 0
    ));
    // The access line joins its trace on the server span's ids.
    let line = &gw.access_lines(1)[0];
    assert_eq!(line["trace_id"], hex(&server.trace_id));
    assert_eq!(line["span_id"], hex(&server.span_id));
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // The resource names the service.
    let resource = received.lock().unwrap().requests[0].1.resource_spans[0]
        .resource
        .clone()
        .unwrap();
    assert!(resource.attributes.iter().any(|kv| kv.key == "service.name"
        && kv.value.as_ref().and_then(|v| v.value.as_ref())
            == Some(&Value::StringValue("sluice".into()))));
}

/// A config with an Anthropic deployment (`mock-anthropic`) next to the OpenAI one, and
/// `[tracing]` without an endpoint: the `OTEL_*` environment supplies it.
fn anthropic_config(mock: std::net::SocketAddr) -> String {
    config(mock, "", "").replace(
        "[admin]\n",
        "[tracing]\nflush_interval_ms = 50\n\n[admin]\n",
    ) + &format!(
        "\n[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"http://{mock}/v1\"\napi_key = \"env:SLUICE_TEST_UPSTREAM_KEY\"\n\n[[models]]\nname = \"mock-anthropic\"\ndeployments = [{{ provider = \"claude\", model = \"claude-mock\" }}]\n"
    )
}

/// The `OTEL_*` variables an operator sets: endpoint, headers, service name, resource.
fn otel_env(base: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Bearer%20collector-token,x-team=ops".to_string(),
        ),
        ("OTEL_SERVICE_NAME", "gateway-eu".to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=prod,service.namespace=llm".to_string(),
        ),
    ]
}

fn check_anthropic_export(received: &Sink) {
    assert!(eventually(Duration::from_secs(5), || received
        .lock()
        .unwrap()
        .spans()
        .iter()
        .any(|s| s.kind == SpanKind::Client as i32)));
    let got = received.lock().unwrap();
    let spans = got.spans();
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    for span in [server, client] {
        assert_eq!(
            attr(span, "gen_ai.provider.name"),
            Some(&Value::StringValue("anthropic".into())),
            "the deployment's real provider, not openai"
        );
    }
    assert_eq!(
        attr(client, "gen_ai.request.model"),
        Some(&Value::StringValue("claude-mock".into()))
    );
    assert_eq!(
        attr(server, "gen_ai.request.model"),
        Some(&Value::StringValue("mock-anthropic".into()))
    );
    let (headers, req) = &got.requests[0];
    assert!(headers.contains(&(
        "authorization".to_string(),
        "Bearer collector-token".to_string()
    )));
    assert!(headers.contains(&("x-team".to_string(), "ops".to_string())));
    let resource = req.resource_spans[0].resource.clone().unwrap();
    let res = |k: &str| {
        resource
            .attributes
            .iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
    };
    assert_eq!(
        res("service.name"),
        Some(Value::StringValue("gateway-eu".into()))
    );
    assert_eq!(
        res("deployment.environment.name"),
        Some(Value::StringValue("prod".into()))
    );
    assert_eq!(
        res("service.namespace"),
        Some(Value::StringValue("llm".into()))
    );
}

fn anthropic_spans_and_otel_environment(driver: &str) {
    let (collector, received) = receiver(None);
    let mock = mock();
    let env = otel_env(&format!("http://{collector}"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start_with_env(&anthropic_config(mock.addr()), driver, &env);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-anthropic", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    check_anthropic_export(&received);
    // The collector's token is a secret: never in the gateway's output.
    assert!(!gw.lines().iter().any(|l| l.contains("collector-token")));
}

/// A certificate authority and a `localhost` server certificate, made in the test.
fn tls_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    (ca_cert.pem(), Arc::new(server))
}

fn export_over_https(driver: &str) {
    let (ca_pem, server) = tls_server();
    let (collector, received) = receiver(Some(server));
    let ca_path = std::env::temp_dir().join(format!(
        "sluice-otlp-ca-{}-{driver}.pem",
        std::process::id()
    ));
    std::fs::write(&ca_path, ca_pem).unwrap();
    let mock = mock();
    let env = otel_env(&format!("https://localhost:{}", collector.port()));
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The collector's private CA, trusted the usual way.
    env.push(("SSL_CERT_FILE", ca_path.to_str().unwrap()));
    let gw = Gateway::start_with_env(&anthropic_config(mock.addr()), driver, &env);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("mock-anthropic", false), "");
    assert_eq!(r.status, 200, "{}", r.text());
    check_anthropic_export(&received);
    let _ = std::fs::remove_file(&ca_path);
}

fn unreachable_collector_costs_nothing(driver: &str) {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = mock();
    let cfg = config(mock.addr(), "", "").replace(
        "[admin]\n",
        &format!("[tracing]\notlp_endpoint = \"http://{dead}/v1/traces\"\nflush_interval_ms = 20\n\n[admin]\n"),
    );
    let gw = Gateway::start(&cfg, driver);
    let mut c = gw.connect();
    for _ in 0..50 {
        assert_eq!(
            c.post("/v1/chat/completions", &chat("mock-fast", false), "")
                .status,
            200
        );
    }
    // Without a client traceparent, the gateway still starts a trace and sends one upstream.
    assert!(mock.last_request().unwrap().header("traceparent").is_some());
    let admin = gw.admin.unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let text = Client::connect(admin).get("/metrics").text();
        text.lines()
            .any(|l| l.starts_with("sluice_trace_spans_dropped_total") && !l.ends_with(" 0"))
    }));
}

/// `gen_ai.response.model` is the model the upstream's answer named (here the mock's
/// `x-mock-answer-model`), not the deployment's configured one: for an OpenAI answer whole and
/// streamed, and an Anthropic deployment's answer translated (whole and streamed) and passed
/// through as a stream; an over-long name is cut to 256 bytes.
fn response_model_is_the_one_that_answered(driver: &str) {
    let (collector, received) = receiver(None);
    let mock = mock();
    let cfg = anthropic_config(mock.addr()).replace(
        "[tracing]\n",
        &format!("[tracing]\notlp_endpoint = \"http://{collector}/v1/traces\"\n"),
    );
    let gw = Gateway::start(&cfg, driver);
    let long = "x".repeat(300);
    let anthropic_stream = r#"{"model":"mock-anthropic","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "/v1/chat/completions",
            chat("mock-fast", false),
            "gpt-answered-2025-01-01",
        ),
        (
            "/v1/chat/completions",
            chat("mock-fast", true),
            "gpt-streamed-2025-02-02",
        ),
        (
            "/v1/chat/completions",
            chat("mock-anthropic", false),
            "claude-answered-20250303",
        ),
        (
            "/v1/chat/completions",
            chat("mock-anthropic", true),
            "claude-streamed-20250404",
        ),
        (
            "/v1/messages",
            anthropic_stream.to_string(),
            "claude-passed-20250505",
        ),
        (
            "/v1/chat/completions",
            chat("mock-fast", false),
            long.as_str(),
        ),
    ];
    let mut c = gw.connect();
    for (k, (path, body, answered)) in cases.iter().enumerate() {
        let trace = format!("{:032x}", k + 1);
        let r = c.post(
            path,
            body,
            &format!(
                "traceparent: 00-{trace}-00f067aa0ba902b7-01\r\nx-mock-answer-model: {answered}\r\n"
            ),
        );
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert!(eventually(Duration::from_secs(5), || received
        .lock()
        .unwrap()
        .spans()
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .count()
        >= cases.len()));
    let spans = received.lock().unwrap().spans();
    for (k, (path, body, answered)) in cases.iter().enumerate() {
        let trace = format!("{:032x}", k + 1);
        let of_trace = |kind: SpanKind| {
            spans
                .iter()
                .find(|s| s.kind == kind as i32 && hex(&s.trace_id) == trace)
                .unwrap_or_else(|| panic!("no {kind:?} span for {path} {body}"))
        };
        let want = &answered[..answered.len().min(256)];
        for span in [of_trace(SpanKind::Server), of_trace(SpanKind::Client)] {
            assert_eq!(
                attr(span, "gen_ai.response.model"),
                Some(&Value::StringValue(want.into())),
                "{path} {body}"
            );
        }
        // The request model stays what was asked for.
        let asked = if body.contains("mock-fast") {
            "mock-model"
        } else {
            "claude-mock"
        };
        assert_eq!(
            attr(of_trace(SpanKind::Client), "gen_ai.request.model"),
            Some(&Value::StringValue(asked.into()))
        );
    }
    // The access line names the answered model when it is not the deployment's own.
    let lines = gw.access_lines(cases.len());
    assert_eq!(lines[0]["response_model"], "gpt-answered-2025-01-01");
    assert_eq!(lines[5]["response_model"].as_str().map(str::len), Some(256));

    // An answer naming the configured model itself: the same value, and no access-line field.
    let r = c.post(
        "/v1/chat/completions",
        &chat("mock-fast", false),
        "traceparent: 00-000000000000000000000000000000ff-00f067aa0ba902b7-01\r\n",
    );
    assert_eq!(r.status, 200);
    let lines = gw.access_lines(cases.len() + 1);
    assert!(
        lines[cases.len()].get("response_model").is_none(),
        "{}",
        lines[cases.len()]
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

both_drivers!(
    traces_have_parent_child_structure,
    unreachable_collector_costs_nothing,
    anthropic_spans_and_otel_environment,
    export_over_https,
    response_model_is_the_one_that_answered
);
