//! The migration runner on SQLite, with made-up migration lists, and the ledger writer over a
//! backend that fails on demand. The store's behaviour, backend by backend, is tested in
//! `proxy/tests/store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use sluice_core::keys::{KeyRecord, TeamRecord};
use sluice_core::usage::Usage;

use super::ledger::RELEASE_AFTER_IDLE;
use super::migrate::{check_list, latest, migrate, Migration};
use super::sqlite::listing::SPANS_BY_START;
use super::sqlite::{spend_by_sql, SqliteSchema, MIGRATIONS};
use super::{
    AuditRecord, Backend, LedgerHandle, LedgerSender, LedgerWriter, Result, Scope, SpendGroup,
    SpendRow, StoreError, UsageRecord, WriterOptions, WriterReport,
};

const V1: Migration = Migration {
    version: 1,
    name: "a",
    sql: "CREATE TABLE a (x INTEGER);",
};
const V2: Migration = Migration {
    version: 2,
    name: "b",
    sql: "CREATE TABLE b (y TEXT); INSERT INTO a (x) VALUES (1);",
};
const V3: Migration = Migration {
    version: 3,
    name: "a.z",
    sql: "ALTER TABLE a ADD COLUMN z TEXT NOT NULL DEFAULT 'zed';",
};
/// Its first statement works, its second does not.
const V4_BAD: Migration = Migration {
    version: 4,
    name: "half done",
    sql: "CREATE TABLE c (w INTEGER); INSERT INTO no_such_table VALUES (1);",
};

fn version(conn: &Connection) -> u32 {
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    u32::try_from(v).unwrap()
}

fn has_table(conn: &Connection, name: &str) -> bool {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        == 1
}

#[test]
fn empty_database_reaches_the_latest_version_and_stays_there() {
    let conn = Connection::open_in_memory().unwrap();
    let list = [V1, V2, V3];
    assert_eq!(migrate(&mut SqliteSchema(&conn), &list).unwrap(), 3);
    assert_eq!(version(&conn), 3);
    assert!(has_table(&conn, "a") && has_table(&conn, "b"));
    // Again: nothing to do, nothing run twice (V2's insert would add a second row).
    assert_eq!(migrate(&mut SqliteSchema(&conn), &list).unwrap(), 3);
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
}

#[test]
fn an_older_database_gets_only_the_newer_migrations() {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&mut SqliteSchema(&conn), &[V1, V2]).unwrap();
    conn.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
    assert_eq!(migrate(&mut SqliteSchema(&conn), &[V1, V2, V3]).unwrap(), 3);
    let z: String = conn
        .query_row("SELECT z FROM a WHERE x = 7", [], |r| r.get(0))
        .unwrap();
    assert_eq!(z, "zed");
}

#[test]
fn a_failed_migration_rolls_back_whole() {
    let conn = Connection::open_in_memory().unwrap();
    let err = migrate(&mut SqliteSchema(&conn), &[V1, V2, V3, V4_BAD]).unwrap_err();
    match &err {
        StoreError::Migration { version, name, .. } => {
            assert_eq!((*version, *name), (4, "half done"));
        }
        other => panic!("not a migration error: {other:?}"),
    }
    assert!(err.to_string().contains("migration 4 (half done) failed"));
    // The ones before it stay; its first statement is undone with it.
    assert_eq!(version(&conn), 3);
    assert!(!has_table(&conn, "c"));
    assert!(conn.is_autocommit(), "no transaction left open");
    // Fixed in a later binary: it applies.
    let fixed = Migration {
        sql: "CREATE TABLE c (w INTEGER);",
        ..V4_BAD
    };
    assert_eq!(
        migrate(&mut SqliteSchema(&conn), &[V1, V2, V3, fixed]).unwrap(),
        4
    );
    assert!(has_table(&conn, "c"));
}

#[test]
fn a_newer_database_is_refused_untouched() {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&mut SqliteSchema(&conn), &[V1, V2, V3]).unwrap();
    let err = migrate(&mut SqliteSchema(&conn), &[V1, V2]).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 3, known: 2 }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("version 3") && msg.contains("version 2"),
        "{msg}"
    );
    assert_eq!(version(&conn), 3);
}

