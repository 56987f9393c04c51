//! Forwarding one API request: inspect it, then attempt deployments of its model group —
//! balancer pick, circuit breakers, retries with backoff, fallback groups, hedging — until one
//! answers or the request's deadline passes, and hand the answer to the relay.
//!
//! ```text
//! plan ─► loop { pick (balancer ∩ breakers) ─► send (maybe hedged) ─► classify
//!                 ├─ answer worth keeping ─► relay (stream) or buffer (small JSON + cost) ─► done
//!                 └─ failure ─► RetryPolicy::decide ─► Retry (backoff) | Fallback group | GiveUp }
//! ```
//! Every attempt happens before anything reaches the client, so a stream is retried or failed
//! over only while nothing has been sent; once the head is out, failures end the stream with
//! an SSE error event (see the relay).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use sluice_core::balance::Outcome;
use sluice_core::config::{Deployment, ModelGroup, Provider};
use sluice_core::dialect::{
    self, Dialect, Inbound, RequestOptions, ResponseContext, StreamTranslator,
};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{is_hop_by_hop, BodyFraming, RequestHead, ResponseHead};
use sluice_core::inspect::{self, Inspected, Rewrite};
use sluice_core::retry::{self, Decision, Failure};
use sluice_core::sse::SseScanner;
use sluice_core::usage::{self, Usage};

use crate::attempt::{self, Sent};
use crate::client_io::{ClientRead, ClientWrite};
use crate::endpoints::ApiEndpoint;
use crate::log::{AccessRecord, Attempt};
use crate::relay::{BodyLimits, BodyMode, ClientWatch, Relay};
use crate::respond::{self, write_head, ClientFraming};
use crate::routing::Pick;
use crate::state::Worker;
use crate::upstream::UpstreamError;

/// Largest error body read to decide on a retry (and passed through when it is the answer).
const MAX_ERROR_BODY: usize = 1 << 20;
/// Largest successful non-streaming body buffered so its cost can go in a header.
const MAX_BUFFERED_BODY: u64 = 1 << 20;
/// Largest deadline a client may ask for with `x-sluice-deadline-ms`.
const MAX_DEADLINE: Duration = Duration::from_secs(3600);

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
    deadline_override: Option<Duration>,
}

/// Client headers never forwarded: credentials meant for the gateway, and what the gateway
/// sets itself. `accept-encoding` is dropped so the upstream answers uncompressed and usage
/// can be read.
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

