//! What the bench binaries (`alloc-count`, `ledger-bench`, `stream-mem`) share on their
//! command line: a numeric option, and a `main` that reports `run`'s error under the
//! binary's name.

use std::fmt::Display;
use std::process::ExitCode;

/// The positive number after `name` in `args`, or `default` when `name` is absent.
pub fn number(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{name} needs a positive number")),
    }
}

/// A bench binary's exit: success, or `run`'s error on stderr after the binary's name.
pub fn exit<E: Display>(bin: &str, ran: Result<(), E>) -> ExitCode {
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_positive_or_the_default() {
        let args: Vec<String> = ["--rows", "12", "--batch", "0", "--x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(number(&args, "--rows", 5), Ok(12));
        assert_eq!(number(&args, "--other", 5), Ok(5));
        assert!(number(&args, "--batch", 5).is_err());
        assert!(number(&args, "--x", 5).is_err(), "no value after it");
    }
}
