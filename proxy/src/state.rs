//! What the workers share (read-mostly, behind `Arc` and atomics) and what each worker keeps to
//! itself (behind `Rc` and `Cell`, never crossing a thread).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use sluice_core::config::Config;

use crate::send_now::InFlight;
use crate::telemetry::metrics::WorkerMetrics;
use crate::upstream::dns::DnsTable;
use crate::upstream::pool::Pool;
use crate::upstream::routing::Routes;

/// State shared by every worker. Nothing here is locked on the request path.
///
/// One `Shared` is one *generation*: the state built from one config. A reload (SIGHUP)
/// builds a new generation and swaps it into [`Generations`]; what must outlive a generation
/// (the drain flag, counters, keys and limits, the store, the TLS terminator) sits behind
/// `Arc`s every generation shares.
pub struct Shared {
    /// The validated config.
    pub config: Arc<Config>,
    /// Which generation this is (1 at start, +1 per reload).
    pub generation: u64,
    /// The config file it came from; `None` for the embedded default.
    pub config_path: Option<std::path::PathBuf>,
    /// Resolved addresses per provider, refreshed by the DNS thread.
    pub dns: DnsTable,
    /// TLS settings for upstream connections, per provider.
    pub tls: Vec<Arc<rustls::ClientConfig>>,
    /// TLS termination on the client listener (`[server.tls]`), reloadable.
    pub tls_listener: Option<Arc<crate::listen::tls_server::TlsTerminator>>,
    /// Set once on SIGTERM/SIGINT: stop accepting, finish what is in flight.
    pub draining: Arc<AtomicBool>,
    /// Workers whose listener is accepting.
    pub listeners_up: Arc<AtomicUsize>,
    /// Worker count, for readiness.
    pub workers: usize,
    /// Requests in flight across all workers (for idle-time housekeeping only).
    pub active: Arc<AtomicUsize>,
    /// Latest active health-check result per provider (see `upstream::health`).
    pub health: Box<[std::sync::atomic::AtomicU8]>,
    /// One counter per worker, bumped every 250 ms by a task on its runtime; the systemd
    /// watchdog is fed only while every running worker's counter moves.
    pub heartbeats: Arc<[std::sync::atomic::AtomicU64]>,
    /// The upstream's model ids for the pattern groups, fetched once per generation (see
    /// `upstream::catalog`).
    pub catalog: sluice_core::catalog::Catalog,
    /// When the process started serving, as a unix time (the `created` of `/v1/models`).
    pub started_unix: u64,
    /// Prices per model, for the cost of each request.
    pub prices: sluice_core::cost::PriceTable,
    /// The providers' own limits per deployment (kept across reloads while unchanged).
    pub provider_limits: Arc<sluice_core::limiter::DeploymentLimits>,
    /// The limiter backend every admission goes through (keys, teams, deployments).
    pub limiter: Arc<dyn sluice_core::limiter::Limiter>,
    /// `[shared]`: the fleet's lease thread behind `limiter`; `None` keeps limits local.
    pub fleet: Option<Arc<crate::shared::Fleet>>,
    /// The response store consulted before tokens are reserved.
    pub responses: Arc<dyn sluice_core::cache::ResponseStore>,
    /// Requests in flight that identical ones wait on (`coalesce = true`).
    pub flights: Arc<crate::cache::coalesce::Flights>,
    /// Circuit breakers and retry budgets, one per deployment and per group, shared by every
    /// worker (kept across reloads while a deployment's label and settings are unchanged).
    pub routes: Arc<sluice_core::route::SharedRoutes>,
    /// Virtual keys, limits and the ledger (see `request::auth`).
    pub auth: Arc<crate::request::auth::Auth>,
    /// The admin side of the store, when one is configured.
    pub registry: Option<Arc<crate::registry::SharedRegistry>>,
    /// SHA-256 of `SLUICE_ADMIN_TOKEN`; `None` turns the admin API off.
    pub admin_token: Option<[u8; 32]>,
    /// Per provider: the Vertex AI access token cell of a `vertex` provider.
    pub vertex_tokens: Vec<Option<Arc<crate::upstream::vertex::TokenCell>>>,
}

