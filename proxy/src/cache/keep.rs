//! The cache's part of settlement: a miss's complete 2xx answer is kept (and handed to the
//! identical requests that waited on it); hits, misses and what hits saved are counted; the
//! access record (and so the ledger row) is marked.

use crate::cache::note::{CacheNote, Mark, Ticket};
use crate::state::Worker;
use crate::telemetry::log::AccessRecord;

/// Settlement's part (see the module docs).
pub fn settle(worker: &Worker, note: Option<Box<CacheNote>>, rec: &mut AccessRecord) {
    let Some(note) = note else { return };
    let shared = &worker.shared;
    rec.cache = Some(note.mark.label());
    let group = rec.route.map(|(g, _)| g);
    let (config, metrics) = (&shared.config, &worker.metrics);
    match note.mark {
        Mark::Hit | Mark::Coalesced | Mark::Semantic(_) => {
            rec.saved_micros = Some(note.saved_micros);
            let semantic = matches!(note.mark, Mark::Semantic(_));
            metrics.cache_hit(
                config,
                group,
                semantic,
                note.saved_tokens,
                note.saved_micros,
            );
        }
        Mark::Miss => {
            metrics.cache_miss(config, group);
            let ok =
                (200..300).contains(&rec.status) && rec.error.is_none() && !rec.client_cancelled;
            let captured = note.captured.filter(|_| ok);
            if let (Some(ticket), Some(answer)) = (note.ticket, captured) {
                keep(worker, *ticket, answer, rec.cost_micros);
            }
            // Otherwise the ticket (and any leader) is dropped here: waiters go upstream.
        }
    }
    metrics.cache_occupancy(shared.responses.occupancy());
}

/// Keeps a complete answer under its ticket's key (and in the semantic index), and hands it to
/// the requests that waited on this one.
fn keep(
    worker: &Worker,
    t: Ticket,
    mut answer: sluice_core::cache::StoredAnswer,
    cost_micros: Option<u64>,
) {
    let store = &worker.shared.responses;
    let Some(key) = t.key.filter(|_| t.write) else {
        return;
    };
    answer.cost_micros = cost_micros;
    // With `[shared]`: the fleet's second level too (written in the background).
    crate::shared::cache::keep(worker, &key, &answer, t.ttl_ms);
    let now = crate::clock::now_ms();
    let kept = store.insert(&key, answer, t.ttl_ms, now);
    if let (true, Some((q, vector))) = (kept, t.semantic) {
        crate::shared::cache::keep_similar(worker, &key, &q, &vector);
        store.insert_similar(&q, vector, &key, t.ttl_ms, now);
    }
    if let Some(leader) = t.leader {
        leader.resolve(store.lookup(&key, now));
    }
}
