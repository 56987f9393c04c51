//! The store's test suite, written once over a [`Fixture`] and run for every backend:
//! `store_suite!(sqlite, SqliteFixture::new);` in `proxy/tests/store.rs` runs every case
//! below on SQLite, and a new backend adds one such line.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::keys::{format_key, hash_hex, KeyRecord, Limits, TeamRecord};
use sluice_core::limits::{period_start, BudgetPeriod};
mod records;
pub use records::{key_record, team_record, usage_record, T0_MS};

use sluice_proxy::store::{
    AuditRecord, LedgerHandle, LedgerSender, Scope, SpendGroup, Store, StoreError, WriterOptions,
};

/// One fresh, empty database of one backend, for one test case.
pub trait Fixture {
    /// Opens a new connection to the store (migrating it, as the gateway does).
    fn open(&self) -> Result<Store, StoreError>;
    /// Starts a ledger writer on its own connection to the same store.
    fn writer(&self, opts: WriterOptions) -> Result<(LedgerSender, LedgerHandle), StoreError>;
    /// The latest schema version this binary knows for the backend.
    fn latest_version(&self) -> u32;
    /// Records `version` as the database's schema version, behind the store's back.
    fn set_schema_version(&self, version: u32);
    /// Migrates the empty database up to `version` only: the schema an older Sluice left.
    fn migrate_to(&self, version: u32);
    /// Runs `sql` (statements both backends understand) behind the store's back.
    fn execute(&self, sql: &str);
    /// The names of the indexes on `table`, sorted.
    fn indexes(&self, table: &str) -> Vec<String>;
    /// Whether text columns keep a NUL byte (SQLite) or turn it into U+FFFD (PostgreSQL).
    fn keeps_nul(&self) -> bool {
        true
    }
}

/// Generates `mod $backend` with one `#[test]` per case of the suite; `$new` makes a
/// [`Fixture`] from the case's name (`fn(&str) -> impl Fixture`).
macro_rules! store_suite {
    ($backend:ident, $new:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            store_suite!(@cases $new;
                crud_round_trip,
                limit_columns_round_trip,
                ledger_writer_commits_a_lone_record_at_its_flush_interval,
                restart_keeps_keys_and_spend,
                ten_thousand_records_from_several_threads_all_land,
                flush_and_wait_and_closed_writer,
                a_new_store_is_at_the_latest_schema,
                reopening_is_idempotent,
                a_newer_schema_is_refused,
                version_3_store_loses_the_unused_ledger_indexes_and_keeps_its_rows,
                retention_removes_old_rows_and_keeps_spend,
                strings_from_clients_never_poison_a_batch,
                audit_log_round_trip,
            );
        }
    };
    (@cases $new:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = ($new)(stringify!($case));
                crate::store_suite::$case(&fixture);
            }
        )*
    };
}

