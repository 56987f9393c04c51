//! The response store seam: consulted once a request is authenticated, inspected and admitted
//! for its request rate and concurrency, before its tokens and budget are reserved — so a hit
//! counts as a request and costs no tokens — and fed with the finished answer (a whole body,
//! or a stream that reached its end) at settlement.
//!
//! ```text
//! Admitted ─► ResponseStore::lookup ─► Hit(answer) ─► replay in the client's dialect ─► Settled
//!                                  └─► Miss ─► reserve ─► attempts ─► relay (capture) ─► Settled
//!                                                                       └─ insert (complete only)
//! ```
//! [`NoStore`] is the first implementation: nothing is kept, every lookup misses.

use std::sync::Arc;

use crate::usage::Usage;

/// What a request is looked up by: who may see the entry, which kind of call, which public
/// model, and the request body (the store normalises and hashes it).
#[derive(Clone, Copy, Debug)]
pub struct CacheRequest<'a> {
    /// The tenant scope (a team, a key, or the gateway as a whole); entries never cross it.
    pub scope: &'a str,
    /// The kind of call (`chat`, `completion`, `embeddings`, `messages`).
    pub kind: &'a str,
    /// The public model name the client asked for.
    pub model: &'a str,
    /// The client's request body.
    pub body: &'a [u8],
}

/// A stored answer, in the pivot (OpenAI) shape, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The answer's body.
    pub body: Vec<u8>,
    /// Its usage, for the savings a hit reports.
    pub usage: Option<Usage>,
}

/// A response store.
pub trait ResponseStore: Send + Sync {
    /// Whether requests to model group `group` are worth keying at all (no work on the hot
    /// path of a group without a cache).
    fn enabled(&self, group: usize) -> bool;
    /// The stored answer for `req`, if one is fresh at `now_ms`.
    fn lookup(
        &self,
        group: usize,
        req: &CacheRequest<'_>,
        now_ms: u64,
    ) -> Option<Arc<StoredAnswer>>;
    /// Keeps a complete answer to `req`.
    fn insert(&self, group: usize, req: &CacheRequest<'_>, answer: StoredAnswer, now_ms: u64);
}

/// No cache: every lookup misses, nothing is kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStore;

impl ResponseStore for NoStore {
    fn enabled(&self, _: usize) -> bool {
        false
    }
    fn lookup(&self, _: usize, _: &CacheRequest<'_>, _: u64) -> Option<Arc<StoredAnswer>> {
        None
    }
    fn insert(&self, _: usize, _: &CacheRequest<'_>, _: StoredAnswer, _: u64) {}
}
