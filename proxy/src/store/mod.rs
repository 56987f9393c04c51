//! The store: teams, virtual keys (hashed), spend per day and the per-request usage ledger.
//!
//! One seam, two sides:
//! - [`Backend`]: what a database must do. [`sqlite`] is the embedded default (one local file,
//!   WAL); [`postgres`] is the fleet's, shared by every replica. Both run the same test suite
//!   (`proxy/tests/store_suite`, from `proxy/tests/store.rs` and `proxy/tests/store_pg.rs`).
//! - [`Store`]: the handle callers hold, a boxed backend plus what every backend shares
//!   (listings, the spend snapshot, day labels). [`Store::open`] opens SQLite,
//!   [`Store::open_target`] either ([`StoreTarget`]).
//!
//! Two ways in, on two connections to the same database:
//! - [`Store`]: synchronous CRUD and reports for the admin thread and for start-up (load every
//!   key into the in-memory index, rebuild spend). Never used on the request path.
//! - [`LedgerWriter`]: one thread that owns its own connection for usage. The data plane hands
//!   it [`UsageRecord`]s through a bounded channel ([`LedgerSender::record`] never blocks) and
//!   never touches the database; the thread commits them in batches
//!   ([`Backend::insert_usage`]), ledger rows and spend together in one transaction. Its
//!   durability contract is in [`ledger`].
//!
//! Every connection brings the schema up to date when it opens ([`migrate`]) and refuses a
//! database whose schema is newer than this binary knows ([`StoreError::SchemaTooNew`]).
//!
//! Admin actions (who, what, when) are kept in an audit log ([`AuditRecord`]).
//!
//! Spend is kept per UTC day (`spend.day_start`), so any period that starts at a day boundary
//! (daily, weekly, monthly, lifetime) is a sum of rows: [`Store::spend_totals_since`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_core::keys::{KeyRecord, TeamRecord};
use sluice_core::limits::{civil_date, period_start, BudgetPeriod};
use sluice_core::usage::Usage;

pub mod ledger;
pub mod migrate;
pub mod postgres;
pub mod rows;
pub mod spool;
pub mod sqlite;
#[cfg(test)]
mod tests;

pub use ledger::{Full, LedgerHandle, LedgerSender, LedgerWriter, WriterOptions, WriterReport};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (I/O, corruption, busy past the timeout).
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused, or could not be reached.
    #[error("store: {0}")]
    Postgres(#[from] ::postgres::Error),
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
    /// The database was migrated by a newer Sluice: this binary does not know its schema and
    /// will not touch it.
    #[error(
        "store: the database schema is at version {found}, newer than this sluice knows \
         (up to version {known}); run a newer sluice, or point [store] at another database"
    )]
    SchemaTooNew {
        /// The version recorded in the database.
        found: u32,
        /// The latest version this binary has a migration for.
        known: u32,
    },
    /// A schema migration failed; it was rolled back and the database is at `version - 1`.
    #[error("store: migration {version} ({name}) failed and was rolled back: {source}")]
    Migration {
        /// The migration's version.
        version: u32,
        /// Its name.
        name: &'static str,
        /// Why.
        source: Box<StoreError>,
    },
    /// The writer thread could not be started.
    #[error("store: cannot start the ledger writer: {0}")]
    Spawn(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the database could not be reached (a connection refused, dropped or timed
    /// out), rather than refusing what was asked: trying again later may work.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.as_db_error().is_none(),
            _ => false,
        }
    }

    /// Whether the database refused the data itself (a value it cannot store, a constraint):
    /// the same rows will be refused again, however often they are retried.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.code().is_some_and(|c| {
                // Class 22: data exception; class 23: integrity constraint violation.
                c.code().starts_with("22") || c.code().starts_with("23")
            }),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::TypeMismatch
            ),
            _ => false,
        }
    }
}

/// The store's result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Which side of spend: a key (by id) or a team (by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Per key id.
    Key,
    /// Per team name.
    Team,
}

impl Scope {
    /// The value of the `spend.scope` column.
    pub fn as_str(self) -> &'static str {
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
    /// The response cache's verdict (`hit`, `semantic`, `miss`), in a group with a cache.
    pub cache: Option<&'static str>,
    /// What a cache hit saved, micro-USD.
    pub saved_micros: u64,
}

/// The ledger's `cache` column read back as one of its three words.
pub fn cache_label(v: Option<&str>) -> Option<&'static str> {
    match v? {
        "hit" => Some("hit"),
        "semantic" => Some("semantic"),
        "miss" => Some("miss"),
        _ => None,
    }
}

