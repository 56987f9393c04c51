//! Leases: the fleet backend of the limiter, where every replica of a gateway shares each
//! key's, team's and deployment's limits through a shared store (Redis, driven by the proxy).
//!
//! The request path never waits on the network for a limit large enough to lease: each
//! replica holds a slice ([`lease_size`]) of every bucket — requests, tokens, budget,
//! concurrency — in local atomics ([`Pool`]) and admits from it; a background thread tops the
//! slices up, returns what is unused and reports spend, in batches ([`Leases::plan`], carried
//! out by the proxy and answered with [`Leases::apply`]). A limit too small to lease
//! (`lease_size == 0`) holds nothing: a request that finds its pool short asks the store for
//! exactly what it needs ([`LeasedLimiter::shortfall`]), within `shared.timeout_ms`.
//!
//! ```text
//!  request ─► LeasedLimiter::shortfall ─(only when a pool is short)─► store, ≤ timeout_ms
//!          ─► admit / reserve: take from the pools (atomics)        ─► settle: give back the
//!             unused part, count the spend              background: plan ─► store ─► apply
//! ```
//!
//! # The over-admission bound
//!
//! Every unit a replica admits was first taken from the shared store, so the store's own law
//! holds for the fleet: for `rpm` a sliding 60 s window (at most `rpm` units taken in any 60 s,
//! the proxy's `WINDOW` script), for `tpm` a token bucket (at most `capacity + refill ×
//! elapsed`).
//! What leasing adds is time-shift: units leased before a window opens and spent inside it.
//! Those are at most what the leases hold when the window opens — per replica one
//! [`lease_size`], since every sync returns anything above it (refunds of settled requests
//! included; units fetched for a waiting request stay [`DIRECT_HOLD_MS`] for it) — so with
//! `N` replicas the fleet admits at most `N × lease_size(limit, N)` more than one bucket would
//! ([`over_admission_bound`]): at most `limit / 16`, and nothing for a limit under `16 × N`
//! (those are taken from the store directly). A deployment's limit keeps at least one unit
//! leased per replica ([`Leases::lease_size`]): up to `N` more. Held buckets (concurrency,
//! budget reservations) are never over-admitted: a slot or a reservation is held in the store
//! by exactly one replica (one that crashes takes with it the spend it had not reported, at
//! most one sync interval's). A replica that dies holding leases frees its slots and budget when
//! its liveness entry expires in the store; its unused rate leases come back with the refill.
//!
//! So any 60 s window of a fleet admits at most `rpm + N × lease_size(rpm, N)` requests — `rpm`
//! exactly for a limit under `16 × N` (a key with rpm = 10 through two replicas: at most 10),
//! for a deployment up to `N` more — as on one process, where the window is exact. (Before
//! this, `rpm` was a token bucket here too, which let a 60 s window see up to `2 × rpm − 1`.)
//!
//! # When the store is unavailable
//!
//! [`FleetHealth`] says whether the last sync succeeded. While it did not, `on_unavailable =
//! "local"` admits each subject from a local set holding `limit ÷ replicas` (the configured
//! `expected_replicas`, else the replicas seen alive at the last successful sync), and its spend
//! is reported when the store is back; `"closed"` refuses with [`Refusal::Unavailable`]. The
//! bound above holds while the store answers: the local shares can add up to one more limit
//! per window (each replica its share). A direct fetch slower than `timeout_ms` admits its own
//! request from the local share ([`ShareOnLate`]); [`LATE_FETCHES_TO_DEGRADE`] late fetches in
//! a row count as the store being unavailable, so `timeout_ms` should sit above the store's
//! latency, but one slow moment does not degrade a replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use crate::limiter::{self, Ask, Denied, Limiter, Permit, Refusal};
use crate::limits::{next_period_start, period_start, LimitSet, RetryAfter, Snapshot};

pub mod pool;

pub use pool::{
    lease_size, over_admission_bound, Dim, Leases, Outcome, Pool, Shape, Subject, Transfer,
    DIRECT_HOLD_MS, LEASE_SHARE,
};

/// The limits of `set`, as the store needs them.
pub fn shape_of(set: &LimitSet) -> Shape {
    Shape {
        rpm: set.requests.as_ref().map(|b| b.capacity()),
        tpm: set.tokens.as_ref().map(|b| b.capacity()),
        budget_micros: set.budget_limit_micros,
        budget_period: set.budget_period,
        concurrency: set.concurrency.as_ref().map(|c| c.limit()),
    }
}

