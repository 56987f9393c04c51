//! Budget alerts: which of the thresholds (50 %, 80 %, 100 % of a budget) a key's or a team's
//! spend has newly crossed, each reported once per budget period.
//!
//! An [`AlertMark`] sits beside each budget (in its limit set) and remembers, for the current
//! period, how many thresholds were already reported. [`AlertMark::handle_spend`] is called
//! after each settlement with the budget's period start and spend; it moves the mark forward
//! by compare-and-swap, so with every worker settling at once each threshold is handed out to
//! exactly one caller. A new period starts the count over.
//!
//! A mark made at start from the spend rebuilt from the store counts the thresholds that spend
//! already reached as reported ([`AlertMark::new`]): a restart does not send them again (nor,
//! if the gateway stopped between a crossing and its delivery, ever: alerts are kept in memory
//! only).

use std::sync::atomic::{AtomicU64, Ordering};

/// The thresholds, in percent of the budget, in order.
pub const THRESHOLDS_PERCENT: [u8; 3] = [50, 80, 100];

/// How many of [`THRESHOLDS_PERCENT`] `spend` has reached for a budget of `limit` (both
/// micro-USD). A zero budget has reached them all.
pub fn reached(spend_micros: u64, limit_micros: u64) -> usize {
    THRESHOLDS_PERCENT
        .iter()
        .filter(|&&p| u128::from(spend_micros) * 100 >= u128::from(limit_micros) * u128::from(p))
        .count()
}

/// The thresholds reported so far in a budget's current period: `period_start << 2 | count`.
#[derive(Debug, Default)]
pub struct AlertMark(AtomicU64);

impl AlertMark {
    /// A mark for the period starting at `period_start` (unix seconds) whose budget of
    /// `limit_micros` (if any) has `spend_micros` spent: the thresholds already reached count
    /// as reported.
    pub fn new(period_start: u64, spend_micros: u64, limit_micros: Option<u64>) -> Self {
        let count = limit_micros.map_or(0, |l| reached(spend_micros, l));
        AlertMark(AtomicU64::new(pack(period_start, count)))
    }

    /// The thresholds (percent) crossed since the last call, to report now: `spend_micros` of
    /// `limit_micros` in the period starting at `period_start`. A later period starts over; an
    /// earlier one (a stale caller) reports nothing.
    pub fn handle_spend(
        &self,
        period_start: u64,
        spend_micros: u64,
        limit_micros: u64,
    ) -> &'static [u8] {
        let now = reached(spend_micros, limit_micros);
        let mut from = 0;
        let swapped = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                let (start, count) = unpack(state);
                let count = match period_start.cmp(&start) {
                    std::cmp::Ordering::Less => return None,
                    std::cmp::Ordering::Equal => count,
                    std::cmp::Ordering::Greater => 0,
                };
                from = count;
                (now > count).then_some(pack(period_start, now))
            });
        match swapped {
            Ok(_) => &THRESHOLDS_PERCENT[from..now],
            Err(_) => &[],
        }
    }

    /// How many thresholds were reported in the mark's period, and that period's start.
    pub fn reported(&self) -> (u64, usize) {
        unpack(self.0.load(Ordering::Acquire))
    }
}

fn pack(period_start: u64, count: usize) -> u64 {
    (period_start << 2) | count.min(3) as u64
}

fn unpack(state: u64) -> (u64, usize) {
    (state >> 2, (state & 3) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn each_threshold_once_per_period() {
        let m = AlertMark::new(1000, 0, Some(100));
        assert_eq!(m.handle_spend(1000, 10, 100), &[] as &[u8]);
        assert_eq!(m.handle_spend(1000, 50, 100), &[50]);
        assert_eq!(m.handle_spend(1000, 60, 100), &[] as &[u8]);
        assert_eq!(m.handle_spend(1000, 79, 100), &[] as &[u8]);
        assert_eq!(m.handle_spend(1000, 120, 100), &[80, 100]);
        assert_eq!(m.handle_spend(1000, 200, 100), &[] as &[u8]);
        // A stale period reports nothing; a new one starts over.
        assert_eq!(m.handle_spend(999, 200, 100), &[] as &[u8]);
        assert_eq!(m.handle_spend(2000, 85, 100), &[50, 80]);
        assert_eq!(m.reported(), (2000, 2));
    }

    #[test]
    fn spend_rebuilt_at_start_counts_as_reported() {
        let m = AlertMark::new(1000, 85, Some(100));
        assert_eq!(m.reported(), (1000, 2));
        assert_eq!(m.handle_spend(1000, 90, 100), &[] as &[u8]);
        assert_eq!(m.handle_spend(1000, 100, 100), &[100]);
        // No budget: nothing reached at start; a zero budget has reached everything.
        assert_eq!(AlertMark::new(5, 1_000_000, None).reported(), (5, 0));
        assert_eq!(reached(0, 0), 3);
        assert_eq!(reached(u64::MAX, u64::MAX), 3);
        assert_eq!(reached(u64::MAX / 2 + 1, u64::MAX), 1);
    }

    #[test]
    fn concurrent_settlements_report_each_threshold_exactly_once() {
        let m = Arc::new(AlertMark::new(7, 0, Some(1000)));
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let (m, barrier) = (m.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut got = Vec::new();
                    for i in 0..200u64 {
                        got.extend_from_slice(m.handle_spend(7, (i * 8 + t) * 1000 / 1500, 1000));
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u8> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, vec![50, 80, 100]);
    }
}
