//! Each worker's routing state: core's [`RouteTable`] (per model group this worker's balancer
//! with its own peak-EWMA view and its hedger, over the circuit breakers and retry budget every
//! worker shares through [`SharedRoutes`]) and the metrics that show them to people.
//!
//! Core decides and queues what changed; [`Routes::publish`] carries the changes to the
//! `sluice_circuit_breaker_state` gauges, the panic and retry-budget counters and the log. Call
//! it after every use of the table. A breaker transition is returned to the worker whose report
//! made it, so each trip is logged once for the process; every worker's gauge follows the
//! shared state the next time it picks in that group.

use std::time::Instant;

use metrics::{Counter, Gauge};
use sluice_core::breaker::Transition;
use sluice_core::config::Config;
use sluice_core::route::{RouteTable, SharedRoutes, Target};

/// Per model group: panic picks, retries and hedges refused by the budget, requests
/// short-circuited for their caller alone.
struct GroupCounters {
    panics: Counter,
    budget_exhausted: Counter,
    isolated: Counter,
}

/// A worker's routing table and its gauges and counters.
pub struct Routes {
    /// The decisions' state.
    pub table: RouteTable,
    /// One gauge per deployment, by group.
    gauges: Vec<Vec<Gauge>>,
    /// By group.
    counters: Vec<GroupCounters>,
}

impl Routes {
    /// Fresh state for `config`, as worker `worker` sees it, over the shared breakers and
    /// budgets of its generation.
    pub fn new(config: &Config, worker: usize, shared: &SharedRoutes) -> Self {
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
        // Registered at zero, so every group's series exists from the start.
        let counters = config
            .models
            .iter()
            .map(|g| {
                let c = |name: &'static str| {
                    let c = metrics::counter!(name, "model" => g.name.clone());
                    c.increment(0);
                    c
                };
                GroupCounters {
                    panics: c("sluice_panic_total"),
                    budget_exhausted: c("sluice_retry_budget_exhausted_total"),
                    isolated: c("sluice_caller_short_circuited_total"),
                }
            })
            .collect();
        let mut routes = Routes {
            table: RouteTable::new(config, shared),
            gauges,
            counters,
        };
        // Show the shared breakers as they are (a reload carries open ones).
        routes
            .table
            .carry_over(config, &RouteTable::default(), config, Instant::now());
        routes.publish(config);
        routes
    }

    /// Takes over `old`'s balancers (see [`RouteTable::carry_over`]).
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

    /// Shows what changed in the table since the last call: gauges, counters, and a log line
    /// per breaker transition and per change of panic mode.
    pub fn publish(&mut self, config: &Config) {
        for change in self.table.drain_changes() {
            let Target { group, deployment } = change.target;
            if let Some(gauge) = self.gauges.get(group).and_then(|g| g.get(deployment)) {
                gauge.set(f64::from(change.state.gauge()));
            }
            if let Some(t) = &change.transition {
                log_transition(config, change.target, t);
            }
        }
        for (g, counts) in self.table.drain_counts() {
            if let Some(c) = self.counters.get(g) {
                c.panics.increment(counts.panics);
                c.budget_exhausted.increment(counts.budget_exhausted);
                c.isolated.increment(counts.isolated);
            }
            let model = config.models.get(g).map_or("?", |m| m.name.as_str());
            match counts.panic_mode {
                Some(true) => tracing::warn!(
                    model,
                    "panic mode: too few deployments admit requests; balancing over all of them, open breakers or not"
                ),
                Some(false) => tracing::info!(model, "panic mode over"),
                None => {}
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
