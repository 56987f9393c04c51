//! A keep-alive connection between two requests: what it holds while it waits.
//!
//! The edge holds many idle connections, so an idle connection must cost little more than its
//! socket. Two things make that so:
//!
//! - **Read buffers come from a per-worker pool** ([`take_buffer`], [`give_back`]): a
//!   connection takes one when bytes arrive and gives it back when its exchange ends with
//!   nothing left over, so buffers are only as many as requests in flight (plus a bounded
//!   spare stock), not as many as connections.
//! - **A quiet connection parks** ([`wait_for_request`]): right after an answer, the next
//!   request of a busy client usually follows within microseconds, so the connection first
//!   keeps a read posted with a buffer (no extra system call on the hot path). If nothing
//!   arrives within [`PARK_AFTER`], the read is cancelled (its buffer comes back, bytes that
//!   raced the cancel are kept) and the connection waits for readability alone — no buffer,
//!   no read — until bytes arrive, the keep-alive timeout ends it, or the drain does.
//!
//! The request's own state (the exchange future) is allocated by the connection loop only
//! while a request is under way (see `listen::conn`), and the idle time limits are coarse
//! per-worker deadlines (`clock::deadlines`) rather than timers of their own, so a parked
//! connection is its socket, its task and this small wait.

use std::io;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent, Canceller, OwnedReadHalf};
use monoio::net::TcpStream;

use crate::clock::deadlines::{within, Deadline};
use crate::listen::client_io::ClientRead;
use crate::spares::Spares;
use crate::state::Worker;

/// Size of a pooled read buffer (a request head and a small body fit; larger bodies are read
/// into a buffer of their own length).
pub const READ_BUF: usize = 8 * 1024;

/// Spare buffers a worker keeps for the next requests (64 × 8 KiB = 512 KiB at most).
const SPARE_BUFFERS: usize = 64;

/// How long a connection keeps a read posted after its last exchange before it parks.
///
/// Long enough that a client sending requests back to back never parks (the posted read
/// costs nothing extra), short enough that thousands of quiet connections hold no buffer.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How long an idle keep-alive connection of a draining gateway still waits for a request.
///
/// Closing idle connections the moment the drain starts races with clients that picked the
/// connection from their pool and are sending on it: their request would meet a closed socket
/// (a reset, no answer). Instead the connection keeps waiting for this grace: a request that
/// arrives is answered with `connection: close`, and only a connection that stays silent is
/// closed. A client can still send in the instant the grace ends; that is the HTTP/1.1
/// idle-close race every keep-alive client has to retry anyway, now confined to connections
/// idle for the whole grace.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

thread_local! {
    static SPARE: Spares = const { Spares::new(SPARE_BUFFERS) };
}

/// An empty read buffer of [`READ_BUF`] capacity, from the worker's spares when it has one.
pub fn take_buffer() -> Vec<u8> {
    SPARE
        .with(Spares::take)
        .unwrap_or_else(|| Vec::with_capacity(READ_BUF))
}

/// Frees the spare read buffers the last period did not use (see [`Spares::trim`]).
pub fn trim_spares() {
    SPARE.with(Spares::trim);
}

/// Gives `buf` back to the worker's spares when it holds nothing the connection still needs
/// (pipelined bytes stay with their connection) and is a standard buffer; `buf` is left
/// empty, without capacity, either way it is given back.
pub fn give_back(buf: &mut Vec<u8>) {
    if !buf.is_empty() || buf.capacity() == 0 {
        return;
    }
    let buf = std::mem::take(buf);
    if buf.capacity() != READ_BUF {
        return;
    }
    SPARE.with(|spare| spare.give(buf));
}

/// Outcome of a read with a time limit.
pub enum Read {
    /// Bytes arrived (appended to the buffer given).
    Data(Vec<u8>),
    /// The client closed its side.
    Eof,
    /// The limit passed first (the buffer is lost with the cancelled read; the caller closes
    /// the connection anyway).
    TimedOut,
    /// The read failed.
    Failed,
}

