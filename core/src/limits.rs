//! Admission limits: token buckets (requests or tokens per minute), concurrency caps and spend
//! budgets, all lock-free and shared by every worker through `Arc`.
//!
//! Time comes in as an argument, never from a clock read: `now_ms` is a monotonic millisecond
//! count (the proxy passes milliseconds since it started), `unix_s` a wall-clock second for
//! budget periods.
//!
//! # Call order on the request path
//!
//! ```text
//! admit ─► LimitSet::admit (for the key, its team, the deployment)
//!            ├─ Concurrency::acquire
//!            ├─ TokenBucket::try_take (requests: 1, tokens: estimate + max_tokens)
//!            └─ Budget::try_reserve (estimated cost)          any refusal rolls back the rest
//! settle ─► Admission::settle (actual tokens and cost: refund or charge the difference,
//!                              release the concurrency slot)
//! ```
//!
//! # Guarantees
//!
//! - A [`TokenBucket`] never admits more than `capacity + refill_per_minute * elapsed / 60 000 ms`
//!   tokens over any window (net of refunds): its whole state is one `AtomicU64` updated by
//!   compare-and-swap (GCRA), so no interleaving of workers can over-admit.
//! - A [`Budget`] never lets outstanding reservations plus spend pass its limit; spend can pass
//!   it only when a request's actual cost exceeds what it reserved, by that difference.
//!
//! Concurrency note: workers read a monotonic clock each, so two `now_ms` values may arrive out
//! of order by a few microseconds. The bucket tolerates it: an older `now` is treated as the
//! newest one it has seen where that is stricter, and can only be lenient by the skew itself.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::calendar::{Date, DAY_S};
pub use crate::keys::BudgetPeriod;
use crate::keys::Limits;
use crate::lease::pool::{Leases, Subject};

/// Time units per millisecond inside a [`TokenBucket`]: 2^20, about a nanosecond each, so the
/// emission interval of even a billion-tokens-per-minute bucket stays exact to a few percent
/// (and is always rounded *up*, which is stricter, never looser).
const TICKS_PER_MS: u64 = 1 << 20;
const MS_PER_MINUTE: u64 = 60_000;
/// Largest state a bucket holds, so additions never wrap.
const MAX_TICKS: u64 = u64::MAX / 4;

/// Tokens left in a bucket after an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining(pub u64);

/// How long until a refused take could succeed, in milliseconds.
///
/// [`RetryAfter::NEVER`] means the request is larger than the bucket's capacity and will never
/// fit (OpenAI answers such requests with 429 and "Request too large").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    /// The request can never be admitted: it asks for more than the capacity.
    pub const NEVER: RetryAfter = RetryAfter(u64::MAX);

    /// Whether waiting cannot help.
    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }

    /// Whole seconds for a `Retry-After` header (at least 1).
    pub fn seconds(self) -> u64 {
        self.0.div_ceil(1000).max(1)
    }
}

/// A token bucket for "N per minute" limits, as the generic cell rate algorithm (GCRA).
///
/// The whole state is one `AtomicU64`: the *theoretical arrival time* `tat`, in ticks of
/// 2^-20 ms. Taking `n` tokens moves it `n * interval` ticks later; the bucket is full when
/// `tat <= now`, and a take is refused when it would put `tat` more than `capacity * interval`
/// after `now`. Refunds move it back (never before `now`, so never above capacity); charges
/// move it forward unconditionally, past the refusal line if need be, which is a debt that
/// later takes wait out.
///
/// A new bucket is full.
#[derive(Debug)]
pub struct TokenBucket {
    /// `tat` in ticks; invariant: `<= MAX_TICKS`.
    tat: AtomicU64,
    capacity: u64,
    refill_per_minute: u64,
    /// Ticks per token, rounded up; at least 1.
    interval: u64,
    /// `capacity * interval`, capped at `MAX_TICKS / 2`.
    tolerance: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens that refills `refill_per_minute` tokens per minute
    /// (at least 1). For a plain "RPM" limit both are the limit.
    pub fn new(capacity: u64, refill_per_minute: u64) -> Self {
        let refill = refill_per_minute.max(1);
        let interval = (MS_PER_MINUTE * TICKS_PER_MS).div_ceil(refill).max(1);
        let tolerance = capacity.saturating_mul(interval).min(MAX_TICKS / 2);
        TokenBucket {
            tat: AtomicU64::new(0),
            capacity,
            refill_per_minute: refill,
            interval,
            tolerance,
        }
    }

