//! One attempt at one deployment: take a pooled connection (or open one), send the request,
//! read the response head; and, for an answer worth retrying, read its (small) body.
//!
//! Nothing here watches the client: callers race these futures against the client watch, and
//! a hedged request races two of them against each other. Dropping an attempt closes its
//! connection, which is how a loser or a request whose client left is cancelled upstream.

use std::pin::pin;
use std::time::{Duration, Instant};

use sluice_core::http1::{parse_response_head, BodyFraming, ChunkedDecoder, ResponseHead};

use crate::clock::deadlines::{within, Deadline};
use crate::state::Worker;
use crate::upstream::pool::{self, UpstreamConn, UpstreamError};

/// Largest upstream response head accepted.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;
/// Size of an upstream read buffer for a body (and how much a head's buffer grows by).
pub const READ_BUF: usize = 8 * 1024;
/// Initial size of the buffer a response head is read into: a head and the first events of
/// a stream fit, and a stream keeps no more than that (see the relay); a body read past the
/// head grows it to [`READ_BUF`]. Thousands of requests awaiting their heads at once each
/// hold one.
const HEAD_BUF: usize = 2 * 1024;

/// A response head and the connection it came on; `buf[body_at..]` is the start of the body.
pub struct Sent {
    /// The connection, positioned after the head.
    pub conn: UpstreamConn,
    /// The response head.
    pub head: ResponseHead,
    /// Bytes read so far.
    pub buf: Vec<u8>,
    /// Where the body starts in `buf`.
    pub body_at: usize,
}

/// Sends `request` to provider `index` and reads the response head, within `deadline`. A
/// pooled connection that fails before any response byte (the upstream closed it while idle)
/// is replaced by a new one, once.
pub async fn send(
    worker: &Worker,
    index: usize,
    request: Vec<u8>,
    deadline: Instant,
) -> Result<Sent, UpstreamError> {
    send_at(worker, index, request, deadline, Instant::now()).await
}

/// [`send`], its pooled connection checked out at `now`: the caller's clock read, made in
/// the synchronous stretch in which this future is first polled (the attempt loop's).
pub async fn send_at(
    worker: &Worker,
    index: usize,
    mut request: Vec<u8>,
    deadline: Instant,
    now: Instant,
) -> Result<Sent, UpstreamError> {
    let mut conn = Some(checkout(worker, index, now)?);
    loop {
        let (mut c, fresh) = match conn.take() {
            Some(Checkout::Pooled(c)) => (c, false),
            Some(Checkout::Open) | None => (open(worker, index).await?, true),
        };
        let provider = provider_name(worker, index);
        let (res, back) = c.io.write_all(request).await;
        request = back;
        if let Err(e) = res {
            if !fresh {
                continue;
            }
            return Err(io_error(provider, e.to_string()));
        }
        match head_after_send(worker, index, &mut c, deadline).await {
            Ok((head, buf, body_at)) => {
                return Ok(Sent {
                    conn: c,
                    head,
                    buf,
                    body_at,
                })
            }
            Err(HeadError::Stale(_)) if !fresh => continue,
            Err(HeadError::Stale(e)) | Err(HeadError::Failed(e)) => return Err(e),
        }
    }
}

/// A connection to start an attempt on: a pooled one, or the word to open one.
enum Checkout {
    /// An idle pooled connection (it may have been closed by the upstream meanwhile).
    Pooled(UpstreamConn),
    /// None idle: open a new one.
    Open,
}

/// Takes an idle pooled connection to provider `index`, if any.
fn checkout(worker: &Worker, index: usize, now: Instant) -> Result<Checkout, UpstreamError> {
    let Some(provider) = worker.shared.config.providers.get(index) else {
        return Err(UpstreamError::Resolve(format!("provider #{index}")));
    };
    let conn = worker.pool.borrow_mut().take(
        index,
        now,
        Duration::from_millis(provider.pool_idle_timeout_ms),
    );
    Ok(match conn {
        Some(c) => {
            worker.metrics.connection_reused(index);
            Checkout::Pooled(c)
        }
        None => Checkout::Open,
    })
}

