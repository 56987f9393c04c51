//! Google Vertex AI: Gemini and Anthropic models behind one Google Cloud endpoint.
//!
//! The bodies are the existing dialects' (`gemini`, `anthropic`); only the path and, for
//! Anthropic, two body fields differ:
//!
//! | publisher | path after `…/v1/projects/{p}/locations/{r}` | body |
//! | --- | --- | --- |
//! | `google` | `/publishers/google/models/{m}:generateContent`, `:streamGenerateContent?alt=sse` | Gemini's |
//! | `anthropic` | `/publishers/anthropic/models/{m}:rawPredict`, `:streamRawPredict` | Messages, without `model`, with `anthropic_version` |
//!
//! Answers and streams are the publisher's own shapes, so [`Dialect::wire`] hands them to
//! the Gemini and Anthropic translators. Authentication is an OAuth access token
//! (`Authorization: Bearer`) the proxy mints from a service-account key off the data plane.

use serde_json::Value;

use crate::error::GatewayError;

use super::{parse_object, percent_encode, to_vec, translate_request, Dialect, Inbound};
use super::{RequestOptions, Translated};

/// `anthropic_version` in the body of an Anthropic model on Vertex AI.
pub const ANTHROPIC_VERTEX_VERSION: &str = "vertex-2023-10-16";

/// Who publishes a Vertex AI model, which decides its API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Publisher {
    /// Gemini models (`publishers/google`).
    Google,
    /// Claude models (`publishers/anthropic`).
    Anthropic,
}

impl Publisher {
    /// The publisher a config `publisher` names: `google` or `anthropic`.
    pub fn from_name(name: &str) -> Option<Publisher> {
        match name {
            "google" => Some(Publisher::Google),
            "anthropic" => Some(Publisher::Anthropic),
            _ => None,
        }
    }

    /// The config name of this publisher.
    pub fn name(self) -> &'static str {
        match self {
            Publisher::Google => "google",
            Publisher::Anthropic => "anthropic",
        }
    }

    /// The publisher of `model` when the deployment names none: `claude-*` is Anthropic's,
    /// everything else Google's.
    pub fn for_model(model: &str, explicit: Option<Publisher>) -> Publisher {
        explicit.unwrap_or(if model.starts_with("claude") {
            Publisher::Anthropic
        } else {
            Publisher::Google
        })
    }
}

impl Dialect {
    /// The dialect whose bodies this one sends and receives: a Vertex AI publisher's own
    /// (`gemini` or `anthropic`), else itself.
    pub fn wire(self) -> Dialect {
        match self {
            Dialect::Vertex(Publisher::Google) => Dialect::Gemini,
            Dialect::Vertex(Publisher::Anthropic) => Dialect::Anthropic,
            other => other,
        }
    }

    /// The dialect of one request to a provider of this kind for `model`: a `vertex`
    /// provider's publisher is chosen per model (`explicit`, the deployment's `publisher`,
    /// first); every other kind is itself.
    pub fn for_model(self, model: &str, explicit: Option<Publisher>) -> Dialect {
        match self {
            Dialect::Vertex(_) => Dialect::Vertex(Publisher::for_model(model, explicit)),
            other => other,
        }
    }
}

/// Translates for the publisher's dialect, then moves the request to its Vertex AI path.
pub(crate) fn request(
    from: Inbound,
    publisher: Publisher,
    body: &[u8],
    opts: &RequestOptions<'_>,
) -> Result<Translated, GatewayError> {
    let mut t = translate_request(from, Dialect::Vertex(publisher).wire(), body, opts)?;
    match publisher {
        // Gemini's path is `/models/{m}:…`; Vertex AI puts the publisher in front.
        Publisher::Google => t.path.insert_str(0, "/publishers/google"),
        Publisher::Anthropic => {
            let mut body = parse_object(&t.body)?;
            body.remove("model");
            body.insert(
                "anthropic_version".into(),
                Value::from(ANTHROPIC_VERTEX_VERSION),
            );
            t.body = to_vec(&Value::Object(body));
            t.path = format!(
                "/publishers/anthropic/models/{}:{}",
                // Versioned model ids (`claude-sonnet-4@20250514`) keep their `@`.
                percent_encode(opts.upstream_model, false).replace("%40", "@"),
                if t.stream {
                    "streamRawPredict"
                } else {
                    "rawPredict"
                }
            );
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_publisher_follows_the_model_name_unless_set() {
        assert_eq!(
            Publisher::for_model("claude-sonnet-4@20250514", None),
            Publisher::Anthropic
        );
        assert_eq!(
            Publisher::for_model("gemini-2.0-flash", None),
            Publisher::Google
        );
        assert_eq!(
            Publisher::for_model("my-tuned-model", Some(Publisher::Anthropic)),
            Publisher::Anthropic
        );
        let kind = Dialect::from_name("vertex").unwrap();
        assert_eq!(
            kind.for_model("claude-x", None),
            Dialect::Vertex(Publisher::Anthropic)
        );
        assert_eq!(kind.for_model("claude-x", None).wire(), Dialect::Anthropic);
        assert_eq!(Dialect::Gemini.for_model("claude-x", None), Dialect::Gemini);
    }

    #[test]
    fn anthropic_bodies_lose_model_and_gain_the_vertex_version() {
        let body = br#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let t = request(
            Inbound::AnthropicMessages,
            Publisher::Anthropic,
            body,
            &RequestOptions::new("claude-sonnet-4@20250514"),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERTEX_VERSION);
        assert_eq!(
            t.path,
            "/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"
        );
    }
}