    /// A bucket for "`per_minute` per minute": capacity and refill both `per_minute`.
    pub fn per_minute(per_minute: u64) -> Self {
        Self::new(per_minute, per_minute)
    }

    /// The capacity (the `x-ratelimit-limit-*` value).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens refilled per minute.
    pub fn refill_per_minute(&self) -> u64 {
        self.refill_per_minute
    }

    fn now_ticks(now_ms: u64) -> u64 {
        now_ms.saturating_mul(TICKS_PER_MS).min(MAX_TICKS / 2)
    }

    fn cost(&self, n: u64) -> u64 {
        n.saturating_mul(self.interval).min(MAX_TICKS / 2)
    }

    /// Takes `n` tokens at `now_ms`, or says how long to wait. Lock-free.
    pub fn try_take(&self, n: u64, now_ms: u64) -> Result<Remaining, RetryAfter> {
        if n > self.capacity {
            return Err(RetryAfter::NEVER);
        }
        let now = Self::now_ticks(now_ms);
        if n == 0 {
            return Ok(Remaining(
                self.remaining_at(self.tat.load(Ordering::Acquire), now),
            ));
        }
        let cost = self.cost(n);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let level = tat.max(now);
            let new_tat = level + cost;
            if new_tat - now > self.tolerance {
                let wait = new_tat - now - self.tolerance;
                return Err(RetryAfter(wait.div_ceil(TICKS_PER_MS).max(1)));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(Remaining(self.remaining_at(new_tat, now))),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives `n` tokens back (a reservation larger than the use). Never fills past capacity.
    pub fn refund(&self, n: u64, now_ms: u64) {
        let now = Self::now_ticks(now_ms);
        let cost = self.cost(n);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(cost).max(now.min(tat)))
            });
    }

    /// Takes `n` more tokens unconditionally (a use larger than its reservation). The bucket
    /// may go into debt: takes are refused until refill has paid it back.
    pub fn charge(&self, n: u64, now_ms: u64) {
        let now = Self::now_ticks(now_ms);
        let cost = self.cost(n);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some((tat.max(now) + cost).min(MAX_TICKS))
            });
    }

    /// Settles a reservation of `reserved` tokens that turned out to use `actual`.
    pub fn settle(&self, reserved: u64, actual: u64, now_ms: u64) {
        if actual > reserved {
            self.charge(actual - reserved, now_ms);
        } else if reserved > actual {
            self.refund(reserved - actual, now_ms);
        }
    }

    fn remaining_at(&self, tat: u64, now: u64) -> u64 {
        let level = tat.max(now);
        (now + self.tolerance).saturating_sub(level) / self.interval
    }

    /// Whole tokens available at `now_ms` (0 while in debt).
    pub fn remaining(&self, now_ms: u64) -> u64 {
        self.remaining_at(self.tat.load(Ordering::Acquire), Self::now_ticks(now_ms))
    }

    /// Milliseconds until the bucket is full again (the `x-ratelimit-reset-*` value).
    pub fn reset_ms(&self, now_ms: u64) -> u64 {
        let now = Self::now_ticks(now_ms);
        let tat = self.tat.load(Ordering::Acquire);
        tat.saturating_sub(now).div_ceil(TICKS_PER_MS)
    }

    /// Limit, remaining and reset at `now_ms`, for the response headers.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        Snapshot {
            limit: self.capacity,
            remaining: self.remaining(now_ms),
            reset_ms: self.reset_ms(now_ms),
        }
    }
}

