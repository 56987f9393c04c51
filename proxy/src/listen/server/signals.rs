//! Signals on the signal thread: SIGHUP reloads the config into a new generation (settings
//! that need a restart keep their running values), SIGTERM or SIGINT starts the drain.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::config::Config;
use sluice_core::limiter::DeploymentLimits;

use crate::state::{Generations, Shared};
use crate::upstream::dns::DnsTable;
use crate::upstream::pool::tls_per_provider;

use super::load_config;

/// Reloads the config file into a new generation and swaps it in: `Ok(Some(generation))`
/// when it did, `Ok(None)` when there is no file (the embedded default), `Err` when the new
/// config is refused (the current one keeps serving). Runs on the signal thread: reading,
/// validating, resolving and building TLS client configs never block a worker.
fn reload(generations: &Generations) -> Result<Option<u64>, String> {
    let old = generations.load_full();
    let Some(path) = old.config_path.clone() else {
        return Ok(None);
    };
    let mut config = load_config(Some(&path)).map_err(|e| e.to_string())?;
    keep_restart_only(&old.config, &mut config);
    let tls = tls_per_provider(&config).map_err(|e| e.to_string())?;
    let vertex_tokens = crate::upstream::vertex::cells_for(&config);
    let dns = DnsTable::resolve_all(&config);
    // The last health-check result of each provider that is still there, by name.
    let health = crate::upstream::health::table(config.providers.len());
    for (slot, p) in health.iter().zip(&config.providers) {
        let last = old
            .config
            .providers
            .iter()
            .position(|o| o.name == p.name)
            .and_then(|i| old.health.get(i))
            .map_or(crate::upstream::health::UNKNOWN, |h| {
                h.load(Ordering::Relaxed)
            });
        slot.store(last, Ordering::Relaxed);
    }
    // Static keys: rebuild the key index (unchanged keys keep their limit state).
    if let Some(registry) = &old.registry {
        let mut reg = registry
            .lock()
            .map_err(|_| "the key registry is poisoned".to_string())?;
        reg.reconfigure(&config, &old.auth)
            .map_err(|e| format!("cannot rebuild the key index: {e}"))?;
    }
    old.auth.regroup(&old.config, &config);
    let next = Shared {
        generation: old.generation + 1,
        config_path: Some(path),
        dns,
        tls,
        tls_listener: old.tls_listener.clone(),
        draining: old.draining.clone(),
        listeners_up: old.listeners_up.clone(),
        workers: old.workers,
        active: old.active.clone(),
        health,
        heartbeats: old.heartbeats.clone(),
        started_unix: old.started_unix,
        catalog: Default::default(),
        prices: config.price_table(),
        provider_limits: Arc::new(DeploymentLimits::build(
            &config,
            old.limiter.clone(),
            Some(&old.provider_limits),
        )),
        routes: Arc::new(sluice_core::route::SharedRoutes::build(
            &config,
            Some(&old.routes),
            Instant::now(),
        )),
        limiter: old.limiter.clone(),
        fleet: old.fleet.clone(),
        responses: old.responses.clone(),
        flights: old.flights.clone(),
        auth: old.auth.clone(),
        registry: old.registry.clone(),
        admin_token: old.admin_token,
        vertex_tokens,
        config: Arc::new(config),
    };
    let generation = next.generation;
    generations.store(Arc::new(next));
    Ok(Some(generation))
}

/// Settings a reload cannot change (they need a restart): the new config keeps the running
/// values, and each one that differs is logged.
fn keep_restart_only(running: &Config, new: &mut Config) {
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if new.$($field).+ != running.$($field).+ {
                tracing::warn!(
                    setting = $name,
                    "config reload: `{}` changes only on restart; keeping the running value",
                    $name
                );
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(server.listen, "server.listen");
    keep!(server.workers, "server.workers");
    keep!(server.driver, "server.driver");
    keep!(server.pin_workers, "server.pin_workers");
    keep!(server.tls, "server.tls");
    keep!(admin, "admin");
    keep!(tracing, "tracing");
    keep!(store, "store");
    keep!(shared, "shared");
    keep!(auth, "auth");
    keep!(log, "log");
    keep!(limits.default_max_tokens, "limits.default_max_tokens");
}

/// Blocks until SIGTERM or SIGINT and sets the draining flag. A second signal exits at once.
/// SIGHUP reloads the config (see [`reload`]) and the listener's certificate.
pub(super) fn wait_for_signal(
    generations: &Generations,
    mut signals: signal_hook::iterator::Signals,
) -> io::Result<()> {
    use signal_hook::consts::SIGHUP;
    for sig in signals.forever() {
        if sig == SIGHUP {
            let _ = crate::ops::sdnotify::reloading();
            tracing::info!("SIGHUP: reload");
            match reload(generations) {
                Ok(Some(generation)) => tracing::info!(generation, "config reloaded"),
                Ok(None) => {
                    tracing::info!("no config file to reload (serving the embedded default)")
                }
                Err(e) => tracing::error!("config reload refused: {e}"),
            }
            // The listener's certificate; a bad new one keeps the old (and is logged).
            if let Some(t) = &generations.load().tls_listener {
                let _ = t.reload("SIGHUP");
            }
            let _ = crate::ops::sdnotify::ready_with_status("reloaded");
            continue;
        }
        tracing::info!(signal = sig, "signal received");
        break;
    }
    generations.load().draining.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("sluice-signal".into())
        .spawn(move || {
            if signals.forever().any(|sig| sig != SIGHUP) {
                eprintln!("sluice: second signal, exiting without draining");
                std::process::exit(1);
            }
        })?;
    Ok(())
}