/// One admin action in the audit log: who, what, when, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// When, unix milliseconds (wall clock).
    pub ts_ms: u64,
    /// Who: the admin token's id (a short prefix of its hash), never the token.
    pub actor: String,
    /// Through what: `api`, `ui` (the admin page) or `cli`.
    pub via: String,
    /// What, e.g. `keys.create`, `keys.disable`, `teams.update`.
    pub action: String,
    /// On what: a key id or team name (empty for a create that failed before one existed).
    pub target: String,
    /// The HTTP status the admin API answered.
    pub status: u16,
}

/// The columns of [`sluice_core::keys::Limits`], the same in the `keys` and `teams` tables,
/// in the order backends read and write them (one helper per backend for both record types).
pub const LIMIT_COLUMNS: [&str; 5] = [
    "rpm",
    "tpm",
    "max_concurrency",
    "budget_usd",
    "budget_period",
];

/// A budget period from its column value.
pub(crate) fn period(name: &str) -> Result<BudgetPeriod> {
    BudgetPeriod::parse(name).ok_or_else(|| StoreError::BadValue(format!("budget period {name}")))
}

/// Database integers are i64; ours are u64. Saturate going in, clamp negatives coming out.
pub(crate) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// See [`int`].
pub(crate) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// What a database must do to be the store. Implemented by [`sqlite::Sqlite`].
///
/// Methods take `&self`: a backend with a `&mut` client (PostgreSQL's) keeps it in a
/// `RefCell`. A backend is `Send` so the [`LedgerWriter`] can own one on its thread; it need
/// not be `Sync` (the admin side keeps its [`Store`] behind a `Mutex`).
///
/// Errors: a duplicate id, name or key hash is [`StoreError::Conflict`], an update or delete
/// of a missing row is [`StoreError::NotFound`].
pub trait Backend: Send {
    /// Where the data lives, for logs (a path, a host and database name; never a password).
    fn location(&self) -> String;

    /// The schema version recorded in the database.
    fn schema_version(&self) -> Result<u32>;

    /// Gives back the memory the connection keeps for speed (SQLite's page cache), called by
    /// the ledger writer once it has been idle for a while: after a busy spell the cache is
    /// full (megabytes) and would stay so for as long as the gateway stays quiet. The next
    /// write reads back what it needs.
    fn release_memory(&self) {}

    /// Adds a key. Its id and its hash must be new.
    fn create_key(&self, k: &KeyRecord) -> Result<()>;
    /// Replaces a key's fields (matched by id). The hash and creation time may not change.
    fn update_key(&self, k: &KeyRecord) -> Result<()>;
    /// Removes a key; its ledger rows and spend stay for reports.
    fn delete_key(&self, id: &str) -> Result<()>;
    /// The key with `id`.
    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>>;
    /// The key whose hash (hex, [`sluice_core::keys::hash_hex`]) is `hash_hex`.
    fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<KeyRecord>>;
    /// Every key, ordered by creation then id.
    fn all_keys(&self) -> Result<Vec<KeyRecord>>;
    /// The keys of one team, ordered by creation then id.
    fn keys_of_team(&self, team: &str) -> Result<Vec<KeyRecord>>;

    /// Adds a team with a new name.
    fn create_team(&self, t: &TeamRecord) -> Result<()>;
    /// Replaces a team's limits (matched by name).
    fn update_team(&self, t: &TeamRecord) -> Result<()>;
    /// Removes a team. Its keys stay (and keep its name) until deleted or moved.
    fn delete_team(&self, name: &str) -> Result<()>;
    /// The team called `name`.
    fn get_team(&self, name: &str) -> Result<Option<TeamRecord>>;
    /// Every team, by name.
    fn all_teams(&self) -> Result<Vec<TeamRecord>>;

