//! Circuit breakers: one per deployment, shared by every worker (lock-free atomics), so a
//! failing upstream is skipped quickly and trips once for the process.
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
//!
//! Blast-radius guard: a failure is reported with its [`Blame`]. Failing to reach the
//! deployment at all is the provider's whoever asked, and a trip on it is *hard* (known down).
//! An error answer or a timeout may be the request's own fault (a prompt the provider chokes
//! on): with a caller identity it counts toward a trip only while `min_distinct_callers`
//! distinct callers are failing, and a caller whose own requests keep failing (with no
//! success in the window) is short-circuited alone ([`Breaker::isolated`]).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::balance::ms_setting;

mod counters;

use counters::{Callers, Window};

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
    /// When fewer than this share (percent) of the group's deployments admit requests, the
    /// group balances over all of them again, open breakers or not (panic mode); 0 = never.
    pub panic_percent: u32,
    /// With caller identities (keys), failures trip only once this many distinct callers are
    /// failing; 1 = any caller alone may trip it.
    pub min_distinct_callers: u32,
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
            panic_percent: 50,
            min_distinct_callers: 2,
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
/// half_open_probes = 1          # then let this many probe requests through, 1..=31 (default 1)
/// panic_percent = 50            # below this share of admitting deployments, ignore the
///                               #   breakers and balance over all of them, 0..=100 (default 50)
/// min_distinct_callers = 2      # with keys: distinct failing callers needed to trip, ≥ 1 (default 2)
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
    /// Probes in flight while half-open, 1..=31.
    pub half_open_probes: Option<u32>,
    /// Panic threshold in percent of admitting deployments, 0..=100.
    pub panic_percent: Option<u32>,
    /// Distinct failing callers needed to trip, ≥ 1.
    pub min_distinct_callers: Option<u32>,
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
        if !(1..=MAX_PROBES).contains(&half_open_probes) {
            return Err(format!(
                "`breaker.half_open_probes` must be in 1..={MAX_PROBES}, got {half_open_probes}"
            ));
        }
        let panic_percent = self.panic_percent.unwrap_or(d.panic_percent);
        if panic_percent > 100 {
            return Err(format!(
                "`breaker.panic_percent` must be in 0..=100, got {panic_percent}"
            ));
        }
        let min_distinct_callers = self.min_distinct_callers.unwrap_or(d.min_distinct_callers);
        if min_distinct_callers == 0 {
            return Err("`breaker.min_distinct_callers` must be at least 1, got 0".to_string());
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
            panic_percent,
            min_distinct_callers,
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
    /// This many failures in a row to reach the deployment: it is known down.
    Unreachable {
        /// Failures in a row.
        count: u32,
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
            Transition::Tripped {
                reason: TripReason::Unreachable { count },
                cooldown,
                ..
            } => write!(
                f,
                "breaker opened for {cooldown:?} after {count} failures to reach the deployment"
            ),
            Transition::Reopened { cooldown, .. } => {
                write!(f, "breaker reopened for {cooldown:?}: probe failed")
            }
            Transition::Closed => f.write_str("breaker closed: probe succeeded"),
        }
    }
}

