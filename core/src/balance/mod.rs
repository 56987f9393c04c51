//! Choosing a deployment within a model group: the load-balancing strategies.
//!
//! Each worker owns one [`Balancer`] per model group (share-nothing: its own in-flight counts
//! and its own latency view), so everything here is `&mut self` and plain integers and floats.
//! Randomness and time come in as arguments (`roll`, `now`), so every choice is reproducible in
//! tests.
//!
//! The `latency` strategy is peak-EWMA with power-of-two-choices, as in Finagle's
//! `PeakEwma` and tower's `load::PeakEwma` (which linkerd uses): each deployment's cost is its
//! decaying latency estimate times its in-flight count plus one, and of two deployments drawn
//! at random (by weight) the cheaper one wins.

use std::time::{Duration, Instant};

mod pick;
mod settings;

pub(crate) use settings::ms_setting;
pub use settings::{BalanceConfig, RawBalance, Strategy};

/// How a request to a deployment ended, as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Time to first token for a stream, total time otherwise.
    pub latency: Duration,
    /// `false` for an upstream fault (connect error, timeout, 429, 5xx); a client error the
    /// deployment answered correctly (400, 404, …) is a success here.
    pub success: bool,
}

impl Outcome {
    /// A request that went well after `latency`.
    pub fn success(latency: Duration) -> Self {
        Outcome {
            latency,
            success: true,
        }
    }

    /// A request that failed after `latency`.
    pub fn failure(latency: Duration) -> Self {
        Outcome {
            latency,
            success: false,
        }
    }
}

/// One deployment's view.
#[derive(Clone, Debug)]
struct Slot {
    weight: u32,
    inflight: u32,
    /// Peak-EWMA latency in nanoseconds, as of `stamp`; meaningless while `stamp` is `None`.
    rtt_ns: f64,
    /// When `rtt_ns` was last updated (by a sample or a decaying read); `None` until the first
    /// sample.
    stamp: Option<Instant>,
    /// Smooth weighted round-robin counter. Invariant: the sum over all slots stays 0.
    current: i64,
}

/// One worker's balancer for one model group.
///
/// Call order, per attempt of a request:
/// 1. [`pick`](Self::pick) with the indices that may be used (breaker admits, not yet tried by
///    this request); `None` means no deployment is usable;
/// 2. [`on_start`](Self::on_start) when the request is actually sent to the picked index;
/// 3. exactly one of [`on_end`](Self::on_end) (the attempt finished: success or failure, with
///    its latency) or [`on_cancel`](Self::on_cancel) (abandoned without an answer: hedge loser,
///    client gone), so in-flight counts stay exact.
///
/// Indices are positions in the group's deployment list; out-of-range indices are ignored.
#[derive(Clone, Debug)]
pub struct Balancer {
    strategy: Strategy,
    slots: Vec<Slot>,
    decay_ns: f64,
    initial_ns: Option<f64>,
    penalty_ns: f64,
}

/// Cost per in-flight request of a deployment never measured (about a day).
const UNSAMPLED_BUSY_NS: f64 = 1e14;

impl Balancer {
    /// A balancer over deployments with these `weights`, with default tuning but for the EWMA
    /// `decay` time.
    pub fn new(strategy: Strategy, weights: &[u32], decay: Duration) -> Self {
        let config = BalanceConfig {
            decay,
            ..BalanceConfig::default()
        };
        Balancer::with_config(strategy, weights, &config)
    }

