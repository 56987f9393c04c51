//! The lease thread: the one place that talks to Redis for limits. Every `sync_interval_ms` it
//! renews this replica's liveness and carries out each subject's plan (`Leases::plan`) in one
//! pipeline; between ticks it serves the workers' direct fetches (limits too small to lease),
//! batched. A failed or late call marks the store unavailable (the limiter then admits from
//! local shares or refuses, per `on_unavailable`); the next successful sync ends the outage
//! and reports the spend made meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{Connection, Pipeline, Value};
use sluice_core::config::SharedConfig;
use sluice_core::lease::{Dim, LeaseBook, Leases, Outcome, Transfer};
use sluice_core::limits::{next_period_start, period_start};

use super::scripts::{Names, Scripts};
use super::{Job, Meters, Target};

/// Seconds in a day.
const DAY_S: u64 = 86_400;

/// At most this often, a subject this replica admits requests for from a lease, with no
/// transfer for them since, reads the fleet's request window (a take of nothing, in the
/// sync's pipeline: no round trip of its own). Its `x-ratelimit-*-requests` headers then
/// follow what the other replicas admit, rather than this replica's last transfer (and, 60 s
/// after that, the whole limit).
const PEEK_MS: u64 = 1_000;

/// What the lease thread knew of a subject's request pool after its last sync.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peek {
    /// The pool's balance then (lower now: this replica admitted since).
    balance: i64,
    /// When this replica last transferred, or peeked, for the subject's requests.
    transfer_ms: u64,
}

/// The lease thread's state.
pub(super) struct Syncer {
    pub(super) config: SharedConfig,
    pub(super) target: Target,
    pub(super) replica: String,
    pub(super) book: Arc<LeaseBook>,
    pub(super) names: Names,
    pub(super) scripts: Scripts,
    pub(super) conn: Option<Connection>,
    pub(super) next_connect: Instant,
    /// The connection is new: restate what this replica holds before anything else.
    pub(super) fresh: bool,
    pub(super) meters: Meters,
    /// Per subject with a leased `rpm` (by the address of its `Leases`), for peeks.
    pub(super) peeks: HashMap<usize, Peek>,
}

/// One transfer on its way to Redis.
type Batch = Vec<(Arc<Leases>, Transfer)>;

impl Syncer {
    /// Runs until every sender is gone; `started` hears once the first sync was tried.
    pub(super) fn run(mut self, jobs: Receiver<Job>, started: crossbeam_channel::Sender<()>) {
        let every = Duration::from_millis(self.config.sync_interval_ms);
        self.sync(false);
        let _ = started.send(());
        let mut next_tick = Instant::now() + every;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    let mut fetches = Vec::new();
                    let mut publish = false;
                    let mut stop = None;
                    for job in std::iter::once(job).chain(jobs.try_iter()) {
                        match job {
                            Job::Fetch(wants, reply) => fetches.push((wants, reply)),
                            Job::Publish => publish = true,
                            Job::Shutdown(done) => stop = Some(done),
                        }
                    }
                    self.direct(fetches);
                    if publish {
                        self.publish();
                    }
                    if let Some(done) = stop {
                        self.sync(true);
                        let _ = done.send(());
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // On time even while direct fetches keep arriving: the liveness entry must be
            // renewed, or the other replicas would take this one's slots back.
            if Instant::now() >= next_tick {
                self.sync(false);
                next_tick = Instant::now() + every;
            }
        }
    }

    fn connection(&mut self) -> Option<&mut Connection> {
        if self.conn.is_none() && Instant::now() >= self.next_connect {
            self.next_connect = Instant::now() + Duration::from_millis(250);
            match self.connect() {
                Ok(c) => {
                    self.conn = Some(c);
                    self.fresh = true;
                }
                Err(e) => {
                    self.unavailable(&e);
                }
            }
        }
        self.conn.as_mut()
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let client = self.target.client()?;
        // A background call may take longer than a request may wait, but not much.
        let limit = Duration::from_millis((self.config.timeout_ms * 5).max(100));
        let mut conn = client.get_connection_with_timeout(limit)?;
        conn.set_read_timeout(Some(limit))?;
        conn.set_write_timeout(Some(limit))?;
        for s in [
            &self.scripts.rate,
            &self.scripts.window,
            &self.scripts.seconds,
            &self.scripts.held,
            &self.scripts.alive,
        ] {
            s.load(&mut conn)?;
        }
        Ok(conn)
    }

