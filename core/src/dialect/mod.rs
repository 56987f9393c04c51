//! Provider dialects: OpenAI chat completions (and Anthropic Messages) translated to what an
//! upstream speaks, and its answers translated back. Pure data transformation: bytes in, bytes
//! out, no sockets, no clock (ids and timestamps of generated objects come in as arguments).
//!
//! | client ([`Inbound`]) | upstream ([`Dialect`]) | request | response / stream |
//! | --- | --- | --- | --- |
//! | OpenAI chat | `openai` | passthrough, model spliced | passthrough, usage scanned |
//! | OpenAI chat | `azure` | passthrough, deployment path | passthrough, usage scanned |
//! | OpenAI chat | `anthropic` | → Messages API | Messages → chat completion (chunks) |
//! | OpenAI chat | `gemini` | → `generateContent` | `GenerateContentResponse` → chat completion (chunks) |
//! | any | `vertex` | as to `gemini` or `anthropic` (by publisher), on Vertex AI paths | as from that publisher |
//! | OpenAI chat | `bedrock` | → Converse (`/model/{id}/converse`) | Converse → chat completion; event-stream frames → chunks |
//! | Anthropic Messages | `anthropic` | passthrough, model spliced | passthrough, usage scanned |
//! | Anthropic Messages | `openai`, `azure` | Messages → chat | chat completion (chunks) → Messages (events) |
//! | Anthropic Messages | `gemini` | Messages → chat → Gemini | Gemini → chat → Messages |
//! | Anthropic Messages | `bedrock` | Messages → chat → Converse | Converse → chat → Messages |
//! | OpenAI Responses | `openai`, `azure` (chat completions) | Responses → chat | chat (chunks) → `response` (events) |
//! | OpenAI Responses | `anthropic`, `gemini`, `bedrock` | Responses → chat → target | target → chat → `response` (events) |
//!
//! (The proxy passes Responses requests to an `openai` deployment's own `/responses` through,
//! state and all; the translation is for the others, stateless.)
//!
//! OpenAI chat is the pivot: the Anthropic-client-to-Gemini pair is the two translations in a
//! row (and so are the Responses pairs), so every pair works and each dialect is written once.
//!
//! # Call order
//!
//! ```text
//!  client body ──► translate_request(inbound, dialect, body, &RequestOptions)
//!                    │   Err(GatewayError) ─► answer it (400 names the field, e.g. `n`)
//!                    ▼
//!                  Translated { body, path, stream, dropped_fields }   (debug-log dropped_fields)
//!  upstream req ◄── POST {provider base}{path} + auth_headers(dialect, key) + body
//!
//!  upstream head (status)
//!    ├─ non-2xx, or 2xx and not SSE ─► translate_response(dialect, inbound, status, body, &ctx)
//!    │                                   ─► (client body, usage); the status is kept
//!    └─ 2xx SSE ─► let mut t = StreamTranslator::new(dialect, inbound, ctx)
//!                  for each upstream read:   t.handle_bytes(read, &mut out); send out
//!                  upstream EOF:             if t.upstream_complete() { t.finish(&mut out) }
//!                                            else { t.error_event(&err, &mut out) }
//!                  upstream error / timeout: t.error_event(&err, &mut out)
//!                  settle:                   t.usage()
//! ```
//!
//! # Unknown and unsupported fields
//!
//! A field the target has an equivalent for is mapped; one it has not is dropped and named in
//! [`Translated::dropped_fields`] (never an error); explicit `null`s are ignored. A request the
//! target cannot express at all (`n > 1` to Anthropic) is a 400 naming the field. Provider
//! extras ([`RequestOptions::extra`]) are merged last, deeply, into the translated body.
//!
//! # Usage
//!
//! Every path reports [`Usage`] the same way: input tokens include cached ones (Anthropic's
//! `cache_read_input_tokens` and `cache_creation_input_tokens` are added to its
//! `input_tokens`; the read ones are also `cached_tokens`), output tokens include reasoning.

mod anthropic;
mod anthropic_stream;
mod azure;
mod bedrock;
pub(crate) use bedrock::without_bedrock_prefixes;
mod bedrock_stream;
mod chunk_events;
mod count;
mod events;
mod gemini;
mod gemini_stream;
mod helpers;
mod messages;
mod messages_stream;
mod openai;
mod responses;
#[cfg(test)]
mod tests;
mod vertex;

