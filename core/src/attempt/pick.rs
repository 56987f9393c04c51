//! Choosing where to send: the balancer's pick within the group (breakers, a caller paused
//! alone, the providers' own limits), moving on to the next fallback group, launching an
//! attempt.

use std::time::Instant;

use crate::error::{ErrorKind, GatewayError};
use crate::retry::{self, Failure};
use crate::route::{Pick, Target};

use super::{
    AttemptId, AttemptLoop, AttemptRecord, Command, Env, Last, Live, Phase, TransportFailure,
};

impl AttemptLoop {
    /// One step of choosing where to send; `None` to loop again (another group, a skipped
    /// deployment).
    pub(super) fn pick(&mut self, env: &mut Env<'_>) -> Option<Command> {
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
    pub(super) fn next_group(&mut self, env: &mut Env<'_>, context: bool) -> bool {
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

    pub(super) fn launch(&mut self, target: Target, now: Instant, hedge: bool) -> Command {
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
}
