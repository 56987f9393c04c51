//! Where the ledger writer keeps usage while the database refuses it: a bounded queue in
//! memory, then a local file (JSON lines) replayed when the database is back.
//!
//! The file has two names: new records are appended to `<spill>`; a replay first renames it
//! to `<spill>.replay` and commits that file chunk by chunk, writing how far it got to
//! `<spill>.offset` after each commit, so a crash during a replay repeats at most the one
//! chunk that was being committed. Both files are looked for at start, so records spilled by
//! a process that was stopped during an outage are replayed by the next one.
//!
//! Appends are flushed to the OS after every write (they survive a crash of the process) and
//! synced to disk at most once a second.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_core::usage::Usage;

use super::UsageRecord;

/// One spilled record: [`UsageRecord`] with owned strings.
#[derive(Serialize, Deserialize)]
struct Line {
    request_id: String,
    ts_ms: u64,
    key_id: Option<String>,
    team: Option<String>,
    model: String,
    deployment: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    reasoning_tokens: u64,
    estimated: bool,
    cost_micros: u64,
    status: u16,
    /// The response cache's verdict (absent in files spilled before it existed).
    #[serde(default)]
    cache: Option<String>,
    /// What a cache hit saved, micro-USD.
    #[serde(default)]
    saved_micros: u64,
    latency_ms: u64,
}

impl Line {
    fn of(r: &UsageRecord) -> Line {
        Line {
            request_id: r.request_id.clone(),
            ts_ms: r.ts_ms,
            key_id: r.key_id.as_deref().map(str::to_string),
            team: r.team.as_deref().map(str::to_string),
            model: r.model.to_string(),
            deployment: r.deployment.as_deref().map(str::to_string),
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cached_tokens: r.usage.cached_tokens,
            reasoning_tokens: r.usage.reasoning_tokens,
            estimated: r.usage.estimated,
            cost_micros: r.cost_micros,
            status: r.status,
            latency_ms: r.latency_ms,
            cache: r.cache.map(str::to_string),
            saved_micros: r.saved_micros,
        }
    }

    fn record(self) -> UsageRecord {
        UsageRecord {
            request_id: self.request_id,
            ts_ms: self.ts_ms,
            key_id: self.key_id.map(Arc::from),
            team: self.team.map(Arc::from),
            model: Arc::from(self.model),
            deployment: self.deployment.map(Arc::from),
            usage: Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_tokens: self.cached_tokens,
                // Not spilled: the ledger keeps no cache writes (their cost is in `cost_micros`).
                cache_write_tokens: 0,
                reasoning_tokens: self.reasoning_tokens,
                estimated: self.estimated,
            },
            cost_micros: self.cost_micros,
            status: self.status,
            latency_ms: self.latency_ms,
            cache: super::cache_label(self.cache.as_deref()),
            saved_micros: self.saved_micros,
        }
    }
}

/// The backlog: records not yet committed, oldest first, in memory up to a bound and then
/// in the spill file.
pub struct Spool {
    memory: VecDeque<UsageRecord>,
    memory_max: usize,
    path: Option<PathBuf>,
    append: Option<BufWriter<File>>,
    /// Records in the files (appended and not yet replayed), as far as this process knows.
    in_files: u64,
    last_sync: Instant,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl Spool {
    /// An empty backlog holding `memory_max` records in memory, then spilling to `path`
    /// (without a path, nothing spills: [`push`](Self::push) refuses past the bound).
    pub fn new(memory_max: usize, path: Option<PathBuf>) -> Spool {
        let mut spool = Spool {
            memory: VecDeque::new(),
            memory_max: memory_max.max(1),
            path,
            append: None,
            in_files: 0,
            last_sync: Instant::now(),
        };
        spool.in_files = spool.count_files();
        spool
    }

    fn count_files(&self) -> u64 {
        let Some(path) = &self.path else { return 0 };
        let offset = self.replay_offset();
        let mut n = 0;
        for (p, skip) in [(with_suffix(path, ".replay"), offset), (path.clone(), 0)] {
            if let Ok(mut f) = File::open(&p) {
                if f.seek(SeekFrom::Start(skip)).is_ok() {
                    n += BufReader::new(f).lines().count() as u64;
                }
            }
        }
        n
    }

    /// Whether nothing waits, in memory or on disk.
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.in_files == 0
    }

