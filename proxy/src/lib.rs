//! # sluice-proxy
//!
//! The I/O shell around `sluice-core`: one monoio runtime per core, each with its own
//! SO_REUSEPORT listener, its own upstream connection pools and its own view of the world;
//! only the config, DNS answers and a few flags are shared, through `Arc` and atomics.
//!
//! ```text
//! server::serve ─► worker thread × N (pinned, io_uring or epoll)
//!                    └─ accept ─► conn::serve_connection (HTTP/1.1, keep-alive, pipelining)
//!                                   ├─ endpoints (healthz, readyz, models, errors)
//!                                   └─ forward ─► upstream (pool, TLS) ─► relay (SSE scan)
//! ```
//!
//! With `[server.tls]`, each accepted connection does its TLS handshake (`tls_server`) before
//! `conn` sees it; `client_io` hides which kind a connection is.

pub mod admin;
pub mod admin_api;
pub mod attempt;
pub mod auth;
pub mod cli;
pub mod client_io;
pub mod conn;
pub mod deliver;
pub mod dns;
pub mod doctor;
pub mod endpoints;
pub mod forward;
pub mod health;
pub mod log;
pub mod metrics;
pub mod plan;
pub mod provider_limits;
pub mod relay;
pub mod respond;
pub mod routing;
pub mod sdnotify;
pub mod server;
pub mod state;
pub mod store;
pub mod tls_server;
pub mod trace;
pub mod upstream;
