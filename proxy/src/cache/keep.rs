//! The cache's part of settlement: a miss's complete 2xx answer is kept (and handed to the
//! identical requests that waited on it); hits, misses and what hits saved are counted; the
//! access record (and so the ledger row) is marked.

use std::cell::RefCell;

use metrics::{Counter, Gauge};
use sluice_core::config::Config;

use crate::cache::note::{CacheNote, Mark, Ticket};
use crate::state::Worker;
use crate::telemetry::log::AccessRecord;

/// One model group's cache series (the group's name is kept to tell a reload's new group
/// apart from the one it replaced at the same index).
struct GroupSeries {
    name: String,
    hits: Counter,
    semantic_hits: Counter,
    misses: Counter,
    saved_tokens: Counter,
    saved_micros: Counter,
}

impl GroupSeries {
    fn new(name: &str) -> Self {
        let c = |metric: &'static str| metrics::counter!(metric, "model" => name.to_owned());
        GroupSeries {
            name: name.to_owned(),
            hits: c("sluice_cache_hits_total"),
            semantic_hits: c("sluice_cache_semantic_hits_total"),
            misses: c("sluice_cache_misses_total"),
            saved_tokens: c("sluice_cache_saved_tokens_total"),
            saved_micros: c("sluice_cache_saved_cost_usd_micros_total"),
        }
    }
}

/// This worker thread's cache series: looked up in the registry once per model group, so a
/// settlement only touches atomics (as `telemetry::metrics` does for the request series);
/// the store's occupancy as last published, so the gauges are set only when it changed.
#[derive(Default)]
struct Series {
    /// By model group index; the last slot is for requests without a group (`none`).
    groups: Vec<Option<GroupSeries>>,
    gauges: Option<(Gauge, Gauge, Counter)>,
    published: Option<(u64, u64, u64)>,
}

thread_local! {
    static SERIES: RefCell<Series> = RefCell::new(Series::default());
}

impl Series {
    /// The series of model group `group` (`None`: no group), made on first use.
    fn group(&mut self, config: &Config, group: Option<usize>) -> &GroupSeries {
        let name = group
            .and_then(|g| config.models.get(g))
            .map_or("none", |g| g.name.as_str());
        let slot = group.map_or(config.models.len(), |g| g.min(config.models.len()));
        if self.groups.len() <= slot {
            self.groups.resize_with(slot + 1, || None);
        }
        let entry = &mut self.groups[slot];
        if entry.as_ref().is_none_or(|s| s.name != name) {
            *entry = Some(GroupSeries::new(name));
        }
        entry.get_or_insert_with(|| GroupSeries::new(name))
    }

    /// Sets the entries and bytes gauges and the evictions counter when they changed since
    /// this thread last set them.
    fn publish(&mut self, occupancy: (u64, u64, u64)) {
        if self.published == Some(occupancy) {
            return;
        }
        self.published = Some(occupancy);
        let (entries, bytes, evictions) = self.gauges.get_or_insert_with(|| {
            (
                metrics::gauge!("sluice_cache_entries"),
                metrics::gauge!("sluice_cache_bytes"),
                metrics::counter!("sluice_cache_evictions_total"),
            )
        });
        entries.set(occupancy.0 as f64);
        bytes.set(occupancy.1 as f64);
        evictions.absolute(occupancy.2);
    }
}

/// Settlement's part (see the module docs).
pub fn settle(worker: &Worker, note: Option<Box<CacheNote>>, rec: &mut AccessRecord) {
    let Some(note) = note else { return };
    let shared = &worker.shared;
    rec.cache = Some(note.mark.label());
    let group = rec.route.map(|(g, _)| g);
    let count = |f: &dyn Fn(&GroupSeries)| {
        let _ = SERIES.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                f(s.group(&shared.config, group));
            }
        });
    };
    match note.mark {
        Mark::Hit | Mark::Coalesced | Mark::Semantic(_) => {
            rec.saved_micros = Some(note.saved_micros);
            count(&|s| {
                if matches!(note.mark, Mark::Semantic(_)) {
                    s.semantic_hits.increment(1);
                } else {
                    s.hits.increment(1);
                }
                s.saved_tokens.increment(note.saved_tokens);
                s.saved_micros.increment(note.saved_micros);
            });
        }
        Mark::Miss => {
            count(&|s| s.misses.increment(1));
            let ok =
                (200..300).contains(&rec.status) && rec.error.is_none() && !rec.client_cancelled;
            let captured = note.captured.filter(|_| ok);
            if let (Some(ticket), Some(answer)) = (note.ticket, captured) {
                keep(worker, *ticket, answer, rec.cost_micros);
            }
            // Otherwise the ticket (and any leader) is dropped here: waiters go upstream.
        }
    }
    let occupancy = shared.responses.occupancy();
    let _ = SERIES.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.publish(occupancy);
        }
    });
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
