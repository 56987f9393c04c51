//! Start-up and shutdown: worker threads (one per core, pinned, each with its own monoio
//! runtime and SO_REUSEPORT listener), signals, and the drain on SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use sluice_core::cache::MemoryStore;
use sluice_core::config::{Config, ConfigError, Driver, Pinning, ProcessEnv, Workers};
use sluice_core::limiter::{DeploymentLimits, Limiter, LocalLimiter};

use crate::listen::client_io;
use crate::listen::conn::serve_connection;
use crate::listen::respond;
use crate::listen::tls_server::{self, TlsTerminator};
use crate::state::{Generations, Shared, Slot, Worker};
use crate::upstream::dns::DnsTable;
use crate::upstream::pool::tls_per_provider;

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
        RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .build()
            .map(Runtime::from)
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
        prices: sluice_core::cost::PriceTable::new(config.prices.clone()),
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

/// Reloads the config file into a new generation and swaps it in: `Ok(Some(generation))`
/// when it did, `Ok(None)` when there is no file (the embedded default), `Err` when the new
/// config is refused (the current one keeps serving). Runs on the signal thread: reading,
/// validating, resolving and building TLS client configs never block a worker.
fn reload(generations: &Generations) -> Result<Option<u64>, String> {
    let old = generations.load_full();
    let Some(path) = old.config_path.clone() else {
        return Ok(None);
    };
    let mut config = load_config(Some(&path)).map_err(|e| e.to_string())?;
    keep_restart_only(&old.config, &mut config);
    let tls = tls_per_provider(&config).map_err(|e| e.to_string())?;
    let vertex_tokens = crate::upstream::vertex::cells_for(&config);
    let dns = DnsTable::resolve_all(&config);
    // The last health-check result of each provider that is still there, by name.
    let health = crate::upstream::health::table(config.providers.len());
    for (slot, p) in health.iter().zip(&config.providers) {
        let last = old
            .config
            .providers
            .iter()
            .position(|o| o.name == p.name)
            .and_then(|i| old.health.get(i))
            .map_or(crate::upstream::health::UNKNOWN, |h| {
                h.load(Ordering::Relaxed)
            });
        slot.store(last, Ordering::Relaxed);
    }
    // Static keys: rebuild the key index (unchanged keys keep their limit state).
    if let Some(registry) = &old.registry {
        let mut reg = registry
            .lock()
            .map_err(|_| "the key registry is poisoned".to_string())?;
        reg.reconfigure(&config, &old.auth)
            .map_err(|e| format!("cannot rebuild the key index: {e}"))?;
    }
    old.auth.regroup(&old.config, &config);
    let next = Shared {
        generation: old.generation + 1,
        config_path: Some(path),
        dns,
        tls,
        tls_listener: old.tls_listener.clone(),
        draining: old.draining.clone(),
        listeners_up: old.listeners_up.clone(),
        workers: old.workers,
        active: old.active.clone(),
        health,
        heartbeats: old.heartbeats.clone(),
        started_unix: old.started_unix,
        catalog: Default::default(),
        prices: sluice_core::cost::PriceTable::new(config.prices.clone()),
        provider_limits: Arc::new(DeploymentLimits::build(
            &config,
            old.limiter.clone(),
            Some(&old.provider_limits),
        )),
        routes: Arc::new(sluice_core::route::SharedRoutes::build(
            &config,
            Some(&old.routes),
            Instant::now(),
        )),
        limiter: old.limiter.clone(),
        fleet: old.fleet.clone(),
        responses: old.responses.clone(),
        flights: old.flights.clone(),
        auth: old.auth.clone(),
        registry: old.registry.clone(),
        admin_token: old.admin_token,
        vertex_tokens,
        config: Arc::new(config),
    };
    let generation = next.generation;
    generations.store(Arc::new(next));
    Ok(Some(generation))
}

