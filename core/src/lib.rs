//! # sluice-core
//!
//! Everything the Sluice gateway *decides*, with no sockets, no runtime and no clock reads.
//! It takes bytes (and, where time matters, `now`) in and returns decisions and bytes out, the
//! way rustls and quinn-proto keep protocol logic apart from I/O. `sluice-proxy` is the thin
//! shell that moves the bytes.
//!
//! ```text
//!  client bytes ─► http1::parse_request_head / ChunkedDecoder
//!   request::Authenticated ─inspect─► Inspected ─admit─► Admitted ─lookup─► (cache::ResponseStore)
//!     (inspect::inspect,                (limiter::Limiter:      └─reserve─► Reserved
//!      config::Config::model_index)      requests, concurrency)  (tokens, budget)  │
//!   attempt::AttemptLoop  ◄──────────────────────────────────────────────────────┘
//!     handle(event) / poll() -> Command     over route::RouteTable (balance, breaker, hedge),
//!     retry::RetryPolicy, limiter::DeploymentLimits; dialect::translate_request,
//!     inspect::rewrite (splice model, include_usage)
//!  upstream bytes ─► http1::parse_response_head ─► filter::Chain (sse::SseScanner |
//!     dialect::StreamTranslator, filter::Capture) ─► client bytes; usage, cost
//!   request::Settled (principal, permit) ─► settled once, in the proxy
//! ```
//!
//! Each request stage consumes itself and returns the next, so a spent stage cannot be
//! reused; every command of the attempt loop takes `now` from the caller.
//!
//! Nothing here panics on input: every parser returns an error that maps to an OpenAI-style
//! JSON answer ([`error::GatewayError`]).

#![warn(missing_docs)]

pub mod alerts;
pub mod answered_model;
pub mod attempt;
pub mod balance;
pub mod breaker;
pub mod cache;
pub mod calendar;
pub mod catalog;
pub mod compress;
pub mod config;
pub mod cost;
pub mod decimal;
pub mod dialect;
pub mod error;
pub mod estimate;
pub mod filter;
pub mod hedge;
pub mod http1;
pub mod inspect;
pub mod keys;
pub mod lease;
pub mod limiter;
pub mod limits;
pub mod media;
pub mod multipart;
pub mod request;
pub mod retry;
pub mod route;
pub mod sse;
pub mod traceparent;
pub mod usage;
