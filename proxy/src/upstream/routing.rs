//! Each worker's routing state: core's [`RouteTable`] (per model group a balancer with its own
//! peak-EWMA view, one circuit breaker per deployment, a hedger) and the gauges that show the
//! breakers to people. Share-nothing: nothing here is seen by another thread.
//!
//! Core decides and queues what changed; [`Routes::publish`] carries the changes to the
//! `sluice_circuit_breaker_state` gauges and the log. Call it after every use of the table.

use std::time::Instant;

use metrics::Gauge;
use sluice_core::breaker::{BreakerState, Transition};
use sluice_core::config::Config;
use sluice_core::route::{RouteTable, Target};

/// A worker's routing table and its gauges.
pub struct Routes {
    /// The decisions' state.
    pub table: RouteTable,
    /// One gauge per deployment, by group.
    gauges: Vec<Vec<Gauge>>,
}

impl Routes {
    /// Fresh state for `config`, as worker `worker` sees it.
    pub fn new(config: &Config, worker: usize) -> Self {
        let gauges = config
            .models
            .iter()
            .map(|g| {
                g.deployments
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
                    .collect()
            })
            .collect();
        Routes {
            table: RouteTable::new(config),
            gauges,
        }
    }

    /// Takes over `old`'s breakers and balancers (see [`RouteTable::carry_over`]).
    pub fn carry_over(&mut self, old_config: &Config, old: &Routes, config: &Config) {
        self.table
            .carry_over(old_config, &old.table, config, Instant::now());
        self.publish(config);
    }

    /// Feeds a health-check result for provider `p` to the breakers of its deployments.
    pub fn health(&mut self, config: &Config, p: usize, ok: bool, now: Instant) {
        self.table.health(config, p, ok, now);
        self.publish(config);
    }

    /// Shows what changed in the table since the last call: gauges, and a log line per
    /// breaker transition.
    pub fn publish(&mut self, config: &Config) {
        for change in self.table.drain_changes() {
            let Target { group, deployment } = change.target;
            if let Some(gauge) = self.gauges.get(group).and_then(|g| g.get(deployment)) {
                gauge.set(f64::from(match change.state {
                    BreakerState::Closed => 0u8,
                    BreakerState::HalfOpen => 1,
                    BreakerState::Open { .. } => 2,
                }));
            }
            if let Some(t) = &change.transition {
                log_transition(config, change.target, t);
            }
        }
    }
}

fn log_transition(config: &Config, target: Target, t: &Transition) {
    let deployment = config
        .models
        .get(target.group)
        .and_then(|m| m.deployments.get(target.deployment))
        .map_or("?", |d| d.label.as_str());
    match t {
        Transition::Closed => tracing::info!(deployment, "circuit breaker closed: {t}"),
        _ => tracing::warn!(deployment, "circuit breaker opened: {t}"),
    }
}
