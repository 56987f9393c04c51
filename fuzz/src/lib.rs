//! Fuzz targets for sluice-core that run on stable Rust.
//!
//! cargo-fuzz and libFuzzer need nightly; this crate instead pairs LLVM's SanitizerCoverage
//! (stable `-C passes=sancov-module`, see [`cov`]) with a small mutation engine ([`engine`]),
//! AFL style: inputs that reach a new edge join the in-memory corpus. Mutations are byte-level
//! and structure-aware ([`mutate`]). Each target ([`targets`]) calls the library and asserts
//! its invariants; a panic is a finding, saved under `artifacts/<target>/`.
//!
//! ```text
//! bash scripts/fuzz.sh                       # every target, FUZZ_SECONDS (30) each
//! cargo test                                 # replay corpus/<target>/* (no instrumentation)
//! cargo run --release --bin fuzz -- --target chunked --seconds 60
//! ```

pub mod cov;
pub mod engine;
pub mod mutate;
pub mod rng;
pub mod targets;