/// One case of the suite.
pub fn crud_round_trip(f: &dyn Fixture) {
    let store = f.open().unwrap();

    let team = team_record("core");
    store.create_team(&team).unwrap();
    assert!(matches!(
        store.create_team(&team),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_team("core").unwrap(), Some(team.clone()));
    let team2 = TeamRecord {
        limits: Limits {
            tpm: Some(5),
            budget_period: BudgetPeriod::Daily,
            ..team.limits
        },
        ..team.clone()
    };
    store.update_team(&team2).unwrap();
    assert_eq!(store.get_team("core").unwrap(), Some(team2.clone()));
    store.create_team(&team_record("alpha")).unwrap();
    let names: Vec<_> = store
        .list_teams()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["alpha", "core"]);
    store.delete_team("alpha").unwrap();
    assert!(matches!(
        store.delete_team("alpha"),
        Err(StoreError::NotFound("team"))
    ));
    assert!(matches!(
        store.update_team(&team_record("ghost")),
        Err(StoreError::NotFound("team"))
    ));

    let key_a = format_key(&[1; 32]);
    let key_b = format_key(&[2; 32]);
    let a = key_record("key_a", "core", &key_a);
    let b = KeyRecord {
        user: None,
        models: vec![],
        limits: Limits {
            budget_period: BudgetPeriod::Lifetime,
            ..Limits::default()
        },
        expires_at_unix: None,
        metadata: serde_json::Value::Null,
        created_at_unix: 1_700_000_001,
        ..key_record("key_b", "core", &key_b)
    };
    store.create_key(&a).unwrap();
    store.create_key(&b).unwrap();
    assert_eq!(store.get_key("key_a").unwrap(), Some(a.clone()));
    assert_eq!(store.get_key("key_b").unwrap(), Some(b.clone()));
    assert_eq!(store.get_key("nope").unwrap(), None);
    // Same id, or same hash under another id: refused.
    assert!(matches!(store.create_key(&a), Err(StoreError::Conflict(_))));
    let dup_hash = KeyRecord {
        id: "key_c".into(),
        ..a.clone()
    };
    assert!(matches!(
        store.create_key(&dup_hash),
        Err(StoreError::Conflict(_))
    ));

    assert_eq!(
        store.find_key_by_hash(&hash_hex(&key_b)).unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.find_key_by_hash(&hash_hex("sk-sluice-x")).unwrap(),
        None
    );

    let a2 = KeyRecord {
        disabled: true,
        models: vec!["o3".into()],
        metadata: serde_json::json!({"note": "rotated"}),
        ..a.clone()
    };
    store.update_key(&a2).unwrap();
    assert_eq!(store.get_key("key_a").unwrap(), Some(a2.clone()));
    assert_eq!(store.all_keys().unwrap(), vec![a2.clone(), b.clone()]);
    assert_eq!(store.list_keys().unwrap().len(), 2);
    assert_eq!(store.keys_of_team("core").unwrap().len(), 2);
    assert!(store.keys_of_team("other").unwrap().is_empty());

    store.delete_key("key_a").unwrap();
    assert!(matches!(
        store.delete_key("key_a"),
        Err(StoreError::NotFound("key"))
    ));
    assert!(matches!(
        store.update_key(&a2),
        Err(StoreError::NotFound("key"))
    ));
    assert_eq!(store.all_keys().unwrap(), vec![b]);
}

