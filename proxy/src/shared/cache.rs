//! The response cache's second level, on the fleet's Redis: every replica keeps its in-process
//! cache as the first level; an exact miss there asks Redis, for at most `shared.timeout_ms`
//! (late, down or broken: a miss, never an error), and every answer kept locally is also
//! written to Redis, asynchronously, by this module's thread — never by a worker.
//!
//! ```text
//!  worker: L1 miss ─► SharedCache::get ─► channel ─► cache thread ─► GET + PTTL ─► Redis
//!            │ ≤ timeout_ms (the reply or nothing: a miss)       ◄─ entry ◄─┘
//!            └─ hit: kept in L1 for what is left of its TTL, replayed
//!  settle: kept in L1 ─► SharedCache::put (try_send) ─► cache thread ─► SET PX ttl
//! ```
//!
//! Keys are `<key_prefix>c:<model slot>:<scope slot>:<hex of the keyed hash>` (fixed size,
//! namespaced by the fleet's prefix; the slots let a clear drop what it names), values the
//! stored answer in a small binary frame (`entry::encode`) no larger than `[cache]
//! max_entry_bytes` plus a header. Every value carries its TTL, so Redis's `maxmemory` (with a
//! `volatile-*` or `allkeys-*` eviction policy) bounds the whole level.
//!
//! The keyed hash must be the same on every replica: the fleet keeps the cache's key secret in
//! Redis (`fleet_secret`, written once, by the first replica to start). A replica that starts
//! while Redis is down keys with a secret of its own: its second level only misses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use metrics::Counter;
use sluice_core::cache::{CacheKey, Clear, SemanticQuery, StoredAnswer};
use sluice_core::config::SharedConfig;

use super::entry::{decode, encode, entry_name};
use super::Target;

/// Jobs the cache thread handles in one pipeline, at most.
const BATCH: usize = 64;

