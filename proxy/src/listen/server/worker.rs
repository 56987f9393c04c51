//! One worker thread's life: its monoio runtime, the accept loop (TLS handshake, the
//! connection limit), stopping the listener without losing an accepted connection, the drain.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::net::TcpListener;
use sluice_core::config::Driver;

use crate::listen::client_io;
use crate::listen::conn::serve_connection;
use crate::listen::respond;
use crate::listen::tls_server::TlsTerminator;
use crate::state::{Generations, Slot, Worker};

use super::build_runtime;

pub(super) fn run_worker(
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
        monoio::spawn(crate::clock::deadlines::sweep());
        // Access lines are handed to the log writer in batches (flushed by the heartbeat).
        crate::telemetry::access_line::batch_on_this_thread();
        let beat = slot.clone();
        monoio::spawn(async move {
            for n in 0u64.. {
                crate::telemetry::access_line::flush();
                // Also moves an idle worker to a new generation (and its health checks).
                let worker = beat.current();
                if n % 4 == 0 {
                    // What the last second did not use goes back, then to the system.
                    crate::listen::idle::trim_spares();
                    crate::request::relay::trim_spares();
                    worker.trim_tables();
                    crate::clock::deadlines::trim();
                    // Idle upstream connections past their limit close now, not when the
                    // next request looks (their blocks would hold a busy spell's pages).
                    let providers = &worker.shared.config.providers;
                    worker
                        .pool
                        .borrow_mut()
                        .close_expired(Instant::now(), providers);
                    crate::memory::return_free_memory();
                }
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
            // needed only until the handshake ends; out of line (`cold`): its poll's
            // temporaries made this task's poll frame 12 KiB, under every request.
            Some(t) => crate::listen::cold::boxed(|| handshake(&w, t, stream)).await,
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
    use crate::listen::server::bind_reuseport;

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
}
