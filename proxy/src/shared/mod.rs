//! `[shared]`: the fleet's hot state on Redis. Limits are leased (core's `lease` module
//! decides; the lease thread in `sync` carries out its transfers), and key and team changes
//! are announced on a Redis channel so every replica rebuilds its key index within a second
//! (`watch`, with a periodic rebuild as the backstop). The response cache's second level lives
//! here too (`cache`: exact entries; `index`: semantic entries fed to every replica's index).
//!
//! ```text
//!  worker ─► LeasedLimiter (atomics) ─ short? ─► Fleet::fetch ─► lease thread ─► Redis
//!                                       (≤ timeout_ms, limits too small to lease only)
//!  lease thread: every sync_interval_ms ─ liveness + plans ─► one pipeline ─► apply
//!  admin API change ─► PUBLISH keys-changed ─► every replica's watcher ─► Registry::rebuild
//! ```
//!
//! The data plane never blocks on Redis: the workers only touch atomics, and a direct fetch
//! is awaited (not blocked on) for at most `timeout_ms`; past that the store counts as
//! unavailable and the request is admitted from the local share (or refused, `closed`).

pub mod cache;
mod entry;
mod index;
mod scripts;
mod sync;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use metrics::{Counter, Gauge};
use sluice_core::config::SharedConfig;
use sluice_core::lease::{FleetHealth, LeaseBook, LeasedLimiter, Leases, OnUnavailable, Transfer};
use sluice_core::limiter::Ask;
use sluice_core::limits::LimitSet;

/// Work for the lease thread.
enum Job {
    /// Take what requests lack, then say whether Redis answered.
    Fetch(
        Vec<(Arc<Leases>, Transfer)>,
        futures_channel::oneshot::Sender<bool>,
    ),
    /// Announce a key or team change.
    Publish,
    /// The process stops: return every lease, leave the replicas set, then say so.
    Shutdown(crossbeam_channel::Sender<()>),
}

/// How this replica reaches Redis: the URL (a secret) and, for `rediss://` with a private
/// CA, that CA's PEM.
#[derive(Clone)]
struct Target {
    url: sluice_core::config::Secret,
    ca_pem: Option<Vec<u8>>,
}

impl Target {
    /// Reads `config.ca_file` (at start: a missing file refuses to start).
    fn new(config: &SharedConfig) -> std::io::Result<Self> {
        let ca_pem = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("shared.ca_file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Ok(Target {
            url: config.redis_url.clone(),
            ca_pem,
        })
    }

    /// A client (it connects when asked).
    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                self.url.expose(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(self.url.expose()),
        }
    }
}

/// Metric handles.
#[derive(Clone)]
struct Meters {
    available: Gauge,
    outages: Counter,
    round_trips: Counter,
    direct: Counter,
    timeouts: Counter,
}

impl Meters {
    fn new() -> Self {
        metrics::describe_gauge!(
            "sluice_shared_available",
            "1 while the shared store (Redis) answers, 0 while limits are degraded."
        );
        metrics::describe_counter!(
            "sluice_shared_unavailable_total",
            "Times the shared store became unavailable (limits degraded to local shares or closed)."
        );
        metrics::describe_counter!(
            "sluice_shared_round_trips_total",
            "Round trips to the shared store, for leases and direct fetches."
        );
        metrics::describe_counter!(
            "sluice_shared_direct_fetches_total",
            "Batches of direct fetches for requests whose limits are too small to lease."
        );
        metrics::describe_counter!(
            "sluice_shared_timeouts_total",
            "Direct fetches that did not answer within shared.timeout_ms."
        );
        Meters {
            available: metrics::gauge!("sluice_shared_available"),
            outages: metrics::counter!("sluice_shared_unavailable_total"),
            round_trips: metrics::counter!("sluice_shared_round_trips_total"),
            direct: metrics::counter!("sluice_shared_direct_fetches_total"),
            timeouts: metrics::counter!("sluice_shared_timeouts_total"),
        }
    }
}

/// The fleet side of one replica: its limiter, and the handle to the lease thread.
pub struct Fleet {
    /// The limiter every admission goes through.
    pub limiter: Arc<LeasedLimiter>,
    /// This replica's name in Redis.
    pub replica: String,
    /// The response cache's second level.
    pub cache: cache::SharedCache,
    /// The key of the response cache's hash, shared by the fleet (`None`: Redis did not answer
    /// at start; this replica keys with its own).
    pub cache_secret: Option<[u8; 32]>,
    config: SharedConfig,
    target: Target,
    jobs: Sender<Job>,
    meters: Meters,
}

