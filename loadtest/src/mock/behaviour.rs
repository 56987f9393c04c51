//! How to answer: config defaults, overridden per request by `x-mock-*`
//! headers, turned into a [`Plan`] the connection carries out.
//!
//! Precedence, first match wins: control endpoints, invalid `x-mock-*`
//! values (400), unknown path (404/405), malformed JSON (400), stall,
//! `x-mock-status`, fail rate, disconnect, normal answer.

use super::http::Head;
use super::request::{Endpoint, Exchange};
use super::shapes::Answer;
use super::stats::{Counter, Shared};
use super::stream::{Dialect, StreamSpec};
use super::MockConfig;

/// Most content chunks per answer; larger requests are clamped.
pub(crate) const MAX_CHUNKS: u32 = 100_000;
/// Most bytes per chunk; larger requests are clamped.
pub(crate) const MAX_CHUNK_SIZE: usize = 64 * 1024;
/// Most text bytes in one non-streaming answer: chunks are clamped to fit.
pub(crate) const MAX_BODY_TEXT: usize = 16 * 1024 * 1024;

/// Per-request overrides read from `x-mock-*` headers; `None` = use config.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    pub(crate) chunks: Option<u32>,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) ttft_ms: Option<u64>,
    pub(crate) chunk_delay_ms: Option<u64>,
    /// `x-mock-latency-ms`: ttft for non-streaming answers.
    pub(crate) latency_ms: Option<u64>,
    pub(crate) status: Option<u16>,
    pub(crate) fail_rate: Option<f64>,
    pub(crate) retry_after_s: Option<u64>,
    pub(crate) disconnect_after: Option<u32>,
    pub(crate) stall: bool,
    /// `x-mock-answer-model`: answer with this `model` instead of the requested one (as an
    /// upstream that resolves an alias to a dated version does).
    pub(crate) answer_model: Option<String>,
}

impl Overrides {
    /// Reads the `x-mock-*` headers. `Err` names the header whose value is
    /// invalid.
    pub(crate) fn from_head(head: &Head<'_, '_>) -> Result<Overrides, String> {
        let mut o = Overrides::default();
        for h in head.headers {
            let Some(name) = strip_prefix_ignore_case(h.name, "x-mock-") else {
                continue;
            };
            let value = std::str::from_utf8(h.value.trim_ascii()).unwrap_or("");
            let bad = || format!("invalid x-mock-{name} value {value:?}");
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "chunks" => o.chunks = Some(value.parse().map_err(|_| bad())?),
                "chunk-size" => o.chunk_size = Some(value.parse().map_err(|_| bad())?),
                "ttft-ms" => o.ttft_ms = Some(value.parse().map_err(|_| bad())?),
                "chunk-delay-ms" => o.chunk_delay_ms = Some(value.parse().map_err(|_| bad())?),
                "latency-ms" => o.latency_ms = Some(value.parse().map_err(|_| bad())?),
                "retry-after" => o.retry_after_s = Some(value.parse().map_err(|_| bad())?),
                "disconnect-after" => o.disconnect_after = Some(value.parse().map_err(|_| bad())?),
                "status" => match value.parse::<u16>() {
                    Ok(code @ 200..=599) => o.status = Some(code),
                    _ => return Err(bad()),
                },
                "fail-rate" => match value.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => o.fail_rate = Some(p),
                    _ => return Err(bad()),
                },
                "stall" => o.stall = !matches!(value, "" | "0" | "false"),
                "answer-model" if !value.is_empty() && value.len() <= 1024 => {
                    o.answer_model = Some(value.to_owned())
                }
                "answer-model" => return Err(bad()),
                _ => return Err(format!("unknown header x-mock-{name}")),
            }
        }
        Ok(o)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What to do with one request.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Wait this long before the first byte of the answer.
    pub(crate) delay_ms: u64,
    pub(crate) reply: Reply,
}

/// The answer itself.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A complete JSON body.
    Body {
        status: u16,
        body: Body,
        retry_after_s: Option<u64>,
    },
    /// An SSE stream.
    Stream {
        spec: StreamSpec,
        chunk_delay_ms: u64,
        /// Close the connection after this many content chunks.
        disconnect_after: Option<u32>,
    },
    /// Never answer; hold the connection until the client leaves.
    Stall,
    /// Close the connection without answering.
    Disconnect,
}

/// Which JSON body to write.
#[derive(Debug)]
pub(crate) enum Body {
    Chat(Answer),
    Completion(Answer),
    Embeddings(Answer),
    Responses(Answer),
    Messages(Answer),
    CountTokens(Answer),
    Moderation(Answer),
    Image(Answer),
    Transcription(Answer),
    /// Binary audio (`audio/mpeg`).
    Speech(Answer),
    /// A Gemini `GenerateContentResponse`.
    Gemini(Answer),
    /// A Bedrock Converse response.
    Bedrock(Answer),
    Models,
    /// A JSON body written as is (the Vertex AI token endpoint's answers).
    Json(String),
    Stats,
    /// `POST /mock/reset`: zero the counters, answer `{}`.
    Reset,
    Error(String),
}

