//! `sluice-mock`: a mock LLM provider that answers in microseconds.
//!
//! It speaks the OpenAI API (chat completions, completions, embeddings,
//! responses, models) and Anthropic's messages API, streaming or not, over
//! plain HTTP/1.1 with keep-alive and pipelining. Tests steer it per request
//! with `x-mock-*` headers (delays, failures, disconnects, stalls) and read
//! its counters to check what the gateway did, e.g. that it cancelled an
//! upstream request.
//!
//! ```text
//!   MockServer::start ── worker thread × N (one monoio runtime each)
//!                          └─ SO_REUSEPORT listener ─ accept
//!                               └─ connection: Reader ─ http ─ request ─ behaviour::plan
//!                                              Writer ─ shapes / stream (SSE)
//!   counters: stats::Shared (atomics), read by MockServer::stats and GET /mock/stats
//! ```
//!
//! | Endpoint | Answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or SSE chunks with `"stream":true` |
//! | `POST /v1/completions` | `text_completion`, streaming too |
//! | `POST /v1/embeddings` | one 256-float vector per input: its words and trigrams hashed, normalised (paraphrases close, strangers far) |
//! | `POST /v1/responses` | a completed Responses object (no streaming) |
//! | `POST /v1/messages` | Anthropic message, or its SSE event sequence |
//! | `POST /model/{id}/converse`, `…/converse-stream` | Bedrock Converse answer, or its binary event stream (SigV4 checked: [`bedrock`]) |
//! | `GET /v1/models` | a short model list |
//! | `GET /mock/stats`, `POST /mock/reset` | [`MockStats`] as JSON; zero the counters |
//!
//! Per-request headers override the [`MockConfig`] defaults:
//! `x-mock-chunks`, `x-mock-chunk-size`, `x-mock-ttft-ms`,
//! `x-mock-chunk-delay-ms`, `x-mock-latency-ms` (non-streaming delay),
//! `x-mock-status` (answer this status with an OpenAI error body),
//! `x-mock-fail-rate`, `x-mock-retry-after`, `x-mock-disconnect-after`
//! (close after N content chunks; non-streaming: close without answering),
//! `x-mock-stall: 1` (never answer), `x-mock-answer-model` (answer with
//! this `model` instead of the requested one). An invalid or unknown
//! `x-mock-*` header is answered with 400, so typos do not pass silently.

#![warn(missing_docs)]

pub mod bedrock;
mod behaviour;
mod connection;
mod embed;
mod http;
mod race;
mod request;
mod server;
mod shapes;
mod stats;
mod stream;
mod surface;
mod vertex;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub use server::Driver;
pub use stats::{fnv1a, MockStats, RecordedRequest, MAX_RECORDED_BODY};

/// How the mock answers when a request does not say otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct MockConfig {
    /// Address to listen on; port 0 picks a free port (see [`MockServer::addr`]).
    pub listen: SocketAddr,
    /// Worker threads, each with its own runtime and listener.
    pub workers: usize,
    /// Content chunks per stream; also the completion token count.
    pub chunks: u32,
    /// Bytes of content text per chunk.
    pub chunk_size: usize,
    /// Delay before the first byte of an answer, streaming or not.
    pub ttft_ms: u64,
    /// Delay between content chunks of a stream.
    pub chunk_delay_ms: u64,
    /// Probability, in `[0, 1]`, of answering `fail_status` instead.
    pub fail_rate: f64,
    /// Status of failures drawn from `fail_rate`.
    pub fail_status: u16,
    /// Seconds sent as `Retry-After` on injected failures.
    pub retry_after: Option<u64>,
    /// Pin worker `i` to core `i` (modulo the core count).
    pub pin_cores: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9000)),
            workers: 1,
            chunks: 8,
            chunk_size: 4,
            ttft_ms: 0,
            chunk_delay_ms: 0,
            fail_rate: 0.0,
            fail_status: 500,
            retry_after: None,
            pin_cores: false,
        }
    }
}

impl MockConfig {
    /// Refuses values the mock cannot honour.
    pub fn validate(&self) -> io::Result<()> {
        let invalid =
            |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.workers == 0 {
            return invalid("mock: workers must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return invalid("mock: fail_rate must be within [0, 1]");
        }
        if !(200..=599).contains(&self.fail_status) {
            return invalid("mock: fail_status must be within 200..=599");
        }
        Ok(())
    }
}

/// A running mock: worker threads accepting on [`MockServer::addr`].
///
/// Start it with [`MockServer::start`]; stop it with [`MockServer::shutdown`]
/// or by dropping it. Either way, live connections (stalled ones included)
/// are closed and the threads joined.
pub struct MockServer {
    addr: SocketAddr,
    driver: Driver,
    shared: Arc<stats::Shared>,
    workers: Vec<server::WorkerHandle>,
}

impl MockServer {
    /// Binds, starts the workers on the driver [`Driver::from_env`] picks,
    /// and returns once every worker accepts.
    pub fn start(cfg: MockConfig) -> io::Result<MockServer> {
        MockServer::start_with_driver(cfg, Driver::from_env()?)
    }

    /// [`MockServer::start`] on a given driver.
    pub fn start_with_driver(cfg: MockConfig, driver: Driver) -> io::Result<MockServer> {
        cfg.validate()?;
        let listeners = server::bind_all(cfg.listen, cfg.workers)?;
        let addr = match listeners.first() {
            Some(listener) => listener.local_addr()?,
            None => cfg.listen,
        };
        let mut mock = MockServer {
            addr,
            driver,
            shared: Arc::default(),
            workers: Vec::with_capacity(cfg.workers),
        };
        // On error `mock` is dropped, which stops the workers already started.
        server::spawn_workers(listeners, &cfg, driver, &mock.shared, &mut mock.workers)?;
        Ok(mock)
    }

    /// The bound address (the real port when port 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The driver the workers run on.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.shared.snapshot()
    }

    /// Zeroes the counters, like `POST /mock/reset`.
    pub fn reset_stats(&self) {
        self.shared.reset();
    }

    /// The most recent request received (control endpoints excepted).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request()
    }

    /// Stops accepting, closes live connections and joins the workers.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        server::stop_all(&self.shared, &mut self.workers);
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("driver", &self.driver)
            .field("workers", &self.workers.len())
            .finish()
    }
}
