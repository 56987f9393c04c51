//! The `Routed` stage's state: per model group a balancer (with its own peak-EWMA view), one
//! circuit breaker per deployment and a hedger, and the decisions made on them — which
//! deployment next, may it be sent to, how did it go.
//!
//! Sans-IO like the rest of core: time and randomness come in as arguments. The proxy keeps
//! one [`RouteTable`] per worker and publishes [`RouteTable::drain_changes`] to its gauges and
//! log; the attempt loop ([`crate::attempt`]) is the only caller on the request path.

use std::time::{Duration, Instant};

use crate::balance::{Balancer, Outcome};
use crate::breaker::{Admission, Breaker, BreakerState, Transition};
use crate::config::{Config, ModelGroup};
use crate::hedge::Hedger;

/// One deployment of one model group: indices into [`Config::models`] and the group's
/// `deployments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Model group index.
    pub group: usize,
    /// Deployment index within the group.
    pub deployment: usize,
}

/// One group's routing state.
#[derive(Clone, Debug)]
pub struct GroupRoutes {
    /// Chooses deployments.
    pub balancer: Balancer,
    /// One per deployment.
    pub breakers: Vec<Breaker>,
    /// When the group hedges.
    pub hedger: Option<Hedger>,
}

/// What a pick found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Use this deployment.
    Deployment(usize),
    /// Every deployment's breaker is open; the earliest reopens after this.
    AllOpen(Duration),
}

/// Something that changed a deployment's breaker, for the proxy to log and publish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// The deployment.
    pub target: Target,
    /// Its breaker's state after the change.
    pub state: BreakerState,
    /// The transition, when the breaker changed state (`None`: published for freshness).
    pub transition: Option<Transition>,
}

/// Every group's routing state, as one worker sees it.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    groups: Vec<GroupRoutes>,
    changes: Vec<Change>,
}

impl RouteTable {
    /// Fresh state for `config`.
    pub fn new(config: &Config) -> Self {
        let groups = config.models.iter().map(GroupRoutes::new).collect();
        RouteTable {
            groups,
            changes: Vec::new(),
        }
    }

    /// Takes over `old`'s state (built for `old_config`) for this one's `config`: each
    /// deployment's breaker, matched by group name and deployment label, and a group's
    /// balancer when its deployment list and strategy are unchanged. Every deployment is
    /// queued as a change so gauges show the carried state.
    pub fn carry_over(
        &mut self,
        old_config: &Config,
        old: &RouteTable,
        config: &Config,
        now: Instant,
    ) {
        for (g, (group, model)) in self.groups.iter_mut().zip(&config.models).enumerate() {
            let found = old_config
                .models
                .iter()
                .enumerate()
                .find(|(_, m)| m.name == model.name);
            if let Some((og, old_model)) = found {
                if let Some(old_group) = old.groups.get(og) {
                    group.carry_over(old_model, old_group, model);
                }
            }
            for (i, b) in group.breakers.iter().enumerate() {
                self.changes.push(Change {
                    target: Target {
                        group: g,
                        deployment: i,
                    },
                    state: b.state(now),
                    transition: None,
                });
            }
        }
    }

    /// The state of group `g`.
    pub fn group(&self, g: usize) -> Option<&GroupRoutes> {
        self.groups.get(g)
    }

    /// The state of group `g`, to change.
    pub fn group_mut(&mut self, g: usize) -> Option<&mut GroupRoutes> {
        self.groups.get_mut(g)
    }

    /// Chooses a deployment of group `g` whose breaker admits a request, preferring those
    /// not in `tried`. `None` when the group is unknown or empty.
    pub fn pick(&mut self, g: usize, now: Instant, roll: u64, tried: &[usize]) -> Option<Pick> {
        let group = self.groups.get_mut(g)?;
        let breakers = &group.breakers;
        let fresh = group.balancer.pick(now, roll, |i| {
            !tried.contains(&i) && breakers.get(i).is_some_and(|b| b.would_admit(now))
        });
        let any = || {
            group.balancer.pick(now, roll, |i| {
                breakers.get(i).is_some_and(|b| b.would_admit(now))
            })
        };
        if let Some(i) = fresh.or_else(any) {
            return Some(Pick::Deployment(i));
        }
        let wait = breakers
            .iter()
            .filter_map(|b| b.retry_after(now))
            .min()
            .unwrap_or(Duration::from_secs(1));
        Some(Pick::AllOpen(wait))
    }

    /// Whether group `g` has a deployment not in `tried` whose breaker admits a request.
    pub fn has_untried(&self, g: usize, now: Instant, tried: &[usize]) -> bool {
        self.groups.get(g).is_some_and(|group| {
            group
                .breakers
                .iter()
                .enumerate()
                .any(|(i, b)| !tried.contains(&i) && b.would_admit(now))
        })
    }

    /// Starts a request to `t`; `false` when its breaker refuses (a probe slot was taken
    /// meanwhile).
    pub fn start(&mut self, t: Target, now: Instant) -> bool {
        let Some(group) = self.groups.get_mut(t.group) else {
            return false;
        };
        let Some(breaker) = group.breakers.get_mut(t.deployment) else {
            return false;
        };
        if let Admission::Reject { .. } = breaker.admit(now) {
            return false;
        }
        let state = breaker.state(now);
        group.balancer.on_start(t.deployment, now);
        self.changes.push(Change {
            target: t,
            state,
            transition: None,
        });
        true
    }

