//! The clocks the proxy reads, in one place (core never reads one: time is passed in).
//!
//! - [`now_ms`]: a monotonic millisecond count shared by every worker — the limiter's time.
//! - [`unix_s`], [`unix_ms`], [`unix_us`], [`unix_ns_ago`]: wall-clock time since the Unix
//!   epoch — budget periods and key expiry, ledger timestamps, trace timestamps, access-line
//!   timestamps, the `created` of answers.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Where [`now_ms`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds on a monotonic clock shared by every worker (the buckets' `now_ms`).
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at `t`, for a caller that already read the clock.
pub fn ms_at(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

/// Time since the Unix epoch (zero if the system clock is set before it).
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Wall-clock unix seconds.
pub fn unix_s() -> u64 {
    since_epoch().as_secs()
}

/// Wall-clock unix milliseconds.
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Wall-clock unix microseconds.
pub fn unix_us() -> u64 {
    since_epoch().as_micros() as u64
}

/// Wall-clock unix nanoseconds, `ago` in the past.
pub fn unix_ns_ago(ago: Duration) -> u64 {
    since_epoch().saturating_sub(ago).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_move_forward_and_agree() {
        let (a, s, ms) = (now_ms(), unix_s(), unix_ms());
        assert!(now_ms() >= a);
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1);
        assert!(s > 1_600_000_000, "the system clock is set");
        let ns = unix_ns_ago(Duration::from_secs(1));
        assert!(ns / 1_000_000 < ms && ms - ns / 1_000_000 >= 1000);
    }
}
