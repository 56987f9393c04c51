//! Upstream host names, resolved off the data plane.
//!
//! Resolution blocks, so it never runs on a worker: addresses are resolved once before the
//! listeners open and then again every `dns_refresh_ms` on a background thread, which swaps
//! each provider's answer in atomically. Workers only load the current answer.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_core::config::Config;

/// The current addresses of every provider, by provider index.
pub struct DnsTable {
    entries: Vec<ArcSwap<Vec<SocketAddr>>>,
}

impl DnsTable {
    /// Resolves every provider once. A name that does not resolve yet is logged and left empty;
    /// requests to it fail with 502 until a refresh succeeds.
    pub fn resolve_all(config: &Config) -> DnsTable {
        let entries = config
            .providers
            .iter()
            .map(|p| {
                let addrs = resolve(&p.endpoint.host, p.endpoint.port).unwrap_or_else(|e| {
                    tracing::warn!(provider = %p.name, host = %p.endpoint.host, error = %e, "cannot resolve provider host");
                    Vec::new()
                });
                ArcSwap::from_pointee(addrs)
            })
            .collect();
        DnsTable { entries }
    }

    /// The addresses of provider `index`.
    pub fn addrs(&self, index: usize) -> Arc<Vec<SocketAddr>> {
        self.entries
            .get(index)
            .map(|e| e.load_full())
            .unwrap_or_default()
    }

    fn refresh(&self, config: &Config) {
        for (p, entry) in config.providers.iter().zip(&self.entries) {
            match resolve(&p.endpoint.host, p.endpoint.port) {
                Ok(addrs) if !addrs.is_empty() => {
                    if **entry.load() != addrs {
                        tracing::info!(provider = %p.name, ?addrs, "provider addresses changed");
                        entry.store(Arc::new(addrs));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(provider = %p.name, error = %e, "DNS refresh failed; keeping the last answer")
                }
            }
        }
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Starts the refresh thread when some provider is named by a host name (IP literals never
/// change). The thread lives as long as the process.
pub fn spawn_refresher(generations: crate::state::Generations) {
    let config = generations.load().config.clone();
    let names = config
        .providers
        .iter()
        .filter(|p| p.endpoint.host.parse::<std::net::IpAddr>().is_err())
        .count();
    if names == 0 {
        return;
    }
    let every_ms = config
        .providers
        .iter()
        .map(|p| p.dns_refresh_ms)
        .min()
        .unwrap_or(30_000);
    let spawned = std::thread::Builder::new()
        .name("sluice-dns".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(every_ms));
            // The current generation's table (a reload resolves its own names first).
            let shared = generations.load_full();
            if shared.is_draining() {
                return;
            }
            shared.dns.refresh(&shared.config);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the DNS refresh thread");
    }
}
