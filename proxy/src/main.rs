//! The `sluice` binary: parse the command line, load and validate the config, run.
//! Everything else lives in the library, where it is tested.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sluice_proxy::ops::cli::Cli::parse();
    sluice_proxy::ops::cli::run(cli)
}