/// `set`'s requests in flight: with leases, the fleet's as this replica last saw them
/// ([`Leases::in_flight`]); else (or before any transfer) this process's. `None` without a
/// concurrency limit.
pub fn in_flight(set: &LimitSet) -> Option<u64> {
    let local = set.concurrency.as_ref()?;
    let fleet = set.leases.get().and_then(|l| l.in_flight());
    Some(fleet.unwrap_or_else(|| u64::from(local.in_flight())))
}

/// The `x-ratelimit-*` numbers of `set`'s requests (`tokens` false) or tokens bucket at
/// `now_ms`: with leases, the fleet's view ([`Leases::rate_snapshot`]); else (or before any
/// transfer) the local bucket's. `None` without such a limit.
pub fn rate_snapshot(set: &LimitSet, tokens: bool, now_ms: u64) -> Option<Snapshot> {
    let (local, dim) = if tokens {
        (set.tokens.as_ref()?.snapshot(now_ms), Dim::Tokens)
    } else {
        (set.requests.as_ref()?.snapshot(now_ms), Dim::Requests)
    };
    let fleet = set
        .leases
        .get()
        .and_then(|l| l.rate_snapshot(dim, now_ms))
        .map(|(limit, remaining, reset_ms)| Snapshot {
            limit,
            remaining,
            reset_ms,
        });
    Some(fleet.unwrap_or(local))
}

/// The local share of `leases` used while the store is unavailable: each limit ÷ `replicas`
/// (at least 1), the budget's remainder at the last sync ÷ `replicas`.
fn local_share(leases: &Leases, replicas: u32, unix_s: u64) -> LimitSet {
    let n = u64::from(replicas.max(1));
    let share = |l: u64| (l / n).max(1);
    let s = &leases.shape;
    let budget = s.budget_micros.map(|b| {
        let left = b.saturating_sub(leases.budget_used());
        (left / n, s.budget_period)
    });
    LimitSet::new(
        s.rpm.map(share),
        s.tpm.map(share),
        s.concurrency
            .map(|c| u32::try_from(share(u64::from(c))).unwrap_or(u32::MAX)),
        budget,
        0,
        unix_s,
    )
}

/// `[shared] on_unavailable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Keep serving, each replica enforcing its share of every limit.
    #[default]
    Local,
    /// Refuse with 503 and `Retry-After`.
    Closed,
}

/// Direct fetches in a row that must miss `shared.timeout_ms` before a replica counts the
/// store unavailable. One late fetch (a loaded machine, a slow moment of the store) admits only
/// its own request from the local share ([`ShareOnLate`]); the replica keeps its leases and
/// global limits.
pub const LATE_FETCHES_TO_DEGRADE: u32 = 3;

/// Whether the shared store answers, and how many replicas share it. Written by the
/// background, read by every admission.
#[derive(Debug)]
pub struct FleetHealth {
    available: AtomicU8,
    replicas_seen: AtomicU32,
    /// Direct fetches in a row that missed `timeout_ms`.
    late: AtomicU32,
    expected: Option<u32>,
    policy: OnUnavailable,
}

impl FleetHealth {
    /// Starts unavailable (until the first sync) with `expected_replicas` if configured.
    pub fn new(expected: Option<u32>, policy: OnUnavailable) -> Self {
        FleetHealth {
            available: AtomicU8::new(0),
            replicas_seen: AtomicU32::new(1),
            late: AtomicU32::new(0),
            expected,
            policy,
        }
    }

