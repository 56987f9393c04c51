//! The per-batch spans (migration 5) the ledger's time-range reads go through: whatever
//! order the rows' times come in, after retention and after the migration of a table that
//! had rows, a read selects exactly the rows a scan of the table for that range would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;
use sluice_core::usage::Usage;

use super::super::migrate::migrate;
use super::super::{Backend, SpendGroup, UsageRecord};
use super::{Sqlite, SqliteSchema, MIGRATIONS};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-span-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn record(i: u64, ts_ms: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("r{i}"),
        ts_ms,
        key_id: Some(Arc::from(if i.is_multiple_of(3) { "k0" } else { "k1" })),
        team: None,
        model: Arc::from("m"),
        deployment: None,
        usage: Usage {
            input_tokens: i,
            ..Usage::default()
        },
        cost_micros: i,
        status: 200,
        latency_ms: 1,
        cache: None,
        saved_micros: 0,
    }
}

/// The rows of `[from, to)` as a scan of the table selects them: by time, then by `seq`.
fn scan(db: &Path, from: u64, to: u64) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT request_id FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY ts_ms, seq",
        )
        .unwrap();
    let ids = stmt
        .query_map([from as i64, to as i64], |r| r.get::<_, String>(0))
        .unwrap();
    ids.map(|i| i.unwrap()).collect()
}

