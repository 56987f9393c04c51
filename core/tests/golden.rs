//! Golden fixtures for the dialect translators, snapshot style (as agentgateway's
//! `crates/llm/src/golden_tests.rs`).
//!
//! Layout: `tests/golden/<dir>/` where `<dir>` names a client API and an upstream dialect:
//!
//! | dir | client | upstream |
//! | --- | --- | --- |
//! | `anthropic`, `azure`, `bedrock`, `gemini`, `openai` | OpenAI chat | that dialect |
//! | `messages` | Anthropic Messages | OpenAI |
//! | `messages_bedrock` | Anthropic Messages | Bedrock |
//! | `messages_gemini` | Anthropic Messages | Gemini |
//! | `responses` | OpenAI Responses (stateless) | OpenAI chat completions |
//! | `responses_anthropic` | OpenAI Responses (stateless) | Anthropic |
//! | `vertex_google`, `vertex_anthropic` | OpenAI chat | Vertex AI, that publisher |
//! | `messages_vertex_anthropic` | Anthropic Messages | Vertex AI, Anthropic |
//!
//! In each dir:
//! - `<case>.request.json` (client body) → `<case>.<upstream>.snap`: path, stream flag, dropped
//!   fields and translated body, or the 400 it is refused with. An optional
//!   `<case>.extra.json` is passed as the provider extras.
//! - `<case>.response.json` (upstream body) → `<case>.<client>.snap`: status, client body and
//!   usage. The status is 200 unless the case is named `error_<status>…`.
//! - `<case>.response.sse` (upstream stream) → `<case>.<client>.snap`: the client stream,
//!   whether the upstream completed, and the usage. The stream is also fed one byte at a time
//!   and must translate the same. Cases named `…no_usage…` run without `include_usage`.
//! - `<case>.response.frames.json` (Bedrock's binary event stream, as a list of
//!   `{headers, payload}` frames, encoded here with their CRCs; `"corrupt": "message_crc"`
//!   spoils a frame's CRC, `"truncate"` cuts it short) → `<case>.<client>.snap`, as for SSE.
//!
//! JSON is compared key-order-insensitively; top-level `id`s and `created` are redacted.
//! `UPDATE_GOLDEN=1 cargo test -p sluice-core --test golden` rewrites the snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice_core::dialect::{
    translate_request, translate_response, Dialect, Inbound, Publisher, RequestOptions,
    ResponseContext, StreamTranslator,
};

const REDACTED: &str = "[redacted]";

fn pair(dir: &str) -> Option<(Inbound, Dialect)> {
    Some(match dir {
        "messages" => (Inbound::AnthropicMessages, Dialect::OpenAi),
        "messages_gemini" => (Inbound::AnthropicMessages, Dialect::Gemini),
        "messages_bedrock" => (Inbound::AnthropicMessages, Dialect::Bedrock),
        "responses" => (Inbound::OpenAiResponses, Dialect::OpenAi),
        "responses_anthropic" => (Inbound::OpenAiResponses, Dialect::Anthropic),
        "vertex_google" => (Inbound::OpenAiChat, Dialect::Vertex(Publisher::Google)),
        "vertex_anthropic" => (Inbound::OpenAiChat, Dialect::Vertex(Publisher::Anthropic)),
        "messages_vertex_anthropic" => (
            Inbound::AnthropicMessages,
            Dialect::Vertex(Publisher::Anthropic),
        ),
        other => (Inbound::OpenAiChat, Dialect::from_name(other)?),
    })
}

fn client_name(inbound: Inbound) -> &'static str {
    match inbound {
        Inbound::OpenAiChat => "openai",
        Inbound::AnthropicMessages => "anthropic",
        Inbound::OpenAiResponses => "responses",
    }
}

/// Rebuilds objects with sorted keys, whatever serde_json's map order is.
fn canon(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let mut m = serde_json::Map::new();
            for k in keys {
                m.insert(k.clone(), canon(&o[k]));
            }
            Value::Object(m)
        }
        Value::Array(a) => Value::Array(a.iter().map(canon).collect()),
        other => other.clone(),
    }
}

/// Redacts the generated id and timestamp of a response object or stream event.
fn redact(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for key in ["id", "created"] {
            if let Some(x) = o.get_mut(key) {
                *x = REDACTED.into();
            }
        }
        if let Some(Value::Object(m)) = o.get_mut("message") {
            if let Some(x) = m.get_mut("id") {
                *x = REDACTED.into();
            }
        }
    }
    canon(&v)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(&canon(v)).unwrap();
    s.push('\n');
    s
}

/// An SSE stream in snapshot form: each data line's JSON redacted and canonical.
fn normalize_sse(text: &str) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        match line
            .strip_prefix("data: ")
            .map(serde_json::from_str::<Value>)
        {
            Some(Ok(v)) => {
                out.push_str("data: ");
                out.push_str(&serde_json::to_string(&redact(v)).unwrap());
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Normalises a snapshot text for comparison: JSON documents canonical, SSE lines too.
fn normalize_snapshot(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => pretty(&v),
        Err(_) => normalize_sse(text),
    }
}

fn ctx_for(case: &str, inbound: Inbound) -> ResponseContext<'static> {
    ResponseContext {
        model: "client-model",
        id: match inbound {
            Inbound::OpenAiChat => "chatcmpl-golden01",
            Inbound::AnthropicMessages => "msg_golden01",
            Inbound::OpenAiResponses => "resp_golden01",
        },
        created: 1_700_000_000,
        include_usage: !case.contains("no_usage"),
    }
}

