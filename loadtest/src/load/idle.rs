//! `idle`: what a server's memory does with many idle keep-alive connections.
//!
//! Opens `connections` connections one after another, sends one request on
//! each and reads its whole answer (so every connection has done a real
//! exchange and sits in the server's keep-alive wait), then holds them all
//! open and silent for `hold`, or until SIGTERM, SIGINT or SIGUSR1 arrives,
//! then closes them all and reports. The run is bounded: at most `open_timeout`
//! for opening (whatever is open by then is held), then at most `hold`.
//!
//! While it holds, it prints one line `holding N connections` on stdout (and
//! flushes), so a script can read the server's RSS at that moment and then
//! signal it to close. Blocking sockets on one thread: the connections are
//! opened sequentially, and while they are held nothing runs but a sleep.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::Endpoint;

/// Largest answer head plus body read on one connection.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// What `idle` does.
#[derive(Debug, Clone)]
pub struct IdleSpec {
    /// The target.
    pub endpoint: Endpoint,
    /// The complete request sent once on each connection.
    pub request: Vec<u8>,
    /// How many connections to open.
    pub connections: usize,
    /// How long to hold them at most.
    pub hold: Duration,
    /// How long opening may take in all.
    pub open_timeout: Duration,
    /// Connect, write and read timeout of one connection's exchange.
    pub io_timeout: Duration,
}

/// The `idle` JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    /// The URL.
    pub url: String,
    /// Connections asked for.
    pub connections: usize,
    /// Connections whose exchange got a complete 2xx answer, then were held.
    pub held: usize,
    /// Connections that failed (connect, i/o, non-2xx, bad framing).
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Seconds spent opening.
    pub open_s: f64,
    /// Seconds the connections were held.
    pub hold_s: f64,
    /// Whether a signal ended the hold (rather than `hold` running out).
    pub signalled: bool,
}

impl IdleReport {
    /// The human report.
    pub fn render(&self) -> String {
        format!(
            "{}: {} of {} connections held for {:.1}s{} (opened in {:.1}s), {} failed{}\n",
            self.url,
            self.held,
            self.connections,
            self.hold_s,
            if self.signalled {
                " (until signalled)"
            } else {
                ""
            },
            self.open_s,
            self.failed,
            self.first_error
                .as_deref()
                .map_or(String::new(), |e| format!(": first {e}")),
        )
    }
}

/// Runs the phase. `on_hold(n)` is called once, when `n` connections are
/// open and idle (the CLI prints the `holding` line there).
pub fn idle(spec: &IdleSpec, on_hold: impl FnOnce(usize)) -> io::Result<IdleReport> {
    if spec.connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "idle needs at least one connection",
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut report = IdleReport {
        url: format!("http://{}{}", spec.endpoint.addr, spec.endpoint.path),
        connections: spec.connections,
        ..IdleReport::default()
    };
    let started = Instant::now();
    let mut held = Vec::with_capacity(spec.connections);
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..spec.connections {
        if stop.load(Ordering::Relaxed) || started.elapsed() > spec.open_timeout {
            break;
        }
        match exchange(spec, &mut buf) {
            Ok(conn) => held.push(conn),
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    report.open_s = started.elapsed().as_secs_f64();
    report.held = held.len();
    on_hold(held.len());
    let hold_start = Instant::now();
    while hold_start.elapsed() < spec.hold && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    report.signalled = stop.load(Ordering::Relaxed);
    report.hold_s = hold_start.elapsed().as_secs_f64();
    drop(held);
    Ok(report)
}

/// Connects, sends the request, reads the whole answer; the connection is
/// then idle in the server's keep-alive wait.
fn exchange(spec: &IdleSpec, buf: &mut [u8]) -> io::Result<TcpStream> {
    let mut conn = TcpStream::connect_timeout(&spec.endpoint.addr, spec.io_timeout)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(spec.io_timeout))?;
    conn.set_write_timeout(Some(spec.io_timeout))?;
    conn.write_all(&spec.request)?;
    read_answer(&mut conn, buf)?;
    Ok(conn)
}

/// Reads one complete 2xx answer (Content-Length or chunked framing).
fn read_answer(conn: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut len = 0;
    let (head_len, framing) = loop {
        if len == buf.len() {
            return Err(bad("answer head too large"));
        }
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Err(bad("closed before the answer ended"));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let code = resp.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    return Err(bad(&format!("status {code}")));
                }
                break (head_len, framing_of(resp.headers)?);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(bad("malformed answer head")),
        }
    };
    let mut body = buf[head_len..len].to_vec();
    loop {
        let done = match framing {
            Framing::Length(n) => body.len() >= n,
            Framing::Chunked => body.ends_with(b"0\r\n\r\n"),
        };
        if done {
            return Ok(());
        }
        if body.len() > MAX_ANSWER_BYTES {
            return Err(bad("answer body too large"));
        }
        let n = conn.read(buf)?;
        if n == 0 {
            return Err(bad("closed before the answer ended"));
        }
        body.extend_from_slice(&buf[..n]);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

fn framing_of(headers: &[httparse::Header<'_>]) -> io::Result<Framing> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            return std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .map(Framing::Length)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"));
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Ok(Framing::Chunked);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "answer without length: a keep-alive connection cannot be reused",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most three bytes per read, as a slow socket might.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn reads_answers_in_pieces_with_either_framing() {
        let mut buf = vec![0u8; 4096];
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec();
        read_answer(&mut Trickle(io::Cursor::new(answer)), &mut buf).unwrap();
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec();
        read_answer(&mut Trickle(io::Cursor::new(chunked)), &mut buf).unwrap();
        let head_too_large = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec();
        assert!(read_answer(&mut io::Cursor::new(head_too_large), &mut [0u8; 16]).is_err());
    }

    #[test]
    fn refuses_errors_and_cut_answers() {
        let mut buf = vec![0u8; 4096];
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec();
        assert!(read_answer(&mut io::Cursor::new(refused), &mut buf).is_err());
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort".to_vec();
        assert!(read_answer(&mut io::Cursor::new(cut), &mut buf).is_err());
        let close_delimited = b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec();
        assert!(read_answer(&mut io::Cursor::new(close_delimited), &mut buf).is_err());
    }
}
