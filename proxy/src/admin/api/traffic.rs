//! `GET /admin/live` (traffic over the last seconds, from the gateway's own counters: see
//! `admin::traffic`) and `GET /admin/health` (circuit breaker per deployment and the latest
//! active health check per provider).

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};
use sluice_core::breaker::BreakerState;

use super::{Answer, Res};
use crate::admin::traffic::{Snapshot, Window};
use crate::state::Shared;
use crate::upstream::health::{HEALTHY, UNHEALTHY};

static WINDOW: OnceLock<Mutex<Window>> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// When the admin listener started: the zero of the first window. Called at start-up.
pub fn started() -> Instant {
    *STARTED.get_or_init(Instant::now)
}

/// `GET /admin/live`.
pub(super) fn live(shared: &Shared) -> Res {
    let text = crate::telemetry::metrics::render();
    let snapshot = Snapshot::parse(&text);
    let now = Instant::now();
    let (seconds, models) = WINDOW
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .observe(now, snapshot, started());
    let sum =
        |f: fn(&crate::admin::traffic::ModelTraffic) -> f64| -> f64 { models.iter().map(f).sum() };
    Ok(Answer(
        200,
        json!({
            "object": "live",
            "window_s": seconds,
            "requests_per_s": sum(|m| m.requests_per_s),
            "errors_per_s": sum(|m| m.client_errors_per_s + m.server_errors_per_s),
            "tokens_per_s": sum(|m| m.input_tokens_per_s + m.output_tokens_per_s),
            "requests_total": sum(|m| m.requests_total),
            "errors_total": sum(|m| m.errors_total),
            "tokens_total": sum(|m| m.tokens_total),
            "in_flight": shared.active.load(std::sync::atomic::Ordering::Relaxed),
            "models": models,
        }),
    ))
}

/// `GET /admin/health`.
pub(super) fn health(shared: &Shared) -> Res {
    let now = Instant::now();
    let config = &shared.config;
    let check = |p: usize| -> &'static str {
        let configured = config
            .providers
            .get(p)
            .is_some_and(|p| p.health_check.is_some());
        if !configured {
            return "not_checked";
        }
        match shared
            .health
            .get(p)
            .map(|h| h.load(std::sync::atomic::Ordering::Relaxed))
        {
            Some(HEALTHY) => "healthy",
            Some(UNHEALTHY) => "unhealthy",
            _ => "unknown",
        }
    };
    let mut deployments = Vec::new();
    for (g, group) in config.models.iter().enumerate() {
        for (i, d) in group.deployments.iter().enumerate() {
            let breaker = shared.routes.breaker(g, i);
            let state = breaker.map(|b| b.state(now));
            let open_for_s = match state {
                Some(BreakerState::Open { until }) => {
                    Some(until.saturating_duration_since(now).as_secs_f64())
                }
                _ => None,
            };
            deployments.push(json!({
                "model": group.name,
                "deployment": d.label,
                "provider": config.providers.get(d.provider).map(|p| p.name.as_str()),
                "breaker": state.as_ref().map_or("none", BreakerState::as_str),
                "reopens_in_s": open_for_s,
                "trips": breaker.map(|b| b.trips()),
                "health": check(d.provider),
            }));
        }
    }
    let providers: Vec<Value> = config
        .providers
        .iter()
        .enumerate()
        .map(|(p, provider)| json!({"name": provider.name, "health": check(p)}))
        .collect();
    Ok(Answer(
        200,
        json!({"object": "health", "deployments": deployments, "providers": providers}),
    ))
}
