//! `sluice-load`: the load generator's command line (see `sluice_loadtest::load`).

fn main() {
    std::process::exit(sluice_loadtest::load::cli::main());
}
