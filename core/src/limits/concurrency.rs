//! The cap on requests in flight.

use std::sync::atomic::{AtomicU32, Ordering};

/// A cap on requests in flight. Lock-free; the caller pairs every successful
/// [`acquire`](Self::acquire) with one [`release`](Self::release).
#[derive(Debug)]
pub struct Concurrency {
    current: AtomicU32,
    limit: u32,
}

impl Concurrency {
    /// At most `limit` at once.
    pub fn new(limit: u32) -> Self {
        Concurrency {
            current: AtomicU32::new(0),
            limit,
        }
    }

    /// Takes a slot; `false` when all `limit` are taken.
    pub fn acquire(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.limit).then_some(c + 1)
            })
            .is_ok()
    }

    /// Gives a slot back. An unpaired release is ignored rather than wrapping.
    pub fn release(&self) {
        let _ = self
            .current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
    }

    /// Slots taken now.
    pub fn in_flight(&self) -> u32 {
        self.current.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_caps_and_releases() {
        let c = Concurrency::new(2);
        assert!(c.acquire() && c.acquire());
        assert!(!c.acquire());
        assert_eq!(c.in_flight(), 2);
        c.release();
        assert!(c.acquire());
        c.release();
        c.release();
        c.release(); // unpaired: ignored
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.limit(), 2);
    }
}
