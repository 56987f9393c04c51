//! What a request asks for: its endpoint and the body fields the mock reads.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::http::Head;
use super::stats::{RecordedRequest, MAX_RECORDED_BODY};

/// The model echoed when a request names none.
pub(crate) const DEFAULT_MODEL: &str = "mock-model";

/// The endpoints the mock serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Models,
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    Moderations,
    ImagesGenerations,
    /// `multipart/form-data`, `model` a form field.
    AudioTranscriptions,
    /// Answers binary audio.
    AudioSpeech,
    /// Gemini `POST /v1beta/models/{model}:generateContent`.
    GeminiGenerate,
    /// Gemini `POST /v1beta/models/{model}:streamGenerateContent` (`alt=sse`).
    GeminiStream,
    /// Vertex AI's OAuth `POST /token` (see `vertex`).
    VertexToken,
    /// Bedrock `POST /model/{modelId}/converse`.
    BedrockConverse,
    /// Bedrock `POST /model/{modelId}/converse-stream` (binary event stream).
    BedrockStream,
    /// `GET /mock/stats`.
    Stats,
    /// `POST /mock/reset`.
    Reset,
    /// A known path with another method.
    MethodNotAllowed,
    NotFound,
}

impl Endpoint {
    /// Routes on method and path (the query string is ignored).
    pub(crate) fn route(method: &str, target: &str) -> Endpoint {
        let path = target.split('?').next().unwrap_or(target);
        let (expected, endpoint) = match path {
            "/v1/chat/completions" => ("POST", Endpoint::ChatCompletions),
            "/v1/completions" => ("POST", Endpoint::Completions),
            "/v1/embeddings" => ("POST", Endpoint::Embeddings),
            "/v1/responses" => ("POST", Endpoint::Responses),
            "/v1/messages" => ("POST", Endpoint::Messages),
            "/v1/models" => ("GET", Endpoint::Models),
            "/v1/messages/count_tokens" => ("POST", Endpoint::CountTokens),
            "/v1/moderations" => ("POST", Endpoint::Moderations),
            "/v1/images/generations" => ("POST", Endpoint::ImagesGenerations),
            "/v1/audio/transcriptions" => ("POST", Endpoint::AudioTranscriptions),
            "/v1/audio/speech" => ("POST", Endpoint::AudioSpeech),
            // Azure OpenAI's moderations are not a deployment operation.
            "/openai/moderations" => ("POST", Endpoint::Moderations),
            "/mock/stats" => ("GET", Endpoint::Stats),
            "/mock/reset" => ("POST", Endpoint::Reset),
            p => match (azure_deployment(p), gemini_model(p)) {
                (Some((_, "chat/completions")), _) => ("POST", Endpoint::ChatCompletions),
                (Some((_, "embeddings")), _) => ("POST", Endpoint::Embeddings),
                (Some((_, "images/generations")), _) => ("POST", Endpoint::ImagesGenerations),
                (Some((_, "audio/transcriptions")), _) => ("POST", Endpoint::AudioTranscriptions),
                (Some((_, "audio/speech")), _) => ("POST", Endpoint::AudioSpeech),
                (_, Some((_, false))) => ("POST", Endpoint::GeminiGenerate),
                (_, Some((_, true))) => ("POST", Endpoint::GeminiStream),
                _ => match super::bedrock::bedrock_model(p) {
                    Some((_, false)) => ("POST", Endpoint::BedrockConverse),
                    Some((_, true)) => ("POST", Endpoint::BedrockStream),
                    None => match super::vertex::route(p) {
                        Some(endpoint) => ("POST", endpoint),
                        None => return Endpoint::NotFound,
                    },
                },
            },
        };
        if method == expected {
            endpoint
        } else {
            Endpoint::MethodNotAllowed
        }
    }

    /// Mock control endpoints: not counted, not recorded, no behaviour.
    pub(crate) fn is_control(self) -> bool {
        matches!(self, Endpoint::Stats | Endpoint::Reset)
    }

    /// Endpoints that take a JSON body.
    fn has_json_body(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::Responses
                | Endpoint::Messages
                | Endpoint::CountTokens
                | Endpoint::Moderations
                | Endpoint::ImagesGenerations
                | Endpoint::AudioSpeech
                | Endpoint::GeminiGenerate
                | Endpoint::GeminiStream
                | Endpoint::BedrockConverse
                | Endpoint::BedrockStream
        )
    }
}

/// The body fields that shape an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BodyFields {
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Embeddings inputs (1 for a string, the length of an array).
    pub(crate) inputs: Option<usize>,
    /// Embeddings inputs' texts (token arrays as their numbers), each cut at 8 KiB.
    pub(crate) texts: Vec<String>,
    /// `max(1, body bytes / 4)`.
    pub(crate) prompt_tokens: u64,
}

