//! Streamed uploads: a `multipart/form-data` body (`POST /v1/audio/transcriptions`) is not
//! read whole. Its `model` is a form field, so the gateway reads the body only up to the end
//! of that field (holding any file parts before it, within `max_body_bytes`), routes on it
//! like any request, sends the upstream the request head and the part it holds (with the
//! deployment's model spliced in), and then copies the rest of the client's body to the
//! upstream as it arrives, a read buffer at a time.
//!
//! ```text
//! client ─► read_form_start (FieldScan, core) ─► prefix + BodyRest
//!        ─► stages ─► send: head + prefix ─► pump (rest, max_body_bytes enforced) ─► head
//! ```
//!
//! A body framed with `content-length` over the limit is refused from its head (413, before
//! a byte of it is read); a chunked one is counted as it goes, and one that passes the limit
//! mid-stream aborts the upstream exchange and is answered 413 (nothing was answered yet: the
//! upstream's answer is read only once the body is all sent).
//!
//! A streamed body cannot be replayed. Each attempt opens a new connection (a pooled one the
//! upstream closed while idle would show it only once the body is on its way); one whose
//! connect or first write fails, before anything past the held part went out, may be retried
//! elsewhere, but once the pump has started the attempt is the last one
//! (`AttemptLoop::body_spent`), and a streamed request is never hedged. A body that ends
//! before its `model` field is found was read whole and goes the ordinary way.

use std::pin::pin;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{
    self, encode_chunk, BodyFraming, ChunkedDecoder, RequestHead, LAST_CHUNK,
};
use sluice_core::multipart::{self, FieldScan, Scanned};

use crate::clock::deadlines::before;
use crate::listen::client_io::ClientRead;
use crate::listen::idle::{self, Read};
use crate::request::plan::{ApiEndpoint, Tail};
use crate::request::relay::ClientWatch;
use crate::state::Worker;
use crate::upstream::attempt::{self, Sent};
use crate::upstream::pool::{UpstreamConn, UpstreamError};

/// Most bytes copied from the client to the upstream in one read.
const PUMP_BUF: usize = 64 * 1024;

/// A scan for the `model` field when a request to `endpoint` with `head` is a form whose body
/// can be streamed (a `multipart/form-data` transcription with a body); `None` otherwise (the
/// body is read whole, and a bad content type is answered by `prepare`).
pub fn model_scan(endpoint: ApiEndpoint, head: &RequestHead) -> Option<FieldScan> {
    if endpoint != ApiEndpoint::AudioTranscriptions
        || !matches!(head.body, BodyFraming::Length(_) | BodyFraming::Chunked)
    {
        return None;
    }
    let boundary = multipart::boundary(head.header_str("content-type")).ok()?;
    Some(FieldScan::new(boundary, "model"))
}

/// How the rest of the client's body is framed.
enum Framing {
    /// This many bytes still to read.
    Length(u64),
    /// The client's chunked framing, decoded as it goes (it counts the running total).
    Chunked(ChunkedDecoder),
}

/// The part of a client's body still in its socket (and, chunked, in `pending`), to be
/// streamed upstream after the part the gateway holds.
pub struct BodyRest {
    framing: Framing,
    /// Raw (still chunk-framed) bytes already read from the client.
    pending: Vec<u8>,
    /// When the client must have sent its whole body.
    deadline: Instant,
    /// The body's limit, for the 413.
    max_body_bytes: u64,
    /// Bytes of the rest read from the client so far (framing included).
    received: u64,
    done: bool,
}

impl BodyRest {
    /// How the upstream request frames the rest.
    pub fn tail(&self) -> Tail {
        match &self.framing {
            Framing::Length(n) => Tail::Length(*n),
            Framing::Chunked(_) => Tail::Chunked,
        }
    }

    /// The client's body was read to its end (the connection's framing is intact).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Bytes of the rest read from the client so far (for the request's `bytes_in`).
    pub fn received(&self) -> u64 {
        self.received
    }
}

/// Why reading a form's start stopped short.
pub enum Stopped {
    /// Close quietly (EOF, I/O error).
    Close,
    /// Answer this error, then close.
    Answer(GatewayError),
}

