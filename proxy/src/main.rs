//! The `sluice` binary: parse the command line, load and validate the config, run.
//! Everything else lives in the library, where it is tested.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: each worker thread allocates from its own heap
/// without locks, same-size objects share pages (a connection's task does not pin the pages of
/// the request buffers freed around it), and pages that empty are returned to the system, so
/// the gateway's memory follows its load down again after a burst of connections.
#[global_allocator]
// Entered by `mi_malloc` when the layout allows, not always `mi_malloc_aligned`
// (`sluice_proxy::alloc`).
static ALLOCATOR: sluice_proxy::alloc::Mimalloc = sluice_proxy::alloc::Mimalloc;

fn main() -> ExitCode {
    let cli = sluice_proxy::ops::cli::Cli::parse();
    sluice_proxy::ops::cli::run(cli)
}
