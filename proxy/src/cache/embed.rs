//! The semantic cache's embedding call: the prompt sent to the group's `embedding_model`, a
//! model this gateway serves, through the gateway's own routing — core's attempt loop picks
//! the deployment (balancing, breakers, the provider's limits), retries and falls back within
//! `embedding_timeout_ms`, as for a client's embeddings request. It is an async call on the
//! worker's runtime over the worker's upstream pool, so the worker's other requests go on
//! meanwhile.
//!
//! ```text
//! embed ─► AttemptLoop::poll ─► Send (OpenAI-shaped deployments only) / ReadErrorBody / Wait
//!                          └──► Deliver ─► read the answer, settle the attempt ─► ledger row
//!                               PassThrough | Fail | Abandon | timeout ─► None (a miss)
//! ```
//!
//! Accounted to the gateway, not to the caller: no key reserves or spends anything, and the
//! ledger row has key id `gateway` (no team), the request id of the request it served with
//! `-embed` appended, and the embeddings model's cost. Timed in
//! `sluice_cache_embedding_seconds`.
//!
//! It fails open: an embedding model that errs, answers something unreadable or takes longer
//! than `embedding_timeout_ms` makes the request a plain miss, never an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_core::attempt::{AttemptId, AttemptLoop, Command, Event, Relayed, TransportFailure};
use sluice_core::config::{Config, ProviderKind};
use sluice_core::dialect;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::retry;
use sluice_core::route::Target;
use sluice_core::usage;

use crate::listen::respond;
use crate::request::forward::with_env;
use crate::state::Worker;
use crate::store::UsageRecord;
use crate::upstream::attempt::{self, Sent};
use crate::upstream::pool::UpstreamError;

/// Largest embeddings answer read.
const MAX_ANSWER: usize = 4 << 20;

/// The ledger's key id for what the gateway itself spends (no key has it: admin keys are
/// `key_…`, config keys `cfg_…`).
pub const GATEWAY_KEY_ID: &str = "gateway";

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
}

