//! The embedded store: CRUD, the ledger writer's batching and durability, restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::keys::{format_key, hash_hex, visible_prefix, KeyRecord, TeamRecord};
use sluice_core::limits::{period_start, BudgetPeriod};
use sluice_core::usage::Usage;
use sluice_proxy::store::{
    LedgerWriter, Scope, SpendGroup, Store, StoreError, UsageRecord, WriterOptions,
};

/// A fresh directory for one test's database, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("sluice.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn key_record(id: &str, team: &str, key: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: format!("{id} name"),
        team: team.into(),
        user: Some("ada@example.com".into()),
        hash: hash_hex(key),
        prefix: visible_prefix(key),
        models: vec!["gpt-4o".into(), "claude-sonnet-4".into()],
        rpm: Some(600),
        tpm: Some(100_000),
        max_concurrency: Some(8),
        budget_usd: Some(25.5),
        budget_period: BudgetPeriod::Weekly,
        expires_at_unix: Some(2_000_000_000),
        disabled: false,
        metadata: serde_json::json!({"cost_center": 42, "tags": ["a", "b"]}),
        created_at_unix: 1_700_000_000,
    }
}

fn team_record(name: &str) -> TeamRecord {
    TeamRecord {
        name: name.into(),
        rpm: Some(1_000),
        tpm: None,
        max_concurrency: None,
        budget_usd: Some(100.0),
        budget_period: BudgetPeriod::Monthly,
    }
}

/// 2024-03-15 12:00:00 UTC, in ms.
const T0_MS: u64 = 1_710_504_000_000;

fn usage_record(i: u64, key: &str, team: &str, cost: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        ts_ms: T0_MS + i,
        key_id: Some(Arc::from(key)),
        team: Some(Arc::from(team)),
        model: Arc::from(if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" }),
        deployment: Some(Arc::from("openai-east")),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 20,
            cached_tokens: 10,
            reasoning_tokens: 5,
            estimated: false,
        },
        cost_micros: cost,
        status: 200,
        latency_ms: 123,
    }
}

#[test]
fn crud_round_trip() {
    let dir = TempDir::new("crud");
    let store = Store::open(dir.db()).unwrap();

    let team = team_record("core");
    store.create_team(&team).unwrap();
    assert!(matches!(
        store.create_team(&team),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_team("core").unwrap(), Some(team.clone()));
    let team2 = TeamRecord {
        tpm: Some(5),
        budget_period: BudgetPeriod::Daily,
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
        rpm: None,
        tpm: None,
        max_concurrency: None,
        budget_usd: None,
        budget_period: BudgetPeriod::Lifetime,
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
    assert_eq!(store.location(), dir.db().display().to_string());
}

#[test]
fn ledger_writer_commits_within_100ms() {
    let dir = TempDir::new("latency");
    let (tx, handle) = LedgerWriter::spawn(dir.db()).unwrap();
    // Warm up: the first commit creates pages.
    tx.record(usage_record(0, "k", "t", 1)).unwrap();
    assert!(tx.flush_and_wait(Duration::from_secs(5)));
    assert_eq!(tx.committed(), 1);

    for round in 1..=3u64 {
        let sent = Instant::now();
        tx.record(usage_record(round, "k", "t", 1)).unwrap();
        while tx.committed() < 1 + round {
            assert!(
                sent.elapsed() < Duration::from_millis(100),
                "record {round} not committed after {:?}",
                sent.elapsed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tx.pending(), 0);
    }
    // Acknowledged means readable by another connection.
    let store = Store::open(dir.db()).unwrap();
    assert_eq!(store.ledger_count().unwrap(), 4);
    drop(tx);
    let report = handle.join();
    assert_eq!((report.committed, report.lost), (4, 0));
}

#[test]
fn restart_keeps_keys_and_spend() {
    let dir = TempDir::new("restart");
    let key = format_key(&[7; 32]);
    let now_s = T0_MS / 1000 + 3_600;
    {
        let store = Store::open(dir.db()).unwrap();
        store.create_team(&team_record("core")).unwrap();
        store
            .create_key(&key_record("key_1", "core", &key))
            .unwrap();
        let (tx, handle) = LedgerWriter::spawn(dir.db()).unwrap();
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

    let store = Store::open(dir.db()).unwrap();
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
    let store = Store::open(dir.db()).unwrap();
    assert_eq!(store.ledger_count().unwrap(), 13);
}

#[test]
fn ten_thousand_records_from_several_threads_all_land() {
    let dir = TempDir::new("many");
    let (tx, handle) = LedgerWriter::spawn_with(
        dir.db(),
        WriterOptions {
            capacity: 1_024,
            ..WriterOptions::default()
        },
    )
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

    let store = Store::open(dir.db()).unwrap();
    assert_eq!(store.ledger_count().unwrap(), 10_000);
    let totals = store.spend_totals_since(Scope::Key, 0).unwrap();
    assert_eq!(totals.len(), 8);
    assert!(totals.values().all(|&v| v == 3 * 1_250));
    assert_eq!(
        store.spend_totals_since(Scope::Team, 0).unwrap()["core"],
        30_000
    );
}

#[test]
fn flush_and_wait_and_closed_writer() {
    let dir = TempDir::new("flush");
    let (tx, handle) = LedgerWriter::spawn_with(
        dir.db(),
        WriterOptions {
            // Long interval: only the flush can make these commit quickly.
            flush_interval: Duration::from_secs(30),
            ..WriterOptions::default()
        },
    )
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

#[test]
fn key_plaintext_never_reaches_the_file() {
    let dir = TempDir::new("plaintext");
    let key = format_key(&[0xa5; 32]);
    let store = Store::open(dir.db()).unwrap();
    store
        .create_key(&key_record("key_secret", "core", &key))
        .unwrap();
    let (tx, handle) = LedgerWriter::spawn(dir.db()).unwrap();
    tx.record(usage_record(1, "key_secret", "core", 9)).unwrap();
    drop(tx);
    handle.join();

    // Read the database and its WAL as they are on disk, then again after a checkpoint.
    let body = &key["sk-sluice-".len()..];
    let hash = hash_hex(&key);
    let scan = |when: &str| {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = dir.db().into_os_string();
            p.push(suffix);
            if let Ok(bytes) = std::fs::read(&p) {
                all.extend_from_slice(&bytes);
            }
        }
        let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!has(&key), "{when}: full key in the file");
        assert!(!has(&body[8..]), "{when}: key body in the file");
        // Sanity: we are looking at the right bytes.
        assert!(has(&hash), "{when}: hash not found");
        assert!(has("key_secret"), "{when}: id not found");
    };
    scan("before checkpoint");
    drop(store);
    // Closing the last connection checkpoints the WAL into the main file.
    scan("after close");
}
