//! Admission limits: sliding windows (requests per minute), token buckets (tokens per minute),
//! concurrency caps and spend budgets, shared by every worker through `Arc`.
//!
//! By what happens in them: `window` (at most `rpm` requests in any 60 s window), `bucket`
//! (GCRA token bucket for `tpm`), `concurrency` (requests in flight), `budget` (spend per
//! calendar period); this file holds the set of them one key, team or deployment has and the
//! `x-ratelimit-*` headers.
//!
//! Time comes in as an argument, never from a clock read: `now_ms` is a monotonic millisecond
//! count (the proxy passes milliseconds since it started), `unix_s` a wall-clock second for
//! budget periods.
//!
//! # Call order on the request path
//!
//! ```text
//! admit ─► LimitSet::admit (for the key, its team, the deployment)
//!            ├─ Concurrency::acquire
//!            ├─ RequestWindow::try_take (one request)
//!            ├─ TokenBucket::try_take (tokens: estimate + max_tokens)
//!            └─ Budget::try_reserve (estimated cost)          any refusal rolls back the rest
//! settle ─► Admission::settle (actual tokens and cost: refund or charge the difference,
//!                              release the concurrency slot)
//! ```
//!
//! # Guarantees
//!
//! - A [`RequestWindow`] never admits more than its limit in any 60 s window (exactly the
//!   limit when it is at most [`window::EXACT_MAX`], up to one second's admissions fewer above).
//! - A [`TokenBucket`] never admits more than `capacity + refill_per_minute * elapsed / 60 000 ms`
//!   tokens over any window (net of refunds): its whole state is one `AtomicU64` updated by
//!   compare-and-swap (GCRA), so no interleaving of workers can over-admit.
//! - A [`Budget`] never lets outstanding reservations plus spend pass its limit; spend can pass
//!   it only when a request's actual cost exceeds what it reserved, by that difference.
//!
//! Concurrency note: workers read a monotonic clock each, so two `now_ms` values may arrive out
//! of order by a few microseconds. The bucket tolerates it: an older `now` is treated as the
//! newest one it has seen where that is stricter, and can only be lenient by the skew itself.

use std::sync::{Arc, OnceLock};

use crate::keys::Limits;
use crate::lease::pool::{Leases, Subject};

mod bucket;
mod budget;
mod concurrency;
pub mod window;

pub use bucket::TokenBucket;
pub use budget::{civil_date, next_period_start, period_start, Budget, BudgetPeriod};
pub use concurrency::Concurrency;
pub use window::RequestWindow;

/// Tokens left in a bucket after an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining(pub u64);

/// How long until a refused take could succeed, in milliseconds.
///
/// [`RetryAfter::NEVER`] means the request is larger than the bucket's capacity and will never
/// fit (OpenAI answers such requests with 429 and "Request too large").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl RetryAfter {
    /// The request can never be admitted: it asks for more than the capacity.
    pub const NEVER: RetryAfter = RetryAfter(u64::MAX);

    /// Whether waiting cannot help.
    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }

    /// Whole seconds for a `Retry-After` header (at least 1).
    pub fn seconds(self) -> u64 {
        self.0.div_ceil(1000).max(1)
    }
}

/// One bucket's numbers for OpenAI's `x-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `x-ratelimit-limit-*`.
    pub limit: u64,
    /// `x-ratelimit-remaining-*`.
    pub remaining: u64,
    /// `x-ratelimit-reset-*`, in milliseconds.
    pub reset_ms: u64,
}

/// OpenAI's six rate-limit headers from a requests bucket and a tokens bucket; either may be
/// absent (no such limit), and its three headers are then left out.
pub fn ratelimit_headers(
    requests: Option<Snapshot>,
    tokens: Option<Snapshot>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    each_ratelimit_header(requests, tokens, |name, value| {
        out.push((name, String::from_utf8_lossy(value).into_owned()));
    });
    out
}