pub use azure::operation_path as azure_operation_path;
pub use count::estimate_input_tokens;
pub(crate) use helpers::*;
pub use vertex::{Publisher, ANTHROPIC_VERTEX_VERSION};

use serde_json::Value;

use crate::error::GatewayError;
use crate::sse::{Event, EventSplitter, SseScanner};
use crate::usage::{self, Usage};
use chunk_events::ChunkEvents;

/// A JSON object.
pub type JsonMap = serde_json::Map<String, Value>;

/// `max_tokens` sent to Anthropic when the client set none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// `api-version` sent to Azure OpenAI when the provider config sets none.
pub const DEFAULT_AZURE_API_VERSION: &str = azure::DEFAULT_API_VERSION;

/// `anthropic-version` sent to Anthropic.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The wire dialect an upstream provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI and every OpenAI-compatible server (`/chat/completions`, bearer key).
    OpenAi,
    /// Azure OpenAI deployments (`/openai/deployments/{d}/chat/completions`, `api-key`).
    Azure,
    /// Anthropic's Messages API (`/messages`, `x-api-key`).
    Anthropic,
    /// Google Gemini (`/models/{m}:generateContent`, `x-goog-api-key`).
    Gemini,
    /// Google Vertex AI: a publisher's models (`gemini`'s or `anthropic`'s bodies on Vertex AI
    /// paths, an OAuth bearer token). A provider's kind holds `Google`; each request's
    /// publisher comes from [`Dialect::for_model`].
    Vertex(Publisher),
    /// Amazon Bedrock's Converse API (`/model/{id}/converse`, SigV4-signed by the proxy).
    Bedrock,
}

impl Dialect {
    /// Every dialect.
    pub const ALL: [Dialect; 6] = [
        Dialect::OpenAi,
        Dialect::Azure,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Vertex(Publisher::Google),
        Dialect::Bedrock,
    ];

    /// The dialect a config `kind` names: `openai`, `azure`, `anthropic`, `gemini`, `vertex`
    /// or `bedrock`.
    pub fn from_name(name: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The config name of this dialect.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Azure => "azure",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Vertex(_) => "vertex",
            Dialect::Bedrock => "bedrock",
        }
    }
}

/// The API a client called the gateway with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Inbound {
    /// `POST /v1/chat/completions`.
    OpenAiChat,
    /// `POST /v1/messages` (Anthropic clients).
    AnthropicMessages,
    /// `POST /v1/responses` (OpenAI's Responses API, stateless use).
    OpenAiResponses,
}

impl Inbound {
    /// The inbound API of a request path (query ignored).
    pub fn from_path(path: &str) -> Option<Inbound> {
        match path.split('?').next().unwrap_or(path) {
            "/v1/chat/completions" | "/chat/completions" => Some(Inbound::OpenAiChat),
            "/v1/messages" | "/messages" => Some(Inbound::AnthropicMessages),
            "/v1/responses" | "/responses" => Some(Inbound::OpenAiResponses),
            _ => None,
        }
    }

    /// The upstream dialect this API is passed through to unchanged.
    pub fn native(self) -> Dialect {
        match self {
            Inbound::OpenAiChat | Inbound::OpenAiResponses => Dialect::OpenAi,
            Inbound::AnthropicMessages => Dialect::Anthropic,
        }
    }
}

/// What a request translation needs besides the body.
#[derive(Clone, Copy, Debug)]
pub struct RequestOptions<'a> {
    /// The model name the upstream knows (the deployment's `model`, or the client's for `*`).
    pub upstream_model: &'a str,
    /// `max_tokens` for targets that require one when the client set none.
    pub default_max_tokens: u32,
    /// Provider extras merged (deeply, last) into the translated body, e.g.
    /// `{"top_k": 40}` for Anthropic or `{"safetySettings": [...]}` for Gemini.
    pub extra: Option<&'a JsonMap>,
    /// Azure deployment name; the upstream model when `None`.
    pub azure_deployment: Option<&'a str>,
    /// Azure `api-version`; [`DEFAULT_AZURE_API_VERSION`] when `None`.
    pub azure_api_version: Option<&'a str>,
}