#[test]
fn migration_lists_are_numbered_without_gaps() {
    check_list(MIGRATIONS).unwrap();
    assert_eq!(latest(MIGRATIONS), MIGRATIONS.len() as u32);
    assert_eq!(latest(&[]), 0);
    assert!(check_list(&[V1, V3]).is_err());
    assert!(check_list(&[V2]).is_err());
    let conn = Connection::open_in_memory().unwrap();
    assert!(matches!(
        migrate(&mut SqliteSchema(&conn), &[V1, V3]),
        Err(StoreError::BadValue(_))
    ));
    assert_eq!(version(&conn), 0);
}

#[test]
fn spend_by_day_sums_runs_and_interleaved_rows_alike() {
    // Runs of one key, then keys, teams and days interleaved, rows without cost or key.
    let day = 86_400_000;
    let rows: Vec<UsageRecord> = [
        ("a", Some("t"), 0, 5),
        ("a", Some("t"), 1, 7),
        ("b", Some("t"), 2, 11),
        ("a", Some("u"), day, 13),
        ("a", Some("t"), 3, 0),
        ("b", None, 4, 17),
        ("a", Some("t"), 5, u64::MAX),
    ]
    .into_iter()
    .map(|(key, team, ts, cost)| UsageRecord {
        ts_ms: ts,
        key_id: Some(Arc::from(key)),
        team: team.map(Arc::from),
        cost_micros: cost,
        ..record(0)
    })
    .collect();
    let got = super::spend_by_day(&rows);
    let want: HashMap<(Scope, &str, u64), u64> = [
        ((Scope::Key, "a", 0), u64::MAX),
        ((Scope::Key, "b", 0), 28),
        ((Scope::Key, "a", 86_400), 13),
        ((Scope::Team, "t", 0), u64::MAX),
        ((Scope::Team, "u", 86_400), 13),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}

#[test]
fn ledger_rows_read_back_whole_whether_their_names_are_shared_or_not() {
    // 32 rows of one key and model that went alike (one statement binds the names, status,
    // cache and the zero counts once), 32 alike but for their deployments, 8 alike but for
    // one status, then mixed runs and a remainder: every row back as it went in.
    let dir = spill_dir("shared-names");
    let db = super::sqlite::Sqlite::open(&dir.join("ledger.db"), false).unwrap();
    let shared = (
        Arc::<str>::from("key_a"),
        Arc::<str>::from("team"),
        Arc::<str>::from("gpt"),
    );
    let mut rows = Vec::new();
    for i in 0..101u64 {
        let mut r = record(i);
        r.usage = Usage {
            input_tokens: i,
            output_tokens: 2 * i,
            cached_tokens: i / 3,
            reasoning_tokens: i / 5,
            estimated: i % 7 == 0,
            // Not a ledger column: 0 both ways.
            ..Usage::default()
        };
        r.latency_ms = i * 11;
        r.saved_micros = i * 13;
        r.status = 200 + (i % 3) as u16;
        match i {
            0..32 => {
                r.key_id = Some(shared.0.clone());
                r.team = Some(shared.1.clone());
                r.model = shared.2.clone();
                r.deployment = Some(Arc::from("openai/gpt"));
                r.usage.cached_tokens = 3;
                r.usage.reasoning_tokens = 0;
                r.usage.estimated = false;
                r.status = 200;
                r.cache = Some("miss");
                r.saved_micros = 0;
            }
            64..72 => {
                r.key_id = Some(shared.0.clone());
                r.team = Some(shared.1.clone());
                r.model = shared.2.clone();
                r.deployment = None;
                r.usage.cached_tokens = 0;
                r.usage.reasoning_tokens = 5;
                r.usage.estimated = true;
                r.status = if i == 70 { 429 } else { 200 };
                r.cache = None;
                r.saved_micros = 7;
            }
            32..64 => {
                // Equal text in distinct allocations; the deployment differs on one row.
                r.key_id = Some(Arc::from("key_a"));
                r.team = None;
                r.model = Arc::from("gpt");
                r.deployment = (i != 50).then(|| Arc::from("openai/gpt"));
            }
            _ => {
                r.key_id = (i % 4 != 0).then(|| Arc::from(format!("key_{}", i / 9).as_str()));
                r.team = (i % 2 == 0).then(|| Arc::from("t"));
                r.model = Arc::from(if i < 90 { "gpt" } else { "claude" });
                r.deployment = (i % 5 != 0).then(|| Arc::from("p/m"));
            }
        }
        rows.push(r);
    }
    db.insert_usage(&rows).unwrap();
    let back = db.ledger(0, u64::MAX, 1_000).unwrap();
    assert_eq!(back, rows);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `EXPLAIN QUERY PLAN` of `sql`, its lines joined.
fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let args = rusqlite::params_from_iter(0..stmt.parameter_count() as i64);
    let lines = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
    lines.map(|l| l.unwrap()).collect::<Vec<_>>().join("; ")
}

#[test]
fn ledger_reads_go_through_the_spans_and_the_table_keeps_no_index() {
    // Version 4 dropped the per-key and per-team indexes, version 5 `ledger_ts`: every ledger
    // read finds the batches' spans that overlap its range, then reads their `seq` ranges,
    // however it groups.
    let conn = Connection::open_in_memory().unwrap();
    migrate(&mut SqliteSchema(&conn), MIGRATIONS).unwrap();
    let groups = [
        SpendGroup::Key,
        SpendGroup::Team,
        SpendGroup::Model,
        SpendGroup::Deployment,
        SpendGroup::Day,
    ];
    for sql in groups.map(spend_by_sql) {
        let p = plan(&conn, &sql);
        assert!(
            p.contains("SEARCH s USING ")
                && p.contains("SEARCH ledger USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{sql}: {p}"
        );
    }
    // The listing walks the spans in time order from the index alone, with no sort to wait
    // for (it stops early), then reads a span's rows by `seq`.
    let p = plan(&conn, SPANS_BY_START);
    assert!(
        p.contains("USING COVERING INDEX ledger_span_start (min_ts<?)") && !p.contains("TEMP"),
        "{p}"
    );
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ledger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|n| n.unwrap())
        .collect();
    assert!(indexes.is_empty(), "{indexes:?}");
}

/// A backend for the writer alone: `insert_usage` fails while `fails_left` > 0, then keeps
/// what it is given; nothing else is called.
struct Flaky {
    fails_left: Mutex<u32>,
    /// While set, every insert fails (a database that is down).
    down: Arc<AtomicBool>,
    rows: Arc<Mutex<Vec<UsageRecord>>>,
    /// Times the writer gave the backend's memory back.
    released: Arc<AtomicU64>,
}

impl Backend for Flaky {
    fn location(&self) -> String {
        "flaky".into()
    }
    fn schema_version(&self) -> Result<u32> {
        Ok(1)
    }
    fn release_memory(&self) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
    fn create_key(&self, _: &KeyRecord) -> Result<()> {
        unimplemented!()
    }
    fn update_key(&self, _: &KeyRecord) -> Result<()> {
        unimplemented!()
    }
    fn delete_key(&self, _: &str) -> Result<()> {
        unimplemented!()
    }
    fn get_key(&self, _: &str) -> Result<Option<KeyRecord>> {
        unimplemented!()
    }
    fn find_key_by_hash(&self, _: &str) -> Result<Option<KeyRecord>> {
        unimplemented!()
    }
    fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        unimplemented!()
    }
    fn keys_of_team(&self, _: &str) -> Result<Vec<KeyRecord>> {
        unimplemented!()
    }
    fn create_team(&self, _: &TeamRecord) -> Result<()> {
        unimplemented!()
    }
    fn update_team(&self, _: &TeamRecord) -> Result<()> {
        unimplemented!()
    }
    fn delete_team(&self, _: &str) -> Result<()> {
        unimplemented!()
    }
    fn get_team(&self, _: &str) -> Result<Option<TeamRecord>> {
        unimplemented!()
    }
    fn all_teams(&self) -> Result<Vec<TeamRecord>> {
        unimplemented!()
    }
    fn spend_totals_since(&self, _: Scope, _: u64) -> Result<HashMap<String, u64>> {
        unimplemented!()
    }
    fn insert_audit(&self, _: &AuditRecord) -> Result<()> {
        unimplemented!()
    }
    fn audit(&self, _: u64, _: u64, _: usize) -> Result<Vec<AuditRecord>> {
        unimplemented!()
    }
    fn spend_since(&self, _: Scope, _: &str, _: u64) -> Result<u64> {
        unimplemented!()
    }
    fn spend_by(&self, _: SpendGroup, _: u64, _: u64) -> Result<Vec<SpendRow>> {
        unimplemented!()
    }
    fn ledger(&self, _: u64, _: u64, _: usize) -> Result<Vec<UsageRecord>> {
        unimplemented!()
    }
    fn ledger_count(&self) -> Result<u64> {
        unimplemented!()
    }
    fn delete_ledger_before(&self, _: u64) -> Result<u64> {
        unimplemented!()
    }
    fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::BadValue("connection refused".into()));
        }
        // Request id "poison" is a record the database will never take (a constraint).
        if batch.iter().any(|r| r.request_id == "poison") {
            return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                None,
            )));
        }
        let mut left = self.fails_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(StoreError::BadValue("disk on fire".into()));
        }
        self.rows.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
}

