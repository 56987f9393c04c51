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
//!   record arrived, or once it holds [`WriterOptions::max_batch`] records (the writer looks
//!   at its channel at least every 25 ms while a batch is open).
//! - On SIGKILL (process crash) committed records survive: SQLite WAL commits reach the OS
//!   before `COMMIT` returns. Lost are the records not yet committed: the open batch (at most
//!   the last 50 ms) and whatever still waits in the channel if the writer has fallen behind.
//! - On power loss, SQLite's `synchronous=NORMAL` may also roll back the last commits since
//!   the WAL was last synced; set [`WriterOptions::synchronous_full`] to sync every commit.
//! - On a clean shutdown, dropping every [`LedgerSender`] (or calling `flush_and_wait`) commits
//!   everything; [`LedgerHandle::join`] returns once the last batch is on disk.
//! - A full channel refuses the record ([`Full`] gives it back) rather than block a worker;
//!   [`LedgerSender::rejected`] counts those.
//!
//! # When the database is down
//!
//! A failed commit takes the writer into the *down* state (logged once, counted in
//! `sluice_ledger_commit_failures_total`, `sluice_store_up` 0, [`LedgerSender::store_down`]
//! for `/readyz`). It keeps draining the channel, so the data plane never notices: records
//! queue in memory up to [`WriterOptions::backlog_records`], then are appended to
//! [`WriterOptions::spill_path`] ([`super::spool`]). Every 50 ms to 2 s (backoff) it tries
//! again; once a commit works it commits the memory backlog, then replays the spill file,
//! and is up again by itself. A record in the backlog is not yet *acknowledged*
//! ([`LedgerSender::flush_and_wait`] waits for it) but it is not lost either: at shutdown
//! during an outage the memory backlog is spilled, and the next start replays the file.
//! Only a writer without a spill path (or a disk that refuses the file) can lose records at
//! shutdown, and counts them ([`WriterReport::lost`]).
//!
//! # A record the database refuses
//!
//! A commit refused for what it holds ([`StoreError::is_refusal`]: a value or constraint the
//! database will refuse however often it is retried) is split in halves until the refused
//! records are alone; they are appended to `<spill_path>.refused` (JSON lines, for an
//! operator), logged and counted (`sluice_ledger_refused_records_total`,
//! [`LedgerSender::refused`]), and everything else commits. One bad row never stalls the
//! ledger.
//!
//! # Retention
//!
//! With [`WriterOptions::retention`], ledger rows older than that are deleted at start and
//! hourly, on this thread. The per-day spend table is kept, so budgets still see the cost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use super::spool::Spool;
use super::{Backend, Result, StoreError, UsageRecord};

/// [`LedgerSender::record`] refused a record because the channel is full (or the writer is
/// gone); here it is back, boxed so the `Ok` path stays small.
#[derive(Debug)]
pub struct Full(pub Box<UsageRecord>);

