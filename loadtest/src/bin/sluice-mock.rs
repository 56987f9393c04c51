//! `sluice-mock`: runs the mock LLM provider until SIGINT or SIGTERM.
//!
//! Everything but flag parsing lives in `sluice_loadtest::mock`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use sluice_loadtest::mock::{MockConfig, MockServer};

/// A mock OpenAI/Anthropic provider that answers in microseconds.
///
/// Per-request `x-mock-*` headers override these defaults; set
/// SLUICE_DRIVER=epoll to force the epoll driver.
#[derive(Debug, Parser)]
#[command(name = "sluice-mock", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = MockConfig::default().listen)]
    listen: SocketAddr,
    /// Worker threads [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Content chunks per stream (tokens per answer).
    #[arg(long, default_value_t = MockConfig::default().chunks)]
    chunks: u32,
    /// Bytes of text per chunk.
    #[arg(long, default_value_t = MockConfig::default().chunk_size)]
    chunk_size: usize,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, default_value_t = MockConfig::default().chunk_delay_ms)]
    chunk_delay_ms: u64,
    /// Delay before the first byte of each answer, in milliseconds.
    #[arg(long, default_value_t = MockConfig::default().ttft_ms)]
    ttft_ms: u64,
    /// Probability of answering --fail-status instead, in [0, 1].
    #[arg(long, default_value_t = MockConfig::default().fail_rate)]
    fail_rate: f64,
    /// Status of injected failures.
    #[arg(long, default_value_t = MockConfig::default().fail_status)]
    fail_status: u16,
    /// Retry-After seconds sent with injected failures.
    #[arg(long)]
    retry_after: Option<u64>,
    /// Pin worker i to core i.
    #[arg(long)]
    pin: bool,
}

impl Args {
    fn into_config(self) -> MockConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        MockConfig {
            listen: self.listen,
            workers: self.workers.unwrap_or(cores),
            chunks: self.chunks,
            chunk_size: self.chunk_size,
            ttft_ms: self.ttft_ms,
            chunk_delay_ms: self.chunk_delay_ms,
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            retry_after: self.retry_after,
            pin_cores: self.pin,
        }
    }
}

fn main() -> ExitCode {
    let cfg = Args::parse().into_config();
    if let Err(e) = cfg.validate() {
        eprintln!("sluice-mock: {e}");
        return ExitCode::from(64);
    }
    // Registered before the workers start, so an early signal is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("sluice-mock: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match MockServer::start(cfg) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("sluice-mock: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "sluice-mock listening on {} ({} workers, driver {})",
        server.addr(),
        server.workers(),
        server.driver()
    );
    let _ = signals.forever().next();
    let stats = server.stats();
    server.shutdown();
    eprintln!(
        "sluice-mock stopped: {} connections, {} requests, {} streams ({} cancelled)",
        stats.connections, stats.requests, stats.streams_started, stats.streams_cancelled
    );
    ExitCode::SUCCESS
}
