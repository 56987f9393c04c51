//! What to do after an attempt failed: retry (after how long), move on to the fallback
//! groups, or give up.
//!
//! One overall deadline covers every attempt of a request; the caller passes what is left of
//! it, so a decision never waits past it. Randomness (the jitter) comes in as `roll`.
//!
//! A [`RetryBudget`] per model group, shared by every worker, keeps retries and hedges under a
//! share of the group's recent requests, so an outage does not multiply the load on a provider
//! by `max_attempts`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::balance::ms_setting;

/// Retry settings of a model group, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts within the group, counting the first.
    pub max_attempts: u32,
    /// Backoff cap of the first retry; it doubles for each further one.
    pub base_backoff: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
    /// Upstream statuses worth another attempt.
    pub retry_on: Vec<u16>,
    /// Retry when the upstream could not be reached.
    pub retry_on_connect_error: bool,
    /// Retry when the upstream did not answer in time (before its first byte reached the
    /// client).
    pub retry_on_timeout: bool,
    /// The whole request's deadline, covering every attempt and fallback; `None` leaves it to
    /// the provider's `total_timeout_ms`.
    pub deadline: Option<Duration>,
    /// Retries and hedges of the group stay under this share (percent) of its requests over
    /// the last [`BUDGET_WINDOW`]…
    pub budget_percent: u32,
    /// …or this many per second of the window, whichever allows more.
    pub budget_min_per_s: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            retry_on: vec![429, 500, 502, 503, 504],
            retry_on_connect_error: true,
            retry_on_timeout: true,
            deadline: None,
            budget_percent: 20,
            budget_min_per_s: 10,
        }
    }
}

/// `[models.retry]`: how a model group retries failed attempts. Every key is optional.
///
/// ```toml
/// [models.retry]
/// max_attempts = 3                    # attempts in this group, counting the first, 1..=10 (default 3)
/// base_backoff_ms = 100               # backoff cap of the first retry (default 100 ms)
/// max_backoff_ms = 2000               # the cap doubles per retry up to this (default 2 s)
/// retry_on = [429, 500, 502, 503, 504] # statuses worth a retry, 400..=599 (this is the default)
/// retry_on_connect_error = true       # (default true)
/// retry_on_timeout = true             # (default true)
/// deadline_ms = 120000                # one deadline for all attempts and fallbacks
///                                     # (default: the provider's total_timeout_ms)
/// budget_percent = 20                 # retries + hedges ≤ this % of the group's requests
///                                     #   over the last 10 s, 0..=1000 (default 20)
/// budget_min_per_s = 10               # …or this many per second, whichever allows more (default 10)
/// ```
///
/// Each wait is random in `[0, min(max_backoff, base_backoff × 2^(retry-1))]` ("full jitter"),
/// never more than half the time left. A `Retry-After` from the provider is honoured when it
/// fits in the time left; when it does not, the next deployment is tried at once, or the
/// fallback groups when there is none. Other 4xx statuses are never retried. Each retry goes to
/// a deployment not yet tried when there is one. When the group is exhausted, the groups in
/// `fallbacks = [..]` are tried in order; a context-window error goes straight to
/// `context_window_fallback` if set.
///
/// Retries and hedges spend the group's retry budget (shared by the workers): when it is spent,
/// a failed attempt is not retried in the group (the fallbacks are still tried) and no hedge
/// goes out; `sluice_retry_budget_exhausted_total` counts each refusal.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in the group, 1..=10.
    pub max_attempts: Option<u32>,
    /// First backoff cap in milliseconds.
    pub base_backoff_ms: Option<u64>,
    /// Largest backoff cap in milliseconds, ≥ `base_backoff_ms`.
    pub max_backoff_ms: Option<u64>,
    /// Retryable statuses.
    pub retry_on: Option<Vec<u16>>,
    /// Retry connect errors.
    pub retry_on_connect_error: Option<bool>,
    /// Retry timeouts.
    pub retry_on_timeout: Option<bool>,
    /// Overall deadline in milliseconds, ≥ 1.
    pub deadline_ms: Option<u64>,
    /// Retry budget: percent of recent requests, 0..=1000.
    pub budget_percent: Option<u32>,
    /// Retry budget floor: retries per second.
    pub budget_min_per_s: Option<u32>,
}

