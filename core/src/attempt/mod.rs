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
use crate::route::Target;

mod decide;
mod events;
mod pick;
mod protocol;
#[cfg(test)]
mod tests;

pub use protocol::{
    AttemptId, AttemptRecord, AttemptReport, Command, DeploymentLimiter, Env, Event, Relayed,
    TransportFailure, Unlimited,
};

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

    /// [`AttemptLoop::into_report`] for a loop kept in place (a driver's future): the report,
    /// borrowed (neither the loop, some 1 KiB, nor the report, 224 bytes, is moved out of the
    /// driver's state to be read).
    pub fn report(&self) -> &AttemptReport {
        &self.report
    }
}
