//! The fleet backend: PostgreSQL, shared by every replica.
//!
//! Each [`Postgres`] is one connection (the synchronous `postgres` client, which runs a small
//! runtime of its own inside the calling thread: only the admin thread and the ledger writer
//! ever hold one, never a data-plane worker). A connection that the server dropped is opened
//! again on the next call, so a restarted server is picked up by itself.
//!
//! Opening migrates the schema ([`MIGRATIONS`]): the version is the highest row of
//! `sluice_schema_migrations`, and every migration runs in a transaction that first takes a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]), so replicas starting together apply
//! each migration once. Integers are `BIGINT` (a u64 saturates at `i64::MAX`, as on SQLite);
//! the ledger keeps an identity `seq` column for insertion order. A unique violation (SQLSTATE
//! 23505) is [`StoreError::Conflict`].
//!
//! TLS: `sslmode=require` in the URL connects through rustls (webpki and system roots, plus
//! `ca_file`); otherwise the connection is plain (loopback, or a private network).

use std::borrow::Cow;
use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row, Statement};
use sluice_core::keys::{KeyRecord, Limits, TeamRecord};

use super::migrate;
use super::rows::{self, KEY_COLUMNS, TEAM_COLUMNS, USAGE_COLUMNS};
use super::{
    int, spend_by_day, uint, AuditRecord, Backend, Result, Scope, SpendGroup, SpendRow, StoreError,
    UsageRecord,
};

mod schema;

use schema::recorded_version;
pub use schema::{PgSchema, MIGRATIONS, MIGRATION_LOCK};

/// `i64::MAX`: sums saturate there (as the u64 they become does at `i64::MAX` on the way in).
const MAX: &str = "9223372036854775807";

/// Where to connect and how.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    location: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.location)
    }
}