impl RawRetry {
    /// Checks every value; the error names the field, e.g. "`retry.max_attempts` must be in
    /// 1..=10, got 0".
    pub fn validate(self) -> Result<RetryPolicy, String> {
        let d = RetryPolicy::default();
        let max_attempts = self.max_attempts.unwrap_or(d.max_attempts);
        if !(1..=10).contains(&max_attempts) {
            return Err(format!(
                "`retry.max_attempts` must be in 1..=10, got {max_attempts}"
            ));
        }
        let base_backoff = ms_setting(
            "retry.base_backoff_ms",
            self.base_backoff_ms,
            0,
            d.base_backoff,
        )?;
        let max_backoff = ms_setting(
            "retry.max_backoff_ms",
            self.max_backoff_ms,
            0,
            d.max_backoff.max(base_backoff),
        )?;
        if max_backoff < base_backoff {
            return Err(format!(
                "`retry.max_backoff_ms` must be at least `retry.base_backoff_ms` ({}), got {}",
                base_backoff.as_millis(),
                max_backoff.as_millis()
            ));
        }
        let retry_on = self.retry_on.unwrap_or(d.retry_on);
        if let Some(bad) = retry_on.iter().find(|c| !(400..=599).contains(*c)) {
            return Err(format!(
                "`retry.retry_on` holds {bad}: only statuses 400..=599 can be retried"
            ));
        }
        let budget_percent = self.budget_percent.unwrap_or(d.budget_percent);
        if budget_percent > 1000 {
            return Err(format!(
                "`retry.budget_percent` must be in 0..=1000, got {budget_percent}"
            ));
        }
        let budget_min_per_s = self.budget_min_per_s.unwrap_or(d.budget_min_per_s);
        if budget_min_per_s > 100_000 {
            return Err(format!(
                "`retry.budget_min_per_s` must be at most 100000, got {budget_min_per_s}"
            ));
        }
        Ok(RetryPolicy {
            budget_percent,
            budget_min_per_s,
            max_attempts,
            base_backoff,
            max_backoff,
            retry_on,
            retry_on_connect_error: self.retry_on_connect_error.unwrap_or(true),
            retry_on_timeout: self.retry_on_timeout.unwrap_or(true),
            deadline: match self.deadline_ms {
                None => None,
                v => Some(ms_setting("retry.deadline_ms", v, 1, Duration::ZERO)?),
            },
        })
    }
}

/// How an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The upstream could not be reached (DNS, TCP, TLS).
    Connect,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream answered with an error status.
    Status {
        /// The status.
        code: u16,
        /// Its `Retry-After` (or `retry-after-ms`), parsed.
        retry_after: Option<Duration>,
    },
    /// The prompt does not fit the model ([`is_context_window_error`]).
    ContextWindow,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Wait `after`, then try the group again, on a deployment not yet tried if there is one.
    Retry {
        /// How long to wait; always less than the time left.
        after: Duration,
    },
    /// This group is done: try the next fallback group (the context-window fallback for
    /// [`Failure::ContextWindow`]); answer the failure when there is none left.
    Fallback,
    /// Answer the failure now: retrying cannot help.
    GiveUp,
}

impl RetryPolicy {
    /// Whether this failure is worth another attempt at all.
    pub fn is_retryable(&self, failure: &Failure) -> bool {
        match *failure {
            Failure::Connect => self.retry_on_connect_error,
            Failure::Timeout => self.retry_on_timeout,
            Failure::Status { code, .. } => self.retry_on.contains(&code),
            Failure::ContextWindow => false,
        }
    }