impl<'a> RequestOptions<'a> {
    /// Options with defaults for everything but the model.
    pub fn new(upstream_model: &'a str) -> Self {
        RequestOptions {
            upstream_model,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            extra: None,
            azure_deployment: None,
            azure_api_version: None,
        }
    }
}

/// A request ready for the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    /// The body to send (`content-type: application/json`).
    pub body: Vec<u8>,
    /// Path and query after the provider's base URL, e.g. `/messages` or
    /// `/models/gemini-1.5-pro:streamGenerateContent?alt=sse`.
    pub path: String,
    /// The client asked for a stream (send `accept: text/event-stream`).
    pub stream: bool,
    /// Request fields the target has no equivalent for, as paths (`logprobs`,
    /// `messages[2].name`): dropped, for a debug log.
    pub dropped_fields: Vec<String>,
}

/// What a response translation reports in objects it generates.
#[derive(Clone, Copy, Debug)]
pub struct ResponseContext<'a> {
    /// The model name to report (usually the one the client asked for).
    pub model: &'a str,
    /// The response id to report (`chatcmpl-…` for OpenAI clients, `msg_…` for Anthropic ones).
    /// Generated tool-call ids are derived from it.
    pub id: &'a str,
    /// Unix seconds for OpenAI's `created`.
    pub created: u64,
    /// The OpenAI client asked for `stream_options.include_usage`: end the stream with a usage
    /// chunk (the usage is read either way).
    pub include_usage: bool,
}

/// The headers that authenticate to `dialect` with `key` (lower-case names); none for
/// `bedrock`, whose requests the proxy signs (SigV4) over their final bytes.
pub fn auth_headers(dialect: Dialect, key: &str) -> Vec<(&'static str, String)> {
    match dialect {
        Dialect::OpenAi => vec![("authorization", format!("Bearer {key}"))],
        Dialect::Azure => vec![("api-key", key.to_owned())],
        Dialect::Anthropic => vec![
            ("x-api-key", key.to_owned()),
            ("anthropic-version", ANTHROPIC_VERSION.to_owned()),
        ],
        Dialect::Gemini => vec![("x-goog-api-key", key.to_owned())],
        // `key` is the current OAuth access token.
        Dialect::Vertex(_) => vec![("authorization", format!("Bearer {key}"))],
        Dialect::Bedrock => Vec::new(),
    }
}

/// Translates a client request body for the upstream `to`.
///
/// Fails with 400 (`InvalidRequest`, the field in `param` and the message) when the body is not
/// a JSON object or holds something the target cannot express.
pub fn translate_request(
    from: Inbound,
    to: Dialect,
    body: &[u8],
    opts: &RequestOptions<'_>,
) -> Result<Translated, GatewayError> {
    match (from, to) {
        (from, Dialect::Vertex(publisher)) => vertex::request(from, publisher, body, opts),
        (Inbound::OpenAiChat, Dialect::OpenAi) => {
            openai::passthrough_request(body, opts, "/chat/completions".into(), true)
        }
        (Inbound::OpenAiChat, Dialect::Azure) => {
            openai::passthrough_request(body, opts, azure::path(opts), true)
        }
        (Inbound::AnthropicMessages, Dialect::Anthropic) => {
            openai::passthrough_request(body, opts, "/messages".into(), false)
        }
        (Inbound::OpenAiChat, Dialect::Anthropic) => {
            anthropic::request(parse_object(body)?, opts, Vec::new())
        }
        (Inbound::OpenAiChat, Dialect::Gemini) => {
            gemini::request(parse_object(body)?, opts, Vec::new())
        }
        (Inbound::AnthropicMessages, Dialect::OpenAi) => {
            let (chat, stream, dropped) = messages::to_chat(parse_object(body)?, opts)?;
            Ok(finish_body(
                chat,
                opts,
                "/chat/completions".into(),
                stream,
                dropped,
            ))
        }
        (Inbound::AnthropicMessages, Dialect::Azure) => {
            let (chat, stream, dropped) = messages::to_chat(parse_object(body)?, opts)?;
            Ok(finish_body(chat, opts, azure::path(opts), stream, dropped))
        }
        (Inbound::AnthropicMessages, Dialect::Gemini) => {
            let (chat, _, dropped) = messages::to_chat(parse_object(body)?, opts)?;
            gemini::request(chat, opts, dropped)
        }
        (Inbound::OpenAiChat, Dialect::Bedrock) => {
            bedrock::request(parse_object(body)?, opts, Vec::new())
        }
        (Inbound::AnthropicMessages, Dialect::Bedrock) => {
            let (chat, _, dropped) = messages::to_chat(parse_object(body)?, opts)?;
            bedrock::request(chat, opts, dropped)
        }
        // A Responses client of a chat-completions upstream (OpenAI-compatible servers; the
        // gateway passes requests to OpenAI's own `/responses` through without calling this).
        (Inbound::OpenAiResponses, to) => {
            let req = parse_object(body)?;
            let (chat, stream, dropped) = responses::to_chat(req, opts.upstream_model, to.name())?;
            match to {
                Dialect::OpenAi => Ok(finish_body(
                    chat,
                    opts,
                    "/chat/completions".into(),
                    stream,
                    dropped,
                )),
                Dialect::Azure => Ok(finish_body(chat, opts, azure::path(opts), stream, dropped)),
                Dialect::Anthropic => anthropic::request(chat, opts, dropped),
                Dialect::Gemini => gemini::request(chat, opts, dropped),
                Dialect::Bedrock => bedrock::request(chat, opts, dropped),
                Dialect::Vertex(publisher) => vertex::request(from, publisher, body, opts),
            }
        }
    }
}

