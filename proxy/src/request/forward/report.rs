//! The attempt loop's report, written into the request's access record: each attempt, the
//! deployment that answered, and the retry and fallback counts for metrics.

use std::time::Instant;

use sluice_core::attempt::AttemptReport;

use super::Sends;
use crate::request::client::ClientSide;
use crate::request::settle::Answer;
use crate::state::Worker;
use crate::telemetry::log::Attempt;

/// Writes the loop's report into the access record: each attempt, the deployment that gave
/// the last word, and the retry, fallback and hedge counts for metrics.
pub(super) fn record_attempts(
    worker: &Worker,
    sends: &Sends,
    first_group: usize,
    report: &AttemptReport,
    client: &ClientSide<'_>,
    answer: &mut Answer,
) {
    let cfg = &worker.shared.config;
    answer.route = report.route;
    // The attempts and the deployment's name are read by the access line and the trace only
    // (the ledger and the metrics go by `route`): without either, none is copied (an
    // allocation per attempt and two more a request).
    let described = cfg.log.access_log || client.trace.is_some();
    if described {
        describe_attempts(cfg, sends, report, client, answer);
    }
    if answer.error.is_none() {
        answer.error = report.error.map(Into::into);
    }
    if report.client_gone {
        answer.client_cancelled = true;
    }
    for _ in 0..report.retries {
        worker.metrics.retry(first_group);
    }
    for _ in 0..report.fallbacks {
        worker.metrics.fallback(first_group);
    }
}

/// The attempts and the deployment that answered, by name, for the access line and the trace.
fn describe_attempts(
    cfg: &sluice_core::config::Config,
    sends: &Sends,
    report: &AttemptReport,
    client: &ClientSide<'_>,
    answer: &mut Answer,
) {
    let since = |t: Instant| t.saturating_duration_since(client.started).as_micros() as u64;
    // Read only for an attempt still open (a hedge's loser): most requests have none.
    let mut now = None;
    answer.attempts = report
        .attempts
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let launch = sends.launched.get(k);
            Attempt {
                deployment: launch.map_or_else(String::new, |l| l.label(cfg).to_string()),
                provider: launch.map_or(0, |l| l.provider),
                span_id: launch.and_then(|l| l.span_id),
                start_us: since(a.started),
                end_us: since(
                    a.ended
                        .unwrap_or_else(|| *now.get_or_insert_with(Instant::now)),
                ),
                status: a.status,
                error: a.error,
                // Only the trace's attempt spans read it (one allocation less otherwise).
                response_model: if answer.delivered_attempt == Some(k) && client.trace.is_some() {
                    answer.response_model.clone()
                } else {
                    None
                },
            }
        })
        .collect();
    if let Some((g, Some(i))) = report.route {
        answer.deployment = cfg
            .models
            .get(g)
            .and_then(|m| m.deployments.get(i))
            .map(|d| d.label.clone());
    }
}