fn record(i: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("r{i}"),
        ts_ms: 1_000 + i,
        key_id: Some(Arc::from("k")),
        team: None,
        model: Arc::from("m"),
        deployment: None,
        usage: Usage::default(),
        cost_micros: i,
        status: 200,
        latency_ms: 1,
        cache: i.is_multiple_of(2).then_some("miss"),
        saved_micros: 0,
    }
}

fn flaky_writer(fails: u32) -> (LedgerSender, LedgerHandle, Arc<Mutex<Vec<UsageRecord>>>) {
    let (tx, handle, rows) = flaky_writer_with(
        fails,
        Arc::new(AtomicBool::new(false)),
        WriterOptions {
            flush_interval: Duration::from_millis(5),
            ..WriterOptions::default()
        },
    );
    (tx, handle, rows)
}

fn flaky_writer_with(
    fails: u32,
    down: Arc<AtomicBool>,
    opts: WriterOptions,
) -> (LedgerSender, LedgerHandle, Arc<Mutex<Vec<UsageRecord>>>) {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let backend = Flaky {
        fails_left: Mutex::new(fails),
        down,
        rows: rows.clone(),
        released: Arc::default(),
    };
    let (tx, handle) =
        LedgerWriter::spawn_on(move || Ok(Box::new(backend) as Box<dyn Backend>), opts).unwrap();
    (tx, handle, rows)
}