/// The model a whole (non-streaming) 2xx upstream body says answered, bounded: OpenAI, Azure
/// and Anthropic `model`, Gemini `modelVersion`; `None` for Bedrock (it reports none) and for
/// an error answer.
pub fn answered_model(from: Dialect, status: u16, body: &[u8]) -> Option<String> {
    if !(200..300).contains(&status) || matches!(from.wire(), Dialect::Bedrock) {
        return None;
    }
    crate::answered_model::from_json(body)
}

/// Translates a whole (non-streaming) upstream response for the client, and reads its usage.
///
/// A non-2xx body becomes the client's error shape (OpenAI `{"error":{message,type,code}}`,
/// Anthropic `{"type":"error","error":{type,message}}`); the caller keeps the status. A 2xx
/// body that cannot be read becomes an error body of type `api_error`.
pub fn translate_response(
    from: Dialect,
    to: Inbound,
    status: u16,
    body: &[u8],
    ctx: &ResponseContext<'_>,
) -> (Vec<u8>, Option<Usage>) {
    let ok = (200..300).contains(&status);
    let from = from.wire();
    match (from, to) {
        (Dialect::OpenAi | Dialect::Azure, Inbound::OpenAiChat) => {
            (body.to_vec(), usage::from_body(body).filter(|_| ok))
        }
        (Dialect::Anthropic, Inbound::AnthropicMessages) => (
            body.to_vec(),
            anthropic::usage_from_body(body).filter(|_| ok),
        ),
        _ if !ok => (error_body(to, status, &UpstreamError::parse(body)), None),
        _ => {
            let chat = match from {
                Dialect::Anthropic => anthropic::response(body, ctx),
                Dialect::Gemini => gemini::response(body, ctx),
                // (`wire()` never answers `Vertex`.)
                Dialect::OpenAi | Dialect::Azure | Dialect::Vertex(_) => {
                    openai::read_response(body)
                }
                Dialect::Bedrock => bedrock::response(body, ctx),
            };
            match (chat, to) {
                (Some((chat, usage)), Inbound::OpenAiChat) => (to_vec(&chat), usage),
                (Some((chat, usage)), Inbound::OpenAiResponses) => (
                    to_vec(&responses::from_chat(&chat, ctx, usage.as_ref())),
                    usage,
                ),
                (Some((chat, usage)), Inbound::AnthropicMessages) => (
                    to_vec(&messages::from_chat(&chat, ctx, usage.as_ref())),
                    usage,
                ),
                (None, _) => {
                    let err = UpstreamError {
                        message: format!(
                            "the {} upstream sent a response body that is not a valid answer",
                            from.name()
                        ),
                        kind: None,
                    };
                    (error_body(to, 502, &err), None)
                }
            }
        }
    }
}

