//! What happens when an event comes in: an answer's head or error body, a transport failure,
//! a refused request, a timer (hedge delay, backoff ended), the client leaving.

use std::time::{Duration, Instant};

use crate::balance::Outcome;
use crate::error::GatewayError;
use crate::retry::Failure;
use crate::route::{Pick, Target};

use super::{AttemptId, AttemptLoop, Command, Env, Last, Live, Phase, TransportFailure};

impl AttemptLoop {
    pub(super) fn take_live(&mut self, id: AttemptId) -> Option<Live> {
        let at = self.live.iter().position(|l| l.id == id)?;
        Some(self.live.remove(at))
    }

    pub(super) fn end(
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
    pub(super) fn cancel_others(&mut self, env: &mut Env<'_>, label: &'static str) {
        for other in std::mem::take(&mut self.live) {
            env.routes.cancel(other.target);
            env.limits
                .settle(other.target, self.reserve_tokens, 0, env.now_ms);
            self.end(other.id, env.now, None, Some(label));
            self.queue.push(Command::Cancel { attempt: other.id });
        }
        self.hedge_at = None;
    }

    pub(super) fn on_head(
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

    pub(super) fn on_error_body(&mut self, env: &mut Env<'_>, id: AttemptId, context_window: bool) {
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

    pub(super) fn on_failed(&mut self, env: &mut Env<'_>, id: AttemptId, f: TransportFailure) {
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

    pub(super) fn on_refused(&mut self, env: &mut Env<'_>, id: AttemptId, error: GatewayError) {
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

    pub(super) fn on_timer(&mut self, env: &mut Env<'_>) {
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
    pub(super) fn hedge(&mut self, env: &mut Env<'_>) {
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

    pub(super) fn on_client_gone(&mut self, env: &mut Env<'_>) {
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
}
