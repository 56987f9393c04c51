//! The counters a breaker keeps beside its phase word, lock-free: the rolling window of
//! requests and failures, and the callers whose requests failed (or succeeded) lately.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::duration_us;

pub(super) const BUCKETS: usize = 10;
/// Caller slots: the distinct callers whose requests failed lately, per breaker.
const CALLER_SLOTS: usize = 8;

/// Request and failure counts over a rolling window of `BUCKETS` buckets, lock-free: each
/// bucket is one word `tick (32 bits) | requests (16) | failures (16)`, reset by the first
/// record of a newer tick. Ticks count bucket widths since the breaker's base.
#[derive(Debug)]
pub(super) struct Window {
    width_us: u64,
    buckets: [AtomicU64; BUCKETS],
}

impl Window {
    pub(super) fn new(window: Duration) -> Self {
        Window {
            width_us: (duration_us(window) / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    fn tick(&self, now_us: u64) -> u32 {
        (now_us / self.width_us) as u32
    }

    pub(super) fn record(&self, now_us: u64, failed: bool) {
        let tick = self.tick(now_us);
        let b = &self.buckets[tick as usize % BUCKETS];
        let _ = b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            let (r, f) = if (w >> 32) as u32 == tick {
                ((w >> 16) & 0xffff, w & 0xffff)
            } else {
                (0, 0)
            };
            let r = (r + 1).min(0xffff);
            let f = (f + u64::from(failed)).min(0xffff);
            Some(u64::from(tick) << 32 | r << 16 | f)
        });
    }

    /// (requests, failures) in the buckets of the last window.
    pub(super) fn totals(&self, now_us: u64) -> (u32, u32) {
        let tick = self.tick(now_us);
        self.buckets.iter().fold((0, 0), |(r, f), b| {
            let w = b.load(Ordering::Acquire);
            if tick.wrapping_sub((w >> 32) as u32) < BUCKETS as u32 {
                (r + ((w >> 16) & 0xffff) as u32, f + (w & 0xffff) as u32)
            } else {
                (r, f)
            }
        })
    }

    pub(super) fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Release);
        }
    }
}

/// The callers whose requests failed lately (the blast-radius guard), lock-free: each slot is
/// one word `caller hash (24 bits) | failures in a row (8) | last failure (32, ms since base)`.
/// A caller's success resets its run. Slots are taken by the least recently failing caller
/// when full; races between two updates of one slot may lose a count, which only makes the
/// guard more lenient.
///
/// Which callers succeeded lately is a small filter apart from the slots (every success is
/// recorded, not only those of callers that failed): 256 bits per window-long epoch, the
/// current and the previous one. A collision reads as a success, so with many callers the
/// short-circuit grows more lenient, never stricter; a success racing the clearing of a new
/// epoch may be lost.
#[derive(Debug, Default)]
pub(super) struct Callers {
    slots: [AtomicU64; CALLER_SLOTS],
    ok_epochs: [AtomicU32; 2],
    ok_bits: [[AtomicU64; OK_WORDS]; 2],
}

const OK_WORDS: usize = 4;

/// The success filter's word and bit for `caller` (bits apart from the slot tag's).
fn ok_bit(caller: u64) -> (usize, u64) {
    let b = (caller >> 16) as usize % (OK_WORDS * 64);
    (b / 64, 1 << (b % 64))
}

/// Milliseconds from `then` to `now` on the wrapping clock of the caller slots. Workers pass
/// their own `now`, so a slot may be stamped slightly after it: up to a second ahead reads as 0.
fn age_ms(now: u32, then: u32) -> u32 {
    let age = now.wrapping_sub(then);
    if age > u32::MAX - 1000 {
        0
    } else {
        age
    }
}

fn caller_tag(caller: u64) -> u64 {
    ((caller >> 40) & 0xff_ffff).max(1)
}

