//! Active health checks: each worker probes each provider that has `health_check` configured
//! (`GET {base_url}{path}` on a fresh connection) and feeds the result to its own circuit
//! breakers for that provider's deployments — the same state passive failures feed. The
//! latest result is also shared for `/readyz`.

use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use sluice_core::config::Provider;
use sluice_core::dialect;
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
    let request = probe_request(provider, &check.path);
    // Spread the workers' probes over the interval instead of firing them together.
    let stagger =
        Duration::from_millis(check.interval_ms * worker.id as u64 / shared.workers.max(1) as u64);
    monoio::time::sleep(stagger).await;
    loop {
        if shared.is_draining() || !slot.is_current(&worker) {
            return;
        }
        let ok = matches!(
            monoio::time::timeout(
                Duration::from_millis(check.timeout_ms),
                probe(&worker, provider, index, request.clone())
            )
            .await,
            Ok(true)
        );
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

fn probe_request(provider: &Provider, path: &str) -> Vec<u8> {
    let mut req = format!(
        "GET {}{} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nuser-agent: sluice-health\r\n",
        provider.endpoint.path_prefix, path, provider.endpoint.host_header
    );
    if let Some(key) = &provider.api_key {
        for (name, value) in dialect::auth_headers(provider.kind, key.expose()) {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in &provider.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
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
