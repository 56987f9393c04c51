//! Hedged requests: when an attempt has not produced its first byte after a delay, the same
//! request goes to a second deployment and the first to answer wins.
//!
//! Each worker owns one [`Hedger`] per model group (opt-in). It keeps a small histogram of
//! time to first byte to derive the p95 delay, and a budget so that at most a set share of
//! requests is hedged.

use std::time::Duration;

use serde::Deserialize;

use crate::balance::ms_setting;

/// When to send the hedge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// After this long without a first byte.
    Fixed(Duration),
    /// After the group's observed p95 time to first byte (on this worker).
    P95,
}

/// Hedging settings of a model group, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct HedgePolicy {
    /// When to hedge.
    pub delay: HedgeDelay,
    /// At most this percentage of requests is hedged, in (0, 100].
    pub max_percent: f64,
    /// For [`HedgeDelay::P95`]: samples needed before hedging starts.
    pub min_samples: u32,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        HedgePolicy {
            delay: HedgeDelay::P95,
            max_percent: 5.0,
            min_samples: 20,
        }
    }
}

/// `[models.hedge]`: hedged requests, off unless the table is present. Every key is optional.
///
/// ```toml
/// [models.hedge]
/// delay_ms = 800        # hedge after this long without a first byte;
///                       # omit to use the group's observed p95 time to first byte
/// max_percent = 5       # hedge at most this share of requests, (0, 100] (default 5)
/// min_samples = 20      # with the p95 delay: first bytes seen before hedging starts (default 20)
/// ```
///
/// A hedge goes to a different deployment (the breaker and the balancer still decide which);
/// the first attempt to produce a byte wins and the other is cancelled. A stream is hedged
/// only before its first byte reaches the client. The p95 is tracked per worker over roughly
/// the last thousand first bytes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHedge {
    /// Fixed delay in milliseconds, ≥ 1; absent = p95.
    pub delay_ms: Option<u64>,
    /// Hedge budget in percent of requests.
    pub max_percent: Option<f64>,
    /// Samples before the p95 is trusted, ≥ 1.
    pub min_samples: Option<u32>,
}

impl RawHedge {
    /// Checks every value; the error names the field, e.g. "`hedge.max_percent` must be in
    /// (0, 100], got 0".
    pub fn validate(self) -> Result<HedgePolicy, String> {
        let d = HedgePolicy::default();
        let max_percent = self.max_percent.unwrap_or(d.max_percent);
        if !(max_percent > 0.0 && max_percent <= 100.0) {
            return Err(format!(
                "`hedge.max_percent` must be in (0, 100], got {max_percent}"
            ));
        }
        let min_samples = self.min_samples.unwrap_or(d.min_samples);
        if min_samples == 0 {
            return Err("`hedge.min_samples` must be at least 1, got 0".to_string());
        }
        Ok(HedgePolicy {
            delay: match self.delay_ms {
                None => HedgeDelay::P95,
                v => HedgeDelay::Fixed(ms_setting("hedge.delay_ms", v, 1, Duration::ZERO)?),
            },
            max_percent,
            min_samples,
        })
    }
}

/// Sub-buckets per power of two: bucket bounds are within 12.5 % of each other.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked, in microseconds (2^37 µs ≈ 38 h); larger values share the
/// last bucket.
const MAX_EXP: u32 = 37;
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;
/// When the histogram holds twice this many samples, every count is halved, so it follows
/// roughly the last this-many-to-twice-this-many samples.
const HALF_LIFE: u32 = 1000;
/// Budget units: one hedge costs 10 000 (basis points of a request).
const HEDGE_COST: u64 = 10_000;
/// At most this many hedges can be saved up for a burst.
const BURST: u64 = 10;

fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let e = 63 - us.leading_zeros();
    if e > MAX_EXP {
        return BUCKETS - 1;
    }
    let m = (us >> (e - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(e - SUB_BITS) * SUB + m) as usize
}

/// Exclusive upper bound of bucket `i`, in microseconds.
fn upper_us(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i + 1;
    }
    let k = i - SUB;
    let e = k / SUB + u64::from(SUB_BITS);
    (SUB + k % SUB + 1) << (e - u64::from(SUB_BITS))
}