/// Reads more bytes, appending to `buf` (a pooled buffer when it has no capacity), within
/// `limit` (a coarse [`Deadline`]: it runs inside every request's state, see `listen::conn`).
pub async fn read_more(rd: &mut ClientRead, mut buf: Vec<u8>, limit: Duration) -> Read {
    if buf.capacity() == 0 {
        buf = take_buffer();
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BUF);
    }
    let len = buf.len();
    let mut deadline = Deadline::at(Instant::now() + limit);
    let read = std::pin::pin!(rd.read(buf.slice_mut(len..)));
    match within(&mut deadline, read).await {
        Err(_) => Read::TimedOut,
        Ok((Ok(0), _)) => Read::Eof,
        Ok((Ok(_), slice)) => Read::Data(slice.into_inner()),
        Ok((Err(_), _)) => Read::Failed,
    }
}

/// What an idle connection's wait ended with.
pub enum Waited {
    /// The first bytes of a request are in the buffer.
    Data(Vec<u8>),
    /// Bytes are ready to read on the socket (nothing buffered yet).
    Readable,
    /// Close the connection quietly (EOF, error, keep-alive timeout, drain).
    Close,
}

/// Waits for the first bytes of the next request on an idle keep-alive connection: up to the
/// keep-alive idle timeout, or, once the worker drains, up to [`DRAIN_IDLE_GRACE`] more.
///
/// The posted read's canceller is the connection's (see [`ClientRead::idle_parts`]), kept
/// from one wait to the next while the connection is busy (a new one cost two allocations and
/// a hash table's growth per request) and dropped when it parks.
pub async fn wait_for_request(worker: &Worker, rd: &mut ClientRead) -> Waited {
    let keepalive = Duration::from_millis(worker.shared.config.server.keepalive_idle_timeout_ms);
    let hot = PARK_AFTER.min(keepalive);
    let Some((plain, canceller)) = rd.idle_parts() else {
        // TLS: the rustls session may hold decrypted bytes the socket no longer shows, so
        // readiness cannot be trusted; the read stays posted (see `listen::client_io`).
        // Boxed and out of line (`listen::cold`): only TLS connections carry this larger
        // wait, or its poll's temporaries.
        let buf = take_buffer();
        let wait = crate::listen::cold::boxed(|| {
            until_drained(worker, keepalive, read_more(rd, buf, keepalive))
        });
        return match wait.await {
            Some(Read::Data(b)) => Waited::Data(b),
            _ => Waited::Close,
        };
    };
    match posted_read(worker, plain, hot, canceller).await {
        Posted::Data(b) => return Waited::Data(b),
        Posted::Close => return Waited::Close,
        Posted::Quiet => {}
    }
    let parked = keepalive.saturating_sub(hot);
    match until_drained(worker, parked, parked_until_bytes(plain)).await {
        Some(true) => Waited::Readable,
        _ => Waited::Close,
    }
}

/// Waits, without a buffer and without consuming anything, until the socket holds bytes of a
/// request (`true`) or the client closed or reset it (`false`). Also the relay's client watch
/// (`request::relay::ClientWatch`): there the bytes are a pipelined request, left in the
/// socket for the connection to read after the exchange.
///
/// Readability alone does not say which: when many parked clients close together, every one
/// of them turns readable at once, and reading each with a request's buffer and state would
/// allocate them all only to find EOF. A one-byte `MSG_PEEK` (non-blocking, nothing consumed)
/// tells a request from a close; a wake-up with nothing to read parks again.
pub(crate) async fn parked_until_bytes(rd: &mut OwnedReadHalf<TcpStream>) -> bool {
    loop {
        if readable(rd).await.is_err() {
            return false;
        }
        match peek(rd) {
            Peeked::Bytes => return true,
            Peeked::Closed => return false,
            Peeked::Nothing => {}
        }
    }
}

enum Peeked {
    Bytes,
    Closed,
    Nothing,
}

fn peek(rd: &mut OwnedReadHalf<TcpStream>) -> Peeked {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `readable`: a shared reference to the stream, used at once to read the
    // descriptor's number and dropped before this function returns.
    let fd = unsafe { &*rd.0.get() }.as_raw_fd();
    let mut byte = 0u8;
    // SAFETY: `fd` is the open socket of this connection (owned by the stream, which outlives
    // the call), and the buffer is one valid, writable byte on the stack.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1.. => Peeked::Bytes,
        0 => Peeked::Closed,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Peeked::Nothing,
            _ => Peeked::Closed,
        },
    }
}

