//! Command line: `sluice serve [--config FILE]`, `sluice check-config FILE` and
//! `sluice doctor [--config FILE]`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_core::config::{Config, ConfigError, ProcessEnv};

/// Exit status for a configuration that was refused (EX_USAGE), before any port is bound.
const EXIT_CONFIG: u8 = 64;

/// Sluice: a thread-per-core LLM API gateway.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Config file; without it, the embedded default (127.0.0.1:8080, providers whose keys
        /// are in the environment).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what would be served.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Check this host (io_uring, limits, sysctls, CPUs, clock) and print what to change.
    Doctor {
        /// Config file to check against (workers, driver, port); without it, the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// Loads a config file, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        None => Config::embedded_default(&ProcessEnv),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
            Config::from_toml(&text, &ProcessEnv)
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::CheckConfig { file } => match load_config(Some(&file)) {
            Ok(cfg) => {
                print!("{}", cfg.summary());
                println!("config ok: {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {}: {e}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Doctor { config } => {
            let cfg = match config.as_deref().map(|p| load_config(Some(p))) {
                None => None,
                Some(Ok(cfg)) => Some(cfg),
                Some(Err(e)) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let checks = crate::doctor::run(cfg.as_ref());
            print!("{}", crate::doctor::render(&checks));
            if crate::doctor::has_failure(&checks) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Serve { config } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            match crate::server::serve(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
