//! Sub-millisecond wake-ups for the open-loop scheduler.
//!
//! monoio's timer wheel has millisecond ticks and rounds deadlines up, so a
//! request scheduled at `t` would leave between `t` and `t + 2 ms`, and that
//! lag would be charged as latency. A [`Ticker`] is a plain thread that
//! sleeps with the OS's precision (tens of µs) until each scheduled time and
//! then wakes the worker task across threads (monoio's `sync` feature).
//! Scheduled times closer together than [`MIN_TICK`] share one wake-up, so
//! at 20k req/s it wakes the worker at most 20k times a second, and usually
//! far less because a busy worker collects several at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Wake-ups at least this far apart; scheduled times in between share one.
pub(crate) const MIN_TICK: Duration = Duration::from_micros(50);
/// Longest single sleep, so a stop request is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// The open-loop schedule: request `i` is due at `start + i / rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub start: Instant,
    pub rate: f64,
    pub limit: Option<u64>,
    pub deadline: Option<Instant>,
}

impl Schedule {
    /// When request `i` is due, or `None` past the limit or the deadline.
    pub fn at(&self, i: u64) -> Option<Instant> {
        if self.limit.is_some_and(|l| i >= l) {
            return None;
        }
        let t = self.start + Duration::from_secs_f64(i as f64 / self.rate);
        match self.deadline {
            Some(d) if t >= d => None,
            _ => Some(t),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Nanoseconds after `start` up to which every due time has passed.
    fired_until_ns: AtomicU64,
    waker: Mutex<Option<Waker>>,
    stop: AtomicBool,
}

/// A thread that wakes the scheduler task at each due time of a [`Schedule`].
#[derive(Debug)]
pub(crate) struct Ticker {
    shared: Arc<Shared>,
    start: Instant,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the ticker thread for `schedule`.
    pub fn start(schedule: Schedule) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("sluice-load-tick".into())
                .spawn(move || tick_loop(schedule, &shared))?
        };
        Ok(Self {
            shared,
            start: schedule.start,
            thread: Some(thread),
        })
    }

    /// Resolves once the ticker has passed `due`.
    pub fn wait_for(&self, due: Instant) -> Tick<'_> {
        let ns =
            u64::try_from(due.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        Tick {
            shared: &self.shared,
            due_ns: ns,
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tick_loop(schedule: Schedule, shared: &Shared) {
    // Linux pads every sleep by the thread's timer slack (50 µs by default),
    // which would become send lag; ask for 1 µs. Failure only costs precision.
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only changes
    // this thread's timer slack; no memory is passed to the kernel.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut i = 0u64;
    let mut next_wake = schedule.start;
    while let Some(due) = schedule.at(i) {
        let target = due.max(next_wake);
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if now >= target {
                break;
            }
            std::thread::sleep((target - now).min(MAX_SLEEP));
        }
        let now = Instant::now();
        while schedule.at(i).is_some_and(|t| t <= now) {
            i += 1;
        }
        let passed = u64::try_from(now.saturating_duration_since(schedule.start).as_nanos())
            .unwrap_or(u64::MAX);
        shared.fired_until_ns.store(passed, Ordering::Release);
        let waker = shared
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
        next_wake = now + MIN_TICK;
    }
}

/// The future returned by [`Ticker::wait_for`].
#[derive(Debug)]
pub(crate) struct Tick<'a> {
    shared: &'a Shared,
    due_ns: u64,
}

impl Future for Tick<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let passed = || self.shared.fired_until_ns.load(Ordering::Acquire) >= self.due_ns;
        if passed() {
            return Poll::Ready(());
        }
        *self
            .shared
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // The ticker may have fired between the check and the registration.
        if passed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_bounds() {
        let start = Instant::now();
        let s = Schedule {
            start,
            rate: 1000.0,
            limit: Some(3),
            deadline: None,
        };
        assert_eq!(s.at(2), Some(start + Duration::from_millis(2)));
        assert_eq!(s.at(3), None);
        let s = Schedule {
            start,
            rate: 1000.0,
            limit: None,
            deadline: Some(start + Duration::from_millis(5)),
        };
        assert!(s.at(4).is_some() && s.at(5).is_none());
    }
}
