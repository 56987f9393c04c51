//! The store: the backend-generic suite (`store_suite/`) run on SQLite, plus what only
//! SQLite has (a file on disk, its format before this version, `sluice serve` over it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;
#[macro_use]
mod store_suite;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_core::keys::{format_key, hash_hex};
use sluice_proxy::store::migrate::{latest, migrate};
use sluice_proxy::store::sqlite::{SqliteSchema, MIGRATIONS};
use sluice_proxy::store::{
    LedgerHandle, LedgerSender, LedgerWriter, Scope, SpendGroup, Store, StoreError, WriterOptions,
};
use store_suite::{key_record, usage_record, Fixture, T0_MS};

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

/// `PRAGMA user_version` of the file at `db`, set behind the store's back.
fn set_user_version(db: &Path, version: u32) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "user_version", i64::from(version))
        .unwrap();
}

fn user_version(db: &Path) -> u32 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

/// The suite's SQLite database: a file in a fresh directory.
struct SqliteFixture(TempDir);

impl SqliteFixture {
    fn new(case: &str) -> Self {
        SqliteFixture(TempDir::new(case))
    }
}

impl Fixture for SqliteFixture {
    fn open(&self) -> Result<Store, StoreError> {
        Store::open(self.0.db())
    }

    fn writer(&self, opts: WriterOptions) -> Result<(LedgerSender, LedgerHandle), StoreError> {
        LedgerWriter::spawn_with(self.0.db(), opts)
    }

    fn latest_version(&self) -> u32 {
        latest(MIGRATIONS)
    }

    fn set_schema_version(&self, version: u32) {
        set_user_version(&self.0.db(), version);
    }

    fn migrate_to(&self, version: u32) {
        let conn = rusqlite::Connection::open(self.0.db()).unwrap();
        let list = &MIGRATIONS[..version as usize];
        assert_eq!(migrate(&mut SqliteSchema(&conn), list).unwrap(), version);
    }

    fn execute(&self, sql: &str) {
        let conn = rusqlite::Connection::open(self.0.db()).unwrap();
        conn.execute_batch(sql).unwrap();
    }

    fn indexes(&self, table: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.0.db()).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 ORDER BY name")
            .unwrap();
        let names = stmt.query_map([table], |r| r.get(0)).unwrap();
        names.collect::<rusqlite::Result<_>>().unwrap()
    }
}

store_suite!(sqlite, SqliteFixture::new);

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

#[test]
fn a_file_written_before_versioned_migrations_opens() {
    // The layout and rows as the store wrote them before it was split by backend: columns in
    // table order, version 1 in user_version.
    let dir = TempDir::new("compat");
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO teams VALUES ('core', 100, NULL, 4, 12.5, 'weekly');
             INSERT INTO keys VALUES ('key_old', 'old', 'core', NULL, 'abc123', 'sk-sluice-abc…',
                 '[\"gpt-4o\"]', 60, 6000, NULL, 2.0, 'daily', NULL, 0, '{\"a\":1}', 1700000000);
             INSERT INTO ledger (request_id, ts_ms, key_id, team, model, deployment,
                 input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated,
                 cost_micros, status, latency_ms)
                 VALUES ('r1', 1710504000000, 'key_old', 'core', 'gpt-4o', NULL, 1, 2, 0, 0, 1,
                 70, 200, 9);
             INSERT INTO spend VALUES ('key', 'key_old', 1710460800, 70);",
        )
        .unwrap();
    }
    let store = Store::open(dir.db()).unwrap();
    assert_eq!(store.schema_version().unwrap(), latest(MIGRATIONS));
    let team = store.get_team("core").unwrap().unwrap();
    assert_eq!(
        (
            team.limits.rpm,
            team.limits.tpm,
            team.limits.max_concurrency,
            team.limits.budget_usd
        ),
        (Some(100), None, Some(4), Some(12.5))
    );
    assert_eq!(team.limits.budget_period.as_str(), "weekly");
    let key = store.find_key_by_hash("abc123").unwrap().unwrap();
    assert_eq!(key.id, "key_old");
    assert_eq!(key.models, ["gpt-4o"]);
    assert_eq!(
        (
            key.limits.rpm,
            key.limits.tpm,
            key.limits.max_concurrency,
            key.limits.budget_usd
        ),
        (Some(60), Some(6000), None, Some(2.0))
    );
    assert_eq!(key.limits.budget_period.as_str(), "daily");
    assert_eq!(key.metadata, serde_json::json!({"a": 1}));
    assert_eq!((key.disabled, key.created_at_unix), (false, 1_700_000_000));
    assert_eq!(store.spend_since(Scope::Key, "key_old", 0).unwrap(), 70);
    let rows = store.spend_by(SpendGroup::Day, 0, u64::MAX).unwrap();
    assert_eq!(rows[0].group, "2024-03-15");
    assert!(store.ledger(0, u64::MAX, 10).unwrap()[0].usage.estimated);
    assert_eq!(T0_MS, 1_710_504_000_000);
}

#[test]
fn a_version_2_file_gains_the_cache_columns_and_keeps_its_audit_log() {
    // A store at version 2 (the audit log): version 3 adds the ledger's `cache` (NULL) and
    // `saved_micros` (0) to the rows already there.
    let dir = TempDir::new("v2");
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch(MIGRATIONS[1].sql).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO ledger (request_id, ts_ms, key_id, team, model, deployment,
                 input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated,
                 cost_micros, status, latency_ms)
                 VALUES ('r1', 1710504000000, NULL, NULL, 'gpt-4o', NULL, 1, 2, 0, 0, 0,
                 70, 200, 9);
             INSERT INTO audit (ts_ms, actor, via, action, target, status)
                 VALUES (1710504000000, 'admin-abababab', 'cli', 'keys.create', 'key_1', 201);",
        )
        .unwrap();
    }
    assert_eq!(MIGRATIONS[2].version, 3);
    let store = Store::open(dir.db()).unwrap();
    assert_eq!(store.schema_version().unwrap(), latest(MIGRATIONS));
    let rows = store.ledger(0, u64::MAX, 10).unwrap();
    assert_eq!((rows[0].cache, rows[0].saved_micros), (None, 0));
    let audit = store.audit(0, u64::MAX, 10).unwrap();
    assert_eq!(audit[0].action, "keys.create");
}

#[test]
fn serve_exits_on_a_schema_newer_than_it_knows() {
    let dir = TempDir::new("serve-newer");
    drop(Store::open(dir.db()).unwrap());
    let known = latest(MIGRATIONS);
    set_user_version(&dir.db(), known + 1);
    let config = dir.0.join("sluice.toml");
    // Nothing listens at the provider's address: the gateway must stop before any request.
    let unused = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&config, access::store_config(unused, &dir.db(), 1, "")).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SLUICE_DRIVER", "epoll")
        .env("SLUICE_TEST_UPSTREAM_KEY", common::UPSTREAM_KEY)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice kept running on a newer schema");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}; stderr: {stderr}");
    assert!(
        stderr.contains(&format!("schema is at version {}", known + 1))
            && stderr.contains(&format!("up to version {known}")),
        "stderr: {stderr}"
    );
    // It did not touch the file.
    assert_eq!(user_version(&dir.db()), known + 1);
}