/// The spend report by day of `[from, to)` as a scan of the table makes it: the day and its
/// request count, most expensive first.
fn scan_days(db: &Path, from: u64, to: u64) -> Vec<(String, u64)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT CAST(ts_ms / 86400000 AS TEXT), COUNT(*) FROM ledger \
             WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY 1 ORDER BY SUM(cost_micros) DESC, 1",
        )
        .unwrap();
    let days = stmt
        .query_map([from as i64, to as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    days.map(|d| d.unwrap()).collect()
}

/// Every range over `lo..hi` (in steps) reads what a scan reads, and spend counts it alike.
fn reads_match_a_scan(store: &Sqlite, db: &Path, lo: u64, hi: u64, step: usize) {
    for from in (lo..hi).step_by(step) {
        for to in (from..=hi).step_by(step) {
            let want = scan(db, from, to);
            for limit in [1, 7, 64, 100_000] {
                let got: Vec<String> = store
                    .ledger(from, to, limit)
                    .unwrap()
                    .into_iter()
                    .map(|r| r.request_id)
                    .collect();
                let n = limit.min(want.len());
                assert_eq!(got, want[..n], "ledger({from}, {to}, {limit})");
            }
            let by_day: Vec<(String, u64)> = store
                .spend_by(SpendGroup::Day, from, to)
                .unwrap()
                .into_iter()
                .map(|r| (r.group, r.requests))
                .collect();
            assert_eq!(
                by_day,
                scan_days(db, from, to),
                "spend_by(Day, {from}, {to})"
            );
            let counted: u64 = store
                .spend_by(SpendGroup::Key, from, to)
                .unwrap()
                .iter()
                .map(|r| r.requests)
                .sum();
            assert_eq!(counted, want.len() as u64, "spend_by({from}, {to})");
        }
    }
}

#[test]
fn out_of_order_batches_read_as_a_scan_of_the_table_would() {
    let d = dir("order");
    let db = d.join("ledger.db");
    let store = Sqlite::open(&db, false).unwrap();
    let mut i = 0;
    let mut batch = |n: u64, ts: &dyn Fn(u64) -> u64| {
        let rows: Vec<UsageRecord> = (0..n).map(|k| record(i + k, ts(k))).collect();
        i += n;
        store.insert_usage(&rows).unwrap();
    };
    // A live batch with its times shuffled, a spill replay of older rows, one of a single
    // row, overlapping and later ones.
    batch(100, &|k| 1_000 + (k * 37) % 100);
    batch(40, &|k| 500 + k * 3);
    batch(1, &|_| 1_050);
    batch(77, &|k| 1_080 + (k * 13) % 60);
    batch(5, &|k| 2_000 - k);
    reads_match_a_scan(&store, &db, 450, 2_010, 97);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn retention_keeps_the_spans_true_even_when_it_removes_the_newest_rows() {
    let d = dir("retention");
    let db = d.join("ledger.db");
    let store = Sqlite::open(&db, false).unwrap();
    let live: Vec<UsageRecord> = (0..50).map(|i| record(i, 1_000 + i)).collect();
    store.insert_usage(&live).unwrap();
    // Replayed last: old rows, the highest `seq`s, half of them below the cut.
    let old: Vec<UsageRecord> = (50..80)
        .map(|i| record(i, 800 + ((i + 1) % 2) * 300))
        .collect();
    store.insert_usage(&old).unwrap();
    assert_eq!(store.delete_ledger_before(1_010).unwrap(), 10 + 15);
    // The removed `seq`s are given out again: the next batch is read once, not twice.
    let next: Vec<UsageRecord> = (80..120).map(|i| record(i, 1_020 + i)).collect();
    store.insert_usage(&next).unwrap();
    assert_eq!(store.ledger_count().unwrap(), 40 + 15 + 40);
    reads_match_a_scan(&store, &db, 0, 1_200, 53);
    assert_eq!(store.ledger(0, u64::MAX, 1_000).unwrap().len(), 95);
    // Everything gone: no span is left to claim the next rows.
    store.delete_ledger_before(u64::MAX >> 2).unwrap();
    let spans: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM ledger_span", [], |r| r.get(0))
        .unwrap();
    assert_eq!(spans, 0);
    store.insert_usage(&[record(500, 5)]).unwrap();
    assert_eq!(store.ledger(0, 10, 10).unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_migration_gives_rows_written_before_it_their_spans() {
    let d = dir("migration");
    let db = d.join("ledger.db");
    {
        let conn = Connection::open(&db).unwrap();
        migrate(&mut SqliteSchema(&conn), &MIGRATIONS[..4]).unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO ledger (request_id, ts_ms, key_id, model, input_tokens, \
                 output_tokens, cached_tokens, reasoning_tokens, estimated, cost_micros, \
                 status, latency_ms) VALUES (?1, ?2, 'k0', 'm', 1, 1, 0, 0, 0, 1, 200, 1)",
            )
            .unwrap();
        for i in 0..3_000u64 {
            insert
                .execute(rusqlite::params![
                    format!("r{i}"),
                    (5_000 + (i * 7_919) % 3_000) as i64
                ])
                .unwrap();
        }
    }
    let store = Sqlite::open(&db, false).unwrap();
    assert_eq!(store.schema_version().unwrap(), 5);
    reads_match_a_scan(&store, &db, 4_990, 8_010, 757);
    // Rows written after it come after the old ones' spans.
    store.insert_usage(&[record(9_000, 5_001)]).unwrap();
    reads_match_a_scan(&store, &db, 4_990, 8_010, 757);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn overlapping_spans_over_days_with_equal_times_read_as_a_scan_would() {
    let d = dir("overlap");
    let db = d.join("ledger.db");
    let store = Sqlite::open(&db, false).unwrap();
    const DAY: u64 = 86_400_000;
    // 40 batches whose times each reach into the next batches' (workers' records arrive out
    // of order), many rows sharing a time, across three days; then a replay of old rows.
    let mut i = 0;
    for b in 0..40u64 {
        let rows: Vec<UsageRecord> = (0..23u64)
            .map(|k| {
                let ts = DAY - 3_000 + b * 150 + (k * 7) % 400 / 50 * 50;
                i += 1;
                record(i, ts)
            })
            .collect();
        store.insert_usage(&rows).unwrap();
    }
    let late: Vec<UsageRecord> = (0..30u64)
        .map(|k| record(1_000 + k, DAY - 2_000 + k))
        .collect();
    store.insert_usage(&late).unwrap();
    let far: Vec<UsageRecord> = (0..9u64).map(|k| record(2_000 + k, 2 * DAY + k)).collect();
    store.insert_usage(&far).unwrap();
    reads_match_a_scan(&store, &db, DAY - 3_100, DAY + 3_300, 331);
    reads_match_a_scan(&store, &db, 0, 3 * DAY, (DAY / 2) as usize);
    let old = scan(&db, 0, DAY - 1_000).len() as u64;
    assert_eq!(store.delete_ledger_before(DAY - 1_000).unwrap(), old);
    reads_match_a_scan(&store, &db, DAY - 3_100, DAY + 3_300, 331);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_short_listing_over_a_wide_range_of_a_large_ledger_reads_a_bounded_number_of_rows() {
    let d = dir("bounded");
    let db = d.join("ledger.db");
    let store = Sqlite::open(&db, false).unwrap();
    // 200 batches of 500 rows, one a second, each batch's times out of order and reaching
    // 300 ms into the next one's.
    for b in 0..200u64 {
        let rows: Vec<UsageRecord> = (0..500u64)
            .map(|k| record(b * 500 + k, 10_000 + b * 1_000 + (k * 211) % 1_300))
            .collect();
        store.insert_usage(&rows).unwrap();
    }
    let conn = Connection::open(&db).unwrap();
    for (from, to) in [(0, u64::MAX >> 2), (10_000, 300_000), (95_500, 1 << 40)] {
        let want = scan(&db, from, to);
        assert!(want.len() > 10_000, "{from}..{to}: {}", want.len());
        let listing = super::listing::ledger(&conn, from, to, 10).unwrap();
        let got: Vec<String> = listing.records.into_iter().map(|r| r.request_id).collect();
        assert_eq!(got, want[..10]);
        // The first batch or two that may hold the range's oldest rows, not the 100,000.
        assert!(
            listing.rows_visited <= 1_500,
            "{from}..{to}: {} rows",
            listing.rows_visited
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}