/// Microseconds from `base` to `now` (0 before it).
fn micros(base: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(base).as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The phase as one word, so every change is a single compare-and-swap:
/// `kind (2 bits) | hard (1) | probes (5) | time (56, µs since the breaker's base)`.
/// Open: `time` is the end of the cool-down; half-open: when the probe slots free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word(u64);

const KIND_CLOSED: u64 = 0;
const KIND_OPEN: u64 = 1;
const KIND_HALF_OPEN: u64 = 2;
const TIME_BITS: u32 = 56;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const MAX_PROBES: u32 = 31;

impl Word {
    const CLOSED: Word = Word(0);

    fn new(kind: u64, hard: bool, probes: u32, time_us: u64) -> Word {
        Word(
            kind << 62
                | u64::from(hard) << 61
                | u64::from(probes.min(MAX_PROBES)) << TIME_BITS
                | time_us.min(TIME_MASK),
        )
    }
    fn kind(self) -> u64 {
        self.0 >> 62
    }
    fn hard(self) -> bool {
        self.0 >> 61 & 1 == 1
    }
    fn probes(self) -> u32 {
        (self.0 >> TIME_BITS & 0x1f) as u32
    }
    fn time_us(self) -> u64 {
        self.0 & TIME_MASK
    }
}

/// A caller identity for the breakers from a key id: a stable 64-bit hash (FNV-1a, then a
/// SplitMix64 finalizer so the high bits the caller slots use are well mixed).
pub fn caller_id(key_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// How a failure is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The deployment could not be reached at all (connect, DNS, TLS, a failed health check):
    /// the provider's, whoever asked. A trip on it is *hard*: the deployment is known down
    /// and the panic threshold does not send to it.
    Unreachable,
    /// An error answer or a timeout, for the request of this caller (`None`: unknown). It may
    /// be the request's own fault, so with a caller it counts toward a trip only once
    /// `min_distinct_callers` callers are failing.
    Answer(Option<u64>),
}

/// One deployment's circuit breaker, shared by every worker: all its state is atomics, every
/// change of phase a compare-and-swap, so concurrent reports trip it once.
///
/// Call order, per attempt:
/// 1. [`would_admit`](Self::would_admit) inside the balancer's `allowed` filter (pure);
/// 2. [`admit`](Self::admit) on the deployment actually picked: `Allow` or `Probe` means send;
/// 3. [`on_success`](Self::on_success) or [`on_failure`](Self::on_failure) once the outcome
///    is known. A cancelled attempt reports nothing.
///
/// Log and count every [`Transition`] returned (only the caller whose report made the change
/// gets it); export [`state`](Self::state) and [`trips`](Self::trips) as metrics. Outcomes of
/// requests sent before the breaker opened that arrive while it is open are ignored; once the
/// cool-down has passed, any outcome counts as the probe's.
///
/// Time is microseconds since `base`, an instant fixed when the breaker is made; every worker
/// passes its own `now`. Concurrency note: the counters (failures in a row, the window, the
/// caller slots) are updated apart from the phase word, so a report racing a trip may be
/// counted toward the next closed period; the phase itself never takes two transitions from
/// one state.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    base: Instant,
    phase: AtomicU64,
    /// Failures in a row while closed.
    consecutive: AtomicU32,
    window: Window,
    callers: Callers,
    /// Trips since the last successful close.
    streak: AtomicU32,
    /// The cool-down of the latest trip in µs (the base one before any trip); also how long a
    /// probe slot stays taken.
    cooldown_us: AtomicU64,
    trips: AtomicU64,
}