    fn unavailable(&mut self, e: &redis::RedisError) {
        self.conn = None;
        if self.book.health.handle_unavailable() {
            self.meters.outages.increment(1);
            self.meters.available.set(0.0);
            let policy = match self.book.health.policy() {
                sluice_core::lease::OnUnavailable::Local => "local",
                sluice_core::lease::OnUnavailable::Closed => "closed",
            };
            tracing::warn!(
                redis = %self.config.redis_display,
                reason = %e.category(),
                on_unavailable = policy,
                replicas = self.book.health.replicas(),
                "shared store unavailable: limits degraded"
            );
        }
    }

    fn available(&mut self, replicas: u32) {
        if self.book.health.handle_sync_ok(replicas) {
            self.meters.available.set(1.0);
            tracing::info!(
                redis = %self.config.redis_display,
                replicas,
                "shared store available: global limits in force"
            );
        }
    }

    /// One sync: liveness, then every subject's plan, in one round trip. `leaving`: return
    /// everything and leave the replicas set.
    fn sync(&mut self, leaving: bool) {
        let now_ms = crate::clock::now_ms();
        let unix_s = crate::clock::unix_s();
        let entries = self.book.entries();
        let replicas = self.book.health.replicas();
        let mut batch: Batch = Vec::new();
        let mut retired = Vec::new();
        // Plans are made only when the store answers (an outage keeps everything local).
        if self.connection().is_none() {
            return;
        }
        let fresh = self.fresh;
        for (leases, gone) in &entries {
            if fresh {
                for t in leases.resync() {
                    batch.push((leases.clone(), t));
                }
            }
            let period = period_start(leases.shape.budget_period, unix_s);
            let planned = batch.len();
            for t in leases.plan(replicas, now_ms, period, *gone || leaving) {
                batch.push((leases.clone(), t));
            }
            if !*gone && !leaving {
                let moved = batch[planned..].iter().any(|(_, t)| moves_requests(*t));
                if let Some(t) = self.peek(leases, moved, replicas, now_ms) {
                    batch.push((leases.clone(), t));
                }
            }
            if *gone {
                retired.push(leases.clone());
            }
        }
        let mut pipe = redis::pipe();
        let mut alive = evalsha(&self.scripts.alive, &[&self.names.replicas()]);
        alive.arg(&self.replica).arg(self.config.lease_ttl_ms);
        pipe.add_command(alive);
        if leaving {
            let mut leave = redis::cmd("ZREM");
            leave.arg(self.names.replicas()).arg(&self.replica);
            pipe.add_command(leave);
        }
        for (leases, t) in &batch {
            self.add(&mut pipe, leases, *t);
        }
        let result = self.run_pipe(&pipe);
        let now_ms = crate::clock::now_ms();
        match result {
            Ok(values) => {
                let replicas = values
                    .first()
                    .and_then(|v| redis::from_redis_value_ref::<u32>(v).ok())
                    .unwrap_or(1);
                let skip = if leaving { 2 } else { 1 };
                for ((leases, t), v) in batch.iter().zip(values.iter().skip(skip)) {
                    leases.apply(*t, outcome(*t, v), now_ms);
                }
                self.book.forget(&retired);
                self.note_balances(&entries);
                self.fresh = false;
                self.available(replicas);
            }
            Err(e) => {
                for (leases, t) in &batch {
                    leases.apply(*t, Outcome::Failed, now_ms);
                }
                self.unavailable(&e);
            }
        }
    }

