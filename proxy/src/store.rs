//! The embedded store: one local SQLite file (WAL) holding teams, virtual keys (hashed), spend
//! per day and the per-request usage ledger.
//!
//! Two ways in, on two connections to the same file:
//! - [`Store`]: synchronous CRUD and reports for the admin thread and for start-up (load every
//!   key into the in-memory index, rebuild spend). Never used on the request path.
//! - [`LedgerWriter`]: one thread that owns the write connection for usage. The data plane hands
//!   it [`UsageRecord`]s through a bounded channel ([`LedgerSender::record`] never blocks) and
//!   never touches the disk; the thread commits them in batches, ledger rows and spend together
//!   in one transaction.
//!
//! # Durability contract
//!
//! A record is *acknowledged* once its batch is committed; [`LedgerSender::committed`] counts
//! them and [`LedgerSender::flush_and_wait`] waits for everything sent before it.
//! - A batch is committed at most [`WriterOptions::flush_interval`] (50 ms) after its first
//!   record arrived, or as soon as it holds [`WriterOptions::max_batch`] records.
//! - On SIGKILL (process crash) committed records survive: WAL commits reach the OS before
//!   `COMMIT` returns. Lost are the records not yet committed: the open batch (at most the last
//!   50 ms) and whatever still waits in the channel if the writer has fallen behind.
//! - On power loss, `synchronous=NORMAL` may also roll back the last commits since the WAL was
//!   last synced; set [`WriterOptions::synchronous_full`] to sync every commit instead.
//! - On a clean shutdown, dropping every [`LedgerSender`] (or calling `flush_and_wait`) commits
//!   everything; [`LedgerHandle::join`] returns once the last batch is on disk.
//! - A full channel refuses the record ([`Full`] gives it back) rather than block a worker;
//!   [`LedgerSender::rejected`] counts those. A failed commit is retried with backoff, keeping
//!   the batch, while the channel fills up.
//!
//! Spend is kept per UTC day (`spend.day_start`), so any period that starts at a day boundary
//! (daily, weekly, monthly, lifetime) is a sum of rows: [`Store::spend_totals_since`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use rusqlite::{params, Connection, OptionalExtension, Row};
use sluice_core::keys::{KeyRecord, TeamRecord};
use sluice_core::limits::{civil_date, period_start, BudgetPeriod};
use sluice_core::usage::Usage;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (I/O, corruption, busy past the timeout).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A JSON column did not parse.
    #[error("store: bad JSON in a row: {0}")]
    Json(#[from] serde_json::Error),
    /// A unique name, id or key hash already exists.
    #[error("store: {0} already exists")]
    Conflict(String),
    /// No such row.
    #[error("store: no such {0}")]
    NotFound(&'static str),
    /// A column held a value this version cannot read.
    #[error("store: bad value in a row: {0}")]
    BadValue(String),
    /// The writer thread could not be started.
    #[error("store: cannot start the ledger writer: {0}")]
    Spawn(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those done.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// SQLite integers are i64; ours are u64. Saturate going in, clamp negatives coming out.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn opt_uint(v: Option<i64>) -> Option<u64> {
    v.map(uint)
}

fn open_connection(path: &Path, synchronous_full: bool) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::BadValue(format!(
            "journal_mode is {mode}, not wal"
        )));
    }
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    conn.pragma_update(None, "synchronous", sync)?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<()> {
    let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(uint(done) as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", int(i as u64 + 1))?;
        tx.commit()?;
    }
    Ok(())
}

fn period(name: &str) -> Result<BudgetPeriod> {
    BudgetPeriod::parse(name).ok_or_else(|| StoreError::BadValue(format!("budget period {name}")))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Which side of spend: a key (by id) or a team (by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Per key id.
    Key,
    /// Per team name.
    Team,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
        }
    }
}

/// How [`Store::spend_by`] groups the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpendGroup {
    /// By key id.
    Key,
    /// By team.
    Team,
    /// By model.
    Model,
    /// By deployment.
    Deployment,
    /// By UTC day (`YYYY-MM-DD`).
    Day,
}

/// One group of [`Store::spend_by`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendRow {
    /// The key id, team, model, deployment or day; empty when the ledger had none.
    pub group: String,
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Cached input tokens.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Cost, micro-USD.
    pub cost_micros: u64,
}

