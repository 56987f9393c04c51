//! One subject's leases on this replica: the pools the request path admits from, and the
//! sans-IO sync ([`Leases::plan`] → the proxy carries the transfers out → [`Leases::apply`]).
//! A leaf: it knows nothing of `LimitSet` (the limiter in the parent module builds a
//! [`Shape`] from one), so `limits` can hold a set's leases without an import circle.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::keys::BudgetPeriod;

/// The store's `rpm` window, in milliseconds (the local `RequestWindow`'s too).
const WINDOW_MS: u64 = 60_000;

/// A lease is at most `limit / (LEASE_SHARE × replicas)` units.
pub const LEASE_SHARE: u64 = 16;

/// How long units fetched directly for a request stay put before the background may return
/// them (the request that asked for them uses them first).
pub const DIRECT_HOLD_MS: u64 = 100;

/// Whose limits a set holds; names the set's buckets in the shared store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A virtual key, by id.
    Key(Arc<str>),
    /// A team, by name.
    Team(Arc<str>),
    /// A deployment (the providers' own limits), by label.
    Deployment(Arc<str>),
}

impl Subject {
    /// The name of the subject in the shared store: `k:<id>`, `t:<name>`, `d:<label>`.
    pub fn store_name(&self) -> String {
        match self {
            Subject::Key(id) => format!("k:{id}"),
            Subject::Team(name) => format!("t:{name}"),
            Subject::Deployment(label) => format!("d:{label}"),
        }
    }
}

/// One bucket of a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// Requests per minute (a rate bucket).
    Requests = 0,
    /// Tokens per minute (a rate bucket).
    Tokens = 1,
    /// Budget in micro-USD for the current period (a held amount).
    Budget = 2,
    /// Requests in flight (a held amount).
    Concurrency = 3,
}

impl Dim {
    /// Every bucket, in index order.
    pub const ALL: [Dim; 4] = [Dim::Requests, Dim::Tokens, Dim::Budget, Dim::Concurrency];

    /// Its name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Requests => "rpm",
            Dim::Tokens => "tpm",
            Dim::Budget => "budget",
            Dim::Concurrency => "conc",
        }
    }

    /// Whether the store keeps it as a refilling rate bucket (else as amounts held per replica).
    pub fn is_rate(self) -> bool {
        matches!(self, Dim::Requests | Dim::Tokens)
    }
}

/// The units one replica leases of a limit at a time: `limit / (16 × replicas)`; 0 means the
/// limit is too small to lease and is taken from the store as each request needs it.
pub fn lease_size(limit: u64, replicas: u32) -> u64 {
    limit / (LEASE_SHARE * u64::from(replicas.max(1)))
}

/// The most the fleet can admit beyond what one shared bucket would: what `replicas` leases
/// hold (see the `lease` module docs).
pub fn over_admission_bound(limit: u64, replicas: u32) -> u64 {
    u64::from(replicas.max(1)) * lease_size(limit, replicas)
}

/// One leased bucket on this replica. Lock-free.
#[derive(Debug, Default)]
pub struct Pool {
    /// Units held and free to admit from. Below zero after a settlement charged more than was
    /// reserved: the next sync takes the debt from the store.
    balance: AtomicI64,
    /// Monotonic ms until which the store said the bucket is empty (no direct fetch before).
    empty_until_ms: AtomicU64,
    /// Monotonic ms of the last direct fetch.
    fetched_ms: AtomicU64,
    /// Units this replica holds in the store by its own account (held buckets: concurrency,
    /// budget), restated after a reconnect ([`Transfer::Set`]).
    held: AtomicU64,
}

impl Pool {
    /// Units free to admit from now.
    pub fn balance(&self) -> i64 {
        self.balance.load(Ordering::Acquire)
    }

    /// Takes `n` units if the balance covers them.
    pub fn try_take(&self, n: u64) -> bool {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= n).then(|| b - n)
            })
            .is_ok()
    }

    /// Adds `n` units (a grant, a refund; negative for a charge).
    pub fn put(&self, n: i64) {
        self.balance.fetch_add(n, Ordering::AcqRel);
    }

    /// Takes everything above `keep` out of the balance and returns how much.
    fn withdraw_above(&self, keep: i64) -> u64 {
        match self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b > keep).then_some(keep)
            }) {
            Ok(b) => (b - keep).unsigned_abs(),
            Err(_) => 0,
        }
    }

    /// Monotonic ms until which the store said the bucket is empty.
    pub fn empty_until_ms(&self) -> u64 {
        self.empty_until_ms.load(Ordering::Acquire)
    }

    /// Whether the store said, as of `now_ms`, that the bucket is empty.
    pub fn known_empty(&self, now_ms: u64) -> bool {
        self.empty_until_ms.load(Ordering::Acquire) > now_ms
    }
}

