//! Focused tests of the Responses translation (the golden fixtures are in
//! `tests/golden/responses*`).

use serde_json::{json, Value};

use super::super::{translate_request, Dialect, Inbound, RequestOptions, StreamTranslator};
use super::*;
use crate::error::ErrorKind;

fn refuse(body: Value, to: Dialect) -> GatewayError {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    match translate_request(
        Inbound::OpenAiResponses,
        to,
        &bytes,
        &RequestOptions::new("m"),
    ) {
        Err(e) => e,
        Ok(t) => panic!("translated: {}", String::from_utf8_lossy(&t.body)),
    }
}

#[test]
fn state_and_hosted_tools_are_400s_naming_the_field() {
    for to in [Dialect::Anthropic, Dialect::OpenAi, Dialect::Gemini] {
        let e = refuse(json!({"input": "x", "previous_response_id": "resp_1"}), to);
        assert_eq!(
            (e.kind, e.param),
            (ErrorKind::InvalidRequest, Some("previous_response_id"))
        );
        assert!(e.message.contains(to.name()), "{}", e.message);
        assert_eq!(
            refuse(json!({"input": "x", "store": true}), to).param,
            Some("store")
        );
        assert_eq!(
            refuse(json!({"input": "x", "background": true}), to).param,
            Some("background")
        );
        let e = refuse(
            json!({"input": "x", "tools": [{"type": "file_search"}]}),
            to,
        );
        assert_eq!(e.param, Some("tools"));
        assert!(e.message.contains("file_search"));
    }
    // `store: false` and nulls ask for nothing.
    let ok = br#"{"input":"x","store":false,"previous_response_id":null}"#;
    assert!(translate_request(
        Inbound::OpenAiResponses,
        Dialect::Anthropic,
        ok,
        &RequestOptions::new("m")
    )
    .is_ok());
}

#[test]
fn a_client_type_is_echoed_bounded() {
    let long = "t".repeat(10_000);
    let e = refuse(json!({"input": [{"type": long}]}), Dialect::Anthropic);
    assert!(e.message.len() < 1_000, "{}", e.message.len());
}

#[test]
fn stream_error_event_follows_the_sequence() {
    let ctx = super::super::ResponseContext {
        model: "m",
        id: "resp_1",
        created: 1,
        include_usage: true,
    };
    let mut t = StreamTranslator::new(Dialect::OpenAi, Inbound::OpenAiResponses, ctx);
    let mut out = Vec::new();
    t.handle_bytes(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n",
        &mut out,
    );
    let err = GatewayError::new(ErrorKind::UpstreamTimeout, "timed out");
    t.error_event(&err, &mut out);
    let text = String::from_utf8(out).unwrap_or_default();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or("");
    assert!(last.starts_with("event: error\n"), "{last}");
    let data: Value =
        serde_json::from_str(last.trim_start_matches("event: error\ndata: ")).unwrap();
    assert_eq!(data["type"], "error");
    // created, in_progress, item added, part added, delta: the error is the sixth event.
    assert_eq!(data["sequence_number"], 5);
    assert!(!t.upstream_complete());
}