    /// Records how the request to `t` went.
    pub fn finish(&mut self, t: Target, now: Instant, outcome: Outcome) {
        let Some(group) = self.groups.get_mut(t.group) else {
            return;
        };
        group.balancer.on_end(t.deployment, now, outcome);
        if let Some(b) = group.breakers.get_mut(t.deployment) {
            let transition = if outcome.success {
                b.on_success(now)
            } else {
                b.on_failure(now)
            };
            self.changes.push(Change {
                target: t,
                state: b.state(now),
                transition,
            });
        }
    }

    /// A request to `t` was abandoned (hedge loser, client gone): it no longer counts as in
    /// flight, and says nothing about the deployment's health.
    pub fn cancel(&mut self, t: Target) {
        if let Some(group) = self.groups.get_mut(t.group) {
            group.balancer.on_cancel(t.deployment);
        }
    }

    /// Feeds an active health-check result for provider `p` to the breakers of every
    /// deployment on it.
    pub fn health(&mut self, config: &Config, p: usize, ok: bool, now: Instant) {
        for (g, model) in config.models.iter().enumerate() {
            for (i, d) in model.deployments.iter().enumerate() {
                if d.provider != p {
                    continue;
                }
                let Some(b) = self.groups.get_mut(g).and_then(|s| s.breakers.get_mut(i)) else {
                    continue;
                };
                let transition = if ok {
                    b.on_success(now)
                } else {
                    b.on_failure(now)
                };
                self.changes.push(Change {
                    target: Target {
                        group: g,
                        deployment: i,
                    },
                    state: b.state(now),
                    transition,
                });
            }
        }
    }

    /// The breaker changes since the last call, oldest first.
    pub fn drain_changes(&mut self) -> std::vec::Drain<'_, Change> {
        self.changes.drain(..)
    }
}

impl GroupRoutes {
    fn new(g: &ModelGroup) -> Self {
        let weights: Vec<u32> = g.deployments.iter().map(|d| d.weight).collect();
        GroupRoutes {
            balancer: Balancer::with_config(g.strategy, &weights, &g.balance),
            breakers: g
                .deployments
                .iter()
                .map(|_| Breaker::new(g.breaker.clone()))
                .collect(),
            hedger: g.hedge.clone().map(Hedger::new),
        }
    }

    fn carry_over(&mut self, old_model: &ModelGroup, old: &GroupRoutes, model: &ModelGroup) {
        let labels = |m: &ModelGroup| {
            m.deployments
                .iter()
                .map(|d| (d.label.clone(), d.weight))
                .collect::<Vec<_>>()
        };
        if labels(model) == labels(old_model) && model.strategy == old_model.strategy {
            self.balancer = old.balancer.clone();
        }
        for (i, d) in model.deployments.iter().enumerate() {
            let Some(oi) = old_model
                .deployments
                .iter()
                .position(|o| o.label == d.label)
            else {
                continue;
            };
            if let (Some(b), Some(ob)) = (self.breakers.get_mut(i), old.breakers.get(oi)) {
                *b = ob.clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(text: &str) -> Config {
        Config::from_toml(text, &HashMap::new()).unwrap()
    }

    const TWO: &str = "auth = \"none\"\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\nbreaker = { consecutive_failures = 2, cooldown_ms = 1000 }\ndeployments = [{ provider = \"p\", model = \"a\" }, { provider = \"p\", model = \"b\" }]\n";

    #[test]
    fn breakers_trip_and_picks_avoid_them() {
        let cfg = config(TWO);
        let mut t = RouteTable::new(&cfg);
        let now = crate::balance::tests::t0();
        let a = Target {
            group: 0,
            deployment: 0,
        };
        for _ in 0..2 {
            assert!(t.start(a, now));
            t.finish(a, now, Outcome::failure(Duration::from_millis(1)));
        }
        let tripped: Vec<_> = t.drain_changes().filter_map(|c| c.transition).collect();
        assert!(matches!(tripped.as_slice(), [Transition::Tripped { .. }]));
        for roll in 0..50 {
            assert_eq!(t.pick(0, now, roll, &[]), Some(Pick::Deployment(1)));
        }
        assert!(!t.start(a, now), "an open breaker refuses");
        assert!(t.has_untried(0, now, &[0]));
        assert!(!t.has_untried(0, now, &[1]));
        let b = Target {
            group: 0,
            deployment: 1,
        };
        for _ in 0..2 {
            assert!(t.start(b, now));
            t.finish(b, now, Outcome::failure(Duration::from_millis(1)));
        }
        assert!(
            matches!(t.pick(0, now, 7, &[]), Some(Pick::AllOpen(w)) if w <= Duration::from_secs(1))
        );
        assert_eq!(t.pick(3, now, 7, &[]), None, "unknown group");
    }

    #[test]
    fn carry_over_keeps_breakers_by_label() {
        let cfg = config(TWO);
        let mut old = RouteTable::new(&cfg);
        let now = crate::balance::tests::t0();
        let b = Target {
            group: 0,
            deployment: 1,
        };
        for _ in 0..2 {
            old.start(b, now);
            old.finish(b, now, Outcome::failure(Duration::ZERO));
        }
        // The new config lists the deployments the other way round.
        let swapped = TWO.replace(
            "[{ provider = \"p\", model = \"a\" }, { provider = \"p\", model = \"b\" }]",
            "[{ provider = \"p\", model = \"b\" }, { provider = \"p\", model = \"a\" }]",
        );
        let new_cfg = config(&swapped);
        let mut new = RouteTable::new(&new_cfg);
        new.carry_over(&cfg, &old, &new_cfg, now);
        let states: Vec<_> = new
            .drain_changes()
            .map(|c| (c.target.deployment, c.state))
            .collect();
        assert!(matches!(states[0], (0, BreakerState::Open { .. })));
        assert_eq!(states[1], (1, BreakerState::Closed));
    }
}