    /// A take of nothing from `leases`' request window (its answer refreshes the fleet's use
    /// the headers show) when this replica admitted from its lease since the last sync and
    /// neither transferred (`moved`: this sync does) nor peeked for it within [`PEEK_MS`].
    fn peek(
        &mut self,
        leases: &Arc<Leases>,
        moved: bool,
        replicas: u32,
        now_ms: u64,
    ) -> Option<Transfer> {
        let limit = leases.shape.limit(Dim::Requests)?;
        // Too small to lease: every request is a transfer, so the view is always fresh.
        if leases.lease_size(limit, replicas) == 0 {
            return None;
        }
        let balance = leases.pool(Dim::Requests).balance();
        let last = self
            .peeks
            .entry(Arc::as_ptr(leases) as usize)
            .or_insert(Peek {
                balance,
                transfer_ms: now_ms,
            });
        if moved {
            last.transfer_ms = now_ms;
            return None;
        }
        let admitted = balance < last.balance;
        if admitted && now_ms.saturating_sub(last.transfer_ms) >= PEEK_MS {
            last.transfer_ms = now_ms;
            return Some(Transfer::Take {
                dim: Dim::Requests,
                amount: 0,
            });
        }
        None
    }

    /// After a sync: each subject's request balance, for the next sync's peeks; subjects gone
    /// are forgotten.
    fn note_balances(&mut self, entries: &[(Arc<Leases>, bool)]) {
        let mut peeks = HashMap::with_capacity(self.peeks.len());
        for (leases, gone) in entries {
            let key = Arc::as_ptr(leases) as usize;
            if let (false, Some(p)) = (*gone, self.peeks.get(&key)) {
                let balance = leases.pool(Dim::Requests).balance();
                peeks.insert(key, Peek { balance, ..*p });
            }
        }
        self.peeks = peeks;
    }

    /// Direct fetches for requests, in one round trip; each reply says whether it ran.
    fn direct(&mut self, fetches: Vec<(Batch, futures_channel::oneshot::Sender<bool>)>) {
        let batch: Batch = fetches
            .iter()
            .flat_map(|(w, _)| w.iter().cloned())
            .collect();
        let now_ms = crate::clock::now_ms();
        let ok = if batch.is_empty() || self.connection().is_none() {
            false
        } else {
            let mut pipe = redis::pipe();
            for (leases, t) in &batch {
                self.add(&mut pipe, leases, *t);
            }
            match self.run_pipe(&pipe) {
                Ok(values) => {
                    for ((leases, t), v) in batch.iter().zip(values.iter()) {
                        if let Transfer::Take { dim, .. } = t {
                            leases.note_direct(*dim, now_ms);
                        }
                        leases.apply(*t, outcome(*t, v), now_ms);
                    }
                    true
                }
                Err(e) => {
                    self.unavailable(&e);
                    false
                }
            }
        };
        self.meters.direct.increment(1);
        for (_, reply) in fetches {
            let _ = reply.send(ok);
        }
    }

    fn publish(&mut self) {
        let channel = self.names.keys_channel();
        let replica = self.replica.clone();
        if let Some(conn) = self.connection() {
            let r: redis::RedisResult<i64> =
                redis::cmd("PUBLISH").arg(channel).arg(replica).query(conn);
            if let Err(e) = r {
                self.unavailable(&e);
            }
        }
    }

