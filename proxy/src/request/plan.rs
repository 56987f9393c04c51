//! What a request asks of the upstream, fixed across attempts ([`Plan`]), and the exact
//! bytes of one attempt at one deployment (`build_request`): the client's headers that pass
//! through, the provider's auth and extras, and the body — passed through with the model name
//! spliced in, or translated into the deployment's dialect.

use std::time::Duration;

use sluice_core::compress::AcceptEncoding;
use sluice_core::config::{Deployment, Provider};
use sluice_core::dialect::{self, Dialect, Inbound, RequestOptions};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::estimate::PromptScan;
use sluice_core::http1::{is_hop_by_hop, RequestHead};
use sluice_core::inspect::{self, Inspected, Rewrite};

use crate::listen::respond;

/// Largest deadline a client may ask for with `x-sluice-deadline-ms`.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// An OpenAI endpoint forwarded upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiEndpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages` (Anthropic clients).
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic clients).
    CountTokens,
    /// `POST /v1/moderations`.
    Moderations,
    /// `POST /v1/images/generations`.
    ImagesGenerations,
    /// `POST /v1/audio/transcriptions` (`multipart/form-data`).
    AudioTranscriptions,
    /// `POST /v1/audio/speech` (a binary answer).
    AudioSpeech,
}

impl ApiEndpoint {
    /// The path under the provider's base URL.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            ApiEndpoint::ChatCompletions => "/chat/completions",
            ApiEndpoint::Completions => "/completions",
            ApiEndpoint::Embeddings => "/embeddings",
            ApiEndpoint::Responses => "/responses",
            ApiEndpoint::Messages => "/messages",
            ApiEndpoint::CountTokens => "/messages/count_tokens",
            ApiEndpoint::Moderations => "/moderations",
            ApiEndpoint::ImagesGenerations => "/images/generations",
            ApiEndpoint::AudioTranscriptions => "/audio/transcriptions",
            ApiEndpoint::AudioSpeech => "/audio/speech",
        }
    }

    /// The API a translating dialect understands this endpoint as, if any.
    pub fn inbound(self) -> Option<sluice_core::dialect::Inbound> {
        match self {
            ApiEndpoint::ChatCompletions => Some(sluice_core::dialect::Inbound::OpenAiChat),
            ApiEndpoint::Messages => Some(sluice_core::dialect::Inbound::AnthropicMessages),
            ApiEndpoint::Responses => Some(sluice_core::dialect::Inbound::OpenAiResponses),
            _ => None,
        }
    }

    /// Whether an `azure` deployment serves the endpoint on its deployment path, with
    /// OpenAI's bodies and answers.
    pub fn on_azure_deployments(self) -> bool {
        matches!(
            self,
            ApiEndpoint::Moderations
                | ApiEndpoint::ImagesGenerations
                | ApiEndpoint::AudioTranscriptions
                | ApiEndpoint::AudioSpeech
        )
    }

    /// Whether the endpoint streams with `stream_options.include_usage` (the Responses API
    /// always reports usage in `response.completed`).
    pub fn takes_stream_options(self) -> bool {
        matches!(
            self,
            ApiEndpoint::ChatCompletions | ApiEndpoint::Completions
        )
    }
}

/// What the request asks for, fixed across attempts.
pub struct Plan {
    /// Model group index.
    pub group: usize,
    /// The routing fields of the body.
    pub inspected: Inspected,
    /// The client's body.
    pub body: Vec<u8>,
    /// Which API.
    pub endpoint: ApiEndpoint,
    /// Client header lines passed through to every attempt.
    forwarded: Vec<u8>,
    /// The client's query string.
    query: Option<String>,
    /// The client sent `accept`.
    has_accept: bool,
    /// The gateway adds `include_usage` and strips the usage chunk from what the client sees.
    pub strip_usage: bool,
    /// `x-sluice-deadline-ms`.
    pub(crate) deadline_override: Option<Duration>,
    /// Build the answer's pivot for the response cache (a miss in a group with a cache).
    pub capture: bool,
    /// What the client's `Accept-Encoding` said (the gateway compresses; the upstream is
    /// asked for identity).
    pub accept_encoding: AcceptEncoding,
    /// A `multipart/form-data` body: its content type and where its `model` value is.
    pub(crate) form: Option<sluice_core::multipart::Form>,
    /// `body` is only the start of a form whose rest is streamed from the client after it
    /// (see `request::upload`): how the rest is framed.
    pub(crate) tail: Option<Tail>,
    /// The prompt scan, kept when `body` was released ([`Plan::release_body`]).
    scanned: Option<PromptScan>,
}

