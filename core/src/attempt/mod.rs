//! The `Attempting` stage: the request-level state machine that sends a request to the
//! deployments of its model group until one answers — balancer pick, circuit breakers,
//! provider limits, retries with backoff and `Retry-After`, fallback groups (the
//! context-window fallback first for prompts that do not fit), hedging, one deadline.
//!
//! Sans-IO in the quinn-proto style: the proxy feeds events in with
//! [`AttemptLoop::handle`] and carries out the [`Command`]s it takes from
//! [`AttemptLoop::poll`]; time and randomness come in through [`Env`].
//!
//! ```text
//! poll ─► Send(a) ──────────► handle(Head a) ─► Deliver(a)                 (worth keeping)
//!                                          └──► ReadErrorBody(a) ─► handle(ErrorBody a)
//!         Wait(until) ─► handle(Timer)   (hedge delay, backoff)     │
//!         Cancel(b)      (hedge loser)        handle(Failed a) ─────┤
//!                                                                   ▼
//!                         RetryPolicy::decide ─► Retry (Backoff, then Send) | Fallback | GiveUp
//!         PassThrough(a) | Fail(error) | Abandon        (no attempt worth keeping)
//! ```
//!
//! Call order: [`AttemptLoop::new`], then `poll` until it returns [`Command::Wait`] (carry out
//! every command before), wait for an event, `handle` it, `poll` again — until a terminal
//! command ([`Command::Deliver`], [`Command::PassThrough`], [`Command::Fail`],
//! [`Command::Abandon`]). After `Deliver`, report how the relay ended with
//! [`AttemptLoop::settle_delivered`]; then [`AttemptLoop::into_report`] gives what settlement
//! needs. Every attempt happens before anything reaches the client, so a stream is retried
//! only before its first byte.
//!
//! Every provider-limit take ([`DeploymentLimiter::take`]) is settled or released exactly
//! once, and every balancer start is finished or cancelled exactly once, whatever the order of
//! events (see the property test).
//!
//! Resilience rules applied here (the state lives in [`crate::route`]): the request's caller
//! identity goes with every outcome to the breakers (blast-radius guard) and every pick (a
//! caller short-circuited alone gets 503 `upstream_unavailable` with `Retry-After`); a failure
//! to reach the deployment is reported as such ([`TransportFailure::unreachable`]); each retry
//! and hedge spends the group's retry budget, and a retry the budget refuses moves on to the
//! fallback groups or answers; when nothing in the group would take the request (all known
//! down), the answer is 503 with `Retry-After` at once, not a retry.

use std::collections::VecDeque;

use smallvec::SmallVec;
use std::time::{Duration, Instant};

use crate::balance::Outcome;
use crate::config::Config;
use crate::error::{ErrorKind, GatewayError};
use crate::retry::{self, Decision, Failure};
use crate::route::{Pick, RouteTable, Target};

#[cfg(test)]
mod tests;

/// The limiter backend for deployments (the providers' own `rpm`/`tpm`): a request is sent to
/// a deployment only after a take succeeds, and every take is settled or released once.
pub trait DeploymentLimiter {
    /// Takes one request and `tokens` tokens of `t`'s limits, all or nothing. On refusal, how
    /// long until it could succeed (`None`: never, the request is larger than a limit).
    /// Deployments without limits always succeed.
    fn take(&self, t: Target, tokens: u64, now_ms: u64) -> Result<(), Option<Duration>>;
    /// Gives back a take whose request was never sent.
    fn release(&self, t: Target, tokens: u64, now_ms: u64);
    /// Settles a sent request with the tokens it really used.
    fn settle(&self, t: Target, reserved: u64, used: u64, now_ms: u64);
}

/// A limiter with no limits.
pub struct Unlimited;

impl DeploymentLimiter for Unlimited {
    fn take(&self, _: Target, _: u64, _: u64) -> Result<(), Option<Duration>> {
        Ok(())
    }
    fn release(&self, _: Target, _: u64, _: u64) {}
    fn settle(&self, _: Target, _: u64, _: u64, _: u64) {}
}

