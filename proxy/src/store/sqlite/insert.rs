//! The ledger writer's side of the SQLite store: a batch of usage rows and its spend in one
//! transaction, in as few statements as it can.
//!
//! Measured with `ledger-bench` under callgrind (bench/README.md, "The ledger writer"), the
//! writer's instructions per row went where the choices below say.

use std::sync::Arc;

use rusqlite::{params, Connection, Statement};

use super::super::{int, spend_by_day, Result, UsageRecord};

/// Ledger rows per `INSERT` statement, largest first: powers of two, so a batch goes in as
/// statements of 64 rows and its remainder (all of a batch when requests are few) in at most
/// six more. A statement costs some 6,000 instructions of its own (binding its shared
/// columns, stepping, opening and closing a cursor on the table and the index, resetting):
/// one per row cost twice what rows in a 64-row statement cost, and 64 measured better than
/// 32 (the statement's share) and than 128 or 256 (larger register files to copy and reset).
/// Each size is prepared once per connection ([`STATEMENT_CACHE`]).
pub(super) const ROWS_PER_INSERT: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Statements the connection keeps prepared: each size of [`ROWS_PER_INSERT`] in two kinds,
/// the spend upsert, `BEGIN` and `COMMIT` fill rusqlite's default of 16, so room is left for
/// the admin side's reads.
pub(super) const STATEMENT_CACHE: usize = 32;

/// Parameters of one ledger row.
const USAGE_PARAMS: usize = 16;

/// The `INSERT`'s head. `OR ROLLBACK`: under the default `ABORT` a statement of many rows
/// must undo only its own rows when a constraint fails, so SQLite copies every page it
/// touches to a statement journal first (about 4 % of the writer's instructions per row);
/// with `ROLLBACK` a failure undoes the whole transaction, which is what [`insert_usage`]
/// does with any error anyway.
const INSERT_HEAD: &str = "INSERT OR ROLLBACK INTO ledger (request_id, ts_ms, key_id, team, \
     model, deployment, input_tokens, output_tokens, cached_tokens, reasoning_tokens, \
     estimated, cost_micros, status, latency_ms, cache, saved_micros) VALUES ";

/// One row's parameters, numbered by position.
const ONE_ROW: &str = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

/// Parameters of an [`insert_sql`] statement of shared rows bound once for all its rows (`?1`
/// to `?10`): key, team, model, deployment, and the columns most rows of a batch agree on:
/// cached and reasoning tokens, estimated, status, cache verdict, saved micro-USD.
const SHARED_PARAMS: usize = 10;
/// Parameters of one row of a statement of shared rows (`request_id`, `ts_ms`, input and
/// output tokens, cost, latency).
const ROW_PARAMS: usize = USAGE_PARAMS - SHARED_PARAMS;

/// The `INSERT` of `ROWS_PER_INSERT[size]` rows; with `shared`, of rows that share the
/// [`bind_shared`] columns: those are bound once (`?1` to `?10`, repeated in every row), the
/// rest row by row ([`bind_own`]). A batch of one key and one model whose requests went well
/// (most batches) then binds six parameters a row instead of sixteen. Sizes above one only.
fn insert_sql(size: usize, shared: bool) -> &'static str {
    type Texts = [String; ROWS_PER_INSERT.len()];
    static SQL: std::sync::OnceLock<(Texts, Texts)> = std::sync::OnceLock::new();
    let (plain, alike) = SQL.get_or_init(|| {
        let plain = ROWS_PER_INSERT.map(|n| {
            let rows = vec![ONE_ROW; n];
            format!("{INSERT_HEAD}{}", rows.join(","))
        });
        let alike = ROWS_PER_INSERT.map(|n| {
            let rows: Vec<String> = (0..n)
                .map(|row| {
                    // The columns' order: request_id, ts_ms, key_id, team, model, deployment,
                    // input, output, cached, reasoning, estimated, cost, status, latency,
                    // cache, saved.
                    let p = SHARED_PARAMS + row * ROW_PARAMS;
                    let own = |k: usize| p + k;
                    format!(
                        "(?{},?{},?1,?2,?3,?4,?{},?{},?5,?6,?7,?{},?8,?{},?9,?10)",
                        own(1),
                        own(2),
                        own(3),
                        own(4),
                        own(5),
                        own(6)
                    )
                })
                .collect();
            format!("{INSERT_HEAD}{}", rows.join(","))
        });
        (plain, alike)
    });
    let texts = if shared { alike } else { plain };
    texts
        .get(size)
        .map_or(plain[plain.len() - 1].as_str(), String::as_str)
}