/// [`ratelimit_headers`] without a list: each header's name and value (ASCII) are passed to
/// `header`, in the same order (the values are written into one scratch buffer).
pub fn each_ratelimit_header(
    requests: Option<Snapshot>,
    tokens: Option<Snapshot>,
    mut header: impl FnMut(&'static str, &[u8]),
) {
    const NAMES: [[&str; 3]; 2] = [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ];
    let mut value = Vec::new();
    for (snapshot, names) in [requests, tokens].into_iter().zip(NAMES) {
        let Some(s) = snapshot else {
            continue;
        };
        value.clear();
        crate::decimal::push(&mut value, s.limit, 1);
        header(names[0], &value);
        value.clear();
        crate::decimal::push(&mut value, s.remaining, 1);
        header(names[1], &value);
        value.clear();
        push_duration_ms(&mut value, s.reset_ms);
        header(names[2], &value);
    }
}

/// A key's `x-ratelimit-*` numbers as taken at admission, kept as numbers until the answer's
/// head is written: [`write_lines`](Self::write_lines) renders them straight into the head
/// (no list of header values per request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// The requests bucket's numbers (`*-requests`), when there is such a limit.
    pub requests: Option<Snapshot>,
    /// The tokens bucket's numbers (`*-tokens`), when there is such a limit.
    pub tokens: Option<Snapshot>,
}

impl RateLimitHeaders {
    /// Each header's name and value, as [`each_ratelimit_header`] passes them.
    pub fn each(&self, header: impl FnMut(&'static str, &[u8])) {
        each_ratelimit_header(self.requests, self.tokens, header);
    }

    /// Appends the headers as head lines (`name: value\r\n`), in [`ratelimit_headers`]'s order.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        // Straight into `out`, names and separators as constants (copies of fixed size, in
        // line) and the numbers and reset times by `crate::decimal`: the text of
        // [`each`](Self::each)'s headers, which copies each value through a `Text` and each
        // name by its length (the answer's head with both buckets: 2,329 -> 1,929
        // instructions under callgrind; the full bench's head 1,889 -> 1,857 with
        // `crate::decimal` in place of `itoa` and a `Text` for the reset times).
        const REQUESTS: [&[u8]; 3] = [
            b"x-ratelimit-limit-requests: ",
            b"x-ratelimit-remaining-requests: ",
            b"x-ratelimit-reset-requests: ",
        ];
        const TOKENS: [&[u8]; 3] = [
            b"x-ratelimit-limit-tokens: ",
            b"x-ratelimit-remaining-tokens: ",
            b"x-ratelimit-reset-tokens: ",
        ];
        if let Some(s) = self.requests {
            snapshot_lines(out, REQUESTS, s);
        }
        if let Some(s) = self.tokens {
            snapshot_lines(out, TOKENS, s);
        }
    }
}

/// One bucket's three head lines, `names` ending `": "` (see [`RateLimitHeaders::write_lines`]).
#[inline(always)]
fn snapshot_lines(out: &mut Vec<u8>, names: [&[u8]; 3], s: Snapshot) {
    out.extend_from_slice(names[0]);
    crate::decimal::push(out, s.limit, 1);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(names[1]);
    crate::decimal::push(out, s.remaining, 1);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(names[2]);
    push_duration_ms(out, s.reset_ms);
    out.extend_from_slice(b"\r\n");
}

/// [`format_duration_ms`]'s text appended to `out`, its numbers by [`crate::decimal`].
fn push_duration_ms(out: &mut Vec<u8>, ms: u64) {
    use crate::decimal::{push, push_fraction};
    if ms < 1000 {
        push(out, ms, 1);
        return out.extend_from_slice(b"ms");
    }
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    if h > 0 {
        push(out, h, 1);
        out.push(b'h');
    }
    if h > 0 || m > 0 {
        push(out, m, 1);
        out.push(b'm');
    }
    push(out, s, 1);
    if milli > 0 {
        out.push(b'.');
        push_fraction(out, milli, 3);
    }
    out.push(b's');
}

