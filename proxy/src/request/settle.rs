//! Settlement: everything a finished request changes, in one place, from one
//! [`Settlement`] — the caller's limits (the permit, settled with the real usage and cost), the
//! response cache (a miss's complete answer kept), the ledger and cost counters, the request metrics, the trace and the access log. The access
//! record is built here from what the stages found; nothing upstream of this writes it.
//!
//! The balancer, breakers and providers' limits of each attempt are settled by the attempt
//! loop as its attempts end (core decides; see `sluice_core::attempt`), and the upstream
//! connection goes back to its pool where the body was read: those are per-attempt, not
//! per-request.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::request::Settled;
use sluice_core::usage::Usage;

use crate::request::auth::KeyEntry;
use crate::state::Worker;
use crate::telemetry::context::RequestTrace;
use crate::telemetry::log::{AccessRecord, Attempt};

/// What the client got, as the stage that answered found it.
#[derive(Debug, Default)]
pub struct Answer {
    /// Status sent to the client.
    pub status: u16,
    /// Whether the answer was an event stream.
    pub stream: bool,
    /// Tokens, when known.
    pub usage: Option<Usage>,
    /// What the request cost, in micro-USD, when its usage and price are known.
    pub cost_micros: Option<u64>,
    /// (model group, deployment) that gave the last word, once routed.
    pub route: Option<(usize, Option<usize>)>,
    /// `provider/model` that answered.
    pub deployment: Option<String>,
    /// The model the upstream's answer named (`gen_ai.response.model`), bounded; `None` when
    /// it named none (Bedrock) or no upstream answered.
    pub response_model: Option<String>,
    /// The attempt whose answer was delivered (its index in the attempt loop).
    pub delivered_attempt: Option<usize>,
    /// Microseconds from the request head to the first response byte sent.
    pub ttfb_us: Option<u64>,
    /// Microseconds from the request head to the first byte of the upstream's answer body.
    pub first_token_us: Option<u64>,
    /// Microseconds spent waiting on the upstream (head and body).
    pub upstream_us: Option<u64>,
    /// Response bytes written.
    pub bytes_out: u64,
    /// Whether the upstream connection was reused.
    pub upstream_reused: Option<bool>,
    /// Error label, when the request failed.
    pub error: Option<String>,
    /// The client went away before the end.
    pub client_cancelled: bool,
    /// Every upstream attempt, in order.
    pub attempts: Vec<Attempt>,
    /// What the response cache did (groups with a cache only).
    pub cache: Option<Box<crate::cache::note::CacheNote>>,
}

/// What is known of a request from its head.
#[derive(Debug)]
pub struct RequestFacts {
    /// `x-request-id`.
    pub request_id: String,
    /// HTTP method (see `telemetry::log::method_text`).
    pub method: Cow<'static, str>,
    /// Request path (see `listen::endpoints::recorded_path`).
    pub path: Cow<'static, str>,
    /// When the head arrived.
    pub started: Instant,
    /// Request body bytes.
    pub bytes_in: u64,
    /// The request's place in a trace, when traced.
    pub trace: Option<RequestTrace>,
    /// Wall-clock start, in unix nanoseconds (set when traced).
    pub start_unix_ns: u64,
}

/// Everything settlement needs: the request, the stage it reached (the caller and its
/// permit), the model it asked for, and the answer.
pub struct Settlement {
    /// From the head.
    pub request: RequestFacts,
    /// The caller and what its limits hold for this request.
    pub stage: Settled<Arc<KeyEntry>>,
    /// The model the client asked for, once inspected.
    pub model: Option<String>,
    /// An API request that passed authentication: it goes to the ledger (with keys off too).
    pub authenticated: bool,
    /// What the client got.
    pub answer: Answer,
}

impl Settlement {
    /// A request answered before any stage ran (a local endpoint, a bad head or body, a
    /// request without a valid key).
    pub fn local(request: RequestFacts, answer: Answer) -> Self {
        Settlement {
            request,
            stage: Settled {
                principal: None,
                permit: None,
                group: None,
            },
            model: None,
            authenticated: false,
            answer,
        }
    }
}

/// Settles a finished request (see the module docs): its access record is built here and
/// ends in the ledger.
///
/// The settlement is borrowed and emptied, not moved: it lives in the request's heap state,
/// and passed by value its 504 bytes were copied to the stack first (and its answer, 272, once
/// more), some 13 cache lines per request that nothing else touches.
pub fn settle(worker: &Worker, s: &mut Settlement) {
    let shared = &worker.shared;
    let Settlement {
        request,
        stage,
        model,
        authenticated,
        answer,
    } = s;
    let cache_note = answer.cache.take();
    let key = stage.principal.take();
    // One monotonic read for the request's end (its total time and the limiter's clock).
    let ended = Instant::now();
    if let (Some(k), Some(permit)) = (&key, stage.permit.take()) {
        let tokens = answer.usage.map_or(0, |u| u.total_tokens());
        let cost = answer.cost_micros.unwrap_or(0);
        shared.limiter.settle(
            &k.limit_sets(),
            permit,
            tokens,
            cost,
            crate::clock::ms_at(ended),
        );
        if cost > 0 {
            let who = crate::alerts::Principal {
                key_id: &k.id,
                key_name: &k.record.name,
                team: &k.team.name,
            };
            crate::alerts::check(&shared.config, &who, k.limit_sets());
        }
    }
    let mut rec = AccessRecord {
        request_id: std::mem::take(&mut request.request_id),
        method: std::mem::take(&mut request.method),
        path: std::mem::take(&mut request.path),
        key_id: key.as_ref().map(|k| k.id.clone()),
        team: key.as_ref().map(|k| k.team.name.clone()),
        model: model.take(),
        deployment: answer.deployment.take(),
        response_model: answer.response_model.take(),
        status: answer.status,
        stream: answer.stream,
        usage: answer.usage,
        cost_micros: answer.cost_micros,
        route: answer.route.or(stage.group.map(|g| (g, None))),
        ttfb_us: answer.ttfb_us,
        first_token_us: answer.first_token_us,
        total_us: ended.saturating_duration_since(request.started).as_micros() as u64,
        upstream_us: answer.upstream_us,
        bytes_in: request.bytes_in,
        bytes_out: answer.bytes_out,
        upstream_reused: answer.upstream_reused,
        error: answer.error.take(),
        client_cancelled: answer.client_cancelled,
        attempts: std::mem::take(&mut answer.attempts),
        trace: request.trace.take(),
        start_unix_ns: request.start_unix_ns,
        cache: None,
        saved_micros: None,
    };
    crate::cache::keep::settle(worker, cache_note, &mut rec);
    // One wall-clock read for the ledger row and the access line (none when neither is on).
    let unix_us = if shared.auth.ledger.is_some() || shared.config.log.access_log {
        crate::clock::unix_us()
    } else {
        0
    };
    worker.metrics.observe(&shared.config, &rec);
    if rec.trace.is_some() {
        crate::telemetry::trace::export(crate::telemetry::trace::request_spans(
            &rec,
            &shared.config,
        ));
    }
    if shared.config.log.access_log {
        rec.emit_at(unix_us);
    }
    // The ledger has authenticated API requests only (the access log and metrics have them
    // all), so nobody without a key can grow the database. Last: its row takes the record's
    // request id (no copy of it).
    if *authenticated {
        shared
            .auth
            .record(&shared.config, key.as_deref(), &mut rec, unix_us / 1000);
    }
}