/// Work for the cache thread.
enum Job {
    /// Read an entry: the answer and the milliseconds it has left.
    Get(
        String,
        futures_channel::oneshot::Sender<Option<(Vec<u8>, u64)>>,
    ),
    /// Write an entry for `ttl_ms`.
    Put(String, Vec<u8>, u64),
    /// Drop every entry matching a `SCAN` pattern.
    Clear(String),
    /// Append a semantic entry to the fleet's stream (see the `index` module).
    Similar(Vec<(&'static str, Vec<u8>)>),
}

/// Metric handles.
#[derive(Clone)]
struct Meters {
    hits: Counter,
    misses: Counter,
    late: Counter,
    writes: Counter,
    dropped: Counter,
}

impl Meters {
    fn new() -> Self {
        metrics::describe_counter!(
            "sluice_shared_cache_hits_total",
            "Exact-cache misses of this replica answered by the shared (Redis) level."
        );
        metrics::describe_counter!(
            "sluice_shared_cache_misses_total",
            "Exact-cache lookups the shared level could not answer (absent, down or late)."
        );
        metrics::describe_counter!(
            "sluice_shared_cache_timeouts_total",
            "Shared-cache lookups that missed shared.timeout_ms (served as misses)."
        );
        metrics::describe_counter!(
            "sluice_shared_cache_writes_total",
            "Answers written to the shared cache."
        );
        metrics::describe_counter!(
            "sluice_shared_cache_dropped_total",
            "Shared-cache writes dropped (queue full or Redis unavailable)."
        );
        Meters {
            hits: metrics::counter!("sluice_shared_cache_hits_total"),
            misses: metrics::counter!("sluice_shared_cache_misses_total"),
            late: metrics::counter!("sluice_shared_cache_timeouts_total"),
            writes: metrics::counter!("sluice_shared_cache_writes_total"),
            dropped: metrics::counter!("sluice_shared_cache_dropped_total"),
        }
    }
}

/// The second level: the handle the workers use.
pub struct SharedCache {
    prefix: String,
    replica: String,
    timeout: Duration,
    /// Whether the cache thread holds a connection (lookups skip the queue while it does not).
    up: Arc<AtomicBool>,
    jobs: Sender<Job>,
    meters: Meters,
}

impl SharedCache {
    /// Starts the cache thread (it connects in the background).
    pub(super) fn start(
        config: &SharedConfig,
        target: Target,
        replica: &str,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded(4096);
        let up = Arc::new(AtomicBool::new(false));
        let meters = Meters::new();
        let worker = Worker {
            target,
            limit: Duration::from_millis((config.timeout_ms * 5).max(100)),
            stream: super::index::stream(&config.key_prefix),
            conn: None,
            next_connect: Instant::now(),
            up: up.clone(),
            meters: meters.clone(),
        };
        std::thread::Builder::new()
            .name("sluice-shared-cache".into())
            .spawn(move || worker.run(rx))?;
        Ok(SharedCache {
            prefix: config.key_prefix.clone(),
            replica: replica.to_owned(),
            timeout: Duration::from_millis(config.timeout_ms),
            up,
            jobs: tx,
            meters,
        })
    }

    fn name(&self, key: &CacheKey) -> String {
        entry_name(&self.prefix, key)
    }

    /// Shares a semantic entry (its answer went through [`SharedCache::put`] first).
    pub fn put_similar(&self, key: &CacheKey, q: &SemanticQuery, vector: &[f32]) {
        if let Some(fields) = super::index::entry(&self.replica, key, q, vector) {
            let _ = self.jobs.try_send(Job::Similar(fields));
        }
    }

    /// The entry for `key` and the milliseconds it has left, when Redis has it and answers
    /// within `timeout_ms`; anything else is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<(StoredAnswer, u64)> {
        if !self.up.load(Ordering::Acquire) {
            self.meters.misses.increment(1);
            return None;
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        if self.jobs.try_send(Job::Get(self.name(key), tx)).is_err() {
            self.meters.misses.increment(1);
            return None;
        }
        let found = match crate::clock::timeout(self.timeout, std::pin::pin!(rx)).await {
            Ok(Ok(found)) => found,
            Ok(Err(_)) => None,
            Err(_) => {
                self.meters.late.increment(1);
                None
            }
        };
        match found.and_then(|(bytes, left)| decode(&bytes).map(|a| (a, left))) {
            Some(hit) => {
                self.meters.hits.increment(1);
                Some(hit)
            }
            None => {
                self.meters.misses.increment(1);
                None
            }
        }
    }

    /// Writes `answer` for `ttl_ms` (never waits: a full queue or a Redis outage drops it; the
    /// cache thread reconnects for it when it can).
    pub fn put(&self, key: &CacheKey, answer: &StoredAnswer, ttl_ms: u64) {
        if ttl_ms == 0 {
            return;
        }
        let job = Job::Put(self.name(key), encode(answer), ttl_ms);
        if self.jobs.try_send(job).is_err() {
            self.meters.dropped.increment(1);
        }
    }

    /// Drops what `which` names from the shared level too (in the background). A clear by
    /// model or scope drops their slots' entries (slots are shared by a few names: at worst
    /// some other entries go too, which a cache may always do).
    pub fn clear(&self, which: Clear<'_>) {
        let slot = |name: Option<&str>| match name {
            Some(n) => sluice_core::cache::key::slot(n).to_string(),
            None => "*".to_owned(),
        };
        let pattern = format!(
            "{}c:{}:{}:*",
            self.prefix,
            slot(which.model),
            slot(which.scope)
        );
        let _ = self.jobs.try_send(Job::Clear(pattern));
    }
}

/// The request path's hook (after a first-level exact miss): the fleet's entry for `key`, if
/// Redis has one within `timeout_ms`, kept in the first level for what is left of its TTL.
pub async fn second_level(
    worker: &crate::state::Worker,
    key: Option<&CacheKey>,
) -> Option<Arc<StoredAnswer>> {
    let (fleet, key) = (worker.shared.fleet.as_ref()?, key?);
    let (answer, left_ms) = fleet.cache.get(key).await?;
    let answer = Arc::new(answer);
    let now = crate::clock::now_ms();
    worker
        .shared
        .responses
        .insert(key, StoredAnswer::clone(&answer), left_ms, now);
    Some(answer)
}

/// Settlement's hook: an answer kept in the first level goes to the fleet's too.
pub fn keep(worker: &crate::state::Worker, key: &CacheKey, answer: &StoredAnswer, ttl_ms: u64) {
    let fits = answer.body.len() as u64 <= worker.shared.config.cache.max_entry_bytes;
    if let (Some(fleet), true) = (&worker.shared.fleet, fits) {
        fleet.cache.put(key, answer, ttl_ms);
    }
}

/// Settlement's hook for a semantic entry kept in the first level.
pub fn keep_similar(
    worker: &crate::state::Worker,
    key: &CacheKey,
    q: &SemanticQuery,
    vector: &[f32],
) {
    if let Some(fleet) = &worker.shared.fleet {
        fleet.cache.put_similar(key, q, vector);
    }
}

/// The cache thread: one connection, jobs in batches.
struct Worker {
    target: Target,
    limit: Duration,
    stream: String,
    conn: Option<redis::Connection>,
    next_connect: Instant,
    up: Arc<AtomicBool>,
    meters: Meters,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        loop {
            // Wake now and then to reconnect while idle, so lookups find the level up.
            let first = match jobs.recv_timeout(Duration::from_millis(250)) {
                Ok(job) => Some(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            self.connect();
            let batch: Vec<Job> = first
                .into_iter()
                .chain(jobs.try_iter().take(BATCH - 1))
                .collect();
            if !batch.is_empty() {
                self.handle(batch);
            }
        }
    }

    fn connect(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_connect {
            return;
        }
        self.next_connect = Instant::now() + Duration::from_millis(250);
        let conn = self.target.client().and_then(|c| {
            let conn = c.get_connection_with_timeout(self.limit)?;
            conn.set_read_timeout(Some(self.limit))?;
            conn.set_write_timeout(Some(self.limit))?;
            Ok(conn)
        });
        if let Ok(c) = conn {
            self.conn = Some(c);
            self.up.store(true, Ordering::Release);
        }
    }

    fn handle(&mut self, batch: Vec<Job>) {
        let mut pipe = redis::pipe();
        let mut clears = Vec::new();
        let mut gets = Vec::new();
        let mut writes = 0;
        for job in batch {
            match job {
                Job::Get(key, reply) => {
                    pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                    gets.push(reply);
                }
                Job::Put(key, value, ttl_ms) => {
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                    writes += 1;
                }
                Job::Clear(pattern) => clears.push(pattern),
                Job::Similar(fields) => {
                    pipe.cmd("XADD")
                        .arg(&self.stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(super::index::STREAM_MAX)
                        .arg("*");
                    for (n, v) in fields {
                        pipe.arg(n).arg(v);
                    }
                    pipe.ignore();
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            self.meters.dropped.increment(writes);
            return;
        };
        let result: redis::RedisResult<Vec<redis::Value>> = if pipe.cmd_iter().next().is_none() {
            Ok(Vec::new())
        } else {
            pipe.query(conn)
        };
        match result {
            Ok(values) => {
                self.meters.writes.increment(writes);
                let mut values = values.iter();
                for reply in gets {
                    let value = values.next();
                    let pttl = values.next();
                    let value =
                        value.and_then(|v| redis::from_redis_value_ref::<Option<Vec<u8>>>(v).ok());
                    let pttl = pttl.and_then(|v| redis::from_redis_value_ref::<i64>(v).ok());
                    // PTTL: -1 no expiry (not ours), -2 gone since the GET.
                    let entry = match (value.flatten(), pttl) {
                        (Some(v), Some(left)) if left > 0 => Some((v, left.unsigned_abs())),
                        _ => None,
                    };
                    let _ = reply.send(entry);
                }
            }
            Err(e) => {
                tracing::warn!(reason = %e.category(), error = %e, "shared cache: Redis call failed");
                self.meters.dropped.increment(writes);
                self.lost();
                return;
            }
        }
        for pattern in clears {
            if let Err(e) = self.clear(&pattern) {
                tracing::warn!(reason = %e.category(), "shared cache: clear failed");
                self.lost();
                return;
            }
        }
    }

    fn clear(&mut self, pattern: &str) -> redis::RedisResult<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query(conn)?;
            if !keys.is_empty() {
                redis::cmd("UNLINK").arg(&keys).query::<()>(conn)?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    fn lost(&mut self) {
        self.conn = None;
        self.up.store(false, Ordering::Release);
    }
}

/// The fleet's cache key secret: the one in Redis, or a new one written there if none is
/// (the first replica's wins). `None` when Redis does not answer (within a second).
pub(super) fn fleet_secret(target: &Target, prefix: &str) -> Option<[u8; 32]> {
    let client = target.client().ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let name = format!("{prefix}cache-secret");
    // A fresh secret from the kernel (no kernel randomness: this replica keys on its own).
    let mut fresh = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut fresh))
        .ok()?;
    let mine: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    let _: redis::RedisResult<()> = redis::cmd("SET")
        .arg(&name)
        .arg(&mine)
        .arg("NX")
        .query(&mut conn);
    let hex: String = redis::cmd("GET").arg(&name).query(&mut conn).ok()?;
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
