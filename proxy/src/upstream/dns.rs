//! Upstream host names, resolved off the data plane.
//!
//! Resolution blocks, so it never runs on a worker: addresses are resolved once before the
//! listeners open and then again every `dns_refresh_ms` on a background thread (started by
//! `state::spawn_dns_refresher`), which swaps
//! each provider's answer in atomically. Workers only load the current answer.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

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

    /// Resolves every provider's name again and swaps in each answer that changed; a failed
    /// lookup keeps the last answer. Blocks, so it runs on the refresh thread only.
    pub fn refresh(&self, config: &Config) {
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
