//! A worker's stock of spare buffers, and giving back what a quiet worker no longer needs.
//!
//! Connections and streams take a buffer when bytes arrive and give it back when the exchange
//! ends, so a worker needs only as many buffers as it has exchanges running at once, not one
//! per connection. The stock between them is bounded in count, and trimmed once a second to
//! what the last second used: the buffers nobody took since the last trim are freed. A worker
//! under steady load keeps the stock it draws on (no allocation per request); a worker that
//! went quiet after a burst frees the whole stock within two trims. That matters for the
//! memory a worker gives back to the system after load: a stock of 64 buffers kept from the
//! peak sits scattered over the allocator's pages and keeps each of them (and the blocks
//! freed around it) resident.

use std::cell::{Cell, RefCell};

/// A bounded stack of empty buffers; see the module docs.
pub struct Spares {
    bufs: RefCell<Vec<Vec<u8>>>,
    /// The fewest buffers the stock held since the last [`trim`](Self::trim): that many were
    /// not taken by anyone.
    low: Cell<usize>,
    max: usize,
}

impl Spares {
    /// An empty stock that keeps at most `max` buffers.
    pub const fn new(max: usize) -> Self {
        Spares {
            bufs: RefCell::new(Vec::new()),
            low: Cell::new(0),
            max,
        }
    }

    /// The most recently given back buffer (the likeliest still in cache), if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        let mut bufs = self.bufs.borrow_mut();
        let buf = bufs.pop();
        self.low.set(self.low.get().min(bufs.len()));
        buf
    }

    /// Keeps `buf` (empty) for the next [`take`](Self::take), unless the stock is full.
    pub fn give(&self, buf: Vec<u8>) {
        debug_assert!(buf.is_empty());
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < self.max {
            bufs.push(buf);
        }
    }

    /// Frees the buffers no one took since the last trim (the oldest ones, at the bottom of
    /// the stack).
    pub fn trim(&self) {
        let mut bufs = self.bufs.borrow_mut();
        let unused = self.low.get().min(bufs.len());
        bufs.drain(..unused);
        if bufs.is_empty() {
            *bufs = Vec::new();
        }
        self.low.set(bufs.len());
    }

    /// Buffers in stock.
    pub fn len(&self) -> usize {
        self.bufs.borrow().len()
    }

    /// Whether the stock is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u8> {
        Vec::with_capacity(64)
    }

    #[test]
    fn bounded_and_last_in_first_out() {
        let s = Spares::new(2);
        let (a, b, c) = (buf(), buf(), buf());
        let b_ptr = b.as_ptr();
        s.give(a);
        s.give(b);
        s.give(c);
        assert_eq!(s.len(), 2, "the third is freed, not kept");
        assert_eq!(s.take().map(|b| b.as_ptr()), Some(b_ptr));
    }

    #[test]
    fn a_trim_frees_what_the_last_period_did_not_take() {
        let s = Spares::new(8);
        for _ in 0..6 {
            s.give(buf());
        }
        // The first trim after the stock filled: nothing was taken since it was empty (the
        // low-water mark is the empty stock), so everything stays.
        s.trim();
        assert_eq!(s.len(), 6);
        // Two taken and given back in this period: four were never needed.
        let x = s.take().unwrap();
        let y = s.take().unwrap();
        s.give(x);
        s.give(y);
        s.trim();
        assert_eq!(s.len(), 2, "the two in use survive");
        // A quiet period: all are freed.
        s.trim();
        assert!(s.is_empty());
        assert_eq!(
            s.bufs.borrow().capacity(),
            0,
            "the stack itself is freed too"
        );
    }
}