/// The rest of a streamed upload, after the part of the body the gateway holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// This many more bytes (the client sent `content-length`): the upstream gets a
    /// `content-length` too.
    Length(u64),
    /// Chunks until the client's last chunk: the upstream gets a chunked body.
    Chunked,
}

/// Client headers never forwarded: credentials meant for the gateway, and what the gateway
/// sets itself. `accept-encoding` is dropped so the upstream answers uncompressed and usage
/// can be read (the gateway compresses for the client, `request::compress`).
fn forwardable(name: &str, traced: bool) -> bool {
    const DROP: [&str; 8] = [
        "authorization",
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "cookie",
        "content-type",
        "accept-encoding",
        "x-request-id",
    ];
    let dropped = is_hop_by_hop(name)
        || DROP.iter().any(|d| d.eq_ignore_ascii_case(name))
        || (traced && name.eq_ignore_ascii_case("traceparent"))
        || name
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-sluice-"));
    !dropped
}

/// What to ask the upstream for a request to model group `group` whose body (`body`) has
/// the routing fields `inspected`: the client headers that pass through, its query, its
/// deadline. `traced`: the gateway sets `traceparent` itself. A bad `x-sluice-deadline-ms` is
/// a 400.
pub fn plan(
    head: &RequestHead,
    body: Vec<u8>,
    endpoint: ApiEndpoint,
    inspected: Inspected,
    group: usize,
    traced: bool,
) -> Result<Plan, GatewayError> {
    let deadline_override = match head.header_str("x-sluice-deadline-ms") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms).min(MAX_DEADLINE))
                .ok_or_else(|| {
                    GatewayError::new(
                        ErrorKind::InvalidRequest,
                        "x-sluice-deadline-ms must be a positive number of milliseconds",
                    )
                })?,
        ),
    };
    let mut forwarded = Vec::with_capacity(256);
    let mut has_accept = false;
    let mut accept_encoding = AcceptEncoding::default();
    for (name, value) in head.headers() {
        if forwardable(name, traced) {
            has_accept |= name.eq_ignore_ascii_case("accept");
            push_header(&mut forwarded, name, value);
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            accept_encoding.add(value);
        }
    }
    let strip_usage =
        inspected.stream && endpoint.takes_stream_options() && !inspected.include_usage;
    Ok(Plan {
        group,
        query: head.target().split_once('?').map(|(_, q)| q.to_string()),
        inspected,
        body,
        endpoint,
        forwarded,
        has_accept,
        strip_usage,
        deadline_override,
        capture: false,
        accept_encoding,
        form: None,
        tail: None,
        scanned: None,
    })
}

impl Plan {
    /// What the prompt-token estimate is taken from: a multipart form's file parts are audio
    /// or images, not text, so only its routing fields count; a JSON body's inline images
    /// count by their size, not their bytes.
    pub fn prompt_scan(&self) -> PromptScan {
        match (&self.form, self.scanned) {
            (_, Some(scan)) => scan,
            (Some(form), None) => PromptScan::text(form.model.len()),
            (None, None) => sluice_core::estimate::scan(&self.body),
        }
    }

    /// Frees the client's body and the header lines passed upstream, once no attempt will be
    /// sent again: an event stream being delivered holds its plan for its whole life, and two
    /// thousand streams need not hold two thousand request bodies. What the settlement still
    /// reads of the body is kept: its prompt scan (a stream cut short is estimated from it).
    /// The media endpoints keep their body (their cost is read from it at the end).
    pub fn release_body(&mut self) {
        if matches!(
            self.endpoint,
            ApiEndpoint::AudioSpeech | ApiEndpoint::AudioTranscriptions
        ) {
            return;
        }
        self.scanned = Some(self.prompt_scan());
        self.body = Vec::new();
        self.forwarded = Vec::new();
    }
}

/// How an attempt's answer must be turned into what the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// What the upstream speaks.
    pub from: Dialect,
    /// What the client called.
    pub to: Inbound,
}

