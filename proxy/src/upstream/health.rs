//! Active health checks: each worker probes each provider that has `health_check` configured
//! (`GET {base_url}{path}` on a fresh connection) and feeds the result to its own circuit
//! breakers for that provider's deployments — the same state passive failures feed. The
//! latest result is also shared for `/readyz`.
//!
//! Probes carry the provider's credentials like data requests: its key, a Vertex AI access
//! token, or a SigV4 signature for Bedrock (made per probe: signatures are dated).

use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use sluice_core::config::Provider;
use sluice_core::dialect;
use sluice_core::error::GatewayError;
use sluice_core::http1::parse_response_head;

use crate::state::{Slot, Worker};
use crate::upstream::pool;

/// No result yet.
pub const UNKNOWN: u8 = 0;
/// The last check passed.
pub const HEALTHY: u8 = 1;
/// The last check failed.
pub const UNHEALTHY: u8 = 2;

/// The latest result per provider, shared by all workers (the last writer wins).
pub fn table(providers: usize) -> Box<[AtomicU8]> {
    (0..providers).map(|_| AtomicU8::new(UNKNOWN)).collect()
}

/// Starts `worker`'s health checks, one task per provider that has one configured.
pub fn spawn_all(slot: &Rc<Slot>, worker: &Rc<Worker>) {
    for (index, p) in worker.shared.config.providers.iter().enumerate() {
        if p.health_check.is_some() {
            monoio::spawn(run(slot.clone(), worker.clone(), index));
        }
    }
}

/// Probes provider `index` until the worker stops or a reload replaces it.
pub async fn run(slot: Rc<Slot>, worker: Rc<Worker>, index: usize) {
    let shared = worker.shared.clone();
    let Some(provider) = shared.config.providers.get(index) else {
        return;
    };
    let Some(check) = provider.health_check.clone() else {
        return;
    };
    // Spread the workers' probes over the interval instead of firing them together.
    let stagger =
        Duration::from_millis(check.interval_ms * worker.id as u64 / shared.workers.max(1) as u64);
    monoio::time::sleep(stagger).await;
    loop {
        if shared.is_draining() || !slot.is_current(&worker) {
            return;
        }
        let ok = match probe_request(&worker, provider, index, &check.path) {
            Ok(request) => matches!(
                monoio::time::timeout(
                    Duration::from_millis(check.timeout_ms),
                    probe(&worker, provider, index, request)
                )
                .await,
                Ok(true)
            ),
            // No Vertex AI token (or no signature): data requests fail the same way.
            Err(e) => {
                tracing::debug!(provider = %provider.name, error = %e.message, "health check not sent");
                false
            }
        };
        if let Some(h) = shared.health.get(index) {
            h.store(if ok { HEALTHY } else { UNHEALTHY }, Ordering::Relaxed);
        }
        worker
            .routes
            .borrow_mut()
            .health(&shared.config, index, ok, Instant::now());
        if !ok {
            tracing::debug!(provider = %provider.name, "health check failed");
        }
        monoio::time::sleep(Duration::from_millis(check.interval_ms)).await;
    }
}

/// The probe of `provider` (index `index`): `GET {base_url}{path}` with the provider's key,
/// its Vertex AI access token or a SigV4 signature, as its data requests carry.
fn probe_request(
    worker: &Worker,
    provider: &Provider,
    index: usize,
    path: &str,
) -> Result<Vec<u8>, GatewayError> {
    let target = format!("{}{}", provider.endpoint.path_prefix, path);
    let host = &provider.endpoint.host_header;
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\nuser-agent: sluice-health\r\n",
    );
    let token =
        crate::upstream::vertex::access_token(&worker.shared.vertex_tokens, provider, index)?;
    let token = token.as_ref().and_then(|t| t.as_deref()).map(|t| t.value());
    if let Some(key) = provider.api_key.as_ref().map(|k| k.expose()).or(token) {
        for (name, value) in dialect::auth_headers(provider.kind, key) {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some(aws) = &provider.aws {
        let now = std::time::SystemTime::now();
        let signed =
            crate::upstream::sigv4::signature_headers(aws, "GET", host, &target, None, b"", now)?;
        for (name, value) in signed {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in &provider.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    Ok(req.into_bytes())
}

/// One check: connect, send, read the status line. Below 500 is healthy.
async fn probe(worker: &Worker, provider: &Provider, index: usize, request: Vec<u8>) -> bool {
    let shared = &worker.shared;
    let addrs = shared.dns.addrs(index);
    let Some(tls) = shared.tls.get(index) else {
        return false;
    };
    let Ok(mut conn) = pool::connect(provider, &addrs, tls).await else {
        return false;
    };
    let (res, _) = conn.io.write_all(request).await;
    if res.is_err() {
        return false;
    }
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (res, b) = conn.io.read_append(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match parse_response_head(&buf, 64 * 1024, false) {
            Ok(Some((head, _))) => return head.status < 500,
            Ok(None) if buf.len() < 64 * 1024 => {
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
            }
            _ => return false,
        }
    }
}
