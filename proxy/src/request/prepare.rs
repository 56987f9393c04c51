//! Bodies of the endpoints beyond chat, made ready for inspection before the stages run:
//!
//! - `POST /v1/audio/transcriptions` is `multipart/form-data`: its `model` is a form field.
//!   The field is found in what was read (the whole body, or, for a large one, the body up
//!   to the end of its `model` part: the rest is streamed later, see `request::upload`),
//!   inspection reads a small JSON probe `{"model": …}`, and each attempt splices the
//!   deployment's model name into the form (see `plan::build_request`).
//! - `POST /v1/moderations` and `POST /v1/images/generations` may omit `model`: OpenAI's
//!   default (`omni-moderation-latest`, `dall-e-2`) is written into the body, so routing
//!   and the ledger see the model that answers.
//! - `POST /v1/messages/count_tokens` is answered here when no Anthropic deployment can count
//!   exactly (`count_tokens_locally`).

use sluice_core::config::Config;
use sluice_core::dialect::Dialect;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::RequestHead;
use sluice_core::multipart::{self, Form};

use crate::request::plan::ApiEndpoint;

/// A body ready for inspection.
pub struct Prepared {
    /// The body to forward.
    pub body: Vec<u8>,
    /// What inspection reads instead of the body (a multipart body's `{"model": …}`).
    pub probe: Option<Vec<u8>>,
    /// The form, for a multipart body.
    pub form: Option<Form>,
}

/// The model OpenAI answers with when the client names none, for endpoints where `model` is
/// optional.
fn default_model(endpoint: ApiEndpoint) -> Option<&'static str> {
    match endpoint {
        ApiEndpoint::Moderations => Some("omni-moderation-latest"),
        ApiEndpoint::ImagesGenerations => Some("dall-e-2"),
        _ => None,
    }
}

/// Prepares `body` of a request to `endpoint` (see the module docs). A multipart body without
/// a `model` field, or one that is not framed by its boundary, is a 400.
pub fn prepare(
    endpoint: ApiEndpoint,
    head: &RequestHead,
    body: Vec<u8>,
) -> Result<Prepared, GatewayError> {
    if endpoint == ApiEndpoint::AudioTranscriptions {
        let content_type = head.header_str("content-type");
        let boundary = multipart::boundary(content_type)?;
        let field = multipart::find_field(&body, boundary, "model")?.ok_or_else(|| {
            GatewayError::new(
                ErrorKind::InvalidRequest,
                "you must provide a `model` form field",
            )
            .with_param("model")
        })?;
        let model = field.text.filter(|m| !m.is_empty()).ok_or_else(|| {
            GatewayError::new(
                ErrorKind::InvalidRequest,
                "the `model` form field must be a model name",
            )
            .with_param("model")
        })?;
        let probe = serde_json::to_vec(&serde_json::json!({ "model": model })).unwrap_or_default();
        return Ok(Prepared {
            form: Some(Form {
                content_type: content_type.unwrap_or_default().to_owned(),
                model: field.value,
            }),
            body,
            probe: Some(probe),
        });
    }
    let body = match default_model(endpoint) {
        Some(model) => with_default_model(body, model),
        None => body,
    };
    Ok(Prepared {
        body,
        probe: None,
        form: None,
    })
}

/// `body` with `"model": model` added when it is a JSON object without a `model` key; any
/// other body is returned as it came (inspection then answers its 400).
fn with_default_model(body: Vec<u8>, model: &str) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        model: Option<&'a serde_json::value::RawValue>,
    }
    let missing = matches!(
        serde_json::from_slice::<Probe<'_>>(&body),
        Ok(Probe { model: None })
    );
    let Some(open) = body.iter().position(|b| *b == b'{').filter(|_| missing) else {
        return body;
    };
    let empty = body[open + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_none_or(|b| *b == b'}');
    let mut out = Vec::with_capacity(body.len() + model.len() + 12);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(b"\"model\":");
    out.extend_from_slice(&serde_json::to_vec(model).unwrap_or_default());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&body[open + 1..]);
    out
}

/// Whether `count_tokens` for model group `group` is answered by the gateway's estimate: yes
/// unless every deployment of the group is an Anthropic one (which counts exactly).
pub fn count_tokens_locally(cfg: &Config, group: usize) -> bool {
    let Some(g) = cfg.models.get(group) else {
        return true;
    };
    !g.deployments.iter().all(|d| {
        cfg.providers
            .get(d.provider)
            .is_some_and(|p| p.kind == Dialect::Anthropic)
    })
}

/// The body of a local `count_tokens` answer.
pub fn count_tokens_body(body: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let tokens = sluice_core::dialect::estimate_input_tokens(body)?;
    Ok(serde_json::to_vec(&serde_json::json!({ "input_tokens": tokens })).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_models_are_written_in() {
        let v = |b: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        let out = with_default_model(br#" {"input":"hi"}"#.to_vec(), "omni-moderation-latest");
        assert_eq!(v(out)["model"], "omni-moderation-latest");
        assert_eq!(v(with_default_model(b"{ }".to_vec(), "m"))["model"], "m");
        let kept = br#"{"model":"x","input":"hi"}"#.to_vec();
        assert_eq!(with_default_model(kept.clone(), "m"), kept);
        assert_eq!(with_default_model(b"[1]".to_vec(), "m"), b"[1]");
        assert_eq!(with_default_model(b"{bad".to_vec(), "m"), b"{bad");
    }
}
