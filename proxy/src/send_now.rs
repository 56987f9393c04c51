//! Sends that do not wait: a plain TCP write first offers its bytes to the socket with one
//! non-blocking `send(2)`; only what the kernel did not take goes through the runtime.
//!
//! Why: on io_uring a send is an operation whose completion comes back through the ring, so
//! every write costs a trip through the runtime — the ring entered for a completion that was
//! ready at once, and the request's whole future polled again from the top — although a
//! response or an upstream request of a few KiB almost always fits in the socket buffer. Per
//! proxied request that was two of its four wake-ups. With the send done at once, a request
//! wakes the worker only when bytes arrive (from the client, then from the upstream).
//!
//! Only while the worker carries one request: with more in flight, its turns complete several
//! operations at once and the ring submits all their sends in one `io_uring_enter`, where a
//! `send(2)` each would be a system call each. Measured (one worker, `sluice-load compare`,
//! interleaved rounds, quiet machine): sending every write at once took the closed loop at 64
//! connections from 41.9k to 30.9k req/s (31.6 against 23.2 µs of CPU a request); limited to a
//! worker with one request in flight the closed loop is back within run-to-run noise (41.1k
//! against 39.7k with the ring only), and at 5,000 req/s (one request in flight at a time) the
//! CPU a request is 3–5 % lower (81.7 against 84.0 µs; 80.4 against 84.8 µs at concurrency 1).
//!
//! Only plain TCP: a TLS stream's writes go through rustls, which writes to the socket itself.
//! The epoll driver gains nothing (its writes already try the socket first) and loses nothing
//! (the socket then has room, so its own try succeeds).

use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::RawFd;

use monoio::buf::{IoBuf, IoVecBuf};

/// Requests in flight on a worker up to which its sends are tried at once (see the module
/// docs for why one).
pub const DIRECT_UP_TO: usize = 1;

thread_local! {
    /// Requests in flight on this thread (a worker): the one count, read through [`InFlight`].
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// The count of requests in flight on this worker thread. Every `InFlight` on a thread is the
/// same count (a thread-local), so the sends here, made by write halves that have no worker to
/// ask, read the count the worker keeps in its counters. Not `Send`: moved to another thread it
/// would read that thread's count.
#[derive(Default)]
pub struct InFlight(PhantomData<*const ()>);

impl InFlight {
    /// Requests in flight now.
    pub fn get(&self) -> usize {
        IN_FLIGHT.get()
    }

    /// A request started on this worker.
    pub fn begin(&self) {
        IN_FLIGHT.set(IN_FLIGHT.get() + 1);
    }

    /// A request ended on this worker.
    pub fn end(&self) {
        IN_FLIGHT.set(IN_FLIGHT.get().saturating_sub(1));
    }
}

/// Whether sends are tried at once now: the worker is nearly idle, and `SLUICE_SEND_NOW=0`
/// (for A/B runs) is not set.
fn enabled() -> bool {
    static OFF: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("SLUICE_SEND_NOW").is_some_and(|v| v == "0"));
    IN_FLIGHT.get() <= DIRECT_UP_TO && !*OFF
}

/// Sends as much of `buf` as the socket takes now. `Some(n)` when the kernel took `n > 0`
/// bytes; `None` when it would block, when `buf` is empty, or on an error (the runtime's send
/// then meets the same condition and reports it).
pub fn send<T: IoBuf>(fd: RawFd, buf: &T) -> Option<usize> {
    let len = buf.bytes_init();
    if len == 0 || !enabled() {
        return None;
    }
    // SAFETY: `read_ptr()..read_ptr() + bytes_init()` is the initialised part of a buffer that
    // `buf` borrows for the whole call (IoBuf's contract); send(2) only reads it. `fd` is a
    // socket the caller holds open for the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.read_ptr().cast(),
            len,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// [`send`] for a vector of buffers: one `sendmsg(2)` over all of them.
pub fn sendv<T: IoVecBuf>(fd: RawFd, bufs: &T) -> Option<usize> {
    let count = bufs.read_iovec_len();
    if count == 0 || !enabled() {
        return None;
    }
    // SAFETY: an all-zero msghdr is a valid empty message; only the iovec fields are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.read_iovec_ptr().cast_mut();
    msg.msg_iovlen = count as _;
    // SAFETY: `read_iovec_ptr()` points at `read_iovec_len()` valid iovecs over buffers that
    // `bufs` borrows for the whole call (IoVecBuf's contract); sendmsg(2) only reads them and
    // the msghdr, which lives on this stack frame. `fd` is a socket the caller holds open.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use monoio::buf::VecBuf;

    use super::*;

    #[test]
    fn sends_what_fits_and_reports_a_full_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();

        assert_eq!(send(fd, &b"hello".to_vec()), Some(5));
        let v = VecBuf::from(vec![b", ".to_vec(), b"world".to_vec()]);
        assert_eq!(sendv(fd, &v), Some(7));
        let mut got = [0u8; 12];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello, world");
        assert_eq!(send(fd, &Vec::new()), None);

        // A busy worker leaves its sends to the ring.
        let in_flight = InFlight::default();
        for _ in 0..=DIRECT_UP_TO {
            in_flight.begin();
        }
        assert_eq!(InFlight::default().get(), DIRECT_UP_TO + 1);
        assert_eq!(send(fd, &b"later".to_vec()), None);
        in_flight.end();
        assert_eq!(send(fd, &b"now".to_vec()), Some(3));
        for _ in 0..DIRECT_UP_TO {
            in_flight.end();
        }
        let mut now = [0u8; 3];
        server.read_exact(&mut now).unwrap();
        assert_eq!(&now, b"now");

        // Nobody reads: the socket fills, and then a send would block: None, not a wait.
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0usize;
        let mut refused = false;
        for _ in 0..512 {
            match send(fd, &chunk) {
                Some(n) => sent += n,
                None => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(
            refused,
            "a socket nobody reads never filled ({sent} bytes taken)"
        );
    }

    #[test]
    fn a_send_to_a_closed_peer_is_none() {
        // A fresh connection whose buffer never fills (a byte at a time): None can only come
        // from the error the reset peer leaves, which the ring's send then reports.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let fd = client.as_raw_fd();
        assert_eq!(send(fd, &b"x".to_vec()), Some(1));
        drop(server);
        let mut failed = false;
        for _ in 0..64 {
            if send(fd, &b"x".to_vec()).is_none() {
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(failed);
    }
}