/// How the ledger writer batches.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Records the channel holds before [`LedgerSender::record`] refuses.
    pub capacity: usize,
    /// Longest a record waits in a batch before its commit.
    pub flush_interval: Duration,
    /// Records that make a batch commit at once.
    pub max_batch: usize,
    /// SQLite only: `synchronous=FULL` (every commit synced to disk) instead of `NORMAL`.
    pub synchronous_full: bool,
    /// While the database is down: records kept in memory before they spill to disk.
    pub backlog_records: usize,
    /// While the database is down: the file records spill to past `backlog_records`, replayed
    /// when it is back (and at the next start). `None`: nothing spills, the backlog grows in
    /// memory.
    pub spill_path: Option<PathBuf>,
    /// Ledger rows older than this are removed (checked at start and hourly); spend stays.
    pub retention: Option<Duration>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            capacity: 65_536,
            flush_interval: Duration::from_millis(50),
            max_batch: 1_024,
            synchronous_full: false,
            backlog_records: 100_000,
            spill_path: None,
            retention: None,
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
    replayed: AtomicU64,
    refused: AtomicU64,
    backlog: AtomicU64,
    spilled: AtomicU64,
    down: AtomicBool,
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

    /// Whether the last commit failed: the database is down and records wait in the
    /// backlog.
    pub fn store_down(&self) -> bool {
        self.counters.down.load(Ordering::Relaxed)
    }

    /// Records waiting for the database (memory and spill file) while it is down.
    pub fn backlog(&self) -> u64 {
        self.counters.backlog.load(Ordering::Relaxed)
    }

    /// Of [`backlog`](Self::backlog), the records in the spill file.
    pub fn spilled(&self) -> u64 {
        self.counters.spilled.load(Ordering::Relaxed)
    }

    /// Records committed from the backlog after an outage.
    pub fn replayed(&self) -> u64 {
        self.counters.replayed.load(Ordering::Relaxed)
    }

    /// Records the database refused for their content (kept in the `.refused` file next
    /// to the spill file).
    pub fn refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Records in the channel, the open batch or the backlog.
    pub fn pending(&self) -> u64 {
        self.sent().saturating_sub(
            self.committed() + self.refused() + self.counters.lost.load(Ordering::Relaxed),
        )
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
        let sync = opts.synchronous_full;
        Self::spawn_on(
            move || {
                let b = super::sqlite::Sqlite::open(&path, sync)?;
                Ok(Box::new(b) as Box<dyn Backend>)
            },
            opts,
        )
    }

    /// Starts the writer thread on its own connection to `target`.
    pub fn spawn_target(
        target: &super::StoreTarget,
        opts: WriterOptions,
    ) -> Result<(LedgerSender, LedgerHandle)> {
        let target = target.clone();
        let sync = opts.synchronous_full;
        Self::spawn_on(move || target.connect(sync), opts)
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

/// What the writer thread tracks while it runs.
struct Writer<'a> {
    backend: &'a dyn Backend,
    opts: &'a WriterOptions,
    c: &'a Counters,
    /// Records the database refused, oldest first; `Some` while it is down.
    spool: Spool,
    down: bool,
    next_try: Instant,
    backoff: Duration,
    next_retention: Instant,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const RETENTION_EVERY: Duration = Duration::from_secs(3_600);

impl Writer<'_> {
    /// Commits `batch` now, or queues it in the backlog when the database is down (or the
    /// commit fails, which takes it down).
    fn commit_or_queue(&mut self, batch: &mut Vec<UsageRecord>) {
        if batch.is_empty() {
            return;
        }
        if !self.down {
            let mut refused = Vec::new();
            let result = commit_isolating(self.backend, batch, &mut refused);
            self.refused(refused);
            match result {
                Ok(n) => {
                    self.c.committed.fetch_add(n, Ordering::AcqRel);
                    batch.clear();
                    return;
                }
                Err(Stalled {
                    error,
                    at,
                    committed,
                }) => {
                    self.c.committed.fetch_add(committed, Ordering::AcqRel);
                    batch.drain(..at);
                    self.went_down(&error, batch.len());
                }
            }
        }
        for r in batch.drain(..) {
            self.spool.push(r);
        }
        self.publish();
    }

    /// Records the database refused for what they hold: kept in the refused file, counted.
    fn refused(&mut self, records: Vec<UsageRecord>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        self.c.refused.fetch_add(n, Ordering::AcqRel);
        metrics::counter!("sluice_ledger_refused_records_total").increment(n);
        let lost = self.spool.refuse(records);
        tracing::error!(records = n, "ledger: the store refused records for their content; kept in the .refused file next to the spill file");
        if lost > 0 {
            self.c.lost.fetch_add(lost, Ordering::AcqRel);
        }
    }

    fn went_down(&mut self, e: &StoreError, records: usize) {
        self.c.failed_commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_ledger_commit_failures_total").increment(1);
        if !self.down {
            tracing::error!(error = %e, records, store = %self.backend.location(),
                "store unavailable: ledger records queue in memory, then spill to disk, until it is back");
        } else {
            tracing::warn!(error = %e, "store still unavailable");
        }
        self.down = true;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.publish();
    }

    /// Tries to commit the backlog (memory, then the spill files). Returns whether the
    /// database took all of it.
    fn drain(&mut self) -> bool {
        let max = self.opts.max_batch.max(1);
        loop {
            let batch = self.spool.pop_memory(max);
            if batch.is_empty() {
                break;
            }
            let mut refused = Vec::new();
            let result = commit_isolating(self.backend, &batch, &mut refused);
            self.refused(refused);
            match result {
                Ok(n) => {
                    self.c.committed.fetch_add(n, Ordering::AcqRel);
                }
                Err(Stalled {
                    error,
                    at,
                    committed,
                }) => {
                    self.c.committed.fetch_add(committed, Ordering::AcqRel);
                    self.spool.unpop(batch.into_iter().skip(at).collect());
                    self.went_down(&error, 0);
                    return false;
                }
            }
        }
        let backend = self.backend;
        let mut refused = Vec::new();
        // A chunk of the file is committed whole or retried whole (its offset is kept only
        // once it landed), so a stall inside it may commit a part twice: the database is
        // down then, which is when commits fail whole.
        let (n, err) = self.spool.replay(max, |b| {
            commit_isolating(backend, b, &mut refused)
                .map(|_| ())
                .map_err(|s| s.error)
        });
        let n = n.saturating_sub(refused.len() as u64);
        self.refused(refused);
        self.c.committed.fetch_add(n, Ordering::AcqRel);
        self.c.replayed.fetch_add(n, Ordering::Relaxed);
        if let Some(e) = err {
            self.went_down(&e, 0);
            return false;
        }
        if !self.spool.is_empty() {
            return false;
        }
        if self.down {
            tracing::info!(store = %self.backend.location(), "store available again: backlog committed");
        }
        self.down = false;
        self.backoff = FIRST_BACKOFF;
        self.publish();
        true
    }

    /// Shares the state with the data plane's counters, the metrics and `/readyz`.
    fn publish(&self) {
        self.c.down.store(self.down, Ordering::Relaxed);
        self.c.backlog.store(self.spool.len(), Ordering::Relaxed);
        self.c
            .spilled
            .store(self.spool.in_files(), Ordering::Relaxed);
        metrics::gauge!("sluice_store_up").set(if self.down { 0.0 } else { 1.0 });
        metrics::gauge!("sluice_ledger_backlog_records").set(self.spool.len() as f64);
        metrics::gauge!("sluice_ledger_spilled_records").set(self.spool.in_files() as f64);
    }

    fn retention(&mut self) {
        let Some(keep) = self.opts.retention else {
            return;
        };
        if self.down || Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + RETENTION_EVERY;
        let cutoff = crate::clock::unix_ms().saturating_sub(keep.as_millis() as u64);
        match self.backend.delete_ledger_before(cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "ledger retention: old rows removed"),
            Err(e) => tracing::warn!(error = %e, "ledger retention failed; next try in an hour"),
        }
    }
}

