//! Spend budgets and the calendar periods they start over on.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::calendar::{Date, DAY_S};
pub use crate::keys::BudgetPeriod;

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
    /// The end of the period last found current by [`roll_to_period`](Self::roll_to_period),
    /// times 4, plus that period's kind (`BudgetPeriod as u64`); 0: none yet. Never later than
    /// the end of the period `period_start` is in (it is stored only after `period_start` was
    /// seen to hold that period's start, and `period_start` only moves forward).
    period_end: AtomicU64,
}

impl Budget {
    /// An empty budget for the period starting at `period_start` (unix seconds).
    pub fn new(period_start: u64) -> Self {
        Budget {
            used: AtomicU64::new(0),
            spend: AtomicU64::new(0),
            period_start: AtomicU64::new(period_start),
            period_end: AtomicU64::new(0),
        }
    }

    /// A budget that already spent `spend_micros` this period (rebuilt from the store).
    pub fn with_spend(period_start: u64, spend_micros: u64) -> Self {
        Budget {
            used: AtomicU64::new(spend_micros),
            spend: AtomicU64::new(spend_micros),
            period_start: AtomicU64::new(period_start),
            period_end: AtomicU64::new(0),
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

    /// [`roll_to`](Self::roll_to)`(`[`period_start`]`(period, unix_s))`, reading the calendar
    /// only once `unix_s` reaches the end of the period last found current (a monthly
    /// period's start is a civil-date computation, once a request before this).
    pub fn roll_to_period(&self, period: BudgetPeriod, unix_s: u64) -> bool {
        let kind = period as u64;
        let seen = self.period_end.load(Ordering::Acquire);
        if seen != 0 && seen & 3 == kind && unix_s < seen >> 2 {
            // `period_start(period, unix_s)` is at most the current start: nothing to roll.
            return false;
        }
        let start = period_start(period, unix_s);
        let rolled = self.roll_to(start);
        if self.period_start.load(Ordering::Acquire) == start {
            // `Lifetime` (no end) is never kept: its start is 0 without a calendar.
            if let Some(end) = next_period_start(period, unix_s).checked_mul(4) {
                self.period_end.store(end | kind, Ordering::Release);
            }
        }
        rolled
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn rolling_by_period_is_rolling_to_the_period_start() {
        let base = 1_709_251_199 - 3 * DAY_S; // late February 2024
        for period in [
            BudgetPeriod::Daily,
            BudgetPeriod::Weekly,
            BudgetPeriod::Monthly,
            BudgetPeriod::Lifetime,
        ] {
            let (ours, plain) = (Budget::with_spend(0, 50), Budget::with_spend(0, 50));
            // Forward in steps of various sizes, a step back, the period changed midway.
            let mut t = base;
            for step in (0..400u64).map(|i| (i * 7_919) % (2 * DAY_S)) {
                t += step;
                let back = t - (step % 5_000);
                for (at, p) in [(t, period), (back, period), (t, BudgetPeriod::Daily)] {
                    assert_eq!(
                        ours.roll_to_period(p, at),
                        plain.roll_to(period_start(p, at)),
                        "{p:?} at {at}"
                    );
                    assert_eq!(ours.period_start(), plain.period_start());
                }
                ours.add_spend(1);
                plain.add_spend(1);
                assert_eq!(ours.spend(), plain.spend());
            }
        }
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

    /// The budget edge: 100 concurrent requests against a budget with room for 33.
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

    proptest! {
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