/// Reads a form body until `scan` finds its `model` field whole (the body read so far, and
/// what is left of it), or to its end when the field is absent or the form is malformed
/// (then `prepare` answers, as for any whole body). `buf` holds bytes already received; what
/// follows the body stays in it.
pub async fn read_form_start(
    rd: &mut ClientRead,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    max_body_bytes: u64,
    deadline: Instant,
    mut scan: FieldScan,
) -> Result<(Vec<u8>, Option<BodyRest>), Stopped> {
    let mut body = Vec::new();
    // Once the field is known to be absent (or the form broken), the rest is read whole.
    let mut scanning = true;
    let mut found = |body: &[u8], scanning: &mut bool| {
        if !*scanning {
            return false;
        }
        match scan.scan(body) {
            Ok(Scanned::Found(_)) => true,
            Ok(Scanned::Need) => false,
            Ok(Scanned::Absent) | Err(_) => {
                *scanning = false;
                false
            }
        }
    };
    match head.body {
        BodyFraming::Length(n) => {
            let have = buf.len().min(n as usize);
            body.extend_from_slice(&buf[..have]);
            buf.drain(..have);
            loop {
                let len = body.len() as u64;
                if len == n {
                    return Ok((body, None));
                }
                if found(&body, &mut scanning) {
                    let rest = BodyRest {
                        framing: Framing::Length(n - len),
                        pending: Vec::new(),
                        deadline,
                        max_body_bytes,
                        received: 0,
                        done: false,
                    };
                    return Ok((body, Some(rest)));
                }
                let want = ((n - len) as usize).min(PUMP_BUF);
                body.reserve(want);
                let at = body.len();
                let read = before(deadline, pin!(rd.read(body.slice_mut(at..at + want)))).await;
                body = match read {
                    Err(_) => return Err(Stopped::Answer(body_timeout())),
                    Ok((Ok(0), _)) | Ok((Err(_), _)) => return Err(Stopped::Close),
                    Ok((Ok(_), slice)) => slice.into_inner(),
                };
            }
        }
        _ => {
            let mut decoder = ChunkedDecoder::new(max_body_bytes);
            loop {
                let (used, done) = decoder
                    .decode_into(buf, &mut body)
                    .map_err(|e| Stopped::Answer(chunk_error(e, max_body_bytes)))?;
                buf.drain(..used);
                if done {
                    return Ok((body, None));
                }
                if found(&body, &mut scanning) {
                    let rest = BodyRest {
                        framing: Framing::Chunked(decoder),
                        pending: std::mem::take(buf),
                        deadline,
                        max_body_bytes,
                        received: 0,
                        done: false,
                    };
                    return Ok((body, Some(rest)));
                }
                let limit = deadline.saturating_duration_since(Instant::now());
                match idle::read_more(rd, std::mem::take(buf), limit).await {
                    Read::Data(b) => *buf = b,
                    Read::TimedOut => return Err(Stopped::Answer(body_timeout())),
                    Read::Eof | Read::Failed => return Err(Stopped::Close),
                }
            }
        }
    }
}

/// The 408 of a body that did not arrive in time.
pub fn body_timeout() -> GatewayError {
    GatewayError::new(
        ErrorKind::RequestTimeout,
        "timed out reading the request body",
    )
}

/// The answer to a broken chunked body: 413 over the limit, else a framing error.
pub fn chunk_error(e: http1::ChunkedError, max_body_bytes: u64) -> GatewayError {
    match e {
        http1::ChunkedError::TooLarge => GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds {max_body_bytes} bytes"),
        ),
        other => GatewayError::new(
            ErrorKind::RequestSmuggling,
            format!("invalid chunked body: {other}"),
        ),
    }
}

/// Why a streamed attempt ended without a response head.
pub enum UploadError {
    /// The upstream failed (connect, write, head).
    Upstream(UpstreamError),
    /// The client's body is refused (413 over the limit, 408, a broken chunk): answered as
    /// this error; the upstream exchange was dropped, which aborts it.
    Client(GatewayError),
    /// The client went away mid-body.
    ClientGone,
}

/// One attempt with a streamed body: sends `request` (the head and the held part of the
/// body) to provider `index`, copies the rest of the client's body from `watch`'s reader, and
/// reads the response head. Also says whether anything past the held part went out (then
/// the body is spent: no other attempt can send it).
pub async fn send(
    worker: &Worker,
    index: usize,
    request: Vec<u8>,
    rest: &mut BodyRest,
    watch: &mut ClientWatch<'_>,
    deadline: Instant,
) -> (Result<Sent, UploadError>, bool) {
    if rest.is_done() {
        // The body went out with an earlier attempt (the loop stops after it; defensive).
        let spent = UpstreamError::Protocol {
            provider: String::new(),
            message: "the streamed body was already sent".into(),
        };
        return (Err(UploadError::Upstream(spent)), true);
    }
    let mut conn = match start(worker, index, request).await {
        Ok(c) => c,
        Err(e) => return (Err(UploadError::Upstream(e)), false),
    };
    let name = worker
        .shared
        .config
        .providers
        .get(index)
        .map_or("?", |p| p.name.as_str());
    let Some(rd) = watch.reader() else {
        let gone = UpstreamError::Protocol {
            provider: name.to_owned(),
            message: "the client's body is no longer readable".into(),
        };
        return (Err(UploadError::Upstream(gone)), false);
    };
    match pump(rest, rd, &mut conn, name, deadline).await {
        Ok(()) => {}
        Err(UploadError::Upstream(UpstreamError::Io { provider, message })) => {
            // The upstream stopped taking the body: it may have answered first (a 401, a
            // 413 of its own) and closed. That answer, when there is one, is the answer.
            let early = attempt::read_answer_head(worker, index, conn, deadline).await;
            let failed = UpstreamError::Io { provider, message };
            return (early.map_err(|_| UploadError::Upstream(failed)), true);
        }
        Err(e) => return (Err(e), true),
    }
    let leftover = std::mem::take(&mut rest.pending);
    watch.push_early(&leftover);
    watch.release();
    let head = attempt::read_answer_head(worker, index, conn, deadline).await;
    (head.map_err(UploadError::Upstream), true)
}