    /// Micro-USD spent per key id or team name since `since_unix` (a day boundary).
    fn spend_totals_since(&self, scope: Scope, since_unix: u64) -> Result<HashMap<String, u64>>;
    /// Micro-USD one key or team spent since `since_unix`.
    fn spend_since(&self, scope: Scope, id: &str, since_unix: u64) -> Result<u64>;
    /// Ledger totals grouped by `group` for `from_ms <= ts_ms < to_ms`, most expensive first
    /// then by group. For [`SpendGroup::Day`] the group is the UTC day number (unix days) in
    /// decimal: [`Store::spend_by`] turns it into a date and sorts by it.
    fn spend_by(&self, group: SpendGroup, from_ms: u64, to_ms: u64) -> Result<Vec<SpendRow>>;
    /// Ledger rows with `from_ms <= ts_ms < to_ms`, oldest first (ties in insertion order), at
    /// most `limit`.
    fn ledger(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<UsageRecord>>;
    /// Rows in the ledger.
    fn ledger_count(&self) -> Result<u64>;
    /// Removes the ledger rows older than `ts_ms` (retention) and returns how many. The
    /// per-day spend stays: budgets keep counting what those rows cost.
    fn delete_ledger_before(&self, ts_ms: u64) -> Result<u64>;

    /// Appends one admin action to the audit log.
    fn insert_audit(&self, r: &AuditRecord) -> Result<()>;
    /// Audit log entries with `from_ms <= ts_ms < to_ms`, newest first, at most `limit`.
    fn audit(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Appends `batch` to the ledger and adds its cost to the per-day spend of its keys and
    /// teams ([`spend_by_day`]), all in one transaction: on error nothing is written.
    fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()>;
}

/// Spend to add per (scope, id, UTC day start in unix seconds) for a batch of records; records
/// without cost add nothing.
///
/// A batch's rows mostly repeat the previous row's key, team and day, so each scope sums a
/// run of equal rows and touches the map once per run (hashing every row's key and team
/// cost the ledger writer some 900 instructions per row).
pub fn spend_by_day(batch: &[UsageRecord]) -> HashMap<(Scope, &str, u64), u64> {
    type Run<'a> = Option<((Scope, &'a str, u64), u64)>;
    fn add<'a>(spend: &mut HashMap<(Scope, &'a str, u64), u64>, run: Run<'a>) {
        if let Some((k, micros)) = run {
            let e = spend.entry(k).or_default();
            *e = e.saturating_add(micros);
        }
    }
    let mut spend: HashMap<(Scope, &str, u64), u64> = HashMap::new();
    let mut runs: [Run<'_>; 2] = [None, None];
    for r in batch.iter().filter(|r| r.cost_micros != 0) {
        let day = r.ts_ms / 1000 / 86_400 * 86_400;
        let ids = [
            (Scope::Key, r.key_id.as_deref()),
            (Scope::Team, r.team.as_deref()),
        ];
        for (run, (scope, id)) in runs.iter_mut().zip(ids) {
            let Some(id) = id else {
                continue;
            };
            let k = (scope, id, day);
            match run {
                // Saturating: a bogus cost must not panic the writer or poison the batch.
                // Rows of one key share its strings: the pointers tell them apart first.
                Some(((s, i, d), micros))
                    if (*s, *d) == (scope, day) && (std::ptr::eq(*i, id) || *i == id) =>
                {
                    *micros = micros.saturating_add(r.cost_micros)
                }
                _ => add(&mut spend, run.replace((k, r.cost_micros))),
            }
        }
    }
    for run in runs {
        add(&mut spend, run);
    }
    spend
}

/// Which database the store is in: `[store] path` (SQLite) or `[store] url` (PostgreSQL).
#[derive(Clone, Debug)]
pub enum StoreTarget {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server and database.
    Postgres(Box<postgres::PgTarget>),
}

impl StoreTarget {
    /// Where the data lives, for logs (never a password).
    pub fn location(&self) -> String {
        match self {
            StoreTarget::Sqlite(p) => p.display().to_string(),
            StoreTarget::Postgres(t) => t.location().to_string(),
        }
    }

    /// Opens one connection (migrating the schema); `synchronous_full` is SQLite's.
    pub fn connect(&self, synchronous_full: bool) -> Result<Box<dyn Backend>> {
        Ok(match self {
            StoreTarget::Sqlite(p) => Box::new(sqlite::Sqlite::open(p, synchronous_full)?),
            StoreTarget::Postgres(t) => Box::new(postgres::Postgres::open(t)?),
        })
    }
}

/// The store for the admin thread and start-up: CRUD of teams and keys, spend reports, over
/// any [`Backend`].
///
/// Not `Sync` (one connection): keep it on one thread, or behind a `Mutex`.
pub struct Store {
    backend: Box<dyn Backend>,
}