    /// Decides after attempt number `attempt` (1-based, within the current group) failed with
    /// `failure`, with `remaining` time until the request's deadline. `other_candidates` says
    /// whether the group still has a usable deployment this request has not tried. `roll` is a
    /// uniformly random number for the jitter.
    pub fn decide(
        &self,
        attempt: u32,
        failure: &Failure,
        remaining: Duration,
        other_candidates: bool,
        roll: u64,
    ) -> Decision {
        if *failure == Failure::ContextWindow {
            return Decision::Fallback;
        }
        if !self.is_retryable(failure) || remaining.is_zero() {
            return Decision::GiveUp;
        }
        if attempt >= self.max_attempts {
            return Decision::Fallback;
        }
        let jitter = self.backoff(attempt, remaining, roll);
        match *failure {
            Failure::Status {
                retry_after: Some(wait),
                ..
            } => {
                if wait < remaining {
                    Decision::Retry {
                        after: wait.max(jitter),
                    }
                } else if other_candidates {
                    Decision::Retry {
                        after: Duration::ZERO,
                    }
                } else {
                    Decision::Fallback
                }
            }
            _ => Decision::Retry { after: jitter },
        }
    }

    /// Full jitter: uniform in `[0, min(max_backoff, base_backoff × 2^(attempt-1), remaining / 2)]`.
    pub fn backoff(&self, attempt: u32, remaining: Duration, roll: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(64);
        let cap = self
            .base_backoff
            .as_nanos()
            .saturating_mul(1u128 << shift)
            .min(self.max_backoff.as_nanos())
            .min(remaining.as_nanos() / 2);
        let nanos = u128::from(roll) % (cap + 1);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The span of requests a [`RetryBudget`] looks back over.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
const BUDGET_BUCKETS: u64 = 10;
const BUDGET_COUNT_MASK: u64 = (1 << 20) - 1;

/// A model group's retry budget (Finagle's and Envoy's idea), shared by every worker: a retry
/// or hedge may go when the retries of the last [`BUDGET_WINDOW`] stay within
/// `max(budget_percent × requests, budget_min_per_s × 10 s)`.
///
/// Lock-free: ten one-second buckets, each one word `tick (24 bits) | requests (20) |
/// retries (20)` updated by compare-and-swap; time is seconds since `base`, passed in.
/// Concurrency note: the check and the spend are two steps, so racing workers may overspend
/// by one retry each.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    floor: u64,
    base: Instant,
    buckets: [AtomicU64; BUDGET_BUCKETS as usize],
}

impl RetryBudget {
    /// An empty budget for `policy`, counting time from `base`.
    pub fn new(policy: &RetryPolicy, base: Instant) -> Self {
        RetryBudget {
            percent: u64::from(policy.budget_percent),
            floor: u64::from(policy.budget_min_per_s) * BUDGET_WINDOW.as_secs(),
            base,
            buckets: Default::default(),
        }
    }

    /// Whether this budget was made for `policy`'s settings.
    pub fn fits(&self, policy: &RetryPolicy) -> bool {
        self.percent == u64::from(policy.budget_percent)
            && self.floor == u64::from(policy.budget_min_per_s) * BUDGET_WINDOW.as_secs()
    }

    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_secs() & 0xff_ffff
    }

    fn add(&self, now: Instant, requests: u64, retries: u64) {
        let tick = self.tick(now);
        let b = &self.buckets[(tick % BUDGET_BUCKETS) as usize];
        let _ = b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            let (r, t) = if w >> 40 == tick {
                (w >> 20 & BUDGET_COUNT_MASK, w & BUDGET_COUNT_MASK)
            } else {
                (0, 0)
            };
            let r = (r + requests).min(BUDGET_COUNT_MASK);
            let t = (t + retries).min(BUDGET_COUNT_MASK);
            Some(tick << 40 | r << 20 | t)
        });
    }

    /// (requests, retries) over the window.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let tick = self.tick(now);
        self.buckets.iter().fold((0, 0), |(r, t), b| {
            let w = b.load(Ordering::Acquire);
            if (tick.wrapping_sub(w >> 40) & 0xff_ffff) < BUDGET_BUCKETS {
                (
                    r + (w >> 20 & BUDGET_COUNT_MASK),
                    t + (w & BUDGET_COUNT_MASK),
                )
            } else {
                (r, t)
            }
        })
    }

    /// A request entered the group (its first attempt there).
    pub fn on_request(&self, now: Instant) {
        self.add(now, 1, 0);
    }

    /// Spends one retry (or hedge) if the budget allows it at `now`.
    pub fn try_spend(&self, now: Instant) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed = (requests * self.percent / 100).max(self.floor);
        if retries >= allowed {
            return false;
        }
        self.add(now, 0, 1);
        true
    }
}

