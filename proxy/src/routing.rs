//! Each worker's routing state: per model group a balancer (with its own peak-EWMA view),
//! one circuit breaker per deployment, and a hedger. Share-nothing: nothing here is seen by
//! another thread; breaker states are published to metrics for people to see.

use std::time::{Duration, Instant};

use metrics::Gauge;
use sluice_core::balance::{Balancer, Outcome};
use sluice_core::breaker::{Admission, Breaker, BreakerState, Transition};
use sluice_core::config::Config;
use sluice_core::hedge::Hedger;

/// One group's state.
pub struct GroupState {
    /// Chooses deployments.
    pub balancer: Balancer,
    /// One per deployment.
    pub breakers: Vec<Breaker>,
    /// When the group hedges.
    pub hedger: Option<Hedger>,
    gauges: Vec<Gauge>,
}

/// What a pick found.
pub enum Pick {
    /// Use this deployment.
    Deployment(usize),
    /// Every deployment's breaker is open; the earliest reopens after this.
    AllOpen(Duration),
}

/// A worker's routing state for every group.
pub struct Routes {
    groups: Vec<GroupState>,
}

impl Routes {
    /// Fresh state for `config`, as worker `worker` sees it.
    pub fn new(config: &Config, worker: usize) -> Self {
        let groups = config
            .models
            .iter()
            .map(|g| {
                let weights: Vec<u32> = g.deployments.iter().map(|d| d.weight).collect();
                GroupState {
                    balancer: Balancer::with_config(g.strategy, &weights, &g.balance),
                    breakers: g
                        .deployments
                        .iter()
                        .map(|_| Breaker::new(g.breaker.clone()))
                        .collect(),
                    hedger: g.hedge.clone().map(Hedger::new),
                    gauges: g
                        .deployments
                        .iter()
                        .map(|d| {
                            let gauge = metrics::gauge!(
                                "sluice_circuit_breaker_state",
                                "model" => g.name.clone(),
                                "deployment" => d.label.clone(),
                                "worker" => worker.to_string()
                            );
                            gauge.set(0.0);
                            gauge
                        })
                        .collect(),
                }
            })
            .collect();
        Routes { groups }
    }

    /// Takes over `old`'s state (built for `old_config`) for this one's `config`: each
    /// deployment's breaker, matched by group name and deployment label, and a group's
    /// balancer when its deployment list is unchanged.
    pub fn carry_over(&mut self, old_config: &Config, old: &Routes, config: &Config) {
        for (group, model) in self.groups.iter_mut().zip(&config.models) {
            let Some((og, old_model)) = old_config
                .models
                .iter()
                .enumerate()
                .find(|(_, m)| m.name == model.name)
            else {
                continue;
            };
            let Some(old_group) = old.groups.get(og) else {
                continue;
            };
            let labels = |m: &sluice_core::config::ModelGroup| {
                m.deployments
                    .iter()
                    .map(|d| (d.label.clone(), d.weight))
                    .collect::<Vec<_>>()
            };
            if labels(model) == labels(old_model) && model.strategy == old_model.strategy {
                group.balancer = old_group.balancer.clone();
            }
            for (i, d) in model.deployments.iter().enumerate() {
                let Some(oi) = old_model
                    .deployments
                    .iter()
                    .position(|o| o.label == d.label)
                else {
                    continue;
                };
                if let (Some(b), Some(ob)) = (group.breakers.get_mut(i), old_group.breakers.get(oi))
                {
                    *b = ob.clone();
                }
            }
        }
        let now = Instant::now();
        for g in 0..self.groups.len() {
            let n = self.groups.get(g).map_or(0, |s| s.breakers.len());
            for i in 0..n {
                self.publish(g, i, now);
            }
        }
    }

    /// The state of group `g`.
    pub fn group(&mut self, g: usize) -> Option<&mut GroupState> {
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

    /// Starts a request to deployment `i` of group `g`; `false` when its breaker refuses (a
    /// probe slot was taken meanwhile).
    pub fn start(&mut self, g: usize, i: usize, now: Instant) -> bool {
        let Some(group) = self.groups.get_mut(g) else {
            return false;
        };
        let Some(breaker) = group.breakers.get_mut(i) else {
            return false;
        };
        if let Admission::Reject { .. } = breaker.admit(now) {
            return false;
        }
        group.balancer.on_start(i, now);
        self.publish(g, i, now);
        true
    }

    /// Records how the request to deployment `i` of group `g` went.
    pub fn finish(&mut self, config: &Config, g: usize, i: usize, now: Instant, outcome: Outcome) {
        let Some(group) = self.groups.get_mut(g) else {
            return;
        };
        group.balancer.on_end(i, now, outcome);
        let transition = match group.breakers.get_mut(i) {
            Some(b) if outcome.success => b.on_success(now),
            Some(b) => b.on_failure(now),
            None => None,
        };
        if let Some(t) = transition {
            log_transition(config, g, i, &t);
        }
        self.publish(g, i, now);
    }

    /// Feeds a health-check result for provider `p` to the breakers of its deployments.
    pub fn health(&mut self, config: &Config, p: usize, ok: bool, now: Instant) {
        for (g, group) in config.models.iter().enumerate() {
            for (i, d) in group.deployments.iter().enumerate() {
                if d.provider != p {
                    continue;
                }
                let transition = self
                    .groups
                    .get_mut(g)
                    .and_then(|s| s.breakers.get_mut(i))
                    .and_then(|b| {
                        if ok {
                            b.on_success(now)
                        } else {
                            b.on_failure(now)
                        }
                    });
                if let Some(t) = transition {
                    log_transition(config, g, i, &t);
                }
                self.publish(g, i, now);
            }
        }
    }

    /// A request to deployment `i` of group `g` was abandoned (hedge loser, client gone).
    pub fn cancel(&mut self, g: usize, i: usize) {
        if let Some(group) = self.groups.get_mut(g) {
            group.balancer.on_cancel(i);
        }
    }

    fn publish(&self, g: usize, i: usize, now: Instant) {
        let Some(group) = self.groups.get(g) else {
            return;
        };
        if let (Some(b), Some(gauge)) = (group.breakers.get(i), group.gauges.get(i)) {
            gauge.set(match b.state(now) {
                BreakerState::Closed => 0.0,
                BreakerState::HalfOpen => 1.0,
                BreakerState::Open { .. } => 2.0,
            });
        }
    }
}

fn log_transition(config: &Config, g: usize, i: usize, t: &Transition) {
    let deployment = config
        .models
        .get(g)
        .and_then(|m| m.deployments.get(i))
        .map_or("?", |d| d.label.as_str());
    match t {
        Transition::Closed => tracing::info!(deployment, "circuit breaker closed: {t}"),
        _ => tracing::warn!(deployment, "circuit breaker opened: {t}"),
    }
}