/// A request reduced to what the answer depends on; owns its data, so the
/// receive buffer is free again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exchange {
    pub(crate) endpoint: Endpoint,
    /// `Err(message)` when the JSON body is malformed.
    pub(crate) body: Result<BodyFields, String>,
    /// A provider's own refusal (status, message): an Azure path without `api-version` or
    /// `api-key`, a Gemini call without `x-goog-api-key`.
    pub(crate) refusal: Option<(u16, String)>,
    /// The token endpoint's answer (status, JSON), for `POST /token`.
    pub(crate) token: Option<(u16, String)>,
}

/// `(deployment, operation)` of an Azure OpenAI path
/// `/openai/deployments/{deployment}/{operation}`.
pub(crate) fn azure_deployment(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, op) = rest.split_once('/')?;
    (!deployment.is_empty()).then_some((deployment, op))
}

/// `(model, streaming)` of a Gemini path `/{version}/models/{model}:generateContent` or
/// `…:streamGenerateContent`.
pub(crate) fn gemini_model(path: &str) -> Option<(&str, bool)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    match method {
        "generateContent" => Some((model, false)),
        "streamGenerateContent" => Some((model, true)),
        _ => None,
    }
}

fn has_header(head: &Head<'_, '_>, name: &str) -> bool {
    head.headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case(name) && !h.value.is_empty())
}

/// The refusal a real provider would answer for a request missing its credentials or
/// `api-version` (the mock checks presence only).
fn provider_refusal(head: &Head<'_, '_>) -> Option<(u16, String)> {
    let (path, query) = head.path.split_once('?').unwrap_or((head.path, ""));
    if azure_deployment(path).is_some() || path == "/openai/moderations" {
        if !query
            .split('&')
            .any(|kv| kv.starts_with("api-version=") && kv.len() > 12)
        {
            return Some((
                404,
                "mock azure: missing api-version query parameter".into(),
            ));
        }
        if !has_header(head, "api-key") && !has_header(head, "authorization") {
            return Some((401, "mock azure: missing api-key header".into()));
        }
    }
    if gemini_model(path).is_some() && !has_header(head, "x-goog-api-key") {
        return Some((403, "mock gemini: missing x-goog-api-key header".into()));
    }
    None
}

impl Exchange {
    pub(crate) fn read(head: &Head<'_, '_>, body: &[u8]) -> Exchange {
        let raw = body;
        let endpoint = Endpoint::route(head.method, head.path);
        let path = head.path.split('?').next().unwrap_or(head.path);
        let refusal = provider_refusal(head).or_else(|| {
            super::bedrock::bedrock_model(path).and_then(|_| super::bedrock::refusal(head, body))
        });
        let body = if endpoint.has_json_body() {
            let mut fields = parse_body(body);
            // Gemini and Azure name the model in the path; Azure bodies may name it too.
            if let Ok(f) = fields.as_mut() {
                if let Some((model, _)) = gemini_model(path) {
                    f.model = model.to_owned();
                    f.stream = endpoint == Endpoint::GeminiStream;
                } else if let Some(m) = super::vertex::model_path(path) {
                    f.model = m.model.to_owned();
                    f.stream = m.stream;
                } else if let Some((model, stream)) = super::bedrock::bedrock_model(path) {
                    f.model = model;
                    f.stream = stream;
                } else if let Some((deployment, _)) = azure_deployment(path) {
                    if f.model == DEFAULT_MODEL {
                        f.model = deployment.to_owned();
                    }
                }
            }
            fields
        } else if endpoint == Endpoint::AudioTranscriptions {
            form_model(body).map(|model| BodyFields {
                model,
                stream: false,
                include_usage: false,
                inputs: None,
                texts: Vec::new(),
                prompt_tokens: (body.len() as u64 / 4).max(1),
            })
        } else {
            Ok(BodyFields {
                model: DEFAULT_MODEL.to_owned(),
                stream: false,
                include_usage: false,
                inputs: None,
                texts: Vec::new(),
                prompt_tokens: 1,
            })
        };
        Exchange {
            endpoint,
            body,
            refusal: refusal.or_else(|| super::vertex::refusal(head, raw)),
            token: (endpoint == Endpoint::VertexToken)
                .then(|| super::vertex::token_answer(head, raw)),
        }
    }
}

#[derive(Deserialize)]
struct RawBody<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<RawStreamOptions>,
    #[serde(default)]
    input: Option<InputCount>,
}

#[derive(Deserialize)]
struct RawStreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Embeddings inputs: how many, and (the first [`MAX_TEXTS`]) their texts, for the vectors.
struct InputCount(usize, Vec<String>);