/// Settings a reload cannot change (they need a restart): the new config keeps the running
/// values, and each one that differs is logged.
fn keep_restart_only(running: &Config, new: &mut Config) {
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if new.$($field).+ != running.$($field).+ {
                tracing::warn!(
                    setting = $name,
                    "config reload: `{}` changes only on restart; keeping the running value",
                    $name
                );
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(server.listen, "server.listen");
    keep!(server.workers, "server.workers");
    keep!(server.driver, "server.driver");
    keep!(server.pin_workers, "server.pin_workers");
    keep!(server.tls, "server.tls");
    keep!(admin, "admin");
    keep!(tracing, "tracing");
    keep!(store, "store");
    keep!(shared, "shared");
    keep!(auth, "auth");
    keep!(log, "log");
    keep!(limits.default_max_tokens, "limits.default_max_tokens");
}

/// How often housekeeping runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Housekeeping off the data plane: drains metric histogram buffers (they grow without
/// bound otherwise) and, once the gateway is idle after a busy spell, hands freed heap memory
/// back to the OS, so RSS returns to its idle size after a load peak.
fn spawn_upkeep(shared: Arc<Shared>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-upkeep".into())
        .spawn(move || {
            let mut busy_since_trim = false;
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                crate::telemetry::metrics::upkeep();
                if shared.active.load(Ordering::Relaxed) > 0 {
                    busy_since_trim = true;
                } else if busy_since_trim {
                    busy_since_trim = false;
                    release_free_memory();
                }
            }
        })?;
    Ok(())
}

/// Returns free heap pages to the OS (glibc keeps them in its arenas otherwise).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas under their locks; it takes
    // no pointer from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Feeds the systemd watchdog (WatchdogSec= in the unit) every half period, while every
/// worker's heartbeat moves: a stuck event loop stops the pings and systemd restarts us.
fn spawn_watchdog(shared: &Arc<Shared>) -> io::Result<()> {
    let Some(every) = crate::ops::sdnotify::watchdog_interval() else {
        return Ok(());
    };
    let shared = shared.clone();
    std::thread::Builder::new()
        .name("sluice-watchdog".into())
        .spawn(move || {
            let mut last: Vec<u64> = shared
                .heartbeats
                .iter()
                .map(|h| h.load(Ordering::Relaxed))
                .collect();
            loop {
                std::thread::sleep(every);
                let now: Vec<u64> = shared
                    .heartbeats
                    .iter()
                    .map(|h| h.load(Ordering::Relaxed))
                    .collect();
                let stuck = now.iter().zip(&last).position(|(n, l)| n == l);
                match stuck {
                    None => {
                        let _ = crate::ops::sdnotify::watchdog();
                    }
                    Some(id) => tracing::error!(
                        worker = id,
                        "worker event loop stalled; not feeding the watchdog"
                    ),
                }
                last = now;
            }
        })?;
    Ok(())
}

/// Blocks until SIGTERM or SIGINT and sets the draining flag. A second signal exits at once.
/// SIGHUP reloads the config (see [`reload`]) and the listener's certificate.
fn wait_for_signal(
    generations: &Generations,
    mut signals: signal_hook::iterator::Signals,
) -> io::Result<()> {
    use signal_hook::consts::SIGHUP;
    for sig in signals.forever() {
        if sig == SIGHUP {
            let _ = crate::ops::sdnotify::reloading();
            tracing::info!("SIGHUP: reload");
            match reload(generations) {
                Ok(Some(generation)) => tracing::info!(generation, "config reloaded"),
                Ok(None) => {
                    tracing::info!("no config file to reload (serving the embedded default)")
                }
                Err(e) => tracing::error!("config reload refused: {e}"),
            }
            // The listener's certificate; a bad new one keeps the old (and is logged).
            if let Some(t) = &generations.load().tls_listener {
                let _ = t.reload("SIGHUP");
            }
            let _ = crate::ops::sdnotify::ready_with_status("reloaded");
            continue;
        }
        tracing::info!(signal = sig, "signal received");
        break;
    }
    generations.load().draining.store(true, Ordering::SeqCst);
    std::thread::Builder::new()
        .name("sluice-signal".into())
        .spawn(move || {
            if signals.forever().any(|sig| sig != SIGHUP) {
                eprintln!("sluice: second signal, exiting without draining");
                std::process::exit(1);
            }
        })?;
    Ok(())
}