impl Callers {
    fn find(&self, tag: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.load(Ordering::Acquire) >> 40 == tag)
    }

    /// Counts a failure of `caller`; its failures in a row.
    pub(super) fn failure(&self, caller: u64, now_ms: u32) -> u32 {
        let tag = caller_tag(caller);
        loop {
            if let Some(i) = self.find(tag) {
                let mut count = 0;
                let updated =
                    self.slots[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        (w >> 40 == tag).then(|| {
                            count = ((w >> 32 & 0xff) + 1).min(0xff);
                            tag << 40 | count << 32 | u64::from(now_ms)
                        })
                    });
                if updated.is_ok() {
                    return count as u32;
                }
                continue;
            }
            // A free slot, else the one whose last failure is oldest.
            let (i, old) = self
                .slots
                .iter()
                .map(|s| s.load(Ordering::Acquire))
                .enumerate()
                .max_by_key(|(_, w)| {
                    if *w == 0 {
                        u32::MAX
                    } else {
                        age_ms(now_ms, *w as u32)
                    }
                })
                .unwrap_or((0, 0));
            let new = tag << 40 | 1 << 32 | u64::from(now_ms);
            if self.slots[i]
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return 1;
            }
        }
    }

    /// Counts a success of `caller`: its run of failures ends, and the filter remembers it
    /// for one to two windows.
    pub(super) fn success(&self, caller: u64, now_ms: u32, window_ms: u32) {
        let tag = caller_tag(caller);
        if let Some(i) = self.find(tag) {
            let _ = self.slots[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w >> 40 == tag).then_some(w & !(0xff << 32))
            });
        }
        let epoch = now_ms / window_ms.max(1);
        let g = epoch as usize % 2;
        let stamp = self.ok_epochs[g].load(Ordering::Acquire);
        if stamp != epoch
            && self.ok_epochs[g]
                .compare_exchange(stamp, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for w in &self.ok_bits[g] {
                w.store(0, Ordering::Release);
            }
        }
        let (word, mask) = ok_bit(caller);
        self.ok_bits[g][word].fetch_or(mask, Ordering::AcqRel);
    }

    /// Whether `caller` succeeded in this epoch or the previous one.
    fn succeeded(&self, caller: u64, now_ms: u32, window_ms: u32) -> bool {
        let epoch = now_ms / window_ms.max(1);
        let (word, mask) = ok_bit(caller);
        (0..2).any(|g| {
            let stamp = self.ok_epochs[g].load(Ordering::Acquire);
            (stamp == epoch || stamp.wrapping_add(1) == epoch)
                && self.ok_bits[g][word].load(Ordering::Acquire) & mask != 0
        })
    }

    /// Callers in a run of failures whose last one is younger than `window_ms`.
    pub(super) fn failing(&self, now_ms: u32, window_ms: u32) -> u32 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .filter(|w| w >> 32 & 0xff > 0 && age_ms(now_ms, *w as u32) < window_ms)
            .count() as u32
    }

    /// How long `caller` stays short-circuited: `run` failures in a row, the last one less
    /// than `cooldown_ms` ago, and no success within `window_ms`.
    pub(super) fn isolated(
        &self,
        caller: u64,
        now_ms: impl FnOnce() -> u32,
        run: u32,
        cooldown_ms: u32,
        window_ms: u32,
    ) -> Option<Duration> {
        if run == 0 {
            return None;
        }
        let i = self.find(caller_tag(caller))?;
        let w = self.slots[i].load(Ordering::Acquire);
        // A caller with too few failures in a row (nearly every one) is answered before the
        // time is read.
        if ((w >> 32) & 0xff) < u64::from(run.min(0xff)) {
            return None;
        }
        let now_ms = now_ms();
        let age = age_ms(now_ms, w as u32);
        if age >= cooldown_ms {
            return None;
        }
        if self.succeeded(caller, now_ms, window_ms) {
            return None;
        }
        Some(Duration::from_millis(u64::from(cooldown_ms - age)))
    }
}