    /// Whether the last sync reached the store.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire) == 1
    }

    /// Records a sync (or a direct fetch) that reached the store, which counted `replicas`
    /// alive; returns whether this ends an outage.
    pub fn handle_sync_ok(&self, replicas: u32) -> bool {
        self.replicas_seen.store(replicas.max(1), Ordering::Release);
        let ended = self.available.swap(1, Ordering::AcqRel) == 0;
        if ended {
            self.late.store(0, Ordering::Release);
        }
        ended
    }

    /// Records a direct fetch that answered within `timeout_ms`: the late ones are forgiven.
    pub fn handle_fetch_ok(&self) {
        if self.late.load(Ordering::Relaxed) != 0 {
            self.late.store(0, Ordering::Release);
        }
    }

    /// Records a direct fetch that missed `timeout_ms`; returns whether this starts an outage
    /// (the [`LATE_FETCHES_TO_DEGRADE`]th in a row).
    pub fn handle_fetch_late(&self) -> bool {
        let late = self.late.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        late >= LATE_FETCHES_TO_DEGRADE && self.handle_unavailable()
    }

    /// Records a failed or late store call; returns whether this starts an outage.
    pub fn handle_unavailable(&self) -> bool {
        self.available.swap(0, Ordering::AcqRel) == 1
    }

    /// The replicas limits are divided among: `expected_replicas` if configured, else those
    /// seen alive at the last successful sync.
    pub fn replicas(&self) -> u32 {
        self.expected
            .unwrap_or_else(|| self.replicas_seen.load(Ordering::Acquire))
            .max(1)
    }

    /// What to do while unavailable.
    pub fn policy(&self) -> OnUnavailable {
        self.policy
    }
}

/// Every [`Leases`] of this replica, for the background.
#[derive(Debug)]
pub struct LeaseBook {
    entries: Mutex<Vec<Arc<Leases>>>,
    /// While the store is unavailable: each subject's local share (and the replica count it
    /// was cut for), by its leases' address, built on first use.
    fallbacks: Mutex<HashMap<usize, (u32, Arc<LimitSet>)>>,
    /// Store health.
    pub health: FleetHealth,
}

impl LeaseBook {
    /// An empty book.
    pub fn new(health: FleetHealth) -> Self {
        LeaseBook {
            entries: Mutex::new(Vec::new()),
            fallbacks: Mutex::new(HashMap::new()),
            health,
        }
    }

    /// Every registered subject, and whether its set is gone (only the book holds it): the
    /// background returns a retired entry's leases, then calls [`LeaseBook::forget`].
    pub fn entries(&self) -> Vec<(Arc<Leases>, bool)> {
        let list = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .map(|l| {
                let gone = Arc::strong_count(l) == 1;
                (l.clone(), gone)
            })
            .collect()
    }

    /// Drops retired entries whose leases were returned.
    pub fn forget(&self, gone: &[Arc<Leases>]) {
        let mut list = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|l| !gone.iter().any(|g| Arc::ptr_eq(g, l)));
        let mut shares = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        for g in gone {
            shares.remove(&(Arc::as_ptr(g) as usize));
        }
    }

    /// The local share of `leases` (see [`local_share`]), built on first use and kept (rebuilt
    /// only when the replica count changes): an outage that comes and goes must not hand out
    /// a fresh share each time, so over any minute a replica admits at most one share of a
    /// rate from it.
    fn fallback(&self, leases: &Arc<Leases>, unix_s: u64) -> Arc<LimitSet> {
        let replicas = self.health.replicas();
        let mut shares = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
        let slot = shares
            .entry(Arc::as_ptr(leases) as usize)
            .or_insert_with(|| (replicas, Arc::new(local_share(leases, replicas, unix_s))));
        if slot.0 != replicas {
            *slot = (replicas, Arc::new(local_share(leases, replicas, unix_s)));
        }
        slot.1.clone()
    }

    fn leases_of(&self, set: &LimitSet) -> Option<Arc<Leases>> {
        let subject = set.subject.as_ref()?;
        Some(
            set.leases
                .get_or_init(|| {
                    let l = Arc::new(Leases::new(
                        subject.clone(),
                        shape_of(set),
                        set.budget.period_start(),
                        set.budget.spend(),
                    ));
                    self.entries
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(l.clone());
                    l
                })
                .clone(),
        )
    }
}

/// What a request needs fetched from the store before it can be admitted or reserved.
#[derive(Debug)]
pub struct Want {
    /// Whose.
    pub leases: Arc<Leases>,
    /// The transfer (a [`Transfer::Take`] of exactly the shortfall).
    pub transfer: Transfer,
}

/// The fleet limiter: admits from leased pools (see the module docs). Sets without a
/// [`Subject`] are admitted locally, as [`limiter::LocalLimiter`] does.
#[derive(Debug)]
pub struct LeasedLimiter {
    /// The leases and the store's health.
    pub book: Arc<LeaseBook>,
}

/// How one set is admitted right now.
enum Path {
    Local,
    Leased(Arc<Leases>),
    Fallback(Arc<LimitSet>),
}

