//! `ledger-bench`: what the SQLite ledger writer spends per usage row, repeatably.
//!
//! Pushes `--rows` usage records shaped like `sluice_full`'s (one key and team, one model and
//! deployment, a ~1 KB prompt's tokens and cost, status 200) through the real writer
//! (`LedgerWriter::spawn_with`: its thread, channel, batching and the SQLite store's pragmas
//! on a file in a fresh temporary directory), `--batch` records at a time followed by a
//! flush, so each commit holds exactly one batch, as a loaded gateway's would (at 42k req/s
//! the writer commits `max_batch`, 1,024, rows at a time; sequential requests make batches of
//! a few dozen). `--direct` calls the store's `insert_usage` on this thread instead (no
//! channel, no writer thread).
//!
//! Run it under callgrind for a deterministic count per row (the writer thread's total, in
//! its own file with `--separate-threads=yes`, divided by the rows; the store's open and
//! migration are a fixed cost, small against 100k rows):
//!
//! ```text
//! cargo build --release -p sluice-bench --bin ledger-bench
//! valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=/tmp/lb \
//!     target/release/ledger-bench --rows 100000 --batch 1024
//! ```
//!
//! Prints the rows committed, the wall time and rows per second (wall clock: only a rough
//! figure on a shared machine).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_core::usage::Usage;
use sluice_proxy::store::sqlite::Sqlite;
use sluice_proxy::store::{Backend, LedgerWriter, UsageRecord, WriterOptions};

// The gateway's allocator, so the writer's allocations cost what they cost in `sluice`.
#[global_allocator]
static ALLOC: sluice_proxy::alloc::Mimalloc = sluice_proxy::alloc::Mimalloc;

/// Record `i` of the run: what `settle` hands the ledger for a 1 KB chat request through
/// `sluice_full`'s key, at ~42k requests a second from a fixed start (deterministic).
fn record(i: u64, shared: &(Arc<str>, Arc<str>, Arc<str>, Arc<str>)) -> UsageRecord {
    let (key, team, model, deployment) = shared;
    let (input, output) = (230 + i % 7, 20 + i % 13);
    UsageRecord {
        request_id: format!(
            "req{:016x}",
            0x5eed_0000_0000_0000 ^ i.wrapping_mul(0x9e37_79b9)
        ),
        ts_ms: 1_765_000_000_000 + i / 42,
        key_id: Some(key.clone()),
        team: Some(team.clone()),
        model: model.clone(),
        deployment: Some(deployment.clone()),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        // mock-model's price: 2.5 and 10 USD per million tokens.
        cost_micros: (input * 25 + output * 100) / 10,
        status: 200,
        latency_ms: 1 + i % 5,
        cache: None,
        saved_micros: 0,
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows = sluice_bench::cli::number(&args, "--rows", 100_000)?;
    let batch = sluice_bench::cli::number(&args, "--batch", 1_024)?;
    let direct = args.iter().any(|a| a == "--direct");
    let dir = std::env::temp_dir().join(format!("sluice-ledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("sluice.db");
    let shared: (Arc<str>, Arc<str>, Arc<str>, Arc<str>) = (
        Arc::from("key_0123456789abcdef"),
        Arc::from("bench"),
        Arc::from("mock-fast"),
        Arc::from("mock/mock-model"),
    );
    let started = Instant::now();
    let result = if direct {
        let store = Sqlite::open(&path, false).map_err(|e| e.to_string())?;
        let mut at = 0;
        let mut buf = Vec::with_capacity(batch as usize);
        while at < rows {
            let end = (at + batch).min(rows);
            buf.extend((at..end).map(|i| record(i, &shared)));
            store.insert_usage(&buf).map_err(|e| e.to_string())?;
            buf.clear();
            at = end;
        }
        store.ledger_count().map_err(|e| e.to_string())
    } else {
        let opts = WriterOptions {
            // Room for a whole batch; commits come from the flushes.
            capacity: (batch as usize).max(WriterOptions::default().capacity),
            max_batch: batch as usize,
            flush_interval: Duration::from_secs(60),
            ..WriterOptions::default()
        };
        let (tx, handle) = LedgerWriter::spawn_with(&path, opts).map_err(|e| e.to_string())?;
        let mut at = 0;
        while at < rows {
            let end = (at + batch).min(rows);
            for i in at..end {
                tx.record(record(i, &shared))
                    .map_err(|_| "the ledger channel refused a record".to_string())?;
            }
            if !tx.flush_and_wait(Duration::from_secs(120)) {
                return Err("the ledger writer did not commit in 120 s".into());
            }
            at = end;
        }
        drop(tx);
        let report = handle.join();
        Ok(report.committed)
    };
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let committed = result?;
    if committed != rows {
        return Err(format!("{committed} rows committed of {rows}"));
    }
    println!(
        "{} rows in batches of {batch}{}: {:.3} s, {:.0} rows/s (wall clock)",
        committed,
        if direct { " (direct)" } else { "" },
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn main() -> ExitCode {
    sluice_bench::cli::exit("ledger-bench", run())
}
