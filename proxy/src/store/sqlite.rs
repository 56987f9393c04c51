//! The embedded backend: one local SQLite file in WAL mode.
//!
//! Each [`Sqlite`] is one connection; the admin side and the ledger writer each open their
//! own on the same file. Opening migrates the schema ([`MIGRATIONS`], version in
//! `PRAGMA user_version`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ToSql;
use rusqlite::{params, Connection};
use sluice_core::keys::{KeyRecord, Limits, TeamRecord};

mod insert;
pub(super) mod listing;
#[cfg(test)]
mod span_tests;

use super::migrate::{self, Migration, Schema};
use super::rows::{self, KEY_COLUMNS, TEAM_COLUMNS};
use super::{
    int, uint, AuditRecord, Backend, Result, Scope, SpendGroup, SpendRow, StoreError, UsageRecord,
    LIMIT_COLUMNS,
};

/// SQLite's schema, version by version. Append only: a shipped migration never changes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keys, teams, spend and ledger",
        sql: r#"
CREATE TABLE teams (
    name TEXT PRIMARY KEY,
    rpm INTEGER,
    tpm INTEGER,
    max_concurrency INTEGER,
    budget_usd REAL,
    budget_period TEXT NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    team TEXT NOT NULL,
    user TEXT,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    max_concurrency INTEGER,
    budget_usd REAL,
    budget_period TEXT NOT NULL,
    expires_at_unix INTEGER,
    disabled INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    created_at_unix INTEGER NOT NULL
);
CREATE INDEX keys_team ON keys(team);
CREATE TABLE spend (
    scope TEXT NOT NULL CHECK (scope IN ('key', 'team')),
    id TEXT NOT NULL,
    day_start INTEGER NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (scope, id, day_start)
) WITHOUT ROWID;
CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    key_id TEXT,
    team TEXT,
    model TEXT NOT NULL,
    deployment TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL
);
CREATE INDEX ledger_ts ON ledger(ts_ms);
CREATE INDEX ledger_key_ts ON ledger(key_id, ts_ms);
CREATE INDEX ledger_team_ts ON ledger(team, ts_ms);
"#,
    },
    Migration {
        version: 2,
        name: "audit log of admin actions",
        sql: r#"
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX audit_ts ON audit(ts_ms);
"#,
    },
    Migration {
        version: 3,
        name: "ledger: the response cache's verdict and what a hit saved",
        sql: r#"
ALTER TABLE ledger ADD COLUMN cache TEXT;
ALTER TABLE ledger ADD COLUMN saved_micros INTEGER NOT NULL DEFAULT 0;
"#,
    },
    Migration {
        version: 4,
        name: "ledger: drop the per-key and per-team time indexes no query uses",
        // Every ledger read selects a time range (`ts_ms`, served by `ledger_ts`) and groups
        // or filters the rows it gets; these two cost the ledger writer a B-tree insert each
        // per row.
        sql: r#"
DROP INDEX IF EXISTS ledger_key_ts;
DROP INDEX IF EXISTS ledger_team_ts;
"#,
    },
    Migration {
        version: 5,
        name: "ledger: time ranges per batch instead of the ts_ms index",
        // `ledger_ts` was a fifth of the ledger writer's instructions per row (a B-tree
        // insert per row). A span is one batch's rows (`seq` from `first_seq` to `last_seq`,
        // one transaction's, so no two spans share a row) and the lowest and highest `ts_ms`
        // among them; a time range is read through the spans that overlap it ([`SPANS`]).
        // `ledger_span_start` is the usage listing's walk in time order (`listing`), which
        // stops after the rows it needs. Rows written before this version get one span per
        // 1,024 `seq`s.
        sql: r#"
CREATE TABLE ledger_span (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL
);
CREATE INDEX ledger_span_max_ts ON ledger_span(max_ts);
CREATE INDEX ledger_span_start ON ledger_span(min_ts, first_seq, max_ts, last_seq);
INSERT INTO ledger_span (first_seq, last_seq, min_ts, max_ts)
    SELECT MIN(seq), MAX(seq), MIN(ts_ms), MAX(ts_ms) FROM ledger GROUP BY seq / 1024;
DROP INDEX IF EXISTS ledger_ts;
"#,
    },
];

/// The page size of a new database file (SQLite's default is 4 KiB).
pub(super) const PAGE_SIZE: i64 = 8_192;