/// The upstream request for one attempt at `deployment` of `provider`, and the translation
/// its answer needs (none for OpenAI-to-OpenAI passthrough). A request the provider's dialect
/// cannot express is a 400 naming the field. `access_token`: a `vertex` provider's current
/// OAuth token.
pub(crate) fn build_request(
    plan: &Plan,
    provider: &Provider,
    deployment: &Deployment,
    request_id: &str,
    traceparent: Option<&str>,
    access_token: Option<&str>,
) -> Result<(Vec<u8>, Option<Translation>), GatewayError> {
    let upstream_model = if deployment.model == "*" {
        plan.inspected.model.as_str()
    } else {
        deployment.model.as_str()
    };
    let dialect = provider
        .kind
        .for_model(upstream_model, deployment.publisher);
    // Azure serves these as OpenAI does, on deployment paths.
    let azure_passthrough = dialect == Dialect::Azure && plan.endpoint.on_azure_deployments();
    let passthrough = match plan.endpoint {
        ApiEndpoint::Messages => false,
        ApiEndpoint::CountTokens => dialect == Dialect::Anthropic,
        ApiEndpoint::Responses => dialect == Dialect::OpenAi && provider.responses_api,
        _ => dialect == Dialect::OpenAi || azure_passthrough,
    };
    let translated = if passthrough {
        None
    } else {
        Some(translate(plan, provider, dialect, upstream_model)?)
    };
    let mut req = Vec::with_capacity(512 + plan.forwarded.len() + plan.body.len() + 64);
    req.extend_from_slice(b"POST ");
    req.extend_from_slice(provider.endpoint.path_prefix.as_bytes());
    match &translated {
        None if azure_passthrough => {
            let opts = RequestOptions {
                azure_api_version: provider.api_version.as_deref(),
                ..RequestOptions::new(upstream_model)
            };
            let path = dialect::azure_operation_path(&opts, plan.endpoint.upstream_suffix());
            req.extend_from_slice(path.as_bytes());
        }
        None => {
            req.extend_from_slice(plan.endpoint.upstream_suffix().as_bytes());
            if let Some(query) = &plan.query {
                req.push(b'?');
                req.extend_from_slice(query.as_bytes());
            }
        }
        Some((t, _)) => req.extend_from_slice(t.path.as_bytes()),
    }
    push_headers(
        &mut req,
        plan,
        provider,
        request_id,
        traceparent,
        access_token,
    );
    if let Some((t, inbound)) = translated {
        push_translated_body(&mut req, provider, &t)?;
        return Ok((
            req,
            Some(Translation {
                from: dialect,
                to: inbound,
            }),
        ));
    }
    if let Some(form) = &plan.form {
        push_form_body(&mut req, plan, form, deployment);
        return Ok((req, None));
    }
    let edits = Rewrite {
        model: (deployment.model != "*").then_some(deployment.model.as_str()),
        force_include_usage: plan.strip_usage,
    };
    if edits.is_noop(&plan.inspected) {
        push_content_length(&mut req, plan.body.len());
        req.extend_from_slice(&plan.body);
    } else {
        // The rewritten body's length is known before it is written: the body goes straight
        // after its `content-length` (no copy in a buffer of its own, no move within `req`).
        let (body, inspected) = (&plan.body, &plan.inspected);
        inspect::rewrite_after(body, inspected, edits, &mut req, push_content_length);
    }
    Ok((req, None))
}

// The translated and form paths below are out of line (not cold: a deployment that
// translates takes them on every request): the passthrough every OpenAI-shaped request takes
// is then a short stretch of code, fewer instruction cache lines per request.

/// The request body in `dialect`'s shape (`plan.endpoint` must have an inbound dialect).
#[inline(never)]
fn translate(
    plan: &Plan,
    provider: &Provider,
    dialect: Dialect,
    upstream_model: &str,
) -> Result<(dialect::Translated, Inbound), GatewayError> {
    let inbound = plan.endpoint.inbound().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "{} is not available on `{}` providers",
                plan.endpoint.upstream_suffix(),
                dialect.name()
            ),
        )
    })?;
    let opts = RequestOptions {
        upstream_model,
        default_max_tokens: provider.default_max_tokens,
        extra: provider.extra.as_ref(),
        azure_deployment: None,
        azure_api_version: provider.api_version.as_deref(),
    };
    let t = dialect::translate_request(inbound, dialect, &plan.body, &opts)?;
    if !t.dropped_fields.is_empty() {
        tracing::debug!(dropped = ?t.dropped_fields, dialect = dialect.name(), "fields the upstream dialect has no equivalent for");
    }
    Ok((t, inbound))
}