fn run_writer(backend: &dyn Backend, rx: Receiver<Msg>, opts: WriterOptions, c: &Counters) {
    let max_batch = opts.max_batch.max(1);
    let mut w = Writer {
        backend,
        opts: &opts,
        c,
        spool: Spool::new(opts.backlog_records, opts.spill_path.clone()),
        down: false,
        next_try: Instant::now(),
        backoff: FIRST_BACKOFF,
        next_retention: Instant::now(),
    };
    // Records a previous process spilled: replay them first.
    if !w.spool.is_empty() {
        tracing::info!(
            records = w.spool.len(),
            "ledger: replaying records spilled by an earlier run"
        );
        w.down = true;
    }
    w.publish();
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(max_batch);
    let mut acks: Vec<Sender<()>> = Vec::new();
    let mut oldest: Option<Instant> = None;
    // Whether anything came since the memory was last given back.
    let mut busy = false;
    loop {
        if w.down && Instant::now() >= w.next_try {
            w.drain();
        }
        // A flush is answered once everything before it is committed.
        if !w.down {
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
        w.retention();
        let mut deadline = oldest.map(|t| t + opts.flush_interval);
        if w.down {
            deadline = Some(deadline.map_or(w.next_try, |d| d.min(w.next_try)));
        }
        let msg = match deadline {
            None if busy => match rx.recv_timeout(RELEASE_AFTER_IDLE) {
                Err(RecvTimeoutError::Timeout) => {
                    // Quiet for a while after a busy spell: give the memory back, then wait.
                    busy = false;
                    backend.release_memory();
                    crate::memory::return_free_memory();
                    crate::memory::release_free_memory();
                    continue;
                }
                other => other,
            },
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => next_by(&rx, t),
        };
        busy = true;
        let closed = match msg {
            Ok(Msg::Record(r)) => {
                let first = *oldest.get_or_insert_with(Instant::now);
                batch.push(r);
                // Whatever else is queued comes along without a clock read per record.
                let mut flush = false;
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(Msg::Record(r)) => batch.push(r),
                        Ok(Msg::Flush(ack)) => {
                            acks.push(ack);
                            flush = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // Under a steady stream the deadline never times out: check it here too.
                if !flush && batch.len() < max_batch && first.elapsed() < opts.flush_interval {
                    continue;
                }
                false
            }
            Ok(Msg::Flush(ack)) => {
                acks.push(ack);
                false
            }
            Err(RecvTimeoutError::Timeout) => {
                if oldest.is_some_and(|t| t.elapsed() < opts.flush_interval) {
                    continue;
                }
                false
            }
            Err(RecvTimeoutError::Disconnected) => true,
        };
        w.commit_or_queue(&mut batch);
        oldest = None;
        if closed {
            shut_down(&mut w);
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            return;
        }
    }
}

/// The next message, or a timeout at `deadline`, without being woken by the senders.
///
/// Blocked in `recv_deadline`, this thread was woken by every record a worker sent (a futex
/// call on the worker and a context switch, once per request). While a batch is pending the
/// writer instead takes what is queued, and when nothing is, sleeps in steps ([`POLL_STEP`])
/// until the deadline: the senders' `try_send` then never has a sleeper to wake, and the
/// channel (65,536 records) is drained at least every step. Only the first record after an
/// idle spell wakes the writer (it waits in `recv` then).
fn next_by(rx: &Receiver<Msg>, deadline: Instant) -> std::result::Result<Msg, RecvTimeoutError> {
    loop {
        match rx.try_recv() {
            Ok(m) => return Ok(m),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(RecvTimeoutError::Disconnected)
            }
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(RecvTimeoutError::Timeout);
        }
        std::thread::sleep((deadline - now).min(POLL_STEP));
    }
}

/// How long the writer waits idle, after a busy spell, before it gives memory back.
pub(super) const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The longest sleep of the writer between two looks at its channel while a batch is pending:
/// twice per default flush interval. Each look is a wake-up of the thread, on the core a worker
/// may be using; at 5 ms they were 200 a second whenever any traffic came (at 1,000 req/s, a
/// fifth of a wake-up per request). The channel holds 25 ms of 2.6M records/s.
const POLL_STEP: Duration = Duration::from_millis(25);

/// A commit that stopped because the database could not be reached.
struct Stalled {
    error: StoreError,
    /// Records before this index were committed or refused; the rest were not tried.
    at: usize,
    /// Of those, the committed ones.
    committed: u64,
}

/// Commits `batch` in order. When the database refuses it for what it holds (a record it
/// will never take: [`StoreError::is_refusal`]), the batch is split in halves until the
/// refused records are alone; they go to `refused` and the rest is committed, so one bad
/// record never stalls the ledger. Returns the records committed, or where it stopped when
/// the database became unavailable.
fn commit_isolating(
    backend: &dyn Backend,
    batch: &[UsageRecord],
    refused: &mut Vec<UsageRecord>,
) -> std::result::Result<u64, Stalled> {
    fn go(
        backend: &dyn Backend,
        batch: &[UsageRecord],
        start: usize,
        refused: &mut Vec<UsageRecord>,
        committed: &mut u64,
    ) -> std::result::Result<(), Stalled> {
        if batch.is_empty() {
            return Ok(());
        }
        match backend.insert_usage(batch) {
            Ok(()) => {
                *committed += batch.len() as u64;
                Ok(())
            }
            Err(e) if e.is_refusal() && batch.len() == 1 => {
                tracing::warn!(error = %e, "ledger: record refused by the store");
                refused.extend_from_slice(batch);
                Ok(())
            }
            Err(e) if e.is_refusal() => {
                let mid = batch.len() / 2;
                go(backend, &batch[..mid], start, refused, committed)?;
                go(backend, &batch[mid..], start + mid, refused, committed)
            }
            Err(error) => Err(Stalled {
                error,
                at: start,
                committed: *committed,
            }),
        }
    }
    let mut committed = 0;
    go(backend, batch, 0, refused, &mut committed).map(|()| committed)
}

/// The senders are gone: commit the backlog if the database takes it (a few tries), else
/// spill it to disk for the next start; only what cannot be spilled either is lost.
fn shut_down(w: &mut Writer<'_>) {
    let mut tries = 0;
    while w.down && tries < 5 {
        std::thread::sleep(w.next_try.saturating_duration_since(Instant::now()));
        if w.drain() {
            return;
        }
        tries += 1;
    }
    if !w.down {
        return;
    }
    let in_memory = w.spool.len() - w.spool.in_files();
    let lost = w.spool.spill_memory();
    if lost > 0 {
        w.c.lost.fetch_add(lost, Ordering::AcqRel);
        tracing::error!(
            records = lost,
            "ledger records lost at shutdown: the store is down and nothing could be spilled"
        );
    }
    if in_memory > lost {
        tracing::warn!(
            records = in_memory - lost,
            "ledger: store down at shutdown; records spilled to disk for the next start"
        );
    }
    w.publish();
}