/// One case of the suite: a lone record is committed when its flush interval passes, with
/// no flush asked and no batch filled; and not before (checked with an interval far longer
/// than the test, so a loaded machine cannot make it fail). Bounded waits only: no timing
/// is asserted.
pub fn ledger_writer_commits_a_lone_record_at_its_flush_interval(f: &dyn Fixture) {
    // An interval longer than the test: the record waits, then a flush commits it.
    let (tx, handle) = f
        .writer(WriterOptions {
            flush_interval: Duration::from_secs(3_600),
            ..WriterOptions::default()
        })
        .unwrap();
    tx.record(usage_record(0, "k", "t", 1)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tx.committed(),
        0,
        "committed before its interval or a full batch"
    );
    assert_eq!(tx.pending(), 1);
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert_eq!((tx.committed(), tx.pending()), (1, 0));
    drop(tx);
    assert_eq!(handle.join().committed, 1);

    // The default interval: each lone record lands by itself, no flush asked.
    let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
    for round in 1..=3u64 {
        tx.record(usage_record(round, "k", "t", 1)).unwrap();
        let sent = Instant::now();
        while tx.committed() < round {
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "record {round} never committed without a flush"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(tx.pending(), 0);
    }
    // Acknowledged means readable by another connection.
    let store = f.open().unwrap();
    assert_eq!(store.ledger_count().unwrap(), 4);
    drop(tx);
    let report = handle.join();
    assert_eq!((report.committed, report.lost), (3, 0));
}

/// One case of the suite.
pub fn restart_keeps_keys_and_spend(f: &dyn Fixture) {
    let key = format_key(&[7; 32]);
    let now_s = T0_MS / 1000 + 3_600;
    {
        let store = f.open().unwrap();
        store.create_team(&team_record("core")).unwrap();
        store
            .create_key(&key_record("key_1", "core", &key))
            .unwrap();
        let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
        for i in 0..10 {
            tx.record(usage_record(i, "key_1", "core", 1_500)).unwrap();
        }
        // Yesterday's and last month's spend count in some periods only.
        let mut old = usage_record(100, "key_1", "core", 7);
        old.ts_ms = T0_MS - 86_400_000;
        tx.record(old).unwrap();
        let mut older = usage_record(101, "key_1", "core", 1_000_000);
        older.ts_ms = T0_MS - 20 * 86_400_000;
        tx.record(older).unwrap();
        // A request without a key still lands in the ledger.
        let mut anon = usage_record(102, "x", "y", 50);
        anon.key_id = None;
        anon.team = None;
        tx.record(anon).unwrap();
        drop(tx);
        assert_eq!(handle.join().committed, 13);
    }

    let store = f.open().unwrap();
    let k = store.find_key_by_hash(&hash_hex(&key)).unwrap().unwrap();
    assert_eq!(k, key_record("key_1", "core", &key));
    assert!(k.matches(&key));
    assert_eq!(store.get_team("core").unwrap(), Some(team_record("core")));

    let spend = store.rebuild_spend(now_s).unwrap();
    assert_eq!(
        spend.spend(Scope::Key, "key_1", BudgetPeriod::Daily),
        15_000
    );
    assert_eq!(
        spend.spend(Scope::Key, "key_1", BudgetPeriod::Weekly),
        15_007
    );
    assert_eq!(
        spend.spend(Scope::Team, "core", BudgetPeriod::Monthly),
        15_007
    );
    assert_eq!(
        spend.spend(Scope::Team, "core", BudgetPeriod::Lifetime),
        1_015_007
    );
    assert_eq!(spend.spend(Scope::Key, "nobody", BudgetPeriod::Daily), 0);
    assert_eq!(store.spend_since(Scope::Key, "nobody", 0).unwrap(), 0);
    assert!(store.spend_by(SpendGroup::Key, 0, 1).unwrap().is_empty());
    assert_eq!(
        store
            .spend_since(
                Scope::Key,
                "key_1",
                period_start(BudgetPeriod::Weekly, now_s)
            )
            .unwrap(),
        15_007
    );

    let by_model = store
        .spend_by(SpendGroup::Model, T0_MS - 86_400_000, T0_MS + 86_400_000)
        .unwrap();
    assert_eq!(by_model.len(), 2);
    assert_eq!(by_model.iter().map(|r| r.requests).sum::<u64>(), 12);
    assert_eq!(by_model.iter().map(|r| r.cost_micros).sum::<u64>(), 15_057);
    let by_key = store.spend_by(SpendGroup::Key, 0, u64::MAX).unwrap();
    assert_eq!(by_key[0].group, "key_1");
    assert_eq!(by_key[0].cost_micros, 1_015_007);
    assert_eq!(by_key[0].input_tokens, 1_200);
    assert_eq!(by_key[1].group, "");
    let by_day = store.spend_by(SpendGroup::Day, 0, u64::MAX).unwrap();
    let days: Vec<_> = by_day.iter().map(|r| r.group.as_str()).collect();
    assert_eq!(days, ["2024-02-24", "2024-03-14", "2024-03-15"]);
    let by_team = store.spend_by(SpendGroup::Team, 0, u64::MAX).unwrap();
    assert_eq!(by_team[0].group, "core");
    let by_dep = store.spend_by(SpendGroup::Deployment, 0, u64::MAX).unwrap();
    assert_eq!(by_dep[0].group, "openai-east");

    let rows = store.ledger(T0_MS, T0_MS + 5, 100).unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0], usage_record(0, "key_1", "core", 1_500));

    // A third open (migrations already done) changes nothing.
    drop(store);
    let store = f.open().unwrap();
    assert_eq!(store.ledger_count().unwrap(), 13);
}

