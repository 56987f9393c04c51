//! The upstream side: connections and pools (`pool`), one attempt at a deployment
//! (`attempt`), DNS, active health checks, each worker's balancers and breakers (`routing`)
//! and the providers' own limits.

pub mod attempt;
pub mod dns;
pub mod health;
pub mod pool;
pub mod routing;