impl Body {
    /// The content type the body is written with.
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Body::Speech(_) => "audio/mpeg",
            _ => "application/json",
        }
    }
}

impl Plan {
    fn now(reply: Reply) -> Plan {
        Plan { delay_ms: 0, reply }
    }

    fn error(status: u16, message: String) -> Plan {
        Plan::now(Reply::Body {
            status,
            body: Body::Error(message),
            retry_after_s: None,
        })
    }

    /// Whether carrying the plan out involves waiting, during which the
    /// client must be watched.
    pub(crate) fn waits(&self) -> bool {
        self.delay_ms > 0
            || match &self.reply {
                Reply::Stream {
                    spec,
                    chunk_delay_ms,
                    ..
                } => *chunk_delay_ms > 0 && spec.chunks() > 1,
                Reply::Stall => true,
                Reply::Body { .. } | Reply::Disconnect => false,
            }
    }
}

/// Decides how to answer `exchange`. Counts stalls and injected failures.
pub(crate) fn plan(
    exchange: Exchange,
    overrides: Result<Overrides, String>,
    cfg: &MockConfig,
    shared: &Shared,
) -> Plan {
    let endpoint = exchange.endpoint;
    match endpoint {
        Endpoint::Stats => return Plan::now(body_reply(Body::Stats)),
        Endpoint::Reset => return Plan::now(body_reply(Body::Reset)),
        _ => {}
    }
    let o = match overrides {
        Ok(o) => o,
        Err(message) => return Plan::error(400, message),
    };
    match endpoint {
        Endpoint::NotFound => return Plan::error(404, "mock: unknown path".into()),
        Endpoint::MethodNotAllowed => return Plan::error(405, "mock: method not allowed".into()),
        _ => {}
    }
    if let Some((status, message)) = exchange.refusal {
        return Plan::error(status, message);
    }
    if let Some((status, json)) = exchange.token {
        if status == 200 {
            shared.bump(Counter::TokensIssued);
        }
        return Plan::now(Reply::Body {
            status,
            body: Body::Json(json),
            retry_after_s: None,
        });
    }
    let fields = match exchange.body {
        Ok(fields) => fields,
        Err(message) => return Plan::error(400, message),
    };
    let dialect = match endpoint {
        Endpoint::ChatCompletions => Some(Dialect::OpenAiChat),
        Endpoint::Completions => Some(Dialect::OpenAiText),
        Endpoint::Messages => Some(Dialect::Anthropic),
        Endpoint::Responses => Some(Dialect::Responses),
        Endpoint::GeminiStream => Some(Dialect::Gemini),
        Endpoint::BedrockStream => Some(Dialect::Bedrock),
        _ => None,
    };
    let stream = fields.stream && dialect.is_some();
    let ttft_ms = o.ttft_ms.unwrap_or(cfg.ttft_ms);
    let delay_ms = if stream {
        ttft_ms
    } else {
        o.latency_ms.unwrap_or(ttft_ms)
    };
    let at = |reply| Plan { delay_ms, reply };

    if o.stall {
        shared.bump(Counter::Stalls);
        return Plan::now(Reply::Stall);
    }
    let retry_after_s = o.retry_after_s.or(cfg.retry_after);
    let fail_rate = o.fail_rate.unwrap_or(cfg.fail_rate);
    let injected = match o.status {
        Some(status) => Some(status),
        None if fail_rate > 0.0 && fastrand::f64() < fail_rate => Some(cfg.fail_status),
        None => None,
    };
    if let Some(status) = injected {
        shared.bump(Counter::FailuresInjected);
        return at(Reply::Body {
            status,
            body: Body::Error(format!("mock: injected failure {status}")),
            retry_after_s,
        });
    }
    if o.disconnect_after.is_some() {
        shared.bump(Counter::FailuresInjected);
        if !stream {
            return at(Reply::Disconnect);
        }
    }

    let chunk_size = o.chunk_size.unwrap_or(cfg.chunk_size).min(MAX_CHUNK_SIZE);
    let mut chunks = o.chunks.unwrap_or(cfg.chunks).min(MAX_CHUNKS);
    if !stream {
        let fit = MAX_BODY_TEXT / chunk_size.max(1);
        chunks = chunks.min(u32::try_from(fit).unwrap_or(u32::MAX));
    }
    let answer = Answer {
        id: shared.next_id(),
        model: o.answer_model.unwrap_or(fields.model),
        prompt_tokens: fields.prompt_tokens,
        chunks,
        chunk_size,
        inputs: fields.inputs.unwrap_or(1),
        texts: fields.texts,
    };
    if let (true, Some(dialect)) = (stream, dialect) {
        return at(Reply::Stream {
            spec: StreamSpec::new(dialect, answer, fields.include_usage),
            chunk_delay_ms: o.chunk_delay_ms.unwrap_or(cfg.chunk_delay_ms),
            disconnect_after: o.disconnect_after,
        });
    }
    let body = match endpoint {
        Endpoint::ChatCompletions => Body::Chat(answer),
        Endpoint::Completions => Body::Completion(answer),
        Endpoint::Embeddings => Body::Embeddings(answer),
        Endpoint::Responses => Body::Responses(answer),
        Endpoint::Messages => Body::Messages(answer),
        Endpoint::CountTokens => Body::CountTokens(answer),
        Endpoint::Moderations => Body::Moderation(answer),
        Endpoint::ImagesGenerations => Body::Image(answer),
        Endpoint::AudioTranscriptions => Body::Transcription(answer),
        Endpoint::AudioSpeech => Body::Speech(answer),
        Endpoint::GeminiGenerate | Endpoint::GeminiStream => Body::Gemini(answer),
        Endpoint::BedrockConverse | Endpoint::BedrockStream => Body::Bedrock(answer),
        _ => Body::Models,
    };
    at(body_reply(body))
}