/// One bucket's numbers for OpenAI's `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `x-ratelimit-limit-*`.
    pub limit: u64,
    /// `x-ratelimit-remaining-*`.
    pub remaining: u64,
    /// `x-ratelimit-reset-*`, in milliseconds.
    pub reset_ms: u64,
}

/// OpenAI's six rate-limit headers from a requests bucket and a tokens bucket; either may be
/// absent (no such limit), and its three headers are then left out.
pub fn ratelimit_headers(
    requests: Option<Snapshot>,
    tokens: Option<Snapshot>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    if let Some(s) = requests {
        out.push(("x-ratelimit-limit-requests", s.limit.to_string()));
        out.push(("x-ratelimit-remaining-requests", s.remaining.to_string()));
        out.push(("x-ratelimit-reset-requests", format_duration_ms(s.reset_ms)));
    }
    if let Some(s) = tokens {
        out.push(("x-ratelimit-limit-tokens", s.limit.to_string()));
        out.push(("x-ratelimit-remaining-tokens", s.remaining.to_string()));
        out.push(("x-ratelimit-reset-tokens", format_duration_ms(s.reset_ms)));
    }
    out
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if milli == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{milli:03}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// A cap on requests in flight. Lock-free; the caller pairs every successful
/// [`acquire`](Self::acquire) with one [`release`](Self::release).
#[derive(Debug)]
pub struct Concurrency {
    current: AtomicU32,
    limit: u32,
}

impl Concurrency {
    /// At most `limit` at once.
    pub fn new(limit: u32) -> Self {
        Concurrency {
            current: AtomicU32::new(0),
            limit,
        }
    }

    /// Takes a slot; `false` when all `limit` are taken.
    pub fn acquire(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.limit).then_some(c + 1)
            })
            .is_ok()
    }

    /// Gives a slot back. An unpaired release is ignored rather than wrapping.
    pub fn release(&self) {
        let _ = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// Slots taken now.
    pub fn in_flight(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// The UTC date of a unix second: (year, month 1-12, day 1-31).
pub fn civil_date(unix_s: u64) -> (i64, u32, u32) {
    let d = Date::from_unix_s(unix_s);
    (d.year(), d.month(), d.day())
}

/// The unix second at which the period containing `unix_s` started (UTC). `Lifetime` is 0.
pub fn period_start(period: BudgetPeriod, unix_s: u64) -> u64 {
    let day = unix_s / DAY_S;
    match period {
        BudgetPeriod::Daily => day * DAY_S,
        // 1970-01-01 was a Thursday: (day + 3) % 7 counts days since Monday.
        BudgetPeriod::Weekly => day.saturating_sub((day + 3) % 7) * DAY_S,
        BudgetPeriod::Monthly => {
            let first = Date::from_days(day as i64).month_start();
            first.days() as u64 * DAY_S
        }
        BudgetPeriod::Lifetime => 0,
    }
}

/// The unix second at which the period containing `unix_s` ends (the next one starts);
/// `u64::MAX` for `Lifetime`.
pub fn next_period_start(period: BudgetPeriod, unix_s: u64) -> u64 {
    let start = period_start(period, unix_s);
    match period {
        BudgetPeriod::Daily => start + DAY_S,
        BudgetPeriod::Weekly => start + 7 * DAY_S,
        BudgetPeriod::Monthly => {
            let next = Date::from_unix_s(start).next_month_start();
            next.days() as u64 * DAY_S
        }
        BudgetPeriod::Lifetime => u64::MAX,
    }
}

/// Spend against a limit, in micro-USD, for one key or team and one period. Lock-free.
///
/// Two counters: `used` (spend plus outstanding reservations) decides admission, `spend` is
/// what settled requests cost. Invariant at rest: `used == spend + outstanding reservations`.
/// A reservation is admitted only when `used + micros <= limit`, by compare-and-swap on `used`,
/// so reservations together never pass the limit; spend passes it only when requests cost
/// more than they reserved.
#[derive(Debug, Default)]
pub struct Budget {
    used: AtomicU64,
    spend: AtomicU64,
    period_start: AtomicU64,
}

impl Budget {
    /// An empty budget for the period starting at `period_start` (unix seconds).
    pub fn new(period_start: u64) -> Self {
        Budget {
            used: AtomicU64::new(0),
            spend: AtomicU64::new(0),
            period_start: AtomicU64::new(period_start),
        }
    }

    /// A budget that already spent `spend_micros` this period (rebuilt from the store).
    pub fn with_spend(period_start: u64, spend_micros: u64) -> Self {
        Budget {
            used: AtomicU64::new(spend_micros),
            spend: AtomicU64::new(spend_micros),
            period_start: AtomicU64::new(period_start),
        }
    }

    /// Reserves `micros` if spend plus reservations stays within `limit`.
    pub fn try_reserve(&self, micros: u64, limit: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(micros).filter(|&n| n <= limit)
            })
            .is_ok()
    }

    /// Turns a reservation of `reserved` into an actual cost of `actual`.
    pub fn settle(&self, reserved: u64, actual: u64) {
        // `used` first, then `spend`, so `used >= spend` holds at every instant (a rollover
        // subtracts the spend it swapped out of `used`).
        if actual >= reserved {
            self.used.fetch_add(actual - reserved, Ordering::AcqRel);
        } else {
            let give = reserved - actual;
            let _ = self
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                    Some(u.saturating_sub(give))
                });
        }
        self.spend.fetch_add(actual, Ordering::AcqRel);
    }

    /// Drops a reservation whose request never reached an upstream.
    pub fn cancel(&self, reserved: u64) {
        self.settle(reserved, 0);
    }

    /// Adds a cost that was never reserved (e.g. replayed from elsewhere).
    pub fn add_spend(&self, micros: u64) {
        self.settle(0, micros);
    }

    /// Starts a new period if `period_start` is later than the current one: spend goes back to
    /// zero, outstanding reservations stay. Returns whether it rolled over. Call it with
    /// [`period_start`]`(period, now)` before [`try_reserve`](Self::try_reserve).
    pub fn roll_to(&self, period_start: u64) -> bool {
        let current = self.period_start.load(Ordering::Acquire);
        if period_start <= current {
            return false;
        }
        if self
            .period_start
            .compare_exchange(current, period_start, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let old = self.spend.swap(0, Ordering::AcqRel);
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(old))
            });
        true
    }

    /// Settled spend this period, in micro-USD.
    pub fn spend(&self) -> u64 {
        self.spend.load(Ordering::Acquire)
    }

    /// Spend plus outstanding reservations, in micro-USD.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Start of the current period (unix seconds).
    pub fn period_start(&self) -> u64 {
        self.period_start.load(Ordering::Acquire)
    }
}

