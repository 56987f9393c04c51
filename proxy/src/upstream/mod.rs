//! The upstream side: connections and pools (`pool`), one attempt at a deployment
//! (`attempt`), DNS, active health checks, each worker's balancers and breakers (`routing`)
//! and the providers' own limits, the upstream model catalog (`catalog`).

pub mod attempt;
pub mod catalog;
pub mod dns;
pub mod health;
pub mod pool;
pub mod routing;
pub mod sigv4;
pub mod vertex;

/// Starts a worker's background tasks for its config generation: health checks, and (worker
/// 0 only) the model catalog fetch.
pub fn start_background(
    slot: &std::rc::Rc<crate::state::Slot>,
    worker: &std::rc::Rc<crate::state::Worker>,
) {
    health::spawn_all(slot, worker);
    catalog::spawn(slot, worker);
}
