//! PostgreSQL's schema: the migrations, and how a connection records and applies them
//! (versions in `sluice_schema_migrations`, each migration in a transaction under an
//! advisory lock, so replicas starting together apply it once).

use postgres::Client;

use crate::store::migrate::{Migration, Schema};
use crate::store::{Result, StoreError};

/// PostgreSQL's schema, version by version. Append only: a shipped migration never changes.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "keys, teams, spend and ledger",
        sql: r#"
CREATE TABLE teams (
    name TEXT PRIMARY KEY,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrency BIGINT,
    budget_usd DOUBLE PRECISION,
    budget_period TEXT NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    team TEXT NOT NULL,
    "user" TEXT,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    models TEXT NOT NULL,
    rpm BIGINT,
    tpm BIGINT,
    max_concurrency BIGINT,
    budget_usd DOUBLE PRECISION,
    budget_period TEXT NOT NULL,
    expires_at_unix BIGINT,
    disabled BOOLEAN NOT NULL,
    metadata TEXT NOT NULL,
    created_at_unix BIGINT NOT NULL
);
CREATE INDEX keys_team ON keys(team);
CREATE TABLE spend (
    scope TEXT NOT NULL CHECK (scope IN ('key', 'team')),
    id TEXT NOT NULL,
    day_start BIGINT NOT NULL,
    micros BIGINT NOT NULL,
    PRIMARY KEY (scope, id, day_start)
);
CREATE TABLE ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    key_id TEXT,
    team TEXT,
    model TEXT NOT NULL,
    deployment TEXT,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    estimated BOOLEAN NOT NULL,
    cost_micros BIGINT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms BIGINT NOT NULL
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
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
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
ALTER TABLE ledger ADD COLUMN saved_micros BIGINT NOT NULL DEFAULT 0;
"#,
    },
    Migration {
        version: 4,
        name: "ledger: drop the per-key and per-team time indexes no query uses",
        // Every ledger read selects a time range (`ts_ms`, served by `ledger_ts`) and groups
        // or filters the rows it gets; these two cost the ledger writer a B-tree insert each
        // per row. `ledger_ts` stays: SQLite's version 5 replaced it with per-batch spans to
        // save the gateway's writer thread its insert, but here that cost is the database
        // server's, and PostgreSQL's planner serves `ORDER BY ts_ms LIMIT n` from it.
        sql: r#"
DROP INDEX IF EXISTS ledger_key_ts;
DROP INDEX IF EXISTS ledger_team_ts;
"#,
    },
];

/// The advisory lock key every Sluice takes while migrating (ASCII "sluice" in a bigint).
pub const MIGRATION_LOCK: i64 = 0x736c_7569_6365;

/// The table that records applied migrations.
const VERSIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// A connection's [`Schema`] (what `migrate::migrate` runs on): versions in
/// `sluice_schema_migrations`, each migration under the advisory lock.
pub struct PgSchema<'a>(pub &'a mut Client);

/// The highest applied migration (0 on an empty database).
pub(super) fn recorded_version(client: &mut Client) -> Result<u32> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('sluice_schema_migrations') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one("SELECT MAX(version) FROM sluice_schema_migrations", &[])?
        .get(0);
    u32::try_from(v.unwrap_or(0)).map_err(|_| StoreError::BadValue(format!("schema version {v:?}")))
}

impl Schema for PgSchema<'_> {
    fn version(&mut self) -> Result<u32> {
        recorded_version(self.0)
    }

    fn begin(&mut self) -> Result<u32> {
        self.0.batch_execute("BEGIN")?;
        let inside = (|| {
            self.0
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            self.0.batch_execute(VERSIONS_TABLE)?;
            recorded_version(self.0)
        })();
        if inside.is_err() {
            let _ = self.0.batch_execute("ROLLBACK");
        }
        inside
    }

    fn apply(&mut self, m: &Migration) -> Result<()> {
        self.0.batch_execute(m.sql)?;
        let version = i32::try_from(m.version).unwrap_or(i32::MAX);
        self.0.execute(
            "INSERT INTO sluice_schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &m.name],
        )?;
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.0.batch_execute("COMMIT")?)
    }

    fn rollback(&mut self) -> Result<()> {
        if !self.0.is_closed() {
            self.0.batch_execute("ROLLBACK")?;
        }
        Ok(())
    }
}
