//! Relaying an upstream response body to the client as it arrives.
//!
//! Every upstream read is scanned (SSE events for usage, or a bounded copy of a JSON body) and
//! written to the client at once, re-framed as chunked when needed; nothing waits for the end
//! of the body. A [`ClientWatch`] keeps a read posted on the client socket for the rest of any
//! exchange that lasts more than a few milliseconds, so a client that goes away cancels the
//! upstream request at once, even while the upstream is silent.
//!
//! Trade-off for TLS clients: the watch runs *disabled* (no posted read). A TLS read cannot be
//! cancelled safely: cancelling it mid-record loses bytes the rustls session has not seen and
//! breaks the connection, and a read pending on the shared session while the relay writes is
//! not sound either (see `listen::client_io`). So on a TLS connection a client that goes away is
//! noticed only when a write to it fails: a streaming answer stops at its next event, but a
//! non-streaming request whose upstream is still thinking runs to its end (or its timeouts)
//! and is paid for. Pipelined bytes sent during the exchange stay in the socket and are read
//! by the connection loop afterwards, so nothing is lost.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::BufResult;
use sluice_core::filter::{BodyEnd, Chain};
use sluice_core::http1::{begin_chunk, end_chunk, BodyFraming, ChunkedDecoder, LAST_CHUNK};
use sluice_core::usage::Usage;

use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::respond::ClientFraming;
use crate::upstream::pool::{UpstreamConn, UpstreamError};

type WatchFuture<'a> = Pin<Box<dyn Future<Output = BufResult<usize, Vec<u8>>> + 'a>>;

/// A read posted on the client connection while an exchange is under way, so a client that
/// goes away is noticed at once.
///
/// The read is posted only once the exchange has run for [`ARM_AFTER`]: most answers are done
/// well before, and for them the posted read and its cancel would be two more operations on
/// the socket for nothing (a client that leaves during those first milliseconds is noticed
/// then, or when the answer is written to it). Anything that takes longer — a thinking
/// upstream, a stream — is watched from then on.
///
/// Call order: [`ClientWatch::new`], any number of [`ClientWatch::race`], then
/// [`ClientWatch::finish`] to cancel the read and recover anything the client sent meanwhile
/// (a pipelined request).
///
/// On a TLS connection the watch is disabled: `race` just runs the operation and `finish`
/// reports nothing (see the module docs for why and what it costs).
pub struct ClientWatch<'a> {
    /// The read half until the read is posted (`None` once posted).
    rd: Option<&'a mut ClientRead>,
    /// The client's body is still being streamed upstream: nothing is read but that (see
    /// [`ClientWatch::hold`]).
    held: bool,
    /// The connection is plain TCP (a TLS connection's watch stays disabled).
    plain: bool,
    /// When to post the read.
    arm_at: Instant,
    fut: Option<WatchFuture<'a>>,
    canceller: Canceller,
    gone: bool,
    early: Vec<u8>,
}

/// The upstream read buffer an event stream keeps once its head has been read (the head
/// itself is read into a larger one).
const STREAM_READ_BUF: usize = 2048;

/// How long an exchange runs before its client is watched (see [`ClientWatch`]).
pub const ARM_AFTER: Duration = Duration::from_millis(20);

impl<'a> ClientWatch<'a> {
    /// A watch of `rd` (plain TCP only; a TLS connection gets a disabled watch), posted
    /// [`ARM_AFTER`] from now if the exchange is still under way.
    pub fn new(rd: &'a mut ClientRead) -> Self {
        let plain = rd.watchable().is_some();
        ClientWatch {
            rd: Some(rd),
            held: false,
            plain,
            arm_at: Instant::now() + ARM_AFTER,
            fut: None,
            canceller: Canceller::new(),
            gone: false,
            early: Vec::new(),
        }
    }

    /// Posts the read (plain TCP; a TLS connection's watch stays disabled).
    fn arm(&mut self) {
        if let Some(rd) = self.rd.take().and_then(ClientRead::watchable) {
            let handle = self.canceller.handle();
            self.fut = Some(Box::pin(
                rd.cancelable_read(Vec::with_capacity(1024), handle),
            ));
        }
    }

