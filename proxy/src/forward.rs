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
use sluice_core::config::ModelGroup;
use sluice_core::dialect::{self, ResponseContext};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::ResponseHead;
use sluice_core::retry::{self, Decision, Failure};

pub use crate::plan::{plan, Plan, Translation};

use crate::attempt::{self, Sent};
use crate::client_io::{ClientRead, ClientWrite};
use crate::deliver::{answer_error, deliver, unix_now, write_response_head};
use crate::log::{AccessRecord, Attempt};
use crate::plan::build_request;
use crate::relay::ClientWatch;
use crate::respond::ClientFraming;
use crate::routing::Pick;
use crate::state::Worker;
use crate::upstream::UpstreamError;

/// Largest error body read to decide on a retry (and passed through when it is the answer).
const MAX_ERROR_BODY: usize = 1 << 20;

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
    /// A deployment was skipped for its provider's limit; the shortest wait seen (`None`
    /// inside: the request is larger than a token limit).
    provider_limited: Option<Option<Duration>>,
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
    // Tokens held against a deployment's provider limit while an attempt runs.
    let reserve_tokens = sluice_core::inspect::estimate_prompt_tokens(plan.body.len())
        + plan
            .inspected
            .max_tokens
            .unwrap_or(cfg.limits.default_max_tokens);
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
        provider_limited: None,
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
        // The provider's own limits for this deployment: skip it rather than earn its 429.
        let limit = worker.shared.provider_limits.get(state.group, i).cloned();
        if let Some(l) = &limit {
            if let Err(wait) = l.take(reserve_tokens, crate::auth::now_ms()) {
                state.provider_limited = Some(match (state.provider_limited.flatten(), wait) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                });
                state.refused.push(i);
                if !state.tried.contains(&i) {
                    state.tried.push(i);
                }
                continue;
            }
        }
        if !worker.routes.borrow_mut().start(state.group, i, now) {
            if let Some(l) = &limit {
                l.release(reserve_tokens, crate::auth::now_ms());
            }
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
                let keep = deliver(
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
                if let Some(l) = &limit {
                    let used = rec.usage.map_or(0, |u| u.total_tokens());
                    l.settle(reserve_tokens, used, crate::auth::now_ms());
                }
                return keep;
            }
            AttemptEnd::ClientGone => {
                if let Some(l) = &limit {
                    l.settle(reserve_tokens, 0, crate::auth::now_ms());
                }
                rec.client_cancelled = true;
                rec.status = 499;
                rec.error = Some("client_gone".into());
                return false;
            }
            AttemptEnd::Refused(err) => {
                if let Some(l) = &limit {
                    l.release(reserve_tokens, crate::auth::now_ms());
                }
                return answer_error(wr, err, client, rec).await;
            }
            AttemptEnd::Failed(f) => {
                // The upstream produced nothing: its tokens go back (the request counts).
                if let Some(l) = &limit {
                    l.settle(reserve_tokens, 0, crate::auth::now_ms());
                }
                f
            }
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
        None => match state.provider_limited {
            Some(wait) => {
                let err = GatewayError::new(
                    ErrorKind::RateLimited,
                    "every deployment of this model is at its provider's rate limit",
                );
                match wait {
                    Some(w) => err.with_retry_after(retry::retry_after_secs(w)),
                    None => err,
                }
            }
            None => GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                "no deployment is available for this model",
            )
            .with_retry_after(1),
        },
    };
    if let Some(w) = worker.shared.config.models.get(state.group) {
        tracing::debug!(model = %w.name, error = %err, "request failed after all attempts");
    }
    answer_error(wr, err, client, rec).await
}
