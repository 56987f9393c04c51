//! The semantic cache's embedding call: the prompt sent to the group's `embedding_model`, a
//! model this gateway serves, over the worker's own upstream pool — an async call on the
//! worker's runtime, so the worker's other requests go on meanwhile. Accounted to the gateway
//! (no key, no ledger row), timed in `sluice_cache_embedding_seconds`.
//!
//! It fails open: an embedding model that errs, answers something unreadable or takes longer
//! than `embedding_timeout_ms` makes the request a plain miss, never an error.

use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_core::config::{Config, ProviderKind};
use sluice_core::dialect;

use crate::listen::respond;
use crate::state::Worker;
use crate::upstream::attempt;

/// Largest embeddings answer read.
const MAX_ANSWER: usize = 4 << 20;

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
}

/// The request bytes for `text` to deployment `d` of `group`, and its provider index.
fn request(cfg: &Config, group: usize, text: &str) -> Option<(usize, Vec<u8>)> {
    // The group's deployments in order, the first an OpenAI-compatible one.
    let (dep, p) = cfg.models.get(group)?.deployments.iter().find_map(|d| {
        let p = cfg.providers.get(d.provider)?;
        (p.kind == ProviderKind::OpenAi).then_some((d, p))
    })?;
    let model = if dep.model == "*" {
        &cfg.models.get(group)?.name
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
pub async fn embed(worker: &Worker, model: &str, text: &str, timeout_ms: u64) -> Option<Vec<f32>> {
    let cfg = &worker.shared.config;
    let group = cfg.model_index(model)?;
    let (provider, req) = request(cfg, group, text)?;
    let started = Instant::now();
    let timeout = Duration::from_millis(timeout_ms);
    let deadline = started + timeout;
    let call = async {
        let mut sent = attempt::send(worker, provider, req, deadline).await.ok()?;
        let ok = sent.head.status == 200;
        let name = cfg.providers.get(provider).map_or("?", |p| p.name.as_str());
        let (body, reusable) = attempt::read_small_body(&mut sent, name, MAX_ANSWER, deadline)
            .await
            .ok()?;
        if reusable {
            let max_idle = cfg.providers.get(provider).map_or(0, |p| p.pool_max_idle);
            worker
                .pool
                .borrow_mut()
                .put(provider, sent.conn, Instant::now(), max_idle);
        }
        if !ok {
            return None;
        }
        let answer: Answer = serde_json::from_slice(&body).ok()?;
        answer.data.into_iter().next().map(|i| i.embedding)
    };
    let out = monoio::time::timeout(timeout, call).await.ok().flatten();
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