/// One case of the suite.
pub fn ten_thousand_records_from_several_threads_all_land(f: &dyn Fixture) {
    let (tx, handle) = f
        .writer(WriterOptions {
            capacity: 1_024,
            ..WriterOptions::default()
        })
        .unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut retries = 0u64;
                for i in 0..1_250u64 {
                    let mut r = usage_record(t * 10_000 + i, &format!("key_{t}"), "core", 3);
                    // A full channel hands the record back; the caller decides. Here: retry.
                    loop {
                        match tx.record(r) {
                            Ok(()) => break,
                            Err(full) => {
                                retries += 1;
                                r = *full.0;
                                std::thread::sleep(Duration::from_micros(200));
                            }
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(tx.rejected(), retries);
    assert_eq!(tx.sent(), 10_000);
    drop(tx);
    let report = handle.join();
    assert_eq!((report.committed, report.lost), (10_000, 0));

    let store = f.open().unwrap();
    assert_eq!(store.ledger_count().unwrap(), 10_000);
    let totals = store.spend_totals_since(Scope::Key, 0).unwrap();
    assert_eq!(totals.len(), 8);
    assert!(totals.values().all(|&v| v == 3 * 1_250));
    assert_eq!(
        store.spend_totals_since(Scope::Team, 0).unwrap()["core"],
        30_000
    );
}

/// One case of the suite.
pub fn flush_and_wait_and_closed_writer(f: &dyn Fixture) {
    let (tx, handle) = f
        .writer(WriterOptions {
            // Long interval: only the flush can make these commit quickly.
            flush_interval: Duration::from_secs(30),
            ..WriterOptions::default()
        })
        .unwrap();
    for i in 0..100 {
        tx.record(usage_record(i, "k", "t", 1)).unwrap();
    }
    assert!(tx.flush_and_wait(Duration::from_secs(5)));
    assert_eq!(tx.committed(), 100);
    assert_eq!(tx.failed_commits(), 0);
    let tx2 = tx.clone();
    drop(tx);
    drop(tx2);
    assert_eq!(handle.join().committed, 100);
}

/// One case of the suite: every limit column, on keys and teams alike, in every period.
pub fn limit_columns_round_trip(f: &dyn Fixture) {
    let store = f.open().unwrap();
    let periods = [
        BudgetPeriod::Daily,
        BudgetPeriod::Weekly,
        BudgetPeriod::Monthly,
        BudgetPeriod::Lifetime,
    ];
    for (i, p) in periods.into_iter().enumerate() {
        let n = i as u64 + 1;
        let team = TeamRecord {
            name: format!("team-{n}"),
            limits: Limits {
                rpm: Some(10 * n),
                tpm: Some(1_000 * n),
                max_concurrency: Some(n as u32),
                budget_usd: Some(0.25 * n as f64),
                budget_period: p,
            },
        };
        store.create_team(&team).unwrap();
        let secret = format_key(&[n as u8; 32]);
        let key = KeyRecord {
            limits: Limits {
                rpm: team.limits.tpm,
                tpm: team.limits.rpm,
                max_concurrency: Some(100 + n as u32),
                budget_usd: Some(1.5 * n as f64),
                budget_period: periods[(i + 1) % periods.len()],
            },
            ..key_record(&format!("key_{n}"), &team.name, &secret)
        };
        store.create_key(&key).unwrap();
        assert_eq!(store.get_team(&team.name).unwrap(), Some(team.clone()));
        assert_eq!(store.get_key(&key.id).unwrap(), Some(key.clone()));

        // Clearing every limit clears every column, on both tables.
        let bare_team = TeamRecord {
            limits: Limits {
                budget_period: team.limits.budget_period,
                ..Limits::default()
            },
            ..team.clone()
        };
        store.update_team(&bare_team).unwrap();
        let bare_key = KeyRecord {
            limits: Limits {
                budget_period: p,
                ..Limits::default()
            },
            ..key.clone()
        };
        store.update_key(&bare_key).unwrap();
        assert_eq!(store.get_team(&team.name).unwrap(), Some(bare_team));
        assert_eq!(store.get_key(&key.id).unwrap(), Some(bare_key));
    }
    assert_eq!(store.all_teams().unwrap().len(), 4);
    assert_eq!(store.keys_of_team("team-2").unwrap().len(), 1);
}

/// One case of the suite: migrations take an empty database to the latest version.
pub fn a_new_store_is_at_the_latest_schema(f: &dyn Fixture) {
    let store = f.open().unwrap();
    assert!(f.latest_version() >= 1);
    assert_eq!(store.schema_version().unwrap(), f.latest_version());
    assert_eq!(store.ledger_count().unwrap(), 0);
    assert!(store.all_keys().unwrap().is_empty());
    // The writer's connection migrates too, and finds nothing to do.
    let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
    drop(tx);
    handle.join();
    assert_eq!(store.schema_version().unwrap(), f.latest_version());
}

/// One case of the suite: opening an up-to-date store again changes nothing, whichever
/// connection opens it and however often.
pub fn reopening_is_idempotent(f: &dyn Fixture) {
    let key = format_key(&[3; 32]);
    {
        let store = f.open().unwrap();
        store.create_team(&team_record("core")).unwrap();
        store
            .create_key(&key_record("key_1", "core", &key))
            .unwrap();
    }
    {
        let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
        tx.record(usage_record(1, "key_1", "core", 5)).unwrap();
        drop(tx);
        assert_eq!(handle.join().committed, 1);
    }
    // Two connections at once, then one after the other.
    let a = f.open().unwrap();
    let b = f.open().unwrap();
    drop((a, b));
    let store = f.open().unwrap();
    assert_eq!(store.schema_version().unwrap(), f.latest_version());
    assert_eq!(
        store.all_keys().unwrap(),
        vec![key_record("key_1", "core", &key)]
    );
    assert_eq!(store.all_teams().unwrap(), vec![team_record("core")]);
    assert_eq!(store.ledger_count().unwrap(), 1);
    assert_eq!(store.spend_since(Scope::Key, "key_1", 0).unwrap(), 5);
}

/// One case of the suite: a database migrated by a newer binary is refused, by the admin
/// side and by the ledger writer, with both versions in the message, and left as it was.
pub fn a_newer_schema_is_refused(f: &dyn Fixture) {
    let store = f.open().unwrap();
    store.create_team(&team_record("core")).unwrap();
    drop(store);
    let known = f.latest_version();
    f.set_schema_version(known + 1);

    let err = f.open().err().expect("a newer schema is refused");
    match err {
        StoreError::SchemaTooNew { found, known: k } => assert_eq!((found, k), (known + 1, known)),
        other => panic!("not SchemaTooNew: {other:?}"),
    }
    let msg = f.open().err().unwrap().to_string();
    assert!(
        msg.contains(&format!("version {}", known + 1))
            && msg.contains(&format!("up to version {known}")),
        "{msg}"
    );
    assert!(matches!(
        f.writer(WriterOptions::default()).err(),
        Some(StoreError::SchemaTooNew { .. })
    ));

    // Back to a version it knows: untouched, it opens again.
    f.set_schema_version(known);
    let store = f.open().unwrap();
    assert_eq!(store.get_team("core").unwrap(), Some(team_record("core")));
}

/// One case of the suite: a store an older Sluice left at schema version 3 is upgraded in
/// place. Version 4 drops the ledger's per-key and per-team time indexes (no query reads
/// through them; the ledger writer paid a B-tree insert into each per row); the rows, spend,
/// keys and teams stay, and every ledger read finds them.
pub fn version_3_store_loses_the_unused_ledger_indexes_and_keeps_its_rows(f: &dyn Fixture) {
    f.migrate_to(3);
    let before = f.indexes("ledger");
    for name in ["ledger_ts", "ledger_key_ts", "ledger_team_ts"] {
        assert!(before.iter().any(|i| i == name), "{name} at v3: {before:?}");
    }
    let key = format_key(&[4; 32]);
    let hash = hash_hex(&key);
    f.execute(&format!(
        "INSERT INTO teams VALUES ('core', 100, NULL, 4, 12.5, 'weekly');
         INSERT INTO keys VALUES ('key_old', 'old', 'core', NULL, '{hash}', 'sk-sluice-abc',
             '[]', NULL, NULL, NULL, NULL, 'monthly', NULL, FALSE, 'null', 1700000000);
         INSERT INTO ledger (request_id, ts_ms, key_id, team, model, deployment, input_tokens,
             output_tokens, cached_tokens, reasoning_tokens, estimated, cost_micros, status,
             latency_ms, cache, saved_micros)
             VALUES ('r1', {T0_MS}, 'key_old', 'core', 'gpt-4o', 'openai-east', 100, 20, 10,
             5, TRUE, 70, 200, 9, 'hit', 3),
             ('r2', {T0_MS} + 1, NULL, NULL, 'gpt-4o-mini', NULL, 1, 2, 0, 0, FALSE, 0, 502,
             1, NULL, 0);
         INSERT INTO spend VALUES ('key', 'key_old', 1710460800, 70);
         INSERT INTO spend VALUES ('team', 'core', 1710460800, 70);"
    ));

    let store = f.open().unwrap();
    assert_eq!(store.schema_version().unwrap(), f.latest_version());
    assert!(f.latest_version() >= 4);
    let after = f.indexes("ledger");
    // `ledger_ts` stays on PostgreSQL; SQLite's version 5 replaced it with per-batch time
    // spans (`ledger_span`), built here for the rows already in the table.
    assert!(
        !after
            .iter()
            .any(|i| i == "ledger_key_ts" || i == "ledger_team_ts"),
        "{after:?}"
    );
    let rows = store.ledger(0, u64::MAX, 10).unwrap();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(
        (
            r.request_id.as_str(),
            r.ts_ms,
            r.key_id.as_deref(),
            r.team.as_deref()
        ),
        ("r1", T0_MS, Some("key_old"), Some("core"))
    );
    assert_eq!(
        (&*r.model, r.deployment.as_deref(), r.cache, r.saved_micros),
        ("gpt-4o", Some("openai-east"), Some("hit"), 3)
    );
    assert_eq!(
        (
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.usage.estimated
        ),
        (100, 20, true)
    );
    assert_eq!((r.cost_micros, r.status, r.latency_ms), (70, 200, 9));
    assert_eq!(
        (rows[1].request_id.as_str(), rows[1].key_id.as_deref()),
        ("r2", None)
    );
    assert_eq!(store.spend_since(Scope::Key, "key_old", 0).unwrap(), 70);
    assert_eq!(store.spend_since(Scope::Team, "core", 0).unwrap(), 70);
    let by_key = store.spend_by(SpendGroup::Key, 0, u64::MAX).unwrap();
    assert_eq!(by_key.len(), 2);
    assert_eq!(
        (by_key[0].group.as_str(), by_key[0].requests),
        ("key_old", 1)
    );
    let by_team = store.spend_by(SpendGroup::Team, T0_MS, T0_MS + 1).unwrap();
    assert_eq!((by_team.len(), by_team[0].group.as_str()), (1, "core"));
    assert_eq!(
        store.find_key_by_hash(&hash).unwrap().unwrap().id,
        "key_old"
    );
    assert_eq!(
        store.get_team("core").unwrap().unwrap().limits.rpm,
        Some(100)
    );

    // The writer goes on appending to the upgraded table.
    let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
    tx.record(usage_record(2, "key_old", "core", 5)).unwrap();
    drop(tx);
    assert_eq!(handle.join().committed, 1);
    assert_eq!(store.ledger_count().unwrap(), 3);
    assert_eq!(store.spend_since(Scope::Key, "key_old", 0).unwrap(), 75);
}

/// One case of the suite: with a retention period, the writer deletes older ledger rows when
/// it starts; the per-day spend (budgets) keeps counting them.
pub fn retention_removes_old_rows_and_keeps_spend(f: &dyn Fixture) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    {
        let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
        for i in 0..5 {
            // 2024: far older than 30 days.
            tx.record(usage_record(i, "key_1", "core", 100)).unwrap();
        }
        let mut recent = usage_record(9, "key_1", "core", 7);
        recent.ts_ms = now_ms - 86_400_000;
        tx.record(recent).unwrap();
        drop(tx);
        assert_eq!(handle.join().committed, 6);
    }
    let (tx, handle) = f
        .writer(WriterOptions {
            retention: Some(Duration::from_secs(30 * 86_400)),
            ..WriterOptions::default()
        })
        .unwrap();
    let store = f.open().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ledger_count().unwrap() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.ledger_count().unwrap(), 1);
    assert_eq!(
        store.ledger(0, u64::MAX, 10).unwrap()[0].request_id,
        "req-9"
    );
    assert_eq!(store.spend_since(Scope::Key, "key_1", 0).unwrap(), 507);
    drop(tx);
    handle.join();
}

/// One case of the suite: a model name or request id with a NUL byte, quotes or any
/// Unicode (they come from clients) commits with its batch, on every backend.
pub fn strings_from_clients_never_poison_a_batch(f: &dyn Fixture) {
    let (tx, handle) = f.writer(WriterOptions::default()).unwrap();
    let odd = [
        "a\0b",
        "it's \"quoted\"",
        "模型-🚀",
        "\\ back\\slash",
        "x\u{FFFD}y",
    ];
    for (i, s) in odd.iter().enumerate() {
        let mut r = usage_record(i as u64, "key_1", "core", 1);
        r.model = Arc::from(*s);
        r.request_id = (*s).to_string();
        r.deployment = Some(Arc::from(*s));
        tx.record(r).unwrap();
    }
    tx.record(usage_record(99, "key_1", "core", 1)).unwrap();
    assert!(tx.flush_and_wait(Duration::from_secs(10)));
    assert_eq!((tx.committed(), tx.failed_commits()), (6, 0));
    drop(tx);
    handle.join();
    let store = f.open().unwrap();
    let rows = store.ledger(0, u64::MAX, 100).unwrap();
    assert_eq!(rows.len(), 6);
    for (row, want) in rows.iter().zip(odd) {
        // PostgreSQL's TEXT has no NUL: it arrives as U+FFFD; everything else is exact.
        let want = if f.keeps_nul() {
            want.to_string()
        } else {
            want.replace('\0', "\u{FFFD}")
        };
        assert_eq!(&*row.model, want);
        assert_eq!(row.request_id, want);
    }
}

/// One case of the suite: admin actions land in the audit log and come back newest first,
/// within the range and the limit asked for.
pub fn audit_log_round_trip(f: &dyn Fixture) {
    let store = f.open().unwrap();
    assert!(store.audit(0, u64::MAX / 2, 10).unwrap().is_empty());
    let entry = |i: u64, action: &str| AuditRecord {
        ts_ms: T0_MS + i,
        actor: "admin-1a2b3c4d".into(),
        via: ["api", "ui", "cli"][i as usize % 3].into(),
        action: action.into(),
        target: format!("key_{i}"),
        status: 200 + i as u16,
    };
    let written = [
        entry(0, "keys.create"),
        entry(1, "keys.disable"),
        entry(2, "teams.update"),
    ];
    for e in &written {
        store.insert_audit(e).unwrap();
    }
    let all = store.audit(0, u64::MAX / 2, 10).unwrap();
    let newest_first: Vec<AuditRecord> = written.iter().rev().cloned().collect();
    assert_eq!(all, newest_first);
    assert_eq!(store.audit(0, u64::MAX / 2, 1).unwrap(), newest_first[..1]);
    assert_eq!(
        store.audit(T0_MS + 1, T0_MS + 2, 10).unwrap(),
        vec![written[1].clone()]
    );
    // It survives a reopen.
    drop(store);
    assert_eq!(
        f.open().unwrap().audit(0, u64::MAX / 2, 10).unwrap().len(),
        3
    );
}