    /// Records waiting, in memory and on disk.
    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.in_files
    }

    /// Records waiting in the files.
    pub fn in_files(&self) -> u64 {
        self.in_files
    }

    /// Queues `r`: in memory while there is room, else appended to the spill file. When the
    /// file cannot take it either (no spill path, a full disk), it stays in memory past the
    /// bound rather than be lost.
    pub fn push(&mut self, r: UsageRecord) {
        if self.memory.len() < self.memory_max {
            self.memory.push_back(r);
            return;
        }
        match self.append_line(&r) {
            Ok(()) => self.in_files += 1,
            Err(e) => {
                if self.path.is_some() {
                    tracing::error!(error = %e, "ledger: cannot write the spill file; keeping the record in memory");
                }
                self.memory.push_back(r);
            }
        }
    }

    /// Moves everything in memory to the spill file (at shutdown while the database is
    /// down). Returns how many records could not be written there.
    pub fn spill_memory(&mut self) -> u64 {
        let mut failed = 0;
        while let Some(r) = self.memory.pop_front() {
            match self.append_line(&r) {
                Ok(()) => self.in_files += 1,
                Err(e) => {
                    tracing::error!(error = %e, "ledger: cannot write the spill file");
                    failed += 1;
                }
            }
        }
        if let Some(w) = &mut self.append {
            let _ = w.flush();
            let _ = w.get_ref().sync_data();
        }
        failed
    }

    fn append_line(&mut self, r: &UsageRecord) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Err(std::io::Error::other("no spill file configured"));
        };
        if self.append.is_none() {
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            self.append = Some(BufWriter::new(f));
        }
        let Some(w) = &mut self.append else {
            return Err(std::io::Error::other("spill file not open"));
        };
        serde_json::to_writer(&mut *w, &Line::of(r))?;
        w.write_all(b"\n")?;
        w.flush()?;
        if self.last_sync.elapsed() >= Duration::from_secs(1) {
            w.get_ref().sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Keeps records the database refused for their content in `<spill>.refused` (JSON
    /// lines, for an operator to look at). Returns how many could not be written there.
    pub fn refuse(&mut self, records: Vec<UsageRecord>) -> u64 {
        let Some(path) = &self.path else {
            return records.len() as u64;
        };
        let write = || -> std::io::Result<()> {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(with_suffix(path, ".refused"))?;
            let mut w = BufWriter::new(f);
            for r in &records {
                serde_json::to_writer(&mut w, &Line::of(r))?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            w.get_ref().sync_data()
        };
        match write() {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "ledger: cannot write the refused-records file");
                records.len() as u64
            }
        }
    }

    /// Up to `max` records from memory, oldest first, to commit; give them back with
    /// [`unpop`](Self::unpop) if the commit fails.
    pub fn pop_memory(&mut self, max: usize) -> Vec<UsageRecord> {
        let n = max.min(self.memory.len());
        self.memory.drain(..n).collect()
    }

    /// Puts records taken by [`pop_memory`](Self::pop_memory) back in front.
    pub fn unpop(&mut self, batch: Vec<UsageRecord>) {
        for r in batch.into_iter().rev() {
            self.memory.push_front(r);
        }
    }

    fn replay_offset(&self) -> u64 {
        self.path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(with_suffix(p, ".offset")).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Replays the spill files through `commit`, `max` records at a time, oldest file first.
    /// Stops at the first failed commit (the rest stays on disk for the next try). Returns
    /// the records committed, and the error if one stopped it.
    pub fn replay<E>(
        &mut self,
        max: usize,
        mut commit: impl FnMut(&[UsageRecord]) -> std::result::Result<(), E>,
    ) -> (u64, Option<E>) {
        let Some(path) = self.path.clone() else {
            return (0, None);
        };
        let (replay, offset_file) = (with_suffix(&path, ".replay"), with_suffix(&path, ".offset"));
        let mut done = 0u64;
        loop {
            if !replay.exists() {
                if !path.exists() {
                    self.in_files = 0;
                    return (done, None);
                }
                // Close our appender: the next spilled record starts a new file.
                if let Some(mut w) = self.append.take() {
                    let _ = w.flush();
                    let _ = w.get_ref().sync_data();
                }
                if let Err(e) = std::fs::rename(&path, &replay) {
                    tracing::error!(error = %e, "ledger: cannot rotate the spill file");
                    return (done, None);
                }
                let _ = std::fs::remove_file(&offset_file);
            }
            let mut offset = self.replay_offset();
            let file = match File::open(&replay) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "ledger: cannot read the spill file");
                    return (done, None);
                }
            };
            let mut reader = BufReader::new(file);
            if reader.seek(SeekFrom::Start(offset)).is_err() {
                return (done, None);
            }
            let mut line = String::new();
            loop {
                let mut batch = Vec::with_capacity(max);
                let mut read = 0u64;
                while batch.len() < max {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(n) => {
                            read += n as u64;
                            match serde_json::from_str::<Line>(line.trim_end()) {
                                Ok(l) => batch.push(l.record()),
                                // A torn last line (a crash mid-write) is skipped, and said.
                                Err(e) => {
                                    tracing::error!(error = %e, "ledger: unreadable spill line skipped")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "ledger: cannot read the spill file");
                            return (done, None);
                        }
                    }
                }
                if read == 0 {
                    break;
                }
                if !batch.is_empty() {
                    if let Err(e) = commit(&batch) {
                        return (done, Some(e));
                    }
                }
                offset += read;
                let _ = std::fs::write(&offset_file, offset.to_string());
                done += batch.len() as u64;
                self.in_files = self.in_files.saturating_sub(batch.len() as u64);
            }
            let _ = std::fs::remove_file(&replay);
            let _ = std::fs::remove_file(&offset_file);
        }
    }
}
