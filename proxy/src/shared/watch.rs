//! Key and team changes from other replicas: a subscriber on the fleet's channel rebuilds the
//! key index when another replica announces a change (so a revocation reaches every replica
//! within a second), and every `BACKSTOP` anyway, in case an announcement was missed (Redis
//! down, a reconnect).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::config::SharedConfig;

use super::scripts::Names;
use super::Target;
use crate::registry::SharedRegistry;
use crate::request::auth::Auth;

/// The periodic rebuild that catches changes whose announcement was missed.
const BACKSTOP: Duration = Duration::from_secs(5);

/// Starts the watcher thread for this replica (`replica` is its own name, whose
/// announcements it skips).
pub(super) fn spawn(
    config: &SharedConfig,
    target: Target,
    replica: String,
    registry: Arc<SharedRegistry>,
    auth: Arc<Auth>,
) -> std::io::Result<()> {
    let config = config.clone();
    std::thread::Builder::new()
        .name("sluice-keys-watch".into())
        .spawn(move || {
            let channel = Names::new(&config.key_prefix).keys_channel();
            let mut last = Instant::now();
            let rebuild = |why: &str| {
                let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = reg.rebuild(&auth) {
                    tracing::warn!(error = %e, why, "key index rebuild failed");
                }
            };
            loop {
                let conn = target.client().and_then(|c| {
                    c.get_connection_with_timeout(Duration::from_millis(
                        (config.timeout_ms * 5).max(100),
                    ))
                });
                let mut conn = match conn {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(250));
                        if last.elapsed() >= BACKSTOP {
                            rebuild("periodic");
                            last = Instant::now();
                        }
                        continue;
                    }
                };
                let mut pubsub = conn.as_pubsub();
                if pubsub.subscribe(&channel).is_err()
                    || pubsub
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .is_err()
                {
                    continue;
                }
                // Changes made while unsubscribed are picked up now: after the subscription
                // is confirmed, so one made in between is announced, not missed until the
                // backstop (a key made on another replica right after this one started).
                rebuild("subscribed");
                last = Instant::now();
                loop {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            let from: String = msg.get_payload().unwrap_or_default();
                            if from != replica {
                                rebuild("announced");
                                last = Instant::now();
                            }
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(_) => break,
                    }
                    if last.elapsed() >= BACKSTOP {
                        rebuild("periodic");
                        last = Instant::now();
                    }
                }
            }
        })?;
    Ok(())
}