#[test]
fn an_idle_writer_gives_memory_back_once_and_keeps_writing() {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let released = Arc::new(AtomicU64::new(0));
    let backend = Flaky {
        fails_left: Mutex::new(0),
        down: Arc::new(AtomicBool::new(false)),
        rows: rows.clone(),
        released: released.clone(),
    };
    let opts = WriterOptions {
        flush_interval: Duration::from_millis(5),
        ..WriterOptions::default()
    };
    let (tx, handle) =
        LedgerWriter::spawn_on(move || Ok(Box::new(backend) as Box<dyn Backend>), opts).unwrap();
    // Nothing written yet: nothing to give back.
    std::thread::sleep(RELEASE_AFTER_IDLE + Duration::from_millis(300));
    assert_eq!(released.load(Ordering::SeqCst), 0);
    tx.record(record(1)).unwrap();
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    // A busy spell, then quiet: given back once (bounded wait, no timing asserted).
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while released.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(released.load(Ordering::SeqCst), 1);
    std::thread::sleep(RELEASE_AFTER_IDLE + Duration::from_millis(300));
    assert_eq!(
        released.load(Ordering::SeqCst),
        1,
        "not again while nothing came"
    );
    // And the writer still writes.
    tx.record(record(2)).unwrap();
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert_eq!(rows.lock().unwrap().len(), 2);
    drop(tx);
    handle.join();
}

#[test]
fn the_writer_keeps_a_failed_batch_and_retries_it() {
    let (tx, handle, rows) = flaky_writer(2);
    for i in 0..10 {
        tx.record(record(i)).unwrap();
    }
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert_eq!(tx.committed(), 10);
    assert_eq!(tx.failed_commits(), 2);
    assert_eq!(tx.pending(), 0);
    let got: Vec<u64> = rows.lock().unwrap().iter().map(|r| r.cost_micros).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "in order, once each");
    drop(tx);
    assert_eq!(
        handle.join(),
        WriterReport {
            committed: 10,
            lost: 0
        }
    );
}