impl LeasedLimiter {
    /// A limiter over `book`.
    pub fn new(book: Arc<LeaseBook>) -> Self {
        LeasedLimiter { book }
    }

    fn path(&self, set: &LimitSet, fallback: bool, unix_s: u64) -> Result<Path, Refusal> {
        let Some(leases) = self.book.leases_of(set) else {
            return Ok(Path::Local);
        };
        if fallback {
            return Ok(Path::Fallback(self.book.fallback(&leases, unix_s)));
        }
        Ok(Path::Leased(leases))
    }

    fn degraded(&self) -> Result<bool, Refusal> {
        let health = &self.book.health;
        if health.available() {
            return Ok(false);
        }
        match health.policy() {
            OnUnavailable::Local => Ok(true),
            OnUnavailable::Closed => Err(Refusal::Unavailable),
        }
    }

    /// What the store must grant before `sets` can be admitted (`ask` is `None`) or reserved
    /// (`Some`): a take of exactly what each short pool lacks. Empty when every pool covers
    /// the request, when the store said a short bucket is empty, or while it is unavailable.
    pub fn shortfall(&self, sets: &[&LimitSet], ask: Option<&Ask>, now_ms: u64) -> Vec<Want> {
        let mut out = Vec::new();
        if !self.book.health.available() {
            return out;
        }
        for set in sets {
            let Some(leases) = self.book.leases_of(set) else {
                continue;
            };
            let needs: [(Dim, u64); 2] = match ask {
                None => [(Dim::Concurrency, 1), (Dim::Requests, 1)],
                Some(a) => [(Dim::Tokens, a.tokens), (Dim::Budget, a.cost_micros)],
            };
            for (dim, n) in needs {
                let Some(limit) = leases.shape.limit(dim) else {
                    continue;
                };
                if n == 0 || n > limit {
                    continue;
                }
                if dim == Dim::Budget
                    && period_start(leases.shape.budget_period, ask.map_or(0, |a| a.unix_s))
                        > leases.budget_period_start()
                {
                    continue;
                }
                let pool = leases.pool(dim);
                let balance = pool.balance();
                let have = u64::try_from(balance).unwrap_or(0);
                if have >= n || pool.known_empty(now_ms) {
                    continue;
                }
                out.push(Want {
                    leases: leases.clone(),
                    transfer: Transfer::Take {
                        dim,
                        amount: n - have,
                    },
                });
            }
        }
        out
    }

    fn rate_wait(leases: &Leases, dim: Dim, now_ms: u64) -> RetryAfter {
        let until = leases.pool(dim).empty_until_ms();
        if until > now_ms {
            return RetryAfter(until - now_ms);
        }
        let per_minute = leases.shape.limit(dim).unwrap_or(1).max(1);
        RetryAfter(60_000u64.div_ceil(per_minute).max(1))
    }

    fn admit_leased(leases: &Leases, now_ms: u64) -> Result<(), Refusal> {
        let conc = leases.shape.concurrency.is_some();
        if conc && !leases.pool(Dim::Concurrency).try_take(1) {
            return Err(Refusal::Concurrency);
        }
        if leases.shape.rpm.is_some() && !leases.pool(Dim::Requests).try_take(1) {
            if conc {
                leases.pool(Dim::Concurrency).put(1);
            }
            return Err(Refusal::Requests(Self::rate_wait(
                leases,
                Dim::Requests,
                now_ms,
            )));
        }
        Ok(())
    }

    fn undo_admit(leases: &Leases) {
        if leases.shape.concurrency.is_some() {
            leases.pool(Dim::Concurrency).put(1);
        }
        if leases.shape.rpm.is_some() {
            leases.pool(Dim::Requests).put(1);
        }
    }