impl PgTarget {
    /// Parses a `postgres://` URL (or a libpq key=value string). `sslmode=require` turns TLS
    /// on, verified against the webpki and system roots and the PEM bundle `ca_file`. A
    /// missing connect timeout becomes 5 s, so an unreachable server never stalls the writer
    /// for long.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<PgTarget> {
        // The parser's errors never contain the URL (and so no password).
        let mut config =
            Config::from_str(url).map_err(|e| StoreError::BadValue(format!("[store] url: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(rustls_connector(ca_file)?),
            // `prefer` (the default) and `disable`: plain, as on loopback.
            _ => None,
        };
        let host = config
            .get_hosts()
            .first()
            .map_or_else(String::new, |h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let location = format!(
            "postgresql://{}:{port}/{}{}",
            host,
            config.get_dbname().unwrap_or(""),
            if tls.is_some() { " (tls)" } else { "" }
        );
        Ok(PgTarget {
            config,
            tls,
            location,
        })
    }

    /// The server and database, for logs (never the password).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn connect(&self) -> Result<Client> {
        Ok(match &self.tls {
            Some(tls) => self.config.connect(tls.clone())?,
            None => self.config.connect(NoTls)?,
        })
    }
}

fn rustls_connector(ca_file: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            StoreError::BadValue(format!("[store] ca_file {}: {e}", path.display()))
        })?;
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls::pki_types::CertificateDer<'static> = cert.map_err(|e| {
                StoreError::BadValue(format!("[store] ca_file {}: {e}", path.display()))
            })?;
            roots
                .add(cert)
                .map_err(|e| StoreError::BadValue(format!("[store] ca_file: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(StoreError::BadValue(format!(
                "[store] ca_file {}: no certificate in it",
                path.display()
            )));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::BadValue(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One connection to the PostgreSQL store, reopened when the server dropped it.
pub struct Postgres {
    target: PgTarget,
    client: RefCell<Client>,
    /// The ledger's insert, prepared once per connection.
    insert_usage: RefCell<Option<Statement>>,
}

/// The limit columns' values as PostgreSQL takes them.
struct LimitValues {
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    budget_usd: Option<f64>,
    budget_period: &'static str,
}

impl LimitValues {
    fn new(l: &Limits) -> Self {
        LimitValues {
            rpm: l.rpm.map(int),
            tpm: l.tpm.map(int),
            max_concurrency: l.max_concurrency.map(i64::from),
            budget_usd: l.budget_usd,
            budget_period: l.budget_period.as_str(),
        }
    }
}

/// An INSERT's error: a unique violation (23505) is a conflict on `what`.
fn conflict_or(e: postgres::Error, what: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

/// `s` as PostgreSQL's `TEXT` takes it: a NUL byte (which it refuses, and which would make
/// every retry of a ledger batch fail) becomes U+FFFD. Model names and request ids come from
/// clients.
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

impl Postgres {
    /// Connects to `target`, refuses a schema newer than this binary, and migrates.
    pub fn open(target: &PgTarget) -> Result<Postgres> {
        let mut client = target.connect()?;
        migrate::migrate(&mut PgSchema(&mut client), MIGRATIONS)?;
        Ok(Postgres {
            target: target.clone(),
            client: RefCell::new(client),
            insert_usage: RefCell::new(None),
        })
    }

    /// The connection, opened again first if the server dropped it.
    fn client(&self) -> Result<RefMut<'_, Client>> {
        let mut client = self.client.borrow_mut();
        if client.is_closed() {
            let mut fresh = self.target.connect()?;
            // A server restored from elsewhere may carry another schema: check it again.
            let found = recorded_version(&mut fresh)?;
            let known = migrate::latest(MIGRATIONS);
            if found > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
            *client = fresh;
            // Prepared statements belonged to the old connection.
            *self.insert_usage.borrow_mut() = None;
            tracing::info!(store = %self.target.location, "store: reconnected");
        }
        Ok(client)
    }

    fn execute(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        Ok(self.client()?.execute(sql, args)?)
    }

    fn query(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        Ok(self.client()?.query(sql, args)?)
    }

    fn keys_where(&self, cond: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<KeyRecord>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keys {cond} ORDER BY created_at_unix, id");
        self.query(&sql, args)?.iter().map(rows::key).collect()
    }
}

impl Backend for Postgres {
    fn location(&self) -> String {
        self.target.location.clone()
    }

    fn schema_version(&self) -> Result<u32> {
        recorded_version(&mut *self.client()?)
    }

    // -- keys ---------------------------------------------------------------------------------

    fn create_key(&self, k: &KeyRecord) -> Result<()> {
        let (models, metadata) = (
            serde_json::to_string(&k.models)?,
            serde_json::to_string(&k.metadata)?,
        );
        let (expires, created) = (k.expires_at_unix.map(int), int(k.created_at_unix));
        let l = LimitValues::new(&k.limits);
        let sql = format!(
            "INSERT INTO keys ({KEY_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        let args: [&(dyn ToSql + Sync); 16] = [
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
            &l.rpm,
            &l.tpm,
            &l.max_concurrency,
            &l.budget_usd,
            &l.budget_period,
        ];
        match self.client()?.execute(&sql, &args) {
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
        let l = LimitValues::new(&k.limits);
        // The hash, prefix and creation time never change.
        let n = self.execute(
            "UPDATE keys SET name = $2, team = $3, \"user\" = $4, models = $5, \
             expires_at_unix = $6, disabled = $7, metadata = $8, rpm = $9, tpm = $10, \
             max_concurrency = $11, budget_usd = $12, budget_period = $13 WHERE id = $1",
            &[
                &k.id,
                &k.name,
                &k.team,
                &k.user,
                &models,
                &expires,
                &k.disabled,
                &metadata,
                &l.rpm,
                &l.tpm,
                &l.max_concurrency,
                &l.budget_usd,
                &l.budget_period,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    fn delete_key(&self, id: &str) -> Result<()> {
        if self.execute("DELETE FROM keys WHERE id = $1", &[&id])? == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>> {
        Ok(self.keys_where("WHERE id = $1", &[&id])?.pop())
    }

    fn find_key_by_hash(&self, hash_hex: &str) -> Result<Option<KeyRecord>> {
        Ok(self.keys_where("WHERE hash = $1", &[&hash_hex])?.pop())
    }

    fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        self.keys_where("", &[])
    }

    fn keys_of_team(&self, team: &str) -> Result<Vec<KeyRecord>> {
        self.keys_where("WHERE team = $1", &[&team])
    }

    // -- teams --------------------------------------------------------------------------------

    fn create_team(&self, t: &TeamRecord) -> Result<()> {
        let l = LimitValues::new(&t.limits);
        let sql = format!("INSERT INTO teams ({TEAM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
        let args: [&(dyn ToSql + Sync); 6] = [
            &t.name,
            &l.rpm,
            &l.tpm,
            &l.max_concurrency,
            &l.budget_usd,
            &l.budget_period,
        ];
        match self.client()?.execute(&sql, &args) {
            Ok(_) => Ok(()),
            Err(e) => Err(conflict_or(e, || format!("team {}", t.name))),
        }
    }

    fn update_team(&self, t: &TeamRecord) -> Result<()> {
        let l = LimitValues::new(&t.limits);
        let n = self.execute(
            "UPDATE teams SET rpm = $2, tpm = $3, max_concurrency = $4, budget_usd = $5, \
             budget_period = $6 WHERE name = $1",
            &[
                &t.name,
                &l.rpm,
                &l.tpm,
                &l.max_concurrency,
                &l.budget_usd,
                &l.budget_period,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    fn delete_team(&self, name: &str) -> Result<()> {
        if self.execute("DELETE FROM teams WHERE name = $1", &[&name])? == 0 {
            return Err(StoreError::NotFound("team"));
        }
        Ok(())
    }

    fn get_team(&self, name: &str) -> Result<Option<TeamRecord>> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams WHERE name = $1");
        self.query(&sql, &[&name])?
            .first()
            .map(rows::team)
            .transpose()
    }

    fn all_teams(&self) -> Result<Vec<TeamRecord>> {
        let sql = format!("SELECT {TEAM_COLUMNS} FROM teams ORDER BY name");
        self.query(&sql, &[])?.iter().map(rows::team).collect()
    }

    // -- spend and ledger ---------------------------------------------------------------------

    fn spend_totals_since(&self, scope: Scope, since_unix: u64) -> Result<HashMap<String, u64>> {
        let rows = self.query(
            &format!(
                "SELECT id, LEAST(COALESCE(SUM(micros), 0), {MAX})::BIGINT FROM spend \
                 WHERE scope = $1 AND day_start >= $2 GROUP BY id"
            ),
            &[&scope.as_str(), &int(since_unix)],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, uint(r.try_get(1)?))))
            .collect()
    }

    fn spend_since(&self, scope: Scope, id: &str, since_unix: u64) -> Result<u64> {
        let rows = self.query(
            &format!(
                "SELECT LEAST(COALESCE(SUM(micros), 0), {MAX})::BIGINT FROM spend \
                 WHERE scope = $1 AND id = $2 AND day_start >= $3"
            ),
            &[&scope.as_str(), &id, &int(since_unix)],
        )?;
        let v: Option<i64> = match rows.first() {
            Some(r) => r.try_get(0)?,
            None => None,
        };
        Ok(v.map_or(0, uint))
    }

    fn spend_by(&self, group: SpendGroup, from_ms: u64, to_ms: u64) -> Result<Vec<SpendRow>> {
        let column = rows::spend_group(group, "(ts_ms / 86400000)::TEXT");
        // Bytewise order of the group (as SQLite's), whatever the database's collation.
        let select = rows::spend_select(&format!("{column} COLLATE \"C\""), |c| {
            format!("LEAST(COALESCE(SUM({c}), 0), {MAX})::BIGINT")
        });
        let sql = format!(
            "SELECT {select} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 \
             GROUP BY 1 ORDER BY 7 DESC, 1"
        );
        let found = self.query(&sql, &[&int(from_ms), &int(to_ms)])?;
        found.iter().map(rows::spend).collect()
    }

    fn ledger(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<UsageRecord>> {
        let sql = format!(
            "SELECT {USAGE_COLUMNS} FROM ledger WHERE ts_ms >= $1 AND ts_ms < $2 \
             ORDER BY ts_ms, seq LIMIT $3"
        );
        let found = self.query(&sql, &[&int(from_ms), &int(to_ms), &int(limit as u64)])?;
        found.iter().map(rows::usage).collect()
    }

    fn ledger_count(&self) -> Result<u64> {
        let rows = self.query("SELECT COUNT(*) FROM ledger", &[])?;
        match rows.first() {
            Some(r) => Ok(uint(r.try_get(0)?)),
            None => Ok(0),
        }
    }

    fn insert_audit(&self, r: &AuditRecord) -> Result<()> {
        self.execute(
            "INSERT INTO audit (ts_ms, actor, via, action, target, status) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &int(r.ts_ms),
                &text(&r.actor),
                &text(&r.via),
                &text(&r.action),
                &text(&r.target),
                &i32::from(r.status),
            ],
        )?;
        Ok(())
    }

    fn audit(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let rows = self.query(
            "SELECT ts_ms, actor, via, action, target, status FROM audit \
             WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY ts_ms DESC, seq DESC LIMIT $3",
            &[&int(from_ms), &int(to_ms), &int(limit as u64)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    ts_ms: uint(r.try_get(0)?),
                    actor: r.try_get(1)?,
                    via: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    status: u16::try_from(r.try_get::<_, i32>(5)?).unwrap_or(0),
                })
            })
            .collect()
    }

    fn delete_ledger_before(&self, ts_ms: u64) -> Result<u64> {
        self.execute("DELETE FROM ledger WHERE ts_ms < $1", &[&int(ts_ms)])
    }

    fn insert_usage(&self, batch: &[UsageRecord]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // One statement per table, the rows as arrays: one round trip whatever the batch.
        let col = |f: &dyn Fn(&UsageRecord) -> i64| batch.iter().map(f).collect::<Vec<i64>>();
        let opt = |f: &dyn Fn(&UsageRecord) -> Option<&str>| {
            batch
                .iter()
                .map(|r| f(r).map(text))
                .collect::<Vec<Option<Cow<'_, str>>>>()
        };
        let request_id: Vec<Cow<'_, str>> = batch.iter().map(|r| text(&r.request_id)).collect();
        let model: Vec<Cow<'_, str>> = batch.iter().map(|r| text(&r.model)).collect();
        let estimated: Vec<bool> = batch.iter().map(|r| r.usage.estimated).collect();
        let status: Vec<i32> = batch.iter().map(|r| i32::from(r.status)).collect();
        let cache: Vec<Option<&str>> = batch.iter().map(|r| r.cache).collect();
        let saved = col(&|r| int(r.saved_micros));
        let (ts, input, output) = (
            col(&|r| int(r.ts_ms)),
            col(&|r| int(r.usage.input_tokens)),
            col(&|r| int(r.usage.output_tokens)),
        );
        let (cached_tokens, reasoning, cost, latency) = (
            col(&|r| int(r.usage.cached_tokens)),
            col(&|r| int(r.usage.reasoning_tokens)),
            col(&|r| int(r.cost_micros)),
            col(&|r| int(r.latency_ms)),
        );
        let (key_id, team, deployment) = (
            opt(&|r| r.key_id.as_deref()),
            opt(&|r| r.team.as_deref()),
            opt(&|r| r.deployment.as_deref()),
        );
        let spend = spend_by_day(batch);
        let scopes: Vec<&str> = spend.keys().map(|(s, _, _)| s.as_str()).collect();
        let ids: Vec<Cow<'_, str>> = spend.keys().map(|(_, id, _)| text(id)).collect();
        let days: Vec<i64> = spend.keys().map(|(_, _, d)| int(*d)).collect();
        let micros: Vec<i64> = spend.values().map(|m| int(*m)).collect();

        let mut client = self.client()?;
        let mut cached = self.insert_usage.borrow_mut();
        let statement = match &*cached {
            Some(st) => st.clone(),
            None => {
                let st = client.prepare(&insert_usage_sql())?;
                *cached = Some(st.clone());
                st
            }
        };
        // One statement: atomic by itself, so one round trip commits the batch.
        client.execute(
            &statement,
            &[
                &request_id,
                &ts,
                &key_id,
                &team,
                &model,
                &deployment,
                &input,
                &output,
                &cached_tokens,
                &reasoning,
                &estimated,
                &cost,
                &status,
                &latency,
                &cache,
                &saved,
                &scopes,
                &ids,
                &days,
                &micros,
            ],
        )?;
        Ok(())
    }
}

/// Ledger rows and their spend in one statement (a data-modifying CTE): both land or
/// neither, in one round trip. The rows come as arrays, one per column.
fn insert_usage_sql() -> String {
    format!(
        "WITH rows AS (\
           INSERT INTO ledger (request_id, ts_ms, key_id, team, model, deployment, \
             input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, \
             cost_micros, status, latency_ms, cache, saved_micros) \
           SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
             $6::TEXT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], \
             $11::BOOLEAN[], $12::BIGINT[], $13::INTEGER[], $14::BIGINT[], $15::TEXT[], \
             $16::BIGINT[])) \
         INSERT INTO spend (scope, id, day_start, micros) \
         SELECT * FROM UNNEST($17::TEXT[], $18::TEXT[], $19::BIGINT[], $20::BIGINT[]) \
         ON CONFLICT (scope, id, day_start) \
         DO UPDATE SET micros = LEAST(spend.micros::NUMERIC + excluded.micros, {MAX})::BIGINT"
    )
}
