//! Budget alerts off the data plane: when a settlement moves a key's or a team's spend past
//! 50 %, 80 % or 100 % of its budget (core's `alerts::AlertMark` hands each threshold out
//! once per period), the worker logs a line, counts `sluice_budget_alerts_total` and, with
//! `[alerts] webhook_url`, queues the alert for the webhook thread without waiting.
//!
//! The thread POSTs each alert as JSON (the key's id and name, its team, the threshold, spend
//! and budget, never the key), retrying a failed delivery (a connection error or a non-2xx
//! answer) three more times after 0.5, 1 and 2 s. The queue is bounded
//! ([`QUEUE`]): a full queue or a delivery that failed every try is logged and counted in
//! `sluice_budget_alert_failures_total`, never waited on. Alerts live in memory only: a
//! restart does not send again the thresholds the spend rebuilt at start already passed.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use sluice_core::config::Config;
use sluice_core::cost::format_usd;
use sluice_core::limits::LimitSet;

/// Alerts waiting for the webhook thread at most.
pub const QUEUE: usize = 1024;

/// Pauses before the retries of a failed delivery.
const BACKOFF_MS: [u64; 3] = [500, 1000, 2000];

/// Whose budget crossed a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A key's own budget.
    Key,
    /// Its team's.
    Team,
}

/// Who the principal is, for the alert (never the key itself).
#[derive(Clone, Debug)]
pub struct Principal<'a> {
    /// The key's id.
    pub key_id: &'a str,
    /// The key's name.
    pub key_name: &'a str,
    /// Its team.
    pub team: &'a str,
}

/// One threshold crossed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetAlert {
    /// `budget_threshold`.
    pub event: &'static str,
    /// `key` or `team`.
    pub scope: &'static str,
    /// The key whose request crossed it (for a team alert, the key that tipped it).
    pub key_id: String,
    /// That key's name.
    pub key_name: String,
    /// The team.
    pub team: String,
    /// 50, 80 or 100.
    pub threshold_percent: u8,
    /// Settled spend this period, micro-USD and USD.
    pub spend_micros: u64,
    /// The same as a decimal USD string.
    pub spend_usd: String,
    /// The budget, micro-USD.
    pub budget_micros: u64,
    /// The same as a decimal USD string.
    pub budget_usd: String,
    /// `daily`, `monthly`, … as in the key's limits.
    pub period: &'static str,
    /// Start of the budget period, unix seconds.
    pub period_start_unix: u64,
}

struct Job {
    alert: BudgetAlert,
    config: Arc<Config>,
}

static QUEUE_TX: OnceLock<Sender<Job>> = OnceLock::new();

fn queue() -> &'static Sender<Job> {
    QUEUE_TX.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let started = std::thread::Builder::new()
            .name("sluice-alerts".into())
            .spawn(move || deliver_all(rx));
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the budget alert thread: webhooks are off");
        }
        tx
    })
}

/// Checks both budgets of a settled request (the key's, then its team's) and raises the
/// thresholds they newly crossed. Cheap when nothing crossed: two atomic loads per set.
pub fn check(config: &Arc<Config>, who: &Principal<'_>, sets: [&LimitSet; 2]) {
    for (set, scope) in sets.into_iter().zip([Scope::Key, Scope::Team]) {
        let Some(limit) = set.budget_limit_micros else {
            continue;
        };
        let start = set.budget.period_start();
        let spend = set.budget.spend();
        for &threshold in set.alert_mark.handle_spend(start, spend, limit) {
            raise(
                config,
                BudgetAlert {
                    event: "budget_threshold",
                    scope: match scope {
                        Scope::Key => "key",
                        Scope::Team => "team",
                    },
                    key_id: who.key_id.to_string(),
                    key_name: who.key_name.to_string(),
                    team: who.team.to_string(),
                    threshold_percent: threshold,
                    spend_micros: spend,
                    spend_usd: format_usd(spend),
                    budget_micros: limit,
                    budget_usd: format_usd(limit),
                    period: set.budget_period.as_str(),
                    period_start_unix: start,
                },
            );
        }
    }
}