    fn reserve_leased(leases: &Leases, ask: &Ask) -> Result<(), Refusal> {
        if let Some(tpm) = leases.shape.tpm {
            if ask.tokens > tpm {
                return Err(Refusal::Tokens(RetryAfter::NEVER));
            }
            if !leases.pool(Dim::Tokens).try_take(ask.tokens) {
                return Err(Refusal::Tokens(Self::rate_wait(
                    leases,
                    Dim::Tokens,
                    ask.now_ms,
                )));
            }
        }
        if leases.shape.budget_micros.is_some() {
            let period = leases.shape.budget_period;
            let stale = period_start(period, ask.unix_s) > leases.budget_period_start();
            if stale || !leases.pool(Dim::Budget).try_take(ask.cost_micros) {
                if leases.shape.tpm.is_some() {
                    leases.pool(Dim::Tokens).put(signed(ask.tokens));
                }
                let next = next_period_start(period, ask.unix_s);
                let wait = if next == u64::MAX {
                    RetryAfter::NEVER
                } else {
                    RetryAfter(next.saturating_sub(ask.unix_s).saturating_mul(1000))
                };
                return Err(Refusal::Budget(wait));
            }
        }
        Ok(())
    }

    fn undo_reserve(leases: &Leases, tokens: u64, cost_micros: u64) {
        if leases.shape.tpm.is_some() {
            leases.pool(Dim::Tokens).put(signed(tokens));
        }
        if leases.shape.budget_micros.is_some() {
            leases.pool(Dim::Budget).put(signed(cost_micros));
        }
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Unix seconds are not passed to `admit`; the local share's budget period is set again by
/// `reserve` (`Budget::roll_to`), so any start will do.
const NO_UNIX: u64 = 0;

/// [`LeasedLimiter`] for one request whose direct fetch missed `timeout_ms`: it is admitted
/// from the local share (as while the store is unavailable, `on_unavailable = "local"`) rather
/// than refused for a pool the store had no time to fill; the rest of its way (reserve,
/// settle, release) follows its permit, as any request's. The replica itself stays global
/// ([`LATE_FETCHES_TO_DEGRADE`]).
#[derive(Debug)]
pub struct ShareOnLate<'a>(pub &'a LeasedLimiter);

impl Limiter for ShareOnLate<'_> {
    fn admit(&self, sets: &[&LimitSet], now_ms: u64) -> Result<Permit, Denied> {
        let share = self.0.book.health.policy() == OnUnavailable::Local;
        self.0.admit_with(sets, now_ms, share)
    }

    fn reserve(&self, sets: &[&LimitSet], permit: &mut Permit, ask: &Ask) -> Result<(), Denied> {
        self.0.reserve(sets, permit, ask)
    }

    fn settle(
        &self,
        sets: &[&LimitSet],
        permit: Permit,
        tokens: u64,
        cost_micros: u64,
        now_ms: u64,
    ) {
        self.0.settle(sets, permit, tokens, cost_micros, now_ms);
    }

    fn release(&self, sets: &[&LimitSet], permit: Permit, now_ms: u64) {
        self.0.release(sets, permit, now_ms);
    }

    fn prepare(&self, set: &LimitSet) {
        self.0.prepare(set);
    }
}

impl LeasedLimiter {
    /// [`Limiter::admit`], from the local shares when `share` (else only while degraded).
    fn admit_with(&self, sets: &[&LimitSet], now_ms: u64, share: bool) -> Result<Permit, Denied> {
        let fallback = match self.degraded() {
            Ok(f) => f || share,
            // Closed: refuse only what has a limit to check; the rest goes on locally.
            Err(refusal) => {
                let limited = sets.iter().position(|s| {
                    self.book
                        .leases_of(s)
                        .is_some_and(|l| !l.shape.is_unlimited())
                });
                if let Some(set) = limited {
                    return Err(Denied { set, refusal });
                }
                true
            }
        };
        let mut permit = Permit {
            tokens: 0,
            cost_micros: 0,
            fallback: 0,
        };
        let mut taken: SmallVec<[Path; 2]> = SmallVec::new();
        for (i, set) in sets.iter().enumerate() {
            let done = self.path(set, fallback, NO_UNIX).and_then(|p| {
                match &p {
                    Path::Local => limiter::admit_requests(set, now_ms)?,
                    Path::Leased(l) => Self::admit_leased(l, now_ms)?,
                    Path::Fallback(f) => limiter::admit_requests(f, now_ms)?,
                }
                Ok(p)
            });
            match done {
                Ok(p) => {
                    if matches!(p, Path::Fallback(_)) {
                        permit.fallback |= 1 << i;
                    }
                    taken.push(p);
                }
                Err(refusal) => {
                    for (p, s) in taken.iter().zip(sets) {
                        match p {
                            Path::Local => limiter::undo_requests(s, now_ms),
                            Path::Leased(l) => Self::undo_admit(l),
                            Path::Fallback(f) => limiter::undo_requests(f, now_ms),
                        }
                    }
                    return Err(Denied { set: i, refusal });
                }
            }
        }
        Ok(permit)
    }
}

