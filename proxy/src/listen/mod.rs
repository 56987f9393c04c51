//! The client side: runtimes and listeners, each client connection, and the answers the
//! gateway gives itself (health, readiness, models, errors).

mod access;
pub mod client_io;
pub mod cold;
pub mod conn;
pub mod endpoints;
pub mod idle;
pub mod respond;
pub mod server;
pub mod tls_server;
