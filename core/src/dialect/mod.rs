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
//! | Anthropic Messages | `anthropic` | passthrough, model spliced | passthrough, usage scanned |
//! | Anthropic Messages | `openai`, `azure` | Messages → chat | chat completion (chunks) → Messages (events) |
//! | Anthropic Messages | `gemini` | Messages → chat → Gemini | Gemini → chat → Messages |
//!
//! OpenAI chat is the pivot: the Anthropic-client-to-Gemini pair is the two translations in a
//! row, so every pair works and each dialect is written once.
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
mod events;
mod gemini;
mod gemini_stream;
mod messages;
mod messages_stream;
mod openai;
#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::error::bounded;
use crate::error::{ErrorKind, GatewayError};
use crate::sse::{Event, EventSplitter, SseScanner};
use crate::usage::{self, Usage};

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
}

impl Dialect {
    /// Every dialect.
    pub const ALL: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::Azure,
        Dialect::Anthropic,
        Dialect::Gemini,
    ];

    /// The dialect a config `kind` names: `openai`, `azure`, `anthropic` or `gemini`.
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
}

impl Inbound {
    /// The inbound API of a request path (query ignored).
    pub fn from_path(path: &str) -> Option<Inbound> {
        match path.split('?').next().unwrap_or(path) {
            "/v1/chat/completions" | "/chat/completions" => Some(Inbound::OpenAiChat),
            "/v1/messages" | "/messages" => Some(Inbound::AnthropicMessages),
            _ => None,
        }
    }

