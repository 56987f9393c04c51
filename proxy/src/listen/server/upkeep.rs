//! Housekeeping threads off the data plane: metric buffers drained, freed heap memory handed
//! back after a busy spell, the systemd watchdog fed while every worker's heartbeat moves.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::state::Shared;

/// How often housekeeping runs. Every histogram sample waits in a buffer until it is drained
/// here (1 KiB blocks of 128 samples, allocated by the workers): at 5,000 requests a second
/// that is about 1 MiB every five seconds, whose blocks also keep the worker's allocator
/// pages resident after a load. Draining every second keeps a fifth of it.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Housekeeping off the data plane: drains metric histogram buffers (they grow without
/// bound otherwise) and, once the gateway is idle after a busy spell, hands freed heap memory
/// back to the OS, so RSS returns to its idle size after a load peak.
pub(super) fn spawn_upkeep(shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-upkeep".into())
        .spawn(move || {
            let mut busy_since_trim = false;
            let mut ticks = 0u64;
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                crate::telemetry::metrics::upkeep();
                ticks += 1;
                if !ticks.is_multiple_of(5) {
                    continue;
                }
                if shared.active.load(Ordering::Relaxed) > 0 {
                    busy_since_trim = true;
                } else if busy_since_trim {
                    busy_since_trim = false;
                    // This thread's own mimalloc pages (the drained histogram buffers') first:
                    // a worker's tick collects only the worker's.
                    crate::memory::return_free_memory();
                    crate::memory::release_free_memory();
                }
            }
        })?;
    Ok(())
}

/// Feeds the systemd watchdog (WatchdogSec= in the unit) every half period, while every
/// worker's heartbeat moves: a stuck event loop stops the pings and systemd restarts us.
pub(super) fn spawn_watchdog(shared: &Arc<Shared>) -> io::Result<()> {
    let Some(every) = crate::ops::sdnotify::watchdog_interval() else {
        return Ok(());
    };
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("sluice-watchdog".into())
        .spawn(move || {
            let mut last: Vec<u64> = shared
                .heartbeats
                .iter()
                .map(|h| h.load(Ordering::Relaxed))
                .collect();
            loop {
                std::thread::sleep(every);
                let now: Vec<u64> = shared
                    .heartbeats
                    .iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .collect();
                let stuck = now.iter().zip(&last).position(|(n, l)| n == l);
                match stuck {
                    None => {
                        let _ = crate::ops::sdnotify::watchdog();
                    }
                    Some(id) => tracing::error!(
                        worker = id,
                        "worker event loop stalled; not feeding the watchdog"
                    ),
                }
                last = now;
            }
        })?;
    Ok(())
}
