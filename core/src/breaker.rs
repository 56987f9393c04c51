//! Circuit breakers: one per deployment per worker, so a failing upstream is skipped quickly.
//!
//! ```text
//!            N consecutive failures, or error rate ≥ limit over the window
//!  Closed ───────────────────────────────────────────────────────────────► Open { until }
//!    ▲                                                                     │      ▲
//!    │ a success                          cool-down passed (lazily, by now)│      │ a failure
//!    │                                                                     ▼      │ (cool-down doubles)
//!    └─────────────────────────────────────────────────────────────────── HalfOpen
//!                                     at most `half_open_probes` probes in flight
//! ```
//!
//! The breaker is a plain state machine: time comes in as `now`, and every change of state is
//! returned as a [`Transition`] for the caller to log and count. Open turns half-open by the
//! passing of time alone, so that step is not a transition: [`Breaker::state`] reports it.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::balance::ms_setting;

/// When a breaker trips and how it recovers, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// `false` turns the breaker off: it always admits.
    pub enabled: bool,
    /// Trip after this many failures in a row; 0 turns this trigger off.
    pub consecutive_failures: u32,
    /// Trip when failures / requests over the window reach this (0..=1)…
    pub error_rate: f64,
    /// …over this rolling window (ten buckets)…
    pub window: Duration,
    /// …once the window holds at least this many requests.
    pub min_requests: u32,
    /// How long the first trip stays open; each further trip without a successful close
    /// doubles it.
    pub cooldown: Duration,
    /// The longest cool-down.
    pub max_cooldown: Duration,
    /// Probe requests allowed in flight while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// `[models.breaker]`: the circuit breaker each worker keeps per deployment of the group.
/// Every key is optional.
///
/// ```toml
/// [models.breaker]
/// enabled = true                # false: never skip a deployment (default true)
/// consecutive_failures = 5      # trip after this many failures in a row; 0 = off (default 5)
/// error_rate = 0.5              # or when this share of requests failed, 0..=1 (default 0.5)
/// window_ms = 10000             #   over this rolling window, at least 100 ms (default 10 s)
/// min_requests = 20             #   once it holds this many requests, at least 1 (default 20)
/// cooldown_ms = 5000            # stay open this long; doubles on each repeated trip (default 5 s)
/// max_cooldown_ms = 60000       # up to this, at least cooldown_ms (default 60 s)
/// half_open_probes = 1          # then let this many probe requests through, at least 1 (default 1)
/// ```
///
/// A failure is a connect error, a timeout, a 429 or a 5xx; other answers (even 4xx) are
/// successes. A probe that succeeds closes the breaker and resets the cool-down; one that fails
/// opens it again for the next, longer cool-down. A probe that never reports back (cancelled)
/// frees its slot after the current cool-down. When every deployment of a group is open, the
/// request fails at once with 503 and a `Retry-After` of the earliest reopening.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Breaker on or off.
    pub enabled: Option<bool>,
    /// Failures in a row that trip; 0 = off.
    pub consecutive_failures: Option<u32>,
    /// Failure share that trips, 0..=1.
    pub error_rate: Option<f64>,
    /// Rolling window in milliseconds, ≥ 100.
    pub window_ms: Option<u64>,
    /// Requests the window needs before the error rate counts, ≥ 1.
    pub min_requests: Option<u32>,
    /// First cool-down in milliseconds, ≥ 1.
    pub cooldown_ms: Option<u64>,
    /// Longest cool-down in milliseconds, ≥ `cooldown_ms`.
    pub max_cooldown_ms: Option<u64>,
    /// Probes in flight while half-open, ≥ 1.
    pub half_open_probes: Option<u32>,
}