/// The limits of one principal: a key, a team or a deployment. Every part is optional.
///
/// Share it through `Arc`; a limiter backend (`limiter::Limiter`) takes a slice of them, so a request
/// is checked against its key and its team at once.
#[derive(Debug, Default)]
pub struct LimitSet {
    /// Whose limits these are (a key, a team, a deployment): names them in a fleet's shared
    /// store. `None` keeps the set local even under the fleet limiter.
    pub subject: Option<Subject>,
    /// This set's leases under the fleet limiter (`lease::LeasedLimiter`), made on first use.
    pub leases: OnceLock<Arc<Leases>>,
    /// Requests per minute.
    pub requests: Option<TokenBucket>,
    /// Tokens per minute (prompt estimate plus `max_tokens` on admission, settled on usage).
    pub tokens: Option<TokenBucket>,
    /// Requests in flight.
    pub concurrency: Option<Concurrency>,
    /// Spend this period; kept even without a limit, for reporting.
    pub budget: Budget,
    /// Budget limit in micro-USD; `None` for no limit.
    pub budget_limit_micros: Option<u64>,
    /// When the budget starts over.
    pub budget_period: BudgetPeriod,
    /// Which budget alert thresholds this period were already reported (`alerts`).
    pub alert_mark: crate::alerts::AlertMark,
}

