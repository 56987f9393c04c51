//! The fuzzing loop: load the seeds, then mutate corpus entries until the time is up, keeping
//! inputs that reach new coverage and stopping at the first panic.

use std::fs;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::cov;
use crate::mutate::{self, MAX_INPUT};
use crate::rng::Rng;
use crate::targets::Target;

/// Most inputs kept in memory; past it, new ones replace random old ones (seeds stay).
const MAX_CORPUS: usize = 8192;

/// An input still running after this long is a hang.
const HANG_AFTER: Duration = Duration::from_secs(10);

/// How a run went.
#[derive(Debug)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Corpus size at the end (seeds included).
    pub corpus: usize,
    /// Edges covered (0 without instrumentation).
    pub edges_hit: usize,
    /// Instrumented edges in the binary.
    pub edges_total: usize,
    /// The input that panicked, saved here.
    pub crash: Option<PathBuf>,
}

/// Reads every file of `dir` (sorted by name; missing dir: none).
pub fn read_corpus(dir: &Path) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_file() {
            let data = fs::read(&path)?;
            files.push((path, data));
        }
    }
    files.sort();
    Ok(files)
}

/// Runs one input; `Err` when it panicked.
fn run_one(target: &Target, input: &[u8]) -> Result<(), ()> {
    cov::reset();
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|_| ())
}

fn save_crash(artifacts: &Path, target: &Target, input: &[u8]) -> io::Result<PathBuf> {
    let dir = artifacts.join(target.name);
    fs::create_dir_all(&dir)?;
    let hash = Rng::from_bytes(input).next_u64();
    let path = dir.join(format!("crash-{hash:016x}"));
    fs::write(&path, input)?;
    Ok(path)
}

/// Fuzzes `target` for `duration`, starting from `seeds`.
pub fn fuzz(
    target: &'static Target,
    seeds: Vec<Vec<u8>>,
    duration: Duration,
    seed: u64,
    artifacts: &Path,
) -> io::Result<Report> {
    let mut rng = Rng::new(seed);
    let mut seen = cov::Seen::default();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let n_seeds = seeds.len().max(1);
    let mut report = Report {
        execs: 0,
        corpus: 0,
        edges_hit: 0,
        edges_total: cov::edges(),
        crash: None,
    };

    // A watchdog: an input running longer than HANG_AFTER is saved and the process aborts.
    let current: Arc<Mutex<(u64, Vec<u8>)>> = Arc::new(Mutex::new((0, Vec::new())));
    {
        let current = Arc::clone(&current);
        let artifacts = artifacts.to_path_buf();
        thread::spawn(move || {
            let mut last = u64::MAX;
            loop {
                thread::sleep(HANG_AFTER);
                if Arc::strong_count(&current) == 1 {
                    // The run this watchdog guards has returned.
                    return;
                }
                let (n, input) = match current.lock() {
                    Ok(g) => (g.0, g.1.clone()),
                    Err(_) => return,
                };
                if n == last {
                    let saved = save_crash(&artifacts, target, &input);
                    eprintln!(
                        "fuzz: {}: input hung for {HANG_AFTER:?}: {saved:?}",
                        target.name
                    );
                    std::process::exit(2);
                }
                last = n;
            }
        });
    }
    let track = |input: &[u8], execs: u64| {
        if let Ok(mut g) = current.lock() {
            g.0 = execs;
            g.1.clear();
            g.1.extend_from_slice(input);
        }
    };

    let seeds = if seeds.is_empty() {
        vec![Vec::new()]
    } else {
        seeds
    };
    for input in seeds {
        track(&input, report.execs);
        report.execs += 1;
        if run_one(target, &input).is_err() {
            report.crash = Some(save_crash(artifacts, target, &input)?);
            return Ok(report);
        }
        seen.merge();
        corpus.push(input);
    }

    let deadline = Instant::now() + duration;
    let mut input = Vec::with_capacity(MAX_INPUT);
    while Instant::now() < deadline {
        // Try a batch between clock reads.
        for _ in 0..64 {
            let parent = rng.below(corpus.len());
            let other = rng.below(corpus.len());
            input.clear();
            input.extend_from_slice(&corpus[parent]);
            mutate::mutate(
                &mut input,
                &corpus[other],
                target.shape,
                target.dict,
                &mut rng,
            );
            track(&input, report.execs);
            report.execs += 1;
            if run_one(target, &input).is_err() {
                report.crash = Some(save_crash(artifacts, target, &input)?);
                report.corpus = corpus.len();
                report.edges_hit = seen.edges_hit;
                return Ok(report);
            }
            if seen.merge() {
                if corpus.len() < MAX_CORPUS {
                    corpus.push(input.clone());
                } else {
                    let slot = n_seeds + rng.below(MAX_CORPUS - n_seeds);
                    corpus[slot] = input.clone();
                }
            } else if report.edges_total == 0 && rng.one_in(50) && corpus.len() < MAX_CORPUS {
                // Without coverage, keep a few mutants anyway so mutations can stack.
                corpus.push(input.clone());
            }
        }
    }
    report.corpus = corpus.len();
    report.edges_hit = seen.edges_hit;
    Ok(report)
}