/// Spend this period of every key and team, rebuilt from the store at start-up.
#[derive(Clone, Debug, Default)]
pub struct SpendSnapshot {
    totals: HashMap<(Scope, BudgetPeriod), HashMap<String, u64>>,
}

impl SpendSnapshot {
    /// Micro-USD spent by `id` in its current `period`.
    pub fn spend(&self, scope: Scope, id: &str, period: BudgetPeriod) -> u64 {
        self.totals
            .get(&(scope, period))
            .and_then(|m| m.get(id))
            .copied()
            .unwrap_or(0)
    }
}

/// The store for the admin thread and start-up: CRUD of teams and keys, spend reports.
///
/// Not `Sync` (one SQLite connection): keep it on one thread, or behind a `Mutex`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const KEY_COLUMNS: &str = "id, name, team, user, hash, prefix, models, rpm, tpm, \
    max_concurrency, budget_usd, budget_period, expires_at_unix, disabled, metadata, \
    created_at_unix";

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<(KeyRecord, String, String, String)> {
    // JSON and period columns come back raw and are parsed outside, so their errors stay ours.
    Ok((
        KeyRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            team: r.get(2)?,
            user: r.get(3)?,
            hash: r.get(4)?,
            prefix: r.get(5)?,
            models: Vec::new(),
            rpm: opt_uint(r.get(7)?),
            tpm: opt_uint(r.get(8)?),
            max_concurrency: r
                .get::<_, Option<i64>>(9)?
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            budget_usd: r.get(10)?,
            budget_period: BudgetPeriod::default(),
            expires_at_unix: opt_uint(r.get(12)?),
            disabled: r.get::<_, i64>(13)? != 0,
            metadata: serde_json::Value::Null,
            created_at_unix: uint(r.get(15)?),
        },
        r.get(6)?,
        r.get(11)?,
        r.get(14)?,
    ))
}

fn finish_key(raw: (KeyRecord, String, String, String)) -> Result<KeyRecord> {
    let (mut k, models, budget_period, metadata) = raw;
    k.models = serde_json::from_str(&models)?;
    k.budget_period = period(&budget_period)?;
    k.metadata = serde_json::from_str(&metadata)?;
    Ok(k)
}

fn team_from_row(r: &Row<'_>) -> rusqlite::Result<(TeamRecord, String)> {
    Ok((
        TeamRecord {
            name: r.get(0)?,
            rpm: opt_uint(r.get(1)?),
            tpm: opt_uint(r.get(2)?),
            max_concurrency: r
                .get::<_, Option<i64>>(3)?
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            budget_usd: r.get(4)?,
            budget_period: BudgetPeriod::default(),
        },
        r.get(5)?,
    ))
}

fn finish_team(raw: (TeamRecord, String)) -> Result<TeamRecord> {
    let (mut t, p) = raw;
    t.budget_period = period(&p)?;
    Ok(t)
}

impl Store {
    /// Opens (creating if need be) the store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, false)?;
        Ok(Store { conn, path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // -- keys ---------------------------------------------------------------------------------

    /// Adds a key. Its id and its hash must be new.
    pub fn create_key(&self, k: &KeyRecord) -> Result<()> {
        let n = self.conn.execute(
            &format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                k.id,
                k.name,
                k.team,
                k.user,
                k.hash,
                k.prefix,
                serde_json::to_string(&k.models)?,
                k.rpm.map(int),
                k.tpm.map(int),
                k.max_concurrency,
                k.budget_usd,
                k.budget_period.as_str(),
                k.expires_at_unix.map(int),
                k.disabled,
                serde_json::to_string(&k.metadata)?,
                int(k.created_at_unix),
            ],
        );
        match n {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(StoreError::Conflict(format!("key {}", k.id))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a key's fields (matched by id). The hash and creation time may not change.
    pub fn update_key(&self, k: &KeyRecord) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE keys SET name = ?2, team = ?3, user = ?4, models = ?5, rpm = ?6, tpm = ?7, \
             max_concurrency = ?8, budget_usd = ?9, budget_period = ?10, expires_at_unix = ?11, \
             disabled = ?12, metadata = ?13 WHERE id = ?1",
            params![
                k.id,
                k.name,
                k.team,
                k.user,
                serde_json::to_string(&k.models)?,
                k.rpm.map(int),
                k.tpm.map(int),
                k.max_concurrency,
                k.budget_usd,
                k.budget_period.as_str(),
                k.expires_at_unix.map(int),
                k.disabled,
                serde_json::to_string(&k.metadata)?,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    /// Removes a key; its ledger rows and spend stay for reports.
    pub fn delete_key(&self, id: &str) -> Result<()> {
        if self.conn.execute("DELETE FROM keys WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    /// The key with `id`.
    pub fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.key_where("id = ?1", id)
    }

    /// The key whose hash (hex, [`sluice_core::keys::hash_hex`]) is `hash_hex`.
    pub fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<KeyRecord>> {
        self.key_where("hash = ?1", hash_hex)
    }

    fn key_where(&self, cond: &str, arg: &str) -> Result<Option<KeyRecord>> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM keys WHERE {cond}"),
                [arg],
                key_from_row,
            )
            .optional()?;
        raw.map(finish_key).transpose()
    }

    /// Every key, ordered by creation then id (for the in-memory index at start-up).
    pub fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at_unix, id"
        ))?;
        let rows = stmt.query_map([], key_from_row)?;
        rows.map(|r| finish_key(r?)).collect()
    }

    /// Every key (the admin listing; same as [`all_keys`](Self::all_keys)).
    pub fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        self.all_keys()
    }