impl Fleet {
    /// Starts the lease thread for `config` (install the metrics recorder first) and waits
    /// (at most a second) for its first sync; until one succeeds the store counts as
    /// unavailable.
    pub fn start(config: &SharedConfig) -> std::io::Result<Arc<Fleet>> {
        // The Redis client's rustls takes the process default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let book = Arc::new(LeaseBook::new(FleetHealth::new(
            config.expected_replicas,
            config.on_unavailable,
        )));
        let replica = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        let target = Target::new(config)?;
        let cache_secret = cache::fleet_secret(&target, &config.key_prefix);
        if cache_secret.is_none() {
            tracing::warn!(
                redis = %config.redis_display,
                "shared cache: no key secret from Redis at start; this replica's second level only misses"
            );
        }
        let shared_cache = cache::SharedCache::start(config, target.clone(), &replica)?;
        let meters = Meters::new();
        meters.available.set(0.0);
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let syncer = sync::Syncer {
            config: config.clone(),
            target: target.clone(),
            replica: replica.clone(),
            book: book.clone(),
            names: scripts::Names::new(&config.key_prefix),
            scripts: scripts::Scripts::new(),
            conn: None,
            next_connect: Instant::now(),
            fresh: false,
            meters: meters.clone(),
            peeks: std::collections::HashMap::new(),
        };
        let (started_tx, started) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("sluice-leases".into())
            .spawn(move || syncer.run(rx, started_tx))?;
        // Serve with global limits from the first request when Redis answers: wait for the
        // first sync (connect and liveness), a bounded moment.
        let _ = started.recv_timeout(Duration::from_secs(1));
        tracing::info!(
            redis = %config.redis_display,
            replica = %replica,
            timeout_ms = config.timeout_ms,
            "shared limits on Redis"
        );
        Ok(Arc::new(Fleet {
            limiter: Arc::new(LeasedLimiter::new(book)),
            replica,
            cache: shared_cache,
            cache_secret,
            config: config.clone(),
            target,
            jobs: tx,
            meters,
        }))
    }

    /// Makes sure the pools of `sets` cover a request — its admission (`ask` is `None`) or its
    /// reservation — fetching what a pool lacks from Redis, for at most `timeout_ms`. Returns
    /// at once when nothing is short (every leased limit, almost always). Returns `true` when
    /// the fetch missed `timeout_ms`: admit that request with `lease::ShareOnLate`. Only
    /// `LATE_FETCHES_TO_DEGRADE` late fetches in a row degrade the replica.
    pub async fn fetch(&self, sets: &[&LimitSet], ask: Option<&Ask>) -> bool {
        let wants = self.limiter.shortfall(sets, ask, crate::clock::now_ms());
        if wants.is_empty() {
            return false;
        }
        let batch = wants.into_iter().map(|w| (w.leases, w.transfer)).collect();
        let (tx, rx) = futures_channel::oneshot::channel();
        if self.jobs.try_send(Job::Fetch(batch, tx)).is_err() {
            return false;
        }
        let limit = Duration::from_millis(self.config.timeout_ms);
        match crate::clock::timeout(limit, std::pin::pin!(rx)).await {
            Ok(Ok(true)) => {
                self.limiter.book.health.handle_fetch_ok();
                false
            }
            // The lease thread found the store down: it marked the outage itself.
            Ok(_) => false,
            Err(_) => {
                self.meters.timeouts.increment(1);
                if self.limiter.book.health.handle_fetch_late() {
                    self.meters.outages.increment(1);
                    self.meters.available.set(0.0);
                    tracing::warn!(
                        redis = %self.config.redis_display,
                        reason = "timeout",
                        timeout_ms = self.config.timeout_ms,
                        late_in_a_row = sluice_core::lease::LATE_FETCHES_TO_DEGRADE,
                        "shared store unavailable: limits degraded"
                    );
                }
                true
            }
        }
    }

    /// Returns every lease to Redis and leaves the fleet (after the drain, when nothing is in
    /// flight), waiting at most `wait`; a replica that cannot is forgotten when its liveness
    /// expires.
    pub fn shutdown(&self, wait: Duration) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.jobs.try_send(Job::Shutdown(tx)).is_ok() {
            let _ = rx.recv_timeout(wait);
        }
    }

    /// Starts rebuilding `registry`'s key index into `auth` when another replica announces a
    /// key or team change (and every few seconds as a backstop).
    pub fn watch_keys(
        &self,
        registry: Arc<crate::registry::SharedRegistry>,
        auth: Arc<crate::request::auth::Auth>,
    ) -> std::io::Result<()> {
        watch::spawn(
            &self.config,
            self.target.clone(),
            self.replica.clone(),
            registry,
            auth,
        )
    }

    /// Starts feeding `store`'s semantic index (and first level) with the entries the other
    /// replicas keep (`index`).
    pub fn feed_index(
        &self,
        store: Arc<dyn sluice_core::cache::ResponseStore>,
    ) -> std::io::Result<()> {
        index::spawn(
            &self.config,
            self.target.clone(),
            self.replica.clone(),
            store,
        )
    }

    /// Tells the other replicas that keys or teams changed (never blocks).
    pub fn keys_changed(&self) {
        let _ = self.jobs.try_send(Job::Publish);
    }

    /// The `/readyz` detail: whether Redis answers and what happens meanwhile.
    pub fn status(&self) -> serde_json::Value {
        let health = &self.limiter.book.health;
        let available = health.available();
        let mode = match (available, health.policy()) {
            (true, _) => "global",
            (false, OnUnavailable::Local) => "degraded_local",
            (false, OnUnavailable::Closed) => "closed",
        };
        serde_json::json!({
            "redis": self.config.redis_display,
            "available": available,
            "limits": mode,
            "replicas": health.replicas(),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect()
        })
        .unwrap_or_else(|_| "sluice".to_string())
}
