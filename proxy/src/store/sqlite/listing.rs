//! The usage listing (`from_ms <= ts_ms < to_ms`, oldest first, at most `limit`) without a
//! time index: a walk over the per-batch spans (migration 5) that stops early.
//!
//! Spans are taken in `(min_ts, first_seq)` order (the `ledger_span_min_ts` index holds
//! `first_seq` as its rowid); a span's rows are read by their `seq` range, the primary key.
//! Every row of a span sorts at or after `(min_ts, first_seq)` in the listing's
//! `(ts_ms, seq)` order, so once `limit` rows are held and the next span's
//! `(min_ts, first_seq)` is past the last of them, no later span can hold an earlier row.
//! Spans overlap a little (workers' records arrive out of order): the walk then reads a
//! few more spans, never the rest of the range. Rows visited: about `limit` plus one or two
//! batches, against every row from the range's start for `ORDER BY ... LIMIT` over spans.

use rusqlite::{params, Connection};

use super::super::rows::{self, USAGE_COLUMNS};
use super::super::{int, Result, UsageRecord};

/// The spans that may hold rows of `?1 <= ts_ms < ?2`, in the walk's order.
/// `ledger_span_start` covers it: spans that end before the range cost an index entry each,
/// no row of the ledger.
pub(in super::super) const SPANS_BY_START: &str = "SELECT first_seq, last_seq, min_ts \
     FROM ledger_span INDEXED BY ledger_span_start \
     WHERE min_ts < ?2 AND max_ts >= ?1 ORDER BY min_ts, first_seq";

/// A listing and how many ledger rows it read to make it (the cost a test bounds).
pub(super) struct Listing {
    pub records: Vec<UsageRecord>,
    pub rows_visited: u64,
}

/// The listing of `from_ms <= ts_ms < to_ms`, at most `limit` rows, oldest first (ties by
/// `seq`, the order of insertion).
pub(super) fn ledger(conn: &Connection, from_ms: u64, to_ms: u64, limit: usize) -> Result<Listing> {
    let (from, to) = (int(from_ms), int(to_ms));
    let mut held: Vec<(i64, i64, UsageRecord)> = Vec::new();
    let mut rows_visited = 0u64;
    if limit == 0 || from >= to {
        return Ok(Listing {
            records: Vec::new(),
            rows_visited,
        });
    }
    let mut spans = conn.prepare_cached(SPANS_BY_START)?;
    let mut rows_sql = conn.prepare_cached(&format!(
        "SELECT seq, {USAGE_COLUMNS} FROM ledger WHERE seq >= ?1 AND seq <= ?2"
    ))?;
    let mut span_rows = spans.query(params![from, to])?;
    while let Some(s) = span_rows.next()? {
        let (first, last, min_ts): (i64, i64, i64) = (s.get(0)?, s.get(1)?, s.get(2)?);
        // `held` is sorted and holds at most `limit` rows here: its last is the bar.
        let bar = (held.len() >= limit).then(|| (held[limit - 1].0, held[limit - 1].1));
        if bar.is_some_and(|bar| (min_ts, first) > bar) {
            break;
        }
        let mut rows = rows_sql.query(params![first, last])?;
        while let Some(r) = rows.next()? {
            rows_visited += 1;
            let ts: i64 = r.get(2)?;
            if ts < from || ts >= to {
                continue;
            }
            let seq: i64 = r.get(0)?;
            if bar.is_some_and(|bar| (ts, seq) > bar) {
                continue;
            }
            held.push((ts, seq, rows::usage(&Shifted(r))?));
        }
        held.sort_unstable_by_key(|h| (h.0, h.1));
        held.truncate(limit);
    }
    Ok(Listing {
        records: held.into_iter().map(|h| h.2).collect(),
        rows_visited,
    })
}

/// A row selected as `seq, USAGE_COLUMNS`, read by [`rows::usage`] as `USAGE_COLUMNS`.
struct Shifted<'a, 'r>(&'a rusqlite::Row<'r>);

impl rows::Columns for Shifted<'_, '_> {
    fn int(&self, i: usize) -> Result<Option<i64>> {
        rows::Columns::int(self.0, i + 1)
    }
    fn text(&self, i: usize) -> Result<Option<String>> {
        rows::Columns::text(self.0, i + 1)
    }
    fn real(&self, i: usize) -> Result<Option<f64>> {
        rows::Columns::real(self.0, i + 1)
    }
    fn flag(&self, i: usize) -> Result<bool> {
        rows::Columns::flag(self.0, i + 1)
    }
}