/// How long an answer asks to be waited for before a retry: OpenAI's `retry-after-ms` when
/// it is there, else `Retry-After` in delta-seconds.
pub fn retry_after(head: &crate::http1::ResponseHead) -> Option<Duration> {
    head.header("retry-after-ms")
        .and_then(parse_retry_after_ms)
        .or_else(|| head.header("retry-after").and_then(parse_retry_after))
}

/// Parses a `Retry-After` value in delta-seconds (`"30"`, leniently `"1.5"`). The HTTP-date
/// form gives `None`: without a clock we cannot subtract it.
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    parse_decimal(value, 86_400.0).map(Duration::from_secs_f64)
}

/// Parses OpenAI's `retry-after-ms` header (milliseconds, possibly fractional).
pub fn parse_retry_after_ms(value: &[u8]) -> Option<Duration> {
    parse_decimal(value, 86_400_000.0).map(|ms| Duration::from_secs_f64(ms / 1000.0))
}

/// A non-negative decimal number, clamped to `max` (a day: bigger values are nonsense we clamp
/// rather than trust).
fn parse_decimal(value: &[u8], max: f64) -> Option<f64> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let n: f64 = s.parse().ok()?;
    Some(n.clamp(0.0, max))
}

/// Whole seconds for a `Retry-After` header we send: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// Only the start of an error body is scanned.
const SCAN_LIMIT: usize = 16 * 1024;

