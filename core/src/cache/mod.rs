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
//! Implementations: [`NoStore`] (nothing is kept, every lookup misses) and [`MemoryStore`]
//! (in-process, bounded in bytes, TinyUFO admission and eviction, lock-free reads; with the
//! semantic index beside it, bounded by a quarter of `max_bytes`).
//!
//! The parts, in the order a request meets them: [`settings`] (the `[cache]` table and each
//! model group's `cache = {…}`), [`directives`] (the request's `cache-control` and
//! `x-sluice-cache-*` headers), [`key`] (the exact key), the store, [`capture`] (the answer
//! turned into the pivot shape as it streams by) and [`replay`] (a stored answer written in
//! the client's dialect, whole or as a stream).

use std::sync::Arc;

use crate::usage::Usage;

pub mod canonical;
pub mod capture;
pub mod directives;
pub mod guard;
pub mod key;
mod memory;
pub mod replay;
pub mod semantic;
pub mod settings;

pub use key::{CacheKey, CallKind, KeyInput};
pub use memory::MemoryStore;
pub use semantic::SemanticQuery;

/// A stored answer, whole, in the pivot shape: an OpenAI chat completion (or an embeddings
/// answer), with its usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The answer's body (JSON).
    pub body: Vec<u8>,
    /// Its usage, for the savings a hit reports.
    pub usage: Option<Usage>,
    /// What it cost when it was answered upstream, in micro-USD (what a hit saves).
    pub cost_micros: Option<u64>,
    /// The kind of call it answers.
    pub kind: CallKind,
}

/// What a bounded semantic search found.
#[derive(Clone, Debug, Default)]
pub struct Similar {
    /// The stored answer of the best match and its similarity.
    pub found: Option<(Arc<StoredAnswer>, f32)>,
    /// Vectors of the context left unread (the oldest) because of the scan bound.
    pub skipped: usize,
}

/// Which entries a clear removes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clear<'a> {
    /// Only entries of this public model (all when `None`).
    pub model: Option<&'a str>,
    /// Only entries of this scope (all when `None`).
    pub scope: Option<&'a str>,
}

/// What a store holds and has done, for `GET /admin/cache` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Entries held (expired ones count until evicted or looked up).
    pub entries: u64,
    /// Bytes they weigh (body and bookkeeping).
    pub bytes: u64,
    /// The bound on `bytes`.
    pub max_bytes: u64,
    /// Entries kept.
    pub inserts: u64,
    /// Entries evicted to stay within `max_bytes`.
    pub evictions: u64,
    /// Answers too large to keep (over `max_entry_bytes`).
    pub too_large: u64,
    /// Entries dropped by clears.
    pub clears: u64,
    /// Prompt vectors in the semantic index.
    pub vectors: u64,
    /// Bytes the semantic index holds.
    pub vector_bytes: u64,
}

/// A response store.
pub trait ResponseStore: Send + Sync {
    /// The exact key of a request; `None` when it cannot be keyed (a miss, never an error).
    fn key(&self, input: &KeyInput<'_>) -> Option<CacheKey>;
    /// The stored answer for `key`, if one is fresh at `now_ms`.
    fn lookup(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<StoredAnswer>>;
    /// Keeps a complete answer for `ttl_ms`; whether it was kept (not too large).
    fn insert(&self, key: &CacheKey, answer: StoredAnswer, ttl_ms: u64, now_ms: u64) -> bool;
    /// Drops the entries `which` names.
    fn clear(&self, which: Clear<'_>);
    /// The semantic query of a request (`None`: it has none, e.g. its last message is not a
    /// user's text).
    fn semantic_query(&self, _input: &KeyInput<'_>) -> Option<SemanticQuery> {
        None
    }
    /// The stored answer of the closest fresh prompt to `q` (its `vector`) at or above
    /// `threshold` that passes the lexical guard, and the similarity.
    fn similar(
        &self,
        _q: &SemanticQuery,
        _vector: &[f32],
        _threshold: f32,
        _now_ms: u64,
    ) -> Option<(Arc<StoredAnswer>, f32)> {
        None
    }
    /// Vectors a semantic search for `q` would read at most (its context's size).
    fn semantic_len(&self, _q: &SemanticQuery) -> usize {
        0
    }
    /// [`Self::similar`] reading at most the `max_scan` newest vectors of the context, and how
    /// many it left unread.
    fn similar_within(
        &self,
        q: &SemanticQuery,
        vector: &[f32],
        threshold: f32,
        now_ms: u64,
        _max_scan: usize,
    ) -> Similar {
        Similar {
            found: self.similar(q, vector, threshold, now_ms),
            skipped: 0,
        }
    }
    /// Remembers that the answer to `q` (embedded as `vector`) is stored under `key`.
    fn insert_similar(
        &self,
        _q: &SemanticQuery,
        _vector: Vec<f32>,
        _key: &CacheKey,
        _ttl_ms: u64,
        _now_ms: u64,
    ) {
    }
    /// Counters.
    fn stats(&self) -> StoreStats;
    /// Entries, bytes and evictions alone (what settlement publishes as gauges after each
    /// request): cheaper than [`Self::stats`], which also reads the semantic index's size
    /// under its lock.
    fn occupancy(&self) -> (u64, u64, u64) {
        let s = self.stats();
        (s.entries, s.bytes, s.evictions)
    }
}

/// No cache: every lookup misses, nothing is kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStore;

impl ResponseStore for NoStore {
    fn key(&self, _: &KeyInput<'_>) -> Option<CacheKey> {
        None
    }
    fn lookup(&self, _: &CacheKey, _: u64) -> Option<Arc<StoredAnswer>> {
        None
    }
    fn insert(&self, _: &CacheKey, _: StoredAnswer, _: u64, _: u64) -> bool {
        false
    }
    fn clear(&self, _: Clear<'_>) {}
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}