/// Opens a new connection to provider `index`.
pub async fn open(worker: &Worker, index: usize) -> Result<UpstreamConn, UpstreamError> {
    let shared = &worker.shared;
    let Some(provider) = shared.config.providers.get(index) else {
        return Err(UpstreamError::Resolve(format!("provider #{index}")));
    };
    let addrs = shared.dns.addrs(index);
    let tls = shared
        .tls
        .get(index)
        .ok_or_else(|| UpstreamError::Resolve(provider.name.clone()))?;
    let c = pool::connect(provider, &addrs, tls).await?;
    worker.pool.borrow_mut().opened += 1;
    worker.metrics.connection_opened(index);
    Ok(c)
}

fn provider_name(worker: &Worker, index: usize) -> &str {
    worker
        .shared
        .config
        .providers
        .get(index)
        .map_or("?", |p| p.name.as_str())
}

/// Reads the response head of a request just sent on `conn` to provider `index`: the first
/// byte within the provider's first-byte timeout, all within `deadline`.
async fn head_after_send(
    worker: &Worker,
    index: usize,
    conn: &mut UpstreamConn,
    deadline: Instant,
) -> Result<(ResponseHead, Vec<u8>, usize), HeadError> {
    let (name, first_byte_ms) = worker
        .shared
        .config
        .providers
        .get(index)
        .map_or(("?", 0), |p| (p.name.as_str(), p.first_byte_timeout_ms));
    let first_byte = Instant::now() + Duration::from_millis(first_byte_ms);
    read_head(conn, name, first_byte.min(deadline), first_byte >= deadline).await
}

/// Reads the response head of a request whose last byte was just written on `conn` (a
/// streamed upload: it cannot be sent again, so a stale connection is a failure too).
pub async fn read_answer_head(
    worker: &Worker,
    index: usize,
    mut conn: UpstreamConn,
    deadline: Instant,
) -> Result<Sent, UpstreamError> {
    match head_after_send(worker, index, &mut conn, deadline).await {
        Ok((head, buf, body_at)) => Ok(Sent {
            conn,
            head,
            buf,
            body_at,
        }),
        Err(HeadError::Stale(e)) | Err(HeadError::Failed(e)) => Err(e),
    }
}

pub(crate) fn io_error(provider: &str, message: String) -> UpstreamError {
    UpstreamError::Io {
        provider: provider.to_string(),
        message,
    }
}

enum HeadError {
    /// Closed or reset before any byte of the response: maybe a stale pooled connection.
    Stale(UpstreamError),
    Failed(UpstreamError),
}

async fn read_head(
    conn: &mut UpstreamConn,
    provider: &str,
    until: Instant,
    until_is_deadline: bool,
) -> Result<(ResponseHead, Vec<u8>, usize), HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(HEAD_BUF);
    let mut start = 0;
    // A coarse deadline (`clock::deadlines`), one for the whole head: every request waits
    // here, and a monoio timer held inline would make the attempt's state (and a request's,
    // when it reads an error body) 128-byte aligned.
    let mut limit = Deadline::at(until);
    loop {
        if buf.len() > start {
            match parse_response_head(&buf[start..], MAX_UPSTREAM_HEAD, false) {
                Ok(Some((head, len))) if (100..200).contains(&head.status) => {
                    // Interim answer (100 Continue): skip it.
                    start += len;
                    continue;
                }
                Ok(Some((head, len))) => return Ok((head, buf, start + len)),
                Ok(None) => {}
                Err(e) => {
                    return Err(HeadError::Failed(UpstreamError::Protocol {
                        provider: provider.to_string(),
                        message: e.to_string(),
                    }))
                }
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF);
        }
        let read = pin!(conn.io.read_append(buf));
        match within(&mut limit, read).await {
            Err(_) => {
                return Err(HeadError::Failed(if until_is_deadline {
                    UpstreamError::TotalTimeout(provider.to_string())
                } else {
                    UpstreamError::FirstByteTimeout(provider.to_string())
                }))
            }
            Ok((Ok(0), b)) | Ok((Err(_), b)) if b.is_empty() => {
                return Err(HeadError::Stale(io_error(
                    provider,
                    "connection closed before the response".into(),
                )))
            }
            Ok((Ok(0), _)) => {
                return Err(HeadError::Failed(io_error(
                    provider,
                    "connection closed inside the response head".into(),
                )))
            }
            Ok((Ok(_), b)) => buf = b,
            Ok((Err(e), _)) => return Err(HeadError::Failed(io_error(provider, e.to_string()))),
        }
    }
}