/// Translates an upstream SSE stream for the client, event by event.
///
/// Call order: [`handle_bytes`](Self::handle_bytes) for every upstream read, then at the end
/// either [`finish`](Self::finish) (the upstream ended) or [`error_event`](Self::error_event)
/// (it failed), then [`usage`](Self::usage). Only a trailing partial event is held between
/// reads; passthrough pairs forward every byte at once.
#[derive(Debug)]
pub struct StreamTranslator {
    to: Inbound,
    stage: Stage,
    done: bool,
    /// The answered model, read from a translated stream's first upstream events (the
    /// passthrough stages read it themselves).
    model: crate::answered_model::ModelWatch,
}

#[derive(Debug)]
enum Stage {
    /// OpenAI/Azure to an OpenAI client: the relay scanner in strip mode when the client did
    /// not ask for usage (the request translation asked for it).
    OpenAiPass(SseScanner),
    /// Anthropic to an Anthropic client: bytes as they come, usage read on the side.
    AnthropicPass(EventSplitter, anthropic_stream::UsageScan),
    /// Bedrock's binary event stream, decoded and translated (then again for non-chat clients).
    Bedrock(Box<bedrock_stream::Relay>),
    /// A translation, and for Gemini to an Anthropic client a second one after it.
    Translate {
        splitter: EventSplitter,
        first: Translator,
        second: Option<Box<(EventSplitter, Translator)>>,
        scratch: Vec<u8>,
    },
}

#[derive(Debug)]
enum Translator {
    Anthropic(anthropic_stream::ChatStream),
    Gemini(gemini_stream::ChatStream),
    Chat(messages_stream::MessagesStream),
    Responses(Box<responses::stream::ResponsesStream>),
}

impl Translator {
    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        match self {
            Translator::Anthropic(t) => t.on_event(ev, out),
            Translator::Gemini(t) => t.on_event(ev, out),
            Translator::Chat(t) => t.on_event(ev, out),
            Translator::Responses(t) => t.on_event(ev, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Translator::Anthropic(t) => t.finish(out),
            Translator::Gemini(t) => t.finish(out),
            Translator::Chat(t) => t.finish(out),
            Translator::Responses(t) => t.finish(out),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Translator::Anthropic(t) => t.usage(),
            Translator::Gemini(t) => t.usage(),
            Translator::Chat(t) => t.usage(),
            Translator::Responses(t) => t.usage(),
        }
    }

    fn complete(&self) -> bool {
        match self {
            Translator::Anthropic(t) => t.complete(),
            Translator::Gemini(t) => t.complete(),
            Translator::Chat(t) => t.complete(),
            Translator::Responses(t) => t.complete(),
        }
    }
}

