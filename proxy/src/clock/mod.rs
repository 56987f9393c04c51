//! The clocks the proxy reads, in one place (core never reads one: time is passed in).
//!
//! - [`now_ms`]: a monotonic millisecond count shared by every worker — the limiter's time.
//! - [`unix_s`], [`unix_ms`], [`unix_us`], [`unix_ns_ago`]: wall-clock time since the Unix
//!   epoch — budget periods and key expiry, ledger timestamps, trace timestamps, access-line
//!   timestamps, the `created` of answers.
//! - Time limits: [`deadlines::Deadline`], a coarse per-worker deadline (within
//!   [`deadlines::TICK`]) for the waits every request or idle connection makes; [`timeout`]
//!   and [`sleep`], precise, for the rare waits whose timing matters (hedges, backoffs).
//!
//! Both keep a request's state 8-byte aligned: a monoio timer held inline makes any future
//! around it 128-byte aligned (its entry is cache-line padded), and a request's whole state
//! (~10 KiB, one allocation per request in flight, every stream holds one) then goes through
//! mimalloc's aligned path and lands in its 12 KiB size class. `listen::conn` checks the
//! alignment in debug builds.

pub mod deadlines;

use std::future::Future;
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

/// A wait's time limit passed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// `fut` with a precise time limit, like `monoio::time::timeout`, with the timer in a box of
/// its own (see the module docs for why): one small allocation when the wait runs. For waits
/// that are rare, or whose timing matters; a wait every request makes uses a
/// [`deadlines::Deadline`] (no allocation).
///
/// `fut` is pinned by the caller: taken by value, an async fn stores it twice (the argument
/// and the pinned local), and a large one (the semantic cache's embedding call) grew every
/// request's state by as much.
pub async fn timeout<F: Future + ?Sized>(
    limit: Duration,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    let mut timer = Box::pin(monoio::time::sleep(limit));
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(out));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// Sleeps for `limit` precisely, the timer boxed (see [`timeout`]).
pub async fn sleep(limit: Duration) {
    Box::pin(monoio::time::sleep(limit)).await
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