/// One worker's hedging state for one model group.
///
/// Call order, per request of the group:
/// 1. [`on_request`](Self::on_request) (earns budget);
/// 2. if [`delay`](Self::delay) is `Some(d)`, arm a timer for `d`; when it fires before the
///    first byte and another deployment is usable, ask [`should_hedge`](Self::should_hedge),
///    which spends budget when it says yes; then send the hedge;
/// 3. [`record_ttfb`](Self::record_ttfb) with the winning attempt's time to first byte
///    (measured from its own send).
#[derive(Clone, Debug)]
pub struct Hedger {
    policy: HedgePolicy,
    /// Samples per bucket. Invariant: they sum to `total`.
    counts: [u32; BUCKETS],
    total: u32,
    /// Cached p95, recomputed on every sample once `min_samples` are in.
    p95: Option<Duration>,
    /// Budget units saved, at most `BURST * HEDGE_COST`.
    tokens: u64,
    /// Budget units earned per request.
    per_request: u64,
    requests: u64,
    hedges: u64,
}

impl Hedger {
    /// A hedger with an empty histogram and an empty budget.
    pub fn new(policy: HedgePolicy) -> Self {
        let per_request = (policy.max_percent.clamp(0.0, 100.0) * 100.0).round() as u64;
        Hedger {
            policy,
            counts: [0; BUCKETS],
            total: 0,
            p95: None,
            tokens: 0,
            per_request,
            requests: 0,
            hedges: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &HedgePolicy {
        &self.policy
    }

    /// A request of the group started: it earns `max_percent / 100` of a hedge.
    pub fn on_request(&mut self) {
        self.requests = self.requests.saturating_add(1);
        self.tokens = (self.tokens + self.per_request).min(BURST * HEDGE_COST);
    }

    /// Whether to send a hedge now; `true` spends one hedge of budget. Over any run of
    /// requests, hedges never exceed `max_percent` of them.
    pub fn should_hedge(&mut self) -> bool {
        if self.tokens < HEDGE_COST {
            return false;
        }
        self.tokens -= HEDGE_COST;
        self.hedges = self.hedges.saturating_add(1);
        true
    }

    /// How long to wait for a first byte before hedging; `None` while the p95 is unknown.
    pub fn delay(&self) -> Option<Duration> {
        match self.policy.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::P95 => self.p95,
        }
    }

    /// The observed p95 time to first byte (rounded up by at most 12.5 %); `None` before
    /// `min_samples` samples.
    pub fn p95(&self) -> Option<Duration> {
        self.p95
    }

    /// Records a time to first byte.
    pub fn record_ttfb(&mut self, ttfb: Duration) {
        let us = u64::try_from(ttfb.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(bucket(us)) {
            *c = c.saturating_add(1);
            self.total += 1;
        }
        if self.total >= 2 * HALF_LIFE {
            for c in &mut self.counts {
                *c /= 2;
            }
            self.total = self.counts.iter().sum();
        }
        self.p95 = self.quantile(0.95);
    }

    /// Requests seen, for metrics.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Hedges sent, for metrics.
    pub fn hedges(&self) -> u64 {
        self.hedges
    }

    /// Samples in the histogram now.
    pub fn samples(&self) -> u32 {
        self.total
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 || self.total < self.policy.min_samples {
            return None;
        }
        let target = ((q * f64::from(self.total)).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= target {
                return Some(Duration::from_micros(upper_us(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn raw_hedge_defaults_and_errors_name_the_field() {
        assert_eq!(
            RawHedge::default().validate().unwrap(),
            HedgePolicy::default()
        );
        let raw: RawHedge =
            toml::from_str("delay_ms = 800\nmax_percent = 10\nmin_samples = 50").unwrap();
        let p = raw.validate().unwrap();
        assert_eq!(p.delay, HedgeDelay::Fixed(800 * MS));
        assert_eq!(p.max_percent, 10.0);
        assert_eq!(p.min_samples, 50);
        for (raw, want) in [
            (
                RawHedge {
                    max_percent: Some(0.0),
                    ..Default::default()
                },
                "`hedge.max_percent`",
            ),
            (
                RawHedge {
                    max_percent: Some(f64::NAN),
                    ..Default::default()
                },
                "`hedge.max_percent`",
            ),
            (
                RawHedge {
                    delay_ms: Some(0),
                    ..Default::default()
                },
                "`hedge.delay_ms`",
            ),
            (
                RawHedge {
                    min_samples: Some(0),
                    ..Default::default()
                },
                "`hedge.min_samples`",
            ),
        ] {
            let e = raw.validate().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        assert!(toml::from_str::<RawHedge>("delay = \"p95\"").is_err());
    }

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            100,
            1_000,
            65_535,
            1 << 37,
            u64::MAX,
        ] {
            let b = bucket(us);
            assert!(b >= last && b < BUCKETS, "{us}");
            last = b;
            if us < 1 << 38 {
                assert!(upper_us(b) > us, "{us}");
                assert!(
                    upper_us(b) as f64 <= (us as f64 * 1.125).max(us as f64 + 1.0),
                    "{us}"
                );
            }
        }
        for i in 1..BUCKETS {
            assert!(upper_us(i) > upper_us(i - 1));
            assert_eq!(bucket(upper_us(i - 1)), i);
        }
    }

    #[test]
    fn p95_after_min_samples() {
        let mut h = Hedger::new(HedgePolicy {
            min_samples: 100,
            ..HedgePolicy::default()
        });
        // 1..=100 ms: p95 is 95 ms.
        for ms in 1..=99 {
            h.record_ttfb(ms * MS);
            assert_eq!(h.delay(), None);
        }
        h.record_ttfb(100 * MS);
        let p = h.delay().unwrap();
        assert!(p >= 95 * MS && p <= 95 * MS * 9 / 8, "{p:?}");
        assert_eq!(h.samples(), 100);
        // Fixed delay needs no samples.
        let h = Hedger::new(HedgePolicy {
            delay: HedgeDelay::Fixed(300 * MS),
            ..HedgePolicy::default()
        });
        assert_eq!(h.delay(), Some(300 * MS));
    }

    #[test]
    fn histogram_follows_a_shift() {
        let mut h = Hedger::new(HedgePolicy::default());
        for _ in 0..5_000 {
            h.record_ttfb(1000 * MS);
        }
        assert!(h.samples() < 2 * HALF_LIFE);
        for _ in 0..10_000 {
            h.record_ttfb(100 * MS);
        }
        let p = h.p95().unwrap();
        assert!(p >= 100 * MS && p <= 113 * MS, "{p:?}");
    }

    #[test]
    fn budget_allows_the_configured_share() {
        let mut h = Hedger::new(HedgePolicy {
            max_percent: 10.0,
            ..HedgePolicy::default()
        });
        let mut hedged = 0;
        for _ in 0..1000 {
            h.on_request();
            if h.should_hedge() {
                hedged += 1;
            }
        }
        assert_eq!(hedged, 100);
        assert_eq!((h.requests(), h.hedges()), (1000, 100));
        // Saved budget is capped: after a calm spell only a burst of ten.
        for _ in 0..1000 {
            h.on_request();
        }
        let burst = (0..100).filter(|_| h.should_hedge()).count();
        assert_eq!(burst, 10);
    }

    proptest! {
        #[test]
        fn hedges_never_exceed_the_budget(
            percent in 0.01f64..=100.0,
            ops in prop::collection::vec(any::<bool>(), 0..2000),
        ) {
            let mut h = Hedger::new(HedgePolicy { max_percent: percent, ..HedgePolicy::default() });
            for op in ops {
                if op { h.on_request() } else { h.should_hedge(); }
                let allowed = h.requests() as f64 * (percent * 100.0).round() / 10_000.0;
                prop_assert!(h.hedges() as f64 <= allowed + 1e-9);
            }
        }

        #[test]
        fn p95_is_an_upper_bound_of_most_samples(samples in prop::collection::vec(0u64..10_000_000, 20..500)) {
            let mut h = Hedger::new(HedgePolicy::default());
            for &us in &samples {
                h.record_ttfb(Duration::from_micros(us));
            }
            let p = h.p95().unwrap();
            let below = samples.iter().filter(|&&us| Duration::from_micros(us) < p).count();
            prop_assert!(below as f64 >= 0.95 * samples.len() as f64);
        }
    }
}