impl LimitSet {
    /// Limits from per-minute and concurrency numbers (`None`: no such limit), with `spend`
    /// already spent in the period containing `unix_s` (as rebuilt from the store).
    pub fn new(
        rpm: Option<u64>,
        tpm: Option<u64>,
        max_concurrency: Option<u32>,
        budget: Option<(u64, BudgetPeriod)>,
        spend_micros: u64,
        unix_s: u64,
    ) -> Self {
        let period = budget.map_or(BudgetPeriod::Lifetime, |b| b.1);
        let start = period_start(period, unix_s);
        LimitSet {
            subject: None,
            leases: OnceLock::new(),
            requests: rpm.map(TokenBucket::per_minute),
            tokens: tpm.map(TokenBucket::per_minute),
            concurrency: max_concurrency.map(Concurrency::new),
            budget: Budget::with_spend(start, spend_micros),
            budget_limit_micros: budget.map(|b| b.0),
            budget_period: period,
            // Thresholds the spend rebuilt at start already reached are not reported again.
            alert_mark: crate::alerts::AlertMark::new(start, spend_micros, budget.map(|b| b.0)),
        }
    }

    /// The limit set of a key's or a team's [`Limits`], with `spend_micros` already spent in
    /// the period containing `unix_s`. Without a budget the period is
    /// [`BudgetPeriod::Lifetime`], as [`Limits::normalized`] says.
    pub fn from_limits(limits: &Limits, spend_micros: u64, unix_s: u64) -> Self {
        LimitSet::new(
            limits.rpm,
            limits.tpm,
            limits.max_concurrency,
            limits.budget_micros().map(|b| (b, limits.budget_period)),
            spend_micros,
            unix_s,
        )
    }

    /// The same set, named `subject` in a fleet's shared store.
    pub fn with_subject(mut self, subject: Subject) -> Self {
        self.subject = Some(subject);
        self
    }