fn run_worker(
    id: usize,
    generations: Generations,
    listener: std::net::TcpListener,
    driver: Driver,
    stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let (mut rt, driver_name) = build_runtime(driver).map_err(|e| {
        tracing::error!(worker = id, error = %e, "cannot start the I/O driver");
        e
    })?;
    tracing::info!(worker = id, driver = driver_name, "worker started");
    rt.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        let slot = Rc::new(Slot::new(
            id,
            generations,
            crate::upstream::start_background,
        ));
        let worker = slot.worker();
        crate::upstream::start_background(&slot, &worker);
        worker.shared.listeners_up.fetch_add(1, Ordering::SeqCst);
        monoio::spawn(crate::listen::idle::deadlines::sweep());
        // Access lines are handed to the log writer in batches (flushed by the heartbeat).
        crate::telemetry::access_line::batch_on_this_thread();
        let beat = slot.clone();
        monoio::spawn(async move {
            for n in 0u64.. {
                crate::telemetry::access_line::flush();
                if n % 4 == 0 {
                    crate::listen::idle::return_free_memory();
                }
                // Also moves an idle worker to a new generation (and its health checks).
                let worker = beat.current();
                if let Some(h) = worker.shared.heartbeats.get(id) {
                    h.fetch_add(1, Ordering::Relaxed);
                }
                drop(worker);
                monoio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        accept_loop(&slot, &listener, stop).await;
        drop(listener);
        let worker = slot.current();
        worker.start_drain();
        drain(&worker).await;
        crate::telemetry::access_line::flush();
        Ok(())
    })
}

async fn accept_loop(slot: &Rc<Slot>, listener: &TcpListener, mut stop: oneshot::Receiver<()>) {
    // After the stop: until the shut-down listener fails the accept, take what is left.
    let mut stopping: Option<Instant> = None;
    loop {
        // The accept stays pinned across the stop, never dropped mid-flight (see
        // `stop_listening`).
        let mut accept = std::pin::pin!(listener.accept());
        if stopping.is_none() {
            monoio::select! {
                _ = &mut stop => {
                    stopping = Some(Instant::now() + STOP_ACCEPT_LIMIT);
                    if let Err(e) = stop_listening(listener) {
                        tracing::warn!(worker = slot.worker().id, error = %e, "cannot shut the listener down");
                        return;
                    }
                }
                r = &mut accept => {
                    on_accept(slot, r).await;
                    continue;
                }
            }
        }
        let left = stopping.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        });
        match monoio::time::timeout(left, accept).await {
            Ok(Ok(r)) => on_accept(slot, Ok(r)).await,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Starts serving an accepted connection (or answers it 503 when the worker is full).
async fn on_accept(slot: &Rc<Slot>, accepted: io::Result<(monoio::net::TcpStream, SocketAddr)>) {
    let worker = &slot.current();
    let max = worker.shared.config.server.max_connections_per_worker;
    let stream = match accepted {
        Ok((stream, _)) => stream,
        Err(e) => {
            // EMFILE and friends: back off briefly instead of spinning.
            tracing::warn!(worker = worker.id, error = %e, "accept failed");
            monoio::time::sleep(Duration::from_millis(10)).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    if worker.counters.connections.get() >= max {
        // A TLS client cannot read a plain 503: it is just closed.
        if worker.shared.tls_listener.is_none() {
            monoio::spawn(refuse(stream));
        }
        return;
    }
    let w = worker.clone();
    let slot = slot.clone();
    monoio::spawn(async move {
        let c = &w.counters;
        c.connections.set(c.connections.get() + 1);
        w.metrics.connections.increment(1.0);
        let halves = match &w.shared.tls_listener {
            None => Some(client_io::plain(stream)),
            // Boxed: the handshake's state is larger than the connection loop's and is
            // needed only until the handshake ends.
            Some(t) => Box::pin(handshake(&w, t, stream)).await,
        };
        if let Some(halves) = halves {
            serve_connection(slot, halves).await;
        }
        c.connections.set(c.connections.get().saturating_sub(1));
        w.metrics.connections.decrement(1.0);
    });
}

/// Longest wait, after the stop, for the shut-down listener's pending accept to end.
const STOP_ACCEPT_LIMIT: Duration = Duration::from_secs(1);

/// Stops accepting on `listener` without dropping the accept that is under way.
///
/// Dropping an accept future does not stop an io_uring accept the kernel already completed:
/// that connection's descriptor would be lost with the cancelled operation and its client left
/// hanging. `shutdown(SHUT_RD)` on a listening socket closes it for new connections instead
/// (the kernel takes it out of the SO_REUSEPORT group, and with `net.ipv4.tcp_migrate_req = 1`
/// hands the connections still queued on it to the group's other listeners, e.g. those of the
/// new process during a restart) and makes the pending accept fail, so the accept loop sees
/// every connection it was given before it ends.
fn stop_listening(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `listener`, borrowed for the whole call, so it is open
    // and is a socket; shutdown(2) takes no pointers and only changes the socket's state.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The TLS handshake of a new client connection, with the config current at this moment and
/// within the header read timeout. A failure (a plain-HTTP client, a bad ClientHello, a
/// timeout) is logged at debug and counted; the connection is closed and nothing else moves.
async fn handshake(
    worker: &Worker,
    tls: &TlsTerminator,
    stream: monoio::net::TcpStream,
) -> Option<(client_io::ClientRead, client_io::ClientWrite)> {
    let peer = stream.peer_addr().ok();
    let acceptor = monoio_rustls::TlsAcceptor::from(tls.current());
    let limit = Duration::from_millis(worker.shared.config.server.header_read_timeout_ms);
    let error = match monoio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some(client_io::tls(stream)),
        Ok(Err(monoio_rustls::TlsError::Io(e))) => e.to_string(),
        Ok(Err(monoio_rustls::TlsError::Rustls(e))) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    worker.metrics.tls_handshake_failures.increment(1);
    tracing::debug!(worker = worker.id, peer = ?peer, %error, "TLS handshake failed");
    None
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(stream: monoio::net::TcpStream) {
    use monoio::io::AsyncWriteRentExt;
    let err = sluice_core::error::GatewayError::new(
        sluice_core::error::ErrorKind::Overloaded,
        "too many connections",
    )
    .with_retry_after(1);
    let mut stream = stream;
    let _ = stream
        .write_all(respond::error(&err, false, "req_refused"))
        .await;
}

/// Waits for this worker's connections to finish, up to the drain deadline: in-flight
/// requests run to their end (answered with `connection: close`), idle keep-alive connections
/// get their short grace (`idle::DRAIN_IDLE_GRACE`) and close.
async fn drain(worker: &Worker) {
    let deadline =
        Instant::now() + Duration::from_millis(worker.shared.config.server.drain_timeout_ms);
    let c = &worker.counters;
    while c.inflight.get() > 0 || c.connections.get() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = worker.id,
                inflight = c.inflight.get(),
                connections = c.connections.get(),
                "drain deadline reached; abandoning in-flight requests"
            );
            return;
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `stop_listening` fails the accept that is under way (it is not left hanging, and its
    /// future is never dropped), on both drivers.
    fn stop_listening_ends_a_pending_accept(driver: Driver) {
        let (mut rt, _) = build_runtime(driver).unwrap();
        rt.block_on(async {
            let std_listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = std_listener.local_addr().unwrap();
            let listener = TcpListener::from_std(std_listener).unwrap();
            // A connection queued before the stop is still accepted.
            let _queued = std::net::TcpStream::connect(addr).unwrap();
            let mut accept = std::pin::pin!(listener.accept());
            let first = monoio::time::timeout(Duration::from_secs(5), &mut accept).await;
            assert!(matches!(first, Ok(Ok(_))));
            let mut accept = std::pin::pin!(listener.accept());
            let idle = monoio::time::timeout(Duration::from_millis(50), &mut accept).await;
            assert!(idle.is_err(), "nothing to accept yet");
            stop_listening(&listener).unwrap();
            let end = monoio::time::timeout(Duration::from_secs(5), accept).await;
            assert!(
                matches!(end, Ok(Err(_))),
                "the pending accept fails after the stop"
            );
            // The port takes no new connections from this listener.
            assert!(std::net::TcpStream::connect(addr).is_err());
        });
    }

    #[test]
    fn stop_listening_epoll() {
        stop_listening_ends_a_pending_accept(Driver::Epoll);
    }

    #[test]
    fn stop_listening_io_uring() {
        if monoio::utils::detect_uring() {
            stop_listening_ends_a_pending_accept(Driver::IoUring);
        }
    }

    #[test]
    fn releasing_free_memory_is_safe_after_churn() {
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(blocks);
        release_free_memory();
        release_free_memory();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again[12345], 7);
    }
}
