//! Start-up and shutdown: worker threads (one per core, pinned, each with its own monoio
//! runtime and SO_REUSEPORT listener), signals, and the drain on SIGTERM. Here: loading the
//! config, binding, building the shared state and starting the workers; each worker's loop is
//! in `worker`, the signal thread (reload, drain) in `signals`, housekeeping in `upkeep`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use sluice_core::cache::MemoryStore;
use sluice_core::config::{Config, ConfigError, Driver, Pinning, ProcessEnv, Workers};
use sluice_core::limiter::{DeploymentLimits, Limiter, LocalLimiter};

use crate::listen::tls_server::{self, TlsTerminator};
use crate::state::{Generations, Shared};
use crate::upstream::dns::DnsTable;
use crate::upstream::pool::tls_per_provider;

mod signals;
mod upkeep;
mod worker;

use signals::wait_for_signal;
use upkeep::{spawn_upkeep, spawn_watchdog};
use worker::run_worker;

type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 4096;

/// Binds one SO_REUSEPORT listener.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Builds a runtime for `driver`; returns it and the name of the driver it runs.
fn build_runtime(driver: Driver) -> io::Result<(Runtime, &'static str)> {
    let uring = || {
        let plain = || {
            RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .enable_timer()
                .build()
                .map(Runtime::from)
        };
        if std::env::var_os("SLUICE_URING_PLAIN").is_some() {
            return plain();
        }
        let mut urb = io_uring::IoUring::builder();
        urb.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .uring_builder(urb)
            .enable_timer()
            .build()
            .map(Runtime::from)
            .or_else(|_| plain())
    };
    let legacy = || {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(Runtime::from)
    };
    match driver {
        Driver::Epoll => Ok((legacy()?, "epoll")),
        Driver::IoUring => Ok((uring()?, "io_uring")),
        Driver::Auto => {
            if monoio::utils::detect_uring() {
                match uring() {
                    Ok(rt) => return Ok((rt, "io_uring")),
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring is present but unusable; falling back to epoll")
                    }
                }
            }
            Ok((legacy()?, "epoll"))
        }
    }
}

/// The driver to use: `SLUICE_DRIVER` (auto, io_uring, epoll) overrides the config, so tests
/// and operators can force one without editing files.
fn effective_driver(cfg: Driver) -> Driver {
    match std::env::var("SLUICE_DRIVER").as_deref() {
        Ok("epoll") | Ok("legacy") => Driver::Epoll,
        Ok("io_uring") | Ok("iouring") => Driver::IoUring,
        Ok("auto") => Driver::Auto,
        _ => cfg,
    }
}

