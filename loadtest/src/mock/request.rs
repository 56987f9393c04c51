//! What a request asks for: its endpoint and the body fields the mock reads.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
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
            "/mock/stats" => ("GET", Endpoint::Stats),
            "/mock/reset" => ("POST", Endpoint::Reset),
            _ => return Endpoint::NotFound,
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
}

impl Exchange {
    pub(crate) fn read(head: &Head<'_, '_>, body: &[u8]) -> Exchange {
        let endpoint = Endpoint::route(head.method, head.path);
        let body = if endpoint.has_json_body() {
            parse_body(body)
        } else if endpoint == Endpoint::AudioTranscriptions {
            form_model(body).map(|model| BodyFields {
                model,
                stream: false,
                include_usage: false,
                inputs: None,
                prompt_tokens: (body.len() as u64 / 4).max(1),
            })
        } else {
            Ok(BodyFields {
                model: DEFAULT_MODEL.to_owned(),
                stream: false,
                include_usage: false,
                inputs: None,
                prompt_tokens: 1,
            })
        };
        Exchange { endpoint, body }
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

/// Counts embeddings inputs without keeping them.
struct InputCount(usize);

impl<'de> Deserialize<'de> for InputCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Count;
        impl<'de> Visitor<'de> for Count {
            type Value = InputCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<InputCount, E> {
                Ok(InputCount(1))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(InputCount(n))
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
        inputs: raw.input.map(|n| n.0),
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