impl RawBreaker {
    /// Checks every value; the error names the field, e.g. "`breaker.error_rate` must be in
    /// 0..=1, got 1.5".
    pub fn validate(self) -> Result<BreakerConfig, String> {
        let d = BreakerConfig::default();
        let error_rate = self.error_rate.unwrap_or(d.error_rate);
        if !(0.0..=1.0).contains(&error_rate) {
            return Err(format!(
                "`breaker.error_rate` must be in 0..=1, got {error_rate}"
            ));
        }
        let min_requests = self.min_requests.unwrap_or(d.min_requests);
        if min_requests == 0 {
            return Err("`breaker.min_requests` must be at least 1, got 0".to_string());
        }
        let half_open_probes = self.half_open_probes.unwrap_or(d.half_open_probes);
        if half_open_probes == 0 {
            return Err("`breaker.half_open_probes` must be at least 1, got 0".to_string());
        }
        let cooldown = ms_setting("breaker.cooldown_ms", self.cooldown_ms, 1, d.cooldown)?;
        let max_cooldown = ms_setting(
            "breaker.max_cooldown_ms",
            self.max_cooldown_ms,
            1,
            d.max_cooldown.max(cooldown),
        )?;
        if max_cooldown < cooldown {
            return Err(format!(
                "`breaker.max_cooldown_ms` must be at least `breaker.cooldown_ms` ({}), got {}",
                cooldown.as_millis(),
                max_cooldown.as_millis()
            ));
        }
        Ok(BreakerConfig {
            enabled: self.enabled.unwrap_or(true),
            consecutive_failures: self.consecutive_failures.unwrap_or(d.consecutive_failures),
            error_rate,
            window: ms_setting("breaker.window_ms", self.window_ms, 100, d.window)?,
            min_requests,
            cooldown,
            max_cooldown,
            half_open_probes,
        })
    }
}

/// What the breaker is doing, as seen at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests pass.
    Closed,
    /// Requests are refused until `until`.
    Open {
        /// When the cool-down ends and probes may go.
        until: Instant,
    },
    /// A limited number of probe requests pass.
    HalfOpen,
}

impl BreakerState {
    /// A name for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// A gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

/// The answer to "may I send a request to this deployment now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send it.
    Allow,
    /// Half-open: send it as a probe; its outcome decides the breaker.
    Probe,
    /// Open (or no probe slot free): do not send; it may be worth asking again after
    /// `retry_after`.
    Reject {
        /// Until the cool-down ends or a probe slot frees, never zero.
        retry_after: Duration,
    },
}

/// Why a closed breaker tripped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TripReason {
    /// This many failures in a row.
    ConsecutiveFailures {
        /// Failures in a row.
        count: u32,
    },
    /// Too many failures in the rolling window.
    ErrorRate {
        /// Failures in the window.
        failures: u32,
        /// Requests in the window.
        requests: u32,
    },
}

/// A change of state, to log and count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transition {
    /// Closed → Open.
    Tripped {
        /// Why.
        reason: TripReason,
        /// Cool-down length.
        cooldown: Duration,
        /// End of the cool-down.
        until: Instant,
    },
    /// Half-open → Open: a probe failed.
    Reopened {
        /// Cool-down length (longer than the last one, up to the maximum).
        cooldown: Duration,
        /// End of the cool-down.
        until: Instant,
    },
    /// Half-open → Closed: a probe succeeded.
    Closed,
}

impl Transition {
    /// The state entered.
    pub fn to_state(&self) -> BreakerState {
        match *self {
            Transition::Tripped { until, .. } | Transition::Reopened { until, .. } => {
                BreakerState::Open { until }
            }
            Transition::Closed => BreakerState::Closed,
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Tripped {
                reason: TripReason::ConsecutiveFailures { count },
                cooldown,
                ..
            } => write!(
                f,
                "breaker opened for {cooldown:?} after {count} consecutive failures"
            ),
            Transition::Tripped {
                reason: TripReason::ErrorRate { failures, requests },
                cooldown,
                ..
            } => write!(
                f,
                "breaker opened for {cooldown:?} after {failures} failures in {requests} requests"
            ),
            Transition::Reopened { cooldown, .. } => {
                write!(f, "breaker reopened for {cooldown:?}: probe failed")
            }
            Transition::Closed => f.write_str("breaker closed: probe succeeded"),
        }
    }
}

