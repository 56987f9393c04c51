//! Upstream connections: plain or TLS, and each worker's keep-alive pool.
//!
//! A worker owns its pool outright (share-nothing): no lock, no cross-thread hand-off. A
//! connection goes back to the pool only when its response was read to the end and the
//! upstream did not ask to close.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::{ClientTlsStream, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_core::attempt::TransportFailure;
use sluice_core::config::{Config, Provider};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::retry::Failure;

/// Why talking to an upstream failed. Messages never carry secrets.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The host name has no address (yet).
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// TCP connect failed.
    #[error("cannot connect to {provider}: {source}")]
    Connect {
        /// Provider name.
        provider: String,
        /// Cause.
        source: io::Error,
    },
    /// TCP or TLS connect took too long.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// TLS handshake failed.
    #[error("TLS handshake with {provider} failed: {message}")]
    Tls {
        /// Provider name.
        provider: String,
        /// Cause.
        message: String,
    },
    /// Reading or writing failed, or the upstream closed early.
    #[error("connection to {provider} failed: {message}")]
    Io {
        /// Provider name.
        provider: String,
        /// Cause.
        message: String,
    },
    /// No response head within the first-byte timeout.
    #[error("{0} did not answer within the first-byte timeout")]
    FirstByteTimeout(String),
    /// The body stalled longer than the idle timeout.
    #[error("{0} stalled longer than the idle timeout")]
    IdleTimeout(String),
    /// The whole exchange took longer than the total timeout.
    #[error("{0} exceeded the total timeout")]
    TotalTimeout(String),
    /// The upstream broke HTTP/1.1.
    #[error("invalid response from {provider}: {message}")]
    Protocol {
        /// Provider name.
        provider: String,
        /// Cause.
        message: String,
    },
}

impl UpstreamError {
    /// Whether a timeout ended the exchange (as opposed to a failure to reach or read it).
    fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_)
                | UpstreamError::FirstByteTimeout(_)
                | UpstreamError::IdleTimeout(_)
                | UpstreamError::TotalTimeout(_)
        )
    }

    /// The client-facing error: 504 for timeouts, 502 otherwise.
    pub fn to_gateway(&self) -> GatewayError {
        let kind = if self.is_timeout() {
            ErrorKind::UpstreamTimeout
        } else {
            ErrorKind::UpstreamUnreachable
        };
        GatewayError::new(kind, format!("upstream error: {self}"))
    }

    /// This failure as an attempt loop reads it: a timeout, or a failure to connect (which
    /// covers every other transport failure).
    pub fn transport_failure(&self) -> TransportFailure {
        TransportFailure {
            failure: if self.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Connect
            },
            error: self.to_gateway(),
            label: self.label(),
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Resolve(_) => "resolve",
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::ConnectTimeout(_) => "connect_timeout",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Io { .. } => "io",
            UpstreamError::FirstByteTimeout(_) => "first_byte_timeout",
            UpstreamError::IdleTimeout(_) => "idle_timeout",
            UpstreamError::TotalTimeout(_) => "total_timeout",
            UpstreamError::Protocol { .. } => "protocol",
        }
    }
}

/// The byte stream to an upstream.
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl UpstreamIo {
    /// Reads into the spare capacity of `buf` (appending), returning the buffer.
    ///
    /// A TLS read's future is boxed: held in line it is 720 bytes (a plain read's is 152) in
    /// every request's state, a plain stream's whole life included; boxed, it is a small
    /// allocation per TLS read, beside the record's decryption.
    pub async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let slice = buf.slice_mut(len..);
        let (res, slice) = match self {
            UpstreamIo::Plain(s) => s.read(slice).await,
            UpstreamIo::Tls(s) => Box::pin(s.read(slice)).await,
        };
        (res, slice.into_inner())
    }

    /// Whether the stream is plain TCP (see [`UpstreamIo::readable`]).
    pub fn is_plain(&self) -> bool {
        matches!(self, UpstreamIo::Plain(_))
    }

    /// Waits, without a buffer, until a plain stream has bytes to read (or is closed); a TLS
    /// stream is always ready (rustls may hold decrypted bytes already: read it).
    ///
    /// On the epoll driver the wait is relaxed (it may report ready early); the read that
    /// follows then waits as it would have.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            UpstreamIo::Plain(s) => s.readable(true).await,
            UpstreamIo::Tls(_) => Ok(()),
        }
    }

    /// Writes all of `buf`, returning it.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            UpstreamIo::Plain(s) => {
                // Most requests fit in the socket buffer: sent now, no trip through the ring
                // (see `crate::send_now`); the runtime sends whatever is left.
                let sent = crate::send_now::send(s.as_raw_fd(), &buf).unwrap_or(0);
                if sent == buf.len() {
                    return (Ok(()), buf);
                }
                let (res, rest) = s.write_all(buf.slice(sent..)).await;
                (res.map(|_| ()), rest.into_inner())
            }
            UpstreamIo::Tls(s) => {
                let (res, buf) = s.write_all(buf).await;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
                (s.flush().await, buf)
            }
        }
    }
}