impl Limiter for LeasedLimiter {
    fn admit(&self, sets: &[&LimitSet], now_ms: u64) -> Result<Permit, Denied> {
        self.admit_with(sets, now_ms, false)
    }

    fn reserve(&self, sets: &[&LimitSet], permit: &mut Permit, ask: &Ask) -> Result<(), Denied> {
        let mut taken: SmallVec<[Path; 2]> = SmallVec::new();
        for (i, set) in sets.iter().enumerate() {
            let fallback = permit.fallback & (1 << i) != 0;
            let done = self.path(set, fallback, ask.unix_s).and_then(|p| {
                match &p {
                    Path::Local => limiter::reserve_one(set, ask)?,
                    Path::Leased(l) => Self::reserve_leased(l, ask)?,
                    Path::Fallback(f) => limiter::reserve_one(f, ask)?,
                }
                Ok(p)
            });
            match done {
                Ok(p) => taken.push(p),
                Err(refusal) => {
                    for (p, s) in taken.iter().zip(sets) {
                        match p {
                            Path::Local => {
                                limiter::undo_reserve(s, ask.tokens, ask.cost_micros, ask.now_ms)
                            }
                            Path::Leased(l) => Self::undo_reserve(l, ask.tokens, ask.cost_micros),
                            Path::Fallback(f) => {
                                limiter::undo_reserve(f, ask.tokens, ask.cost_micros, ask.now_ms)
                            }
                        }
                    }
                    return Err(Denied { set: i, refusal });
                }
            }
        }
        permit.tokens += ask.tokens;
        permit.cost_micros += ask.cost_micros;
        Ok(())
    }

    fn settle(
        &self,
        sets: &[&LimitSet],
        permit: Permit,
        tokens: u64,
        cost_micros: u64,
        now_ms: u64,
    ) {
        for (i, set) in sets.iter().enumerate() {
            let fallback = permit.fallback & (1 << i) != 0;
            let one = Permit {
                tokens: permit.tokens,
                cost_micros: permit.cost_micros,
                fallback: 0,
            };
            match self.path(set, fallback, NO_UNIX) {
                Ok(Path::Leased(l)) => {
                    if l.shape.tpm.is_some() {
                        l.pool(Dim::Tokens)
                            .put(signed(permit.tokens) - signed(tokens));
                    }
                    if l.shape.budget_micros.is_some() {
                        l.pool(Dim::Budget)
                            .put(signed(permit.cost_micros) - signed(cost_micros));
                        l.spend_leased(cost_micros);
                    } else {
                        l.spend_unleased(cost_micros);
                    }
                    if l.shape.concurrency.is_some() {
                        l.pool(Dim::Concurrency).put(1);
                    }
                    // The set's own budget keeps the replica's spend for reporting.
                    set.budget.add_spend(cost_micros);
                }
                Ok(Path::Fallback(f)) => {
                    limiter::LocalLimiter.settle(&[&f], one, tokens, cost_micros, now_ms);
                    if let Some(l) = self.book.leases_of(set) {
                        l.spend_unleased(cost_micros);
                    }
                    set.budget.add_spend(cost_micros);
                }
                _ => limiter::LocalLimiter.settle(&[*set], one, tokens, cost_micros, now_ms),
            }
        }
    }

    fn prepare(&self, set: &LimitSet) {
        let _ = self.book.leases_of(set);
    }

    fn release(&self, sets: &[&LimitSet], permit: Permit, now_ms: u64) {
        for (i, set) in sets.iter().enumerate() {
            let fallback = permit.fallback & (1 << i) != 0;
            match self.path(set, fallback, NO_UNIX) {
                Ok(Path::Leased(l)) => {
                    Self::undo_reserve(&l, permit.tokens, permit.cost_micros);
                    Self::undo_admit(&l);
                }
                Ok(Path::Fallback(f)) => {
                    limiter::undo_reserve(&f, permit.tokens, permit.cost_micros, now_ms);
                    limiter::undo_requests(&f, now_ms);
                }
                _ => {
                    limiter::undo_reserve(set, permit.tokens, permit.cost_micros, now_ms);
                    limiter::undo_requests(set, now_ms);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
