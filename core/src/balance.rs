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

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How a model group spreads requests over its deployments (`strategy = "…"` in `[[models]]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// `weighted`: random, in proportion to the weights. The default.
    #[default]
    Weighted,
    /// `round-robin`: in turn, in proportion to the weights (smooth weighted round-robin, as
    /// nginx does it), so equal weights give a strict rotation.
    RoundRobin,
    /// `least-inflight`: the deployment with the fewest requests in flight relative to its
    /// weight; ties broken at random.
    LeastInflight,
    /// `latency`: power-of-two-choices over peak-EWMA latency times in-flight requests.
    Latency,
    /// `priority`: always the first usable deployment in config order; later ones are spares.
    Priority,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 5] = [
        Strategy::Weighted,
        Strategy::RoundRobin,
        Strategy::LeastInflight,
        Strategy::Latency,
        Strategy::Priority,
    ];

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastInflight => "least-inflight",
            Strategy::Latency => "latency",
            Strategy::Priority => "priority",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{s}` (expected weighted, round-robin, least-inflight, latency or priority)"
                )
            })
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Tuning of the `latency` strategy (ignored by the others), validated.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceConfig {
    /// Decay time of the latency EWMA: a sample's weight fades as `exp(-age / decay)`.
    pub decay: Duration,
    /// Estimate for a deployment that has no sample yet. `None` (the default) follows
    /// Finagle: a deployment never measured is preferred while it has nothing in flight and
    /// avoided while its first request is out, so it is tried once, at once, and then judged
    /// on its answer.
    pub initial_latency: Option<Duration>,
    /// A failed request counts as at least this latency, so a deployment that fails fast does
    /// not attract traffic.
    pub failure_penalty: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            decay: Duration::from_secs(10),
            initial_latency: None,
            failure_penalty: Duration::from_secs(5),
        }
    }
}

/// `[models.balance]`: tuning of the `latency` strategy. Every key is optional.
///
/// ```toml
/// [[models]]
/// name = "gpt-4o"
/// strategy = "latency"          # weighted (default) | round-robin | least-inflight | latency | priority
/// [models.balance]
/// decay_ms = 10000              # EWMA decay time of the latency estimate (default 10 s)
/// initial_latency_ms = 500      # estimate for a deployment with no sample yet (default: none,
///                               # it is tried once at once and judged on its first answer)
/// failure_penalty_ms = 5000     # a failed request counts as at least this latency (default 5 s; 0 = none)
/// ```
///
/// Each worker keeps its own latency view; for streaming requests the latency that counts is
/// the time to first token, for the others the total time.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalance {
    /// EWMA decay time in milliseconds, > 0.
    pub decay_ms: Option<u64>,
    /// Initial estimate in milliseconds, > 0.
    pub initial_latency_ms: Option<u64>,
    /// Failure penalty in milliseconds.
    pub failure_penalty_ms: Option<u64>,
}

/// Longest duration any resilience setting accepts (one day), so time arithmetic cannot
/// overflow.
pub(crate) const MAX_SETTING_MS: u64 = 86_400_000;

/// Checks a millisecond setting is in `min..=MAX_SETTING_MS`; the error names `field`.
pub(crate) fn ms_setting(
    field: &str,
    v: Option<u64>,
    min: u64,
    default: Duration,
) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(ms) if ms < min => Err(format!("`{field}` must be at least {min}, got {ms}")),
        Some(ms) if ms > MAX_SETTING_MS => Err(format!(
            "`{field}` must be at most {MAX_SETTING_MS} (one day), got {ms}"
        )),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

impl RawBalance {
    /// Checks every value; the error names the field, e.g. "`balance.decay_ms` must be at
    /// least 1, got 0".
    pub fn validate(self) -> Result<BalanceConfig, String> {
        let d = BalanceConfig::default();
        Ok(BalanceConfig {
            decay: ms_setting("balance.decay_ms", self.decay_ms, 1, d.decay)?,
            initial_latency: match self.initial_latency_ms {
                None => None,
                v => Some(ms_setting(
                    "balance.initial_latency_ms",
                    v,
                    1,
                    Duration::ZERO,
                )?),
            },
            failure_penalty: ms_setting(
                "balance.failure_penalty_ms",
                self.failure_penalty_ms,
                0,
                d.failure_penalty,
            )?,
        })
    }
}

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

    fn pick_round_robin(&mut self, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
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

    fn pick_least_inflight(&self, roll: u64, allowed: &impl Fn(usize) -> bool) -> Option<usize> {
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
pub(crate) mod tests {
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
    fn strategy_parses_and_prints() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        let err = "fastest".parse::<Strategy>().unwrap_err();
        assert!(
            err.contains("`fastest`") && err.contains("round-robin"),
            "{err}"
        );
        #[derive(Deserialize)]
        struct M {
            strategy: Strategy,
        }
        let m: M = toml::from_str("strategy = \"least-inflight\"").unwrap();
        assert_eq!(m.strategy, Strategy::LeastInflight);
        assert!(toml::from_str::<M>("strategy = \"random\"").is_err());
        assert_eq!(Strategy::default(), Strategy::Weighted);
    }

    #[test]
    fn raw_balance_validates_and_names_fields() {
        let c = RawBalance::default().validate().unwrap();
        assert_eq!(c, BalanceConfig::default());
        let raw: RawBalance =
            toml::from_str("decay_ms = 2000\ninitial_latency_ms = 300\nfailure_penalty_ms = 0")
                .unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.decay, Duration::from_secs(2));
        assert_eq!(c.initial_latency, Some(Duration::from_millis(300)));
        assert_eq!(c.failure_penalty, Duration::ZERO);
        let e = RawBalance {
            decay_ms: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`balance.decay_ms`"), "{e}");
        let e = RawBalance {
            initial_latency_ms: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`balance.initial_latency_ms`"), "{e}");
        assert!(toml::from_str::<RawBalance>("decay = 3").is_err());
    }

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
