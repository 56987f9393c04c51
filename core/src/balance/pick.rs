//! Choosing among the allowed deployments, one function per strategy: weighted draw, smooth
//! weighted round-robin, least in flight, power-of-two-choices on peak-EWMA cost, priority.

use std::time::Instant;

use super::{Balancer, Slot, Strategy};

impl Balancer {
    /// Chooses a deployment among those for which `allowed(i)` is true; `None` when there is
    /// none. `roll` is a uniformly random number (only `weighted`, `least-inflight` ties and
    /// `latency` use it). `allowed` must be a pure check: it may be called several times per
    /// index.
    pub fn pick(
        &mut self,
        now: Instant,
        roll: u64,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.strategy {
            Strategy::Weighted => draw(&self.slots, roll, &allowed),
            Strategy::RoundRobin => self.pick_round_robin(&allowed),
            Strategy::LeastInflight => self.pick_least_inflight(roll, &allowed),
            Strategy::Latency => {
                let a = draw(&self.slots, roll, &allowed)?;
                let Some(b) = draw(&self.slots, mix(roll), &|i| i != a && allowed(i)) else {
                    return Some(a);
                };
                let (ca, cb) = (self.load(a, now), self.load(b, now));
                Some(if cb < ca { b } else { a })
            }
            Strategy::Priority => (0..self.slots.len()).find(|&i| allowed(i)),
        }
    }

    pub(super) fn pick_round_robin(&mut self, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, s) in self.slots.iter_mut().enumerate() {
            if !allowed(i) {
                continue;
            }
            let w = i64::from(s.weight);
            s.current += w;
            total += w;
            if best.is_none_or(|(_, c)| s.current > c) {
                best = Some((i, s.current));
            }
        }
        let (i, _) = best?;
        if let Some(s) = self.slots.get_mut(i) {
            s.current -= total;
        }
        Some(i)
    }

    pub(super) fn pick_least_inflight(
        &self,
        roll: u64,
        allowed: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        // `a` is less loaded than `b` when (a.inflight + 1) / a.weight < (b.inflight + 1) / b.weight.
        let score = |s: &Slot| (u64::from(s.inflight) + 1, u64::from(s.weight));
        let less = |a: (u64, u64), b: (u64, u64)| a.0 * b.1 < b.0 * a.1;
        let mut best: Option<(u64, u64)> = None;
        let mut ties = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            let sc = score(s);
            match best {
                Some(b) if less(b, sc) => {}
                Some(b) if !less(sc, b) => ties += 1,
                _ => {
                    best = Some(sc);
                    ties = 1;
                }
            }
        }
        let best = best?;
        let mut k = roll % ties;
        for (i, s) in self.slots.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            let sc = score(s);
            if !less(best, sc) && !less(sc, best) {
                if k == 0 {
                    return Some(i);
                }
                k -= 1;
            }
        }
        None
    }
}

/// A draw by weight among the allowed slots; uniform when all allowed weights are zero.
fn draw(slots: &[Slot], roll: u64, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
    let mut total = 0u64;
    let mut count = 0u64;
    for (i, s) in slots.iter().enumerate() {
        if allowed(i) {
            total += u64::from(s.weight);
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    let uniform = total == 0;
    let mut point = if uniform { roll % count } else { roll % total };
    for (i, s) in slots.iter().enumerate() {
        if !allowed(i) {
            continue;
        }
        let w = if uniform { 1 } else { u64::from(s.weight) };
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// splitmix64's finaliser: a second, independent-looking random number from `roll`.
pub(crate) fn mix(roll: u64) -> u64 {
    let mut z = roll.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::tests::{t0, Rng};
    use crate::balance::Outcome;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn weighted_honours_weights_over_10k_picks() {
        let weights = [1, 2, 7];
        let mut b = Balancer::new(Strategy::Weighted, &weights, Duration::from_secs(10));
        let mut rng = Rng(7);
        let mut counts = [0u32; 3];
        let n = 10_000u32;
        for _ in 0..n {
            counts[b.pick(t0(), rng.next(), |_| true).unwrap()] += 1;
        }
        for (c, w) in counts.iter().zip(weights) {
            let p = f64::from(w) / 10.0;
            let mean = f64::from(n) * p;
            let sd = (f64::from(n) * p * (1.0 - p)).sqrt();
            assert!(
                (f64::from(*c) - mean).abs() < 5.0 * sd,
                "{counts:?} vs weights {weights:?}"
            );
        }
    }

    #[test]
    fn weighted_skips_disallowed_and_falls_back_to_uniform_on_zero_weights() {
        let mut b = Balancer::new(Strategy::Weighted, &[5, 0, 0], MS);
        let mut seen = [0u32; 3];
        for roll in 0..100 {
            seen[b.pick(t0(), roll, |i| i != 0).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert_eq!(seen[1], 50);
        assert_eq!(seen[2], 50);
        assert_eq!(b.pick(t0(), 1, |_| false), None);
    }

    #[test]
    fn round_robin_rotates_smoothly_by_weight() {
        let mut b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1], MS);
        let order: Vec<_> = (0..6).map(|_| b.pick(t0(), 0, |_| true).unwrap()).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        // nginx's example: weights 5, 1, 1 give a a b a c a a (no burst of five a's).
        let mut b = Balancer::new(Strategy::RoundRobin, &[5, 1, 1], MS);
        let order: Vec<_> = (0..7).map(|_| b.pick(t0(), 0, |_| true).unwrap()).collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
        // Skipping one keeps rotating over the others.
        let mut b = Balancer::new(Strategy::RoundRobin, &[1, 1, 1], MS);
        let order: Vec<_> = (0..4)
            .map(|_| b.pick(t0(), 0, |i| i != 1).unwrap())
            .collect();
        assert_eq!(order, [0, 2, 0, 2]);
    }

    #[test]
    fn least_inflight_prefers_idle_and_respects_weight() {
        let now = t0();
        let mut b = Balancer::new(Strategy::LeastInflight, &[1, 1, 1], MS);
        b.on_start(0, now);
        b.on_start(1, now);
        assert_eq!(b.pick(now, 0, |_| true), Some(2));
        b.on_start(2, now);
        b.on_start(2, now);
        // 0 and 1 tie at one each: the roll chooses between them.
        assert_eq!(b.pick(now, 0, |_| true), Some(0));
        assert_eq!(b.pick(now, 1, |_| true), Some(1));
        b.on_end(2, now, Outcome::success(MS));
        b.on_cancel(2);
        assert_eq!(b.inflight(2), 0);
        assert_eq!(b.pick(now, 0, |_| true), Some(2));
        // Weight 3 carries three times the load before it is "more loaded".
        let mut b = Balancer::new(Strategy::LeastInflight, &[3, 1], MS);
        for _ in 0..2 {
            b.on_start(0, now);
        }
        assert_eq!(b.pick(now, 0, |_| true), Some(0));
        b.on_start(0, now);
        // (3+1)/3 > (0+1)/1
        assert_eq!(b.pick(now, 0, |_| true), Some(1));
    }

    #[test]
    fn priority_takes_first_allowed() {
        let mut b = Balancer::new(Strategy::Priority, &[1, 1, 1], MS);
        assert_eq!(b.pick(t0(), 9, |_| true), Some(0));
        assert_eq!(b.pick(t0(), 9, |i| i != 0), Some(1));
        assert_eq!(b.pick(t0(), 9, |i| i == 2), Some(2));
    }
}
