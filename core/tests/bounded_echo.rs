//! Error answers quote at most a bounded prefix (`request::MAX_ECHO` bytes) of anything the
//! client sent, however large it is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use sluice_core::dialect::{translate_request, Dialect, Inbound, RequestOptions};
use sluice_core::error::MAX_ECHO;
use sluice_core::inspect::inspect;

/// The error, without printing a megabyte when there is none.
fn refused(
    r: Result<sluice_core::dialect::Translated, sluice_core::error::GatewayError>,
) -> sluice_core::error::GatewayError {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    }
}

fn huge() -> String {
    "Q".repeat(1 << 20)
}

fn assert_bounded(err: &sluice_core::error::GatewayError) {
    assert!(
        err.message.len() <= MAX_ECHO + 200,
        "{} bytes: {}…",
        err.message.len(),
        &err.message[..200.min(err.message.len())]
    );
    assert!(err.to_json().len() < 1024);
}

#[test]
fn a_wrongly_typed_field_is_not_quoted_whole() {
    let body = json!({"model": "m", "stream": huge(), "messages": []}).to_string();
    assert_bounded(&inspect(body.as_bytes()).unwrap_err());
}

#[test]
fn an_unsupported_role_is_not_quoted_whole() {
    let opts = RequestOptions::new("up");
    let body = json!({"model": "m", "messages": [{"role": huge(), "content": "hi"}]}).to_string();
    for to in [Dialect::Anthropic, Dialect::Gemini] {
        let err = refused(translate_request(
            Inbound::OpenAiChat,
            to,
            body.as_bytes(),
            &opts,
        ));
        assert_bounded(&err);
    }
    let body = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": huge(), "content": [{"type": "text", "text": "hi"}]}
    ]})
    .to_string();
    let err = refused(translate_request(
        Inbound::AnthropicMessages,
        Dialect::OpenAi,
        body.as_bytes(),
        &opts,
    ));
    assert_bounded(&err);
}

#[test]
fn an_unsupported_n_is_not_quoted_whole() {
    let opts = RequestOptions::new("up");
    let body = json!({"model": "m", "n": huge(), "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    for to in [Dialect::Anthropic, Dialect::Gemini] {
        let err = refused(translate_request(
            Inbound::OpenAiChat,
            to,
            body.as_bytes(),
            &opts,
        ));
        assert_bounded(&err);
    }
}

#[test]
fn dropped_field_notes_are_bounded() {
    let opts = RequestOptions::new("up");
    let body = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": huge()}, {"type": "text", "text": "hi"}
    ]}]})
    .to_string();
    let t = translate_request(
        Inbound::OpenAiChat,
        Dialect::Anthropic,
        body.as_bytes(),
        &opts,
    )
    .unwrap();
    assert!(!t.dropped_fields.is_empty());
    assert!(
        t.dropped_fields.iter().all(|d| d.len() <= MAX_ECHO + 8),
        "{:?}",
        t.dropped_fields.iter().map(String::len).collect::<Vec<_>>()
    );
}