    /// Keeps the read from being posted while the client's body is streamed upstream (its
    /// bytes are the body, not a close or a pipelined request): until
    /// [`ClientWatch::release`], `race` just runs the operation.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// The body is all read: watch the client again.
    pub fn release(&mut self) {
        if self.held {
            self.held = false;
            self.arm_at = Instant::now() + ARM_AFTER;
        }
    }

    /// The client's read half while the watch is held (the streamed body's source).
    pub fn reader(&mut self) -> Option<&mut ClientRead> {
        if self.held {
            self.rd.as_deref_mut()
        } else {
            None
        }
    }

    /// Bytes read past the end of a streamed body: the start of the client's next request.
    pub fn push_early(&mut self, bytes: &[u8]) {
        self.early.extend_from_slice(bytes);
    }

    /// Whether the client closed its side or reset the connection.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Runs `fut` to completion, unless the client goes away first (`None`; `fut` is dropped,
    /// which cancels it).
    pub async fn race<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        if self.gone {
            return None;
        }
        if self.held {
            return Some(fut.await);
        }
        let mut fut = std::pin::pin!(fut);
        if self.rd.is_some() && self.plain {
            // Not watched yet: the operation alone until the watch is due, then watched.
            let due = self.arm_at;
            if Instant::now() < due {
                monoio::select! {
                    biased;
                    out = &mut fut => return Some(out),
                    _ = monoio::time::sleep_until(due.into()) => {}
                }
            }
            self.arm();
        }
        if let Some(watch) = self.fut.as_mut() {
            // Biased: when the operation and the client's close complete together (a client
            // that hangs up right after reading the whole answer), the operation wins.
            monoio::select! {
                biased;
                out = &mut fut => return Some(out),
                (res, buf) = watch => {
                    self.fut = None;
                    self.on_read(res, buf);
                    if self.gone {
                        return None;
                    }
                }
            }
        }
        Some(fut.await)
    }

    fn on_read(&mut self, res: io::Result<usize>, buf: Vec<u8>) {
        match res {
            Ok(0) => self.gone = true,
            Ok(_) => self.early.extend_from_slice(&buf),
            Err(e) if is_cancelled(&e) => {}
            Err(_) => self.gone = true,
        }
    }

    /// Cancels the read; returns the bytes the client sent meanwhile and whether it is gone.
    pub async fn finish(mut self) -> (Vec<u8>, bool) {
        if let Some(watch) = self.fut.take() {
            let _ = std::mem::take(&mut self.canceller).cancel();
            let (res, buf) = watch.await;
            self.on_read(res, buf);
        }
        (self.early, self.gone)
    }
}

fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED) || e.kind() == io::ErrorKind::Interrupted
}

/// Largest body copy kept to read usage from.
pub const MAX_CAPTURE: usize = 8 * 1024 * 1024;

/// Timing limits of the body.
pub struct BodyLimits {
    /// Longest silence between two reads.
    pub idle: Duration,
    /// End of the whole exchange.
    pub deadline: Instant,
    /// Provider name, for errors.
    pub provider: String,
}

/// How the relay ended.
pub struct RelayEnd {
    /// The upstream body was read to its end with framing intact: the connection can be pooled.
    pub upstream_reusable: bool,
    /// The client connection's framing is intact: it can be kept alive.
    pub client_reusable: bool,
    /// The client went away.
    pub client_gone: bool,
    /// Usage reported by the upstream, if any.
    pub usage: Option<Usage>,
    /// Data events relayed (streams), for estimating a cancelled stream.
    pub data_events: u64,
    /// Bytes written to the client, head included.
    pub bytes_out: u64,
    /// What went wrong upstream, if anything.
    pub error: Option<UpstreamError>,
    /// When the first byte went to the client.
    pub first_write: Option<Instant>,
    /// When the first byte of the upstream's body arrived.
    pub first_data: Option<Instant>,
    /// Time spent waiting on upstream reads.
    pub upstream_wait: Duration,
    /// The complete answer in the pivot shape, when the chain captured one for the cache.
    pub pivot: Option<sluice_core::cache::StoredAnswer>,
    /// The model the upstream's answer says answered (bounded), when it named one.
    pub answered_model: Option<String>,
}