/// Reads a whole (error) body of at most `max` bytes. Returns it and whether the connection
/// can be pooled again.
pub async fn read_small_body(
    sent: &mut Sent,
    provider: &str,
    max: usize,
    deadline: Instant,
) -> Result<(Vec<u8>, bool), UpstreamError> {
    if let BodyFraming::Length(n) = sent.head.body {
        // All of it came with the head (the usual small answer): the head's buffer becomes
        // the body (moved to its front), instead of a new one it is copied into.
        let at = sent.body_at;
        if n as usize <= max && sent.buf.len().saturating_sub(at) as u64 >= n {
            let mut body = std::mem::take(&mut sent.buf);
            body.truncate(at + n as usize);
            body.drain(..at);
            return Ok((body, sent.head.keep_alive));
        }
    }
    let mut body = Vec::new();
    if let BodyFraming::Length(n) = sent.head.body {
        // Sized once (growing it as pieces arrive cost an allocation per doubling).
        body.reserve_exact((n as usize).min(max.saturating_add(1)));
    }
    let mut input = std::mem::take(&mut sent.buf);
    let mut pos = sent.body_at;
    let mut decoder = ChunkedDecoder::new(max as u64);
    // Coarse, like the head's (see `read_head`); set when the body is read in pieces.
    let mut limit: Option<Deadline> = None;
    let too_big = || UpstreamError::Protocol {
        provider: provider.to_string(),
        message: format!("error body larger than {max} bytes"),
    };
    loop {
        let done = match sent.head.body {
            BodyFraming::Empty => true,
            BodyFraming::Length(n) => {
                let want = (n as usize).saturating_sub(body.len());
                let take = want.min(input.len().saturating_sub(pos));
                body.extend_from_slice(&input[pos..pos + take]);
                if body.len() > max {
                    return Err(too_big());
                }
                body.len() as u64 >= n
            }
            BodyFraming::Chunked => {
                let (_, done) = decoder
                    .decode_into(&input[pos.min(input.len())..], &mut body)
                    .map_err(|e| UpstreamError::Protocol {
                        provider: provider.to_string(),
                        message: e.to_string(),
                    })?;
                done
            }
            BodyFraming::UntilClose => {
                body.extend_from_slice(&input[pos.min(input.len())..]);
                if body.len() > max {
                    return Err(too_big());
                }
                false
            }
        };
        if done {
            return Ok((body, sent.head.keep_alive));
        }
        input.clear();
        if input.capacity() < READ_BUF {
            // The head's buffer is small (see `HEAD_BUF`): a body read in pieces gets a full one.
            input.reserve(READ_BUF);
        }
        pos = 0;
        let limit = limit.get_or_insert_with(|| Deadline::at(deadline));
        let read = pin!(sent.conn.io.read_append(input));
        match within(limit, read).await {
            Err(_) => return Err(UpstreamError::TotalTimeout(provider.to_string())),
            Ok((Ok(0), _)) if sent.head.body == BodyFraming::UntilClose => {
                return Ok((body, false))
            }
            Ok((Ok(0), _)) => {
                return Err(io_error(
                    provider,
                    "connection closed inside the body".into(),
                ))
            }
            Ok((Ok(_), b)) => input = b,
            Ok((Err(e), _)) => return Err(io_error(provider, e.to_string())),
        }
    }
}
