//! Where a semantic search runs: a worker is one thread for every connection on its core, so a
//! search must not hold it for long. A context of up to `INLINE_SCAN` vectors (1,024: under a
//! millisecond on a loaded core, `cache_semantic_search` in `bench/benches/cache.rs`) is
//! searched inline, where a hand-off would cost about as much. A larger one (up to
//! `MAX_PER_CONTEXT`, 10,000: about 8 ms on a loaded core) goes to a small pool of search
//! threads shared by the workers, through a bounded queue, and comes back on a oneshot channel
//! that wakes the worker — the same shape as compression's offload (`request::compress`).
//! When the queue is full the worker searches the newest `INLINE_SCAN` vectors itself and
//! counts the rest in `sluice_cache_semantic_skipped_total`: a full queue means search already
//! has all the CPU it was given, and a partial search can only turn a hit into a miss (the
//! request goes upstream), never give a wrong answer.
//!
//! So a worker never spends longer on a search than an `INLINE_SCAN` scan. The pool starts on
//! first use with a quarter of the cores (at least one).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Sender, TrySendError};
use futures_channel::oneshot;
use sluice_core::cache::semantic::{INLINE_SCAN, MAX_PER_CONTEXT};
use sluice_core::cache::{ResponseStore, SemanticQuery, Similar, StoredAnswer};

/// Searches queued per search thread before a worker searches a bounded part itself.
const QUEUE_PER_THREAD: usize = 4;

/// One search for a search thread.
struct Job {
    store: Arc<dyn ResponseStore>,
    query: SemanticQuery,
    vector: Vec<f32>,
    threshold: f32,
    now_ms: u64,
    done: oneshot::Sender<Similar>,
}

/// The stored answer of the closest fresh prompt to `q` at or above `threshold`, searched
/// where the bound above says. `model` labels the metrics.
pub async fn similar(
    store: &Arc<dyn ResponseStore>,
    q: &SemanticQuery,
    vector: &[f32],
    threshold: f32,
    now_ms: u64,
    model: &str,
) -> Option<(Arc<StoredAnswer>, f32)> {
    if store.semantic_len(q) <= INLINE_SCAN {
        return inline(store, q, vector, threshold, now_ms, model);
    }
    let (done, rx) = oneshot::channel();
    let job = Job {
        store: store.clone(),
        query: q.clone(),
        vector: vector.to_vec(),
        threshold,
        now_ms,
        done,
    };
    match pool().try_send(job) {
        Ok(()) => {
            metrics::counter!("sluice_cache_semantic_offloaded_total", "model" => model.to_owned())
                .increment(1);
            // A search thread that died with the job (a bug) makes the request a miss.
            rx.await.ok()?.found
        }
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            tracing::debug!(
                model,
                "semantic search threads busy: a bounded search inline"
            );
            inline(store, q, vector, threshold, now_ms, model)
        }
    }
}

/// At most `INLINE_SCAN` vectors, on the calling worker.
fn inline(
    store: &Arc<dyn ResponseStore>,
    q: &SemanticQuery,
    vector: &[f32],
    threshold: f32,
    now_ms: u64,
    model: &str,
) -> Option<(Arc<StoredAnswer>, f32)> {
    let s = store.similar_within(q, vector, threshold, now_ms, INLINE_SCAN);
    if s.skipped > 0 {
        metrics::counter!("sluice_cache_semantic_skipped_total", "model" => model.to_owned())
            .increment(s.skipped as u64);
    }
    s.found
}

/// The queue of the search threads, started on first use.
fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 4).max(1));
        let (tx, rx) = crossbeam_channel::bounded::<Job>(threads * QUEUE_PER_THREAD);
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-search-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        let Job {
                            store,
                            query,
                            vector,
                            threshold,
                            now_ms,
                            done,
                        } = job;
                        let out = catch_unwind(AssertUnwindSafe(|| {
                            store.similar_within(
                                &query,
                                &vector,
                                threshold,
                                now_ms,
                                MAX_PER_CONTEXT,
                            )
                        }));
                        if let Ok(found) = out {
                            let _ = done.send(found);
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a semantic search thread");
            }
        }
        tx
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::cache::semantic::normalised;
    use sluice_core::cache::settings::CacheConfig;
    use sluice_core::cache::{CallKind, KeyInput, MemoryStore};

    /// A context past the inline bound whose only match is its oldest vector: a bounded
    /// search on the worker cannot see it, the search thread scans it whole and finds it.
    #[test]
    fn a_large_context_is_searched_whole_off_the_worker() {
        let store: Arc<dyn ResponseStore> =
            Arc::new(MemoryStore::new(CacheConfig::default(), [1; 32]));
        let body = br#"{"model":"m","messages":[{"role":"user","content":"what is the capital of france"}]}"#;
        let input = KeyInput {
            scope: "team:a",
            kind: CallKind::Chat,
            inbound: None,
            model: "m",
            body,
        };
        let q = store.semantic_query(&input).unwrap();
        let key = store.key(&input).unwrap();
        let answer = StoredAnswer {
            body: b"{\"choices\":[]}".to_vec(),
            usage: None,
            cost_micros: None,
            kind: CallKind::Chat,
        };
        assert!(store.insert(&key, answer, 60_000, 0));
        let axis = |k: usize| {
            let v = (0..64).map(|i| if i == k { 1.0 } else { 0.0 }).collect();
            normalised(v).unwrap()
        };
        store.insert_similar(&q, axis(0), &key, 60_000, 0);
        for _ in 0..INLINE_SCAN + 10 {
            store.insert_similar(&q, axis(1), &key, 60_000, 0);
        }
        assert_eq!(store.semantic_len(&q), INLINE_SCAN + 11);
        let bounded = store.similar_within(&q, &axis(0), 0.9, 1, INLINE_SCAN);
        assert!(bounded.found.is_none());
        assert_eq!(bounded.skipped, 11);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let found = rt.block_on(similar(&store, &q, &axis(0), 0.9, 1, "m"));
        let (_, similarity) = found.expect("the search thread scanned the whole context");
        assert!(similarity > 0.99);
        // The newest vectors are found as well.
        let near = rt.block_on(similar(&store, &q, &axis(1), 0.9, 1, "m"));
        assert!(near.is_some());
    }
}