/// Whether every record of `chunk` has the first one's [`bind_shared`] columns.
fn shares_columns(chunk: &[UsageRecord]) -> bool {
    fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        }
    }
    let Some((first, rest)) = chunk.split_first() else {
        return false;
    };
    rest.iter().all(|r| {
        same(r.key_id.as_ref(), first.key_id.as_ref())
            && same(r.team.as_ref(), first.team.as_ref())
            && same(Some(&r.model), Some(&first.model))
            && same(r.deployment.as_ref(), first.deployment.as_ref())
            && r.usage.cached_tokens == first.usage.cached_tokens
            && r.usage.reasoning_tokens == first.usage.reasoning_tokens
            && r.usage.estimated == first.usage.estimated
            && r.status == first.status
            && r.cache == first.cache
            && r.saved_micros == first.saved_micros
    })
}

// The binders name each value's type (no `&dyn ToSql`): rusqlite's binding is then inlined
// per type, a direct `sqlite3_bind_*` call, about 400 instructions a row fewer than through
// the trait object.

/// Binds the columns of `r` a statement of shared rows binds once for all its rows (`?1` to
/// `?10`).
fn bind_shared(stmt: &mut Statement<'_>, r: &UsageRecord) -> Result<()> {
    stmt.raw_bind_parameter(1, r.key_id.as_deref())?;
    stmt.raw_bind_parameter(2, r.team.as_deref())?;
    stmt.raw_bind_parameter(3, &*r.model)?;
    stmt.raw_bind_parameter(4, r.deployment.as_deref())?;
    stmt.raw_bind_parameter(5, int(r.usage.cached_tokens))?;
    stmt.raw_bind_parameter(6, int(r.usage.reasoning_tokens))?;
    stmt.raw_bind_parameter(7, r.usage.estimated)?;
    stmt.raw_bind_parameter(8, r.status)?;
    stmt.raw_bind_parameter(9, r.cache)?;
    stmt.raw_bind_parameter(10, int(r.saved_micros))?;
    Ok(())
}

/// Binds the rest of `r` to the parameters after the first `before` of a statement of shared
/// rows, in column order: `request_id`, `ts_ms`, input and output tokens, cost, latency.
fn bind_own(stmt: &mut Statement<'_>, before: usize, r: &UsageRecord) -> Result<()> {
    stmt.raw_bind_parameter(before + 1, r.request_id.as_str())?;
    stmt.raw_bind_parameter(before + 2, int(r.ts_ms))?;
    stmt.raw_bind_parameter(before + 3, int(r.usage.input_tokens))?;
    stmt.raw_bind_parameter(before + 4, int(r.usage.output_tokens))?;
    stmt.raw_bind_parameter(before + 5, int(r.cost_micros))?;
    stmt.raw_bind_parameter(before + 6, int(r.latency_ms))?;
    Ok(())
}

/// Binds all of `r` to the parameters after the first `before` of a plain statement, in
/// column order.
fn bind_usage(stmt: &mut Statement<'_>, before: usize, r: &UsageRecord) -> Result<()> {
    let b = before;
    stmt.raw_bind_parameter(b + 1, r.request_id.as_str())?;
    stmt.raw_bind_parameter(b + 2, int(r.ts_ms))?;
    stmt.raw_bind_parameter(b + 3, r.key_id.as_deref())?;
    stmt.raw_bind_parameter(b + 4, r.team.as_deref())?;
    stmt.raw_bind_parameter(b + 5, &*r.model)?;
    stmt.raw_bind_parameter(b + 6, r.deployment.as_deref())?;
    stmt.raw_bind_parameter(b + 7, int(r.usage.input_tokens))?;
    stmt.raw_bind_parameter(b + 8, int(r.usage.output_tokens))?;
    stmt.raw_bind_parameter(b + 9, int(r.usage.cached_tokens))?;
    stmt.raw_bind_parameter(b + 10, int(r.usage.reasoning_tokens))?;
    stmt.raw_bind_parameter(b + 11, r.usage.estimated)?;
    stmt.raw_bind_parameter(b + 12, int(r.cost_micros))?;
    stmt.raw_bind_parameter(b + 13, r.status)?;
    stmt.raw_bind_parameter(b + 14, int(r.latency_ms))?;
    stmt.raw_bind_parameter(b + 15, r.cache)?;
    stmt.raw_bind_parameter(b + 16, int(r.saved_micros))?;
    Ok(())
}

