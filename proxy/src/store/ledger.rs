//! The ledger writer: one thread that owns a [`Backend`] connection and commits usage in
//! batches, so the data plane never touches the database.
//!
//! Written against [`Backend::insert_usage`] only, so every backend reuses it; the backend is
//! opened on the writer thread itself ([`LedgerWriter::spawn_on`]), so a blocking client
//! (PostgreSQL's) never runs on a data-plane worker.
//!
//! # Durability contract
//!
//! A record is *acknowledged* once its batch is committed; [`LedgerSender::committed`] counts
//! them and [`LedgerSender::flush_and_wait`] waits for everything sent before it.
//! - A batch is committed at most [`WriterOptions::flush_interval`] (50 ms) after its first
//!   record arrived, or as soon as it holds [`WriterOptions::max_batch`] records.
//! - On SIGKILL (process crash) committed records survive: SQLite WAL commits reach the OS
//!   before `COMMIT` returns. Lost are the records not yet committed: the open batch (at most
//!   the last 50 ms) and whatever still waits in the channel if the writer has fallen behind.
//! - On power loss, SQLite's `synchronous=NORMAL` may also roll back the last commits since
//!   the WAL was last synced; set [`WriterOptions::synchronous_full`] to sync every commit.
//! - On a clean shutdown, dropping every [`LedgerSender`] (or calling `flush_and_wait`) commits
//!   everything; [`LedgerHandle::join`] returns once the last batch is on disk.
//! - A full channel refuses the record ([`Full`] gives it back) rather than block a worker;
//!   [`LedgerSender::rejected`] counts those. A failed commit is retried with backoff, keeping
//!   the batch, while the channel fills up.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::{Backend, Result, StoreError, UsageRecord};

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
    /// SQLite only: `synchronous=FULL` (every commit synced to disk) instead of `NORMAL`.
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
    /// Opens the SQLite store at `path` for writing (migrating it) and starts the writer
    /// thread.
    pub fn spawn(path: impl AsRef<Path>) -> Result<(LedgerSender, LedgerHandle)> {
        Self::spawn_with(path, WriterOptions::default())
    }

    /// [`spawn`](Self::spawn) with explicit batching options.
    pub fn spawn_with(
        path: impl AsRef<Path>,
        opts: WriterOptions,
    ) -> Result<(LedgerSender, LedgerHandle)> {
        let path = path.as_ref().to_path_buf();
        Self::spawn_on(
            move || {
                let b = super::sqlite::Sqlite::open(&path, opts.synchronous_full)?;
                Ok(Box::new(b) as Box<dyn Backend>)
            },
            opts,
        )
    }

    /// Starts the writer thread on the backend `open` returns, called on that thread (so a
    /// blocking connect never runs on the caller's). Returns once it opened, or its error.
    pub fn spawn_on<F>(open: F, opts: WriterOptions) -> Result<(LedgerSender, LedgerHandle)>
    where
        F: FnOnce() -> Result<Box<dyn Backend>> + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(opts.capacity.max(1));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<()>>(1);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ledger".into())
            .spawn(move || match open() {
                Ok(backend) => {
                    let _ = ready_tx.send(Ok(()));
                    run_writer(&*backend, rx, opts, &c);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StoreError::Spawn(std::io::Error::other(
                    "the ledger writer stopped while opening the store",
                )));
            }
        }
        Ok((
            LedgerSender {
                tx,
                counters: counters.clone(),
            },
            LedgerHandle { thread, counters },
        ))
    }
}

fn run_writer(backend: &dyn Backend, rx: Receiver<Msg>, opts: WriterOptions, c: &Counters) {
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
        commit_until_done(backend, &mut batch, c, closed);
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
    backend: &dyn Backend,
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
        match backend.insert_usage(batch) {
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
