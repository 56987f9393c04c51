//! Traces arrive at an OTLP receiver with the right parent/child structure, and the upstream
//! gets the attempt span as its `traceparent`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sluice_core::http1::{parse_request_head, BodyFraming, HeadLimits};
use sluice_core::traceparent::TraceParent;
use sluice_proxy::telemetry::trace::otlp;

/// A minimal OTLP/HTTP receiver collecting every span it is sent.
fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<otlp::Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = Vec::new();
            let limits = HeadLimits {
                max_header_bytes: 1 << 16,
                max_body_bytes: 1 << 24,
            };
            let mut chunk = [0u8; 8192];
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
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
                        let req: otlp::ExportTraceServiceRequest =
                            prost::Message::decode(&buf[len..len + body as usize]).unwrap();
                        for rs in req.resource_spans {
                            for ss in rs.scope_spans {
                                sink.lock().unwrap().extend(ss.spans);
                            }
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                        break;
                    }
                }
            }
        }
    });
    (addr, spans)
}

fn attr<'a>(span: &'a otlp::Span, key: &str) -> Option<&'a otlp::any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn traces_have_parent_child_structure(driver: &str) {
    let (collector, spans) = receiver();
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

    assert!(eventually(Duration::from_secs(5), || spans
        .lock()
        .unwrap()
        .len()
        >= 2));
    let spans = spans.lock().unwrap().clone();
    let server = spans
        .iter()
        .find(|s| s.kind == otlp::SPAN_KIND_SERVER)
        .unwrap();
    let client = spans
        .iter()
        .find(|s| s.kind == otlp::SPAN_KIND_CLIENT)
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
    use otlp::any_value::Value;
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

both_drivers!(
    traces_have_parent_child_structure,
    unreachable_collector_costs_nothing
);