/// The state of the upstream body framing.
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// Everything the relay works on.
pub struct Relay<'c, 'w, 'a> {
    upstream: &'c mut UpstreamConn,
    client: &'c mut ClientWrite,
    watch: &'w mut ClientWatch<'a>,
    client_framing: ClientFraming,
    /// The body filters, in order (translate or scan, capture, ...).
    chain: Chain,
    /// The body is an event stream: its framing to the client stays intact even when the
    /// upstream fails (it ends with an error event).
    is_sse: bool,
    limits: BodyLimits,
    /// The upstream sent bytes past the end of its body: never reuse the connection.
    trailing_bytes: bool,
    /// When the first body byte arrived.
    first_data: Option<Instant>,
}

impl<'c, 'w, 'a> Relay<'c, 'w, 'a> {
    /// A relay from `upstream` to `client`.
    pub fn new(
        upstream: &'c mut UpstreamConn,
        client: &'c mut ClientWrite,
        watch: &'w mut ClientWatch<'a>,
        client_framing: ClientFraming,
        chain: Chain,
        is_sse: bool,
        limits: BodyLimits,
    ) -> Self {
        Relay {
            upstream,
            client,
            watch,
            client_framing,
            chain,
            is_sse,
            limits,
            trailing_bytes: false,
            first_data: None,
        }
    }