/// Raises the open-files soft limit to the hard limit: every connection is a descriptor.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// Loads a config file, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    let mut cfg = match path {
        None => Config::embedded_default(&ProcessEnv)?,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
            Config::from_toml(&text, &ProcessEnv)?
        }
    };
    if let Some(file) = cfg.pricing.catalog_file.clone() {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ConfigError(format!(
                "invalid config at `pricing.catalog_file`: cannot read {}: {e}",
                file.display()
            ))
        })?;
        cfg.add_price_catalog(&text)?;
    }
    // The listener's certificate and key must load before anything binds.
    if let Some(tls) = &cfg.server.tls {
        tls_server::load(tls)
            .map_err(|e| ConfigError(format!("invalid config at `server.tls`: {e}")))?;
    }
    Ok(cfg)
}

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub fn serve(config: Config, config_path: Option<std::path::PathBuf>) -> io::Result<()> {
    let _log_guard = crate::telemetry::log::init(&config.log);
    for (model, deployment) in config.unpriced() {
        tracing::warn!(%model, %deployment, "no price for this deployment's model: its requests cost $0 and do not count toward budgets (counted in sluice_unpriced_requests_total)");
    }
    raise_nofile_limit();
    let tls = tls_per_provider(&config)?;
    let tls_listener = match &config.server.tls {
        None => None,
        Some(files) => {
            Some(Arc::new(TlsTerminator::new(files).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            })?))
        }
    };
    let workers = match config.server.workers {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };
    let driver = effective_driver(config.server.driver);
    let (listeners, listen) = bind_listeners(config.server.listen, workers)?;
    // Signals are registered before READY=1: SIGHUP's default action would kill the process,
    // and systemd counts a SIGHUP death as clean, so Restart=on-failure would not restart it.
    let signals = {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?
    };
    let dns = DnsTable::resolve_all(&config);
    let started_unix = crate::clock::unix_s();
    // The recorder first: the admission counters are created with it.
    crate::telemetry::metrics::install();
    // (After the recorder, so a failed first token is counted.)
    let vertex_tokens = crate::upstream::vertex::cells_for(&config);
    let (access, ledger_handle) = super::access::open_access(&config)?;
    let fleet = match &config.shared {
        Some(c) => Some(crate::shared::Fleet::start(c)?),
        None => None,
    };
    // A fleet keys its response cache alike on every replica (its second level is shared).
    let cache_secret = fleet
        .as_ref()
        .and_then(|f| f.cache_secret)
        .unwrap_or_else(crate::cache::secret);
    let limiter: Arc<dyn Limiter> = match &fleet {
        Some(f) => f.limiter.clone(),
        None => Arc::new(LocalLimiter),
    };
    let shared = Arc::new(Shared {
        generation: 1,
        config_path,
        dns,
        tls,
        tls_listener,
        draining: Default::default(),
        listeners_up: Default::default(),
        active: Default::default(),
        health: crate::upstream::health::table(config.providers.len()),
        workers,
        heartbeats: (0..workers)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        started_unix,
        catalog: Default::default(),
        prices: config.price_table(),
        provider_limits: Arc::new(DeploymentLimits::build(&config, limiter.clone(), None)),
        limiter,
        fleet,
        // The response cache is kept across reloads; `[cache]` bounds apply at start-up.
        responses: Arc::new(MemoryStore::new(config.cache, cache_secret)),
        flights: Default::default(),
        routes: Arc::new(sluice_core::route::SharedRoutes::build(
            &config,
            None,
            Instant::now(),
        )),
        auth: Arc::new(access.auth),
        registry: access.registry.map(Arc::new),
        admin_token: access.admin_token,
        vertex_tokens,
        config: Arc::new(config),
    });
    let generations: Generations = Arc::new(arc_swap::ArcSwap::new(shared.clone()));
    if let (Some(f), Some(reg)) = (&shared.fleet, &shared.registry) {
        f.watch_keys(reg.clone(), shared.auth.clone())?;
    }
    if let Some(f) = &shared.fleet {
        f.feed_index(shared.responses.clone())?;
    }
    crate::state::spawn_dns_refresher(generations.clone());
    if let Some(t) = &shared.tls_listener {
        t.spawn_watcher()?;
    }
    crate::telemetry::metrics::install();
    spawn_upkeep(shared.clone())?;
    crate::telemetry::trace::spawn(&shared.config.tracing)?;
    if let Some(admin) = crate::admin::listener::spawn(generations.clone())? {
        tracing::info!(%admin, "admin listener (metrics) up");
    }

    let (stops, handles) = start_workers(&shared, &generations, listeners, driver)?;
    tracing::info!(%listen, workers, "sluice listening");

    // systemd (Type=notify): READY=1 once every worker accepts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.listeners_up.load(Ordering::SeqCst) < workers
        && !handles.iter().any(|h| h.is_finished())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    if shared.listeners_up.load(Ordering::SeqCst) == workers {
        let msg = format!("serving on {listen} with {workers} workers");
        if let Err(e) = crate::ops::sdnotify::ready_with_status(&msg) {
            tracing::warn!(error = %e, "sd_notify READY failed");
        }
        spawn_watchdog(&shared)?;
    }

    wait_for_signal(&generations, signals)?;
    let result = shut_down(&shared, stops, handles);
    if let Some(fleet) = &shared.fleet {
        fleet.shutdown(Duration::from_secs(1));
    }
    drop(ledger_handle);
    tracing::info!("stopped");
    result
}