/// Inputs whose texts are kept (the rest are counted and get the empty text's vector).
const MAX_TEXTS: usize = 2048;
/// Bytes of each kept text.
const MAX_TEXT_BYTES: usize = 8192;

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl<'de> Deserialize<'de> for InputCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = InputCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<InputCount, E> {
                Ok(InputCount(1, vec![cut(s)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputCount, A::Error> {
                let mut n = 0;
                let mut texts = Vec::new();
                while let Some(v) = seq.next_element::<serde_json::Value>()? {
                    n += 1;
                    if texts.len() < MAX_TEXTS {
                        texts.push(match v {
                            serde_json::Value::String(s) => cut(&s),
                            other => cut(&other.to_string()),
                        });
                    }
                }
                Ok(InputCount(n, texts))
            }
        }
        deserializer.deserialize_any(Count)
    }
}

fn parse_body(body: &[u8]) -> Result<BodyFields, String> {
    let raw: RawBody<'_> =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    Ok(BodyFields {
        model: raw.model.as_deref().unwrap_or(DEFAULT_MODEL).to_owned(),
        stream: raw.stream.unwrap_or(false),
        include_usage: raw
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        inputs: raw.input.as_ref().map(|n| n.0),
        texts: raw.input.map(|n| n.1).unwrap_or_default(),
        prompt_tokens: (body.len() as u64 / 4).max(1),
    })
}

/// The `model` field of a `multipart/form-data` body (a plain scan: the mock trusts the
/// gateway's framing, which the gateway's own tests check).
fn form_model(body: &[u8]) -> Result<String, String> {
    let at = memchr::memmem::find(body, b"name=\"model\"")
        .ok_or_else(|| "mock: the form has no `model` field".to_owned())?;
    let rest = &body[at..];
    let start = memchr::memmem::find(rest, b"\r\n\r\n")
        .ok_or_else(|| "mock: the `model` part has no body".to_owned())?
        + 4;
    let end = memchr::memmem::find(&rest[start..], b"\r\n")
        .ok_or_else(|| "mock: the `model` part is not terminated".to_owned())?;
    Ok(String::from_utf8_lossy(&rest[start..start + end]).into_owned())
}

/// Copies a request for [`MockServer::last_request`](super::MockServer::last_request).
pub(crate) fn record(head: &Head<'_, '_>, body: &[u8]) -> RecordedRequest {
    RecordedRequest {
        method: head.method.to_owned(),
        path: head.path.to_owned(),
        headers: head
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: if body.len() < MAX_RECORDED_BODY {
            String::from_utf8_lossy(body).into_owned()
        } else {
            String::new()
        },
        body_len: body.len(),
        body_fnv: if body.len() < MAX_RECORDED_BODY {
            0
        } else {
            super::stats::fnv1a(body)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Endpoint::route("POST", "/v1/chat/completions?x=1"),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Endpoint::route("GET", "/v1/chat/completions"),
            Endpoint::MethodNotAllowed
        );
        assert_eq!(Endpoint::route("GET", "/nope"), Endpoint::NotFound);
        assert_eq!(
            Endpoint::route("POST", "/v1/audio/speech"),
            Endpoint::AudioSpeech
        );
        let form = b"--b\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
        assert_eq!(form_model(form).unwrap(), "whisper-1");
        assert!(form_model(b"--b--").is_err());
        assert_eq!(
            Endpoint::route(
                "POST",
                "/openai/deployments/d1/chat/completions?api-version=1"
            ),
            Endpoint::ChatCompletions
        );
        assert_eq!(
            Endpoint::route(
                "POST",
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
            ),
            Endpoint::GeminiStream
        );
        assert_eq!(
            gemini_model("/v1beta/models/a:generateContent"),
            Some(("a", false))
        );
        assert_eq!(
            Endpoint::route("POST", "/v1beta/models/a:embed"),
            Endpoint::NotFound
        );
    }

    #[test]
    fn body_fields() {
        let body = br#"{"model":"a\"b","stream":true,"stream_options":{"include_usage":true},"input":["x","y",[1,2]],"messages":[{"content":"hi"}]}"#;
        let fields = parse_body(body).unwrap();
        assert_eq!(fields.model, "a\"b");
        assert!(fields.stream && fields.include_usage);
        assert_eq!(fields.inputs, Some(3));
        assert_eq!(fields.prompt_tokens, body.len() as u64 / 4);
        assert_eq!(parse_body(br#"{"input":"one"}"#).unwrap().inputs, Some(1));
        assert_eq!(parse_body(b"{}").unwrap().model, DEFAULT_MODEL);
        assert!(parse_body(b"{\"model\":").is_err());
        assert!(parse_body(b"").is_err());
        assert!(parse_body(br#"{"stream":"yes"}"#).is_err());
    }
}