/// A new connection to provider `index` that took `request` whole. Never a pooled one: a
/// pooled connection the upstream closed while idle shows it only once the body is on its
/// way, too late to try another, so a streamed upload pays for a connect instead. Nothing of
/// the client's body has been read yet, so a failure here can be retried elsewhere.
async fn start(
    worker: &Worker,
    index: usize,
    request: Vec<u8>,
) -> Result<UpstreamConn, UpstreamError> {
    let mut c = attempt::open(worker, index).await?;
    let (res, _) = c.io.write_all(request).await;
    match res {
        Ok(()) => Ok(c),
        Err(e) => {
            let name = worker
                .shared
                .config
                .providers
                .get(index)
                .map_or("?", |p| p.name.as_str());
            Err(attempt::io_error(name, e.to_string()))
        }
    }
}

/// Copies the rest of the client's body to `conn` as it arrives (re-framed as chunks when the
/// client's was chunked), enforcing the body limit and the body deadline.
async fn pump(
    rest: &mut BodyRest,
    rd: &mut ClientRead,
    conn: &mut UpstreamConn,
    provider: &str,
    deadline: Instant,
) -> Result<(), UploadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(PUMP_BUF);
    loop {
        match &mut rest.framing {
            Framing::Length(0) => {
                rest.done = true;
                return Ok(());
            }
            Framing::Length(left) => {
                let want = (*left as usize).min(PUMP_BUF);
                buf.clear();
                let read = before(rest.deadline, pin!(rd.read(buf.slice_mut(0..want)))).await;
                buf = match read {
                    Err(_) => return Err(UploadError::Client(body_timeout())),
                    Ok((Ok(0), _)) | Ok((Err(_), _)) => return Err(UploadError::ClientGone),
                    Ok((Ok(n), slice)) => {
                        *left -= n as u64;
                        rest.received += n as u64;
                        slice.into_inner()
                    }
                };
                buf = write(conn, buf, provider, deadline).await?;
            }
            Framing::Chunked(decoder) => {
                buf.clear();
                let (used, done) = decoder
                    .decode_into(&rest.pending, &mut buf)
                    .map_err(|e| UploadError::Client(chunk_error(e, rest.max_body_bytes)))?;
                // Unless the body ended, everything held was decoded; after the end, the
                // client's next request may follow.
                rest.pending.drain(..used);
                let mut wire = Vec::with_capacity(buf.len() + 32);
                encode_chunk(&buf, &mut wire);
                if done {
                    wire.extend_from_slice(LAST_CHUNK);
                }
                if !wire.is_empty() {
                    write(conn, wire, provider, deadline).await?;
                }
                if done {
                    rest.done = true;
                    return Ok(());
                }
                let limit = rest.deadline.saturating_duration_since(Instant::now());
                let held = rest.pending.len();
                match idle::read_more(rd, std::mem::take(&mut rest.pending), limit).await {
                    Read::Data(b) => {
                        rest.received += (b.len() - held) as u64;
                        rest.pending = b;
                    }
                    Read::TimedOut => return Err(UploadError::Client(body_timeout())),
                    Read::Eof | Read::Failed => return Err(UploadError::ClientGone),
                }
            }
        }
    }
}

/// Writes `wire` to the upstream within `deadline`; the buffer back.
async fn write(
    conn: &mut UpstreamConn,
    wire: Vec<u8>,
    provider: &str,
    deadline: Instant,
) -> Result<Vec<u8>, UploadError> {
    match before(deadline, pin!(conn.io.write_all(wire))).await {
        Err(_) => Err(UploadError::Upstream(UpstreamError::TotalTimeout(
            provider.to_owned(),
        ))),
        Ok((Err(e), _)) => Err(UploadError::Upstream(attempt::io_error(
            provider,
            e.to_string(),
        ))),
        Ok((Ok(()), back)) => Ok(back),
    }
}