/// Whether an upstream error answer says the prompt does not fit the model's context window:
/// OpenAI's `context_length_exceeded` code, Anthropic's "prompt is too long", and the generic
/// "maximum context length" (vLLM, OpenAI-compatible servers), case-insensitively.
pub fn is_context_window_error(status: u16, body: &[u8]) -> bool {
    const NEEDLES: [&[u8]; 5] = [
        b"context_length_exceeded",
        b"context_window_exceeded",
        b"prompt is too long",
        b"maximum context length",
        b"exceeds the context window",
    ];
    if !matches!(status, 400 | 413 | 422) {
        return false;
    }
    let body = &body[..body.len().min(SCAN_LIMIT)];
    NEEDLES
        .iter()
        .any(|n| body.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_answers_wait_prefers_retry_after_ms() {
        let wait = |head: &[u8]| {
            let (head, _) = crate::http1::parse_response_head(head, 8192, false)
                .unwrap()
                .unwrap();
            retry_after(&head)
        };
        assert_eq!(
            wait(b"HTTP/1.1 429 x\r\nretry-after: 3\r\nretry-after-ms: 250\r\n\r\n"),
            Some(250 * MS)
        );
        assert_eq!(
            wait(b"HTTP/1.1 503 x\r\nRetry-After: 3\r\n\r\n"),
            Some(3 * S)
        );
        assert_eq!(wait(b"HTTP/1.1 429 x\r\ncontent-length: 0\r\n\r\n"), None);
    }

    fn status(code: u16) -> Failure {
        Failure::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn budget_keeps_retries_under_the_share_and_refills() {
        let t = crate::balance::tests::t0();
        let policy = RetryPolicy {
            budget_percent: 20,
            budget_min_per_s: 1,
            ..RetryPolicy::default()
        };
        let b = RetryBudget::new(&policy, t);
        assert!(b.fits(&policy) && !b.fits(&RetryPolicy::default()));
        // The floor: 1 per second over 10 s.
        let spent = (0..100).filter(|_| b.try_spend(t)).count();
        assert_eq!(spent, 10);
        // 200 requests later, 20 % of them: 40 in all.
        for _ in 0..200 {
            b.on_request(t + S);
        }
        let spent = (0..100).filter(|_| b.try_spend(t + S)).count();
        assert_eq!(spent, 30);
        assert_eq!(b.totals(t + S), (200, 40));
        // Ten seconds on, the window has forgotten them.
        assert_eq!(b.totals(t + 12 * S), (0, 0));
        assert!(b.try_spend(t + 12 * S));
        let e = RawRetry {
            budget_percent: Some(1001),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`retry.budget_percent`"), "{e}");
    }

    #[test]
    fn raw_retry_defaults_and_errors_name_the_field() {
        assert_eq!(
            RawRetry::default().validate().unwrap(),
            RetryPolicy::default()
        );
        let raw: RawRetry = toml::from_str(
            "max_attempts = 5\nbase_backoff_ms = 50\nmax_backoff_ms = 400\nretry_on = [429]\n\
             retry_on_connect_error = false\nretry_on_timeout = false\ndeadline_ms = 30000",
        )
        .unwrap();
        let p = raw.validate().unwrap();
        assert_eq!(p.max_attempts, 5);
        assert_eq!(p.max_backoff, 400 * MS);
        assert_eq!(p.retry_on, [429]);
        assert!(!p.retry_on_connect_error && !p.retry_on_timeout);
        assert_eq!(p.deadline, Some(30 * S));
        let e = RawRetry {
            max_attempts: Some(0),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`retry.max_attempts`"), "{e}");
        let e = RawRetry {
            base_backoff_ms: Some(500),
            max_backoff_ms: Some(100),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`retry.max_backoff_ms`"), "{e}");
        let e = RawRetry {
            retry_on: Some(vec![503, 200]),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.starts_with("`retry.retry_on` holds 200"), "{e}");
        assert!(toml::from_str::<RawRetry>("attempts = 3").is_err());
    }

    #[test]
    fn retries_the_retryable_and_never_other_4xx() {
        let p = RetryPolicy::default();
        let r = 60 * S;
        for f in [
            Failure::Connect,
            Failure::Timeout,
            status(429),
            status(500),
            status(502),
            status(503),
            status(504),
        ] {
            assert!(
                matches!(p.decide(1, &f, r, true, 7), Decision::Retry { .. }),
                "{f:?}"
            );
        }
        for code in [400, 401, 403, 404, 408, 409, 413, 422, 501] {
            assert_eq!(
                p.decide(1, &status(code), r, true, 7),
                Decision::GiveUp,
                "{code}"
            );
        }
        let strict = RetryPolicy {
            retry_on_connect_error: false,
            retry_on_timeout: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            strict.decide(1, &Failure::Connect, r, true, 0),
            Decision::GiveUp
        );
        assert_eq!(
            strict.decide(1, &Failure::Timeout, r, true, 0),
            Decision::GiveUp
        );
    }

    #[test]
    fn exhaustion_falls_back_and_context_window_falls_back_at_once() {
        let p = RetryPolicy::default();
        assert!(matches!(
            p.decide(2, &status(503), S, true, 0),
            Decision::Retry { .. }
        ));
        assert_eq!(p.decide(3, &status(503), S, true, 0), Decision::Fallback);
        assert_eq!(
            p.decide(1, &Failure::ContextWindow, S, true, 0),
            Decision::Fallback
        );
        // No time left: nothing more can be tried.
        assert_eq!(
            p.decide(1, &status(503), Duration::ZERO, true, 0),
            Decision::GiveUp
        );
    }

    #[test]
    fn full_jitter_doubles_its_cap_up_to_the_maximum() {
        let p = RetryPolicy::default();
        let r = 3600 * S;
        // roll % (cap + 1): a roll of exactly the cap gives the cap, one more gives zero.
        let ns = |d: Duration| d.as_nanos() as u64;
        for (attempt, cap) in [(1, 100 * MS), (2, 200 * MS), (3, 400 * MS), (5, 1600 * MS)] {
            assert_eq!(p.backoff(attempt, r, ns(cap)), cap);
            assert_eq!(p.backoff(attempt, r, ns(cap) + 1), Duration::ZERO);
        }
        for attempt in [6, 7, 40, 64, 65, u32::MAX] {
            assert_eq!(p.backoff(attempt, r, ns(2 * S)), 2 * S);
            assert_eq!(p.backoff(attempt, r, ns(2 * S) + 1), Duration::ZERO);
        }
        assert_eq!(p.backoff(0, r, ns(100 * MS)), 100 * MS);
        assert_eq!(
            p.backoff(3, r, 123_456_789),
            Duration::from_nanos(123_456_789)
        );
        // Never more than half the time left.
        assert!(p.backoff(6, 300 * MS, u64::MAX) <= 150 * MS);
    }

    #[test]
    fn retry_after_is_honoured_when_it_fits() {
        let p = RetryPolicy::default();
        let f = Failure::Status {
            code: 429,
            retry_after: Some(3 * S),
        };
        // Fits: wait at least the Retry-After.
        assert_eq!(
            p.decide(1, &f, 10 * S, true, 0),
            Decision::Retry { after: 3 * S }
        );
        // Does not fit: another deployment now, or the fallbacks.
        assert_eq!(
            p.decide(1, &f, 2 * S, true, 0),
            Decision::Retry {
                after: Duration::ZERO
            }
        );
        assert_eq!(p.decide(1, &f, 2 * S, false, 0), Decision::Fallback);
        // A jitter longer than a short Retry-After wins.
        let f = Failure::Status {
            code: 503,
            retry_after: Some(Duration::ZERO),
        };
        assert_eq!(
            p.decide(1, &f, 10 * S, true, 50_000_000),
            Decision::Retry { after: 50 * MS }
        );
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(parse_retry_after(b"30"), Some(30 * S));
        assert_eq!(parse_retry_after(b" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(b"1.5"), Some(1500 * MS));
        assert_eq!(parse_retry_after(b"99999999999"), Some(86_400 * S));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after(b""), None);
        assert_eq!(parse_retry_after(b"-1"), None);
        assert_eq!(parse_retry_after(b"1.2.3"), None);
        assert_eq!(parse_retry_after(b"\xff"), None);
        assert_eq!(parse_retry_after_ms(b"250"), Some(250 * MS));
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(1500 * MS), 2);
        assert_eq!(retry_after_secs(4 * S), 4);
    }

    #[test]
    fn recognises_context_window_errors() {
        let openai = br#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let vllm = br#"{"object":"error","message":"This model's Maximum Context Length is 8192 tokens.","code":400}"#;
        assert!(is_context_window_error(400, openai));
        assert!(is_context_window_error(400, anthropic));
        assert!(is_context_window_error(400, vllm));
        assert!(!is_context_window_error(500, openai));
        assert!(!is_context_window_error(
            400,
            br#"{"error":{"message":"bad temperature"}}"#
        ));
        assert!(!is_context_window_error(400, b""));
    }

    fn failure() -> impl Strategy<Value = Failure> {
        prop_oneof![
            Just(Failure::Connect),
            Just(Failure::Timeout),
            Just(Failure::ContextWindow),
            (400u16..600, prop::option::of(0u64..120_000)).prop_map(|(code, ra)| {
                Failure::Status {
                    code,
                    retry_after: ra.map(Duration::from_millis),
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn backoff_stays_within_max_and_the_deadline(
            attempt in 0u32..100,
            remaining_ms in 0u64..10_000_000,
            roll in any::<u64>(),
            base_ms in 0u64..5_000,
            extra_ms in 0u64..60_000,
            f in failure(),
            other in any::<bool>(),
        ) {
            let p = RetryPolicy {
                base_backoff: Duration::from_millis(base_ms),
                max_backoff: Duration::from_millis(base_ms + extra_ms),
                max_attempts: 10,
                ..RetryPolicy::default()
            };
            let remaining = Duration::from_millis(remaining_ms);
            let b = p.backoff(attempt, remaining, roll);
            prop_assert!(b <= p.max_backoff);
            prop_assert!(b <= remaining / 2);
            if let Decision::Retry { after } = p.decide(attempt, &f, remaining, other, roll) {
                prop_assert!(after < remaining);
                prop_assert!(p.is_retryable(&f));
                match f {
                    Failure::Status { retry_after: Some(ra), .. } if ra < remaining => {
                        prop_assert!(after >= ra);
                    }
                    Failure::Status { retry_after: Some(_), .. } => {
                        prop_assert!(other && after.is_zero());
                    }
                    _ => prop_assert!(after <= p.max_backoff),
                }
            }
        }
    }
}
