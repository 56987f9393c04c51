//! The client connection's byte stream: plain TCP or TLS terminated here.
//!
//! [`ClientRead`] and [`ClientWrite`] are the two halves of one accepted connection. Both
//! implement monoio's rent-style I/O traits, so the connection loop, the exchange and the
//! relay are written once for both kinds.
//!
//! Concurrency note: the halves of a TLS connection share one rustls session (monoio's
//! `Split` over an `UnsafeCell`). That is sound only while at most one operation runs on the
//! session at a time, so nothing may keep a read posted on a TLS read half while the write
//! half writes: [`ClientRead::watchable`] is `None` for TLS, and the relay's `ClientWatch`
//! then runs without a posted read (see `request::relay`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, Canceller, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ServerTlsStream;

/// A TLS connection accepted from a client.
pub type TlsClient = ServerTlsStream<TcpStream>;

/// The read half of a client connection.
pub enum ClientRead {
    /// Plain TCP, with the canceller of the read posted between requests (see
    /// [`ClientRead::idle_parts`]).
    Plain(OwnedReadHalf<TcpStream>, Option<Canceller>),
    /// TLS over TCP.
    Tls(OwnedReadHalf<TlsClient>),
}

/// The write half of a client connection.
pub enum ClientWrite {
    /// Plain TCP, with its socket's descriptor for sends that do not wait
    /// (`crate::send_now`; the descriptor stays open while either half lives).
    Plain(OwnedWriteHalf<TcpStream>, RawFd),
    /// TLS over TCP.
    Tls(OwnedWriteHalf<TlsClient>),
}

/// Splits a plain connection.
pub fn plain(stream: TcpStream) -> (ClientRead, ClientWrite) {
    let fd = stream.as_raw_fd();
    let (rd, wr) = stream.into_split();
    (ClientRead::Plain(rd, None), ClientWrite::Plain(wr, fd))
}

/// Splits a TLS connection whose handshake is done.
pub fn tls(stream: TlsClient) -> (ClientRead, ClientWrite) {
    let (rd, wr) = stream.into_split();
    (ClientRead::Tls(rd), ClientWrite::Tls(wr))
}

impl ClientRead {
    /// The plain TCP read half, on which a cancelable read may stay posted while the write
    /// half writes; `None` for TLS (see the module's concurrency note).
    pub fn watchable(&mut self) -> Option<&mut OwnedReadHalf<TcpStream>> {
        match self {
            ClientRead::Plain(rd, _) => Some(rd),
            ClientRead::Tls(_) => None,
        }
    }

    /// What a plain connection's wait between requests uses: the read half and the canceller
    /// of its posted read (`listen::idle::wait_for_request`). The canceller is kept from one
    /// wait to the next while the connection is busy (a new one costs two allocations and a
    /// hash table's growth); `None` for TLS.
    pub fn idle_parts(
        &mut self,
    ) -> Option<(&mut OwnedReadHalf<TcpStream>, &mut Option<Canceller>)> {
        match self {
            ClientRead::Plain(rd, canceller) => Some((rd, canceller)),
            ClientRead::Tls(_) => None,
        }
    }

    /// Gives back the kept canceller (two blocks of about 80 B): an exchange that lasts (a
    /// stream, a thinking upstream) should not hold it for its whole life, and making a new one
    /// after it costs little beside it. The next wait between requests makes one again.
    pub fn release_canceller(&mut self) {
        if let ClientRead::Plain(_, canceller) = self {
            *canceller = None;
        }
    }

    /// Whether a canceller is kept (for tests).
    #[cfg(test)]
    pub fn keeps_canceller(&self) -> bool {
        matches!(self, ClientRead::Plain(_, Some(_)))
    }
}

impl ClientWrite {
    /// Ends the connection politely: a TLS `close_notify` (so a client reading until close
    /// can tell the end from a truncation); nothing for plain TCP, which is closed on drop.
    pub async fn close(&mut self) {
        if let ClientWrite::Tls(wr) = self {
            let limit = std::time::Duration::from_secs(1);
            // Out of line (`cold::boxed`): a plain connection's task carries neither the TLS
            // shutdown's state nor its poll's frame.
            let _ =
                crate::listen::cold::boxed(|| monoio::time::timeout(limit, wr.shutdown())).await;
        }
    }
}

impl AsyncReadRent for ClientRead {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientRead::Plain(rd, _) => rd.read(buf).await,
            // Out of line, as the TLS writes below: in line, the TLS read's state and its
            // poll's frame were part of every plain read of a request's body too.
            ClientRead::Tls(rd) => crate::listen::cold::boxed(|| rd.read(buf)).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientRead::Plain(rd, _) => rd.readv(buf).await,
            ClientRead::Tls(rd) => crate::listen::cold::boxed(|| rd.readv(buf)).await,
        }
    }
}

impl AsyncWriteRent for ClientWrite {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientWrite::Plain(wr, fd) => match crate::send_now::send(*fd, &buf) {
                Some(n) => (Ok(n), buf),
                None => wr.write(buf).await,
            },
            // Out of line (`cold::boxed`): held in line, the TLS write's future made every
            // request's state (a plain stream's whole life included) some 500 bytes larger
            // (see `UpstreamIo::read_append`), and its poll's frame every plain write's.
            ClientWrite::Tls(wr) => crate::listen::cold::boxed(|| wr.write(buf)).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientWrite::Plain(wr, fd) => match crate::send_now::sendv(*fd, &buf) {
                Some(n) => (Ok(n), buf),
                None => wr.writev(buf).await,
            },
            ClientWrite::Tls(wr) => crate::listen::cold::boxed(|| wr.writev(buf)).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientWrite::Plain(wr, _) => wr.flush().await,
            ClientWrite::Tls(wr) => wr.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientWrite::Plain(wr, _) => wr.shutdown().await,
            ClientWrite::Tls(wr) => wr.shutdown().await,
        }
    }
}