/// What the background asks of the store for one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// Take up to `amount` units (fewer when the bucket has fewer).
    Take {
        /// The bucket.
        dim: Dim,
        /// Units wanted.
        amount: u64,
    },
    /// Take `amount` units whatever the bucket holds (a debt: use beyond a reservation).
    Charge {
        /// The bucket.
        dim: Dim,
        /// Units owed.
        amount: u64,
    },
    /// Give `amount` unused units back.
    Return {
        /// The bucket.
        dim: Dim,
        /// Units returned.
        amount: u64,
    },
    /// Restate that this replica holds `amount` units of a held bucket (after a reconnect:
    /// a transfer that failed here may still have run on the store).
    Set {
        /// The bucket.
        dim: Dim,
        /// Units held.
        amount: u64,
    },
    /// Report spend in micro-USD: `leased` was spent from this replica's budget lease,
    /// `unleased` while the store was unavailable (or without a budget lease).
    Spend {
        /// From the lease.
        leased: u64,
        /// Not from a lease.
        unleased: u64,
    },
}

/// How a transfer went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The store granted `granted` units (a take or a charge); for a budget, `used` is the
    /// fleet's spend plus held leases after it; `retry_after_ms` when the bucket ran short.
    Granted {
        /// Units granted.
        granted: u64,
        /// What the fleet has used after it: a budget's spend plus held leases, a
        /// concurrency's held slots, a rate bucket's units not available (its capacity less
        /// what it could grant now).
        used: u64,
        /// How long until the bucket has units again (when it granted fewer than asked).
        retry_after_ms: u64,
    },
    /// Done (a return or a spend report).
    Done,
    /// The store could not be reached: the transfer is undone locally.
    Failed,
}

/// A subject's limits as the store needs them (fixed for the life of a `LimitSet`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Budget in micro-USD per period.
    pub budget_micros: Option<u64>,
    /// The budget's period.
    pub budget_period: BudgetPeriod,
    /// Requests in flight.
    pub concurrency: Option<u32>,
}

impl Shape {
    /// Whether no bucket has a limit (spend is still counted).
    pub fn is_unlimited(&self) -> bool {
        Dim::ALL.iter().all(|d| self.limit(*d).is_none())
    }

    /// The limit of one bucket, if it has one.
    pub fn limit(&self, dim: Dim) -> Option<u64> {
        match dim {
            Dim::Requests => self.rpm,
            Dim::Tokens => self.tpm,
            Dim::Budget => self.budget_micros,
            Dim::Concurrency => self.concurrency.map(u64::from),
        }
    }
}

/// The leases of one `LimitSet` on this replica. Created on the set's first admission
/// through the fleet limiter and registered in its book, where the background finds it.
#[derive(Debug)]
pub struct Leases {
    /// Whose limits.
    pub subject: Subject,
    /// The limits.
    pub shape: Shape,
    pools: [Pool; 4],
    /// Micro-USD spent from the budget lease, not yet reported.
    spent_leased: AtomicU64,
    /// Micro-USD spent outside a lease (degraded, or no budget limit), not yet reported.
    spent_unleased: AtomicU64,
    /// The budget period the budget pool's balance belongs to (unix seconds).
    budget_period_start: AtomicU64,
    /// The fleet's budget use (spend plus held leases) at the last sync.
    budget_used: AtomicU64,
    /// Per bucket: what the store said the fleet had used (`Outcome::Granted::used`) at this
    /// replica's last transfer for it, and when (`u64::MAX`: never).
    seen: [(AtomicU64, AtomicU64); 4],
}