/// What the loop works with at each step: the config, this worker's routing state, the
/// deployment limiter, the time and a source of randomness.
pub struct Env<'a> {
    /// The config generation the request runs on.
    pub config: &'a Config,
    /// This worker's balancers, breakers and hedgers.
    pub routes: &'a mut RouteTable,
    /// The providers' limits per deployment.
    pub limits: &'a dyn DeploymentLimiter,
    /// Now, for the balancer, breakers and timers.
    pub now: Instant,
    /// Now in the limiter's milliseconds.
    pub now_ms: u64,
    /// Uniformly random numbers (balancer rolls, backoff jitter).
    pub rng: &'a mut dyn FnMut() -> u64,
}

/// An attempt of this request, numbered from 0 in the order they were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttemptId(pub usize);

/// What the proxy must do next.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Build the request for `target` (in its provider's dialect), send it and read the
    /// response head; report [`Event::Head`], [`Event::Failed`] or [`Event::Refused`].
    Send {
        /// The attempt.
        attempt: AttemptId,
        /// Where to.
        target: Target,
        /// A hedge: a second copy of the request while the first still runs.
        hedge: bool,
    },
    /// Read the error answer of `attempt` whole (a bounded size) and keep it; report
    /// [`Event::ErrorBody`] or [`Event::Failed`].
    ReadErrorBody {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Drop `attempt` (a hedge loser): closing its connection cancels it upstream.
    Cancel {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Nothing to do until an attempt reports, the client leaves, or `until` passes (then
    /// report [`Event::Timer`]).
    Wait {
        /// When to report [`Event::Timer`]; `None`: only events.
        until: Option<Instant>,
    },
    /// Terminal: hand `attempt`'s answer to the client; then call
    /// [`AttemptLoop::settle_delivered`].
    Deliver {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Terminal: answer with the error answer kept for `attempt` (the upstream's own words).
    PassThrough {
        /// The attempt.
        attempt: AttemptId,
    },
    /// Terminal: answer with this error.
    Fail(GatewayError),
    /// Terminal: the client went away; close.
    Abandon,
}

/// A transport failure of an attempt, as the proxy classified it.
#[derive(Clone, Debug, PartialEq)]
pub struct TransportFailure {
    /// Connect or timeout, for the retry policy.
    pub failure: Failure,
    /// What to answer when this is the last word (502 or 504).
    pub error: GatewayError,
    /// A short label for logs and metrics (`connect`, `first_byte_timeout`, ...).
    pub label: &'static str,
}

impl TransportFailure {
    /// Whether the deployment could not be reached at all (`connect`, `connect_timeout`,
    /// `resolve`, `tls`): the provider's failure whoever asked, unlike a timeout or a broken
    /// exchange, which may be the request's own doing.
    pub fn unreachable(&self) -> bool {
        matches!(
            self.label,
            "connect" | "connect_timeout" | "resolve" | "tls"
        )
    }
}

/// What happened.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// `attempt`'s response head arrived.
    Head {
        /// The attempt.
        attempt: AttemptId,
        /// Its status.
        status: u16,
        /// Its `retry-after-ms` or `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
    /// The error answer asked for with [`Command::ReadErrorBody`] was read.
    ErrorBody {
        /// The attempt.
        attempt: AttemptId,
        /// The body says the prompt does not fit the model
        /// ([`retry::is_context_window_error`]).
        context_window: bool,
    },
    /// `attempt` failed before a head (or while its error body was read).
    Failed {
        /// The attempt.
        attempt: AttemptId,
        /// How.
        failure: TransportFailure,
    },
    /// The request cannot be expressed in `attempt`'s dialect: answer `error` (a 400).
    Refused {
        /// The attempt.
        attempt: AttemptId,
        /// The answer.
        error: GatewayError,
    },
    /// The time of the last [`Command::Wait`] passed.
    Timer,
    /// The client went away.
    ClientGone,
}

/// How the relay of a delivered answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relayed {
    /// The body reached the client whole.
    Complete,
    /// The upstream failed mid-body (the client got an SSE error event or a cut body).
    UpstreamFailed(&'static str),
    /// The client went away.
    ClientGone,
}

/// One attempt, for the access log and traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Where it went.
    pub target: Target,
    /// When it was sent.
    pub started: Instant,
    /// When it ended (`None` while running).
    pub ended: Option<Instant>,
    /// The upstream's status, 0 when none arrived.
    pub status: u16,
    /// Why it failed or stopped, if it did.
    pub error: Option<&'static str>,
}

/// What settlement needs from the attempt loop.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttemptReport {
    /// Every attempt, in the order sent.
    pub attempts: SmallVec<[AttemptRecord; 2]>,
    /// The group and deployment that gave the last word (the deployment is `None` when the
    /// request failed before any could be tried).
    pub route: Option<(usize, Option<usize>)>,
    /// Retries made (after a backoff or at once).
    pub retries: u32,
    /// Fallback groups entered.
    pub fallbacks: u32,
    /// Hedges sent.
    pub hedges: u32,
    /// Retries and hedges the group's retry budget refused.
    pub budget_refused: u32,
    /// Label of the failure that decided the answer (`connect`, `client_gone`, ...).
    pub error: Option<&'static str>,
    /// The client went away before an answer was chosen.
    pub client_gone: bool,
}

/// An attempt in flight.
#[derive(Clone, Copy, Debug)]
struct Live {
    id: AttemptId,
    target: Target,
}

/// Where the loop is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Choose a deployment and send.
    Pick,
    /// One or two attempts in flight (the hedge timer maybe armed).
    InFlight,
    /// Reading the error answer of this attempt.
    ReadingBody(AttemptId, Option<Duration>),
    /// Waiting out a backoff.
    Backoff(Instant),
    /// An answer was chosen (or the client left); `Some` while a delivered attempt awaits
    /// [`AttemptLoop::settle_delivered`].
    Done(Option<AttemptId>),
}

/// Why the last attempt failed, kept to answer with when nothing succeeds.
#[derive(Clone, Debug)]
enum Last {
    /// The upstream answered with an error; the proxy keeps the answer.
    Answer(AttemptId),
    /// Transport failure.
    Transport(TransportFailure),
}

/// The attempt loop of one request. See the module docs for the call order.
#[derive(Debug)]
pub struct AttemptLoop {
    /// Who asked (a hash of the key id), for the breakers' blast-radius guard.
    caller: Option<u64>,
    /// Nothing in the current group would take the request, for this long (all known down,
    /// or the caller short-circuited): answered as 503 with `Retry-After`.
    blocked: Option<Duration>,
    deadline: Instant,
    reserve_tokens: u64,
    first_group: usize,
    group: usize,
    visited: SmallVec<[usize; 4]>,
    fallbacks: VecDeque<usize>,
    tried: SmallVec<[usize; 8]>,
    refused: SmallVec<[usize; 8]>,
    in_group: u32,
    deployments_tried: usize,
    last: Option<Last>,
    /// A deployment was skipped for its provider's limit; the shortest wait seen (`None`
    /// inside: the request is larger than a token limit).
    provider_limited: Option<Option<Duration>>,
    live: SmallVec<[Live; 2]>,
    hedge_at: Option<Instant>,
    phase: Phase,
    /// Commands to hand out before deciding anything else, oldest first (a few at most).
    queue: SmallVec<[Command; 3]>,
    report: AttemptReport,
    /// The request body is streamed from the client: never two attempts at once (no hedge).
    streamed: bool,
    /// A streamed body went out past what the gateway holds: it cannot be sent again, so the
    /// attempt that carried it is the last.
    spent: bool,
}

impl AttemptLoop {
    /// A loop for a request of `caller` (a stable hash of its key id; `None` without keys) to
    /// model group `group`, which must be answered by `deadline`, and which holds
    /// `reserve_tokens` against each deployment's token limit while it runs.
    pub fn new(
        env: &mut Env<'_>,
        group: usize,
        deadline: Instant,
        reserve_tokens: u64,
        caller: Option<u64>,
    ) -> Self {
        let fallbacks = env
            .config
            .models
            .get(group)
            .map(|g| g.fallbacks.iter().copied().collect())
            .unwrap_or_default();
        env.routes.on_request(group, env.now);
        AttemptLoop {
            caller,
            blocked: None,
            deadline,
            reserve_tokens,
            first_group: group,
            group,
            visited: smallvec::smallvec![group],
            fallbacks,
            tried: SmallVec::new(),
            refused: SmallVec::new(),
            in_group: 0,
            deployments_tried: 0,
            last: None,
            provider_limited: None,
            live: SmallVec::new(),
            hedge_at: None,
            phase: Phase::Pick,
            queue: SmallVec::new(),
            report: AttemptReport::default(),
            streamed: false,
            spent: false,
        }
    }

    /// The request's body is streamed from the client rather than held whole (a large
    /// upload): attempts never run side by side (no hedging), and once
    /// [`AttemptLoop::body_spent`] is called no further attempt is made.
    pub fn streamed_body(&mut self) {
        self.streamed = true;
        self.hedge_at = None;
    }

    /// The streamed body went out past the part the gateway holds, so it cannot be replayed:
    /// whatever the current attempt ends with is the answer (no retry, no fallback). Until
    /// then (a connect failure, a refused connection) the loop may still try elsewhere.
    pub fn body_spent(&mut self) {
        self.spent = true;
    }

    /// The request's deadline: `started` plus the client's `x-sluice-deadline-ms`, else the
    /// group's `retry.deadline_ms`, else the longest total timeout of its providers.
    pub fn deadline_for(
        config: &Config,
        group: usize,
        started: Instant,
        client_deadline: Option<Duration>,
    ) -> Instant {
        let g = config.models.get(group);
        let longest_provider_timeout = g
            .into_iter()
            .flat_map(|g| &g.deployments)
            .filter_map(|d| config.providers.get(d.provider))
            .map(|p| p.total_timeout_ms)
            .max()
            .unwrap_or(600_000);
        let budget = client_deadline
            .or(g.and_then(|g| g.retry.deadline))
            .unwrap_or(Duration::from_millis(longest_provider_timeout));
        started + budget
    }

    /// When `attempt` was sent.
    pub fn started(&self, attempt: AttemptId) -> Option<Instant> {
        self.report.attempts.get(attempt.0).map(|a| a.started)
    }

    /// When the request must be answered by.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The model group the request asked for.
    pub fn first_group(&self) -> usize {
        self.first_group
    }

    /// The deployment `attempt` went to.
    pub fn target(&self, attempt: AttemptId) -> Option<Target> {
        self.report.attempts.get(attempt.0).map(|a| a.target)
    }

    /// The next command. Call until it returns [`Command::Wait`] or a terminal command.
    pub fn poll(&mut self, env: &mut Env<'_>) -> Command {
        loop {
            if !self.queue.is_empty() {
                let c = self.queue.remove(0);
                return c;
            }
            match self.phase {
                Phase::Pick => {
                    if let Some(c) = self.pick(env) {
                        return c;
                    }
                }
                Phase::InFlight => {
                    return Command::Wait {
                        until: self.hedge_at,
                    }
                }
                Phase::Backoff(until) => return Command::Wait { until: Some(until) },
                Phase::ReadingBody(..) | Phase::Done(_) => return Command::Wait { until: None },
            }
        }
    }

    /// Feeds an event in. Events about attempts that are no longer running are ignored.
    pub fn handle(&mut self, env: &mut Env<'_>, event: Event) {
        match event {
            Event::Head {
                attempt,
                status,
                retry_after,
            } => self.on_head(env, attempt, status, retry_after),
            Event::ErrorBody {
                attempt,
                context_window,
            } => self.on_error_body(env, attempt, context_window),
            Event::Failed { attempt, failure } => self.on_failed(env, attempt, failure),
            Event::Refused { attempt, error } => self.on_refused(env, attempt, error),
            Event::Timer => self.on_timer(env),
            Event::ClientGone => self.on_client_gone(env),
        }
    }

    /// Settles the delivered attempt once its relay ended: the balancer and breaker learn
    /// `latency` (time to first token for streams, total time otherwise) and the outcome, and
    /// the deployment's limiter the tokens `used`.
    pub fn settle_delivered(
        &mut self,
        env: &mut Env<'_>,
        relayed: Relayed,
        latency: Duration,
        used: u64,
    ) {
        let Phase::Done(Some(id)) = self.phase else {
            return;
        };
        self.phase = Phase::Done(None);
        let Some(t) = self.target(id) else { return };
        match relayed {
            Relayed::Complete => {
                env.routes
                    .finish(t, env.now, Outcome::success(latency), self.caller)
            }
            Relayed::UpstreamFailed(label) => {
                env.routes
                    .finish(t, env.now, Outcome::failure(latency), self.caller);
                self.end(id, env.now, None, Some(label));
                self.report.error = Some(label);
            }
            Relayed::ClientGone => {
                env.routes.cancel(t);
                self.end(id, env.now, None, Some("client_gone"));
                self.report.client_gone = true;
            }
        }
        if let Some(a) = self.report.attempts.get_mut(id.0) {
            a.ended = Some(env.now);
        }
        env.limits.settle(t, self.reserve_tokens, used, env.now_ms);
    }

    /// What settlement needs. Call after a terminal command (and `settle_delivered`).
    pub fn into_report(self) -> AttemptReport {
        self.report
    }

    // -- picking ---------------------------------------------------------------------------

    /// One step of choosing where to send; `None` to loop again (another group, a skipped
    /// deployment).
    fn pick(&mut self, env: &mut Env<'_>) -> Option<Command> {
        let now = env.now;
        if now >= self.deadline {
            if self.last.is_none() {
                self.last = Some(Last::Transport(TransportFailure {
                    failure: Failure::Timeout,
                    error: GatewayError::new(
                        ErrorKind::UpstreamTimeout,
                        "upstream error: the request deadline exceeded the total timeout",
                    ),
                    label: "total_timeout",
                }));
            }
            return Some(self.answer_last());
        }
        let roll = (env.rng)();
        let i = match env
            .routes
            .pick(self.group, now, roll, &self.tried, self.caller)
        {
            Some(Pick::Deployment(i)) if !self.refused.contains(&i) => i,
            Some(found @ (Pick::AllOpen(wait) | Pick::Isolated(wait)))
                if self.last.is_none() && self.fallbacks.is_empty() =>
            {
                // Nothing could even be tried: fail fast.
                let name = env
                    .config
                    .models
                    .get(self.group)
                    .map_or("?", |g| g.name.as_str());
                self.report.route = Some((self.group, None));
                let why = match found {
                    Pick::Isolated(_) => format!(
                        "requests with this key to `{name}` keep failing; they are paused for this key alone"
                    ),
                    _ => format!(
                        "every deployment of `{name}` is unavailable (circuit breakers open)"
                    ),
                };
                let err = GatewayError::new(ErrorKind::UpstreamUnavailable, why)
                    .with_retry_after(retry::retry_after_secs(wait));
                return Some(self.terminal(Command::Fail(err)));
            }
            Some(Pick::AllOpen(wait) | Pick::Isolated(wait)) => {
                // Known down (or this caller paused) after a failure: no retry loop.
                self.blocked.get_or_insert(wait);
                if self.next_group(env, false) {
                    self.report.fallbacks += 1;
                    return None;
                }
                return Some(self.answer_last());
            }
            _ => {
                if self.next_group(env, false) {
                    self.report.fallbacks += 1;
                    return None;
                }
                return Some(self.answer_last());
            }
        };
        let target = Target {
            group: self.group,
            deployment: i,
        };
        // The provider's own limits for this deployment: skip it rather than earn its 429.
        if let Err(wait) = env.limits.take(target, self.reserve_tokens, env.now_ms) {
            self.provider_limited = Some(match (self.provider_limited.flatten(), wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
            self.refused.push(i);
            if !self.tried.contains(&i) {
                self.tried.push(i);
            }
            return None;
        }
        if !env.routes.start(target, now) {
            env.limits.release(target, self.reserve_tokens, env.now_ms);
            self.refused.push(i);
            return None;
        }
        self.in_group += 1;
        if !self.tried.contains(&i) {
            self.tried.push(i);
            self.deployments_tried += 1;
        }
        self.hedge_at = (self.in_group == 1 && !self.streamed)
            .then(|| {
                env.routes
                    .group(self.group)
                    .and_then(|g| g.hedger.as_ref())
                    .and_then(|h| h.delay())
            })
            .flatten()
            .map(|d| now + d);
        self.phase = Phase::InFlight;
        Some(self.launch(target, now, false))
    }

    /// Moves to the next fallback group (the context-window fallback first when asked).
    fn next_group(&mut self, env: &mut Env<'_>, context: bool) -> bool {
        let config = env.config;
        let context_fallback = context
            .then(|| {
                config
                    .models
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
        // Its first attempt there is a request to that group, not a retry.
        env.routes.on_request(next, env.now);
        self.blocked = None;
        if let Some(g) = config.models.get(next) {
            // A fallback's own fallbacks come after the ones already queued.
            self.fallbacks.extend(g.fallbacks.iter().copied());
        }
        self.tried.clear();
        self.refused.clear();
        self.in_group = 0;
        true
    }

    fn launch(&mut self, target: Target, now: Instant, hedge: bool) -> Command {
        let id = AttemptId(self.report.attempts.len());
        self.report.attempts.push(AttemptRecord {
            target,
            started: now,
            ended: None,
            status: 0,
            error: None,
        });
        self.live.push(Live { id, target });
        Command::Send {
            attempt: id,
            target,
            hedge,
        }
    }

    // -- events ----------------------------------------------------------------------------

    fn take_live(&mut self, id: AttemptId) -> Option<Live> {
        let at = self.live.iter().position(|l| l.id == id)?;
        Some(self.live.remove(at))
    }

    fn end(
        &mut self,
        id: AttemptId,
        now: Instant,
        status: Option<u16>,
        error: Option<&'static str>,
    ) {
        if let Some(a) = self.report.attempts.get_mut(id.0) {
            a.ended = Some(now);
            if let Some(s) = status {
                a.status = s;
            }
            if error.is_some() {
                a.error = error;
            }
        }
    }

    /// Cancels every other attempt in flight (hedge losers): they were sent, so they count as
    /// requests to their deployment, with no tokens.
    fn cancel_others(&mut self, env: &mut Env<'_>, label: &'static str) {
        for other in std::mem::take(&mut self.live) {
            env.routes.cancel(other.target);
            env.limits
                .settle(other.target, self.reserve_tokens, 0, env.now_ms);
            self.end(other.id, env.now, None, Some(label));
            self.queue.push(Command::Cancel { attempt: other.id });
        }
        self.hedge_at = None;
    }

    fn on_head(
        &mut self,
        env: &mut Env<'_>,
        id: AttemptId,
        status: u16,
        retry_after: Option<Duration>,
    ) {
        if self.phase != Phase::InFlight {
            return;
        }
        let Some(live) = self.take_live(id) else {
            return;
        };
        self.cancel_others(env, "hedge_cancelled");
        let now = env.now;
        let started = self.started(id).unwrap_or(now);
        if let Some(h) = env
            .routes
            .group_mut(live.target.group)
            .and_then(|g| g.hedger.as_mut())
        {
            h.record_ttfb(now.saturating_duration_since(started));
        }
        // The access log and metrics name the deployment of the latest attempt.
        self.report.route = Some((live.target.group, Some(live.target.deployment)));
        if let Some(a) = self.report.attempts.get_mut(id.0) {
            a.status = status;
        }
        let Some(group) = env.config.models.get(live.target.group) else {
            return;
        };
        let may_be_context = status == 400 && group.context_window_fallback.is_some();
        if !group.retry.retry_on.contains(&status) && !may_be_context {
            self.end(id, now, Some(status), None);
            self.phase = Phase::Done(Some(id));
            self.queue.push(Command::Deliver { attempt: id });
            return;
        }
        // An error answer: read it whole to decide (and to pass it on if it is the last word).
        self.live.push(live);
        self.phase = Phase::ReadingBody(id, retry_after);
        self.queue.push(Command::ReadErrorBody { attempt: id });
    }

    fn on_error_body(&mut self, env: &mut Env<'_>, id: AttemptId, context_window: bool) {
        let Phase::ReadingBody(reading, retry_after) = self.phase else {
            return;
        };
        if reading != id {
            return;
        }
        let Some(live) = self.take_live(id) else {
            return;
        };
        let now = env.now;
        let latency = now.saturating_duration_since(self.started(id).unwrap_or(now));
        let status = self.report.attempts.get(id.0).map_or(0, |a| a.status);
        let (failure, outcome, label) = if status == 400 && !context_window {
            // A plain client error: the deployment did its job; the answer is the last word.
            (
                Failure::Status {
                    code: 400,
                    retry_after: None,
                },
                Outcome::success(latency),
                None,
            )
        } else if status == 400 {
            (
                Failure::ContextWindow,
                Outcome::success(latency),
                Some("context_window"),
            )
        } else {
            (
                Failure::Status {
                    code: status,
                    retry_after,
                },
                Outcome::failure(latency),
                Some("status"),
            )
        };
        env.routes.finish(live.target, now, outcome, self.caller);
        env.limits
            .settle(live.target, self.reserve_tokens, 0, env.now_ms);
        self.end(id, now, Some(status), label);
        self.last = Some(Last::Answer(id));
        self.decide(env, &failure);
    }

    fn on_failed(&mut self, env: &mut Env<'_>, id: AttemptId, f: TransportFailure) {
        let reading = matches!(self.phase, Phase::ReadingBody(r, _) if r == id);
        if self.phase != Phase::InFlight && !reading {
            return;
        }
        let Some(live) = self.take_live(id) else {
            return;
        };
        let now = env.now;
        let latency = now.saturating_duration_since(self.started(id).unwrap_or(now));
        if f.unreachable() {
            env.routes.unreachable(live.target, now, latency);
        } else {
            env.routes
                .finish(live.target, now, Outcome::failure(latency), self.caller);
        }
        env.limits
            .settle(live.target, self.reserve_tokens, 0, env.now_ms);
        self.end(id, now, None, Some(f.label));
        if !self.live.is_empty() {
            // The hedge partner is still running: its answer is the request's, whatever it is.
            return;
        }
        self.report.route = Some((live.target.group, Some(live.target.deployment)));
        // A failure while reading an error body is a connection failure.
        let failure = if reading { Failure::Connect } else { f.failure };
        self.last = Some(Last::Transport(f));
        self.decide(env, &failure);
    }

    fn on_refused(&mut self, env: &mut Env<'_>, id: AttemptId, error: GatewayError) {
        if self.phase != Phase::InFlight {
            return;
        }
        let Some(live) = self.take_live(id) else {
            return;
        };
        env.routes.cancel(live.target);
        env.limits
            .release(live.target, self.reserve_tokens, env.now_ms);
        self.end(id, env.now, None, Some("refused"));
        if !self.live.is_empty() {
            // A hedge that cannot be expressed: the first attempt carries on alone.
            return;
        }
        self.report.route = Some((live.target.group, Some(live.target.deployment)));
        let cmd = self.terminal(Command::Fail(error));
        self.queue.push(cmd);
    }

    fn on_timer(&mut self, env: &mut Env<'_>) {
        match self.phase {
            Phase::Backoff(until) if env.now >= until => self.phase = Phase::Pick,
            Phase::InFlight if self.hedge_at.is_some_and(|t| env.now >= t) => {
                self.hedge_at = None;
                self.hedge(env);
            }
            _ => {}
        }
    }

    /// The first attempt has not answered within the hedge delay: send the same request to a
    /// second deployment if the hedge budget allows.
    fn hedge(&mut self, env: &mut Env<'_>) {
        let [primary] = self.live[..] else { return };
        if self.streamed {
            return;
        }
        let g = self.group;
        let now = env.now;
        let budget = env
            .routes
            .group_mut(g)
            .and_then(|s| s.hedger.as_mut())
            .is_some_and(|h| h.should_hedge());
        let mut exclude = self.tried.clone();
        exclude.push(primary.target.deployment);
        if !budget {
            return;
        }
        let roll = (env.rng)();
        let j = match env.routes.pick(g, now, roll, &exclude, self.caller) {
            Some(Pick::Deployment(j)) if j != primary.target.deployment => j,
            _ => return,
        };
        if !env.routes.try_retry(g, now) {
            self.report.budget_refused += 1;
            return;
        }
        let target = Target {
            group: g,
            deployment: j,
        };
        if env
            .limits
            .take(target, self.reserve_tokens, env.now_ms)
            .is_err()
        {
            return;
        }
        if !env.routes.start(target, now) {
            env.limits.release(target, self.reserve_tokens, env.now_ms);
            return;
        }
        self.report.hedges += 1;
        if !self.tried.contains(&j) {
            self.tried.push(j);
            self.deployments_tried += 1;
        }
        let cmd = self.launch(target, now, true);
        self.queue.push(cmd);
    }

    fn on_client_gone(&mut self, env: &mut Env<'_>) {
        if matches!(self.phase, Phase::Done(_)) {
            return;
        }
        for live in std::mem::take(&mut self.live) {
            env.routes.cancel(live.target);
            env.limits
                .settle(live.target, self.reserve_tokens, 0, env.now_ms);
            self.end(live.id, env.now, None, Some("client_gone"));
        }
        self.hedge_at = None;
        self.report.client_gone = true;
        self.report.error = Some("client_gone");
        self.queue.clear();
        let cmd = self.terminal(Command::Abandon);
        self.queue.push(cmd);
    }

    // -- deciding --------------------------------------------------------------------------

    /// After a failed attempt (nothing else in flight): retry, fall back or answer.
    fn decide(&mut self, env: &mut Env<'_>, failure: &Failure) {
        let now = env.now;
        let remaining = self.deadline.saturating_duration_since(now);
        let others = env
            .routes
            .has_untried(self.group, now, &self.tried, self.caller);
        let Some(group) = env.config.models.get(self.group) else {
            let cmd = self.answer_last();
            self.queue.push(cmd);
            return;
        };
        let roll = (env.rng)();
        let mut decision = group
            .retry
            .decide(self.in_group, failure, remaining, others, roll);
        if self.spent {
            // The body cannot be sent again: the failure is the answer.
            decision = Decision::GiveUp;
        }
        if let Decision::Retry { .. } = decision {
            if let Some(wait) = env.routes.blocked(self.group, now, self.caller) {
                // Nothing in the group would take it now (known down, or this caller
                // paused): no retry loop; answered as unavailable with `Retry-After`.
                self.blocked.get_or_insert(wait);
                decision = Decision::Fallback;
            } else if !env.routes.try_retry(self.group, now) {
                // Over the group's retry budget: no more attempts here.
                self.report.budget_refused += 1;
                decision = Decision::Fallback;
            }
        }
        match decision {
            Decision::Retry { after } => {
                self.report.retries += 1;
                self.phase = if after.is_zero() {
                    Phase::Pick
                } else {
                    Phase::Backoff(now + after)
                };
            }
            Decision::Fallback => {
                if self.next_group(env, *failure == Failure::ContextWindow) {
                    self.report.fallbacks += 1;
                    self.phase = Phase::Pick;
                } else {
                    let cmd = self.answer_last();
                    self.queue.push(cmd);
                }
            }
            Decision::GiveUp => {
                let cmd = self.answer_last();
                self.queue.push(cmd);
            }
        }
    }

    /// Enters the done phase with a terminal command.
    fn terminal(&mut self, cmd: Command) -> Command {
        self.phase = Phase::Done(None);
        self.hedge_at = None;
        cmd
    }

    /// No attempt succeeded: answer with the last failure.
    fn answer_last(&mut self) -> Command {
        let cmd = match self.last.take() {
            Some(Last::Answer(id)) => Command::PassThrough { attempt: id },
            Some(Last::Transport(f)) => {
                self.report.error = Some(f.label);
                // The upstream's own words, without our prefix.
                let detail = f
                    .error
                    .message
                    .strip_prefix("upstream error: ")
                    .unwrap_or(&f.error.message);
                if let Some(wait) = self.blocked {
                    // Known down: unavailable, come back when its cool-down ends.
                    Command::Fail(
                        GatewayError::new(
                            ErrorKind::UpstreamUnavailable,
                            format!("no deployment is available now; last: {detail}"),
                        )
                        .with_retry_after(retry::retry_after_secs(wait)),
                    )
                } else if self.deployments_tried >= 2 || self.visited.len() >= 2 {
                    // Several deployments or groups failed: unavailable for now.
                    Command::Fail(
                        GatewayError::new(
                            ErrorKind::UpstreamUnavailable,
                            format!("every deployment tried failed; last: {detail}"),
                        )
                        .with_retry_after(1),
                    )
                } else {
                    Command::Fail(f.error)
                }
            }
            None => match self.provider_limited {
                Some(wait) => {
                    let err = GatewayError::new(
                        ErrorKind::RateLimited,
                        "every deployment of this model is at its provider's rate limit",
                    );
                    Command::Fail(match wait {
                        Some(w) => err.with_retry_after(retry::retry_after_secs(w)),
                        None => err,
                    })
                }
                None => Command::Fail(
                    GatewayError::new(
                        ErrorKind::UpstreamUnavailable,
                        "no deployment is available for this model",
                    )
                    .with_retry_after(1),
                ),
            },
        };
        if self.report.route.is_none() {
            self.report.route = Some((self.group, None));
        }
        self.terminal(cmd)
    }
}