/// One listener per worker, bound before anything starts so a busy port fails fast (with port
/// 0 the first listener picks the port and the others join it); or, with socket activation,
/// dups of the socket systemd passed. Returns them and the address served.
fn bind_listeners(
    configured: SocketAddr,
    workers: usize,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let mut listen = configured;
    let mut listeners = Vec::with_capacity(workers);
    // Socket activation (tuning/sluice.socket): systemd hands the listening socket in; every
    // worker accepts on a dup of it and server.listen is ignored.
    let activated = crate::ops::sdnotify::listen_fds();
    if let Some(first) = activated.first() {
        listen = first.local_addr()?;
        if activated.len() > 1 {
            tracing::warn!(
                sockets = activated.len(),
                "socket activation: only the first socket is served"
            );
        }
        for _ in 0..workers {
            listeners.push(first.try_clone()?);
        }
        tracing::info!(%listen, "socket activation: serving the socket systemd passed; server.listen ignored");
    } else {
        for _ in 0..workers {
            let listener = bind_reuseport(listen)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
            listen = listener.local_addr()?;
            listeners.push(listener);
        }
    }
    Ok((listeners, listen))
}

/// The stop signals and join handles of the worker threads.
type Started = (
    Vec<oneshot::Sender<()>>,
    Vec<std::thread::JoinHandle<io::Result<()>>>,
);

/// Starts one worker thread per listener, pinned to a core when the config says so and the
/// CPU set has one CPU per worker ([`sluice_core::config::pinning`]).
fn start_workers(
    shared: &Shared,
    generations: &Generations,
    listeners: Vec<std::net::TcpListener>,
    driver: Driver,
) -> io::Result<Started> {
    let workers = listeners.len();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let pin = match sluice_core::config::pinning(
        shared.config.server.pin_workers,
        cores.len(),
        workers,
    ) {
        Pinning::Pin => true,
        Pinning::Off => false,
        Pinning::Refused { allowed, workers } => {
            tracing::info!(
                allowed_cpus = allowed,
                workers,
                "pin_workers: not pinning, the CPU set is not one CPU per worker (a CPU quota \
                 shares the node's CPUs; pinning would put every replica on the same cores)"
            );
            false
        }
    };
    let mut stops = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for (id, listener) in listeners.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let generations = generations.clone();
        let core = if pin { cores.get(id).copied() } else { None };
        let handle = std::thread::Builder::new()
            .name(format!("sluice-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, generations, listener, driver, stop_rx)
            })?;
        handles.push(handle);
    }
    Ok((stops, handles))
}

/// Drains: stops the workers (each finishes what is in flight, up to the drain timeout),
/// joins them, and flushes the ledger with the usage of the requests they finished.
fn shut_down(
    shared: &Shared,
    stops: Vec<oneshot::Sender<()>>,
    handles: Vec<std::thread::JoinHandle<io::Result<()>>>,
) -> io::Result<()> {
    let _ = crate::ops::sdnotify::stopping();
    // Keep systemd from killing a long drain (TimeoutStopSec covers the default 30 s).
    let _ = crate::ops::sdnotify::extend_timeout(
        Duration::from_millis(shared.config.server.drain_timeout_ms) + Duration::from_secs(5),
    );
    tracing::info!(
        drain_timeout_ms = shared.config.server.drain_timeout_ms,
        "shutting down: draining in-flight requests"
    );
    for stop in stops {
        let _ = stop.send(());
    }
    let mut result = Ok(());
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(io::Error::other("a worker panicked")),
        }
    }
    // Every worker is done: commit the usage of the requests they finished.
    if let Some(ledger) = &shared.auth.ledger {
        if ledger.flush_and_wait(Duration::from_secs(10)) {
            tracing::info!(records = ledger.committed(), "ledger flushed");
        } else {
            tracing::error!(pending = ledger.pending(), "ledger flush timed out");
        }
    }
    result
}