#[test]
fn the_writer_gives_up_at_shutdown_and_counts_the_loss() {
    let (tx, handle, rows) = flaky_writer(u32::MAX);
    for i in 0..3 {
        tx.record(record(i)).unwrap();
    }
    drop(tx);
    assert_eq!(
        handle.join(),
        WriterReport {
            committed: 0,
            lost: 3
        }
    );
    assert!(rows.lock().unwrap().is_empty());
}

#[test]
fn a_backend_that_cannot_open_fails_the_spawn() {
    let err = LedgerWriter::spawn_on(
        || Err(StoreError::SchemaTooNew { found: 9, known: 1 }),
        WriterOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(
        err,
        StoreError::SchemaTooNew { found: 9, known: 1 }
    ));
}

/// A fresh directory for a spill file.
fn spill_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-spill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn while_the_store_is_down_records_queue_then_spill_and_all_land_once_in_order() {
    let dir = spill_dir("outage");
    let down = Arc::new(AtomicBool::new(true));
    let (tx, handle, rows) = flaky_writer_with(
        0,
        down.clone(),
        WriterOptions {
            flush_interval: Duration::from_millis(5),
            max_batch: 16,
            backlog_records: 100,
            spill_path: Some(dir.join("ledger.spill")),
            ..WriterOptions::default()
        },
    );
    for i in 0..1_000 {
        // Never refused: the channel keeps draining into the backlog.
        tx.record(record(i)).unwrap();
    }
    assert!(wait_until(|| tx.backlog() == 1_000));
    assert!(tx.store_down());
    assert_eq!(tx.spilled(), 900, "past the memory bound, to disk");
    assert_eq!(tx.committed(), 0);
    assert!(
        !tx.flush_and_wait(Duration::from_millis(100)),
        "nothing committed yet"
    );

    down.store(false, Ordering::SeqCst);
    assert!(tx.flush_and_wait(Duration::from_secs(20)));
    assert!(!tx.store_down());
    assert_eq!((tx.committed(), tx.backlog(), tx.rejected()), (1_000, 0, 0));
    let got: Vec<u64> = rows.lock().unwrap().iter().map(|r| r.cost_micros).collect();
    assert_eq!(got, (0..1_000).collect::<Vec<_>>(), "in order, once each");
    drop(tx);
    assert_eq!(handle.join().lost, 0);
    assert!(!dir.join("ledger.spill").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_writer_stopped_during_an_outage_spills_and_the_next_one_replays() {
    let dir = spill_dir("restart");
    let opts = WriterOptions {
        flush_interval: Duration::from_millis(5),
        backlog_records: 10,
        spill_path: Some(dir.join("ledger.spill")),
        ..WriterOptions::default()
    };
    let (tx, handle, rows) = flaky_writer_with(0, Arc::new(AtomicBool::new(true)), opts.clone());
    for i in 0..50 {
        tx.record(record(i)).unwrap();
    }
    drop(tx);
    assert_eq!(
        handle.join(),
        WriterReport {
            committed: 0,
            lost: 0
        }
    );
    assert!(rows.lock().unwrap().is_empty());

    // The next start, with the database back: the spilled records land first.
    let (tx, handle, rows) = flaky_writer_with(0, Arc::new(AtomicBool::new(false)), opts);
    tx.record(record(50)).unwrap();
    assert!(tx.flush_and_wait(Duration::from_secs(20)));
    let mut got: Vec<u64> = rows.lock().unwrap().iter().map(|r| r.cost_micros).collect();
    got.sort_unstable();
    assert_eq!(got, (0..51).collect::<Vec<_>>());
    drop(tx);
    handle.join();
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "spill files removed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Polls `f` for up to 20 s.
fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn a_record_the_store_refuses_is_set_aside_and_the_rest_commits() {
    let dir = spill_dir("refused");
    let (tx, handle, rows) = flaky_writer_with(
        0,
        Arc::new(AtomicBool::new(false)),
        WriterOptions {
            flush_interval: Duration::from_secs(30),
            spill_path: Some(dir.join("ledger.spill")),
            ..WriterOptions::default()
        },
    );
    for i in 0..1_000 {
        let mut r = record(i);
        if i == 500 {
            r.request_id = "poison".into();
        }
        tx.record(r).unwrap();
    }
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert!(
        !tx.store_down(),
        "a refused record does not take the store down"
    );
    assert_eq!((tx.committed(), tx.refused(), tx.pending()), (999, 1, 0));
    let got: Vec<u64> = rows.lock().unwrap().iter().map(|r| r.cost_micros).collect();
    let want: Vec<u64> = (0..1_000).filter(|&i| i != 500).collect();
    assert_eq!(got, want, "in order, once each");
    let kept = std::fs::read_to_string(dir.join("ledger.spill.refused")).unwrap();
    assert_eq!(kept.lines().count(), 1);
    assert!(kept.contains("\"request_id\":\"poison\""), "{kept}");
    drop(tx);
    assert_eq!(handle.join().lost, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_sqlite_refusal_inside_a_statement_of_many_rows_undoes_the_batch_and_the_writer_sets_it_aside()
{
    // The ledger's INSERTs are `OR ROLLBACK`: a row refused in the middle of a 64-row
    // statement ends the whole transaction. Nothing of the batch (rows or spend) stays, the
    // connection keeps working, and the writer's halving still finds the one refused row.
    let dir = spill_dir("sqlite-refusal");
    let path = dir.join("ledger.db");
    drop(super::sqlite::Sqlite::open(&path, false).unwrap());
    // A rule the ledger does not have, so that one row can break it.
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE UNIQUE INDEX one_id ON ledger(request_id)")
        .unwrap();
    let db = super::sqlite::Sqlite::open(&path, false).unwrap();
    let mut batch: Vec<UsageRecord> = (0..150).map(record).collect();
    for r in &mut batch {
        // One verdict for all: statements of rows that share their columns.
        r.cache = None;
    }
    batch[100].request_id = "r3".into();
    let e = db.insert_usage(&batch).unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert_eq!(db.ledger_count().unwrap(), 0);
    assert_eq!(db.spend_since(Scope::Key, "k", 0).unwrap(), 0);
    db.insert_usage(&batch[..100]).unwrap();
    assert_eq!(db.ledger_count().unwrap(), 100);
    drop(db);

    let (tx, handle) = LedgerWriter::spawn_with(
        &path,
        WriterOptions {
            flush_interval: Duration::from_secs(30),
            spill_path: Some(dir.join("ledger.spill")),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for r in &batch[100..] {
        tx.record(r.clone()).unwrap();
    }
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert_eq!(
        (tx.committed(), tx.refused(), tx.store_down()),
        (49, 1, false)
    );
    drop(tx);
    assert_eq!(handle.join().lost, 0);
    let db = super::sqlite::Sqlite::open(&path, false).unwrap();
    let back = db.ledger(0, u64::MAX, 1_000).unwrap();
    let want: Vec<&UsageRecord> = batch.iter().take(100).chain(&batch[101..]).collect();
    assert_eq!(back.iter().collect::<Vec<_>>(), want);
    let spent: u64 = want.iter().map(|r| r.cost_micros).sum();
    assert_eq!(db.spend_since(Scope::Key, "k", 0).unwrap(), spent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_database_file_gets_8_kib_pages_and_an_old_one_keeps_its_own() {
    let dir = spill_dir("page-size");
    let page_size = |db: &std::path::Path| -> i64 {
        let conn = Connection::open(db).unwrap();
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let new = dir.join("new.db");
    drop(super::sqlite::Sqlite::open(&new, false).unwrap());
    assert_eq!(page_size(&new), 8_192);
    let old = dir.join("old.db");
    Connection::open(&old)
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x INTEGER);")
        .unwrap();
    drop(super::sqlite::Sqlite::open(&old, false).unwrap());
    assert_eq!(page_size(&old), 4_096);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_after_a_commit_are_committed_and_an_idle_writer_still_wakes() {
    // What comes right after a batch commits without a flush, and after an idle spell the
    // next record wakes the writer again.
    let (tx, handle, rows) = flaky_writer(0);
    for i in 0..3 {
        if i == 2 {
            std::thread::sleep(Duration::from_millis(100));
        }
        tx.record(record(i)).unwrap();
        assert!(wait_until(|| tx.committed() == i + 1), "record {i}");
    }
    assert_eq!(rows.lock().unwrap().len(), 3);
    drop(tx);
    assert_eq!(handle.join().lost, 0);
}