fn body_reply(body: Body) -> Reply {
    Reply::Body {
        status: 200,
        body,
        retry_after_s: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::http::{parse_head, MAX_HEADERS};
    use crate::mock::request::Exchange;

    fn plan_for(raw: &str, cfg: &MockConfig, shared: &Shared) -> Plan {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_head(raw.as_bytes(), &mut headers).unwrap().unwrap();
        let body = &raw.as_bytes()[head.len..];
        plan(
            Exchange::read(&head, body),
            Overrides::from_head(&head),
            cfg,
            shared,
        )
    }

    fn status(p: &Plan) -> u16 {
        match p.reply {
            Reply::Body { status, .. } => status,
            _ => 0,
        }
    }

    #[test]
    fn precedence() {
        let cfg = MockConfig::default();
        let shared = Shared::default();
        let chat = |headers: &str| {
            format!("POST /v1/chat/completions HTTP/1.1\r\n{headers}Content-Length: 2\r\n\r\n{{}}")
        };
        assert_eq!(status(&plan_for(&chat(""), &cfg, &shared)), 200);
        assert_eq!(
            status(&plan_for(&chat("x-mock-chunks: x\r\n"), &cfg, &shared)),
            400
        );
        assert_eq!(
            status(&plan_for(&chat("X-Mock-Status: 503\r\n"), &cfg, &shared)),
            503
        );
        let stalled = plan_for(
            &chat("x-mock-stall: 1\r\nx-mock-status: 503\r\n"),
            &cfg,
            &shared,
        );
        assert!(matches!(stalled.reply, Reply::Stall) && stalled.waits());
        let gone = plan_for(&chat("x-mock-disconnect-after: 0\r\n"), &cfg, &shared);
        assert!(matches!(gone.reply, Reply::Disconnect));
        let late = plan_for(&chat("x-mock-latency-ms: 5\r\n"), &cfg, &shared);
        assert_eq!(late.delay_ms, 5);
        let stats = shared.snapshot();
        assert_eq!((stats.failures_injected, stats.stalls), (2, 1));
    }

    #[test]
    fn answer_model_overrides_the_echoed_model() {
        let cfg = MockConfig::default();
        let shared = Shared::default();
        let body = r#"{"model":"asked"}"#;
        let chat = |headers: &str| {
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let model = |p: Plan| match p.reply {
            Reply::Body {
                body: Body::Chat(a),
                ..
            } => a.model,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(model(plan_for(&chat(""), &cfg, &shared)), "asked");
        let dated = plan_for(&chat("x-mock-answer-model: asked-2025\r\n"), &cfg, &shared);
        assert_eq!(model(dated), "asked-2025");
        let empty = plan_for(&chat("x-mock-answer-model: \r\n"), &cfg, &shared);
        assert_eq!(status(&empty), 400);
    }

    #[test]
    fn fail_rate_from_config() {
        let cfg = MockConfig {
            fail_rate: 1.0,
            fail_status: 429,
            retry_after: Some(3),
            ..MockConfig::default()
        };
        let shared = Shared::default();
        let raw = "POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
        match plan_for(raw, &cfg, &shared).reply {
            Reply::Body {
                status,
                retry_after_s,
                ..
            } => assert_eq!((status, retry_after_s), (429, Some(3))),
            other => panic!("unexpected {other:?}"),
        }
    }
}
