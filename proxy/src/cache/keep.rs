//! The cache's part of settlement: a miss's complete 2xx answer is kept; hits, misses and
//! what hits saved are counted; the access record (and so the ledger row) is marked.

use crate::cache::note::{CacheNote, Mark};
use crate::state::Worker;
use crate::telemetry::log::AccessRecord;

/// Settlement's part: keeps a miss's complete 2xx answer, counts hits, misses and savings, and
/// marks the access record (and so the ledger row).
pub fn settle(worker: &Worker, note: Option<Box<CacheNote>>, rec: &mut AccessRecord) {
    let Some(note) = note else { return };
    let shared = &worker.shared;
    let model = rec
        .route
        .and_then(|(g, _)| shared.config.models.get(g))
        .map_or("none", |g| g.name.as_str());
    rec.cache = Some(note.mark.label());
    match note.mark {
        Mark::Hit | Mark::Semantic(_) => {
            rec.saved_micros = Some(note.saved_micros);
            let name = if note.mark == Mark::Hit {
                "sluice_cache_hits_total"
            } else {
                "sluice_cache_semantic_hits_total"
            };
            metrics::counter!(name, "model" => model.to_owned()).increment(1);
            metrics::counter!("sluice_cache_saved_tokens_total", "model" => model.to_owned())
                .increment(note.saved_tokens);
            metrics::counter!("sluice_cache_saved_cost_usd_micros_total", "model" => model.to_owned())
                .increment(note.saved_micros);
        }
        Mark::Miss => {
            metrics::counter!("sluice_cache_misses_total", "model" => model.to_owned())
                .increment(1);
            let ok =
                (200..300).contains(&rec.status) && rec.error.is_none() && !rec.client_cancelled;
            if let (Some(t), Some(mut answer), true) = (note.ticket, note.captured, ok) {
                if let (Some(key), true) = (t.key, t.write) {
                    answer.cost_micros = rec.cost_micros;
                    let now = crate::clock::now_ms();
                    let kept = shared.responses.insert(&key, answer, t.ttl_ms, now);
                    if let (true, Some((q, vector))) = (kept, t.semantic) {
                        shared
                            .responses
                            .insert_similar(&q, vector, &key, t.ttl_ms, now);
                    }
                }
            }
        }
    }
    let stats = shared.responses.stats();
    metrics::gauge!("sluice_cache_entries").set(stats.entries as f64);
    metrics::gauge!("sluice_cache_bytes").set(stats.bytes as f64);
    metrics::counter!("sluice_cache_evictions_total").absolute(stats.evictions);
}