    /// The upstream dialect this API is passed through to unchanged.
    pub fn native(self) -> Dialect {
        match self {
            Inbound::OpenAiChat => Dialect::OpenAi,
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

/// The headers that authenticate to `dialect` with `key` (lower-case names).
pub fn auth_headers(dialect: Dialect, key: &str) -> Vec<(&'static str, String)> {
    match dialect {
        Dialect::OpenAi => vec![("authorization", format!("Bearer {key}"))],
        Dialect::Azure => vec![("api-key", key.to_owned())],
        Dialect::Anthropic => vec![
            ("x-api-key", key.to_owned()),
            ("anthropic-version", ANTHROPIC_VERSION.to_owned()),
        ],
        Dialect::Gemini => vec![("x-goog-api-key", key.to_owned())],
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
    }
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
                Dialect::OpenAi | Dialect::Azure => openai::read_response(body),
            };
            match (chat, to) {
                (Some((chat, usage)), Inbound::OpenAiChat) => (to_vec(&chat), usage),
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
}

#[derive(Debug)]
enum Stage {
    /// OpenAI/Azure to an OpenAI client: the relay scanner in strip mode when the client did
    /// not ask for usage (the request translation asked for it).
    OpenAiPass(SseScanner),
    /// Anthropic to an Anthropic client: bytes as they come, usage read on the side.
    AnthropicPass(EventSplitter, anthropic_stream::UsageScan),
    /// A translation, and for Gemini to an Anthropic client a second one after it.
    Translate {
        splitter: EventSplitter,
        first: Translator,
        second: Option<Box<(EventSplitter, messages_stream::MessagesStream)>>,
        scratch: Vec<u8>,
    },
}

#[derive(Debug)]
enum Translator {
    Anthropic(anthropic_stream::ChatStream),
    Gemini(gemini_stream::ChatStream),
    Chat(messages_stream::MessagesStream),
}

impl Translator {
    fn on_event(&mut self, ev: &Event<'_>, out: &mut Vec<u8>) {
        match self {
            Translator::Anthropic(t) => t.on_event(ev, out),
            Translator::Gemini(t) => t.on_event(ev, out),
            Translator::Chat(t) => t.on_event(ev, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Translator::Anthropic(t) => t.finish(out),
            Translator::Gemini(t) => t.finish(out),
            Translator::Chat(t) => t.finish(out),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            Translator::Anthropic(t) => t.usage(),
            Translator::Gemini(t) => t.usage(),
            Translator::Chat(t) => t.usage(),
        }
    }

    fn complete(&self) -> bool {
        match self {
            Translator::Anthropic(t) => t.complete(),
            Translator::Gemini(t) => t.complete(),
            Translator::Chat(t) => t.complete(),
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
        let stage = match (from, to) {
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
                Some(messages_stream::MessagesStream::new(&ctx)),
            ),
        };
        StreamTranslator {
            to,
            stage,
            done: false,
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
            Stage::Translate {
                splitter,
                first,
                second,
                scratch,
            } => match second {
                None => splitter.handle_events(input, |ev| first.on_event(ev, out)),
                Some(pair) => {
                    splitter.handle_events(input, |ev| first.on_event(ev, scratch));
                    let (split2, t2) = &mut **pair;
                    split2.handle_events(scratch, |ev| t2.on_event(ev, out));
                    scratch.clear();
                }
            },
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
            Stage::Translate { .. } => false,
        };
        if mid_event {
            out.extend_from_slice(b"\n\n");
        }
        match self.to {
            Inbound::OpenAiChat => out.extend_from_slice(&err.to_sse()),
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
        }
    }

    /// The usage the upstream reported, in the common shape.
    pub fn usage(&self) -> Option<Usage> {
        match &self.stage {
            Stage::OpenAiPass(scanner) => scanner.usage(),
            Stage::AnthropicPass(_, scan) => scan.usage(),
            Stage::Translate { first, .. } => first.usage(),
        }
    }
}

impl Stage {
    fn translate(first: Translator, second: Option<messages_stream::MessagesStream>) -> Stage {
        Stage::Translate {
            splitter: events::splitter(),
            first,
            second: second.map(|t| Box::new((events::splitter(), t))),
            scratch: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the dialects
// ---------------------------------------------------------------------------------------------

/// An upstream error body, read from any dialect's shape (all keep `error.message`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpstreamError {
    /// The provider's message.
    pub(crate) message: String,
    /// The provider's `error.type` (OpenAI, Anthropic) or `error.status` (Gemini).
    pub(crate) kind: Option<String>,
}

impl UpstreamError {
    /// Reads the `error` object of a stream's error event: its `message`, its kind from
    /// `kind_field` (`type` for OpenAI and Anthropic, `status` for Gemini), and the status in
    /// its numeric `code`, when it has one.
    pub(crate) fn from_stream_event(err: &Value, kind_field: &str) -> (UpstreamError, Option<u16>) {
        let error = UpstreamError {
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream stream failed")
                .to_owned(),
            kind: err
                .get(kind_field)
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let status = err
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok());
        (error, status)
    }

    /// Reads an error body; a body that is not JSON becomes the message, shortened.
    pub(crate) fn parse(body: &[u8]) -> UpstreamError {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let message = err
            .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| err.and_then(Value::as_str).map(str::to_owned))
            .or_else(|| {
                v.as_ref()
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(512).collect();
                if text.is_empty() {
                    "the upstream answered with an error and no body".to_owned()
                } else {
                    text
                }
            });
        let kind = err
            .and_then(|e| {
                ["type", "status", "code"]
                    .iter()
                    .find_map(|k| e.get(*k).and_then(Value::as_str))
            })
            .map(str::to_owned);
        UpstreamError { message, kind }
    }
}

/// An error body in the client's shape.
fn error_body(to: Inbound, status: u16, err: &UpstreamError) -> Vec<u8> {
    match to {
        Inbound::OpenAiChat => to_vec(&openai::error_json(status, err)),
        Inbound::AnthropicMessages => to_vec(&messages::error_json(status, err)),
    }
}

pub(crate) fn to_vec(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn invalid(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, msg)
}

/// Parses a request body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<JsonMap, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("request body must be a JSON object")),
        Err(e) => Err(invalid(format!(
            "invalid JSON body: {}",
            bounded(&e.to_string())
        ))),
    }
}

/// Takes the required `messages` array.
pub(crate) fn take_messages(req: &mut JsonMap) -> Result<Vec<Value>, GatewayError> {
    match req.remove("messages") {
        Some(Value::Array(m)) => Ok(m),
        None | Some(Value::Null) => {
            Err(invalid("you must provide a `messages` array").with_param("messages"))
        }
        Some(_) => Err(invalid("`messages` must be an array").with_param("messages")),
    }
}

/// 400 unless `n` is absent, null or 1.
pub(crate) fn check_single_choice(req: &JsonMap, target: Dialect) -> Result<(), GatewayError> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(()),
        Some(n) if n.as_f64() == Some(1.0) => Ok(()),
        Some(n) => Err(invalid(format!(
            "`n` = {} is not supported by the {} upstream of this model: it answers with one \
             choice; send `n` = 1 or several requests",
            bounded(&n.to_string()),
            target.name()
        ))
        .with_param("n")),
    }
}

/// Notes a dropped field once.
/// One OpenAI function tool, as both translating dialects read it.
pub(crate) struct FunctionTool<'a> {
    /// `tools[i]`, for extras a dialect keeps (e.g. Anthropic's `cache_control`).
    pub tool: &'a Value,
    /// `function.name`.
    pub name: &'a str,
    /// `function.description`, when set.
    pub description: Option<&'a Value>,
    /// `function.parameters`, when it is an object.
    pub parameters: Option<&'a Value>,
}

