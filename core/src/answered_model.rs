//! The model an upstream says answered (`gen_ai.response.model`): often a dated version of the
//! alias the deployment asked for (`gpt-4o` answered by `gpt-4o-2024-08-06`).
//!
//! Read from a whole JSON body (OpenAI and Azure `model`, Anthropic `model`, Gemini
//! `modelVersion`; Bedrock reports none) or from a stream's first events (OpenAI chunks'
//! `model`, Anthropic `message_start.message.model`, Responses `response.created.response.model`,
//! Gemini chunks' `modelVersion`). The string is the upstream's, so it is untrusted: it is kept
//! only up to [`MAX_BYTES`] (cut on a character boundary).
//!
//! A stream is only looked at until the model is found or for its first
//! [`EVENTS_LOOKED_AT`] data events, so the relay's per-chunk cost after that is one branch.

use std::borrow::Cow;

use serde::Deserialize;

/// Longest answered model kept, in bytes.
pub const MAX_BYTES: usize = 256;

/// Data events of a stream read for the model before giving up.
pub const EVENTS_LOOKED_AT: u8 = 4;

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "modelVersion")]
    model_version: Option<Cow<'a, str>>,
    /// Anthropic's `message_start`.
    #[serde(borrow, default)]
    message: Option<Inner<'a>>,
    /// The Responses API's `response.created`.
    #[serde(borrow, default)]
    response: Option<Inner<'a>>,
}

#[derive(Deserialize)]
struct Inner<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The model a JSON document (a whole body or one event's data) names, bounded.
pub fn from_json(json: &[u8]) -> Option<String> {
    // Built once: most chunks are checked for the key before any parse.
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"model"));
    KEY.find(json)?;
    // A plain top-level `model` (every OpenAI chunk and answer) is read by the walk: no serde
    // pass, no `String` for serde's owned `Cow` before the bounded copy.
    if let Some(m) = top_level_model(json) {
        return bounded(m);
    }
    by_serde(json)
}

/// [`from_json`] by a serde parse of the whole document.
pub(crate) fn by_serde(json: &[u8]) -> Option<String> {
    let p: Probe<'_> = serde_json::from_slice(json).ok()?;
    let m = p
        .model
        .or(p.model_version)
        .or_else(|| p.message.and_then(|m| m.model))
        .or_else(|| p.response.and_then(|m| m.model))?;
    bounded(&m)
}

/// The top-level `model` of a JSON object as [`by_serde`] reads it, when the request body's
/// validating walk (`inspect::walk`, every skipped value checked) settles it: a string
/// without escapes or control bytes, no duplicate of the probe's keys (`model`,
/// `modelVersion`, `message`, `response`), no `message` or `response` other than `null`
/// (serde would read their inner `model`, or refuse them), `modelVersion` `null` or a
/// string. `None` leaves it to serde.
pub(crate) fn top_level_model(json: &[u8]) -> Option<&str> {
    use crate::inspect::walk;
    let [model, version, message, response] =
        walk::named(json, [b"model", b"modelVersion", b"message", b"response"])?;
    let null = walk::absent_or_null;
    if !null(message) || !null(response) {
        return None;
    }
    if !(null(version) || version?.first() == Some(&b'"')) {
        return None;
    }
    plain_string(model?)
}

/// A string value as written (`"..."`, the quotes included) when it has no escape and no
/// control byte, so its text is what serde reads; `None` otherwise.
pub(crate) fn plain_string(v: &[u8]) -> Option<&str> {
    let text = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if text.iter().any(|&b| b == b'\\' || b < 0x20) {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// `m` cut to [`MAX_BYTES`] on a character boundary; `None` when empty.
pub fn bounded(m: &str) -> Option<String> {
    if m.is_empty() {
        return None;
    }
    let mut end = m.len().min(MAX_BYTES);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    Some(m[..end].to_owned())
}

/// Watches a stream's first data events for the answered model.
#[derive(Debug, Clone, Default)]
pub struct ModelWatch {
    model: Option<String>,
    looked: u8,
}

impl ModelWatch {
    /// Reads one data event's payload, unless the model is known or enough events were read.
    #[inline]
    pub fn on_data(&mut self, data: &[u8]) {
        if self.model.is_some() || self.looked >= EVENTS_LOOKED_AT {
            return;
        }
        self.looked += 1;
        self.model = from_json(data);
    }

    /// The answered model, once seen.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The answered model, moved out (the watch then has none).
    pub fn take(&mut self) -> Option<String> {
        self.model.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_shape() {
        let openai =
            br#"{"id":"c","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[]}"#;
        assert_eq!(from_json(openai).as_deref(), Some("gpt-4o-2024-08-06"));
        let gemini = br#"{"candidates":[],"modelVersion":"gemini-2.0-flash-001"}"#;
        assert_eq!(from_json(gemini).as_deref(), Some("gemini-2.0-flash-001"));
        let start =
            br#"{"type":"message_start","message":{"id":"m","model":"claude-x-2025","usage":{}}}"#;
        assert_eq!(from_json(start).as_deref(), Some("claude-x-2025"));
        let created = br#"{"type":"response.created","response":{"model":"gpt-5-2025"}}"#;
        assert_eq!(from_json(created).as_deref(), Some("gpt-5-2025"));
        let escaped = br#"{"model":"a\"b\u00e9"}"#;
        assert_eq!(from_json(escaped).as_deref(), Some("a\"bé"));
    }

    #[test]
    fn absent_empty_or_not_json() {
        assert_eq!(from_json(br#"{"output":{"message":{}}}"#), None);
        assert_eq!(from_json(br#"{"model":""}"#), None);
        assert_eq!(from_json(br#"{"model":null}"#), None);
        assert_eq!(from_json(b"\"model\" not json"), None);
        assert_eq!(
            from_json(br#"{"choices":[{"delta":{"content":"x"}}]}"#),
            None
        );
    }

    #[test]
    fn bounded_on_a_char_boundary() {
        let long = format!(r#"{{"model":"{}"}}"#, "é".repeat(200));
        let m = from_json(long.as_bytes()).unwrap();
        assert!(
            m.len() <= MAX_BYTES && m.len() >= MAX_BYTES - 1,
            "{}",
            m.len()
        );
        assert!(m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn watch_stops_after_found_or_a_few_events() {
        let mut w = ModelWatch::default();
        w.on_data(br#"{"choices":[]}"#);
        w.on_data(br#"{"model":"first"}"#);
        w.on_data(br#"{"model":"second"}"#);
        assert_eq!(w.model(), Some("first"));
        let mut late = ModelWatch::default();
        for _ in 0..EVENTS_LOOKED_AT {
            late.on_data(b"{}");
        }
        late.on_data(br#"{"model":"too late"}"#);
        assert_eq!(late.model(), None);
    }
}
