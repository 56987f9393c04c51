//! Start-up and shutdown: worker threads (one per core, pinned, each with its own monoio
//! runtime and SO_REUSEPORT listener), signals, and the drain on SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_channel::oneshot;
use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use sluice_core::config::{Config, Driver, Workers};

use crate::conn::serve_connection;
use crate::dns::{self, DnsTable};
use crate::respond;
use crate::state::{Shared, Worker};
use crate::upstream::tls_per_provider;

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

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
pub fn serve(config: Config) -> io::Result<()> {
    let _log_guard = crate::log::init(&config.log);
    raise_nofile_limit();
    let tls = tls_per_provider(&config)?;
    let workers = match config.server.workers {
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        Workers::Count(n) => n,
    };
    let driver = effective_driver(config.server.driver);
    // Bind every listener before starting anything, so a busy port fails fast. With port 0
    // the first listener picks the port and the others join it.
    let mut listen = config.server.listen;
    let mut listeners = Vec::with_capacity(workers);
    // Socket activation (tuning/sluice.socket): systemd hands the listening socket in; every
    // worker accepts on a dup of it and server.listen is ignored.
    let activated = crate::sdnotify::listen_fds();
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
    // Signals are registered before READY=1: SIGHUP's default action would kill the process,
    // and systemd counts a SIGHUP death as clean, so Restart=on-failure would not restart it.
    let signals = {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?
    };
    let dns = DnsTable::resolve_all(&config);
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        config: Arc::new(config),
        dns,
        tls,
        draining: Default::default(),
        listeners_up: Default::default(),
        workers,
        heartbeats: (0..workers)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        started_unix,
        prices: sluice_core::cost::PriceTable::new(Default::default()),
    });
    dns::spawn_refresher(shared.clone());
    crate::metrics::install();
    crate::trace::spawn(&shared.config.tracing)?;
    if let Some(admin) = crate::admin::spawn(shared.clone())? {
        tracing::info!(%admin, "admin listener (metrics) up");
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut stops = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for (id, listener) in listeners.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let shared = shared.clone();
        let core = (shared.config.server.pin_workers && !cores.is_empty())
            .then(|| cores[id % cores.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("sluice-w{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(id, shared, listener, driver, stop_rx)
            })?;
        handles.push(handle);
    }
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
        let msg = format!("READY=1\nSTATUS=serving on {listen} with {workers} workers");
        if let Err(e) = crate::sdnotify::notify(&msg) {
            tracing::warn!(error = %e, "sd_notify READY failed");
        }
        spawn_watchdog(&shared)?;
    }

    wait_for_signal(&shared, signals)?;
    let _ = crate::sdnotify::stopping();
    // Keep systemd from killing a long drain (TimeoutStopSec covers the default 30 s).
    let _ = crate::sdnotify::extend_timeout(
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
    tracing::info!("stopped");
    result
}

/// Feeds the systemd watchdog (WatchdogSec= in the unit) every half period, while every
/// worker's heartbeat moves: a stuck event loop stops the pings and systemd restarts us.
fn spawn_watchdog(shared: &Arc<Shared>) -> io::Result<()> {
    let Some(every) = crate::sdnotify::watchdog_interval() else {
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
                        let _ = crate::sdnotify::watchdog();
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
fn wait_for_signal(shared: &Shared, mut signals: signal_hook::iterator::Signals) -> io::Result<()> {
    use signal_hook::consts::SIGHUP;
    for sig in signals.forever() {
        if sig == SIGHUP {
            let _ = crate::sdnotify::reloading();
            // The reload goes here: validate, swap on success, keep the old config on error.
            tracing::info!("SIGHUP: reload");
            let _ = crate::sdnotify::notify("READY=1\nSTATUS=reloaded");
            continue;
        }
        tracing::info!(signal = sig, "signal received");
        break;
    }
    shared.draining.store(true, Ordering::SeqCst);
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
    shared: Arc<Shared>,
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
        let worker = Rc::new(Worker::new(id, shared));
        worker.shared.listeners_up.fetch_add(1, Ordering::SeqCst);
        let beat = worker.shared.clone();
        monoio::spawn(async move {
            loop {
                if let Some(h) = beat.heartbeats.get(id) {
                    h.fetch_add(1, Ordering::Relaxed);
                }
                monoio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        accept_loop(&worker, &listener, stop).await;
        drop(listener);
        drain(&worker).await;
        Ok(())
    })
}

async fn accept_loop(worker: &Rc<Worker>, listener: &TcpListener, mut stop: oneshot::Receiver<()>) {
    let max = worker.shared.config.server.max_connections_per_worker;
    loop {
        let accepted = monoio::select! {
            _ = &mut stop => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if worker.connections.get() >= max {
            monoio::spawn(refuse(stream));
            continue;
        }
        let w = worker.clone();
        monoio::spawn(async move {
            w.connections.set(w.connections.get() + 1);
            w.metrics.connections.increment(1.0);
            serve_connection(w.clone(), stream).await;
            w.connections.set(w.connections.get().saturating_sub(1));
            w.metrics.connections.decrement(1.0);
        });
    }
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

/// Waits for this worker's in-flight requests to finish, up to the drain deadline.
async fn drain(worker: &Worker) {
    let deadline =
        Instant::now() + Duration::from_millis(worker.shared.config.server.drain_timeout_ms);
    while worker.inflight.get() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = worker.id,
                inflight = worker.inflight.get(),
                "drain deadline reached; abandoning in-flight requests"
            );
            return;
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}