/// Inspects the body and resolves its model group.
pub fn plan(
    worker: &Worker,
    head: &RequestHead,
    body: Vec<u8>,
    endpoint: ApiEndpoint,
    rec: &mut AccessRecord,
) -> Result<Plan, GatewayError> {
    let inspected = inspect::inspect(&body)?;
    rec.model = Some(inspected.model.clone());
    rec.stream = inspected.stream;
    let cfg = &worker.shared.config;
    let group = cfg.model_index(&inspected.model).ok_or_else(|| {
        GatewayError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{}` does not exist", inspected.model),
        )
        .with_param("model")
    })?;
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
    let traced = rec.trace.is_some();
    let mut forwarded = Vec::with_capacity(256);
    let mut has_accept = false;
    for (name, value) in head.headers() {
        if forwardable(name, traced) {
            has_accept |= name.eq_ignore_ascii_case("accept");
            push_header(&mut forwarded, name, value);
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
    })
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
/// cannot express is a 400 naming the field.
fn build_request(
    plan: &Plan,
    provider: &Provider,
    deployment: &Deployment,
    request_id: &str,
    traceparent: Option<&str>,
) -> Result<(Vec<u8>, Option<Translation>), GatewayError> {
    let upstream_model = if deployment.model == "*" {
        plan.inspected.model.as_str()
    } else {
        deployment.model.as_str()
    };
    let dialect = provider.kind;
    let passthrough = dialect == Dialect::OpenAi && plan.endpoint != ApiEndpoint::Messages;
    let translated = if passthrough {
        None
    } else {
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
        Some((t, inbound))
    };
    let mut req = Vec::with_capacity(512 + plan.forwarded.len() + plan.body.len() + 64);
    req.extend_from_slice(b"POST ");
    req.extend_from_slice(provider.endpoint.path_prefix.as_bytes());
    match &translated {
        None => {
            req.extend_from_slice(plan.endpoint.upstream_suffix().as_bytes());
            if let Some(query) = &plan.query {
                req.push(b'?');
                req.extend_from_slice(query.as_bytes());
            }
        }
        Some((t, _)) => req.extend_from_slice(t.path.as_bytes()),
    }
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(provider.endpoint.host_header.as_bytes());
    req.extend_from_slice(b"\r\ncontent-type: application/json\r\nx-request-id: ");
    req.extend_from_slice(request_id.as_bytes());
    req.extend_from_slice(b"\r\n");
    let forwarded_has = |name: &[u8]| {
        plan.forwarded.split(|b| *b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':'
        })
    };
    if let Some(key) = &provider.api_key {
        for (name, value) in dialect::auth_headers(dialect, key.expose()) {
            if !forwarded_has(name.as_bytes()) {
                push_header(&mut req, name, value.as_bytes());
            }
        }
    } else if dialect == Dialect::Anthropic && !forwarded_has(b"anthropic-version") {
        push_header(
            &mut req,
            "anthropic-version",
            dialect::ANTHROPIC_VERSION.as_bytes(),
        );
    }
    for (name, value) in &provider.headers {
        push_header(&mut req, name, value.as_bytes());
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
        push_header(&mut req, "traceparent", tp.as_bytes());
    }
    if let Some((t, inbound)) = translated {
        push_content_length(&mut req, t.body.len());
        req.extend_from_slice(&t.body);
        return Ok((
            req,
            Some(Translation {
                from: dialect,
                to: inbound,
            }),
        ));
    }
    let edits = Rewrite {
        model: (deployment.model != "*").then_some(deployment.model.as_str()),
        force_include_usage: plan.strip_usage,
    };
    if edits.is_noop(&plan.inspected) {
        push_content_length(&mut req, plan.body.len());
        req.extend_from_slice(&plan.body);
    } else {
        let mut rewritten = Vec::with_capacity(plan.body.len() + 64);
        inspect::rewrite(&plan.body, &plan.inspected, edits, &mut rewritten);
        push_content_length(&mut req, rewritten.len());
        req.extend_from_slice(&rewritten);
    }
    Ok((req, None))
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
    req.extend_from_slice(b"content-length: ");
    req.extend_from_slice(respond::itoa_u64(len as u64).as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
}

/// What the exchange left for the client connection.
pub struct Exchanged {
    /// The client connection can carry another request.
    pub keep_alive: bool,
    /// Bytes of the client's next request that arrived during the exchange.
    pub early: Vec<u8>,
}

/// What the client asked of the connection, and what the caller adds to the answer.
pub struct ClientSide<'r> {
    /// `x-request-id`.
    pub request_id: &'r str,
    /// The client speaks HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// The client wants to keep the connection.
    pub keep_alive: bool,
    /// When the request head arrived.
    pub started: Instant,
    /// Headers to add to whatever answer goes out (e.g. `x-ratelimit-*`).
    pub extra_headers: Vec<(&'static str, Vec<u8>)>,
}

/// Runs the exchange: attempts deployments until one answers and relays its answer to the
/// client. Errors before the response head reached the client are answered as JSON here.
pub async fn execute(
    worker: &Worker,
    plan: Plan,
    rd: &mut ClientRead,
    wr: &mut ClientWrite,
    client: ClientSide<'_>,
    rec: &mut AccessRecord,
) -> Exchanged {
    let mut watch = ClientWatch::new(rd);
    let keep_alive = exchange(worker, plan, wr, &mut watch, &client, rec).await;
    // A client that closes after its answer was written is not a cancellation: only a race
    // lost during the exchange (recorded there) is.
    let (early, gone) = watch.finish().await;
    Exchanged {
        keep_alive: keep_alive && !gone,
        early,
    }
}

/// Why an attempt failed, kept to answer with when no attempt succeeds.
enum Failed {
    /// The upstream could not be reached or timed out.
    Transport(UpstreamError),
    /// The upstream answered with an error worth retrying; its answer, whole.
    Answer {
        head: ResponseHead,
        body: Vec<u8>,
        deployment: String,
        translation: Option<Translation>,
    },
}

/// State of the attempt loop.
struct Attempts {
    group: usize,
    visited: Vec<usize>,
    fallbacks: VecDeque<usize>,
    tried: Vec<usize>,
    refused: Vec<usize>,
    in_group: u32,
    deployments_tried: usize,
    last: Option<Failed>,
}

impl Attempts {
    /// Moves to the next fallback group (the context-window fallback first when asked).
    fn next_group(&mut self, groups: &[ModelGroup], context: bool) -> bool {
        let context_fallback = context
            .then(|| {
                groups
                    .get(self.group)
                    .and_then(|g| g.context_window_fallback)
            })
            .flatten()
            .filter(|g| !self.visited.contains(g));
        let next = context_fallback.or_else(|| {
            while let Some(g) = self.fallbacks.pop_front() {
                if !self.visited.contains(&g) {
                    return Some(g);
                }
            }
            None
        });
        let Some(next) = next else { return false };
        self.group = next;
        self.visited.push(next);
        if let Some(g) = groups.get(next) {
            // A fallback's own fallbacks come after the ones already queued.
            self.fallbacks.extend(g.fallbacks.iter().copied());
        }
        self.tried.clear();
        self.refused.clear();
        self.in_group = 0;
        true
    }
}

async fn exchange(
    worker: &Worker,
    plan: Plan,
    wr: &mut ClientWrite,
    watch: &mut ClientWatch<'_>,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let cfg = &worker.shared.config;
    let Some(first) = cfg.models.get(plan.group) else {
        let err = GatewayError::new(ErrorKind::Internal, "model group vanished");
        return answer_error(wr, err, client, rec).await;
    };
    let longest_provider_timeout = first
        .deployments
        .iter()
        .filter_map(|d| cfg.providers.get(d.provider))
        .map(|p| p.total_timeout_ms)
        .max()
        .unwrap_or(600_000);
    let budget = plan
        .deadline_override
        .or(first.retry.deadline)
        .unwrap_or(Duration::from_millis(longest_provider_timeout));
    let deadline = client.started + budget;
    if let Some(h) = worker
        .routes
        .borrow_mut()
        .group(plan.group)
        .and_then(|g| g.hedger.as_mut())
    {
        h.on_request();
    }
    let mut state = Attempts {
        group: plan.group,
        visited: vec![plan.group],
        fallbacks: first.fallbacks.iter().copied().collect(),
        tried: Vec::new(),
        refused: Vec::new(),
        in_group: 0,
        deployments_tried: 0,
        last: None,
    };
    loop {
        let now = Instant::now();
        let Some(group) = cfg.models.get(state.group) else {
            break;
        };
        if now >= deadline {
            if state.last.is_none() {
                state.last = Some(Failed::Transport(UpstreamError::TotalTimeout(
                    "the request deadline".into(),
                )));
            }
            break;
        }
        let pick =
            worker
                .routes
                .borrow_mut()
                .pick(state.group, now, fastrand::u64(..), &state.tried);
        let i = match pick {
            Some(Pick::Deployment(i)) if !state.refused.contains(&i) => i,
            Some(Pick::AllOpen(wait)) if state.last.is_none() && state.fallbacks.is_empty() => {
                // Nothing could even be tried: fail fast.
                rec.route = Some((state.group, usize::MAX));
                let err = GatewayError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!(
                        "every deployment of `{}` is unavailable (circuit breakers open)",
                        group.name
                    ),
                )
                .with_retry_after(retry::retry_after_secs(wait));
                return answer_error(wr, err, client, rec).await;
            }
            _ => {
                if state.next_group(&cfg.models, false) {
                    worker.metrics.fallback(state.visited[0]);
                    continue;
                }
                break;
            }
        };
        if !worker.routes.borrow_mut().start(state.group, i, now) {
            state.refused.push(i);
            continue;
        }
        state.in_group += 1;
        if !state.tried.contains(&i) {
            state.tried.push(i);
            state.deployments_tried += 1;
        }
        let outcome = attempt(worker, &plan, &mut state, i, deadline, watch, client, rec).await;
        let failure = match outcome {
            AttemptEnd::Answered(sent, started, translation) => {
                return deliver(
                    worker,
                    &plan,
                    sent,
                    translation,
                    (state.group, i),
                    started,
                    wr,
                    watch,
                    client,
                    rec,
                    deadline,
                )
                .await;
            }
            AttemptEnd::ClientGone => {
                rec.client_cancelled = true;
                rec.status = 499;
                rec.error = Some("client_gone".into());
                return false;
            }
            AttemptEnd::Refused(err) => return answer_error(wr, err, client, rec).await,
            AttemptEnd::Failed(f) => f,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let others = worker
            .routes
            .borrow()
            .has_untried(state.group, Instant::now(), &state.tried);
        match group.retry.decide(
            state.in_group,
            &failure,
            remaining,
            others,
            fastrand::u64(..),
        ) {
            Decision::Retry { after } => {
                worker.metrics.retry(plan.group);
                if !after.is_zero() && watch.race(monoio::time::sleep(after)).await.is_none() {
                    rec.client_cancelled = true;
                    rec.status = 499;
                    rec.error = Some("client_gone".into());
                    return false;
                }
            }
            Decision::Fallback => {
                let context = failure == Failure::ContextWindow;
                if state.next_group(&cfg.models, context) {
                    worker.metrics.fallback(plan.group);
                    continue;
                }
                break;
            }
            Decision::GiveUp => break,
        }
    }
    answer_last(worker, state, &plan.inspected.model, wr, client, rec).await
}

/// How one attempt ended.
enum AttemptEnd {
    /// An answer to give the client (success, or an error not worth retrying).
    Answered(Sent, Instant, Option<Translation>),
    /// A failure to decide on; recorded in the state's `last`.
    Failed(Failure),
    /// The client went away.
    ClientGone,
    /// The request cannot be sent to this deployment's dialect: answer this (a 400).
    Refused(GatewayError),
}

/// Sends the request to deployment `i` of the current group (hedged when the group says so)
/// and classifies the result.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    worker: &Worker,
    plan: &Plan,
    state: &mut Attempts,
    i: usize,
    deadline: Instant,
    watch: &mut ClientWatch<'_>,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> AttemptEnd {
    let cfg = &worker.shared.config;
    let g = state.group;
    let Some(group) = cfg.models.get(g) else {
        return AttemptEnd::Failed(Failure::Connect);
    };
    let started = Instant::now();
    let mut primary = match Launch::new(worker, plan, group, i, client, rec) {
        Ok(l) => l,
        Err(e) => {
            worker.routes.borrow_mut().cancel(g, i);
            return AttemptEnd::Refused(e);
        }
    };
    let hedge_delay = (state.in_group == 1)
        .then(|| {
            worker
                .routes
                .borrow_mut()
                .group(g)
                .and_then(|s| s.hedger.as_ref())
                .and_then(|h| h.delay())
        })
        .flatten();
    let fut_a = attempt::send(
        worker,
        primary.provider,
        std::mem::take(&mut primary.request),
        deadline,
    );
    let raced = match hedge_delay {
        None => watch.race(fut_a).await.map(|r| (primary, r, None)),
        Some(delay) => {
            watch
                .race(hedged(
                    worker, plan, state, group, primary, fut_a, delay, deadline, client, rec,
                ))
                .await
        }
    };
    let Some((winner, result, loser)) = raced else {
        worker.routes.borrow_mut().cancel(g, i);
        rec.attempts
            .push(primary_attempt_gone(i, started, client, group, rec));
        return AttemptEnd::ClientGone;
    };
    if let Some(loser) = loser {
        worker.routes.borrow_mut().cancel(g, loser.index);
        rec.attempts
            .push(loser.record(started, client, 0, Some("hedge_cancelled")));
    }
    // The access log and metrics name the deployment of the latest attempt.
    rec.route = Some((g, winner.index));
    rec.deployment = Some(winner.label.clone());
    let provider_name = cfg
        .providers
        .get(winner.provider)
        .map_or("?", |p| p.name.as_str());
    let mut sent = match result {
        Ok(sent) => sent,
        Err(e) => {
            let failure = match e {
                UpstreamError::ConnectTimeout(_)
                | UpstreamError::FirstByteTimeout(_)
                | UpstreamError::IdleTimeout(_)
                | UpstreamError::TotalTimeout(_) => Failure::Timeout,
                _ => Failure::Connect,
            };
            worker
                .metrics
                .upstream_error(cfg, winner.provider, e.label());
            tracing::debug!(provider = provider_name, error = %e, "upstream attempt failed");
            worker.routes.borrow_mut().finish(
                cfg,
                g,
                winner.index,
                Instant::now(),
                Outcome::failure(started.elapsed()),
            );
            rec.attempts
                .push(winner.record(started, client, 0, Some(e.label())));
            state.last = Some(Failed::Transport(e));
            return AttemptEnd::Failed(failure);
        }
    };
    let ttfb = started.elapsed();
    if let Some(h) = worker
        .routes
        .borrow_mut()
        .group(g)
        .and_then(|s| s.hedger.as_mut())
    {
        h.record_ttfb(ttfb);
    }
    let status = sent.head.status;
    let may_be_context = status == 400 && group.context_window_fallback.is_some();
    if !group.retry.retry_on.contains(&status) && !may_be_context {
        rec.attempts
            .push(winner.record(started, client, status, None));
        rec.route = Some((g, winner.index));
        rec.deployment = Some(winner.label.clone());
        return AttemptEnd::Answered(sent, started, winner.translation);
    }
    // An error answer: read it whole to decide (and to pass it on if it is the last word).
    let read = attempt::read_small_body(&mut sent, provider_name, MAX_ERROR_BODY, deadline);
    let body = match watch.race(read).await {
        None => {
            worker.routes.borrow_mut().cancel(g, winner.index);
            return AttemptEnd::ClientGone;
        }
        Some(Ok((body, reusable))) => {
            if reusable {
                if let Some(p) = cfg.providers.get(winner.provider) {
                    worker.pool.borrow_mut().put(
                        winner.provider,
                        sent.conn,
                        Instant::now(),
                        p.pool_max_idle,
                    );
                }
            }
            body
        }
        Some(Err(e)) => {
            worker.routes.borrow_mut().finish(
                cfg,
                g,
                winner.index,
                Instant::now(),
                Outcome::failure(started.elapsed()),
            );
            rec.attempts
                .push(winner.record(started, client, status, Some(e.label())));
            state.last = Some(Failed::Transport(e));
            return AttemptEnd::Failed(Failure::Connect);
        }
    };
    let failure = if status == 400 {
        if !retry::is_context_window_error(status, &body) {
            // A plain client error: the deployment did its job. Hand the answer over.
            worker.routes.borrow_mut().finish(
                cfg,
                g,
                winner.index,
                Instant::now(),
                Outcome::success(started.elapsed()),
            );
            rec.attempts
                .push(winner.record(started, client, status, None));
            rec.route = Some((g, winner.index));
            rec.deployment = Some(winner.label.clone());
            let head = sent.head.clone();
            state.last = Some(Failed::Answer {
                head,
                body,
                deployment: winner.label.clone(),
                translation: winner.translation,
            });
            return AttemptEnd::Failed(Failure::Status {
                code: 400,
                retry_after: None,
            });
        }
        Failure::ContextWindow
    } else {
        let retry_after = sent
            .head
            .header("retry-after-ms")
            .and_then(retry::parse_retry_after_ms)
            .or_else(|| {
                sent.head
                    .header("retry-after")
                    .and_then(retry::parse_retry_after)
            });
        Failure::Status {
            code: status,
            retry_after,
        }
    };
    worker.routes.borrow_mut().finish(
        cfg,
        g,
        winner.index,
        Instant::now(),
        if failure == Failure::ContextWindow {
            Outcome::success(started.elapsed())
        } else {
            Outcome::failure(started.elapsed())
        },
    );
    rec.attempts.push(winner.record(
        started,
        client,
        status,
        Some(if failure == Failure::ContextWindow {
            "context_window"
        } else {
            "status"
        }),
    ));
    state.last = Some(Failed::Answer {
        head: sent.head,
        body,
        deployment: winner.label.clone(),
        translation: winner.translation,
    });
    AttemptEnd::Failed(failure)
}

/// One launched attempt: where it went and what it sent.
struct Launch {
    index: usize,
    provider: usize,
    label: String,
    request: Vec<u8>,
    span_id: Option<[u8; 8]>,
    translation: Option<Translation>,
}

impl Launch {
    fn new(
        worker: &Worker,
        plan: &Plan,
        group: &ModelGroup,
        index: usize,
        client: &ClientSide<'_>,
        rec: &AccessRecord,
    ) -> Result<Launch, GatewayError> {
        let cfg = &worker.shared.config;
        let dep = group.deployments.get(index);
        let provider = dep.map_or(0, |d| d.provider);
        let span_id = rec.trace.map(|_| crate::trace::new_span_id());
        let traceparent = rec.trace.zip(span_id).map(|(t, s)| t.traceparent_for(s));
        let (request, translation) = match (dep, cfg.providers.get(provider)) {
            (Some(d), Some(p)) => {
                build_request(plan, p, d, client.request_id, traceparent.as_deref())?
            }
            _ => {
                return Err(GatewayError::new(
                    ErrorKind::Internal,
                    "deployment vanished",
                ))
            }
        };
        Ok(Launch {
            index,
            provider,
            label: dep.map_or_else(String::new, |d| d.label.clone()),
            request,
            span_id,
            translation,
        })
    }

    fn record(
        &self,
        started: Instant,
        client: &ClientSide<'_>,
        status: u16,
        error: Option<&'static str>,
    ) -> Attempt {
        let since = |t: Instant| t.saturating_duration_since(client.started).as_micros() as u64;
        Attempt {
            deployment: self.label.clone(),
            provider: self.provider,
            span_id: self.span_id,
            start_us: since(started),
            end_us: since(Instant::now()),
            status,
            error,
        }
    }
}

fn primary_attempt_gone(
    i: usize,
    started: Instant,
    client: &ClientSide<'_>,
    group: &ModelGroup,
    _rec: &AccessRecord,
) -> Attempt {
    let since = |t: Instant| t.saturating_duration_since(client.started).as_micros() as u64;
    let dep = group.deployments.get(i);
    Attempt {
        deployment: dep.map_or_else(String::new, |d| d.label.clone()),
        provider: dep.map_or(0, |d| d.provider),
        span_id: None,
        start_us: since(started),
        end_us: since(Instant::now()),
        status: 0,
        error: Some("client_gone"),
    }
}

type Hedged = (Launch, Result<Sent, UpstreamError>, Option<Launch>);

/// Sends to the primary; if it has not answered after `delay` and the hedge budget allows,
/// sends the same request to a second deployment. The first to answer wins and the other is
/// dropped, which closes its connection.
#[allow(clippy::too_many_arguments)]
async fn hedged<F>(
    worker: &Worker,
    plan: &Plan,
    state: &mut Attempts,
    group: &ModelGroup,
    primary: Launch,
    fut_a: F,
    delay: Duration,
    deadline: Instant,
    client: &ClientSide<'_>,
    rec: &AccessRecord,
) -> Hedged
where
    F: std::future::Future<Output = Result<Sent, UpstreamError>>,
{
    let mut fut_a = std::pin::pin!(fut_a);
    monoio::select! {
        biased;
        r = &mut fut_a => return (primary, r, None),
        _ = monoio::time::sleep(delay) => {}
    }
    let g = state.group;
    let now = Instant::now();
    let allowed = {
        let mut routes = worker.routes.borrow_mut();
        let budget = routes
            .group(g)
            .and_then(|s| s.hedger.as_mut())
            .is_some_and(|h| h.should_hedge());
        let mut exclude = state.tried.clone();
        exclude.push(primary.index);
        match routes.pick(g, now, fastrand::u64(..), &exclude) {
            Some(Pick::Deployment(j)) if budget && j != primary.index => {
                routes.start(g, j, now).then_some(j)
            }
            _ => None,
        }
    };
    let Some(j) = allowed else {
        let r = fut_a.await;
        return (primary, r, None);
    };
    worker.metrics.hedge(plan.group);
    state.tried.push(j);
    state.deployments_tried += 1;
    let Ok(mut second) = Launch::new(worker, plan, group, j, client, rec) else {
        worker.routes.borrow_mut().cancel(g, j);
        let r = fut_a.await;
        return (primary, r, None);
    };
    let mut fut_b = std::pin::pin!(attempt::send(
        worker,
        second.provider,
        std::mem::take(&mut second.request),
        deadline
    ));
    let first_done = monoio::select! {
        biased;
        r = &mut fut_a => (true, r),
        r = &mut fut_b => (false, r),
    };
    match first_done {
        (true, Ok(sent)) => (primary, Ok(sent), Some(second)),
        (false, Ok(sent)) => (second, Ok(sent), Some(primary)),
        // The first to finish failed: the other one is the answer, whatever it is.
        (true, Err(_)) => {
            let r = fut_b.await;
            (second, r, Some(primary))
        }
        (false, Err(_)) => {
            let r = fut_a.await;
            (primary, r, Some(second))
        }
    }
}

/// No attempt succeeded: answer with the last failure.
async fn answer_last(
    worker: &Worker,
    state: Attempts,
    model: &str,
    wr: &mut ClientWrite,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let err = match state.last {
        Some(Failed::Answer {
            head,
            body,
            deployment,
            translation,
        }) => {
            // The provider's own answer, passed through whole (in the client's dialect).
            rec.status = head.status;
            rec.deployment = Some(deployment.clone());
            let body = match translation {
                None => body,
                Some(t) => {
                    let id = format!("gen-{}", client.request_id);
                    let ctx = ResponseContext {
                        model,
                        id: &id,
                        created: unix_now(),
                        include_usage: false,
                    };
                    dialect::translate_response(t.from, t.to, head.status, &body, &ctx).0
                }
            };
            let mut wire = Vec::with_capacity(512 + body.len());
            write_response_head(
                &mut wire,
                &head,
                &deployment,
                ClientFraming::Length(body.len() as u64),
                client.keep_alive,
                client,
                None,
                translation.map(|_| &b"application/json"[..]),
            );
            wire.extend_from_slice(&body);
            rec.bytes_out = wire.len() as u64;
            let (res, _) = wr.write_all(wire).await;
            rec.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
            return res.is_ok() && client.keep_alive;
        }
        Some(Failed::Transport(e)) => {
            rec.error = Some(e.label().into());
            if state.deployments_tried >= 2 || state.visited.len() >= 2 {
                // Several deployments or groups failed: the service is unavailable for now.
                GatewayError::new(
                    ErrorKind::UpstreamUnavailable,
                    format!("every deployment tried failed; last: {e}"),
                )
                .with_retry_after(1)
            } else {
                e.to_gateway()
            }
        }
        None => GatewayError::new(
            ErrorKind::UpstreamUnavailable,
            "no deployment is available for this model",
        )
        .with_retry_after(1),
    };
    if let Some(w) = worker.shared.config.models.get(state.group) {
        tracing::debug!(model = %w.name, error = %err, "request failed after all attempts");
    }
    answer_error(wr, err, client, rec).await
}

/// Hands a successful (or final) answer to the client: small JSON bodies are buffered so the
/// cost can go in a header; everything else is relayed as it arrives.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    worker: &Worker,
    plan: &Plan,
    mut sent: Sent,
    translation: Option<Translation>,
    (g, i): (usize, usize),
    started: Instant,
    wr: &mut ClientWrite,
    watch: &mut ClientWatch<'_>,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
    deadline: Instant,
) -> bool {
    let shared = &worker.shared;
    let cfg = &shared.config;
    let Some(dep) = cfg.models.get(g).and_then(|m| m.deployments.get(i)) else {
        return false;
    };
    let Some(provider) = cfg.providers.get(dep.provider) else {
        return false;
    };
    let upstream_model = if dep.model == "*" {
        plan.inspected.model.as_str()
    } else {
        dep.model.as_str()
    };
    rec.upstream_reused = Some(sent.conn.reuses > 0);
    rec.status = sent.head.status;
    let head_wait = started.elapsed();
    let keep_alive = client.keep_alive && !shared.is_draining();
    let is_sse = sent.head.is_event_stream() && (200..300).contains(&sent.head.status);
    rec.stream = is_sse;
    let success = (200..300).contains(&sent.head.status);
    let answer_id = format!(
        "{}{}",
        if plan.endpoint == ApiEndpoint::Messages {
            "msg_"
        } else {
            "chatcmpl-"
        },
        client.request_id
    );
    let ctx = ResponseContext {
        model: &plan.inspected.model,
        id: &answer_id,
        created: unix_now(),
        include_usage: plan.inspected.include_usage,
    };

    // Whole answers, read first and written in one go: another dialect's (any framing; it is
    // translated), or a small OpenAI JSON body (so its cost can go in a header).
    let whole = match (translation, is_sse, sent.head.body) {
        (Some(_), false, _) => Some(16 << 20),
        (None, false, BodyFraming::Length(n)) if success && n <= MAX_BUFFERED_BODY => {
            Some(MAX_BUFFERED_BODY as usize)
        }
        _ => None,
    };
    if let Some(max) = whole {
        let read = attempt::read_small_body(&mut sent, &provider.name, max, deadline);
        let (body, reusable) = match watch.race(read).await {
            None => {
                rec.client_cancelled = true;
                worker.routes.borrow_mut().cancel(g, i);
                return false;
            }
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                rec.error = Some(e.label().into());
                worker.routes.borrow_mut().finish(
                    cfg,
                    g,
                    i,
                    Instant::now(),
                    Outcome::failure(started.elapsed()),
                );
                return answer_error(wr, e.to_gateway(), client, rec).await;
            }
        };
        let (body, used, content_type) = match translation {
            Some(t) => {
                let (out, used) =
                    dialect::translate_response(t.from, t.to, sent.head.status, &body, &ctx);
                (out, used, Some(&b"application/json"[..]))
            }
            None => {
                let used = usage::from_body(&body);
                (body, used, None)
            }
        };
        rec.upstream_us = Some(started.elapsed().as_micros() as u64);
        rec.first_token_us = Some(
            Instant::now()
                .saturating_duration_since(client.started)
                .as_micros() as u64,
        );
        rec.usage = used;
        rec.cost_micros = used.and_then(|u| cost_of(shared, upstream_model, &u));
        let cost_text = rec
            .cost_micros
            .filter(|_| success)
            .map(sluice_core::cost::format_usd);
        let mut wire = Vec::with_capacity(1024 + body.len());
        write_response_head(
            &mut wire,
            &sent.head,
            &dep.label,
            if client.http10 {
                ClientFraming::Close
            } else {
                ClientFraming::Length(body.len() as u64)
            },
            keep_alive,
            client,
            cost_text.as_deref(),
            content_type,
        );
        wire.extend_from_slice(&body);
        rec.bytes_out = wire.len() as u64;
        let (res, _) = wr.write_all(wire).await;
        rec.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
        if res.is_err() {
            rec.client_cancelled = true;
        }
        worker.routes.borrow_mut().finish(
            cfg,
            g,
            i,
            Instant::now(),
            Outcome::success(started.elapsed()),
        );
        if reusable {
            worker.pool.borrow_mut().put(
                dep.provider,
                sent.conn,
                Instant::now(),
                provider.pool_max_idle,
            );
        }
        return res.is_ok() && keep_alive && !client.http10;
    }

    let mode = match translation {
        Some(t) if is_sse => {
            BodyMode::Translate(Box::new(StreamTranslator::new(t.from, t.to, ctx)))
        }
        _ if is_sse => BodyMode::Sse(SseScanner::new(plan.strip_usage)),
        _ => BodyMode::Buffered(Vec::new()),
    };
    let client_framing = if client.http10 {
        ClientFraming::Close
    } else {
        match sent.head.body {
            BodyFraming::Empty => ClientFraming::Length(0),
            BodyFraming::Length(n) if !is_sse => ClientFraming::Length(n),
            _ => ClientFraming::Chunked,
        }
    };
    let mut wire = Vec::with_capacity(1024 + sent.buf.len());
    write_response_head(
        &mut wire,
        &sent.head,
        &dep.label,
        client_framing,
        keep_alive,
        client,
        None,
        translation.map(|_| &b"text/event-stream"[..]),
    );
    let limits = BodyLimits {
        idle: Duration::from_millis(provider.idle_timeout_ms),
        deadline,
        provider: provider.name.clone(),
    };
    if is_sse {
        worker.metrics.open_streams.increment(1.0);
    }
    let Sent {
        mut conn,
        head,
        buf,
        body_at,
    } = sent;
    let end = Relay::new(&mut conn, wr, watch, client_framing, mode, limits)
        .run(head.body, wire, buf, body_at)
        .await;
    if is_sse {
        worker.metrics.open_streams.decrement(1.0);
    }
    rec.ttfb_us = end
        .first_write
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    rec.first_token_us = end
        .first_data
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    rec.upstream_us = Some((head_wait + end.upstream_wait).as_micros() as u64);
    rec.bytes_out = end.bytes_out;
    rec.usage = end.usage.or_else(|| {
        (is_sse && end.data_events > 0).then(|| Usage {
            input_tokens: inspect::estimate_prompt_tokens(plan.body.len()),
            output_tokens: end.data_events,
            estimated: true,
            ..Usage::default()
        })
    });
    rec.cost_micros = rec.usage.and_then(|u| cost_of(shared, upstream_model, &u));
    if let Some(e) = &end.error {
        rec.error = Some(e.label().into());
        worker.metrics.upstream_error(cfg, dep.provider, e.label());
        tracing::debug!(provider = %provider.name, error = %e, "upstream body failed");
    }
    if end.client_gone {
        rec.client_cancelled = true;
    }
    if let Some(a) = rec.attempts.last_mut() {
        a.end_us = Instant::now()
            .saturating_duration_since(client.started)
            .as_micros() as u64;
        a.error = end
            .error
            .as_ref()
            .map(UpstreamError::label)
            .or(end.client_gone.then_some("client_gone"));
    }
    // The balancer learns time to first token for streams, total time otherwise.
    let latency = match (is_sse, end.first_data) {
        (true, Some(t)) => t.saturating_duration_since(started),
        _ => started.elapsed(),
    };
    {
        let mut routes = worker.routes.borrow_mut();
        if end.client_gone {
            routes.cancel(g, i);
        } else if end.error.is_some() {
            routes.finish(cfg, g, i, Instant::now(), Outcome::failure(latency));
        } else {
            routes.finish(cfg, g, i, Instant::now(), Outcome::success(latency));
        }
    }
    if end.upstream_reusable && head.keep_alive {
        worker
            .pool
            .borrow_mut()
            .put(dep.provider, conn, Instant::now(), provider.pool_max_idle);
    }
    keep_alive && end.client_reusable
}

/// What `usage` cost at `model`'s price; `None` for a model with no known price.
fn cost_of(shared: &crate::state::Shared, model: &str, usage: &Usage) -> Option<u64> {
    shared
        .prices
        .price(model)
        .map(|p| sluice_core::cost::cost_micros(&p, usage))
}

/// Seconds since the epoch, for the `created` of translated answers.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[allow(clippy::too_many_arguments)]
/// Writes the response head: the upstream's end-to-end headers (its request id renamed so the
/// client sees ours), which deployment answered, the cost when known, and the caller's extras.
fn write_response_head(
    wire: &mut Vec<u8>,
    head: &ResponseHead,
    deployment: &str,
    framing: ClientFraming,
    keep_alive: bool,
    client: &ClientSide<'_>,
    cost_usd: Option<&str>,
    content_type: Option<&[u8]>,
) {
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(24 + client.extra_headers.len());
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    for (name, value) in head.headers() {
        // A translated body has our content type, and never the upstream's encoding.
        let replaced = content_type.is_some()
            && (name.eq_ignore_ascii_case("content-type")
                || name.eq_ignore_ascii_case("content-encoding"));
        if is_hop_by_hop(name) || replaced {
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            headers.push(("x-upstream-request-id", value));
        } else {
            headers.push((name, value));
        }
    }
    headers.push(("x-sluice-deployment", deployment.as_bytes()));
    if let Some(cost) = cost_usd {
        headers.push(("x-sluice-cost-usd", cost.as_bytes()));
    }
    for (name, value) in &client.extra_headers {
        headers.push((name, value));
    }
    write_head(
        wire,
        head.status,
        &headers,
        framing,
        keep_alive,
        client.request_id,
    );
}

/// Answers an error as JSON when nothing was sent to the client yet.
async fn answer_error(
    wr: &mut ClientWrite,
    err: GatewayError,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let keep_alive = client.keep_alive && !err.kind.closes_connection();
    let extra: Vec<(&str, &[u8])> = client
        .extra_headers
        .iter()
        .map(|(n, v)| (*n, v.as_slice()))
        .collect();
    let bytes = respond::error_with(&err, &extra, keep_alive, client.request_id);
    rec.status = err.status();
    rec.bytes_out = bytes.len() as u64;
    let (res, _) = wr.write_all(bytes).await;
    if res.is_ok() {
        rec.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
    }
    keep_alive && res.is_ok()
}