    /// The `x-ratelimit-*` headers of this set at `now_ms`.
    pub fn headers(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        ratelimit_headers(
            self.requests.as_ref().map(|b| b.snapshot(now_ms)),
            self.tokens.as_ref().map(|b| b.snapshot(now_ms)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn bucket_starts_full_and_refuses_past_capacity() {
        let b = TokenBucket::per_minute(60);
        assert_eq!(b.remaining(1000), 60);
        assert_eq!(b.reset_ms(1000), 0);
        assert_eq!(b.try_take(50, 1000), Ok(Remaining(10)));
        assert_eq!(b.try_take(10, 1000), Ok(Remaining(0)));
        // 1 token per second: the next one is a second away.
        assert_eq!(b.try_take(1, 1000), Err(RetryAfter(1000)));
        assert_eq!(b.try_take(3, 1000), Err(RetryAfter(3000)));
        assert_eq!(b.reset_ms(1000), 60_000);
        assert_eq!(b.try_take(1, 2000), Ok(Remaining(0)));
        assert_eq!(b.remaining(61_000), 59);
        assert_eq!(b.remaining(62_000), 60);
        assert_eq!(b.remaining(1_000_000), 60);
        assert_eq!(b.try_take(61, 1_000_000), Err(RetryAfter::NEVER));
        assert!(RetryAfter::NEVER.is_never());
        assert_eq!(RetryAfter(1).seconds(), 1);
        assert_eq!(RetryAfter(1001).seconds(), 2);
    }

    #[test]
    fn refund_never_overfills_and_charge_makes_debt() {
        let b = TokenBucket::per_minute(600); // 10 per second
        b.try_take(100, 0).unwrap();
        b.refund(40, 0);
        assert_eq!(b.remaining(0), 540);
        b.refund(1_000, 0);
        assert_eq!(b.remaining(0), 600);
        // Reserve everything, then the use turns out 300 larger: 300 tokens of debt.
        b.try_take(600, 0).unwrap();
        b.settle(600, 900, 0);
        assert_eq!(b.remaining(0), 0);
        assert_eq!(b.try_take(1, 0), Err(RetryAfter(30_100)));
        assert_eq!(b.remaining(30_000), 0);
        assert_eq!(b.try_take(1, 30_100), Ok(Remaining(0)));
        assert_eq!(b.reset_ms(30_100), 60_000);
        b.settle(10, 4, 30_100);
        assert_eq!(b.remaining(30_100), 6);
    }

    #[test]
    fn bucket_handles_extremes() {
        let b = TokenBucket::new(0, 0);
        assert_eq!(b.try_take(0, 5), Ok(Remaining(0)));
        assert_eq!(b.try_take(1, 5), Err(RetryAfter::NEVER));
        let b = TokenBucket::per_minute(u64::MAX);
        assert!(b.try_take(1 << 40, u64::MAX).is_ok());
        b.charge(u64::MAX, u64::MAX);
        b.refund(u64::MAX, 0);
        let _ = b.remaining(u64::MAX);
        let b = TokenBucket::new(1_000_000_000, 1);
        assert_eq!(b.try_take(1_000_000_000, 0), Ok(Remaining(0)));
        assert!(b.try_take(1, 0).is_err());
    }

    #[test]
    fn durations_like_openai() {
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(20), "20ms");
        assert_eq!(format_duration_ms(1000), "1s");
        assert_eq!(format_duration_ms(1500), "1.5s");
        assert_eq!(format_duration_ms(360_000), "6m0s");
        assert_eq!(format_duration_ms(3_723_250), "1h2m3.25s");
        let b = TokenBucket::per_minute(10);
        b.try_take(2, 0).unwrap();
        let h = b.snapshot(0);
        assert_eq!(
            h,
            Snapshot {
                limit: 10,
                remaining: 8,
                reset_ms: 12_000
            }
        );
        let headers = ratelimit_headers(Some(h), None);
        assert_eq!(headers.len(), 3);
        assert_eq!(
            headers[2],
            ("x-ratelimit-reset-requests", "12s".to_string())
        );
    }

    #[test]
    fn concurrency_caps_and_releases() {
        let c = Concurrency::new(2);
        assert!(c.acquire() && c.acquire());
        assert!(!c.acquire());
        assert_eq!(c.in_flight(), 2);
        c.release();
        assert!(c.acquire());
        c.release();
        c.release();
        c.release(); // unpaired: ignored
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.limit(), 2);
    }

    #[test]
    fn period_starts() {
        let t = 1_710_506_096; // 2024-03-15 12:34:56 UTC, a Friday
        assert_eq!(period_start(BudgetPeriod::Daily, t), 1_710_460_800);
        assert_eq!(period_start(BudgetPeriod::Weekly, t), 1_710_115_200); // Mon 03-11
        assert_eq!(period_start(BudgetPeriod::Monthly, t), 1_709_251_200); // 03-01
        assert_eq!(period_start(BudgetPeriod::Lifetime, t), 0);
        assert_eq!(next_period_start(BudgetPeriod::Monthly, t), 1_711_929_600);
        assert_eq!(next_period_start(BudgetPeriod::Daily, t), 1_710_547_200);
        assert_eq!(next_period_start(BudgetPeriod::Lifetime, t), u64::MAX);
        // Leap day, year end, a Sunday, the epoch.
        assert_eq!(
            period_start(BudgetPeriod::Monthly, 1_709_251_199),
            1_706_745_600
        );
        assert_eq!(
            period_start(BudgetPeriod::Weekly, 1_703_998_800),
            1_703_462_400
        );
        assert_eq!(
            period_start(BudgetPeriod::Monthly, 1_703_998_800),
            1_701_388_800
        );
        assert_eq!(
            next_period_start(BudgetPeriod::Monthly, 1_703_998_800),
            1_704_067_200
        );
        assert_eq!(period_start(BudgetPeriod::Monthly, 0), 0);
        assert_eq!(period_start(BudgetPeriod::Weekly, 6 * DAY_S), 4 * DAY_S);
        assert_eq!(period_start(BudgetPeriod::Weekly, 3 * DAY_S), 0);
        assert_eq!(civil_date(t), (2024, 3, 15));
        for p in [
            BudgetPeriod::Daily,
            BudgetPeriod::Weekly,
            BudgetPeriod::Monthly,
            BudgetPeriod::Lifetime,
        ] {
            assert_eq!(BudgetPeriod::parse(p.as_str()), Some(p));
        }
        assert_eq!(BudgetPeriod::parse("yearly"), None);
    }

    #[test]
    fn budget_reserves_settles_and_rolls() {
        let b = Budget::new(100);
        assert!(b.try_reserve(600, 1000));
        assert!(!b.try_reserve(500, 1000));
        assert!(b.try_reserve(400, 1000));
        b.settle(600, 100);
        assert_eq!((b.spend(), b.used()), (100, 500));
        assert!(b.try_reserve(500, 1000));
        b.cancel(500);
        b.settle(400, 450); // cost more than reserved: charged in full
        assert_eq!((b.spend(), b.used()), (550, 550));
        assert!(!b.roll_to(100));
        assert!(b.try_reserve(300, 1000));
        assert!(b.roll_to(200));
        assert_eq!((b.spend(), b.used(), b.period_start()), (0, 300, 200));
        b.settle(300, 300);
        assert_eq!((b.spend(), b.used()), (300, 300));
        let r = Budget::with_spend(0, 990);
        assert!(!r.try_reserve(11, 1000));
        assert!(r.try_reserve(10, 1000));
        b.add_spend(5);
        assert_eq!(b.spend(), 305);
    }

    /// The issue's budget edge: 100 concurrent requests against a budget with room for 33.
    #[test]
    fn budget_edge_with_100_concurrent_requests() {
        let budget = Arc::new(Budget::new(0));
        let limit = 1_000;
        let barrier = Arc::new(Barrier::new(100));
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let (budget, barrier) = (budget.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let ok = budget.try_reserve(30, limit);
                    if ok {
                        // Most cost what they reserved, some less.
                        budget.settle(30, if i % 3 == 0 { 20 } else { 30 });
                    }
                    ok
                })
            })
            .collect();
        let admitted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert!(admitted >= 33, "admitted {admitted}");
        assert!(budget.spend() <= limit, "spend {}", budget.spend());
        assert_eq!(budget.used(), budget.spend());
    }

    /// Even when each request costs more than it reserved, the overshoot is bounded by the
    /// requests in flight at the edge, never unbounded.
    #[test]
    fn budget_overshoot_is_bounded_by_reservations() {
        let budget = Arc::new(Budget::new(0));
        let limit = 1_000;
        let barrier = Arc::new(Barrier::new(100));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let (budget, barrier) = (budget.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..10 {
                        if budget.try_reserve(30, limit) {
                            budget.settle(30, 60);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Admission needs used + 30 <= limit, so the last admitted started at used <= 970
        // and all in flight with it could double: at most 2 * limit.
        assert!(budget.spend() <= 2 * limit, "spend {}", budget.spend());
        assert!(budget.spend() >= limit - 30);
    }

    /// 8 threads hammering one bucket while time moves: admitted never exceeds
    /// capacity + refill over the elapsed time.
    #[test]
    fn threads_never_over_admit() {
        let bucket = Arc::new(TokenBucket::new(1_000, 6_000)); // 100 per second
        let clock = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (bucket, clock) = (bucket.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut admitted = 0u64;
                    for i in 0..200_000u64 {
                        // Every take advances shared time by 1/100 ms.
                        let now_ms = clock.fetch_add(1, Ordering::Relaxed) / 100;
                        let n = 1 + (i + t) % 3;
                        if bucket.try_take(n, now_ms).is_ok() {
                            admitted += n;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let elapsed_ms = clock.load(Ordering::Relaxed) / 100;
        let bound = 1_000 + 6_000 * elapsed_ms / 60_000;
        assert!(admitted <= bound, "admitted {admitted} > bound {bound}");
        // And it is not starved either: most of the allowance was used.
        assert!(admitted >= bound * 9 / 10, "admitted {admitted} of {bound}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Take(u64),
        Refund(u64),
        Charge(u64),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..40).prop_map(Op::Take),
            2 => (0u64..40).prop_map(Op::Refund),
            1 => (0u64..20).prop_map(Op::Charge),
            4 => (0u64..3_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// For any interleaving of takes, refunds, charges and time, the tokens admitted net of
        /// refunds over any window that ends with an admission are at most
        /// `capacity + refill * elapsed`, and a take succeeds exactly when `remaining` covers it.
        #[test]
        fn bucket_never_over_admits(
            capacity in 1u64..100,
            refill in 1u64..2_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let b = TokenBucket::new(capacity, refill);
            let mut now = 1_000u64;
            // (time, net tokens, was an admitted take)
            let mut events: Vec<(u64, i128, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Take(n) => {
                        let before = b.remaining(now);
                        let got = b.try_take(n, now);
                        prop_assert_eq!(got.is_ok(), n <= before, "take {} with {} left", n, before);
                        if got.is_ok() {
                            events.push((now, i128::from(n), n > 0));
                        } else {
                            prop_assert!(got.unwrap_err().0 >= 1);
                        }
                    }
                    Op::Refund(n) => {
                        b.refund(n, now);
                        events.push((now, -i128::from(n), false));
                    }
                    Op::Charge(n) => {
                        b.charge(n, now);
                        events.push((now, i128::from(n), false));
                    }
                    Op::Wait(ms) => now += ms,
                }
                prop_assert!(b.remaining(now) <= capacity);
            }
            for j in 0..events.len() {
                if !events[j].2 {
                    continue;
                }
                let mut net = 0i128;
                for i in (0..=j).rev() {
                    net += events[i].1;
                    let elapsed = i128::from(events[j].0 - events[i].0);
                    let bound = i128::from(capacity) * 60_000 + i128::from(refill) * elapsed;
                    prop_assert!(net * 60_000 <= bound, "window {}..={}: {} tokens", i, j, net);
                }
            }
        }

        /// After `reset_ms`, the bucket is full again.
        #[test]
        fn bucket_full_after_reset(
            capacity in 1u64..1_000_000,
            refill in 1u64..10_000_000,
            take in 0u64..1_000_000,
            debt in 0u64..1_000_000,
        ) {
            let b = TokenBucket::new(capacity, refill);
            let _ = b.try_take(take.min(capacity), 0);
            b.charge(debt, 0);
            let reset = b.reset_ms(0);
            prop_assert_eq!(b.remaining(reset), capacity);
        }

        /// The periods contain their instant (the calendar itself is tested in `calendar`).
        #[test]
        fn periods_contain_their_instant(unix_s in 7 * DAY_S..8_000_000_000) {
            let (y, m, _) = civil_date(unix_s);
            for p in [BudgetPeriod::Daily, BudgetPeriod::Weekly, BudgetPeriod::Monthly] {
                let (s, e) = (period_start(p, unix_s), next_period_start(p, unix_s));
                prop_assert!(s <= unix_s && unix_s < e);
                prop_assert_eq!(s % DAY_S, 0);
                prop_assert_eq!(period_start(p, e), e);
            }
            let w = period_start(BudgetPeriod::Weekly, unix_s) / DAY_S;
            prop_assert_eq!((w + 3) % 7, 0);
            let mo = period_start(BudgetPeriod::Monthly, unix_s) / DAY_S;
            prop_assert_eq!(civil_date(mo * DAY_S), (y, m, 1));
        }
    }
}
