//! Rows into records, once for every backend.
//!
//! Each backend selects the same columns in the same order ([`KEY_COLUMNS`], [`TEAM_COLUMNS`],
//! [`USAGE_COLUMNS`], [`spend_select`]) and hands its row to the readers here through
//! [`Columns`], the four kinds of value the schema uses. Integer widths, booleans stored as
//! integers and NULLs are the backend's business; what a column means is decided only here.

use std::sync::Arc;

use sluice_core::keys::{KeyRecord, Limits, TeamRecord};
use sluice_core::usage::Usage;

use super::{cache_label, period, uint, Result, SpendGroup, SpendRow, StoreError, UsageRecord};

/// Every column of `keys`, in the order [`key`] reads them (`user` quoted: a keyword in
/// PostgreSQL, an ordinary name in SQLite).
pub const KEY_COLUMNS: &str = "id, name, team, \"user\", hash, prefix, models, expires_at_unix, \
    disabled, metadata, created_at_unix, rpm, tpm, max_concurrency, budget_usd, budget_period";

/// Every column of `teams`, in the order [`team`] reads them.
pub const TEAM_COLUMNS: &str = "name, rpm, tpm, max_concurrency, budget_usd, budget_period";

/// The ledger columns [`usage`] reads, in its order.
pub const USAGE_COLUMNS: &str = "request_id, ts_ms, key_id, team, model, deployment, \
    input_tokens, output_tokens, cached_tokens, reasoning_tokens, estimated, cost_micros, \
    status, latency_ms, cache, saved_micros";

/// The sums after the group column and the count of a spend report, in the order [`spend`]
/// reads them.
const SPEND_SUMS: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micros",
];

/// The ledger expression a spend report groups by; `day` is the backend's way to write the
/// day number as text.
pub fn spend_group(group: SpendGroup, day: &'static str) -> &'static str {
    match group {
        SpendGroup::Key => "COALESCE(key_id, '')",
        SpendGroup::Team => "COALESCE(team, '')",
        SpendGroup::Model => "model",
        SpendGroup::Deployment => "COALESCE(deployment, '')",
        SpendGroup::Day => day,
    }
}

/// A spend report's select list: `group`, the count, then each of the sums as `sum` writes
/// one (the backends bound them differently).
pub fn spend_select(group: &str, sum: impl Fn(&str) -> String) -> String {
    let sums: Vec<String> = SPEND_SUMS.iter().map(|c| sum(c)).collect();
    format!("{group}, COUNT(*), {}", sums.join(", "))
}

/// One result row, whatever the database: column `i` (from 0) as one of the schema's kinds,
/// `None` for NULL.
pub trait Columns {
    /// An integer column of any width.
    fn int(&self, i: usize) -> Result<Option<i64>>;
    /// A text column.
    fn text(&self, i: usize) -> Result<Option<String>>;
    /// A floating-point column.
    fn real(&self, i: usize) -> Result<Option<f64>>;
    /// A boolean column (an integer 0/1 where the database has no booleans).
    fn flag(&self, i: usize) -> Result<bool>;
}

/// A column the schema declares NOT NULL that came back NULL.
fn null(i: usize) -> StoreError {
    StoreError::BadValue(format!("NULL in column {i}"))
}

fn int(r: &impl Columns, i: usize) -> Result<i64> {
    r.int(i)?.ok_or_else(|| null(i))
}

fn count(r: &impl Columns, i: usize) -> Result<u64> {
    Ok(r.int(i)?.map_or(0, uint))
}

fn text(r: &impl Columns, i: usize) -> Result<String> {
    r.text(i)?.ok_or_else(|| null(i))
}

fn arc(r: &impl Columns, i: usize) -> Result<Option<Arc<str>>> {
    Ok(r.text(i)?.map(Arc::from))
}

/// The five limit columns read at `at..at + 5`.
fn limits(r: &impl Columns, at: usize) -> Result<Limits> {
    Ok(Limits {
        rpm: r.int(at)?.map(uint),
        tpm: r.int(at + 1)?.map(uint),
        max_concurrency: r.int(at + 2)?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
        budget_usd: r.real(at + 3)?,
        budget_period: period(&text(r, at + 4)?)?,
    })
}

/// A `keys` row selected as [`KEY_COLUMNS`].
pub fn key(r: &impl Columns) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: text(r, 0)?,
        name: text(r, 1)?,
        team: text(r, 2)?,
        user: r.text(3)?,
        hash: text(r, 4)?,
        prefix: text(r, 5)?,
        models: serde_json::from_str(&text(r, 6)?)?,
        expires_at_unix: r.int(7)?.map(uint),
        disabled: r.flag(8)?,
        metadata: serde_json::from_str(&text(r, 9)?)?,
        created_at_unix: uint(int(r, 10)?),
        limits: limits(r, 11)?,
    })
}

/// A `teams` row selected as [`TEAM_COLUMNS`].
pub fn team(r: &impl Columns) -> Result<TeamRecord> {
    Ok(TeamRecord {
        name: text(r, 0)?,
        limits: limits(r, 1)?,
    })
}

/// A ledger row selected as [`USAGE_COLUMNS`].
pub fn usage(r: &impl Columns) -> Result<UsageRecord> {
    Ok(UsageRecord {
        request_id: text(r, 0)?,
        ts_ms: uint(int(r, 1)?),
        key_id: arc(r, 2)?,
        team: arc(r, 3)?,
        model: Arc::from(text(r, 4)?),
        deployment: arc(r, 5)?,
        // The ledger keeps no cache writes: their cost is in `cost_micros`.
        usage: Usage {
            input_tokens: count(r, 6)?,
            output_tokens: count(r, 7)?,
            cached_tokens: count(r, 8)?,
            cache_write_tokens: 0,
            reasoning_tokens: count(r, 9)?,
            estimated: r.flag(10)?,
        },
        cost_micros: count(r, 11)?,
        status: u16::try_from(int(r, 12)?).unwrap_or(0),
        latency_ms: count(r, 13)?,
        cache: cache_label(r.text(14)?.as_deref()),
        saved_micros: count(r, 15)?,
    })
}

/// A spend report row: the group, the request count, then the sums of `SPEND_SUMS` (a NULL sum
/// over no rows reads 0).
pub fn spend(r: &impl Columns) -> Result<SpendRow> {
    Ok(SpendRow {
        group: text(r, 0)?,
        requests: count(r, 1)?,
        input_tokens: count(r, 2)?,
        output_tokens: count(r, 3)?,
        cached_tokens: count(r, 4)?,
        reasoning_tokens: count(r, 5)?,
        cost_micros: count(r, 6)?,
    })
}

impl Columns for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }

    fn text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }

    fn real(&self, i: usize) -> Result<Option<f64>> {
        Ok(self.get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
}

impl Columns for ::postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>> {
        use ::postgres::types::Type;
        let ty = self.columns().get(i).map(|c| c.type_().clone());
        Ok(match ty {
            Some(Type::INT2) => self.try_get::<_, Option<i16>>(i)?.map(i64::from),
            Some(Type::INT4) => self.try_get::<_, Option<i32>>(i)?.map(i64::from),
            _ => self.try_get(i)?,
        })
    }

    fn text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }

    fn real(&self, i: usize) -> Result<Option<f64>> {
        Ok(self.try_get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.try_get(i)?)
    }
}