impl StreamTranslator {
    /// A translator from the upstream `from` to the client API `to`.
    pub fn new(from: Dialect, to: Inbound, ctx: ResponseContext<'_>) -> Self {
        let inner_ctx = ResponseContext {
            include_usage: true,
            ..ctx
        };
        let stage = match (from.wire(), to) {
            (Dialect::OpenAi | Dialect::Azure, Inbound::OpenAiChat) => {
                Stage::OpenAiPass(SseScanner::new(!ctx.include_usage))
            }
            (Dialect::Anthropic, Inbound::AnthropicMessages) => {
                Stage::AnthropicPass(events::splitter(), Default::default())
            }
            (Dialect::Anthropic, Inbound::OpenAiChat) => Stage::translate(
                Translator::Anthropic(anthropic_stream::ChatStream::new(&ctx)),
                None,
            ),
            (Dialect::Gemini, Inbound::OpenAiChat) => Stage::translate(
                Translator::Gemini(gemini_stream::ChatStream::new(&ctx)),
                None,
            ),
            (Dialect::OpenAi | Dialect::Azure, Inbound::AnthropicMessages) => Stage::translate(
                Translator::Chat(messages_stream::MessagesStream::new(&ctx)),
                None,
            ),
            (Dialect::Gemini, Inbound::AnthropicMessages) => Stage::translate(
                Translator::Gemini(gemini_stream::ChatStream::new(&inner_ctx)),
                Some(Translator::Chat(messages_stream::MessagesStream::new(&ctx))),
            ),
            (Dialect::OpenAi | Dialect::Azure, Inbound::OpenAiResponses) => Stage::translate(
                Translator::Responses(Box::new(responses::stream::ResponsesStream::new(&ctx))),
                None,
            ),
            (Dialect::Anthropic, Inbound::OpenAiResponses) => Stage::translate(
                Translator::Anthropic(anthropic_stream::ChatStream::new(&inner_ctx)),
                Some(Translator::Responses(Box::new(
                    responses::stream::ResponsesStream::new(&ctx),
                ))),
            ),
            (Dialect::Gemini, Inbound::OpenAiResponses) => Stage::translate(
                Translator::Gemini(gemini_stream::ChatStream::new(&inner_ctx)),
                Some(Translator::Responses(Box::new(
                    responses::stream::ResponsesStream::new(&ctx),
                ))),
            ),
            // Not reached: `wire()` turns Vertex AI into its publisher's dialect.
            (Dialect::Vertex(_), _) => Stage::OpenAiPass(SseScanner::new(!ctx.include_usage)),
            (Dialect::Bedrock, to) => {
                let (first, second) = match to {
                    Inbound::OpenAiChat => (&ctx, None),
                    Inbound::AnthropicMessages => (
                        &inner_ctx,
                        Some(Translator::Chat(messages_stream::MessagesStream::new(&ctx))),
                    ),
                    Inbound::OpenAiResponses => (
                        &inner_ctx,
                        Some(Translator::Responses(Box::new(
                            responses::stream::ResponsesStream::new(&ctx),
                        ))),
                    ),
                };
                let first = bedrock_stream::ChatStream::new(first);
                Stage::Bedrock(Box::new(bedrock_stream::Relay::new(first, second)))
            }
        };
        StreamTranslator {
            to,
            stage,
            done: false,
            model: Default::default(),
        }
    }