/// Appends `batch` to the ledger and adds its spend, in one transaction: on error nothing of
/// the batch stays.
///
/// `BEGIN` and `COMMIT` are prepared once (cached) rather than parsed per batch: with
/// sequential requests batches hold a few rows, and parsing the two cost some 4,600
/// instructions a batch.
pub(super) fn insert_usage(conn: &Connection, batch: &[UsageRecord]) -> Result<()> {
    conn.prepare_cached("BEGIN")?.raw_execute()?;
    let done =
        write_usage(conn, batch).and_then(|()| Ok(conn.prepare_cached("COMMIT")?.raw_execute()?));
    if let Err(e) = done {
        // `OR ROLLBACK` may have ended the transaction already.
        if !conn.is_autocommit() {
            if let Err(r) = conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %r, "ledger: rollback failed");
            }
        }
        return Err(e);
    }
    Ok(())
}

/// The ledger rows of `batch` and their spend, inside the caller's transaction.
fn write_usage(conn: &Connection, batch: &[UsageRecord]) -> Result<()> {
    let mut rest = batch;
    for (size, &n) in ROWS_PER_INSERT.iter().enumerate() {
        // Each statement is taken from the cache once per size (the lookup hashes its text and
        // copies it), and only if a chunk needs it.
        let (mut plain, mut shared) = (None, None);
        while rest.len() >= n {
            let (chunk, tail) = rest.split_at(n);
            if n > 1 && shares_columns(chunk) {
                let insert = match &mut shared {
                    Some(s) => s,
                    None => shared.insert(conn.prepare_cached(insert_sql(size, true))?),
                };
                bind_shared(insert, &chunk[0])?;
                for (i, r) in chunk.iter().enumerate() {
                    bind_own(insert, SHARED_PARAMS + i * ROW_PARAMS, r)?;
                }
                insert.raw_execute()?;
            } else {
                let insert = match &mut plain {
                    Some(s) => s,
                    None => plain.insert(conn.prepare_cached(insert_sql(size, false))?),
                };
                for (i, r) in chunk.iter().enumerate() {
                    bind_usage(insert, i * USAGE_PARAMS, r)?;
                }
                insert.raw_execute()?;
            }
            rest = tail;
        }
    }
    add_span(conn, batch)?;
    let mut upsert = conn.prepare_cached(
        "INSERT INTO spend (scope, id, day_start, micros) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (scope, id, day_start) DO UPDATE SET micros = micros + excluded.micros",
    )?;
    for ((scope, id, day), micros) in spend_by_day(batch) {
        upsert.execute(params![scope.as_str(), id, int(day), int(micros)])?;
    }
    Ok(())
}

/// Records the span of the rows just inserted (`ledger_span`, migration 5): their `seq`
/// range and their lowest and highest `ts_ms`, what the time-range reads go through.
///
/// The rows' `seq`s are the last `batch.len()` rowids up to `last_insert_rowid`: `seq` is an
/// `INTEGER PRIMARY KEY` without `AUTOINCREMENT`, so each new row takes the highest rowid
/// plus one (SQLite picks another only once `i64::MAX` is taken), and this transaction is
/// the only writer.
fn add_span(conn: &Connection, batch: &[UsageRecord]) -> Result<()> {
    let (Some(lo), Some(hi)) = (
        batch.iter().map(|r| r.ts_ms).min(),
        batch.iter().map(|r| r.ts_ms).max(),
    ) else {
        return Ok(());
    };
    let last = conn.last_insert_rowid();
    let first = last - (batch.len() as i64 - 1);
    conn.prepare_cached(
        "INSERT INTO ledger_span (first_seq, last_seq, min_ts, max_ts) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![first, last, int(lo), int(hi)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_of_shared_rows_number_each_rows_own_parameters_after_the_shared_ones() {
        assert_eq!(
            insert_sql(ROWS_PER_INSERT.len() - 2, true),
            format!(
                "{INSERT_HEAD}(?11,?12,?1,?2,?3,?4,?13,?14,?5,?6,?7,?15,?8,?16,?9,?10),\
                 (?17,?18,?1,?2,?3,?4,?19,?20,?5,?6,?7,?21,?8,?22,?9,?10)"
            )
        );
        assert_eq!(
            insert_sql(ROWS_PER_INSERT.len() - 1, false),
            format!("{INSERT_HEAD}{ONE_ROW}")
        );
        let n = ROWS_PER_INSERT[0];
        assert_eq!(insert_sql(0, false).matches('?').count(), n * USAGE_PARAMS);
        assert!(
            insert_sql(0, true).ends_with(&format!("?{},?9,?10)", SHARED_PARAMS + n * ROW_PARAMS))
        );
    }
}