impl Breaker {
    /// A closed breaker whose clock starts at `base` (any instant not after the first `now`).
    pub fn new(config: BreakerConfig, base: Instant) -> Self {
        Breaker {
            window: Window::new(config.window),
            cooldown_us: AtomicU64::new(duration_us(config.cooldown)),
            config,
            base,
            phase: AtomicU64::new(Word::CLOSED.0),
            consecutive: AtomicU32::new(0),
            callers: Callers::default(),
            streak: AtomicU32::new(0),
            trips: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn word(&self) -> Word {
        Word(self.phase.load(Ordering::Acquire))
    }

    fn at(&self, us: u64) -> Instant {
        self.base
            .checked_add(Duration::from_micros(us))
            .unwrap_or(self.base)
    }

    fn now_ms(&self, now: Instant) -> u32 {
        (micros(self.base, now) / 1000) as u32
    }

    /// The state at `now`: Open turns HalfOpen once its `until` has passed.
    pub fn state(&self, now: Instant) -> BreakerState {
        let w = self.word();
        match w.kind() {
            KIND_OPEN if micros(self.base, now) < w.time_us() => BreakerState::Open {
                until: self.at(w.time_us()),
            },
            KIND_OPEN | KIND_HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Whether the deployment is known down at `now`: open (or half-open with every probe
    /// slot taken) after a failure to reach it. The panic threshold never sends to it.
    pub fn is_down(&self, now: Instant) -> bool {
        self.config.enabled && self.word().hard() && !self.would_admit(now)
    }

    /// How many times the breaker has tripped (Closed → Open and HalfOpen → Open), ever.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Probe slots taken at `now`.
    pub fn probes_in_flight(&self, now: Instant) -> u32 {
        let w = self.word();
        match w.kind() {
            KIND_HALF_OPEN if micros(self.base, now) < w.time_us() => w.probes(),
            _ => 0,
        }
    }

    /// What [`admit`](Self::admit) would answer at `now`, without taking a probe slot.
    pub fn check(&self, now: Instant) -> Admission {
        let w = self.word();
        // Closed (nearly always): no time to read.
        if !self.config.enabled || w.kind() == KIND_CLOSED {
            return Admission::Allow;
        }
        self.check_word(w, micros(self.base, now))
    }

    fn check_word(&self, w: Word, now_us: u64) -> Admission {
        match w.kind() {
            KIND_OPEN if now_us < w.time_us() => Admission::Reject {
                retry_after: nonzero(Duration::from_micros(w.time_us() - now_us)),
            },
            KIND_OPEN => Admission::Probe,
            KIND_HALF_OPEN => {
                let live = if now_us < w.time_us() { w.probes() } else { 0 };
                if live < self.config.half_open_probes.min(MAX_PROBES) {
                    Admission::Probe
                } else {
                    Admission::Reject {
                        retry_after: nonzero(Duration::from_micros(w.time_us() - now_us)),
                    }
                }
            }
            _ => Admission::Allow,
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

    /// How long `caller`'s own requests to this deployment stay short-circuited: its last
    /// `consecutive_failures` requests failed, the last less than a cool-down ago, and none
    /// succeeded within the window. `None`: send.
    pub fn isolated(&self, now: Instant, caller: Option<u64>) -> Option<Duration> {
        let caller = caller.filter(|_| self.config.enabled)?;
        self.callers.isolated(
            caller,
            || self.now_ms(now),
            self.config.consecutive_failures,
            ms_u32(self.config.cooldown),
            ms_u32(self.config.window),
        )
    }

    /// Asks to send one request at `now`; a `Probe` takes a probe slot until its outcome is
    /// reported or the slot is released after the current cool-down.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut w = self.word();
        // Closed (nearly always): no time to read.
        if !self.config.enabled || w.kind() == KIND_CLOSED {
            return Admission::Allow;
        }
        let now_us = micros(self.base, now);
        loop {
            let answer = self.check_word(w, now_us);
            if answer != Admission::Probe {
                return answer;
            }
            let live = match w.kind() {
                KIND_HALF_OPEN if now_us < w.time_us() => w.probes(),
                _ => 0,
            };
            let release = now_us.saturating_add(self.cooldown_us.load(Ordering::Relaxed));
            let next = Word::new(KIND_HALF_OPEN, w.hard(), live + 1, release);
            match self
                .phase
                .compare_exchange(w.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Admission::Probe,
                Err(seen) => w = Word(seen),
            }
        }
    }

    /// The request of `caller` sent to this deployment succeeded, as known at `now`.
    pub fn on_success(&self, now: Instant, caller: Option<u64>) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        if let Some(c) = caller {
            self.callers
                .success(c, self.now_ms(now), ms_u32(self.config.window));
        }
        let now_us = micros(self.base, now);
        let mut w = self.word();
        loop {
            match w.kind() {
                KIND_CLOSED => {
                    self.consecutive.store(0, Ordering::Relaxed);
                    self.window.record(now_us, false);
                    return None;
                }
                KIND_OPEN if now_us < w.time_us() => return None,
                _ => {}
            }
            match self.phase.compare_exchange(
                w.0,
                Word::CLOSED.0,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.consecutive.store(0, Ordering::Relaxed);
                    self.window.clear();
                    self.streak.store(0, Ordering::Relaxed);
                    self.cooldown_us
                        .store(duration_us(self.config.cooldown), Ordering::Relaxed);
                    return Some(Transition::Closed);
                }
                Err(seen) => w = Word(seen),
            }
        }
    }

    /// The request sent to this deployment failed (connect error, timeout, 429, 5xx), as known
    /// at `now`, blamed as `blame`.
    pub fn on_failure(&self, now: Instant, blame: Blame) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        let now_ms = self.now_ms(now);
        let caller = match blame {
            Blame::Answer(c) => c,
            Blame::Unreachable => None,
        };
        if let Some(c) = caller {
            self.callers.failure(c, now_ms);
        }
        let hard = blame == Blame::Unreachable;
        let now_us = micros(self.base, now);
        let w = self.word();
        match w.kind() {
            KIND_CLOSED => {
                let count = self
                    .consecutive
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                self.window.record(now_us, true);
                let (requests, failures) = self.window.totals(now_us);
                let reason = if hard
                    && self.config.consecutive_failures > 0
                    && count >= self.config.consecutive_failures
                {
                    TripReason::Unreachable { count }
                } else if self.config.consecutive_failures > 0
                    && count >= self.config.consecutive_failures
                {
                    TripReason::ConsecutiveFailures { count }
                } else if requests >= self.config.min_requests.max(1)
                    && f64::from(failures) >= self.config.error_rate * f64::from(requests)
                {
                    TripReason::ErrorRate { failures, requests }
                } else {
                    return None;
                };
                // The blast-radius guard: one caller's failures do not trip it for everyone.
                if caller.is_some()
                    && self.callers.failing(now_ms, ms_u32(self.config.window))
                        < self.config.min_distinct_callers
                {
                    return None;
                }
                let (cooldown, until) = self.open(w, now_us, hard)?;
                Some(Transition::Tripped {
                    reason,
                    cooldown,
                    until,
                })
            }
            KIND_OPEN if now_us < w.time_us() => {
                if hard && !w.hard() {
                    // Known down now: keep the cool-down, stop panic traffic to it.
                    let next = Word::new(KIND_OPEN, true, 0, w.time_us());
                    let _ = self.phase.compare_exchange(
                        w.0,
                        next.0,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                None
            }
            _ => {
                let (cooldown, until) = self.open(w, now_us, hard)?;
                Some(Transition::Reopened { cooldown, until })
            }
        }
    }

    /// Opens (from the phase `from`) for the next cool-down: `cooldown × 2^(trips in a row -
    /// 1)`, at most the maximum. `None` when another report changed the phase first.
    fn open(&self, from: Word, now_us: u64, hard: bool) -> Option<(Duration, Instant)> {
        let streak = self.streak.load(Ordering::Relaxed).saturating_add(1);
        let factor = 1u32.checked_shl(streak - 1).unwrap_or(u32::MAX);
        let cooldown = self
            .config
            .cooldown
            .saturating_mul(factor)
            .min(self.config.max_cooldown);
        let until_us = now_us.saturating_add(duration_us(cooldown));
        let next = Word::new(KIND_OPEN, hard, 0, until_us);
        self.phase
            .compare_exchange(from.0, next.0, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        self.streak.store(streak, Ordering::Relaxed);
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.cooldown_us
            .store(duration_us(cooldown), Ordering::Relaxed);
        self.consecutive.store(0, Ordering::Relaxed);
        self.window.clear();
        Some((cooldown, self.at(until_us)))
    }
}

fn ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A `Retry-After` is never zero: the caller would spin.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests;
