//! `sluice-bench-report`: turns the `sluice-load` JSON files of one `bench/compare.sh` run
//! into `report.md`, `report.json` and `latency.svg` (see the `report` module of
//! sluice-bench for what is in them).
//!
//! ```text
//! sluice-bench-report --raw target/bench/raw --out target/bench
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: sluice-bench-report --raw DIR --out DIR";

fn parse_args() -> Result<(PathBuf, PathBuf), String> {
    let mut raw = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--raw" => raw = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    raw.zip(out).ok_or_else(|| USAGE.to_string())
}

fn main() -> ExitCode {
    let (raw, out) = match parse_args() {
        Ok(paths) => paths,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sluice-bench-report: {e}");
            return ExitCode::from(64);
        }
    };
    match sluice_bench::report::write(&raw, &out) {
        Ok(paths) => {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            println!("wrote {}", names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