/// Logs and counts `alert`, and queues it for the webhook when one is configured.
fn raise(config: &Arc<Config>, alert: BudgetAlert) {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_counter!(
            "sluice_budget_alerts_total",
            "Budget thresholds (50, 80, 100 % of a key's or team's budget) crossed, once per period each"
        );
        metrics::describe_counter!(
            "sluice_budget_alert_failures_total",
            "Budget alerts the webhook did not take after every retry, or that found the queue full"
        );
    });
    tracing::warn!(
        scope = alert.scope,
        key_id = %alert.key_id,
        team = %alert.team,
        threshold_percent = alert.threshold_percent,
        spend_usd = %alert.spend_usd,
        budget_usd = %alert.budget_usd,
        period = alert.period,
        "budget threshold crossed"
    );
    metrics::counter!(
        "sluice_budget_alerts_total",
        "scope" => alert.scope,
        "threshold" => threshold_label(alert.threshold_percent)
    )
    .increment(1);
    if config.alerts.webhook_url.is_none() {
        return;
    }
    let job = Job {
        alert,
        config: Arc::clone(config),
    };
    if let Err(e) = queue().try_send(job) {
        let why = match e {
            TrySendError::Full(_) => "queue full",
            TrySendError::Disconnected(_) => "alert thread stopped",
        };
        failed(why);
    }
}

fn threshold_label(percent: u8) -> &'static str {
    match percent {
        50 => "50",
        80 => "80",
        _ => "100",
    }
}

fn failed(why: &str) {
    tracing::warn!(reason = why, "budget alert webhook not delivered");
    metrics::counter!("sluice_budget_alert_failures_total").increment(1);
}

/// The webhook thread: one delivery at a time, in order.
fn deliver_all(rx: Receiver<Job>) {
    let mut agent: Option<(u64, ureq::Agent)> = None;
    while let Ok(job) = rx.recv() {
        let timeout_ms = job.config.alerts.timeout_ms;
        let agent = match &agent {
            Some((t, a)) if *t == timeout_ms => a.clone(),
            _ => {
                let a = crate::blocking_http::agent(Duration::from_millis(timeout_ms));
                agent = Some((timeout_ms, a.clone()));
                a
            }
        };
        deliver(&agent, &job);
    }
}

fn deliver(agent: &ureq::Agent, job: &Job) {
    let Some(url) = &job.config.alerts.webhook_url else {
        return;
    };
    let body = match serde_json::to_vec(&job.alert) {
        Ok(b) => b,
        Err(_) => return failed("cannot encode the alert"),
    };
    let host = job
        .config
        .alerts
        .webhook_display
        .as_deref()
        .unwrap_or("webhook");
    let mut last = String::new();
    for attempt in 0..=BACKOFF_MS.len() {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(BACKOFF_MS[attempt - 1]));
        }
        let mut req = agent
            .post(url.expose())
            .header("content-type", "application/json");
        for (name, value) in &job.config.alerts.headers {
            req = req.header(name.as_str(), value.expose());
        }
        match req.send(&body[..]) {
            Ok(mut response) => {
                let _ = response
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_vec();
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    tracing::info!(webhook = host, threshold_percent = job.alert.threshold_percent, key_id = %job.alert.key_id, "budget alert delivered");
                    return;
                }
                last = format!("status {status}");
            }
            // ureq's errors name the host, not the URL's path or query.
            Err(e) => last = e.to_string().replace(url.expose(), host),
        }
    }
    tracing::warn!(webhook = host, error = %sluice_core::error::bounded(&last), "budget alert webhook failed after retries");
    metrics::counter!("sluice_budget_alert_failures_total").increment(1);
}
