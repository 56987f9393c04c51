//! The sliding 60 s window behind "N requests per minute" limits (`rpm` of keys, teams and
//! deployments): any 60 s window admits at most the limit.
//!
//! A token bucket of `rpm` admits a burst of `rpm` and then `rpm` per minute, so one 60 s window
//! can see up to `2 × rpm − 1`; users of a gateway read "rpm = 10" as "at most 10 in any
//! minute", which is what this window enforces:
//!
//! - Up to [`EXACT_MAX`] it is an exact sliding log: the admission times of the last 60 s (at
//!   most `limit` of them); a request is admitted when fewer than `limit` are younger than 60 s.
//! - Above it, a counter per second over the last 61 seconds: a request is admitted when the
//!   admissions of every second that overlaps the last 60 s are fewer than `limit`. Never above
//!   the limit in any window; it can refuse up to one second's admissions early (those of the
//!   oldest, partly expired second), a rounding of at most `1/60` of the limit. (The weighted
//!   two-window estimate is cheaper still, but it assumes the previous minute was uniform and so
//!   can over-admit; this one cannot.)
//!
//! Two admissions `a` and `b` are in one window when `|b − a| < 60 000` ms.
//!
//! Concurrency: the state is behind a small per-window `Mutex`, held for a few
//! instructions with no I/O (amortised O(1) for the log, 61 counters for the slots). A `now_ms`
//! older than one already seen (workers' clocks may disagree by microseconds) is taken as the
//! newest, which is stricter, never looser.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use super::{Remaining, RetryAfter, Snapshot};

/// The window's length, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;
/// Largest limit kept as an exact log of admission times (8 bytes per admission).
pub const EXACT_MAX: u64 = 1_000;
/// One counter's span above [`EXACT_MAX`].
const SLOT_MS: u64 = 1_000;
/// Counters kept: every second that can overlap a 60 s window.
const SLOTS: usize = (WINDOW_MS / SLOT_MS) as usize + 1;

/// "At most `limit` requests in any 60 s window". Share it through `Arc`.
#[derive(Debug)]
pub struct RequestWindow {
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The newest `now_ms` seen.
    newest: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Admission times, oldest first, all younger than [`WINDOW_MS`] after `prune`.
    Log(VecDeque<u64>),
    /// A counter per second, above [`EXACT_MAX`].
    Slots(Box<Ring>),
}

/// The per-second counters and their running sum.
///
/// Invariant after [`State::prune`] at `now`: every counter that is not zero belongs to a
/// second in `from..=now / SLOT_MS` (`from` the first second still in the window), and
/// `total` is their sum; so the count is `total`, read without summing the ring on every
/// request.
#[derive(Debug)]
struct Ring {
    /// `(second, admissions)` at `second % SLOTS`.
    slots: [(u64, u64); SLOTS],
    /// The admissions of every counter.
    total: u64,
    /// The oldest second that may still have admissions (counters of older seconds are
    /// zeroed as they leave the window).
    from: u64,
}

impl Ring {
    fn slot(&mut self, second: u64) -> &mut (u64, u64) {
        &mut self.slots[(second % SLOTS as u64) as usize]
    }
}

impl State {
    /// Drops what left the window at `now`: the log's old times, the counters of seconds that
    /// left (each second once, as time passes them).
    fn prune(&mut self, now: u64) {
        match &mut self.kind {
            Kind::Log(times) => {
                while times.front().is_some_and(|&t| now - t >= WINDOW_MS) {
                    times.pop_front();
                }
            }
            Kind::Slots(ring) => {
                let first = Self::first_slot(now);
                if first <= ring.from {
                    return;
                }
                if first - ring.from >= SLOTS as u64 {
                    ring.slots.iter_mut().for_each(|s| s.1 = 0);
                    ring.total = 0;
                } else {
                    for s in ring.from..first {
                        let slot = ring.slot(s);
                        if slot.0 == s {
                            let n = std::mem::take(&mut slot.1);
                            ring.total -= n;
                        }
                    }
                }
                ring.from = first;
            }
        }
    }