impl Shared {
    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// One worker's own state, shared by its connection tasks on one thread.
pub struct Worker {
    /// Worker index (also its core when pinned).
    pub id: usize,
    /// The shared state.
    pub shared: Arc<Shared>,
    /// Keep-alive connections to upstreams, per provider.
    pub pool: RefCell<Pool>,
    /// This thread's counters, shared by every generation's worker on it.
    pub counters: Rc<Counters>,
    /// Last readiness probe: (when, result).
    pub ready_cache: Cell<Option<(Instant, bool)>>,
    /// Cached metric handles.
    pub metrics: WorkerMetrics,
    /// Balancers and hedgers of every model group (this worker's own), over the breakers and
    /// retry budgets every worker shares.
    pub routes: RefCell<Routes>,
}

/// What a worker thread counts across generations: its connections, requests and the tasks
/// waiting for the drain.
#[derive(Default)]
pub struct Counters {
    /// Open client connections.
    pub connections: Cell<usize>,
    /// Requests being handled: this thread's count, which the sends of `send_now` read too.
    pub inflight: InFlight,
    /// Tasks waiting for the drain to start (idle keep-alive connections), by ticket.
    drain_waiters: RefCell<HashMap<u64, Waker>>,
    /// Next ticket for `drain_waiters`.
    next_waiter: Cell<u64>,
}

/// Every generation's shared state: the current one, swapped on reload.
pub type Generations = Arc<ArcSwap<Shared>>;

impl Worker {
    /// A worker with empty pools.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Self::with_counters(id, shared, Rc::new(Counters::default()))
    }

    /// A worker with empty pools that counts into `counters`.
    pub fn with_counters(id: usize, shared: Arc<Shared>, counters: Rc<Counters>) -> Self {
        let providers = shared.config.providers.len();
        let metrics = WorkerMetrics::new(id, &shared.config);
        let routes = RefCell::new(Routes::new(&shared.config, id, &shared.routes));
        Worker {
            id,
            shared,
            pool: RefCell::new(Pool::new(providers)),
            counters,
            ready_cache: Cell::new(None),
            metrics,
            routes,
        }
    }

    /// The worker of the next generation, on the same thread: fresh pools, the same
    /// counters, and the balancers (of groups whose deployments are unchanged) of this one; the
    /// breakers come with the generation's shared routes.
    pub fn successor(&self, shared: Arc<Shared>) -> Self {
        let next = Self::with_counters(self.id, shared, self.counters.clone());
        next.routes.borrow_mut().carry_over(
            &self.shared.config,
            &self.routes.borrow(),
            &next.shared.config,
        );
        next
    }

    /// Resolves once the gateway is draining and this worker has stopped accepting (see
    /// [`Worker::start_drain`]); at once if it already drains.
    pub fn drain_started(&self) -> DrainStarted<'_> {
        DrainStarted {
            worker: self,
            ticket: None,
        }
    }

    /// Gives back the memory of the drain-waiter table once most of it is unused (it grows
    /// with the idle connections a crowd left behind), and all of it once it is empty (a
    /// table kept for the worker's life would hold a page a busy spell filled). Called by
    /// the worker's heartbeat.
    pub fn trim_tables(&self) {
        let mut waiters = self.counters.drain_waiters.borrow_mut();
        if mostly_unused(waiters.len(), waiters.capacity()) {
            waiters.shrink_to_fit();
        }
    }

    /// Wakes every task waiting in [`Worker::drain_started`]. Call after the draining flag
    /// is set.
    pub fn start_drain(&self) {
        let waiters = std::mem::take(&mut *self.counters.drain_waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }
}

/// Whether a table of `len` entries with room for `capacity` is worth shrinking: any room once
/// it is empty, else room for four times its entries (and at least 64).
fn mostly_unused(len: usize, capacity: usize) -> bool {
    if len == 0 {
        capacity > 0
    } else {
        capacity > 4 * len.max(16)
    }
}

/// The future of [`Worker::drain_started`]. Dropping it unregisters its waker, so the waiter
/// table holds only tasks that are waiting right now.
pub struct DrainStarted<'a> {
    worker: &'a Worker,
    ticket: Option<u64>,
}

impl Future for DrainStarted<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.worker.shared.is_draining() {
            return Poll::Ready(());
        }
        let ticket = match self.ticket {
            Some(t) => t,
            None => {
                let t = self.worker.counters.next_waiter.get();
                self.worker.counters.next_waiter.set(t.wrapping_add(1));
                self.ticket = Some(t);
                t
            }
        };
        self.worker
            .counters
            .drain_waiters
            .borrow_mut()
            .insert(ticket, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for DrainStarted<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            self.worker.counters.drain_waiters.borrow_mut().remove(&t);
        }
    }
}

