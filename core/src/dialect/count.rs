//! A local estimate of a Messages request's input tokens, for `POST /v1/messages/count_tokens`
//! when the model is not served by an Anthropic deployment (which counts exactly). The
//! estimate is the text's characters over four plus a small overhead per message and tool —
//! the rule of thumb OpenAI and Anthropic both document — and is marked as an estimate.

use serde_json::Value;

use super::{invalid, parse_object};
use crate::error::GatewayError;

/// Tokens added per message and per tool for their framing.
const PER_ITEM: u64 = 4;

/// Estimates the input tokens of an Anthropic Messages request body (`system`, `messages`,
/// `tools`). A body that is not an object, or has no `messages` array, is a 400.
pub fn estimate_input_tokens(body: &[u8]) -> Result<u64, GatewayError> {
    let req = parse_object(body)?;
    let Some(Value::Array(messages)) = req.get("messages") else {
        return Err(invalid("you must provide a `messages` array").with_param("messages"));
    };
    let mut chars = 0u64;
    let mut items = messages.len() as u64;
    for key in ["system", "messages", "tools", "tool_choice"] {
        if let Some(v) = req.get(key) {
            chars += text_chars(v);
        }
    }
    if let Some(Value::Array(tools)) = req.get("tools") {
        items += tools.len() as u64;
    }
    Ok(chars.div_ceil(4) + items * PER_ITEM)
}

/// Characters of every string in `v` (keys of schemas included: they are sent as text).
fn text_chars(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.chars().count() as u64,
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match k.as_str() {
                // Images and documents are not text; the type tags are framing.
                "data" | "source" | "type" | "cache_control" => 0,
                _ => k.chars().count() as u64 / 2 + text_chars(v),
            })
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_the_text_and_refuses_bad_bodies() {
        let short = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let long = format!(
            r#"{{"model":"m","system":"{}","messages":[{{"role":"user","content":[{{"type":"text","text":"{}"}}]}}]}}"#,
            "s".repeat(400),
            "t".repeat(400)
        );
        let a = estimate_input_tokens(short).unwrap();
        let b = estimate_input_tokens(long.as_bytes()).unwrap();
        assert!(a >= 1 && (200..260).contains(&b), "{a} {b}");
        assert_eq!(estimate_input_tokens(b"[]").unwrap_err().status(), 400);
        let e = estimate_input_tokens(br#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.param, Some("messages"));
    }
}