/// A connection to an upstream with its bookkeeping.
pub struct UpstreamConn {
    /// The stream.
    pub io: UpstreamIo,
    /// Requests already carried before this one (0 for a fresh connection).
    pub reuses: u32,
    idle_since: Instant,
}

/// One worker's idle upstream connections, per provider.
pub struct Pool {
    idle: Vec<VecDeque<UpstreamConn>>,
    /// Connections opened by this worker.
    pub opened: u64,
    /// Requests sent on a reused connection.
    pub reused: u64,
}

impl Pool {
    /// An empty pool for `providers` providers.
    pub fn new(providers: usize) -> Self {
        Pool {
            idle: (0..providers).map(|_| VecDeque::new()).collect(),
            opened: 0,
            reused: 0,
        }
    }

    /// The most recently used idle connection to `provider` that is still fresh enough.
    pub fn take(
        &mut self,
        provider: usize,
        now: Instant,
        max_idle: Duration,
    ) -> Option<UpstreamConn> {
        let queue = self.idle.get_mut(provider)?;
        while let Some(conn) = queue.pop_back() {
            if now.saturating_duration_since(conn.idle_since) < max_idle {
                self.reused += 1;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange; the oldest is dropped past `max_idle`.
    pub fn put(&mut self, provider: usize, mut conn: UpstreamConn, now: Instant, max_idle: usize) {
        let Some(queue) = self.idle.get_mut(provider) else {
            return;
        };
        if max_idle == 0 {
            return;
        }
        conn.reuses += 1;
        conn.idle_since = now;
        if queue.len() >= max_idle {
            queue.pop_front();
        }
        queue.push_back(conn);
    }

    /// Closes every idle connection that has been idle for its provider's `pool_idle_timeout_ms`
    /// or longer (`take` would only skip it), and gives back the memory of queues a crowd grew;
    /// returns how many it closed. The worker calls it about once a second, so an upstream
    /// sees an unused connection closed soon after the limit, not when the next request comes.
    pub fn close_expired(&mut self, now: Instant, providers: &[Provider]) -> usize {
        let mut closed = 0;
        for (queue, provider) in self.idle.iter_mut().zip(providers) {
            let max_idle = Duration::from_millis(provider.pool_idle_timeout_ms);
            // Oldest first: `put` appends.
            while queue
                .front()
                .is_some_and(|c| now.saturating_duration_since(c.idle_since) >= max_idle)
            {
                queue.pop_front();
                closed += 1;
            }
            if queue.capacity() > 4 * queue.len().max(4) {
                queue.shrink_to_fit();
            }
        }
        closed
    }

    /// Idle connections held for `provider`.
    pub fn idle_count(&self, provider: usize) -> usize {
        self.idle.get(provider).map_or(0, VecDeque::len)
    }
}

/// The TLS client settings: webpki roots plus the system's, plus the PEM certificates of
/// `extra_ca` (a private CA) when given; ALPN http/1.1.
pub fn tls_client_config(extra_ca: Option<&Path>) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        // A system certificate rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let bad = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot load CA file {}: {e}", path.display()),
            )
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
        let mut added = 0;
        for cert in certs {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad(&"no certificate in the file"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One TLS client config per provider: the shared default, or one with the provider's CA.
pub fn tls_per_provider(config: &Config) -> io::Result<Vec<Arc<rustls::ClientConfig>>> {
    let default = tls_client_config(None)?;
    config
        .providers
        .iter()
        .map(|p| match &p.ca_file {
            None => Ok(default.clone()),
            Some(path) => tls_client_config(Some(path)),
        })
        .collect()
}

/// Opens a new connection to `provider` at one of `addrs`, within its connect timeout.
pub async fn connect(
    provider: &Provider,
    addrs: &[SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<UpstreamConn, UpstreamError> {
    if addrs.is_empty() {
        return Err(UpstreamError::Resolve(provider.endpoint.host.clone()));
    }
    // A coarse deadline (`clock::deadlines`): every stream on a new connection waits here.
    let at = Instant::now() + Duration::from_millis(provider.connect_timeout_ms);
    match crate::clock::deadlines::before(at, std::pin::pin!(connect_inner(provider, addrs, tls)))
        .await
    {
        Ok(res) => res,
        Err(_) => Err(UpstreamError::ConnectTimeout(provider.name.clone())),
    }
}

async fn connect_inner(
    provider: &Provider,
    addrs: &[SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<UpstreamConn, UpstreamError> {
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_addr(*addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| UpstreamError::Connect {
        provider: provider.name.clone(),
        source: last.unwrap_or_else(|| io::Error::other("no address")),
    })?;
    let _ = stream.set_nodelay(true);
    let io = if provider.endpoint.tls {
        let name = ServerName::try_from(provider.endpoint.host.clone()).map_err(|e| {
            UpstreamError::Tls {
                provider: provider.name.clone(),
                message: e.to_string(),
            }
        })?;
        let tls = TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| UpstreamError::Tls {
                provider: provider.name.clone(),
                message: e.to_string(),
            })?;
        UpstreamIo::Tls(Box::new(tls))
    } else {
        UpstreamIo::Plain(stream)
    };
    Ok(UpstreamConn {
        io,
        reuses: 0,
        idle_since: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn timeouts_are_timeouts_to_the_loop_and_504s_to_the_client() {
        let slow = UpstreamError::FirstByteTimeout("p".into()).transport_failure();
        assert_eq!(slow.failure, Failure::Timeout);
        assert_eq!(slow.error.kind, ErrorKind::UpstreamTimeout);
        assert_eq!(slow.label, "first_byte_timeout");
        let gone = UpstreamError::Resolve("p".into()).transport_failure();
        assert_eq!(gone.failure, Failure::Connect);
        assert_eq!(gone.error.kind, ErrorKind::UpstreamUnreachable);
        assert_eq!(gone.label, "resolve");
    }

    /// An idle connection past its provider's `pool_idle_timeout_ms` is closed by
    /// `close_expired` without another request (the upstream reads its end), a younger one
    /// is kept.
    async fn expired_idle_connections_are_closed() {
        use std::io::Read;
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = upstream.local_addr().unwrap();
        let text = format!(
            "[[providers]]\nname = \"p\"\nbase_url = \"http://{addr}/v1\"\n\
             pool_idle_timeout_ms = 1000\n[[models]]\nname = \"m\"\n\
             deployments = [{{ provider = \"p\", model = \"m\" }}]\n"
        );
        let config = Config::from_toml(&text, &std::collections::HashMap::new()).unwrap();
        let mut pool = Pool::new(1);
        let t0 = Instant::now();
        let mut locals = Vec::new();
        for at in [t0, t0 + Duration::from_millis(600)] {
            let stream = TcpStream::connect_addr(addr).await.unwrap();
            locals.push(stream.local_addr().unwrap());
            let conn = UpstreamConn {
                io: UpstreamIo::Plain(stream),
                reuses: 0,
                idle_since: at,
            };
            pool.put(0, conn, at, 8);
        }
        let mut old = None;
        let mut young = None;
        for _ in 0..2 {
            let (s, peer) = upstream.accept().unwrap();
            if peer == locals[0] {
                old = Some(s);
            } else {
                young = Some(s);
            }
        }
        let (mut old, mut young) = (old.unwrap(), young.unwrap());

        let limit = t0 + Duration::from_millis(1000);
        assert_eq!(
            pool.close_expired(limit - Duration::from_millis(1), &config.providers),
            0
        );
        assert_eq!(pool.close_expired(limit, &config.providers), 1);
        assert_eq!(pool.idle_count(0), 1);
        // The runtime closes the descriptor (io_uring: on its next turn).
        monoio::time::sleep(Duration::from_millis(50)).await;
        old.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            old.read(&mut [0u8; 8]).unwrap(),
            0,
            "the upstream sees the close"
        );
        young
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            young.read(&mut [0u8; 8]).is_err(),
            "the younger one stays open"
        );
        // The younger one is taken while fresh, dropped once it too is past the limit.
        let later = t0 + Duration::from_millis(1600);
        assert_eq!(pool.close_expired(later, &config.providers), 1);
        assert_eq!(pool.idle_count(0), 0);
    }

    #[test]
    fn expired_idle_connections_are_closed_epoll() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(expired_idle_connections_are_closed());
    }

    #[test]
    fn expired_idle_connections_are_closed_io_uring() {
        if !monoio::utils::detect_uring() {
            return;
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(expired_idle_connections_are_closed());
    }
}