/// The ledger rows of a time range `?1 <= ts_ms < ?2`, read through the per-batch spans
/// (migration 5) that overlap it: the spans first (`CROSS JOIN` keeps that order), then each
/// one's `seq` range of the table. Every row lies in exactly one span whose `min_ts..=max_ts`
/// holds its `ts_ms`, so this selects the rows the plain time condition selects.
pub(super) const SPANS: &str = "ledger_span s CROSS JOIN ledger \
     WHERE s.max_ts >= ?1 AND s.min_ts < ?2 \
     AND seq >= s.first_seq AND seq <= s.last_seq AND ts_ms >= ?1 AND ts_ms < ?2";

/// A connection's schema for [`migrate::migrate`]: the version is `PRAGMA user_version`,
/// which SQLite changes inside the transaction like any other write.
pub struct SqliteSchema<'a>(pub &'a Connection);

fn user_version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StoreError::BadValue(format!("schema version {v}")))
}

impl Schema for SqliteSchema<'_> {
    fn version(&mut self) -> Result<u32> {
        user_version(self.0)
    }

    fn begin(&mut self) -> Result<u32> {
        self.0.execute_batch("BEGIN IMMEDIATE")?;
        match user_version(self.0) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.0.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn apply(&mut self, m: &Migration) -> Result<()> {
        self.0.execute_batch(m.sql)?;
        self.0
            .pragma_update(None, "user_version", i64::from(m.version))?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.0.execute_batch("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        if !self.0.is_autocommit() {
            self.0.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }
}

/// One connection to the SQLite store.
pub struct Sqlite {
    conn: Connection,
    path: PathBuf,
}

/// `?first, ?first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `col = ?first, …` for an UPDATE.
fn assignments(cols: &[&str], first: usize) -> String {
    cols.iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The limit columns' values as SQLite takes them, owned so parameters can borrow them.
struct LimitValues {
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<u32>,
    budget_usd: Option<f64>,
    budget_period: &'static str,
}

impl LimitValues {
    fn new(l: &Limits) -> Self {
        LimitValues {
            rpm: l.rpm.map(int),
            tpm: l.tpm.map(int),
            max_concurrency: l.max_concurrency,
            budget_usd: l.budget_usd,
            budget_period: l.budget_period.as_str(),
        }
    }

    /// Parameters in [`LIMIT_COLUMNS`] order.
    fn params(&self) -> [&dyn ToSql; 5] {
        [
            &self.rpm,
            &self.tpm,
            &self.max_concurrency,
            &self.budget_usd,
            &self.budget_period,
        ]
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// An INSERT's error: a constraint violation is a conflict on `what`.
fn conflict_or(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    if is_constraint(&e) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

impl Sqlite {
    /// Opens (creating if need be) the file at `path` in WAL mode and migrates it;
    /// `synchronous_full` syncs every commit (the ledger writer's option).
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Sqlite> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Before anything writes (even the journal mode): a newer schema is not ours to touch.
        let found = user_version(&conn)?;
        let known = migrate::latest(MIGRATIONS);
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        // 8 KiB pages for a new file (an existing one keeps its size): the ledger writer's
        // commits go to the WAL one frame per page, two `pwrite`s each, and checkpoints copy
        // them page by page, so half as many pages are half the syscalls per row.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::BadValue(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        let sync = if synchronous_full { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", sync)?;
        migrate::migrate(&mut SqliteSchema(&conn), MIGRATIONS)?;
        conn.set_prepared_statement_cache_capacity(insert::STATEMENT_CACHE);
        Ok(Sqlite {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key_where(&self, cond: &str, arg: &str) -> Result<Option<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE {cond}");
        Ok(self.read(&sql, &[&arg], |r| rows::key(r))?.pop())
    }

    fn keys_where(&self, cond: &str, args: &[&dyn ToSql]) -> Result<Vec<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys {cond} ORDER BY created_at_unix, id");
        self.read(&sql, args, |r| rows::key(r))
    }

    /// Every row `sql` selects, each made a record by `record` (one of [`rows`]' readers).
    fn read<T>(
        &self,
        sql: &str,
        args: &[&dyn ToSql],
        record: impl Fn(&rusqlite::Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(args)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(record(r)?);
        }
        Ok(out)
    }
}

/// The spend report's query: ledger rows in `?1 <= ts_ms < ?2` (read through the spans,
/// [`SPANS`]), grouped by `group`.
pub(super) fn spend_by_sql(group: SpendGroup) -> String {
    let column = rows::spend_group(group, "CAST(ts_ms / 86400000 AS TEXT)");
    let select = rows::spend_select(column, |c| format!("SUM({c})"));
    format!("SELECT {select} FROM {SPANS} GROUP BY 1 ORDER BY 7 DESC, 1")
}

/// Retention's deletes, in one transaction: the rows of `ts_ms < ?1` (found through the spans
/// that reach below it), the spans left empty, and the other spans' lower bound raised to
/// `?1` (their rows below it are gone). The first statement's count is the rows removed.
/// Then [`CLIP_SPANS`].
const DELETE_BEFORE: [&str; 3] = [
    "DELETE FROM ledger WHERE seq IN (SELECT seq FROM ledger_span s CROSS JOIN ledger \
     WHERE s.min_ts < ?1 AND seq >= s.first_seq AND seq <= s.last_seq AND ts_ms < ?1)",
    "DELETE FROM ledger_span WHERE max_ts < ?1",
    "UPDATE ledger_span SET min_ts = ?1 WHERE min_ts < ?1",
];

/// After retention removed the newest rows (old records replayed last), SQLite gives their
/// `seq`s to the next rows again: the last span must end at the highest `seq` left, or it
/// would claim rows of the next batch (read twice then).
const CLIP_SPANS: &str = "UPDATE ledger_span SET last_seq = (SELECT MAX(seq) FROM ledger) \
     WHERE last_seq > (SELECT MAX(seq) FROM ledger)";

impl Backend for Sqlite {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn release_memory(&self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA shrink_memory") {
            tracing::debug!(error = %e, "store: shrink_memory failed");
        }
    }

    fn schema_version(&self) -> Result<u32> {
        user_version(&self.conn)
    }

    // -- keys ---------------------------------------------------------------------------------

    fn create_key(&self, k: &KeyRecord) -> Result<()> {
        let (models, metadata) = (
            serde_json::to_string(&k.models)?,
            serde_json::to_string(&k.metadata)?,
        );
        let (expires, created) = (k.expires_at_unix.map(int), int(k.created_at_unix));
        let limits = LimitValues::new(&k.limits);
        let own: [&dyn ToSql; 11] = [
            &k.id,
            &k.name,
            &k.team,
            &k.user,
            &k.hash,
            &k.prefix,
            &models,
            &expires,
            &k.disabled,
            &metadata,
            &created,
        ];
        let args: Vec<&dyn ToSql> = own.into_iter().chain(limits.params()).collect();
        let sql = format!(
            "INSERT INTO keys ({}) VALUES ({})",
            KEY_COLUMNS,
            placeholders(1, args.len())
        );
        match self.conn.execute(&sql, &*args) {
            Ok(_) => Ok(()),
            Err(e) => Err(conflict_or(e, || format!("key {}", k.id))),
        }
    }

    fn update_key(&self, k: &KeyRecord) -> Result<()> {
        let (models, metadata) = (
            serde_json::to_string(&k.models)?,
            serde_json::to_string(&k.metadata)?,
        );
        let expires = k.expires_at_unix.map(int);
        let limits = LimitValues::new(&k.limits);
        // `?1` is the id; the hash, prefix and creation time never change.
        let own_cols = [
            "name",
            "team",
            "user",
            "models",
            "expires_at_unix",
            "disabled",
            "metadata",
        ];
        let own: [&dyn ToSql; 8] = [
            &k.id,
            &k.name,
            &k.team,
            &k.user,
            &models,
            &expires,
            &k.disabled,
            &metadata,
        ];
        let args: Vec<&dyn ToSql> = own.into_iter().chain(limits.params()).collect();
        let sql = format!(
            "UPDATE keys SET {}, {} WHERE id = ?1",
            assignments(&own_cols, 2),
            assignments(&LIMIT_COLUMNS, 2 + own_cols.len())
        );
        if self.conn.execute(&sql, &*args)? == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    fn delete_key(&self, id: &str) -> Result<()> {
        if self.conn.execute("DELETE FROM keys WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.key_where("id = ?1", id)
    }

    fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<KeyRecord>> {
        self.key_where("hash = ?1", hash_hex)
    }

    fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        self.keys_where("", &[])
    }

    fn keys_of_team(&self, team: &str) -> Result<Vec<KeyRecord>> {
        self.keys_where("WHERE team = ?1", &[&team])
    }

    // -- teams --------------------------------------------------------------------------------

    fn create_team(&self, t: &TeamRecord) -> Result<()> {
        let limits = LimitValues::new(&t.limits);
        let args: Vec<&dyn ToSql> = std::iter::once(&t.name as &dyn ToSql)
            .chain(limits.params())
            .collect();
        let sql = format!(
            "INSERT INTO teams ({}) VALUES ({})",
            TEAM_COLUMNS,
            placeholders(1, args.len())
        );
        match self.conn.execute(&sql, &*args) {
            Ok(_) => Ok(()),
            Err(e) => Err(conflict_or(e, || format!("team {}", t.name))),
        }
    }

    fn update_team(&self, t: &TeamRecord) -> Result<()> {
        let limits = LimitValues::new(&t.limits);
        let args: Vec<&dyn ToSql> = std::iter::once(&t.name as &dyn ToSql)
            .chain(limits.params())
            .collect();
        let sql = format!(
            "UPDATE teams SET {} WHERE name = ?1",
            assignments(&LIMIT_COLUMNS, 2)
        );
        if self.conn.execute(&sql, &*args)? == 0 {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    fn delete_team(&self, name: &str) -> Result<()> {
        if self
            .conn
            .execute("DELETE FROM teams WHERE name = ?1", [name])?
            == 0
        {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    fn get_team(&self, name: &str) -> Result<Option<TeamRecord>> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE name = ?1");
        Ok(self.read(&sql, &[&name], |r| rows::team(r))?.pop())
    }

    fn all_teams(&self) -> Result<Vec<TeamRecord>> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY name");
        self.read(&sql, &[], |r| rows::team(r))
    }

    // -- spend and ledger ---------------------------------------------------------------------

    fn spend_totals_since(&self, scope: Scope, since_unix: u64) -> Result<HashMap<String, u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, SUM(micros) FROM spend WHERE scope = ?1 AND day_start >= ?2 GROUP BY id",
        )?;
        let rows = stmt.query_map(params![scope.as_str(), int(since_unix)], |r| {
            Ok((r.get::<_, String>(0)?, uint(r.get(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn spend_since(&self, scope: Scope, id: &str, since_unix: u64) -> Result<u64> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT SUM(micros) FROM spend WHERE scope = ?1 AND id = ?2 AND day_start >= ?3",
            params![scope.as_str(), id, int(since_unix)],
            |r| r.get(0),
        )?;
        Ok(v.map_or(0, uint))
    }

    fn spend_by(&self, group: SpendGroup, from_ms: u64, to_ms: u64) -> Result<Vec<SpendRow>> {
        let sql = spend_by_sql(group);
        self.read(&sql, params![int(from_ms), int(to_ms)], |r| rows::spend(r))
    }

    fn ledger(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<UsageRecord>> {
        let listing = listing::ledger(&self.conn, from_ms, to_ms, limit)?;
        tracing::trace!(rows = listing.rows_visited, "ledger listing: rows read");
        Ok(listing.records)
    }

    fn ledger_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?;
        Ok(uint(n))
    }

    fn delete_ledger_before(&self, ts_ms: u64) -> Result<u64> {
        let tx = self.conn.unchecked_transaction()?;
        let mut n = 0;
        for (i, sql) in DELETE_BEFORE.iter().enumerate() {
            let changed = tx.execute(sql, [int(ts_ms)])?;
            if i == 0 {
                n = changed;
            }
        }
        tx.execute(CLIP_SPANS, [])?;
        tx.commit()?;
        Ok(n as u64)
    }

    fn insert_audit(&self, r: &AuditRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (ts_ms, actor, via, action, target, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                int(r.ts_ms),
                r.actor,
                r.via,
                r.action,
                r.target,
                r.status
            ])?;
        Ok(())
    }

    fn audit(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT ts_ms, actor, via, action, target, status FROM audit \
             WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY ts_ms DESC, seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![int(from_ms), int(to_ms), int(limit as u64)], |r| {
            Ok(AuditRecord {
                ts_ms: uint(r.get(0)?),
                actor: r.get(1)?,
                via: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                status: u16::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()> {
        insert::insert_usage(&self.conn, batch)
    }
}
