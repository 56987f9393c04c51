//! The in-process store: entries in a TinyUFO cache (TinyLFU admission, S3-FIFO eviction, from
//! Pingora), weighed in KiB so the whole never holds more than `max_bytes`; reads take no lock.
//!
//! Clearing by model or scope does not walk the entries: each entry remembers the generation of
//! its model's slot, its scope's slot and the store when it was written, and a clear bumps the
//! generation — an entry of an older generation is a miss, removed when met, and evicted in
//! its turn otherwise. A slot is shared by the names that hash to it, so a clear may drop
//! a few more entries than it names; never fewer.
//!
//! Concurrency note: workers look up and insert at once. A lookup is a lock-free read
//! (`TinyUfo::get`); an insert may evict. Two workers inserting the same key race harmlessly
//! (the last answer wins). The entry and byte counters are kept beside TinyUFO's own weights
//! and may drift by a racing insert; the bound itself is TinyUFO's, which is exact.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tinyufo::TinyUfo;

use super::key::{exact_key, slot, CacheKey, KeyInput};
use super::semantic::{self, SemanticIndex, SemanticQuery};
use super::settings::CacheConfig;
use super::{Clear, ResponseStore, Similar, StoreStats, StoredAnswer};

/// Bytes per unit of weight.
const UNIT: u64 = 1024;
/// Bookkeeping counted with each entry's body (key, expiry, generations, queue slots).
const ENTRY_OVERHEAD: u64 = 256;

/// One stored answer and what decides whether it is still good.
struct Entry {
    hash: [u8; 32],
    answer: Arc<StoredAnswer>,
    expires_ms: u64,
    /// (store, model slot, scope slot) generations at write time.
    generation: [u64; 3],
    weight: u16,
}

/// The in-process response store (see the module docs).
pub struct MemoryStore {
    ufo: TinyUfo<[u8; 32], Arc<Entry>>,
    /// Prompt vectors of the semantic cache; their answers are in `ufo`.
    semantic: SemanticIndex,
    secret: [u8; 32],
    config: CacheConfig,
    all_generation: AtomicU64,
    model_generation: [AtomicU64; 256],
    scope_generation: [AtomicU64; 256],
    entries: AtomicU64,
    weight: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    too_large: AtomicU64,
    clears: AtomicU64,
}

impl MemoryStore {
    /// A store bounded by `config`, keying with `secret` (random per process: see `key`).
    pub fn new(config: CacheConfig, secret: [u8; 32]) -> Self {
        let units = (config.max_bytes / UNIT).max(1) as usize;
        // TinyUFO sizes its frequency sketch by the expected number of entries.
        let estimated = (config.max_bytes / (4 * UNIT)).clamp(64, 1 << 20) as usize;
        MemoryStore {
            ufo: TinyUfo::new(units, estimated),
            semantic: SemanticIndex::new(config.max_bytes / 4),
            secret,
            config,
            all_generation: AtomicU64::new(0),
            model_generation: std::array::from_fn(|_| AtomicU64::new(0)),
            scope_generation: std::array::from_fn(|_| AtomicU64::new(0)),
            entries: AtomicU64::new(0),
            weight: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            clears: AtomicU64::new(0),
        }
    }

    /// The bounds it was built with.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    fn generation(&self, key: &CacheKey) -> [u64; 3] {
        [
            self.all_generation.load(Relaxed),
            self.model_generation[usize::from(key.model_slot)].load(Relaxed),
            self.scope_generation[usize::from(key.scope_slot)].load(Relaxed),
        ]
    }

    fn forget(&self, weight: u16) {
        let _ = self
            .entries
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        let _ = self.weight.fetch_update(Relaxed, Relaxed, |w| {
            Some(w.saturating_sub(u64::from(weight)))
        });
    }

    fn remove(&self, hash: &[u8; 32]) {
        if let Some(old) = self.ufo.remove(hash) {
            self.forget(old.weight);
        }
    }
}

impl ResponseStore for MemoryStore {
    fn key(&self, input: &KeyInput<'_>) -> Option<CacheKey> {
        exact_key(&self.secret, input)
    }

