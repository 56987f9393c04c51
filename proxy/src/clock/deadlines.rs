//! Coarse deadlines, checked by one task per worker: the time limits of the waits that every
//! request, stream or idle connection makes.
//!
//! A monoio timer is 640 bytes (its entry is cache-line padded for the timer wheel, which also
//! makes any future holding one 128-byte aligned: see the parent module), more than the rest
//! of a parked connection's wait together. These limits need no such precision: a keep-alive
//! connection closed 50 ms late, a posted read parked 50 ms late, an upstream that missed its
//! first-byte or idle timeout told so 50 ms late, change nothing. So a wait holds a
//! [`Deadline`] — an index into this worker's table, no allocation — and [`sweep`] wakes those
//! whose time has passed, every [`TICK`] while any is set (and not at all while none is).
//! [`within`] races an operation against one.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often due deadlines are checked while any is set: how late a deadline may be noticed.
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

/// A point in time on this worker's coarse clock: completes (within [`TICK`]) once it has
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

/// Gives the table's memory back once no deadline is set, whatever its size: a busy spell's
/// slots are otherwise kept for the worker's life, and with them a page of the allocator that
/// the spell filled. The parked sweeper stays registered. The worker's heartbeat calls it about
/// once a second.
pub fn trim() {
    // `try_with`: nothing to trim on a thread that is exiting.
    let _ = TABLE.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.live == 0 && (t.entries.capacity() > 0 || t.free.capacity() > 0) {
            let sweeper = t.sweeper.take();
            *t = Table {
                sweeper,
                ..Table::default()
            };
        }
    });
}

/// Runs `fut` until it ends (`Ok`), or until `limit` has passed first (`Err`; the caller then
/// drops `fut`, which cancels it). The operation comes first: when both are ready, it wins.
///
/// `fut` is pinned by the caller and `limit` borrowed, so one deadline can serve a loop of
/// reads (a head or a body read in pieces) and nothing is stored twice.
pub fn within<'a, F: Future + ?Sized>(
    limit: &'a mut Deadline,
    fut: Pin<&'a mut F>,
) -> Within<'a, F> {
    Within { limit, fut }
}

/// Runs `fut` until it ends (`Ok`), or until `at` has passed first (`Err`): [`within`] with
/// a deadline of its own, for a single wait. `fut` is pinned by the caller (see [`within`]).
pub async fn before<F: Future + ?Sized>(
    at: Instant,
    fut: Pin<&mut F>,
) -> Result<F::Output, super::Elapsed> {
    let mut limit = Deadline::at(at);
    within(&mut limit, fut).await
}

/// The future of [`within`].
pub struct Within<'a, F: ?Sized> {
    limit: &'a mut Deadline,
    fut: Pin<&'a mut F>,
}

impl<F: Future + ?Sized> Future for Within<'_, F> {
    type Output = Result<F::Output, super::Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(&mut *this.limit)
            .poll(cx)
            .map(|()| Err(super::Elapsed))
    }
}

/// The most wakers the sweep keeps room for between ticks (1 KiB); a tick that wakes more
/// frees its list after.
const DUE_KEPT: usize = 64;

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
        if due.capacity() > DUE_KEPT {
            // A crowd's deadlines passed together: not kept for the worker's life.
            due = Vec::new();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `test` on a worker-like runtime (a timer, the sweep running); other modules'
    /// tests of coarse deadlines use it too.
    pub(crate) fn on_a_worker(test: impl Future<Output = ()>) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            monoio::spawn(sweep());
            test.await
        });
    }

    #[test]
    fn deadlines_pass_are_swept_and_leave_the_table() {
        on_a_worker(async {
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

    #[test]
    fn an_unused_table_is_given_back_and_the_sweep_still_wakes() {
        on_a_worker(async {
            let far = Instant::now() + Duration::from_secs(3600);
            let crowd: Vec<Deadline> = (0..300).map(|_| Deadline::at(far)).collect();
            // Set: nothing is given back.
            trim();
            assert_eq!(TABLE.with_borrow(|t| (t.live, t.entries.len())), (300, 300));
            drop(crowd);
            // Let the sweeper park (no deadline set), then trim under it.
            monoio::time::sleep(TICK * 3).await;
            trim();
            TABLE.with_borrow(|t| {
                assert_eq!((t.entries.capacity(), t.free.capacity()), (0, 0));
                assert!(t.sweeper.is_some(), "the parked sweeper stays registered");
            });
            let start = Instant::now();
            Deadline::at(start + Duration::from_millis(30)).await;
            assert!(start.elapsed() >= Duration::from_millis(30));
        });
    }

    #[test]
    fn within_a_deadline_the_operation_wins_or_the_deadline_ends_it() {
        on_a_worker(async {
            let start = Instant::now();
            // An operation that never ends is cut off once the deadline passes.
            let never = std::pin::pin!(std::future::pending::<()>());
            let cut = before(start + Duration::from_millis(30), never).await;
            assert_eq!(cut, Err(crate::clock::Elapsed));
            assert!(start.elapsed() >= Duration::from_millis(30));
            // One deadline serves a loop of operations; ready ones win even once it passed.
            let mut limit = Deadline::at(Instant::now() + Duration::from_secs(3600));
            for k in 0..3 {
                let op = std::pin::pin!(async move { k });
                assert_eq!(within(&mut limit, op).await, Ok(k));
            }
            let mut past = Deadline::at(Instant::now());
            let slow = std::pin::pin!(monoio::time::sleep(Duration::from_secs(3600)));
            assert!(within(&mut past, slow).await.is_err());
            let ready = std::pin::pin!(std::future::ready(7));
            assert_eq!(
                within(&mut past, ready).await,
                Ok(7),
                "the operation comes first"
            );
            drop((limit, past));
            assert_eq!(TABLE.with_borrow(|t| t.live), 0);
        });
    }
}