    /// Relays the body. `wire` holds the response head, not yet written; `ubuf[body_at..]`
    /// holds the body bytes that came with the upstream head.
    pub async fn run(
        mut self,
        framing: BodyFraming,
        mut wire: Vec<u8>,
        mut ubuf: Vec<u8>,
        body_at: usize,
    ) -> RelayEnd {
        let mut end = RelayEnd {
            upstream_reusable: false,
            client_reusable: true,
            client_gone: false,
            usage: None,
            data_events: 0,
            bytes_out: 0,
            error: None,
            first_write: None,
            first_data: None,
            upstream_wait: Duration::ZERO,
            pivot: None,
            answered_model: None,
        };
        let mut state = match framing {
            BodyFraming::Empty => Framing::Done,
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new(u64::MAX)),
            BodyFraming::UntilClose => Framing::UntilClose,
        };
        let mut start = body_at;
        let mut eof = false;
        loop {
            if let Err(e) = self.consume(&mut state, &ubuf[start.min(ubuf.len())..], eof, &mut wire)
            {
                end.error = Some(e);
                break;
            }
            ubuf.clear();
            start = 0;
            if matches!(state, Framing::Done) {
                break;
            }
            if self.is_sse && ubuf.capacity() > STREAM_READ_BUF {
                // An event stream is many small reads spread over seconds or minutes: a
                // small buffer (it still grows for an event that needs more).
                ubuf.shrink_to(STREAM_READ_BUF);
            }
            if !wire.is_empty() {
                match self.write(wire, &mut end).await {
                    Some(w) => wire = w,
                    None => return self.cancelled(end),
                }
            }
            if eof {
                end.error = Some(UpstreamError::Io {
                    provider: self.limits.provider.clone(),
                    message: "connection closed before the end of the body".into(),
                });
                break;
            }
            let now = Instant::now();
            let left = self.limits.deadline.saturating_duration_since(now);
            let wait = self.limits.idle.min(left);
            let read = monoio::time::timeout(wait, self.upstream.io.read_append(ubuf));
            let raced = self.watch.race(read).await;
            end.upstream_wait += now.elapsed();
            match raced {
                None => return self.cancelled(end),
                Some(Err(_)) => {
                    end.error = Some(if left <= self.limits.idle {
                        UpstreamError::TotalTimeout(self.limits.provider.clone())
                    } else {
                        UpstreamError::IdleTimeout(self.limits.provider.clone())
                    });
                    ubuf = Vec::new();
                    wire.clear();
                    break;
                }
                Some(Ok((Ok(0), buf))) => {
                    ubuf = buf;
                    eof = true;
                }
                Some(Ok((Ok(_), buf))) => ubuf = buf,
                Some(Ok((Err(e), _))) => {
                    end.error = Some(UpstreamError::Io {
                        provider: self.limits.provider.clone(),
                        message: e.to_string(),
                    });
                    ubuf = Vec::new();
                    wire.clear();
                    break;
                }
            }
        }
        drop(ubuf);
        self.finish(state, wire, end).await
    }

    /// Appends the payload of `input` to `wire` (framed for the client), advancing `state`.
    fn consume(
        &mut self,
        state: &mut Framing,
        input: &[u8],
        eof: bool,
        wire: &mut Vec<u8>,
    ) -> Result<(), UpstreamError> {
        let chunked_out = self.client_framing == ClientFraming::Chunked;
        let mut pos = 0;
        while pos < input.len() || (eof && matches!(state, Framing::UntilClose)) {
            let (data, next) = match state {
                Framing::Done => {
                    // Bytes after the end of the body: the upstream broke framing.
                    self.trailing_bytes = true;
                    return Ok(());
                }
                Framing::Length(remaining) => {
                    let take = (*remaining).min((input.len() - pos) as u64) as usize;
                    *remaining -= take as u64;
                    let data = pos..pos + take;
                    if *remaining == 0 {
                        *state = Framing::Done;
                    }
                    (data, pos + take)
                }
                Framing::Chunked(dec) => {
                    let step = dec
                        .decode(&input[pos..])
                        .map_err(|e| UpstreamError::Protocol {
                            provider: self.limits.provider.clone(),
                            message: e.to_string(),
                        })?;
                    if step.done {
                        *state = Framing::Done;
                    }
                    (
                        pos + step.data.start..pos + step.data.end,
                        pos + step.consumed,
                    )
                }
                Framing::UntilClose => {
                    if eof && pos >= input.len() {
                        *state = Framing::Done;
                        break;
                    }
                    (pos..input.len(), input.len())
                }
            };
            let data = &input[data];
            if !data.is_empty() {
                self.first_data.get_or_insert_with(Instant::now);
                let at = chunked_out.then(|| begin_chunk(wire));
                self.chain.handle_bytes(data, wire);
                if let Some(at) = at {
                    end_chunk(wire, at);
                }
            }
            pos = next;
        }
        Ok(())
    }

    /// Writes `wire` to the client; `None` when the client is gone.
    async fn write(&mut self, wire: Vec<u8>, end: &mut RelayEnd) -> Option<Vec<u8>> {
        let len = wire.len() as u64;
        let (res, mut wire) = self.watch.race(self.client.write_all(wire)).await?;
        res.ok()?;
        end.first_write.get_or_insert_with(Instant::now);
        end.bytes_out += len;
        wire.clear();
        Some(wire)
    }

    /// The client went away: the upstream connection is dropped (closed, not drained).
    fn cancelled(self, mut end: RelayEnd) -> RelayEnd {
        end.first_data = self.first_data;
        end.client_gone = true;
        end.client_reusable = false;
        end.upstream_reusable = false;
        end.usage = self.chain.usage();
        end.data_events = self.chain.data_events();
        end.answered_model = self.chain.answered_model();
        end
    }

    async fn finish(mut self, state: Framing, mut wire: Vec<u8>, mut end: RelayEnd) -> RelayEnd {
        end.first_data = self.first_data;
        let complete = matches!(state, Framing::Done) && end.error.is_none();
        let chunked_out = self.client_framing == ClientFraming::Chunked;
        let is_sse = self.is_sse;
        let failure = end.error.as_ref().map(UpstreamError::to_gateway);
        let body_end = match &failure {
            Some(err) => BodyEnd::Failed(err),
            None => BodyEnd::Complete,
        };
        // What an event stream's filters add at the end (a held event, the error event) is
        // one more chunk.
        let at = (chunked_out && is_sse).then(|| begin_chunk(&mut wire));
        self.chain.finish(body_end, &mut wire);
        if let Some(at) = at {
            end_chunk(&mut wire, at);
        }
        end.usage = self.chain.usage();
        end.data_events = self.chain.data_events();
        end.answered_model = self.chain.answered_model();
        end.pivot = self.chain.take_pivot();
        let framing_intact = complete || is_sse;
        if chunked_out && framing_intact {
            wire.extend_from_slice(LAST_CHUNK);
        }
        if !framing_intact || self.client_framing == ClientFraming::Close {
            end.client_reusable = false;
        }
        if !wire.is_empty() && self.write(wire, &mut end).await.is_none() {
            end.client_gone = true;
            end.client_reusable = false;
        }
        end.upstream_reusable = complete && !self.trailing_bytes;
        end
    }
}
