//! Request coalescing (`coalesce = true` on a group with a cache): identical requests (the same
//! exact key) that arrive while the first is still in flight wait for its answer instead of
//! going upstream.
//!
//! The first request of a key leads: it holds a [`Leader`] through its exchange, and
//! settlement resolves it with the stored answer — or with nothing when the answer was not
//! kept (an error, a cut stream, `no-store`), and in any case when the leader is dropped, so a
//! waiter never waits on a request that is gone. A waiter given nothing goes upstream itself.
//!
//! Concurrency note: waiters and leader may run on different workers. The table is one mutex
//! taken once per coalesced request (never on the hit path, never for groups without
//! `coalesce`); the answer crosses threads on a oneshot channel, which wakes the waiter's
//! runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_channel::oneshot;
use sluice_core::cache::StoredAnswer;

type Waiters = Vec<oneshot::Sender<Option<Arc<StoredAnswer>>>>;

/// The requests in flight per exact key, and who waits for them.
#[derive(Default)]
pub struct Flights {
    table: Mutex<HashMap<[u8; 32], Waiters>>,
}

/// What a request of a coalescing group is.
pub enum Role {
    /// The first: it goes upstream and resolves the others.
    Leader(Leader),
    /// A follower: the leader's answer, when it was kept.
    Follower(oneshot::Receiver<Option<Arc<StoredAnswer>>>),
}

/// The first request of a key; resolves its followers once (at settlement, or when dropped).
pub struct Leader {
    flights: Arc<Flights>,
    key: [u8; 32],
    done: bool,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leader")
    }
}

impl Flights {
    /// Joins the flight of `key`: leads it when none is under way.
    pub fn join(self: &Arc<Self>, key: [u8; 32]) -> Role {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get_mut(&key) {
            Some(waiters) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Role::Follower(rx)
            }
            None => {
                table.insert(key, Vec::new());
                Role::Leader(Leader {
                    flights: self.clone(),
                    key,
                    done: false,
                })
            }
        }
    }

    /// Requests in flight that others wait on (for tests and stats).
    pub fn in_flight(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Leader {
    /// Hands `answer` (`None`: nothing was kept) to every follower.
    pub fn resolve(mut self, answer: Option<Arc<StoredAnswer>>) {
        self.finish(answer);
    }

    fn finish(&mut self, answer: Option<Arc<StoredAnswer>>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let waiters = self
            .flights
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// Waits for the leader's answer, at most `limit`; `None` sends the follower upstream.
pub async fn follow(
    rx: oneshot::Receiver<Option<Arc<StoredAnswer>>>,
    limit: Duration,
) -> Option<Arc<StoredAnswer>> {
    crate::clock::timeout(limit, std::pin::pin!(rx))
        .await
        .ok()?
        .ok()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::cache::CallKind;

    fn answer() -> Arc<StoredAnswer> {
        Arc::new(StoredAnswer {
            body: b"{}".to_vec(),
            usage: None,
            cost_micros: None,
            kind: CallKind::Chat,
        })
    }

    #[test]
    fn followers_get_the_leaders_answer_or_nothing_when_it_is_dropped() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join([1; 32]) else {
            panic!("the first leads")
        };
        let Role::Follower(mut rx) = flights.join([1; 32]) else {
            panic!("the second follows")
        };
        assert!(matches!(flights.join([2; 32]), Role::Leader(_)));
        leader.resolve(Some(answer()));
        assert!(matches!(rx.try_recv(), Ok(Some(Some(_)))));
        assert_eq!(flights.in_flight(), 0);

        let Role::Leader(leader) = flights.join([3; 32]) else {
            panic!()
        };
        let Role::Follower(mut rx) = flights.join([3; 32]) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(rx.try_recv(), Ok(Some(None))));
        assert!(
            matches!(flights.join([3; 32]), Role::Leader(_)),
            "a new flight"
        );
    }
}