    /// Takes the next upstream bytes and appends what the client should receive to `out`.
    pub fn handle_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        match &mut self.stage {
            Stage::OpenAiPass(scanner) => scanner.handle_bytes(input, out),
            Stage::AnthropicPass(splitter, scan) => {
                out.extend_from_slice(input);
                splitter.handle_events(input, |ev| scan.on_event(ev));
            }
            Stage::Bedrock(relay) => relay.handle_bytes(input, out),
            Stage::Translate {
                splitter,
                first,
                second,
                scratch,
            } => {
                let model = &mut self.model;
                let mut first_event = |ev: &Event<'_>, out: &mut Vec<u8>| {
                    model.on_data(&ev.data);
                    first.on_event(ev, out);
                };
                match second {
                    None => splitter.handle_events(input, |ev| first_event(ev, out)),
                    Some(pair) => {
                        splitter.handle_events(input, |ev| first_event(ev, scratch));
                        let (split2, t2) = &mut **pair;
                        split2.handle_events(scratch, |ev| t2.on_event(ev, out));
                        scratch.clear();
                    }
                }
            }
        }
    }

    /// The upstream ended: appends whatever the client still needs to `out` — a held partial
    /// event, and `data: [DONE]` (OpenAI clients) or `message_delta` + `message_stop`
    /// (Anthropic clients) when the upstream did not send its own end.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        match &mut self.stage {
            Stage::OpenAiPass(scanner) => {
                let mid_event = scanner.client_mid_event();
                let before = out.len();
                scanner.finish(out);
                // Strip mode flushes a held tail here, which may lack its blank line.
                let flushed_unterminated = out.len() > before && !out.ends_with(b"\n\n");
                if !scanner.saw_done() {
                    if mid_event || flushed_unterminated {
                        out.extend_from_slice(b"\n\n");
                    }
                    out.extend_from_slice(events::DONE);
                }
            }
            Stage::AnthropicPass(splitter, scan) => {
                if splitter.mid_event() {
                    out.extend_from_slice(b"\n\n");
                }
                splitter.finish_events(|ev| scan.on_event(ev));
                if !scan.complete() {
                    out.extend_from_slice(anthropic_stream::MESSAGE_STOP);
                }
            }
            Stage::Bedrock(relay) => relay.finish(out),
            Stage::Translate {
                splitter,
                first,
                second,
                scratch,
            } => match second {
                None => {
                    splitter.finish_events(|ev| first.on_event(ev, out));
                    first.finish(out);
                }
                Some(pair) => {
                    splitter.finish_events(|ev| first.on_event(ev, scratch));
                    first.finish(scratch);
                    let (split2, t2) = &mut **pair;
                    split2.handle_events(scratch, |ev| t2.on_event(ev, out));
                    split2.finish_events(|ev| t2.on_event(ev, out));
                    t2.finish(out);
                    scratch.clear();
                }
            },
        }
    }

    /// The stream failed (upstream cut, timeout): appends `err` in the client's dialect
    /// (OpenAI: `event: error` + `data: [DONE]`; Anthropic: `event: error`), first ending an
    /// event the client received only part of. Nothing is written after it.
    pub fn error_event(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mid_event = match &self.stage {
            Stage::OpenAiPass(scanner) => scanner.client_mid_event(),
            Stage::AnthropicPass(splitter, _) => splitter.mid_event(),
            Stage::Translate { .. } | Stage::Bedrock(_) => false,
        };
        if mid_event {
            out.extend_from_slice(b"\n\n");
        }
        if let Stage::Translate { first, second, .. } = &mut self.stage {
            let responses = match (first, second.as_deref_mut()) {
                (_, Some((_, Translator::Responses(t)))) | (Translator::Responses(t), _) => Some(t),
                _ => None,
            };
            if let Some(t) = responses {
                let e = UpstreamError {
                    message: err.message.clone(),
                    kind: Some(err.kind.code().to_owned()),
                };
                t.fail(out, err.status(), &e);
                return;
            }
        }
        if let Stage::Bedrock(relay) = &mut self.stage {
            if let Some(Translator::Responses(t)) = relay.second_mut() {
                let e = UpstreamError {
                    message: err.message.clone(),
                    kind: Some(err.kind.code().to_owned()),
                };
                t.fail(out, err.status(), &e);
                return;
            }
        }
        match self.to {
            Inbound::OpenAiChat | Inbound::OpenAiResponses => out.extend_from_slice(&err.to_sse()),
            Inbound::AnthropicMessages => {
                let e = UpstreamError {
                    message: err.message.clone(),
                    kind: None,
                };
                events::write_named(out, "error", &messages::error_json(err.status(), &e));
            }
        }
    }

    /// Whether the upstream sent its own end (`[DONE]`, `message_stop`, a Gemini
    /// `finishReason`). When it did not, the stream was cut: prefer
    /// [`error_event`](Self::error_event) over [`finish`](Self::finish).
    pub fn upstream_complete(&self) -> bool {
        match &self.stage {
            Stage::OpenAiPass(scanner) => scanner.saw_done(),
            Stage::AnthropicPass(_, scan) => scan.complete(),
            Stage::Translate { first, .. } => first.complete(),
            Stage::Bedrock(relay) => relay.complete(),
        }
    }

    /// The model the upstream says answered (bounded), when its stream named one (Bedrock's
    /// never does).
    pub fn answered_model(&self) -> Option<&str> {
        match &self.stage {
            Stage::OpenAiPass(scanner) => scanner.answered_model(),
            Stage::AnthropicPass(_, scan) => scan.model(),
            Stage::Translate { .. } => self.model.model(),
            Stage::Bedrock(_) => None,
        }
    }

    /// The usage the upstream reported, in the common shape.
    pub fn usage(&self) -> Option<Usage> {
        match &self.stage {
            Stage::OpenAiPass(scanner) => scanner.usage(),
            Stage::AnthropicPass(_, scan) => scan.usage(),
            Stage::Translate { first, .. } => first.usage(),
            Stage::Bedrock(relay) => relay.usage(),
        }
    }
}

impl Stage {
    fn translate(first: Translator, second: Option<Translator>) -> Stage {
        Stage::Translate {
            splitter: events::splitter(),
            first,
            second: second.map(|t| Box::new((events::splitter(), t))),
            scratch: Vec::new(),
        }
    }
}

/// An error body in the client's shape.
fn error_body(to: Inbound, status: u16, err: &UpstreamError) -> Vec<u8> {
    match to {
        Inbound::OpenAiChat => to_vec(&openai::error_json(status, err)),
        Inbound::OpenAiResponses => to_vec(&responses::error_json(status, err)),
        Inbound::AnthropicMessages => to_vec(&messages::error_json(status, err)),
    }
}