    /// A balancer over deployments with these `weights` and this tuning.
    pub fn with_config(strategy: Strategy, weights: &[u32], config: &BalanceConfig) -> Self {
        Balancer {
            strategy,
            slots: weights
                .iter()
                .map(|&weight| Slot {
                    weight,
                    inflight: 0,
                    rtt_ns: 0.0,
                    stamp: None,
                    current: 0,
                })
                .collect(),
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            initial_ns: config.initial_latency.map(|d| d.as_nanos() as f64),
            penalty_ns: config.failure_penalty.as_nanos() as f64,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Number of deployments.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the group has no deployment.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A request was sent to deployment `i`.
    pub fn on_start(&mut self, i: usize, now: Instant) {
        if self.slots.get(i).is_some() {
            // Bring the estimate to `now` so the decay is charged to the idle time before the
            // request, not to its duration.
            self.decay(i, now);
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.inflight = s.inflight.saturating_add(1);
        }
    }

    /// The request to deployment `i` finished at `now` with `outcome`: the in-flight count
    /// drops and the latency (at least the failure penalty for a failure) is sampled.
    pub fn on_end(&mut self, i: usize, now: Instant, outcome: Outcome) {
        let mut sample = outcome.latency.as_nanos() as f64;
        if !outcome.success {
            sample = sample.max(self.penalty_ns);
        }
        let decay_ns = self.decay_ns;
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        s.inflight = s.inflight.saturating_sub(1);
        match s.stamp {
            None => s.rtt_ns = sample,
            Some(stamp) => {
                // Peak: a slower sample is believed at once; a faster one is blended in with a
                // weight that grows with the time since the last update.
                if sample > s.rtt_ns {
                    s.rtt_ns = sample;
                } else {
                    let elapsed = now.saturating_duration_since(stamp).as_nanos() as f64;
                    let w = (-elapsed / decay_ns).exp();
                    s.rtt_ns = s.rtt_ns * w + sample * (1.0 - w);
                }
            }
        }
        s.stamp = Some(now);
    }

    /// The request to deployment `i` was abandoned without an answer (a hedge that lost, a
    /// client that went away): the in-flight count drops, no latency is sampled.
    pub fn on_cancel(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            s.inflight = s.inflight.saturating_sub(1);
        }
    }

    /// Requests in flight to deployment `i`, for metrics.
    pub fn inflight(&self, i: usize) -> u32 {
        self.slots.get(i).map_or(0, |s| s.inflight)
    }

    /// The latency estimate of deployment `i` as of its last update, for metrics; `None`
    /// before its first sample.
    pub fn ewma(&self, i: usize) -> Option<Duration> {
        let s = self.slots.get(i)?;
        s.stamp?;
        Some(Duration::from_nanos(s.rtt_ns.min(u64::MAX as f64) as u64))
    }

    /// Decays deployment `i`'s estimate toward zero up to `now` (Finagle and tower do this on
    /// every read, so an idle deployment is tried again) and returns its cost.
    fn load(&mut self, i: usize, now: Instant) -> f64 {
        self.decay(i, now);
        let initial = self.initial_ns;
        let Some(s) = self.slots.get(i) else {
            return f64::INFINITY;
        };
        let inflight = f64::from(s.inflight);
        match (s.stamp, initial) {
            (Some(_), _) => s.rtt_ns * (inflight + 1.0),
            (None, Some(initial)) => initial * (inflight + 1.0),
            // Finagle's rule for a deployment never measured: free while idle, so it is tried
            // at once; prohibitive while its first request is out, so it gets no burst before
            // its first answer.
            (None, None) => UNSAMPLED_BUSY_NS * inflight,
        }
    }

    fn decay(&mut self, i: usize, now: Instant) {
        let decay_ns = self.decay_ns;
        if let Some(s) = self.slots.get_mut(i) {
            if let Some(stamp) = s.stamp {
                if now > stamp {
                    let elapsed = now.duration_since(stamp).as_nanos() as f64;
                    s.rtt_ns *= (-elapsed / decay_ns).exp();
                    s.stamp = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::pick::mix;
    use super::Strategy;
    use super::*;
    use proptest::prelude::*;

    /// A fixed origin for fake time; tests only add to it.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn t0() -> Instant {
        Instant::now()
    }

    /// A deterministic stream of rolls.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            mix(self.0)
        }
    }

    const MS: Duration = Duration::from_millis(1);
    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t = t0();
        let mut b = Balancer::new(Strategy::Latency, &[1], Duration::from_secs(1));
        assert_eq!(b.ewma(0), None);
        b.on_start(0, t);
        b.on_end(0, t, Outcome::success(10 * MS));
        assert_eq!(b.ewma(0), Some(10 * MS));
        // A larger sample is believed at once (the peak).
        b.on_start(0, t);
        b.on_end(0, t, Outcome::success(100 * MS));
        assert_eq!(b.ewma(0), Some(100 * MS));
        // A smaller one one decay time later weighs 1 - 1/e.
        let later = t + Duration::from_secs(1);
        b.on_end(0, later, Outcome::success(10 * MS));
        let expect = 100.0 * (-1.0f64).exp() + 10.0 * (1.0 - (-1.0f64).exp());
        let got = b.ewma(0).unwrap().as_secs_f64() * 1000.0;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
        // A fast failure counts as the penalty.
        b.on_end(0, later, Outcome::failure(MS));
        assert_eq!(b.ewma(0), Some(Duration::from_secs(5)));
        // Out-of-range indices are ignored.
        b.on_start(7, later);
        b.on_end(7, later, Outcome::success(MS));
        b.on_cancel(7);
        assert_eq!((b.inflight(7), b.ewma(7)), (0, None));
    }

    #[test]
    fn latency_prefers_lower_cost_and_counts_inflight() {
        let t = t0();
        let mut b = Balancer::new(Strategy::Latency, &[1, 1], Duration::from_secs(10));
        b.on_start(0, t);
        b.on_end(0, t, Outcome::success(10 * MS));
        b.on_start(1, t);
        b.on_end(1, t, Outcome::success(30 * MS));
        for roll in 0..20 {
            assert_eq!(b.pick(t, roll, |_| true), Some(0));
        }
        // Three in flight on the fast one: 10 ms x 4 > 30 ms x 1.
        for _ in 0..3 {
            b.on_start(0, t);
        }
        assert_eq!(b.pick(t, 0, |_| true), Some(1));
        // A new deployment is tried at once, but only once until it answers.
        let mut b = Balancer::new(Strategy::Latency, &[1, 1], Duration::from_secs(10));
        b.on_start(0, t);
        b.on_end(0, t, Outcome::success(10 * MS));
        for roll in 0..20 {
            assert_eq!(b.pick(t, roll, |_| true), Some(1));
        }
        b.on_start(1, t);
        for roll in 0..20 {
            assert_eq!(b.pick(t, roll, |_| true), Some(0));
        }
        // A configured initial estimate is used as is.
        let config = BalanceConfig {
            initial_latency: Some(20 * MS),
            ..BalanceConfig::default()
        };
        let mut b = Balancer::with_config(Strategy::Latency, &[1, 1], &config);
        b.on_start(0, t);
        b.on_end(0, t, Outcome::success(10 * MS));
        assert_eq!(b.pick(t, 0, |_| true), Some(0));
        assert_eq!(b.pick(t, 1, |_| true), Some(0));
    }

    /// Drives the latency strategy with sequential requests in fake time; returns how many of
    /// `n` picks went to each deployment.
    fn drive(
        b: &mut Balancer,
        now: &mut Instant,
        rng: &mut Rng,
        lat: [Duration; 2],
        n: u32,
    ) -> [u32; 2] {
        let mut counts = [0; 2];
        for _ in 0..n {
            let i = b.pick(*now, rng.next(), |_| true).unwrap();
            counts[i] += 1;
            b.on_start(i, *now);
            *now += lat[i];
            b.on_end(i, *now, Outcome::success(lat[i]));
            *now += MS;
        }
        counts
    }

    #[test]
    fn latency_shifts_to_the_fast_one_and_recovers() {
        let mut now = t0();
        let mut rng = Rng(42);
        let mut b = Balancer::new(Strategy::Latency, &[1, 1], Duration::from_secs(1));
        // Warm up with a few hundred samples.
        drive(&mut b, &mut now, &mut rng, [10 * MS, 100 * MS], 300);
        let c = drive(&mut b, &mut now, &mut rng, [10 * MS, 100 * MS], 1000);
        assert!(c[0] >= 900, "fast share too small: {c:?}");
        // The slow one speeds up: the decay lets it be tried again and it wins back its share.
        drive(&mut b, &mut now, &mut rng, [10 * MS, 10 * MS], 1000);
        let c = drive(&mut b, &mut now, &mut rng, [10 * MS, 10 * MS], 2000);
        assert!(c[1] >= 600, "recovered share too small: {c:?}");
    }

    proptest! {
        #[test]
        fn never_picks_a_disallowed_index(
            weights in prop::collection::vec(0u32..20, 1..10),
            mask in any::<u16>(),
            ops in prop::collection::vec((any::<u64>(), 0u8..4, 0u64..500, any::<bool>()), 1..60),
            strategy in 0usize..5,
        ) {
            let strategy = Strategy::ALL[strategy];
            let n = weights.len();
            let allowed = |i: usize| mask & (1 << i) != 0;
            let any_allowed = (0..n).any(allowed);
            let mut b = Balancer::new(strategy, &weights, Duration::from_millis(100));
            let mut now = t0();
            let mut started = Vec::new();
            for (roll, op, ms, ok) in ops {
                now += Duration::from_millis(ms);
                let picked = b.pick(now, roll, allowed);
                prop_assert_eq!(picked.is_some(), any_allowed);
                if let Some(i) = picked {
                    prop_assert!(i < n && allowed(i), "picked {} with mask {:b}", i, mask);
                    match op {
                        0 => {}
                        1 => b.on_start(i, now),
                        _ => started.push(i),
                    }
                    if op >= 2 {
                        b.on_start(i, now);
                    }
                }
                if op == 3 {
                    if let Some(j) = started.pop() {
                        b.on_end(j, now, Outcome { latency: Duration::from_millis(ms), success: ok });
                    }
                }
            }
        }
    }
}