const BUCKETS: usize = 10;

/// Request and failure counts over a rolling window of `BUCKETS` buckets.
#[derive(Clone, Debug)]
struct Window {
    width_ns: u128,
    /// The instant bucket ticks are counted from; set by the first record.
    origin: Option<Instant>,
    /// Tick of the newest bucket. Invariant: buckets older than `head - BUCKETS + 1` are zero.
    head: u64,
    /// (requests, failures) per bucket, indexed by tick modulo `BUCKETS`.
    buckets: [(u32, u32); BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        Window {
            width_ns: (window.as_nanos() / BUCKETS as u128).max(1),
            origin: None,
            head: 0,
            buckets: [(0, 0); BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        self.origin.map_or(0, |o| {
            u64::try_from(now.saturating_duration_since(o).as_nanos() / self.width_ns)
                .unwrap_or(u64::MAX)
        })
    }

    fn rotate(&mut self, now: Instant) {
        let t = self.tick(now);
        if t <= self.head {
            return;
        }
        let steps = (t - self.head).min(BUCKETS as u64);
        for k in 1..=steps {
            self.buckets[((self.head + k) % BUCKETS as u64) as usize] = (0, 0);
        }
        self.head = t;
    }

    fn record(&mut self, now: Instant, failed: bool) {
        if self.origin.is_none() {
            self.origin = Some(now);
        }
        self.rotate(now);
        let b = &mut self.buckets[(self.head % BUCKETS as u64) as usize];
        b.0 = b.0.saturating_add(1);
        b.1 = b.1.saturating_add(u32::from(failed));
    }

    fn totals(&self) -> (u32, u32) {
        self.buckets.iter().fold((0u32, 0u32), |(r, f), b| {
            (r.saturating_add(b.0), f.saturating_add(b.1))
        })
    }

    fn clear(&mut self) {
        self.buckets = [(0, 0); BUCKETS];
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `probes` probes are out; all their slots free at `release_at` if they never report.
    HalfOpen {
        probes: u32,
        release_at: Option<Instant>,
    },
}

/// One worker's circuit breaker for one deployment.
///
/// Call order, per attempt:
/// 1. [`would_admit`](Self::would_admit) inside the balancer's `allowed` filter (pure);
/// 2. [`admit`](Self::admit) on the deployment actually picked: `Allow` or `Probe` means send;
/// 3. [`on_success`](Self::on_success) or [`on_failure`](Self::on_failure) once the outcome
///    is known — report at the response head (status known), not at the end of a long stream.
///    A cancelled attempt reports nothing.
///
/// Log and count every [`Transition`] returned; export [`state`](Self::state) and
/// [`trips`](Self::trips) as metrics. Outcomes of requests sent before the breaker opened
/// that arrive while it is open are ignored; once the cool-down has passed, any outcome counts
/// as the probe's.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    phase: Phase,
    /// Failures in a row while closed.
    consecutive: u32,
    window: Window,
    /// Trips since the last successful close.
    streak: u32,
    /// The cool-down of the latest trip (the base one before any trip); also how long a probe
    /// slot stays taken.
    cooldown: Duration,
    trips: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            window: Window::new(config.window),
            cooldown: config.cooldown,
            config,
            phase: Phase::Closed,
            consecutive: 0,
            streak: 0,
            trips: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now`: Open turns HalfOpen once its `until` has passed.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { until } => BreakerState::Open { until },
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has tripped (Closed → Open and HalfOpen → Open), ever.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Probe slots taken at `now`.
    pub fn probes_in_flight(&self, now: Instant) -> u32 {
        match self.phase {
            Phase::HalfOpen { probes, release_at } if release_at.is_none_or(|r| now < r) => probes,
            _ => 0,
        }
    }

    /// What [`admit`](Self::admit) would answer at `now`, without taking a probe slot.
    pub fn check(&self, now: Instant) -> Admission {
        if !self.config.enabled {
            return Admission::Allow;
        }
        match self.phase {
            Phase::Closed => Admission::Allow,
            Phase::Open { until } if now < until => Admission::Reject {
                retry_after: nonzero(until - now),
            },
            Phase::Open { .. } => Admission::Probe,
            Phase::HalfOpen { release_at, .. } => {
                if self.probes_in_flight(now) < self.config.half_open_probes {
                    Admission::Probe
                } else {
                    Admission::Reject {
                        retry_after: nonzero(
                            release_at.map_or(self.cooldown, |r| r.saturating_duration_since(now)),
                        ),
                    }
                }
            }
        }
    }

    /// Whether a request could be sent at `now`: for the balancer's `allowed` filter.
    pub fn would_admit(&self, now: Instant) -> bool {
        !matches!(self.check(now), Admission::Reject { .. })
    }

    /// How long until this deployment may take a request again; `None` if it may now. The
    /// smallest over a group whose deployments are all refused is the 503's `Retry-After`.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self.check(now) {
            Admission::Reject { retry_after } => Some(retry_after),
            Admission::Allow | Admission::Probe => None,
        }
    }

    /// Asks to send one request at `now`; a `Probe` takes a probe slot until its outcome is
    /// reported or the slot is released after the current cool-down.
    pub fn admit(&mut self, now: Instant) -> Admission {
        self.advance(now);
        let answer = self.check(now);
        if answer == Admission::Probe {
            let probes = self.probes_in_flight(now).saturating_add(1);
            self.phase = Phase::HalfOpen {
                probes,
                release_at: now.checked_add(self.cooldown),
            };
        }
        answer
    }

    /// The request sent to this deployment succeeded, as known at `now`.
    pub fn on_success(&mut self, now: Instant) -> Option<Transition> {
        self.advance(now);
        match self.phase {
            Phase::Closed => {
                self.consecutive = 0;
                self.window.record(now, false);
                None
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { .. } => {
                self.phase = Phase::Closed;
                self.consecutive = 0;
                self.window.clear();
                self.streak = 0;
                self.cooldown = self.config.cooldown;
                Some(Transition::Closed)
            }
        }
    }

    /// The request sent to this deployment failed (connect error, timeout, 429, 5xx), as known
    /// at `now`.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        self.advance(now);
        match self.phase {
            Phase::Closed => {
                self.consecutive = self.consecutive.saturating_add(1);
                self.window.record(now, true);
                let (requests, failures) = self.window.totals();
                let reason = if self.config.consecutive_failures > 0
                    && self.consecutive >= self.config.consecutive_failures
                {
                    TripReason::ConsecutiveFailures {
                        count: self.consecutive,
                    }
                } else if requests >= self.config.min_requests.max(1)
                    && f64::from(failures) >= self.config.error_rate * f64::from(requests)
                {
                    TripReason::ErrorRate { failures, requests }
                } else {
                    return None;
                };
                let (cooldown, until) = self.open(now);
                Some(Transition::Tripped {
                    reason,
                    cooldown,
                    until,
                })
            }
            Phase::Open { .. } => None,
            Phase::HalfOpen { .. } => {
                let (cooldown, until) = self.open(now);
                Some(Transition::Reopened { cooldown, until })
            }
        }
    }

    /// Open → HalfOpen once the cool-down has passed.
    fn advance(&mut self, now: Instant) {
        if let Phase::Open { until } = self.phase {
            if now >= until {
                self.phase = Phase::HalfOpen {
                    probes: 0,
                    release_at: None,
                };
            }
        }
    }

    /// Opens for the next cool-down: `cooldown × 2^(trips in a row - 1)`, at most the maximum.
    fn open(&mut self, now: Instant) -> (Duration, Instant) {
        self.streak = self.streak.saturating_add(1);
        self.trips = self.trips.saturating_add(1);
        let factor = 1u32.checked_shl(self.streak - 1).unwrap_or(u32::MAX);
        let cooldown = self
            .config
            .cooldown
            .saturating_mul(factor)
            .min(self.config.max_cooldown);
        self.cooldown = cooldown;
        let until = now.checked_add(cooldown).unwrap_or(now);
        self.phase = Phase::Open { until };
        self.consecutive = 0;
        self.window.clear();
        (cooldown, until)
    }
}

/// A `Retry-After` is never zero: the caller would spin.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::t0;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            window: 10 * S,
            min_requests: 10,
            cooldown: 5 * S,
            max_cooldown: 30 * S,
            half_open_probes: 1,
            enabled: true,
        }
    }

    #[test]
    fn raw_breaker_defaults_and_errors_name_the_field() {
        assert_eq!(
            RawBreaker::default().validate().unwrap(),
            BreakerConfig::default()
        );
        let raw: RawBreaker = toml::from_str(
            "consecutive_failures = 0\nerror_rate = 0.25\nwindow_ms = 30000\nmin_requests = 5\n\
             cooldown_ms = 1000\nmax_cooldown_ms = 8000\nhalf_open_probes = 2\nenabled = false",
        )
        .unwrap();
        let c = raw.validate().unwrap();
        assert_eq!(c.consecutive_failures, 0);
        assert_eq!(c.window, 30 * S);
        assert_eq!(c.max_cooldown, 8 * S);
        assert!(!c.enabled);
        // A long cool-down alone raises the default maximum with it.
        let c = RawBreaker {
            cooldown_ms: Some(120_000),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(c.max_cooldown, 120 * S);
        let cases: [(RawBreaker, &str); 6] = [
            (
                RawBreaker {
                    error_rate: Some(1.5),
                    ..Default::default()
                },
                "`breaker.error_rate` must be in 0..=1",
            ),
            (
                RawBreaker {
                    error_rate: Some(f64::NAN),
                    ..Default::default()
                },
                "`breaker.error_rate`",
            ),
            (
                RawBreaker {
                    window_ms: Some(10),
                    ..Default::default()
                },
                "`breaker.window_ms`",
            ),
            (
                RawBreaker {
                    cooldown_ms: Some(10_000),
                    max_cooldown_ms: Some(5_000),
                    ..Default::default()
                },
                "`breaker.max_cooldown_ms` must be at least `breaker.cooldown_ms`",
            ),
            (
                RawBreaker {
                    half_open_probes: Some(0),
                    ..Default::default()
                },
                "`breaker.half_open_probes`",
            ),
            (
                RawBreaker {
                    min_requests: Some(0),
                    ..Default::default()
                },
                "`breaker.min_requests`",
            ),
        ];
        for (raw, want) in cases {
            let e = raw.validate().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
        assert!(toml::from_str::<RawBreaker>("cooldown = 3").is_err());
    }

    #[test]
    fn trips_on_consecutive_failures_and_rejects_until_cooldown() {
        let t = t0();
        let mut b = Breaker::new(config());
        assert_eq!(b.admit(t), Admission::Allow);
        assert_eq!(b.on_failure(t), None);
        assert_eq!(b.on_failure(t), None);
        b.on_success(t); // resets the run
        assert_eq!(b.on_failure(t), None);
        assert_eq!(b.on_failure(t), None);
        let tr = b.on_failure(t).unwrap();
        assert_eq!(
            tr,
            Transition::Tripped {
                reason: TripReason::ConsecutiveFailures { count: 3 },
                cooldown: 5 * S,
                until: t + 5 * S
            }
        );
        assert_eq!(tr.to_state(), BreakerState::Open { until: t + 5 * S });
        assert!(tr.to_string().contains("3 consecutive failures"));
        assert_eq!(b.trips(), 1);
        assert_eq!(b.state(t + S), BreakerState::Open { until: t + 5 * S });
        assert_eq!(b.admit(t + S), Admission::Reject { retry_after: 4 * S });
        assert!(!b.would_admit(t + S));
        assert_eq!(b.retry_after(t + S), Some(4 * S));
        // Late outcomes of requests sent before the trip change nothing.
        assert_eq!(b.on_success(t + S), None);
        assert_eq!(b.on_failure(t + S), None);
        assert_eq!(b.state(t + 5 * S), BreakerState::HalfOpen);
    }

    #[test]
    fn trips_on_error_rate_once_min_requests_seen() {
        let t = t0();
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..config()
        });
        // 5 failures interleaved with 4 successes: 9 requests, below min_requests.
        for _ in 0..4 {
            assert_eq!(b.on_failure(t), None);
            b.on_success(t);
        }
        assert_eq!(b.on_failure(t), None);
        // The tenth request is a failure: 6/10 ≥ 0.5.
        let tr = b.on_failure(t).unwrap();
        assert!(matches!(
            tr,
            Transition::Tripped {
                reason: TripReason::ErrorRate {
                    failures: 6,
                    requests: 10
                },
                ..
            }
        ));
    }

    #[test]
    fn window_forgets_old_buckets() {
        let t = t0();
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            ..config()
        });
        // 4 failures in 9 requests: below min_requests.
        for _ in 0..4 {
            assert_eq!(b.on_failure(t), None);
        }
        for _ in 0..5 {
            b.on_success(t);
        }
        // Had the window (10 s) kept them, a tenth request failing would trip (5/10); eleven
        // seconds later it holds only the new one.
        assert_eq!(b.on_failure(t + 11 * S), None);
        for _ in 0..8 {
            b.on_success(t + 12 * S);
        }
        // 10 requests, 2 failures.
        assert_eq!(b.on_failure(t + 12 * S), None);
        // Buckets age one by one: at t + 21.5 s the bucket of t + 11 s has left the window but
        // the one of t + 12 s has not: 9 requests, 1 failure; 7 more failures make 8/16.
        for _ in 0..6 {
            assert_eq!(b.on_failure(t + 21 * S + 500 * MS), None);
        }
        assert!(matches!(
            b.on_failure(t + 21 * S + 500 * MS),
            Some(Transition::Tripped {
                reason: TripReason::ErrorRate {
                    failures: 8,
                    requests: 16
                },
                ..
            })
        ));
    }

    #[test]
    fn half_open_probes_then_close_or_reopen_with_doubling_cooldown() {
        let t = t0();
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            b.on_failure(t);
        }
        let mut now = t + 5 * S;
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        assert!(b.would_admit(now));
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.probes_in_flight(now), 1);
        assert_eq!(b.admit(now), Admission::Reject { retry_after: 5 * S });
        // Probe fails: open again for 10 s, then 20 s, then 30 s (the maximum).
        for (k, cd) in [10, 20, 30, 30].into_iter().enumerate() {
            let tr = b.on_failure(now).unwrap();
            assert_eq!(
                tr,
                Transition::Reopened {
                    cooldown: cd * S,
                    until: now + cd * S
                }
            );
            assert_eq!(b.trips(), 2 + k as u64);
            now += cd * S;
            assert_eq!(b.admit(now), Admission::Probe);
        }
        // Probe succeeds: closed, cool-down back to the base.
        assert_eq!(b.on_success(now), Some(Transition::Closed));
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(b.admit(now), Admission::Allow);
        for _ in 0..2 {
            assert_eq!(b.on_failure(now), None);
        }
        assert!(matches!(
            b.on_failure(now),
            Some(Transition::Tripped { cooldown, .. }) if cooldown == 5 * S
        ));
    }

    #[test]
    fn lost_probe_is_released_after_the_cooldown() {
        let t = t0();
        let mut b = Breaker::new(BreakerConfig {
            half_open_probes: 2,
            ..config()
        });
        for _ in 0..3 {
            b.on_failure(t);
        }
        let now = t + 5 * S;
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.admit(now + MS), Admission::Probe);
        assert_eq!(
            b.admit(now + 2 * MS),
            Admission::Reject {
                retry_after: 5 * S - MS
            }
        );
        // Neither probe reports (cancelled): the slots free after one cool-down.
        assert_eq!(b.probes_in_flight(now + 5 * S + MS), 0);
        assert_eq!(b.admit(now + 5 * S + MS), Admission::Probe);
        assert_eq!(b.probes_in_flight(now + 5 * S + MS), 1);
    }

    #[test]
    fn disabled_breaker_always_allows() {
        let t = t0();
        let mut b = Breaker::new(BreakerConfig {
            enabled: false,
            ..config()
        });
        for _ in 0..100 {
            assert_eq!(b.on_failure(t), None);
        }
        assert_eq!(b.admit(t), Admission::Allow);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit,
        Success,
        Failure,
    }

    fn op() -> impl Strategy<Value = (Op, u64)> {
        (
            prop_oneof![Just(Op::Admit), Just(Op::Success), Just(Op::Failure)],
            prop_oneof![Just(0u64), 0u64..100, 0u64..20_000],
        )
    }

    proptest! {
        #[test]
        fn any_sequence_keeps_the_state_machine_valid(
            ops in prop::collection::vec(op(), 1..300),
            probes in 1u32..4,
            consecutive in 0u32..6,
            min_requests in 1u32..10,
        ) {
            let cfg = BreakerConfig {
                consecutive_failures: consecutive,
                min_requests,
                half_open_probes: probes,
                cooldown: Duration::from_millis(500),
                max_cooldown: Duration::from_millis(4_000),
                window: Duration::from_secs(2),
                ..config()
            };
            let mut b = Breaker::new(cfg.clone());
            let mut now = t0();
            let mut trips = 0;
            for (op, advance_ms) in ops {
                now += Duration::from_millis(advance_ms);
                let before = b.state(now);
                let transition = match op {
                    Op::Admit => {
                        let a = b.admit(now);
                        match a {
                            Admission::Allow => prop_assert_eq!(before, BreakerState::Closed),
                            Admission::Probe => prop_assert_eq!(before, BreakerState::HalfOpen),
                            Admission::Reject { retry_after } => {
                                prop_assert!(before != BreakerState::Closed);
                                prop_assert!(retry_after > Duration::ZERO);
                                prop_assert!(retry_after <= cfg.max_cooldown);
                            }
                        }
                        // Never open with `until` in the past after admit.
                        if let BreakerState::Open { until } = b.state(now) {
                            prop_assert!(until > now);
                        }
                        None
                    }
                    Op::Success => b.on_success(now),
                    Op::Failure => b.on_failure(now),
                };
                let after = b.state(now);
                prop_assert!(b.probes_in_flight(now) <= probes);
                // Closes only via a success while half-open.
                if after == BreakerState::Closed && before != BreakerState::Closed {
                    prop_assert!(matches!(op, Op::Success));
                    prop_assert_eq!(before, BreakerState::HalfOpen);
                }
                // Transitions say exactly what happened.
                match transition {
                    Some(t) => {
                        prop_assert_eq!(t.to_state(), after);
                        if let Transition::Tripped { cooldown, until, .. }
                        | Transition::Reopened { cooldown, until } = t
                        {
                            trips += 1;
                            prop_assert!(cooldown >= cfg.cooldown && cooldown <= cfg.max_cooldown);
                            prop_assert_eq!(until, now + cooldown);
                        }
                        if matches!(t, Transition::Tripped { .. }) {
                            prop_assert_eq!(before, BreakerState::Closed);
                        }
                        if matches!(t, Transition::Reopened { .. } | Transition::Closed) {
                            prop_assert_eq!(before, BreakerState::HalfOpen);
                        }
                    }
                    // No transition, no change of state.
                    None => prop_assert_eq!(before.as_str(), after.as_str()),
                }
                prop_assert_eq!(b.trips(), trips);
            }
        }
    }
}