/// A duration the way OpenAI writes `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn format_duration_ms(ms: u64) -> String {
    let mut text = Vec::new();
    push_duration_ms(&mut text, ms);
    String::from_utf8(text).unwrap_or_default()
}

/// The limits of one principal: a key, a team or a deployment. Every part is optional.
///
/// Share it through `Arc`; a limiter backend (`limiter::Limiter`) takes a slice of them, so a request
/// is checked against its key and its team at once.
#[derive(Debug, Default)]
pub struct LimitSet {
    /// Whose limits these are (a key, a team, a deployment): names them in a fleet's shared
    /// store. `None` keeps the set local even under the fleet limiter.
    pub subject: Option<Subject>,
    /// This set's leases under the fleet limiter (`lease::LeasedLimiter`), made on first use.
    pub leases: OnceLock<Arc<Leases>>,
    /// Requests per minute: at most this many in any 60 s window.
    pub requests: Option<RequestWindow>,
    /// Tokens per minute (prompt estimate plus `max_tokens` on admission, settled on usage).
    pub tokens: Option<TokenBucket>,
    /// Requests in flight.
    pub concurrency: Option<Concurrency>,
    /// Spend this period; kept even without a limit, for reporting.
    pub budget: Budget,
    /// Budget limit in micro-USD; `None` for no limit.
    pub budget_limit_micros: Option<u64>,
    /// When the budget starts over.
    pub budget_period: BudgetPeriod,
    /// Which budget alert thresholds this period were already reported (`alerts`).
    pub alert_mark: crate::alerts::AlertMark,
}

impl LimitSet {
    /// Limits from per-minute and concurrency numbers (`None`: no such limit), with `spend`
    /// already spent in the period containing `unix_s` (as rebuilt from the store).
    pub fn new(
        rpm: Option<u64>,
        tpm: Option<u64>,
        max_concurrency: Option<u32>,
        budget: Option<(u64, BudgetPeriod)>,
        spend_micros: u64,
        unix_s: u64,
    ) -> Self {
        let period = budget.map_or(BudgetPeriod::Lifetime, |b| b.1);
        let start = period_start(period, unix_s);
        LimitSet {
            subject: None,
            leases: OnceLock::new(),
            requests: rpm.map(RequestWindow::per_minute),
            tokens: tpm.map(TokenBucket::per_minute),
            concurrency: max_concurrency.map(Concurrency::new),
            budget: Budget::with_spend(start, spend_micros),
            budget_limit_micros: budget.map(|b| b.0),
            budget_period: period,
            // Thresholds the spend rebuilt at start already reached are not reported again.
            alert_mark: crate::alerts::AlertMark::new(start, spend_micros, budget.map(|b| b.0)),
        }
    }

    /// The limit set of a key's or a team's [`Limits`], with `spend_micros` already spent in
    /// the period containing `unix_s`. Without a budget the period is
    /// [`BudgetPeriod::Lifetime`], as [`Limits::normalized`] says.
    pub fn from_limits(limits: &Limits, spend_micros: u64, unix_s: u64) -> Self {
        LimitSet::new(
            limits.rpm,
            limits.tpm,
            limits.max_concurrency,
            limits.budget_micros().map(|b| (b, limits.budget_period)),
            spend_micros,
            unix_s,
        )
    }

    /// The same set, named `subject` in a fleet's shared store.
    pub fn with_subject(mut self, subject: Subject) -> Self {
        self.subject = Some(subject);
        self
    }

