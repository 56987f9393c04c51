//! Coarse deadlines for idle connections, checked by one task per worker.
//!
//! A monoio timer is 640 bytes (its entry is cache-line padded for the timer wheel), more than
//! the rest of a parked connection's wait together. Idle timeouts need no such precision: a
//! keep-alive connection closed 50 ms late, or a posted read parked 50 ms late, changes
//! nothing. The same holds for the waits every stream holds for its whole life (the relay's
//! idle and total timeouts on each upstream read, and when the client watch is posted), so
//! they use these deadlines too. So a waiting connection holds a [`Deadline`] — an index into this worker's table —
//! and [`sweep`] wakes those whose time has passed, every [`TICK`] while any is set (and not at
//! all while none is).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often due deadlines are checked while any is set: the precision of idle timeouts.
pub const TICK: Duration = Duration::from_millis(50);

struct Entry {
    at: Instant,
    passed: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Table {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    live: usize,
    /// The sweeper, while it waits for the first deadline.
    sweeper: Option<Waker>,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// A point in time on this worker's idle clock: completes (within [`TICK`]) once it has
/// passed. Dropping it takes it off the table.
pub struct Deadline {
    slot: usize,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Deadline {
        TABLE.with_borrow_mut(|t| {
            let entry = Some(Entry {
                at,
                passed: false,
                waker: None,
            });
            let slot = match t.free.pop() {
                Some(i) => {
                    t.entries[i] = entry;
                    i
                }
                None => {
                    t.entries.push(entry);
                    t.entries.len() - 1
                }
            };
            t.live += 1;
            if let Some(w) = t.sweeper.take() {
                w.wake();
            }
            Deadline { slot }
        })
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        TABLE.with_borrow_mut(|t| match t.entries.get_mut(self.slot) {
            Some(Some(e)) if !e.passed => {
                match &e.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => e.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        })
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // `try_with`: a connection task dropped while the thread exits finds no table.
        let _ = TABLE.try_with(|t| {
            let mut t = t.borrow_mut();
            if let Some(e) = t.entries.get_mut(self.slot) {
                if e.take().is_some() {
                    t.free.push(self.slot);
                    t.live -= 1;
                }
            }
        });
    }
}

/// Wakes the deadlines that have passed, every [`TICK`] while any is set. Runs as one task on
/// each worker for the worker's life.
pub async fn sweep() {
    let mut due = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            TABLE.with_borrow_mut(|t| {
                if t.live > 0 {
                    Poll::Ready(())
                } else {
                    t.sweeper = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        monoio::time::sleep(TICK).await;
        let now = Instant::now();
        TABLE.with_borrow_mut(|t| {
            if t.live == 0 && t.entries.capacity() > 1024 {
                // After a crowd of idle connections, give the table's memory back.
                *t = Table::default();
                return;
            }
            for e in t.entries.iter_mut().flatten() {
                if !e.passed && e.at <= now {
                    e.passed = true;
                    due.extend(e.waker.take());
                }
            }
        });
        // Woken outside the table's borrow: a woken task may be polled at once.
        for w in due.drain(..) {
            w.wake();
        }
        if due.capacity() > 1024 {
            // A crowd's deadlines passed together: not kept for the worker's life.
            due = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_pass_are_swept_and_leave_the_table() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            monoio::spawn(sweep());
            let start = Instant::now();
            let near = Deadline::at(start + Duration::from_millis(30));
            let far = Deadline::at(start + Duration::from_secs(3600));
            monoio::select! {
                _ = near => {}
                _ = far => panic!("the far deadline passed first"),
            }
            assert!(start.elapsed() >= Duration::from_millis(30));
            assert_eq!(TABLE.with_borrow(|t| t.live), 0, "both dropped");
            // A slot is reused; a deadline already past completes on the next sweep.
            Deadline::at(Instant::now()).await;
            assert_eq!(TABLE.with_borrow(|t| (t.live, t.entries.len())), (0, 2));
        });
    }
}
