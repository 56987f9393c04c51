//! The upstream's model catalog, for `GET /v1/models` of a gateway whose groups are patterns
//! (the embedded default serves `gpt-*` and friends, so it has no exact name to list).
//!
//! Each config generation fetches it once: worker 0 asks every provider that serves a pattern
//! group (`model = "*"`) for its `GET {base_url}/models` when the generation starts (at start
//! and after each reload), in a task of its own — never on a request's path. The ids that
//! match one of that provider's pattern groups are kept, in the upstream's order. Until the
//! fetch ends (or when it fails) the list holds only the exact names. What to ask and what to
//! keep is decided in core (`sluice_core::catalog`).

use std::time::{Duration, Instant};

use sluice_core::catalog::{catalog_providers, matching_ids};
use sluice_core::config::Provider;
use sluice_core::dialect;

use crate::state::{Slot, Worker};
use crate::upstream::attempt;

/// How long one catalog fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per provider before giving up for this generation.
const ATTEMPTS: u32 = 3;
/// Largest catalog body read.
const MAX_CATALOG_BYTES: usize = 4 << 20;

/// Starts the catalog fetch of `worker`'s generation, on worker 0 only.
pub fn spawn(_slot: &std::rc::Rc<Slot>, worker: &std::rc::Rc<Worker>) {
    if worker.id != 0 || catalog_providers(&worker.shared.config).is_empty() {
        return;
    }
    monoio::spawn(fetch_all(worker.clone()));
}

async fn fetch_all(worker: std::rc::Rc<Worker>) {
    let cfg = worker.shared.config.clone();
    let mut ids = Vec::new();
    let mut any = false;
    for index in catalog_providers(&cfg) {
        let Some(provider) = cfg.providers.get(index) else {
            continue;
        };
        for attempt in 0..ATTEMPTS {
            if worker.shared.is_draining() {
                return;
            }
            match fetch(&worker, provider, index).await {
                Some(body) => {
                    matching_ids(&cfg, index, &body, &mut ids);
                    any = true;
                    break;
                }
                None => {
                    tracing::debug!(provider = %provider.name, attempt, "model catalog fetch failed");
                    monoio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
    }
    if any {
        tracing::debug!(models = ids.len(), "upstream model catalog fetched");
        worker.shared.catalog.set(ids);
    } else {
        tracing::warn!("no upstream answered GET /models: /v1/models lists exact names only");
    }
}

/// One `GET {base}/models`: the body of a 2xx answer.
async fn fetch(worker: &Worker, provider: &Provider, index: usize) -> Option<Vec<u8>> {
    let mut req = format!(
        "GET {}/models HTTP/1.1\r\nhost: {}\r\nconnection: close\r\naccept: application/json\r\nuser-agent: sluice-catalog\r\n",
        provider.endpoint.path_prefix, provider.endpoint.host_header
    );
    if let Some(key) = &provider.api_key {
        for (name, value) in dialect::auth_headers(provider.kind, key.expose()) {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    } else if provider.kind == dialect::Dialect::Anthropic {
        req.push_str(&format!(
            "anthropic-version: {}\r\n",
            dialect::ANTHROPIC_VERSION
        ));
    }
    for (name, value) in &provider.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let mut sent = attempt::send(worker, index, req.into_bytes(), deadline)
        .await
        .ok()?;
    if !(200..300).contains(&sent.head.status) {
        return None;
    }
    attempt::read_small_body(&mut sent, &provider.name, MAX_CATALOG_BYTES, deadline)
        .await
        .ok()
        .map(|(body, _)| body)
}
