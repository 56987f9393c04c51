//! # sluice-proxy
//!
//! The I/O shell around `sluice-core`: one monoio runtime per core, each with its own
//! SO_REUSEPORT listener, its own upstream connection pools and its own view of the world;
//! only the config, DNS answers and a few flags are shared, through `Arc` and atomics.
//!
//! The folders say where a decision runs:
//!
//! ```text
//! listen::server::serve ─► worker thread × N (pinned, io_uring or epoll)
//!   └─ accept ─► listen::conn::serve_connection (HTTP/1.1, keep-alive, pipelining)
//!                  ├─ listen::endpoints (healthz, readyz, models; errors via listen::respond)
//!                  └─ request: auth ─► plan ─► forward ─► deliver ─► relay (SSE scan)
//!                                                 └─ upstream: attempt ─► pool (TLS)
//!                                                              routing, health, dns,
//!                                                              provider_limits
//!
//! admin     the admin listener (metrics) and the admin API (keys, teams, spend)
//! telemetry log (access line), trace (OTLP), metrics (Prometheus)
//! ops       cli, doctor, sdnotify
//! state     what the workers share, and what each keeps to itself
//! store     keys, teams and the spend ledger (SQLite)
//! ```
//!
//! With `[server.tls]`, each accepted connection does its TLS handshake
//! (`listen::tls_server`) before `listen::conn` sees it; `listen::client_io` hides which kind
//! a connection is.

pub mod admin;
pub mod listen;
pub mod ops;
pub mod registry;
pub mod request;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
