//! The balancing settings: the strategy names a group may use and the `balance` tuning (EWMA
//! decay, initial latency, failure penalty), validated from the raw config.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