/// The request bytes for `text` to deployment `target`, and its provider index; `None` for a
/// deployment that does not speak OpenAI's embeddings API.
fn request(cfg: &Config, target: Target, text: &str) -> Option<(usize, Vec<u8>)> {
    let group = cfg.models.get(target.group)?;
    let dep = group.deployments.get(target.deployment)?;
    let p = cfg.providers.get(dep.provider)?;
    if p.kind != ProviderKind::OpenAi {
        return None;
    }
    let model = if dep.model == "*" {
        &group.name
    } else {
        &dep.model
    };
    let body = serde_json::to_vec(&serde_json::json!({"model": model, "input": text})).ok()?;
    let mut req = Vec::with_capacity(512 + body.len());
    req.extend_from_slice(b"POST ");
    req.extend_from_slice(p.endpoint.path_prefix.as_bytes());
    req.extend_from_slice(b"/embeddings HTTP/1.1\r\nhost: ");
    req.extend_from_slice(p.endpoint.host_header.as_bytes());
    req.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    let mut headers: Vec<(String, String)> = p
        .api_key
        .as_ref()
        .map(|k| {
            dialect::auth_headers(p.kind, k.expose())
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect()
        })
        .unwrap_or_default();
    headers.extend(p.headers.iter().cloned());
    for (n, v) in headers {
        req.extend_from_slice(n.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"content-length: ");
    req.extend_from_slice(respond::itoa_u64(body.len() as u64).as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(&body);
    Some((dep.provider, req))
}

/// The unit embedding of `text` from model `model`, or `None` (fail open) within `timeout_ms`.
/// `request_id` is the request it serves, for the ledger row.
pub async fn embed(
    worker: &Worker,
    model: &str,
    text: &str,
    timeout_ms: u64,
    request_id: &str,
) -> Option<Vec<f32>> {
    let cfg = &worker.shared.config;
    let group = cfg.model_index(model)?;
    let started = Instant::now();
    let timeout = Duration::from_millis(timeout_ms);
    let call = routed(worker, group, text, started + timeout, request_id);
    // The loop ends itself at the deadline (settling what was in flight); this is a net.
    let net = timeout + Duration::from_millis(250);
    let out = crate::clock::timeout(net, std::pin::pin!(call))
        .await
        .ok()
        .flatten();
    let name = cfg.models.get(group).map_or("none", |g| g.name.as_str());
    metrics::histogram!("sluice_cache_embedding_seconds", "model" => name.to_owned())
        .record(started.elapsed().as_secs_f64());
    if out.is_none() {
        tracing::debug!(
            model,
            "semantic cache: no embedding in time; the request is a miss"
        );
    }
    sluice_core::cache::semantic::normalised(out?)
}

/// An attempt on its way: its id, provider and the send.
type Flight<F> = (AttemptId, usize, Pin<Box<F>>);

/// The attempt loop for one embedding, driven to its end.
async fn routed(
    worker: &Worker,
    group: usize,
    text: &str,
    deadline: Instant,
    request_id: &str,
) -> Option<Vec<f32>> {
    let cfg = &worker.shared.config;
    // About four bytes a token: what the deployment's token limit holds while it runs.
    let reserve = text.len() as u64 / 4 + 1;
    let mut lp = with_env(worker, |env| {
        AttemptLoop::new(env, group, deadline, reserve, None)
    });
    let mut flights = Vec::with_capacity(2);
    let mut answered: Option<(AttemptId, usize, Sent)> = None;
    let mut event: Option<Event> = None;
    loop {
        let command = with_env(worker, |env| {
            if let Some(e) = event.take() {
                lp.handle(env, e);
            }
            lp.poll(env)
        });
        event = Some(match command {
            Command::Send {
                attempt, target, ..
            } => match request(cfg, target, text) {
                Some((provider, req)) => {
                    let send = Box::pin(attempt::send(worker, provider, req, deadline));
                    flights.push((attempt, provider, send));
                    continue;
                }
                None => Event::Refused {
                    attempt,
                    error: GatewayError::new(
                        ErrorKind::InvalidRequest,
                        "the embeddings deployment does not speak OpenAI's embeddings API",
                    ),
                },
            },
            Command::Cancel { attempt } => {
                flights.retain(|f| f.0 != attempt);
                if answered.as_ref().is_some_and(|a| a.0 == attempt) {
                    answered = None;
                }
                continue;
            }
            Command::Wait { until } => {
                wait(worker, &mut flights, &mut answered, until, deadline).await
            }
            Command::ReadErrorBody { attempt } => {
                let (id, provider, sent) = answered.take().filter(|a| a.0 == attempt)?;
                match read_body(worker, provider, sent, deadline).await {
                    Ok(_) => Event::ErrorBody {
                        attempt: id,
                        context_window: false,
                    },
                    Err(e) => Event::Failed {
                        attempt: id,
                        failure: transport_failure(worker, provider, &e),
                    },
                }
            }
            Command::Deliver { attempt } => {
                let (_, provider, sent) = answered.take().filter(|a| a.0 == attempt)?;
                let sent_at = lp.started(attempt).unwrap_or_else(Instant::now);
                let target = lp.target(attempt);
                let read = read_body(worker, provider, sent, deadline).await;
                let latency = sent_at.elapsed();
                let (relayed, body) = match read {
                    Ok(body) => (Relayed::Complete, body),
                    Err(e) => (Relayed::UpstreamFailed(e.label()), Vec::new()),
                };
                let used = usage::from_body(&body);
                let tokens = used.map_or(0, |u| u.total_tokens());
                with_env(worker, |env| {
                    lp.settle_delivered(env, relayed, latency, tokens)
                });
                if let (Some(t), Some(u)) = (target, used) {
                    account(worker, t, u, request_id, latency);
                }
                let answer: Answer = serde_json::from_slice(&body).ok()?;
                return answer.data.into_iter().next().map(|i| i.embedding);
            }
            Command::PassThrough { .. } | Command::Fail(_) | Command::Abandon => return None,
        });
    }
}

/// Waits for the first attempt to answer (or fail), or for `until`. At `deadline` the loop
/// is told its caller left: it cancels what is in flight (settling the balancer, breakers and
/// limits) and abandons, so the embedding ends within `embedding_timeout_ms`.
async fn wait<F: Future<Output = Result<Sent, UpstreamError>>>(
    worker: &Worker,
    flights: &mut Vec<Flight<F>>,
    answered: &mut Option<(AttemptId, usize, Sent)>,
    until: Option<Instant>,
    deadline: Instant,
) -> Event {
    let first = std::future::poll_fn(|cx| {
        for (k, f) in flights.iter_mut().enumerate() {
            if let Poll::Ready(r) = f.2.as_mut().poll(cx) {
                return Poll::Ready((k, r));
            }
        }
        Poll::Pending
    });
    let (at, gone) = match until {
        Some(t) if t < deadline => (t, false),
        _ => (deadline, true),
    };
    let timer = crate::clock::sleep(at.saturating_duration_since(Instant::now()));
    let done = monoio::select! {
        biased;
        done = first => Some(done),
        _ = timer => None,
    };
    let Some((k, result)) = done else {
        return if gone {
            Event::ClientGone
        } else {
            Event::Timer
        };
    };
    let (id, provider, _) = flights.swap_remove(k);
    match result {
        Ok(sent) => {
            let retry_after = retry::retry_after(&sent.head);
            let status = sent.head.status;
            *answered = Some((id, provider, sent));
            Event::Head {
                attempt: id,
                status,
                retry_after,
            }
        }
        Err(e) => Event::Failed {
            attempt: id,
            failure: transport_failure(worker, provider, &e),
        },
    }
}

/// Reads an answer whole and pools its connection when it can.
async fn read_body(
    worker: &Worker,
    provider: usize,
    mut sent: Sent,
    deadline: Instant,
) -> Result<Vec<u8>, UpstreamError> {
    let cfg = &worker.shared.config;
    let p = cfg.providers.get(provider);
    let name = p.map_or("?", |p| p.name.as_str());
    let (body, reusable) = attempt::read_small_body(&mut sent, name, MAX_ANSWER, deadline).await?;
    if reusable {
        let max_idle = p.map_or(0, |p| p.pool_max_idle);
        let Sent { conn, .. } = sent;
        worker
            .pool
            .borrow_mut()
            .put(provider, conn, Instant::now(), max_idle);
    }
    Ok(body)
}

/// Classifies an upstream failure for the attempt loop, and counts it.
fn transport_failure(worker: &Worker, provider: usize, e: &UpstreamError) -> TransportFailure {
    let cfg = &worker.shared.config;
    worker.metrics.upstream_error(cfg, provider, e.label());
    tracing::debug!(error = %e, "semantic cache: embedding attempt failed");
    e.transport_failure()
}

/// The gateway's ledger row for an embedding (no key spends anything).
fn account(
    worker: &Worker,
    target: Target,
    used: sluice_core::usage::Usage,
    request_id: &str,
    latency: Duration,
) {
    let shared = &worker.shared;
    let Some(ledger) = &shared.auth.ledger else {
        return;
    };
    let cfg = &shared.config;
    let Some(group) = cfg.models.get(target.group) else {
        return;
    };
    let dep = group.deployments.get(target.deployment);
    let upstream_model = dep
        .map(|d| d.model.as_str())
        .filter(|m| *m != "*")
        .unwrap_or(group.name.as_str());
    let cost = shared
        .prices
        .price(upstream_model)
        .map_or(0, |p| sluice_core::cost::cost_micros(&p, &used));
    let row = UsageRecord {
        request_id: format!("{request_id}-embed"),
        ts_ms: crate::clock::unix_ms(),
        key_id: Some(Arc::from(GATEWAY_KEY_ID)),
        team: None,
        model: Arc::from(group.name.as_str()),
        deployment: dep.map(|d| Arc::from(d.label.as_str())),
        usage: used,
        cost_micros: cost,
        status: 200,
        latency_ms: latency.as_millis() as u64,
        cache: None,
        saved_micros: 0,
    };
    if ledger.record(row).is_err() {
        tracing::debug!("semantic cache: the ledger is full; the embedding's row is dropped");
    }
}