impl Store {
    /// Opens (creating if need be) the SQLite store at `path` and brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Ok(Store::with_backend(Box::new(sqlite::Sqlite::open(
            path.as_ref(),
            false,
        )?)))
    }

    /// Opens the store at `target` and brings its schema up to date.
    pub fn open_target(target: &StoreTarget) -> Result<Store> {
        Ok(Store::with_backend(target.connect(false)?))
    }

    /// A store over an opened (and migrated) backend.
    pub fn with_backend(backend: Box<dyn Backend>) -> Store {
        Store { backend }
    }

    /// Where the data lives, for logs.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32> {
        self.backend.schema_version()
    }

    // -- keys ---------------------------------------------------------------------------------

    /// Adds a key. Its id and its hash must be new.
    pub fn create_key(&self, k: &KeyRecord) -> Result<()> {
        self.backend.create_key(k)
    }

    /// Replaces a key's fields (matched by id). The hash and creation time may not change.
    pub fn update_key(&self, k: &KeyRecord) -> Result<()> {
        self.backend.update_key(k)
    }

    /// Removes a key; its ledger rows and spend stay for reports.
    pub fn delete_key(&self, id: &str) -> Result<()> {
        self.backend.delete_key(id)
    }

    /// The key with `id`.
    pub fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        self.backend.get_key(id)
    }

    /// The key whose hash (hex, [`sluice_core::keys::hash_hex`]) is `hash_hex`.
    pub fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<KeyRecord>> {
        self.backend.find_key_by_hash(hash_hex)
    }

    /// Every key, ordered by creation then id (for the in-memory index at start-up).
    pub fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        self.backend.all_keys()
    }

    /// Every key (the admin listing; same as [`all_keys`](Self::all_keys)).
    pub fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        self.backend.all_keys()
    }

    /// The keys of one team.
    pub fn keys_of_team(&self, team: &str) -> Result<Vec<KeyRecord>> {
        self.backend.keys_of_team(team)
    }

    // -- teams --------------------------------------------------------------------------------

    /// Adds a team with a new name.
    pub fn create_team(&self, t: &TeamRecord) -> Result<()> {
        self.backend.create_team(t)
    }

    /// Replaces a team's limits (matched by name).
    pub fn update_team(&self, t: &TeamRecord) -> Result<()> {
        self.backend.update_team(t)
    }

    /// Removes a team. Its keys stay (and keep its name) until deleted or moved.
    pub fn delete_team(&self, name: &str) -> Result<()> {
        self.backend.delete_team(name)
    }

    /// The team called `name`.
    pub fn get_team(&self, name: &str) -> Result<Option<TeamRecord>> {
        self.backend.get_team(name)
    }

    /// Every team, by name.
    pub fn all_teams(&self) -> Result<Vec<TeamRecord>> {
        self.backend.all_teams()
    }

    /// Every team (the admin listing; same as [`all_teams`](Self::all_teams)).
    pub fn list_teams(&self) -> Result<Vec<TeamRecord>> {
        self.backend.all_teams()
    }

    // -- spend and ledger ---------------------------------------------------------------------

    /// Micro-USD spent per key id or team name since `since_unix` (a day boundary: a
    /// [`period_start`]), from the per-day spend table.
    pub fn spend_totals_since(
        &self,
        scope: Scope,
        since_unix: u64,
    ) -> Result<HashMap<String, u64>> {
        self.backend.spend_totals_since(scope, since_unix)
    }

    /// Micro-USD one key or team spent since `since_unix`.
    pub fn spend_since(&self, scope: Scope, id: &str, since_unix: u64) -> Result<u64> {
        self.backend.spend_since(scope, id, since_unix)
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
                totals.insert((scope, p), self.backend.spend_totals_since(scope, since)?);
            }
        }
        Ok(SpendSnapshot { totals })
    }

    /// Ledger totals grouped by `group`, for requests with `from_ms <= ts_ms < to_ms` (unix
    /// milliseconds), most expensive first; by day, oldest first.
    pub fn spend_by(&self, group: SpendGroup, from_ms: u64, to_ms: u64) -> Result<Vec<SpendRow>> {
        let mut out = self.backend.spend_by(group, from_ms, to_ms)?;
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
        self.backend.ledger(from_ms, to_ms, limit)
    }

    /// Rows in the ledger.
    pub fn ledger_count(&self) -> Result<u64> {
        self.backend.ledger_count()
    }

    // -- audit log ----------------------------------------------------------------------------

    /// Appends one admin action to the audit log.
    pub fn insert_audit(&self, r: &AuditRecord) -> Result<()> {
        self.backend.insert_audit(r)
    }

    /// Audit log entries with `from_ms <= ts_ms < to_ms`, newest first, at most `limit`.
    pub fn audit(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.backend.audit(from_ms, to_ms, limit)
    }
}
