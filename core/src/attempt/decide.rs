//! Deciding after a failed attempt: retry (with backoff), fall back, or answer with the last
//! failure; and ending the loop with a terminal command.

use crate::error::{ErrorKind, GatewayError};
use crate::retry::{self, Decision, Failure};

use super::{AttemptLoop, Command, Env, Last, Phase};

impl AttemptLoop {
    /// After a failed attempt (nothing else in flight): retry, fall back or answer.
    pub(super) fn decide(&mut self, env: &mut Env<'_>, failure: &Failure) {
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
    pub(super) fn terminal(&mut self, cmd: Command) -> Command {
        self.phase = Phase::Done(None);
        self.hedge_at = None;
        cmd
    }

    /// No attempt succeeded: answer with the last failure.
    pub(super) fn answer_last(&mut self) -> Command {
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