    /// The first second whose admissions can still be in the window at `now`.
    fn first_slot(now: u64) -> u64 {
        now.saturating_sub(WINDOW_MS - 1) / SLOT_MS
    }

    /// Admissions in the window at `now`.
    fn count(&self, now: u64) -> u64 {
        match &self.kind {
            Kind::Log(times) => times.len() as u64,
            Kind::Slots(ring) => {
                debug_assert_eq!(ring.from, Self::first_slot(now));
                ring.total
            }
        }
    }

    /// Milliseconds from `now` until `free` more admissions have left the window.
    fn wait_for(&self, free: u64, now: u64) -> u64 {
        match &self.kind {
            Kind::Log(times) => {
                let i = usize::try_from(free.saturating_sub(1)).unwrap_or(usize::MAX);
                times.get(i).map_or(0, |&t| t + WINDOW_MS - now)
            }
            Kind::Slots(ring) => {
                let newest = now / SLOT_MS;
                if free >= ring.total {
                    // Everything (the reset header): when the newest second with admissions
                    // leaves, found from the newest end (usually the current second).
                    return (ring.from..=newest)
                        .rev()
                        .find(|&s| {
                            let (second, n) = ring.slots[(s % SLOTS as u64) as usize];
                            second == s && n > 0
                        })
                        .map_or(0, |s| s * SLOT_MS + SLOT_MS - 1 + WINDOW_MS - now);
                }
                // The seconds in the window, oldest first, straight from the ring (every
                // admission is at or before `now`): no list to build and sort.
                let mut freed = 0;
                for s in ring.from..=newest {
                    let (second, n) = ring.slots[(s % SLOTS as u64) as usize];
                    if second != s || n == 0 {
                        continue;
                    }
                    freed += n;
                    if freed >= free {
                        return s * SLOT_MS + SLOT_MS - 1 + WINDOW_MS - now;
                    }
                }
                0
            }
        }
    }
}

impl RequestWindow {
    /// At most `limit` requests in any 60 s window. An empty window.
    pub fn per_minute(limit: u64) -> Self {
        let kind = if limit <= EXACT_MAX {
            Kind::Log(VecDeque::new())
        } else {
            Kind::Slots(Box::new(Ring {
                slots: [(0, 0); SLOTS],
                total: 0,
                from: 0,
            }))
        };
        RequestWindow {
            limit,
            state: Mutex::new(State { newest: 0, kind }),
        }
    }

    /// The limit (the `x-ratelimit-limit-requests` value).
    pub fn capacity(&self) -> u64 {
        self.limit
    }

    /// Whether admissions are kept exactly (a log) rather than per second.
    pub fn is_exact(&self) -> bool {
        self.limit <= EXACT_MAX
    }

    /// The state at `now_ms` (or the newest time seen, if later), pruned.
    fn at(&self, now_ms: u64) -> (MutexGuard<'_, State>, u64) {
        // A panic while holding the lock cannot leave the state inconsistent (every update is
        // one push, pop or counter change), so a poisoned lock is still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms.max(state.newest);
        state.newest = now;
        state.prune(now);
        (state, now)
    }

    /// Admits one request at `now_ms`, or says how long until one would be admitted.
    pub fn try_take(&self, now_ms: u64) -> Result<Remaining, RetryAfter> {
        if self.limit == 0 {
            return Err(RetryAfter::NEVER);
        }
        let (mut state, now) = self.at(now_ms);
        let count = state.count(now);
        if count >= self.limit {
            let wait = state.wait_for(count + 1 - self.limit, now);
            return Err(RetryAfter(wait.max(1)));
        }
        match &mut state.kind {
            Kind::Log(times) => times.push_back(now),
            Kind::Slots(ring) => {
                let s = now / SLOT_MS;
                let slot = ring.slot(s);
                if slot.0 != s {
                    // The second it held left the window: pruned to 0 already.
                    *slot = (s, 0);
                }
                slot.1 += 1;
                ring.total += 1;
            }
        }
        Ok(Remaining(self.limit - count - 1))
    }

