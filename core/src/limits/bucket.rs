//! The token bucket (GCRA) behind "N per minute" limits on tokens.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Remaining, RetryAfter, Snapshot};

/// Time units per millisecond inside a [`TokenBucket`]: 2^20, about a nanosecond each, so the
/// emission interval of even a billion-tokens-per-minute bucket stays exact to a few percent
/// (and is always rounded *up*, which is stricter, never looser).
const TICKS_PER_MS: u64 = 1 << 20;
const MS_PER_MINUTE: u64 = 60_000;
/// Largest state a bucket holds, so additions never wrap.
const MAX_TICKS: u64 = u64::MAX / 4;

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

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

    }
}