/// Reads OpenAI's `tools`: function tools are returned, other kinds are dropped (noted), a
/// function without a string name is a 400.
pub(crate) fn function_tools<'a>(
    value: &'a Value,
    dropped: &mut Vec<String>,
) -> Result<Vec<FunctionTool<'a>>, GatewayError> {
    let Value::Array(items) = value else {
        return Err(invalid("`tools` must be an array").with_param("tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        let Some(function) = tool.get("function").filter(|_| kind == "function") else {
            note(dropped, format!("tools[{i}] (type `{kind}`)"));
            continue;
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(format!("`tools[{i}].function.name` must be a string")).with_param("tools")
            })?;
        if function.get("strict").and_then(Value::as_bool) == Some(true) {
            note(dropped, format!("tools[{i}].function.strict"));
        }
        out.push(FunctionTool {
            tool,
            name,
            description: function.get("description").filter(|d| !d.is_null()),
            parameters: function.get("parameters").filter(|p| p.is_object()),
        });
    }
    Ok(out)
}

/// Names a dropped field, for the debug log; a client-chosen part (a `type`) is bounded.
pub(crate) fn note(dropped: &mut Vec<String>, path: impl Into<String>) {
    let path = path.into();
    let path = match bounded(&path) {
        std::borrow::Cow::Borrowed(_) => path,
        std::borrow::Cow::Owned(short) => short,
    };
    if !dropped.contains(&path) {
        dropped.push(path);
    }
}

/// Merges `extra` into `into`: objects merge key by key, anything else replaces.
pub(crate) fn merge(into: &mut JsonMap, extra: &JsonMap) {
    for (k, v) in extra {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Merges the provider extras and serialises a translated body.
pub(crate) fn finish_body(
    mut body: JsonMap,
    opts: &RequestOptions<'_>,
    path: String,
    stream: bool,
    dropped_fields: Vec<String>,
) -> Translated {
    if let Some(extra) = opts.extra {
        merge(&mut body, extra);
    }
    Translated {
        body: to_vec(&Value::Object(body)),
        path,
        stream,
        dropped_fields,
    }
}

/// `data:<mime>;base64,<data>` split into mime type and data.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// The text of an OpenAI `content` (a string, or the `text` of its text parts).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A tool-call id for a provider that sends none, unique within one response.
pub(crate) fn tool_call_id(seed: &str, choice: u64, n: u64) -> String {
    let seed: String = seed
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .rev()
        .take(24)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if choice == 0 {
        format!("call_{seed}_{n}")
    } else {
        format!("call_{seed}_{choice}_{n}")
    }
}