    fn lookup(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<StoredAnswer>> {
        let entry = self.ufo.get(&key.hash)?;
        // TinyUFO keys by a 64-bit hash of ours: the full key must match too.
        if entry.hash != key.hash {
            return None;
        }
        if entry.expires_ms <= now_ms || entry.generation != self.generation(key) {
            self.remove(&key.hash);
            return None;
        }
        Some(entry.answer.clone())
    }

    fn insert(&self, key: &CacheKey, answer: StoredAnswer, ttl_ms: u64, now_ms: u64) -> bool {
        let bytes = answer.body.len() as u64;
        if bytes > self.config.max_entry_bytes {
            self.too_large.fetch_add(1, Relaxed);
            return false;
        }
        let weight = (bytes + ENTRY_OVERHEAD)
            .div_ceil(UNIT)
            .min(u64::from(u16::MAX)) as u16;
        let entry = Arc::new(Entry {
            hash: key.hash,
            answer: Arc::new(answer),
            expires_ms: now_ms.saturating_add(ttl_ms),
            generation: self.generation(key),
            weight,
        });
        self.remove(&key.hash);
        // `force_put`: an answer is visible to the next lookup as soon as it completes (plain
        // `put` may refuse a newcomer less popular than what it would evict).
        let evicted = self.ufo.force_put(key.hash, entry, weight);
        // The evictions are counted before the newcomer, so that a concurrent reader of the
        // stats (the admin API) never sees the bytes above the bound in between.
        for kv in evicted {
            self.forget(kv.weight);
            self.evictions.fetch_add(1, Relaxed);
        }
        self.entries.fetch_add(1, Relaxed);
        self.weight.fetch_add(u64::from(weight), Relaxed);
        self.inserts.fetch_add(1, Relaxed);
        true
    }

    fn clear(&self, which: Clear<'_>) {
        match (which.model, which.scope) {
            (None, None) => {
                self.all_generation.fetch_add(1, Relaxed);
            }
            (model, scope) => {
                if let Some(m) = model {
                    self.model_generation[usize::from(slot(m))].fetch_add(1, Relaxed);
                }
                if let Some(s) = scope {
                    self.scope_generation[usize::from(slot(s))].fetch_add(1, Relaxed);
                }
            }
        }
        self.clears.fetch_add(1, Relaxed);
    }

    fn semantic_query(&self, input: &KeyInput<'_>) -> Option<SemanticQuery> {
        semantic::query(&self.secret, input)
    }

    fn similar(
        &self,
        q: &SemanticQuery,
        vector: &[f32],
        threshold: f32,
        now_ms: u64,
    ) -> Option<(Arc<StoredAnswer>, f32)> {
        let m = self.semantic.search(q, vector, threshold, now_ms)?;
        Some((self.lookup(&m.key, now_ms)?, m.similarity))
    }

    fn semantic_len(&self, q: &SemanticQuery) -> usize {
        self.semantic.context_len(q)
    }

    fn similar_within(
        &self,
        q: &SemanticQuery,
        vector: &[f32],
        threshold: f32,
        now_ms: u64,
        max_scan: usize,
    ) -> Similar {
        let s = self
            .semantic
            .search_within(q, vector, threshold, now_ms, max_scan);
        Similar {
            found: s
                .best
                .and_then(|m| Some((self.lookup(&m.key, now_ms)?, m.similarity))),
            skipped: s.skipped,
        }
    }

    fn insert_similar(
        &self,
        q: &SemanticQuery,
        vector: Vec<f32>,
        key: &CacheKey,
        ttl_ms: u64,
        now_ms: u64,
    ) {
        self.semantic
            .insert(q, vector, *key, now_ms.saturating_add(ttl_ms));
    }

    fn occupancy(&self) -> (u64, u64, u64) {
        (
            self.entries.load(Relaxed),
            self.weight.load(Relaxed) * UNIT,
            self.evictions.load(Relaxed),
        )
    }

    fn stats(&self) -> StoreStats {
        let (vectors, vector_bytes) = self.semantic.size();
        StoreStats {
            vectors,
            vector_bytes,
            entries: self.entries.load(Relaxed),
            bytes: self.weight.load(Relaxed) * UNIT,
            max_bytes: self.config.max_bytes,
            inserts: self.inserts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            clears: self.clears.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::CallKind;

    fn store(max_bytes: u64) -> MemoryStore {
        MemoryStore::new(
            CacheConfig {
                max_bytes,
                max_entry_bytes: 64 << 10,
            },
            [1; 32],
        )
    }

    fn key(s: &MemoryStore, scope: &str, model: &str, prompt: &str) -> CacheKey {
        let body =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
        s.key(&KeyInput {
            scope,
            kind: CallKind::Chat,
            inbound: None,
            model,
            body: body.as_bytes(),
        })
        .unwrap()
    }

    fn answer(len: usize) -> StoredAnswer {
        StoredAnswer {
            body: vec![b'x'; len],
            usage: None,
            cost_micros: Some(5),
            kind: CallKind::Chat,
        }
    }

    #[test]
    fn hit_until_the_ttl_then_miss() {
        let s = store(1 << 20);
        let k = key(&s, "team:a", "m", "hi");
        assert!(s.lookup(&k, 0).is_none());
        assert!(s.insert(&k, answer(10), 1000, 0));
        assert_eq!(s.lookup(&k, 999).unwrap().body.len(), 10);
        assert!(s.lookup(&k, 1000).is_none());
        assert!(s.lookup(&k, 1).is_none(), "an expired entry is removed");
        assert_eq!(s.stats().entries, 0);
    }

    #[test]
    fn too_large_answers_are_not_kept() {
        let s = store(1 << 20);
        let k = key(&s, "team:a", "m", "hi");
        assert!(!s.insert(&k, answer(65 << 10), 1000, 0));
        assert!(s.lookup(&k, 0).is_none());
        assert_eq!(s.stats().too_large, 1);
    }

    #[test]
    fn clears_by_model_scope_and_all() {
        let s = store(1 << 20);
        let a = key(&s, "team:a", "m1", "hi");
        let b = key(&s, "team:b", "m2", "hi");
        for k in [&a, &b] {
            s.insert(k, answer(10), 10_000, 0);
        }
        s.clear(Clear {
            model: Some("m1"),
            scope: None,
        });
        assert!(s.lookup(&a, 1).is_none());
        assert!(s.lookup(&b, 1).is_some());
        s.clear(Clear {
            model: None,
            scope: Some("team:b"),
        });
        assert!(s.lookup(&b, 1).is_none());
        s.insert(&a, answer(10), 10_000, 0);
        s.clear(Clear::default());
        assert!(s.lookup(&a, 1).is_none());
    }

    #[test]
    fn the_store_never_holds_more_than_its_bound() {
        let max = 256 << 10;
        let s = store(max);
        for i in 0..2000 {
            let k = key(&s, "team:a", "m", &format!("prompt {i}"));
            s.insert(&k, answer(3000), 60_000, 0);
            assert!(s.stats().bytes <= max, "{:?}", s.stats());
        }
        let st = s.stats();
        assert!(st.evictions > 1000, "{st:?}");
        assert!(st.entries > 10, "{st:?}");
    }
}