/// Counts a request as in flight for as long as it lives.
pub struct InflightGuard<'a>(&'a Worker);

impl<'a> InflightGuard<'a> {
    /// Starts counting.
    pub fn new(worker: &'a Worker) -> Self {
        let c = &worker.counters;
        c.inflight.begin();
        worker.shared.active.fetch_add(1, Ordering::Relaxed);
        worker.metrics.inflight.increment(1.0);
        InflightGuard(worker)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let c = &self.0.counters;
        c.inflight.end();
        self.0.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.inflight.decrement(1.0);
    }
}

/// One worker thread's view of the generations: the worker of the current one, rebuilt (see
/// [`Worker::successor`]) the first time it is asked after a reload.
pub struct Slot {
    generations: Generations,
    current: RefCell<Rc<Worker>>,
    /// Called with each worker [`Slot::current`] builds after a reload; the server passes
    /// `upstream::start_background`, which starts the worker's health checks (and catalog fetch).
    on_new_worker: fn(&Rc<Slot>, &Rc<Worker>),
}

impl Slot {
    /// The slot of worker `id`, starting on the current generation. `on_new_worker` is
    /// called with each worker built after a reload (not with the first one).
    pub fn new(
        id: usize,
        generations: Generations,
        on_new_worker: fn(&Rc<Slot>, &Rc<Worker>),
    ) -> Self {
        let worker = Rc::new(Worker::new(id, generations.load_full()));
        Slot {
            generations,
            current: RefCell::new(worker),
            on_new_worker,
        }
    }

    /// The worker of the current generation; the second value is `true` when it was built
    /// by this call (the caller starts its health checks).
    pub fn refresh(&self) -> (Rc<Worker>, bool) {
        let current = self.current.borrow().clone();
        let latest = self.generations.load();
        if Arc::ptr_eq(&current.shared, &latest) {
            return (current, false);
        }
        let next = Rc::new(current.successor(Arc::clone(&latest)));
        *self.current.borrow_mut() = next.clone();
        (next, true)
    }

    /// The worker of the current generation, built (with its health checks started) the
    /// first time it is asked for after a reload.
    pub fn current(self: &Rc<Self>) -> Rc<Worker> {
        let (worker, fresh) = self.refresh();
        if fresh {
            tracing::debug!(
                worker = worker.id,
                generation = worker.shared.generation,
                "worker moved to a new config generation"
            );
            (self.on_new_worker)(self, &worker);
        }
        worker
    }

    /// Whether `worker` is still this thread's current worker.
    pub fn is_current(&self, worker: &Rc<Worker>) -> bool {
        Rc::ptr_eq(&self.current.borrow(), worker)
    }

    /// The worker of the current generation, without looking for a newer one.
    pub fn worker(&self) -> Rc<Worker> {
        self.current.borrow().clone()
    }
}

/// Starts the DNS refresh thread when some provider is named by a host name (IP literals never
/// change). The thread lives as long as the process.
pub fn spawn_dns_refresher(generations: Generations) {
    let config = generations.load().config.clone();
    let names = config
        .providers
        .iter()
        .filter(|p| p.endpoint.host.parse::<std::net::IpAddr>().is_err())
        .count();
    if names == 0 {
        return;
    }
    let every_ms = config
        .providers
        .iter()
        .map(|p| p.dns_refresh_ms)
        .min()
        .unwrap_or(30_000);
    let spawned = std::thread::Builder::new()
        .name("sluice-dns".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(every_ms));
            // The current generation's table (a reload resolves its own names first).
            let shared = generations.load_full();
            if shared.is_draining() {
                return;
            }
            shared.dns.refresh(&shared.config);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the DNS refresh thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_waiter_table_is_given_back_a_busy_one_kept() {
        assert!(mostly_unused(0, 56), "empty: all of it goes back");
        assert!(!mostly_unused(0, 0), "nothing to give back");
        assert!(!mostly_unused(1, 56));
        assert!(!mostly_unused(16, 64));
        assert!(mostly_unused(16, 65));
        assert!(mostly_unused(100, 401));
        assert!(!mostly_unused(100, 400));
    }
}