    fn run_pipe(&mut self, pipe: &Pipeline) -> redis::RedisResult<Vec<Value>> {
        self.meters.round_trips.increment(1);
        match self.conn.as_mut() {
            Some(conn) => pipe.query(conn),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected",
            ))),
        }
    }

    fn add(&self, pipe: &mut Pipeline, leases: &Leases, t: Transfer) {
        let subject = leases.subject.store_name();
        let (dim, op, n) = match t {
            Transfer::Take { dim, amount } => (dim, "take", amount),
            Transfer::Charge { dim, amount } => (dim, "charge", amount),
            Transfer::Return { dim, amount } => {
                (dim, if dim.is_rate() { "refund" } else { "return" }, amount)
            }
            Transfer::Set { dim, amount } => (dim, "set", amount),
            Transfer::Spend { leased, .. } => (Dim::Budget, "spend", leased),
        };
        let limit = leases.shape.limit(dim).unwrap_or(0);
        if dim == Dim::Requests {
            // Keys of their own (`rpm-window` a sorted set, `rpm-seconds` a hash): never the
            // string a GCRA bucket of an older version left under `rpm`.
            let (name, script) = if limit <= sluice_core::limits::window::EXACT_MAX {
                ("rpm-window", &self.scripts.window)
            } else {
                ("rpm-seconds", &self.scripts.seconds)
            };
            let key = self.names.bucket(&subject, name, None);
            let mut cmd = evalsha(script, &[&key]);
            cmd.arg(op).arg(n).arg(limit);
            pipe.add_command(cmd);
            return;
        }
        if dim.is_rate() {
            let interval_us = 60_000_000.0 / (limit.max(1) as f64);
            let key = self.names.bucket(&subject, dim.as_str(), None);
            let mut cmd = evalsha(&self.scripts.rate, &[&key]);
            cmd.arg(op).arg(n).arg(limit).arg(interval_us);
            pipe.add_command(cmd);
            return;
        }
        let (period, seed, unleased) = match (dim, t) {
            // A budget hash that is missing (new, or Redis restarted without persistence)
            // starts from this replica's last view of the fleet's use: stricter, never looser.
            (Dim::Budget, Transfer::Spend { unleased, .. }) => (
                Some(leases.budget_period_start()),
                leases.budget_used().to_string(),
                unleased,
            ),
            (Dim::Budget, _) => (
                Some(leases.budget_period_start()),
                leases.budget_used().to_string(),
                0,
            ),
            _ => (None, String::new(), 0),
        };
        // How long the hash outlives its last use: a budget's until a day after its period
        // ends (a lifetime budget: forever), a concurrency hash a day.
        let ttl_ms = match period {
            Some(start) => {
                let end = next_period_start(leases.shape.budget_period, start);
                if end == u64::MAX {
                    0
                } else {
                    end.saturating_sub(crate::clock::unix_s())
                        .saturating_add(DAY_S)
                        .saturating_mul(1000)
                }
            }
            None => DAY_S * 1000,
        };
        let key = self.names.bucket(&subject, dim.as_str(), period);
        let mut cmd = evalsha(&self.scripts.held, &[&key, &self.names.replicas()]);
        cmd.arg(op)
            .arg(n)
            .arg(limit)
            .arg(&self.replica)
            .arg(seed)
            .arg(unleased)
            .arg(ttl_ms);
        pipe.add_command(cmd);
    }
}

/// Whether `t` takes from a request window (so its answer refreshes the fleet's use; a
/// return's does not).
fn moves_requests(t: Transfer) -> bool {
    matches!(
        t,
        Transfer::Take {
            dim: Dim::Requests,
            ..
        } | Transfer::Charge {
            dim: Dim::Requests,
            ..
        }
    )
}

/// `EVALSHA` of a loaded script over `keys` (the arguments follow).
fn evalsha(script: &redis::Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    cmd
}

/// Reads a script's `{granted, used, retry_after_ms}`.
fn outcome(t: Transfer, v: &Value) -> Outcome {
    match t {
        Transfer::Return { .. } | Transfer::Set { .. } | Transfer::Spend { .. } => Outcome::Done,
        _ => match redis::from_redis_value_ref::<(i64, i64, i64)>(v) {
            Ok((granted, used, wait)) => Outcome::Granted {
                granted: granted.max(0).unsigned_abs(),
                used: used.max(0).unsigned_abs(),
                retry_after_ms: wait.max(0).unsigned_abs(),
            },
            Err(_) => Outcome::Failed,
        },
    }
}