    /// Takes back the newest admission (its request was refused by another limit).
    pub fn refund(&self, now_ms: u64) {
        let (mut state, now) = self.at(now_ms);
        match &mut state.kind {
            Kind::Log(times) => {
                times.pop_back();
            }
            Kind::Slots(ring) => {
                // The newest second with an admission, newest first.
                for s in (ring.from..=now / SLOT_MS).rev() {
                    let slot = ring.slot(s);
                    if slot.0 == s && slot.1 > 0 {
                        slot.1 -= 1;
                        ring.total -= 1;
                        break;
                    }
                }
            }
        }
    }

    /// Requests that would be admitted at `now_ms`, one after another.
    pub fn remaining(&self, now_ms: u64) -> u64 {
        let (state, now) = self.at(now_ms);
        self.limit.saturating_sub(state.count(now))
    }

    /// Milliseconds until the whole limit is available again (the `x-ratelimit-reset-requests`
    /// value): when every admission now in the window has left it.
    pub fn reset_ms(&self, now_ms: u64) -> u64 {
        let (state, now) = self.at(now_ms);
        let count = state.count(now);
        if count == 0 {
            0
        } else {
            state.wait_for(count, now)
        }
    }

    /// Limit, remaining and reset at `now_ms`, for the response headers.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        let (state, now) = self.at(now_ms);
        let count = state.count(now);
        Snapshot {
            limit: self.limit,
            remaining: self.limit.saturating_sub(count),
            reset_ms: if count == 0 {
                0
            } else {
                state.wait_for(count, now)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TokenBucket;
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// The most admissions in any window `[t, t + 60 s)` of sorted `times`.
    fn max_in_any_window(times: &[u64]) -> usize {
        let mut best = 0;
        let mut start = 0;
        for (end, &t) in times.iter().enumerate() {
            while t - times[start] >= WINDOW_MS {
                start += 1;
            }
            best = best.max(end + 1 - start);
        }
        best
    }

    /// A long random sequence of attempts (bursts and gaps, a simple xorshift so the test is
    /// reproducible): admitted times of `take` at each attempt.
    fn run(mut take: impl FnMut(u64) -> bool, rpm: u64, seed: u64) -> Vec<u64> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 1_000;
        let mut admitted = Vec::new();
        for _ in 0..40 * rpm + 2_000 {
            // Bursts, steady traffic about twice the limit, now and then a quiet spell.
            let r = next() % (10 * rpm);
            now += if r < 6 * rpm {
                0
            } else if r + 1 < 10 * rpm {
                next() % (2 * WINDOW_MS / rpm + 1)
            } else {
                next() % (2 * WINDOW_MS)
            };
            if take(now) {
                admitted.push(now);
            }
        }
        admitted
    }

    #[test]
    fn at_most_rpm_in_every_window_where_the_bucket_is_not() {
        for (rpm, seed) in [(1, 7), (10, 3), (60, 11), (999, 5), (1_000, 9), (1_001, 13)] {
            let w = RequestWindow::per_minute(rpm);
            let got = run(|now| w.try_take(now).is_ok(), rpm, seed);
            let most = max_in_any_window(&got);
            assert!(most <= rpm as usize, "rpm {rpm}: {most} in one window");
            // Not starved: the limit is reached in some window.
            let floor = if w.is_exact() { rpm } else { rpm * 59 / 60 };
            assert!(
                most as u64 >= floor,
                "rpm {rpm}: at most {most} in a window"
            );
            // The token bucket this replaced fails the same sequence (one of 1 per minute is
            // exact: it cannot burst).
            if rpm > 1 {
                let b = TokenBucket::per_minute(rpm);
                let got = run(|now| b.try_take(1, now).is_ok(), rpm, seed);
                assert!(
                    max_in_any_window(&got) > rpm as usize,
                    "rpm {rpm}: bucket held"
                );
            }
        }
    }

    #[test]
    fn log_admits_exactly_and_tells_when() {
        let w = RequestWindow::per_minute(3);
        assert_eq!(
            w.snapshot(0),
            Snapshot {
                limit: 3,
                remaining: 3,
                reset_ms: 0
            }
        );
        assert_eq!(w.try_take(1_000), Ok(Remaining(2)));
        assert_eq!(w.try_take(2_000), Ok(Remaining(1)));
        assert_eq!(w.try_take(30_000), Ok(Remaining(0)));
        // The oldest leaves at 61 000.
        assert_eq!(w.try_take(30_000), Err(RetryAfter(31_000)));
        assert_eq!(
            w.snapshot(30_000),
            Snapshot {
                limit: 3,
                remaining: 0,
                reset_ms: 60_000
            }
        );
        assert_eq!(w.try_take(60_999), Err(RetryAfter(1)));
        assert_eq!(w.try_take(61_000), Ok(Remaining(0)));
        assert_eq!(w.remaining(62_000), 1);
        // An older clock reading counts as the newest seen: no early admission.
        assert_eq!(w.try_take(10), Ok(Remaining(0)));
        assert_eq!(w.try_take(10), Err(RetryAfter(28_000)));
        w.refund(62_000);
        assert_eq!(w.remaining(62_000), 1);
        assert_eq!(w.try_take(62_000), Ok(Remaining(0)));
        assert_eq!(w.reset_ms(62_000), 60_000);
        assert_eq!(w.remaining(122_000), 3);
        assert_eq!(w.reset_ms(122_000), 0);
        let zero = RequestWindow::per_minute(0);
        assert_eq!(zero.try_take(5), Err(RetryAfter::NEVER));
        zero.refund(5);
        assert_eq!(zero.remaining(5), 0);
    }

    #[test]
    fn slots_never_pass_the_limit_and_tell_when() {
        let w = RequestWindow::per_minute(2_000);
        assert!(!w.is_exact());
        for _ in 0..1_500 {
            w.try_take(500).unwrap();
        }
        for _ in 0..500 {
            w.try_take(30_250).unwrap();
        }
        assert_eq!(w.try_take(30_250), Err(RetryAfter(60_999 - 30_250)));
        // The first second's 1 500 leave at 60 999 (counted until its whole second has).
        assert_eq!(w.try_take(60_998), Err(RetryAfter(1)));
        assert_eq!(w.snapshot(60_999).remaining, 1_500);
        assert_eq!(w.reset_ms(60_999), 90_999 - 60_999);
        w.refund(60_999);
        assert_eq!(w.remaining(60_999), 1_501);
        assert_eq!(w.remaining(200_000), 2_000);
    }

    /// 8 threads on one window while time moves: exactly the limit admitted in one window.
    #[test]
    fn threads_never_over_admit() {
        for rpm in [50, 5_000] {
            let w = Arc::new(RequestWindow::per_minute(rpm));
            let clock = Arc::new(AtomicU64::new(0));
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (w, clock) = (w.clone(), clock.clone());
                    std::thread::spawn(move || {
                        let mut admitted = 0usize;
                        for _ in 0..20_000u64 {
                            let now_ms = clock.fetch_add(1, Ordering::Relaxed) / 8;
                            if w.try_take(now_ms).is_ok() {
                                admitted += 1;
                            }
                        }
                        admitted
                    })
                })
                .collect();
            let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            // All 160 000 attempts fall within 20 s, one window: exactly the limit admitted.
            assert!(clock.load(Ordering::Relaxed) / 8 < WINDOW_MS);
            assert_eq!(admitted as u64, rpm);
        }
    }

    /// The per-second counters as first written (every read sums and scans the whole
    /// ring): what the running sum must agree with.
    struct NaiveSlots {
        limit: u64,
        newest: u64,
        seconds: std::collections::BTreeMap<u64, u64>,
    }

    impl NaiveSlots {
        fn live(&mut self, now_ms: u64) -> (u64, Vec<(u64, u64)>) {
            let now = now_ms.max(self.newest);
            self.newest = now;
            let first = State::first_slot(now);
            let live: Vec<_> = self
                .seconds
                .range(first..)
                .filter(|(_, n)| **n > 0)
                .map(|(s, n)| (*s, *n))
                .collect();
            (now, live)
        }

        fn wait_for(live: &[(u64, u64)], free: u64, now: u64) -> u64 {
            let mut freed = 0;
            for &(s, n) in live {
                freed += n;
                if freed >= free {
                    return s * SLOT_MS + SLOT_MS - 1 + WINDOW_MS - now;
                }
            }
            0
        }

        fn try_take(&mut self, now_ms: u64) -> Result<Remaining, RetryAfter> {
            let (now, live) = self.live(now_ms);
            let count: u64 = live.iter().map(|l| l.1).sum();
            if count >= self.limit {
                let wait = Self::wait_for(&live, count + 1 - self.limit, now);
                return Err(RetryAfter(wait.max(1)));
            }
            *self.seconds.entry(now / SLOT_MS).or_default() += 1;
            Ok(Remaining(self.limit - count - 1))
        }

        fn refund(&mut self, now_ms: u64) {
            let (_, live) = self.live(now_ms);
            if let Some(&(s, _)) = live.last() {
                *self.seconds.entry(s).or_default() -= 1;
            }
        }

        fn snapshot(&mut self, now_ms: u64) -> Snapshot {
            let (now, live) = self.live(now_ms);
            let count: u64 = live.iter().map(|l| l.1).sum();
            Snapshot {
                limit: self.limit,
                remaining: self.limit.saturating_sub(count),
                reset_ms: if count == 0 {
                    0
                } else {
                    Self::wait_for(&live, count, now)
                },
            }
        }
    }

    proptest! {
        /// The counters' running sum answers as summing the ring on every read did: for any
        /// sequence of bursts of takes, refunds, snapshots and waits (short and past the whole
        /// ring), and clocks that step back.
        #[test]
        fn slots_match_a_naive_model(
            limit in (EXACT_MAX + 1)..(EXACT_MAX + 40),
            ops in proptest::collection::vec((0u8..10, 0u64..70_000, 1u64..200), 1..200),
        ) {
            let w = RequestWindow::per_minute(limit);
            let mut model = NaiveSlots { limit, newest: 0, seconds: Default::default() };
            let mut now = 0u64;
            for (op, wait, n) in ops {
                match op {
                    0..=4 => {
                        for _ in 0..n * 8 {
                            prop_assert_eq!(w.try_take(now), model.try_take(now));
                        }
                    }
                    5 => {
                        // An older clock reading (another worker's) counts as the newest.
                        let then = now.saturating_sub(n);
                        prop_assert_eq!(w.try_take(then), model.try_take(then));
                    }
                    6 => {
                        w.refund(now);
                        model.refund(now);
                    }
                    7 => prop_assert_eq!(w.snapshot(now), model.snapshot(now)),
                    8 => now += wait % 2_000,
                    _ => now += wait,
                }
                prop_assert_eq!(w.snapshot(now), model.snapshot(now));
            }
        }

        /// For any sequence of takes, refunds and waits, a take is admitted exactly when the
        /// log holds fewer than `limit` admissions of the last 60 s, and `remaining` agrees.
        #[test]
        fn log_matches_a_naive_model(
            limit in 1u64..20,
            ops in proptest::collection::vec((0u8..10, 0u64..20_000), 1..300),
        ) {
            let w = RequestWindow::per_minute(limit);
            let mut model: Vec<u64> = Vec::new();
            let mut now = 0u64;
            for (op, wait) in ops {
                match op {
                    0..=5 => {
                        let live = model.iter().filter(|&&t| now - t < WINDOW_MS).count() as u64;
                        prop_assert_eq!(w.remaining(now), limit - live);
                        let got = w.try_take(now);
                        prop_assert_eq!(got.is_ok(), live < limit);
                        if got.is_ok() {
                            model.push(now);
                        } else {
                            // The oldest admission in the window leaves at its time + 60 s.
                            let oldest = model[model.len() - live as usize];
                            prop_assert_eq!(got, Err(RetryAfter(oldest + WINDOW_MS - now)));
                        }
                    }
                    6 => {
                        w.refund(now);
                        let live = model.iter().filter(|&&t| now - t < WINDOW_MS).count();
                        if live > 0 {
                            model.pop();
                        }
                    }
                    _ => now += wait,
                }
            }
        }
    }
}