    /// The `x-ratelimit-*` headers of this set at `now_ms`.
    pub fn headers(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        ratelimit_headers(
            self.requests.as_ref().map(|b| b.snapshot(now_ms)),
            self.tokens.as_ref().map(|b| b.snapshot(now_ms)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_openai() {
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(20), "20ms");
        assert_eq!(format_duration_ms(1000), "1s");
        assert_eq!(format_duration_ms(1500), "1.5s");
        assert_eq!(format_duration_ms(360_000), "6m0s");
        assert_eq!(format_duration_ms(3_723_250), "1h2m3.25s");
        assert_eq!(format_duration_ms(3_600_000), "1h0m0s");
        assert_eq!(format_duration_ms(60_001), "1m0.001s");
        assert_eq!(format_duration_ms(999), "999ms");
        assert_eq!(format_duration_ms(1_050), "1.05s");
        assert_eq!(format_duration_ms(u64::MAX), "5124095576030h25m51.615s");
        // Against the rule written out with `format!`: hours and minutes only when above
        // zero (minutes also when hours are), milliseconds as a fraction without trailing zeros.
        let by_format = |ms: u64| -> String {
            if ms < 1000 {
                return format!("{ms}ms");
            }
            let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
            let mut t = String::new();
            if h > 0 {
                t += &format!("{h}h");
            }
            if h > 0 || m > 0 {
                t += &format!("{m}m");
            }
            t += &format!("{s}");
            if milli > 0 {
                t += &format!(".{}", format!("{milli:03}").trim_end_matches('0'));
            }
            t + "s"
        };
        let durations = (0..200_000)
            .step_by(7)
            .chain((0..100).map(|i| 1u64 << (i % 64)));
        for ms in durations.chain([u64::MAX, 3_723_250, 60_001, 1_050]) {
            assert_eq!(format_duration_ms(ms), by_format(ms), "{ms} ms");
        }
        let b = TokenBucket::per_minute(10);
        b.try_take(2, 0).unwrap();
        let h = b.snapshot(0);
        assert_eq!(
            h,
            Snapshot {
                limit: 10,
                remaining: 8,
                reset_ms: 12_000
            }
        );
        let headers = ratelimit_headers(Some(h), None);
        assert_eq!(headers.len(), 3);
        assert_eq!(
            headers[2],
            ("x-ratelimit-reset-requests", "12s".to_string())
        );
    }

    /// The head lines are the listed headers, in order, whichever buckets there are.
    #[test]
    fn head_lines_are_the_listed_headers() {
        let r = Snapshot {
            limit: 60,
            remaining: 59,
            reset_ms: 1_000,
        };
        let t = Snapshot {
            limit: 100_000,
            remaining: 0,
            reset_ms: 3_723_250,
        };
        for (requests, tokens) in [
            (None, None),
            (Some(r), None),
            (None, Some(t)),
            (Some(r), Some(t)),
        ] {
            let h = RateLimitHeaders { requests, tokens };
            let mut lines = b"HTTP/1.1 200 OK\r\n".to_vec();
            h.write_lines(&mut lines);
            let want: String = ratelimit_headers(requests, tokens)
                .iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect();
            assert_eq!(
                String::from_utf8(lines).unwrap(),
                format!("HTTP/1.1 200 OK\r\n{want}")
            );
        }
        // Any numbers: the same text as the listed headers.
        let edges = [0, 1, 9, 10, 999, 1_000, 59_999, 60_000, 3_600_000, u64::MAX];
        for (i, &a) in edges.iter().enumerate() {
            for &b in &edges[i..] {
                let s = Snapshot {
                    limit: a,
                    remaining: b,
                    reset_ms: a.wrapping_add(b),
                };
                let h = RateLimitHeaders {
                    requests: Some(s),
                    tokens: Some(Snapshot { reset_ms: b, ..s }),
                };
                let mut lines = Vec::new();
                h.write_lines(&mut lines);
                let want: String = ratelimit_headers(h.requests, h.tokens)
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}\r\n"))
                    .collect();
                assert_eq!(String::from_utf8(lines).unwrap(), want);
            }
        }
        let mut lines = Vec::new();
        RateLimitHeaders {
            requests: Some(r),
            tokens: Some(t),
        }
        .write_lines(&mut lines);
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "x-ratelimit-limit-requests: 60\r\nx-ratelimit-remaining-requests: 59\r\n\
             x-ratelimit-reset-requests: 1s\r\nx-ratelimit-limit-tokens: 100000\r\n\
             x-ratelimit-remaining-tokens: 0\r\nx-ratelimit-reset-tokens: 1h2m3.25s\r\n"
        );
    }
}