/// Ends a translated request: its SigV4 headers (Bedrock), its length and its body.
#[inline(never)]
fn push_translated_body(
    req: &mut Vec<u8>,
    provider: &Provider,
    t: &dialect::Translated,
) -> Result<(), GatewayError> {
    if let Some(aws) = &provider.aws {
        // Signed last, over the exact path and body sent.
        let path = format!("{}{}", provider.endpoint.path_prefix, t.path);
        let host = &provider.endpoint.host_header;
        let now = std::time::SystemTime::now();
        let signed = crate::upstream::sigv4::signature_headers(
            aws,
            "POST",
            host,
            &path,
            Some("application/json"),
            &t.body,
            now,
        )?;
        for (name, value) in signed {
            push_header(req, name, value.as_bytes());
        }
    }
    push_content_length(req, t.body.len());
    req.extend_from_slice(&t.body);
    Ok(())
}

/// Ends a form request: its length (or chunked framing, for an upload still arriving) and
/// the form read so far, with the deployment's model spliced in.
#[inline(never)]
fn push_form_body(
    req: &mut Vec<u8>,
    plan: &Plan,
    form: &sluice_core::multipart::Form,
    deployment: &Deployment,
) {
    let body = if deployment.model == "*" {
        std::borrow::Cow::Borrowed(&plan.body[..])
    } else {
        std::borrow::Cow::Owned(sluice_core::multipart::splice(
            &plan.body,
            &form.model,
            deployment.model.as_bytes(),
        ))
    };
    match plan.tail {
        None => {
            push_content_length(req, body.len());
            req.extend_from_slice(&body);
        }
        Some(Tail::Length(rest)) => {
            push_content_length_u64(req, body.len() as u64 + rest);
            req.extend_from_slice(&body);
        }
        Some(Tail::Chunked) => {
            req.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            sluice_core::http1::encode_chunk(&body, req);
        }
    }
}

/// The rest of the request line and the headers of an attempt: host, ours, the provider's
/// auth and extras, the client's that pass through (unless the provider sets the same one),
/// `accept` for streams, `traceparent`.
fn push_headers(
    req: &mut Vec<u8>,
    plan: &Plan,
    provider: &Provider,
    request_id: &str,
    traceparent: Option<&str>,
    access_token: Option<&str>,
) {
    let dialect = provider.kind;
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(provider.endpoint.host_header.as_bytes());
    req.extend_from_slice(b"\r\ncontent-type: ");
    match &plan.form {
        Some(form) => req.extend_from_slice(form.content_type.as_bytes()),
        None => req.extend_from_slice(b"application/json"),
    }
    req.extend_from_slice(b"\r\nx-request-id: ");
    req.extend_from_slice(request_id.as_bytes());
    req.extend_from_slice(b"\r\n");
    let forwarded_has = |name: &[u8]| {
        plan.forwarded.split(|b| *b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':'
        })
    };
    let key = provider
        .api_key
        .as_ref()
        .map(|k| k.expose())
        .or(access_token);
    if let Some(key) = key {
        for (name, value) in dialect::auth_headers(dialect, key) {
            if !forwarded_has(name.as_bytes()) {
                push_header(req, name, value.as_bytes());
            }
        }
    } else if dialect == Dialect::Anthropic && !forwarded_has(b"anthropic-version") {
        push_header(
            req,
            "anthropic-version",
            dialect::ANTHROPIC_VERSION.as_bytes(),
        );
    }
    for (name, value) in &provider.headers {
        push_header(req, name, value.as_bytes());
    }
    // Client headers, unless the provider config sets the same one.
    let mut rest = &plan.forwarded[..];
    while let Some(end) = memchr_crlf(rest) {
        let line = &rest[..end + 2];
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let overridden = provider
            .headers
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name));
        if !overridden {
            req.extend_from_slice(line);
        }
        rest = &rest[end + 2..];
    }
    if plan.inspected.stream && !plan.has_accept {
        req.extend_from_slice(b"accept: text/event-stream\r\n");
    }
    if let Some(tp) = traceparent {
        push_header(req, "traceparent", tp.as_bytes());
    }
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn push_header(req: &mut Vec<u8>, name: &str, value: &[u8]) {
    req.extend_from_slice(name.as_bytes());
    req.extend_from_slice(b": ");
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
}

fn push_content_length(req: &mut Vec<u8>, len: usize) {
    push_content_length_u64(req, len as u64);
}

fn push_content_length_u64(req: &mut Vec<u8>, len: u64) {
    req.extend_from_slice(b"content-length: ");
    req.extend_from_slice(respond::itoa_u64(len).as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
}