/// Runs `wait` for up to `limit`; once the worker drains, for at most [`DRAIN_IDLE_GRACE`]
/// more. `None` when the time ran out. `wait` is never dropped when the drain starts (it keeps
/// running), so bytes arriving at that moment are not lost with a cancelled read.
///
/// The time limits are coarse [`Deadline`]s: a parked connection's whole
/// wait is this future, so it is kept small.
async fn until_drained<F: std::future::Future>(
    worker: &Worker,
    limit: Duration,
    wait: F,
) -> Option<F::Output> {
    let end = Instant::now() + limit;
    let mut wait = std::pin::pin!(wait);
    if !worker.shared.is_draining() {
        monoio::select! {
            r = &mut wait => return Some(r),
            _ = Deadline::at(end) => return None,
            _ = worker.drain_started() => {}
        }
    }
    let grace = Deadline::at(end.min(Instant::now() + DRAIN_IDLE_GRACE));
    monoio::select! {
        r = wait => Some(r),
        _ = grace => None,
    }
}

enum Posted {
    Data(Vec<u8>),
    Quiet,
    Close,
}

/// A read posted for `hot`, then cancelled: bytes that arrive before the cancel takes effect
/// are kept, the buffer goes back to the pool otherwise. `canceller` is made when there is
/// none, kept when the read completes (for the next one), and spent by a cancel.
///
/// The drain is not watched: `hot` is shorter than [`DRAIN_IDLE_GRACE`], so a drain that
/// starts meanwhile would not end the wait any sooner (see [`until_drained`]); a wait that
/// ends with nothing while the worker drains closes the connection.
async fn posted_read(
    worker: &Worker,
    rd: &mut OwnedReadHalf<TcpStream>,
    hot: Duration,
    canceller: &mut Option<Canceller>,
) -> Posted {
    debug_assert!(hot <= DRAIN_IDLE_GRACE);
    let handle = canceller.get_or_insert_with(Canceller::new).handle();
    let read = rd.cancelable_read(take_buffer(), handle);
    let mut read = std::pin::pin!(read);
    let mut limit = Deadline::at(Instant::now() + hot);
    let (res, mut buf) = match within(&mut limit, read.as_mut()).await {
        Ok(out) => out,
        Err(_) => {
            // The limit passed: cancel, and take what the read ends with — the kernel may
            // have completed it in the meantime. (`cancel` hands back a fresh canceller: a
            // parked connection keeps none.)
            if let Some(c) = canceller.take() {
                drop(c.cancel());
            }
            read.await
        }
    };
    match res {
        Ok(0) => Posted::Close,
        Ok(_) => Posted::Data(buf),
        Err(e) if is_cancelled(&e) => {
            give_back(&mut buf);
            if worker.shared.is_draining() {
                return Posted::Close;
            }
            Posted::Quiet
        }
        Err(_) => Posted::Close,
    }
}

fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED) || e.kind() == io::ErrorKind::Interrupted
}

/// Waits until the socket has bytes to read (or is closed), without a buffer.
async fn readable(rd: &mut OwnedReadHalf<TcpStream>) -> io::Result<()> {
    // SAFETY: the two halves of a plain client connection share the stream through
    // `Rc<UnsafeCell<_>>`, and only the connection's own task (one thread) touches either.
    // No operation on the read half runs while this wait does (`rd` is borrowed mutably for
    // it). The write half may be used meanwhile (the relay writes an answer while its client
    // watch waits here), each of its operations through a reference of its own made when it
    // is polled, never while this future is being polled; and monoio's `readable` uses its
    // reference only in its first poll, to submit a poll operation holding its own handle on
    // the descriptor, and never again: no reference made here is used after one made by the
    // other half. Exercised by every idle keep-alive connection in the gateway tests
    // (proxy/tests/gateway.rs, idle_connections_park) and by the client watch
    // (client_disconnect_cancels_the_upstream, pipelined_request_during_a_stream).
    let stream: &TcpStream = unsafe { &*rd.0.get() };
    stream.readable(false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_pooled_and_bounded() {
        let mut taken: Vec<Vec<u8>> = (0..SPARE_BUFFERS + 8).map(|_| take_buffer()).collect();
        for b in &mut taken {
            assert_eq!(b.capacity(), READ_BUF);
            give_back(b);
            assert_eq!(
                b.capacity(),
                0,
                "given back, the connection holds no buffer"
            );
        }
        assert_eq!(SPARE.with(Spares::len), SPARE_BUFFERS);
        // A buffer with bytes in it stays with its connection.
        let mut pending = take_buffer();
        pending.extend_from_slice(b"GET / HTTP/1.1\r\n");
        give_back(&mut pending);
        assert!(!pending.is_empty());
    }
}
