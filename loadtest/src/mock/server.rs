//! Listeners, worker threads and shutdown.
//!
//! Each worker is a thread with its own monoio runtime and its own
//! `SO_REUSEPORT` listener on the shared address, so the kernel spreads
//! connections and workers share nothing but [`Shared`] counters.
//!
//! Shutdown: [`Shared::stopping`] is set, then each worker's oneshot fires,
//! which wakes its accept loop from another thread. The worker then drops
//! every live connection (each races a oneshot of its own), waits for them
//! to finish, and returns.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use super::connection::{serve, Ctx};
use super::race::{race, Either};
use super::stats::Shared;
use super::MockConfig;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 4096;
/// Longest a stopping worker waits for its connections to unwind.
const DRAIN: Duration = Duration::from_secs(1);

/// The I/O driver the workers run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl Driver {
    /// Picks the driver: `SLUICE_DRIVER=epoll` (or `legacy`) forces epoll,
    /// `io_uring` (or `uring`) requires io_uring; unset or `auto` uses
    /// io_uring when the kernel allows it (containers often forbid it) and
    /// falls back to epoll, as monoio's `FusionDriver` does.
    pub fn from_env() -> io::Result<Driver> {
        let choice = std::env::var("SLUICE_DRIVER").unwrap_or_default();
        let uring = monoio::utils::detect_uring();
        match choice.to_ascii_lowercase().as_str() {
            "" | "auto" if uring => Ok(Driver::IoUring),
            "" | "auto" | "epoll" | "legacy" => Ok(Driver::Epoll),
            "io_uring" | "iouring" | "uring" if uring => Ok(Driver::IoUring),
            "io_uring" | "iouring" | "uring" => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "SLUICE_DRIVER asks for io_uring, which this kernel or sandbox refuses",
            )),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SLUICE_DRIVER={other:?}: expected auto, io_uring or epoll"),
            )),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        })
    }
}

/// A running worker, as seen from the thread that started it.
pub(crate) struct WorkerHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Binds one listener per worker on one address; when port 0 is asked, the
/// first listener picks the port and the others join it.
pub(crate) fn bind_all(addr: SocketAddr, workers: usize) -> io::Result<Vec<StdListener>> {
    let first = bind(addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind(addr)?);
    }
    Ok(listeners)
}

fn bind(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Starts one worker thread per listener; returns once all accept, or the
/// first error (the workers already started are stopped by the caller
/// dropping the handles through [`stop_all`]).
pub(crate) fn spawn_workers(
    listeners: Vec<StdListener>,
    cfg: &MockConfig,
    driver: Driver,
    shared: &Arc<Shared>,
    handles: &mut Vec<WorkerHandle>,
) -> io::Result<()> {
    let cores = if cfg.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let count = listeners.len();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel();
        let core = cores.get(i % cores.len().max(1)).copied();
        let ctx = (cfg.clone(), Arc::clone(shared));
        let ready = ready_tx.clone();
        let thread = thread::Builder::new()
            .name(format!("sluice-mock-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let ctx = Ctx {
                    cfg: ctx.0,
                    shared: ctx.1,
                };
                run_worker(driver, listener, ctx, stop_rx, ready);
            })?;
        handles.push(WorkerHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
        });
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a mock worker exited while starting")),
        }
    }
    Ok(())
}

/// Stops and joins every worker.
pub(crate) fn stop_all(shared: &Shared, handles: &mut [WorkerHandle]) {
    shared.stopping.store(true, Ordering::Relaxed);
    for handle in handles.iter_mut() {
        if let Some(stop) = handle.stop.take() {
            let _ = stop.send(());
        }
    }
    for handle in handles.iter_mut() {
        if let Some(thread) = handle.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Builds the runtime for `driver` and runs the accept loop on it.
fn run_worker(
    driver: Driver,
    listener: StdListener,
    ctx: Ctx,
    stop: oneshot::Receiver<()>,
    ready: mpsc::Sender<io::Result<()>>,
) {
    let main = accept_loop(driver, listener, ctx, stop, ready.clone());
    let built = match driver {
        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(main)),
    };
    if let Err(e) = built {
        let _ = ready.send(Err(e));
    }
}

async fn accept_loop(
    driver: Driver,
    listener: StdListener,
    ctx: Ctx,
    mut stop: oneshot::Receiver<()>,
    ready: mpsc::Sender<io::Result<()>>,
) {
    let listener = match adopt(driver, listener) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    let ctx = Rc::new(ctx);
    let live = Rc::new(Live::default());
    loop {
        match race(&mut stop, listener.accept()).await {
            Either::Left(_) => break,
            Either::Right(Ok((stream, _))) => {
                if ctx.shared.stopping.load(Ordering::Relaxed) {
                    break;
                }
                monoio::spawn(live.track(serve(stream, Rc::clone(&ctx))));
            }
            // Out of file descriptors or similar: back off instead of spinning.
            Either::Right(Err(_)) => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    drop(listener);
    live.stop_all().await;
}

/// Registers a std listener with the current runtime.
fn adopt(driver: Driver, listener: StdListener) -> io::Result<TcpListener> {
    // epoll needs a non-blocking socket; io_uring wants the blocking one.
    listener.set_nonblocking(driver == Driver::Epoll)?;
    TcpListener::from_std(listener)
}

/// The live connections of one worker, so shutdown can end them.
#[derive(Default)]
struct Live {
    /// One per connection; dropping it ends that connection.
    stops: RefCell<Vec<oneshot::Sender<()>>>,
    count: Cell<usize>,
}

/// Decrements [`Live::count`] when a connection task ends.
struct LiveGuard(Rc<Live>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
    }
}

impl Live {
    /// Wraps a connection so that [`Live::stop_all`] can end it.
    fn track(self: &Rc<Self>, conn: impl Future<Output = ()>) -> impl Future<Output = ()> {
        let (tx, rx) = oneshot::channel::<()>();
        {
            let mut stops = self.stops.borrow_mut();
            if stops.len() == stops.capacity() {
                // Forget finished connections before growing.
                stops.retain(|s| !s.is_canceled());
            }
            stops.push(tx);
        }
        self.count.set(self.count.get() + 1);
        let guard = LiveGuard(Rc::clone(self));
        async move {
            let _guard = guard;
            race(conn, rx).await;
        }
    }

    /// Ends every connection and waits (bounded) for their tasks to finish,
    /// then gives the runtime a turn to submit the sockets' closes.
    async fn stop_all(&self) {
        self.stops.borrow_mut().clear();
        let deadline = Instant::now() + DRAIN;
        while self.count.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
}
