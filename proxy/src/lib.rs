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
//!                  └─ request::api: auth ─► core's stages ─► plan ─► forward ─► deliver
//!                                    (401..429)                  │ (attempt   ─► relay
//!                                                                │  loop)        (filters)
//!                        request::settle ◄── every request ends ─┘   └─ upstream: attempt
//!                                                                        ─► pool (TLS);
//!                                                                        routing, health, dns
//!
//! admin     the admin listener (metrics) and the admin API (keys, teams, spend)
//! alerts    budget alerts: a log line, a counter and a webhook posted from its own thread
//! cache     the response cache on the request path: lookup, replay, keep at settlement
//! telemetry log (access line), trace (OTLP, ids in context), metrics (Prometheus)
//! memory    free heap memory handed back to the system after a busy spell
//! ops       cli, doctor, sdnotify
//! state     what the workers share, and what each keeps to itself
//! registry  the admin side of the store: keys and teams, rebuilt into the key index
//! shared    [shared]: limits leased from Redis by a background thread, key changes announced
//! store     keys, teams and the spend ledger behind a backend trait (SQLite), migrations
//! ```
//!
//! No two modules import each other, directly or around a circle. Dependencies mostly
//! point down: `telemetry` and the upstream connections at the bottom, `state` (and the key
//! `registry`) above them, the `request` stages above `state`, `listen` above those, `admin`
//! and `ops` on top. The exceptions point at leaves or at data: `upstream::attempt` and
//! `upstream::health` run on a `state::Worker`; `state` holds the key index
//! (`request::auth`) and the listener's TLS terminator (`listen::tls_server`); the request
//! stages write through `listen::client_io` and `listen::respond`; `listen` starts the admin
//! listener, serves its `/metrics` answer when `metrics_on_main` is set, and talks to
//! systemd through `ops::sdnotify`.
//!
//! With `[server.tls]`, each accepted connection does its TLS handshake
//! (`listen::tls_server`) before `listen::conn` sees it; `listen::client_io` hides which kind
//! a connection is.

pub mod admin;
pub mod alerts;
pub mod alloc;
pub mod blocking_http;
pub mod cache;
pub mod clock;
pub mod listen;
pub mod memory;
pub mod ops;
pub mod registry;
pub mod request;
pub mod send_now;
pub mod shared;
pub mod spares;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