impl Leases {
    /// Empty pools for `subject` with `shape`, whose budget period started at
    /// `budget_period_start` (unix seconds) with `spend_micros` already spent.
    pub fn new(
        subject: Subject,
        shape: Shape,
        budget_period_start: u64,
        spend_micros: u64,
    ) -> Self {
        Leases {
            subject,
            shape,
            pools: Default::default(),
            spent_leased: AtomicU64::new(0),
            spent_unleased: AtomicU64::new(0),
            budget_period_start: AtomicU64::new(budget_period_start),
            budget_used: AtomicU64::new(spend_micros),
            seen: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(u64::MAX))),
        }
    }

    /// The fleet's view of a rate limit at `now_ms`, for the `x-ratelimit-*` headers: what the
    /// store said at this replica's last transfer for it (for `tpm` refilled since at the
    /// limit's rate; for `rpm`, a 60 s window, all of it until 60 s after that transfer),
    /// plus what this replica's pool holds unspent: `(limit, remaining, reset_ms)`. `None`
    /// before any transfer.
    pub fn rate_snapshot(&self, dim: Dim, now_ms: u64) -> Option<(u64, u64, u64)> {
        let limit = self.shape.limit(dim)?.max(1);
        let (used, at) = &self.seen[dim as usize];
        let at = at.load(Ordering::Acquire);
        if at == u64::MAX || !dim.is_rate() {
            return None;
        }
        let elapsed = now_ms.saturating_sub(at);
        let pool = u64::try_from(self.pool(dim).balance()).unwrap_or(0);
        if dim == Dim::Requests {
            // The store's 60 s window: what it held at the last transfer leaves it at most 60 s
            // later, at moments this replica does not know, so it counts until then (never more
            // left than there are, as far as this replica can tell).
            if elapsed >= WINDOW_MS {
                return Some((limit, limit, 0));
            }
            let used = used.load(Ordering::Acquire).saturating_sub(pool).min(limit);
            let reset_ms = if used == 0 { 0 } else { WINDOW_MS - elapsed };
            return Some((limit, limit - used, reset_ms));
        }
        let refilled =
            u64::try_from(u128::from(elapsed) * u128::from(limit) / 60_000).unwrap_or(u64::MAX);
        let used = used
            .load(Ordering::Acquire)
            .saturating_sub(refilled)
            .saturating_sub(pool)
            .min(limit);
        let reset_ms = (u128::from(used) * 60_000).div_ceil(u128::from(limit)) as u64;
        Some((limit, limit - used, reset_ms))
    }

    /// The fleet's requests in flight as this replica last saw them: the slots held in the store
    /// at its last transfer for the concurrency bucket, less those its own pool holds unused.
    /// `None` before any transfer.
    pub fn in_flight(&self) -> Option<u64> {
        let (used, at) = &self.seen[Dim::Concurrency as usize];
        if at.load(Ordering::Acquire) == u64::MAX {
            return None;
        }
        let pool = u64::try_from(self.pool(Dim::Concurrency).balance()).unwrap_or(0);
        Some(used.load(Ordering::Acquire).saturating_sub(pool))
    }

    /// The lease this subject keeps of a limit: [`lease_size`], except that a deployment
    /// keeps at least one unit — its admission happens inside the attempt loop, where no
    /// request can wait for a direct fetch — so a deployment's limit is over-admitted by at
    /// most one unit per replica more than a key's.
    pub fn lease_size(&self, limit: u64, replicas: u32) -> u64 {
        let size = lease_size(limit, replicas);
        match self.subject {
            Subject::Deployment(_) => size.max(1).min(limit),
            _ => size,
        }
    }

    /// Counts `micros` spent from the budget lease (reported at the next sync).
    pub fn spend_leased(&self, micros: u64) {
        self.spent_leased.fetch_add(micros, Ordering::AcqRel);
    }

    /// Counts `micros` spent outside a lease (reported at the next sync).
    pub fn spend_unleased(&self, micros: u64) {
        self.spent_unleased.fetch_add(micros, Ordering::AcqRel);
    }

    /// The pool of one bucket.
    pub fn pool(&self, dim: Dim) -> &Pool {
        &self.pools[dim as usize]
    }

    /// The budget period (unix seconds of its start) the budget lease belongs to.
    pub fn budget_period_start(&self) -> u64 {
        self.budget_period_start.load(Ordering::Acquire)
    }

    /// The background's batch for this subject at `now_ms` with `replicas` alive, in the
    /// budget period starting at `budget_period_start` (unix seconds, `limits::period_start`):
    /// top up pools below half a lease, return what is above a lease (units fetched directly
    /// stay [`DIRECT_HOLD_MS`]), charge debts, report spend. `retire` (the set is gone) returns
    /// everything. Carry each out and hand the outcome to [`Leases::apply`].
    pub fn plan(
        &self,
        replicas: u32,
        now_ms: u64,
        budget_period_start: u64,
        retire: bool,
    ) -> Vec<Transfer> {
        let mut out = Vec::new();
        if self.shape.budget_micros.is_some() {
            let start = budget_period_start;
            if start > self.budget_period_start() {
                // A new period: the old lease belongs to the old period's key.
                self.pool(Dim::Budget).balance.store(0, Ordering::Release);
                self.pool(Dim::Budget).held.store(0, Ordering::Release);
                self.spent_leased.store(0, Ordering::Release);
                self.budget_period_start.store(start, Ordering::Release);
            }
        }
        for dim in Dim::ALL {
            let Some(limit) = self.shape.limit(dim) else {
                continue;
            };
            let pool = self.pool(dim);
            let size = if retire {
                0
            } else {
                self.lease_size(limit, replicas)
            };
            let target = i64::try_from(size).unwrap_or(i64::MAX);
            let balance = pool.balance();
            if balance < 0 {
                out.push(Transfer::Charge {
                    dim,
                    amount: balance.unsigned_abs(),
                });
                pool.put(-balance);
                continue;
            }
            let fresh = now_ms.saturating_sub(pool.fetched_ms.load(Ordering::Acquire))
                < DIRECT_HOLD_MS
                && !retire;
            if balance > target && !fresh {
                let amount = pool.withdraw_above(target);
                if amount > 0 {
                    out.push(Transfer::Return { dim, amount });
                }
            } else if size > 0 && balance < target / 2 + 1 && !pool.known_empty(now_ms) {
                out.push(Transfer::Take {
                    dim,
                    amount: size - balance.unsigned_abs(),
                });
            }
        }
        let leased = self.spent_leased.swap(0, Ordering::AcqRel);
        let unleased = self.spent_unleased.swap(0, Ordering::AcqRel);
        if leased + unleased > 0 {
            out.push(Transfer::Spend { leased, unleased });
        }
        out
    }

    /// Takes in the store's answer to one transfer of [`Leases::plan`] (or of a direct fetch)
    /// at `now_ms`. A failed transfer is undone: returned units and spend stay here for the
    /// next sync.
    pub fn apply(&self, transfer: Transfer, outcome: Outcome, now_ms: u64) {
        match (transfer, outcome) {
            (
                Transfer::Take { dim, amount } | Transfer::Charge { dim, amount },
                Outcome::Granted {
                    granted,
                    used,
                    retry_after_ms,
                },
            ) => {
                let pool = self.pool(dim);
                pool.held.fetch_add(granted, Ordering::AcqRel);
                if matches!(transfer, Transfer::Take { .. }) {
                    pool.put(i64::try_from(granted).unwrap_or(i64::MAX));
                    if granted < amount && retry_after_ms > 0 {
                        pool.empty_until_ms
                            .store(now_ms + retry_after_ms.max(1), Ordering::Release);
                    }
                }
                if dim == Dim::Budget {
                    self.budget_used.store(used, Ordering::Release);
                }
                let (seen, at) = &self.seen[dim as usize];
                seen.store(used, Ordering::Release);
                at.store(now_ms, Ordering::Release);
            }
            (Transfer::Charge { dim, amount }, Outcome::Failed) => {
                self.pool(dim)
                    .put(-i64::try_from(amount).unwrap_or(i64::MAX));
            }
            (Transfer::Return { dim, amount }, Outcome::Failed) => {
                self.pool(dim)
                    .put(i64::try_from(amount).unwrap_or(i64::MAX));
            }
            (Transfer::Spend { leased, unleased }, Outcome::Failed) => {
                self.spent_leased.fetch_add(leased, Ordering::AcqRel);
                self.spent_unleased.fetch_add(unleased, Ordering::AcqRel);
            }
            (Transfer::Return { dim, amount }, Outcome::Done) => {
                release_held(self.pool(dim), amount);
            }
            (Transfer::Spend { leased, .. }, Outcome::Done) => {
                release_held(self.pool(Dim::Budget), leased);
            }
            _ => {}
        }
    }

    /// What to restate after a reconnect: how much of each held bucket (concurrency, budget)
    /// this replica holds by its own account.
    pub fn resync(&self) -> Vec<Transfer> {
        [Dim::Budget, Dim::Concurrency]
            .into_iter()
            .filter(|d| self.shape.limit(*d).is_some())
            .map(|dim| Transfer::Set {
                dim,
                amount: self.pool(dim).held.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Marks a direct fetch for `dim` made at `now_ms` (the background leaves its units a
    /// moment for the request that asked).
    pub fn note_direct(&self, dim: Dim, now_ms: u64) {
        self.pool(dim).fetched_ms.store(now_ms, Ordering::Release);
    }

    /// The fleet's budget use (spend plus held leases) at the last sync, in micro-USD.
    pub fn budget_used(&self) -> u64 {
        self.budget_used.load(Ordering::Acquire)
    }
}

fn release_held(pool: &Pool, n: u64) {
    let _ = pool
        .held
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
            Some(h.saturating_sub(n))
        });
}