    /// The keys of one team.
    pub fn keys_of_team(&self, team: &str) -> Result<Vec<KeyRecord>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE team = ?1 ORDER BY created_at_unix, id"
        ))?;
        let rows = stmt.query_map([team], key_from_row)?;
        rows.map(|r| finish_key(r?)).collect()
    }

    // -- teams --------------------------------------------------------------------------------

    /// Adds a team with a new name.
    pub fn create_team(&self, t: &TeamRecord) -> Result<()> {
        let n = self.conn.execute(
            "INSERT INTO teams (name, rpm, tpm, max_concurrency, budget_usd, budget_period) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                t.name,
                t.rpm.map(int),
                t.tpm.map(int),
                t.max_concurrency,
                t.budget_usd,
                t.budget_period.as_str()
            ],
        );
        match n {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => Err(StoreError::Conflict(format!("team {}", t.name))),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces a team's limits (matched by name).
    pub fn update_team(&self, t: &TeamRecord) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE teams SET rpm = ?2, tpm = ?3, max_concurrency = ?4, budget_usd = ?5, \
             budget_period = ?6 WHERE name = ?1",
            params![
                t.name,
                t.rpm.map(int),
                t.tpm.map(int),
                t.max_concurrency,
                t.budget_usd,
                t.budget_period.as_str()
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    /// Removes a team. Its keys stay (and keep its name) until deleted or moved.
    pub fn delete_team(&self, name: &str) -> Result<()> {
        if self
            .conn
            .execute("DELETE FROM teams WHERE name = ?1", [name])?
            == 0
        {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    /// The team called `name`.
    pub fn get_team(&self, name: &str) -> Result<Option<TeamRecord>> {
        let raw = self
            .conn
            .query_row(
                "SELECT name, rpm, tpm, max_concurrency, budget_usd, budget_period \
                 FROM teams WHERE name = ?1",
                [name],
                team_from_row,
            )
            .optional()?;
        raw.map(finish_team).transpose()
    }

    /// Every team, by name.
    pub fn all_teams(&self) -> Result<Vec<TeamRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, rpm, tpm, max_concurrency, budget_usd, budget_period \
             FROM teams ORDER BY name",
        )?;
        let rows = stmt.query_map([], team_from_row)?;
        rows.map(|r| finish_team(r?)).collect()
    }

    /// Every team (the admin listing; same as [`all_teams`](Self::all_teams)).
    pub fn list_teams(&self) -> Result<Vec<TeamRecord>> {
        self.all_teams()
    }

    // -- spend and ledger ---------------------------------------------------------------------

    /// Micro-USD spent per key id or team name since `since_unix` (a day boundary: a
    /// [`period_start`]), from the per-day spend table.
    pub fn spend_totals_since(
        &self,
        scope: Scope,
        since_unix: u64,
    ) -> Result<HashMap<String, u64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, SUM(micros) FROM spend WHERE scope = ?1 AND day_start >= ?2 GROUP BY id",
        )?;
        let rows = stmt.query_map(params![scope.as_str(), int(since_unix)], |r| {
            Ok((r.get::<_, String>(0)?, uint(r.get(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Micro-USD one key or team spent since `since_unix`.
    pub fn spend_since(&self, scope: Scope, id: &str, since_unix: u64) -> Result<u64> {
        let v: Option<i64> = self.conn.query_row(
            "SELECT SUM(micros) FROM spend WHERE scope = ?1 AND id = ?2 AND day_start >= ?3",
            params![scope.as_str(), id, int(since_unix)],
            |r| r.get(0),
        )?;
        Ok(v.map_or(0, uint))
    }

    /// Spend of every key and team in its current period at `now_unix`, for rebuilding the
    /// in-memory budgets at start-up.
    pub fn rebuild_spend(&self, now_unix: u64) -> Result<SpendSnapshot> {
        let mut totals = HashMap::new();
        for scope in [Scope::Key, Scope::Team] {
            for p in [
                BudgetPeriod::Daily,
                BudgetPeriod::Weekly,
                BudgetPeriod::Monthly,
                BudgetPeriod::Lifetime,
            ] {
                let since = period_start(p, now_unix);
                totals.insert((scope, p), self.spend_totals_since(scope, since)?);
            }
        }
        Ok(SpendSnapshot { totals })
    }

    /// Ledger totals grouped by `group`, for requests with `from_ms <= ts_ms < to_ms` (unix
    /// milliseconds), most expensive first.
    pub fn spend_by(&self, group: SpendGroup, from_ms: u64, to_ms: u64) -> Result<Vec<SpendRow>> {
        let column = match group {
            SpendGroup::Key => "COALESCE(key_id, '')",
            SpendGroup::Team => "COALESCE(team, '')",
            SpendGroup::Model => "model",
            SpendGroup::Deployment => "COALESCE(deployment, '')",
            SpendGroup::Day => "CAST(ts_ms / 86400000 AS TEXT)",
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {column}, COUNT(*), SUM(input_tokens), SUM(output_tokens), \
             SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_micros) \
             FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY 1 ORDER BY 7 DESC, 1"
        ))?;
        let rows = stmt.query_map(params![int(from_ms), int(to_ms)], |r| {
            Ok(SpendRow {
                group: r.get(0)?,
                requests: uint(r.get(1)?),
                input_tokens: uint(r.get(2)?),
                output_tokens: uint(r.get(3)?),
                cached_tokens: uint(r.get(4)?),
                reasoning_tokens: uint(r.get(5)?),
                cost_micros: uint(r.get(6)?),
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        if group == SpendGroup::Day {
            for row in &mut out {
                let day: u64 = row.group.parse().unwrap_or(0);
                let (y, m, d) = civil_date(day * 86_400);
                row.group = format!("{y:04}-{m:02}-{d:02}");
            }
            out.sort_by(|a, b| a.group.cmp(&b.group));
        }
        Ok(out)
    }

    /// Ledger rows with `from_ms <= ts_ms < to_ms`, oldest first, at most `limit`.
    pub fn ledger(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<UsageRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT request_id, ts_ms, key_id, team, model, deployment, input_tokens, \
             output_tokens, cached_tokens, reasoning_tokens, estimated, cost_micros, status, \
             latency_ms FROM ledger WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY ts_ms, seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![int(from_ms), int(to_ms), int(limit as u64)], |r| {
            Ok(UsageRecord {
                request_id: r.get(0)?,
                ts_ms: uint(r.get(1)?),
                key_id: r.get::<_, Option<String>>(2)?.map(Arc::from),
                team: r.get::<_, Option<String>>(3)?.map(Arc::from),
                model: Arc::from(r.get::<_, String>(4)?),
                deployment: r.get::<_, Option<String>>(5)?.map(Arc::from),
                usage: Usage {
                    input_tokens: uint(r.get(6)?),
                    output_tokens: uint(r.get(7)?),
                    cached_tokens: uint(r.get(8)?),
                    reasoning_tokens: uint(r.get(9)?),
                    estimated: r.get::<_, i64>(10)? != 0,
                },
                cost_micros: uint(r.get(11)?),
                status: u16::try_from(r.get::<_, i64>(12)?).unwrap_or(0),
                latency_ms: uint(r.get(13)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Rows in the ledger.
    pub fn ledger_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))?;
        Ok(uint(n))
    }
}

/// One request's line in the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// When the request ended, unix milliseconds (wall clock).
    pub ts_ms: u64,
    /// The virtual key's id, if the request had one.
    pub key_id: Option<Arc<str>>,
    /// The key's team.
    pub team: Option<Arc<str>>,
    /// The model the client asked for.
    pub model: Arc<str>,
    /// The deployment that answered.
    pub deployment: Option<Arc<str>>,
    /// Tokens by kind.
    pub usage: Usage,
    /// Cost, micro-USD.
    pub cost_micros: u64,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Time from request to the end of the response, in milliseconds.
    pub latency_ms: u64,
}

/// [`LedgerSender::record`] refused a record because the channel is full (or the writer is
/// gone); here it is back, boxed so the `Ok` path stays small.
#[derive(Debug)]
pub struct Full(pub Box<UsageRecord>);

/// How the ledger writer batches.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Records the channel holds before [`LedgerSender::record`] refuses.
    pub capacity: usize,
    /// Longest a record waits in a batch before its commit.
    pub flush_interval: Duration,
    /// Records that make a batch commit at once.
    pub max_batch: usize,
    /// `synchronous=FULL` (every commit synced to disk) instead of `NORMAL`.
    pub synchronous_full: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            capacity: 65_536,
            flush_interval: Duration::from_millis(50),
            max_batch: 1_024,
            synchronous_full: false,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    committed: AtomicU64,
    rejected: AtomicU64,
    failed_commits: AtomicU64,
    lost: AtomicU64,
}

enum Msg {
    Record(UsageRecord),
    Flush(Sender<()>),
}

/// The data plane's handle to the ledger writer: cheap to clone, one per worker.
#[derive(Clone)]
pub struct LedgerSender {
    tx: Sender<Msg>,
    counters: Arc<Counters>,
}

impl LedgerSender {
    /// Queues a record for the writer. Never blocks: a full channel gives the record back.
    pub fn record(&self, r: UsageRecord) -> std::result::Result<(), Full> {
        match self.tx.try_send(Msg::Record(r)) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(
                TrySendError::Full(Msg::Record(r)) | TrySendError::Disconnected(Msg::Record(r)),
            ) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Full(Box::new(r)))
            }
            // Only records are sent here.
            Err(TrySendError::Full(Msg::Flush(_)) | TrySendError::Disconnected(Msg::Flush(_))) => {
                Ok(())
            }
        }
    }

    /// Blocks until every record sent before this call is committed, or `timeout` passes.
    /// Returns whether it was committed. For shutdown and tests, never on a worker.
    pub fn flush_and_wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_deadline(Msg::Flush(ack_tx), deadline).is_err() {
            return false;
        }
        ack_rx.recv_deadline(deadline).is_ok()
    }

    /// Records acknowledged: committed to the database.
    pub fn committed(&self) -> u64 {
        self.counters.committed.load(Ordering::Acquire)
    }

    /// Records accepted into the channel.
    pub fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    /// Records refused because the channel was full (or the writer gone).
    pub fn rejected(&self) -> u64 {
        self.counters.rejected.load(Ordering::Relaxed)
    }

    /// Commits that failed and were retried.
    pub fn failed_commits(&self) -> u64 {
        self.counters.failed_commits.load(Ordering::Relaxed)
    }

    /// Records in the channel or the open batch.
    pub fn pending(&self) -> u64 {
        self.sent()
            .saturating_sub(self.committed() + self.counters.lost.load(Ordering::Relaxed))
    }
}

/// The writer thread; join it after dropping every sender.
pub struct LedgerHandle {
    thread: JoinHandle<()>,
    counters: Arc<Counters>,
}

/// What the writer did, returned by [`LedgerHandle::join`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterReport {
    /// Records committed.
    pub committed: u64,
    /// Records given up on at shutdown after commits kept failing.
    pub lost: u64,
}

impl LedgerHandle {
    /// Waits for the writer to commit its last batch and stop (it stops when every
    /// [`LedgerSender`] is dropped).
    pub fn join(self) -> WriterReport {
        if self.thread.join().is_err() {
            tracing::error!("ledger writer thread panicked");
        }
        WriterReport {
            committed: self.counters.committed.load(Ordering::Acquire),
            lost: self.counters.lost.load(Ordering::Acquire),
        }
    }
}

/// The single thread that writes usage to the store.
pub struct LedgerWriter;

impl LedgerWriter {
    /// Opens the store at `path` for writing (migrating it) and starts the writer thread.
    pub fn spawn(path: impl AsRef<Path>) -> Result<(LedgerSender, LedgerHandle)> {
        Self::spawn_with(path, WriterOptions::default())
    }

    /// [`spawn`](Self::spawn) with explicit batching options.
    pub fn spawn_with(
        path: impl AsRef<Path>,
        opts: WriterOptions,
    ) -> Result<(LedgerSender, LedgerHandle)> {
        let conn = open_connection(path.as_ref(), opts.synchronous_full)?;
        let (tx, rx) = crossbeam_channel::bounded(opts.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || run_writer(conn, rx, opts, &c))?;
        Ok((
            LedgerSender {
                tx,
                counters: counters.clone(),
            },
            LedgerHandle { thread, counters },
        ))
    }
}

fn run_writer(mut conn: Connection, rx: Receiver<Msg>, opts: WriterOptions, c: &Counters) {
    let max_batch = opts.max_batch.max(1);
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(max_batch);
    let mut acks: Vec<Sender<()>> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let msg = match oldest {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_deadline(t + opts.flush_interval),
        };
        let closed = match msg {
            Ok(Msg::Record(r)) => {
                let first = *oldest.get_or_insert_with(Instant::now);
                batch.push(r);
                // Under a steady stream the deadline never times out: check it here too.
                if batch.len() < max_batch && first.elapsed() < opts.flush_interval {
                    continue;
                }
                false
            }
            Ok(Msg::Flush(ack)) => {
                acks.push(ack);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        commit_until_done(&mut conn, &mut batch, c, closed);
        oldest = None;
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closed {
            return;
        }
    }
}

/// Commits `batch`, retrying with backoff while it fails (the channel fills meanwhile, so the
/// data plane sees back-pressure instead of silent loss). At shutdown it gives up after a few
/// tries and counts the records lost.
fn commit_until_done(
    conn: &mut Connection,
    batch: &mut Vec<UsageRecord>,
    c: &Counters,
    closing: bool,
) {
    if batch.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match commit(conn, batch) {
            Ok(()) => {
                c.committed.fetch_add(batch.len() as u64, Ordering::AcqRel);
                batch.clear();
                return;
            }
            Err(e) => {
                tries += 1;
                c.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = batch.len(), tries, "ledger commit failed; retrying");
                if closing && tries >= 5 {
                    c.lost.fetch_add(batch.len() as u64, Ordering::AcqRel);
                    tracing::error!(records = batch.len(), "ledger records lost at shutdown");
                    batch.clear();
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn commit(conn: &mut Connection, batch: &[UsageRecord]) -> Result<()> {
    let tx = conn.transaction()?;
    let mut spend: HashMap<(Scope, &str, u64), u64> = HashMap::new();
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO ledger (request_id, ts_ms, key_id, team, model, deployment, \
             input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, \
             cost_micros, status, latency_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for r in batch {
            insert.execute(params![
                r.request_id,
                int(r.ts_ms),
                r.key_id.as_deref(),
                r.team.as_deref(),
                &*r.model,
                r.deployment.as_deref(),
                int(r.usage.input_tokens),
                int(r.usage.output_tokens),
                int(r.usage.cached_tokens),
                int(r.usage.reasoning_tokens),
                r.usage.estimated,
                int(r.cost_micros),
                r.status,
                int(r.latency_ms),
            ])?;
            if r.cost_micros == 0 {
                continue;
            }
            let day = r.ts_ms / 1000 / 86_400 * 86_400;
            if let Some(k) = r.key_id.as_deref() {
                *spend.entry((Scope::Key, k, day)).or_default() += r.cost_micros;
            }
            if let Some(t) = r.team.as_deref() {
                *spend.entry((Scope::Team, t, day)).or_default() += r.cost_micros;
            }
        }
        let mut upsert = tx.prepare_cached(
            "INSERT INTO spend (scope, id, day_start, micros) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (scope, id, day_start) DO UPDATE SET micros = micros + excluded.micros",
        )?;
        for ((scope, id, day), micros) in spend {
            upsert.execute(params![scope.as_str(), id, int(day), int(micros)])?;
        }
    }
    tx.commit()?;
    Ok(())
}
