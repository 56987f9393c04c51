//! Versioned schema migrations: an ordered list per backend, applied when a connection opens.
//!
//! A [`Migration`] is a version (1, 2, 3, … with no gaps), a name for logs and errors, and the
//! SQL that takes the schema from the previous version to this one. [`migrate`] reads the
//! version the database records, then applies each later migration in its own transaction,
//! which also records the new version, so a migration either lands whole or not at all: a
//! failure is rolled back and reported as [`StoreError::Migration`], leaving the database at
//! the last version that succeeded.
//!
//! A database whose version is *newer* than the last migration this binary knows was written
//! by a newer Sluice, which may have changed what the columns mean: it is refused
//! ([`StoreError::SchemaTooNew`], naming both versions) before anything is read or written.
//!
//! Where the version is recorded is the backend's business ([`Schema`]): SQLite keeps it in
//! `PRAGMA user_version` (transactional, and what databases made before this module already
//! carry); a server database would keep a `schema_migrations` table.
//!
//! Migrations are append-only: never edit one that has shipped; add the next version.

use super::{Result, StoreError};

/// One step of a backend's schema.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// The version the schema has once this is applied; the first migration is 1.
    pub version: u32,
    /// A short name for logs and errors.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// The connection a migration runs on, as [`migrate`] needs it.
///
/// Call order per migration: [`begin`](Self::begin), then [`apply`](Self::apply) and
/// [`commit`](Self::commit), or [`rollback`](Self::rollback) on any error.
pub trait Schema {
    /// The recorded version, read outside a transaction (0 for a new database).
    fn version(&mut self) -> Result<u32>;
    /// Starts a transaction that holds off other connections migrating the same database
    /// (SQLite: `BEGIN IMMEDIATE`), and reads the recorded version inside it.
    fn begin(&mut self) -> Result<u32>;
    /// Runs `m.sql` and records `m.version`, inside the transaction.
    fn apply(&mut self, m: &Migration) -> Result<()>;
    /// Commits the transaction.
    fn commit(&mut self) -> Result<()>;
    /// Rolls the transaction back.
    fn rollback(&mut self) -> Result<()>;
}

/// The version `list` ends at (0 for an empty list).
pub fn latest(list: &[Migration]) -> u32 {
    list.last().map_or(0, |m| m.version)
}

/// Checks that `list` numbers its migrations 1, 2, 3, … with no gap.
pub fn check_list(list: &[Migration]) -> Result<()> {
    for (i, m) in list.iter().enumerate() {
        if usize::try_from(m.version).ok() != Some(i + 1) {
            return Err(StoreError::BadValue(format!(
                "migration list: {} ({}) is at position {}",
                m.version,
                m.name,
                i + 1
            )));
        }
    }
    Ok(())
}

/// Brings the database on `schema` up to the last version in `list` and returns it. Refuses a
/// database newer than `list` knows; a migration that fails is rolled back.
pub fn migrate(schema: &mut dyn Schema, list: &[Migration]) -> Result<u32> {
    check_list(list)?;
    let known = latest(list);
    let found = schema.version()?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    if found == known {
        return Ok(found);
    }
    loop {
        // Read again inside the transaction: another connection may have migrated meanwhile.
        let found = schema.begin()?;
        let next = match list.get(found as usize) {
            Some(m) if found < known => m,
            _ => {
                schema.rollback()?;
                if found > known {
                    return Err(StoreError::SchemaTooNew { found, known });
                }
                return Ok(found);
            }
        };
        if let Err(e) = schema.apply(next).and_then(|()| schema.commit()) {
            if let Err(r) = schema.rollback() {
                tracing::error!(error = %r, "store: rollback of a failed migration failed");
            }
            return Err(StoreError::Migration {
                version: next.version,
                name: next.name,
                source: Box::new(e),
            });
        }
        tracing::info!(
            version = next.version,
            name = next.name,
            "store: schema migrated"
        );
    }
}
