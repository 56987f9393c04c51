//! `fuzz --target NAME|all [--seconds N] [--seed S] [--corpus DIR] [--artifacts DIR]`
//!
//! Fuzzes each named target for N seconds (default 30) from the seeds in `corpus/<target>/`.
//! Exits 1 when an input panics (saved under `artifacts/<target>/`), 64 on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_fuzz::{cov, engine, targets};

fn usage(msg: &str) -> ExitCode {
    eprintln!("fuzz: {msg}");
    eprintln!(
        "usage: fuzz --target NAME|all [--seconds N] [--seed S] [--corpus DIR] [--artifacts DIR]"
    );
    let names: Vec<&str> = targets::TARGETS.iter().map(|t| t.name).collect();
    eprintln!("targets: {}", names.join(" "));
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut target = None;
    let mut seconds = 30u64;
    let mut seed = None;
    let mut corpus = root.join("corpus");
    let mut artifacts = root.join("artifacts");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else {
            return usage(&format!("{arg} needs a value"));
        };
        match arg.as_str() {
            "--target" => target = Some(value),
            "--seconds" => match value.parse() {
                Ok(s) => seconds = s,
                Err(_) => return usage("--seconds takes a whole number"),
            },
            "--seed" => match value.parse() {
                Ok(s) => seed = Some(s),
                Err(_) => return usage("--seed takes a whole number"),
            },
            "--corpus" => corpus = PathBuf::from(value),
            "--artifacts" => artifacts = PathBuf::from(value),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let Some(target) = target else {
        return usage("--target is required");
    };
    let chosen: Vec<&'static targets::Target> = if target == "all" {
        targets::TARGETS.iter().collect()
    } else {
        match targets::find(&target) {
            Some(t) => vec![t],
            None => return usage(&format!("no target {target}")),
        }
    };
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if cov::edges() == 0 {
        eprintln!(
            "fuzz: no coverage instrumentation (build with scripts/fuzz.sh); mutating blindly"
        );
    }
    for t in chosen {
        let seeds = match engine::read_corpus(&corpus.join(t.name)) {
            Ok(files) => files.into_iter().map(|(_, data)| data).collect::<Vec<_>>(),
            Err(e) => {
                eprintln!("fuzz: reading the corpus of {}: {e}", t.name);
                return ExitCode::FAILURE;
            }
        };
        let n_seeds = seeds.len();
        let started = Instant::now();
        let report = match engine::fuzz(t, seeds, Duration::from_secs(seconds), seed, &artifacts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fuzz: {}: {e}", t.name);
                return ExitCode::FAILURE;
            }
        };
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        println!(
            "fuzz: {:<18} {:>9} execs ({:>7.0}/s)  seeds {:>3}  corpus {:>5}  edges {}/{}  seed {seed}",
            t.name,
            report.execs,
            report.execs as f64 / secs,
            n_seeds,
            report.corpus,
            report.edges_hit,
            report.edges_total,
        );
        if let Some(path) = report.crash {
            eprintln!(
                "fuzz: {}: an input panicked; saved to {}\n  replay (runs {}/<target>/*): cd fuzz && cargo run --bin fuzz -- --target {} --seconds 0 --corpus {}",
                t.name,
                path.display(),
                artifacts.display(),
                t.name,
                artifacts.display(),
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