fn status_for(case: &str) -> u16 {
    case.strip_prefix("error_")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

fn run_request(dir: &Path, case: &str, inbound: Inbound, dialect: Dialect) -> String {
    let body = fs::read(dir.join(format!("{case}.request.json"))).unwrap();
    let extra: Option<serde_json::Map<String, Value>> =
        fs::read(dir.join(format!("{case}.extra.json")))
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap());
    let opts = RequestOptions {
        extra: extra.as_ref(),
        azure_deployment: (dialect == Dialect::Azure).then_some("prod-gpt4o"),
        ..RequestOptions::new("upstream-model")
    };
    let v = match translate_request(inbound, dialect, &body, &opts) {
        Ok(t) => {
            let body: Value = serde_json::from_slice(&t.body)
                .unwrap_or_else(|e| panic!("{case}: translated body is not JSON: {e}"));
            json!({
                "path": t.path,
                "stream": t.stream,
                "dropped_fields": t.dropped_fields,
                "body": body,
            })
        }
        Err(e) => json!({
            "error": {
                "status": e.status(),
                "param": e.param,
                "message": e.message,
            }
        }),
    };
    pretty(&v)
}

fn run_response(dir: &Path, case: &str, inbound: Inbound, dialect: Dialect) -> String {
    let body = fs::read(dir.join(format!("{case}.response.json"))).unwrap();
    let status = status_for(case);
    let (out, usage) = translate_response(dialect, inbound, status, &body, &ctx_for(case, inbound));
    let out: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("{case}: translated response is not JSON: {e}"));
    pretty(&json!({
        "status": status,
        "body": redact(out),
        "usage": usage,
    }))
}

fn translate_stream(
    input: &[u8],
    step: usize,
    case: &str,
    inbound: Inbound,
    dialect: Dialect,
) -> (Vec<u8>, StreamTranslator) {
    let mut t = StreamTranslator::new(dialect, inbound, ctx_for(case, inbound));
    let mut out = Vec::new();
    for chunk in input.chunks(step.max(1)) {
        t.handle_bytes(chunk, &mut out);
    }
    t.finish(&mut out);
    (out, t)
}

/// One AWS event-stream frame: prelude (lengths and their CRC32), string headers, payload,
/// message CRC32.
fn event_frame(headers: &serde_json::Map<String, Value>, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        let value = value.as_str().unwrap().as_bytes();
        h.push(u8::try_from(name.len()).unwrap());
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        h.extend_from_slice(value);
    }
    let total = u32::try_from(16 + h.len() + payload.len()).unwrap();
    let mut out = total.to_be_bytes().to_vec();
    out.extend_from_slice(&u32::try_from(h.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
    out
}

/// The binary stream a `.response.frames.json` describes.
fn encode_frames(path: &Path) -> Vec<u8> {
    let frames: Vec<Value> = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for f in frames {
        let payload = serde_json::to_vec(&f["payload"]).unwrap();
        let mut frame = event_frame(f["headers"].as_object().unwrap(), &payload);
        match f.get("corrupt").and_then(Value::as_str) {
            Some("message_crc") => *frame.last_mut().unwrap() ^= 0xff,
            Some("truncate") => frame.truncate(frame.len() / 2),
            _ => {}
        }
        out.extend(frame);
    }
    out
}

fn run_stream(dir: &Path, case: &str, inbound: Inbound, dialect: Dialect) -> String {
    let sse = dir.join(format!("{case}.response.sse"));
    let input = if sse.exists() {
        fs::read(sse).unwrap()
    } else {
        encode_frames(&dir.join(format!("{case}.response.frames.json")))
    };
    let (whole, t) = translate_stream(&input, input.len(), case, inbound, dialect);
    let (bytewise, t1) = translate_stream(&input, 1, case, inbound, dialect);
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&bytewise),
        "{case}: output depends on how the input is split"
    );
    assert_eq!(t.usage(), t1.usage(), "{case}: usage depends on the split");
    let header = json!({"upstream_complete": t.upstream_complete(), "usage": t.usage()});
    format!(
        ": {}\n{}",
        serde_json::to_string(&canon(&header)).unwrap(),
        normalize_sse(std::str::from_utf8(&whole).unwrap())
    )
}

#[test]
fn golden() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let (inbound, dialect) = pair(name).unwrap_or_else(|| panic!("unknown golden dir {name}"));
        let mut files: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        for file in &files {
            let (case, actual, snap) = if let Some(case) = file.strip_suffix(".request.json") {
                (
                    case,
                    run_request(dir, case, inbound, dialect),
                    dialect.name(),
                )
            } else if let Some(case) = file.strip_suffix(".response.json") {
                (
                    case,
                    run_response(dir, case, inbound, dialect),
                    client_name(inbound),
                )
            } else if let Some(case) = file
                .strip_suffix(".response.sse")
                .or_else(|| file.strip_suffix(".response.frames.json"))
            {
                (
                    case,
                    run_stream(dir, case, inbound, dialect),
                    client_name(inbound),
                )
            } else {
                continue;
            };
            checked += 1;
            let snap_path = dir.join(format!("{case}.{snap}.snap"));
            if update {
                fs::write(&snap_path, &actual).unwrap();
                continue;
            }
            match fs::read_to_string(&snap_path) {
                Ok(expected) if normalize_snapshot(&expected) == normalize_snapshot(&actual) => {}
                Ok(expected) => failures.push(format!(
                    "{name}/{file} differs from {}:\n--- expected\n{expected}\n+++ actual\n{actual}",
                    snap_path.display()
                )),
                Err(_) => failures.push(format!("{name}/{file}: missing {}", snap_path.display())),
            }
        }
    }
    assert!(checked > 0, "no golden fixtures under {}", root.display());
    assert!(
        failures.is_empty(),
        "{} golden mismatch(es); rerun with UPDATE_GOLDEN=1 to accept:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
