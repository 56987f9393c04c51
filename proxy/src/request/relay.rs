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
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use sluice_core::filter::{BodyEnd, Chain};
use sluice_core::http1::{begin_chunk, end_chunk, BodyFraming, ChunkedDecoder, LAST_CHUNK};
use sluice_core::usage::Usage;

use crate::clock::deadlines::Deadline;
use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::idle;
use crate::listen::respond::ClientFraming;
use crate::spares::Spares;
use crate::upstream::attempt::READ_BUF;
use crate::upstream::pool::{UpstreamConn, UpstreamError};

/// The watch's wait: `true` when the client's socket holds bytes (a pipelined request, left
/// there), `false` when the client closed or reset it.
type WatchFuture<'a> = Pin<Box<dyn Future<Output = bool> + 'a>>;

/// A wait posted on the client connection while an exchange is under way, so a client that
/// goes away is noticed at once.
///
/// The wait is for readiness, with no buffer and nothing read
/// (`listen::idle::parked_until_bytes`): a close or reset ends the exchange; bytes (a pipelined
/// request) end the watch and stay in the socket for the connection to read after the
/// exchange. It is posted only once the exchange has run for [`ARM_AFTER`]: most answers are
/// done well before, and for them the posted wait and its cancel would be two more operations
/// on the socket for nothing (a client that leaves during those first milliseconds is noticed
/// then, or when the answer is written to it). Anything that takes longer — a thinking
/// upstream, a stream — is watched from then on.
///
/// Call order: [`ClientWatch::new`], any number of [`ClientWatch::race`], then
/// [`ClientWatch::finish`], which drops the wait (the runtime cancels it) and returns what a
/// streamed body's reader read past its end (a pipelined request).
///
/// On a TLS connection the watch is disabled: `race` just runs the operation and `finish`
/// reports nothing (see the module docs for why and what it costs).
pub struct ClientWatch<'a> {
    /// The read half until the wait is posted (`None` once posted).
    rd: Option<&'a mut ClientRead>,
    /// The client's body is still being streamed upstream: nothing is read but that (see
    /// [`ClientWatch::hold`]).
    held: bool,
    /// The connection is plain TCP (a TLS connection's watch stays disabled).
    plain: bool,
    /// When to post the wait.
    arm_at: Instant,
    fut: Option<WatchFuture<'a>>,
    gone: bool,
    early: Vec<u8>,
}

/// The upstream read buffer an event stream over TLS keeps once its head has been read (a
/// plain TCP stream holds none while it waits: it takes one from the spares per read).
const STREAM_READ_BUF: usize = 2048;

/// Spare client buffers an event stream's relay takes between two upstream reads (see
/// [`take_wire`]); a worker keeps this many at most.
const SPARE_WIRES: usize = 32;

/// Largest client buffer kept as a spare (a larger one, grown by a large event, is freed).
const MAX_SPARE_WIRE: usize = 8 * 1024;

/// Capacity of a new client buffer for an event stream (a read's worth of events, framed).
const WIRE_BUF: usize = STREAM_READ_BUF + 256;

thread_local! {
    static SPARE: Spares = const { Spares::new(SPARE_WIRES) };
}

/// An empty client buffer for the events of one upstream read, from the worker's spares when
/// it has one.
///
/// An event stream spends nearly all its life waiting for the upstream's next event, and its
/// client buffer is empty all that time: it is needed only from a read's arrival until the
/// events are written. So between reads the relay gives it back ([`give_back_wire`]) and two
/// thousand streams hold a handful of buffers, not two thousand (no allocation per event in
/// steady state: a take and a give are a thread-local pop and push).
fn take_wire() -> Vec<u8> {
    SPARE
        .with(Spares::take)
        .unwrap_or_else(|| Vec::with_capacity(WIRE_BUF))
}

/// Frees the spare client buffers the last period did not use (see [`Spares::trim`]).
pub fn trim_spares() {
    SPARE.with(Spares::trim);
}

/// Gives an empty client buffer back to the worker's spares (bounded in count and size).
fn give_back_wire(mut wire: Vec<u8>) {
    if wire.capacity() == 0 || wire.capacity() > MAX_SPARE_WIRE {
        return;
    }
    wire.clear();
    SPARE.with(|spare| spare.give(wire));
}

/// How long an exchange runs before its client is watched (see [`ClientWatch`]); at least
/// this long: the watch is posted on the worker's next coarse deadline tick after it (see
/// `clock::deadlines`), so up to one tick later.
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
            gone: false,
            early: Vec::new(),
        }
    }

    /// Posts the wait (plain TCP; a TLS connection's watch stays disabled). The exchange
    /// lasts (a stream, a thinking upstream): the connection's kept canceller is given back
    /// for the rest of it (see [`ClientRead::release_canceller`]).
    fn arm(&mut self) {
        if let Some(rd) = self.rd.take() {
            rd.release_canceller();
            if let Some(rd) = rd.watchable() {
                self.fut = Some(Box::pin(idle::parked_until_bytes(rd)));
            }
        }
    }

    /// Keeps the wait from being posted while the client's body is streamed upstream (its
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

    /// Runs `fut` to completion, unless the client goes away first (`None`; the caller then
    /// drops `fut`, which cancels it).
    ///
    /// `fut` is pinned by the caller and polled through this reference: the operation is
    /// stored once, in the caller's frame (taken by value, it was stored twice — as the
    /// argument and as the pinned local — with a timer and a `select!` beside it; the relay
    /// holds one such race per stream for the stream's whole life).
    pub fn race<'r, F: Future + ?Sized>(&'r mut self, fut: Pin<&'r mut F>) -> Race<'r, 'a, F> {
        Race {
            watch: self,
            fut,
            due: None,
        }
    }

    /// Ends the watch (a posted wait is dropped, which cancels it; it read nothing): returns
    /// the bytes read past a streamed body's end and whether the client is gone.
    pub fn finish(self) -> (Vec<u8>, bool) {
        (self.early, self.gone)
    }
}

/// The future of [`ClientWatch::race`]: the operation first (biased: when it and the client's
/// close complete together — a client that hangs up right after reading the whole answer —
/// the operation wins), then the watch's posted wait; before the watch is due, a coarse
/// [`Deadline`] (a few bytes, where a monoio timer is 640) says when to post it.
pub struct Race<'r, 'a, F: ?Sized> {
    watch: &'r mut ClientWatch<'a>,
    fut: Pin<&'r mut F>,
    /// When the watch is due, while it is not posted yet.
    due: Option<Deadline>,
}

impl<F: Future + ?Sized> Future for Race<'_, '_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let watch = &mut *this.watch;
        if watch.gone {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if watch.held {
            return Poll::Pending;
        }
        if watch.rd.is_some() && watch.plain {
            // Not watched yet: the operation alone until the watch is due, then watched.
            if this.due.is_none() && Instant::now() < watch.arm_at {
                this.due = Some(Deadline::at(watch.arm_at));
            }
            if let Some(due) = this.due.as_mut() {
                if Pin::new(due).poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.due = None;
            watch.arm();
        }
        if let Some(wait) = watch.fut.as_mut() {
            if let Poll::Ready(bytes) = wait.as_mut().poll(cx) {
                // Bytes: a pipelined request, in the socket until the exchange ends; the
                // watch ends (the socket stays readable). Else the client is gone.
                watch.fut = None;
                if !bytes {
                    watch.gone = true;
                    return Poll::Ready(None);
                }
            }
        }
        Poll::Pending
    }
}

/// Largest body copy kept to read usage from.
pub const MAX_CAPTURE: usize = 8 * 1024 * 1024;

/// Timing limits of the body.
pub struct BodyLimits<'p> {
    /// Longest silence between two reads.
    pub idle: Duration,
    /// End of the whole exchange.
    pub deadline: Instant,
    /// Provider name, for errors (borrowed: copied only into an error, not for every relay).
    pub provider: &'p str,
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
    /// Boxed: this record lives in every stream's state, and only a cached answer has one.
    pub pivot: Option<Box<sluice_core::cache::StoredAnswer>>,
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
    limits: BodyLimits<'c>,
    /// The upstream sent bytes past the end of its body: never reuse the connection.
    trailing_bytes: bool,
    /// When the first body byte arrived.
    first_data: Option<Instant>,
}

impl<'c, 'w, 'a> Relay<'c, 'w, 'a> {
    /// A relay from `upstream` to `client`.
    pub fn new(
        chain: Chain,
        limits: BodyLimits<'c>,
        client_framing: ClientFraming,
        is_sse: bool,
        (upstream, client, watch): (
            &'c mut UpstreamConn,
            &'c mut ClientWrite,
            &'w mut ClientWatch<'a>,
        ),
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
    ///
    /// Borrowed (`&mut self`), not moved in: an async fn's by-value argument is stored twice in
    /// its future, and this one lasts as long as the stream. For the same reason this is not
    /// an `async fn`: the block below uses its captured arguments in place.
    #[allow(clippy::manual_async_fn)]
    pub fn run<'r>(
        &'r mut self,
        framing: BodyFraming,
        mut wire: Vec<u8>,
        mut ubuf: Vec<u8>,
        body_at: usize,
    ) -> impl Future<Output = RelayEnd> + use<'r, 'c, 'w, 'a> {
        async move {
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
                if wire.capacity() == 0 {
                    wire = take_wire();
                }
                if let Err(e) =
                    self.consume(&mut state, &ubuf[start.min(ubuf.len())..], eof, &mut wire)
                {
                    end.error = Some(e);
                    break;
                }
                ubuf.clear();
                start = 0;
                if matches!(state, Framing::Done) {
                    break;
                }
                // A plain event stream's read buffer is taken only once the upstream has bytes
                // to read (see below): it waits with none.
                let lazy = self.is_sse && self.upstream.io.is_plain();
                if lazy {
                    give_back_wire(std::mem::take(&mut ubuf));
                } else if self.is_sse && ubuf.capacity() > STREAM_READ_BUF {
                    // An event stream is many small reads spread over seconds or minutes: a
                    // small buffer (it still grows for an event that needs more).
                    ubuf.shrink_to(STREAM_READ_BUF);
                } else if !self.is_sse && ubuf.capacity() < READ_BUF {
                    // Any other body is read in full buffers (the head's was a small one).
                    ubuf.reserve(READ_BUF);
                }
                if !wire.is_empty() {
                    match self.write(wire, &mut end).await {
                        Some(w) => wire = w,
                        None => return self.cancelled(end),
                    }
                }
                if self.is_sse {
                    // Held by the worker, not the stream, while the upstream is silent.
                    give_back_wire(std::mem::take(&mut wire));
                }
                if eof {
                    end.error = Some(UpstreamError::Io {
                        provider: self.limits.provider.to_owned(),
                        message: "connection closed before the end of the body".into(),
                    });
                    break;
                }
                let now = Instant::now();
                let left = self.limits.deadline.saturating_duration_since(now);
                let wait = self.limits.idle.min(left);
                // A coarse deadline (see `Race`) rather than a monoio timer: 640 bytes less in
                // every stream's state, and an idle timeout late by a few milliseconds.
                let raced = {
                    let io = &mut self.upstream.io;
                    // An event stream waits for its upstream's next event most of its life: it
                    // waits for readiness without a buffer and takes one from the worker's spares
                    // when bytes are there, so two thousand silent streams hold no read buffer.
                    let mut read = pin!(async move {
                        if lazy {
                            if let Err(e) = io.readable().await {
                                return (Err(e), Vec::new());
                            }
                            ubuf = take_wire();
                        }
                        io.read_append(ubuf).await
                    });
                    let mut limit = Deadline::at(now + wait);
                    let mut timed = pin!(std::future::poll_fn(|cx| {
                        if let Poll::Ready(out) = read.as_mut().poll(cx) {
                            return Poll::Ready(Ok(out));
                        }
                        Pin::new(&mut limit).poll(cx).map(Err)
                    }));
                    self.watch.race(timed.as_mut()).await
                };
                end.upstream_wait += now.elapsed();
                match raced {
                    None => return self.cancelled(end),
                    Some(Err(_)) => {
                        end.error = Some(if left <= self.limits.idle {
                            UpstreamError::TotalTimeout(self.limits.provider.to_owned())
                        } else {
                            UpstreamError::IdleTimeout(self.limits.provider.to_owned())
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
                            provider: self.limits.provider.to_owned(),
                            message: e.to_string(),
                        });
                        ubuf = Vec::new();
                        wire.clear();
                        break;
                    }
                }
            }
            if self.is_sse {
                // The last read's buffer came from the spares: back to them (the stock would
                // otherwise lose one buffer a stream, and allocate it again).
                give_back_wire(ubuf);
            } else {
                drop(ubuf);
            }
            self.finish(&state, wire, &mut end).await;
            end
        }
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
                            provider: self.limits.provider.to_owned(),
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

    /// Writes `wire` to the client; `None` when the client is gone. Not an `async fn` (see
    /// [`Relay::run`]).
    #[allow(clippy::manual_async_fn)]
    fn write<'r>(
        &'r mut self,
        wire: Vec<u8>,
        end: &'r mut RelayEnd,
    ) -> impl Future<Output = Option<Vec<u8>>> + use<'r, 'c, 'w, 'a> {
        async move {
            let len = wire.len() as u64;
            let write = pin!(self.client.write_all(wire));
            let (res, mut wire) = self.watch.race(write).await?;
            res.ok()?;
            end.first_write.get_or_insert_with(Instant::now);
            end.bytes_out += len;
            wire.clear();
            Some(wire)
        }
    }

    /// The client went away: the upstream connection is dropped (closed, not drained).
    fn cancelled(&mut self, mut end: RelayEnd) -> RelayEnd {
        end.first_data = self.first_data;
        end.client_gone = true;
        end.client_reusable = false;
        end.upstream_reusable = false;
        end.usage = self.chain.usage();
        end.data_events = self.chain.data_events();
        end.answered_model = self.chain.take_answered_model();
        end
    }

    /// Ends the body for the client: what the filters add at its end, the last chunk.
    ///
    /// `end` is borrowed: taken and given back by value it was stored twice in this future,
    /// and this future is the largest the relay awaits (it sized every stream's state).
    /// Not an `async fn` (see [`Relay::run`]).
    #[allow(clippy::manual_async_fn)]
    fn finish<'r>(
        &'r mut self,
        state: &'r Framing,
        mut wire: Vec<u8>,
        end: &'r mut RelayEnd,
    ) -> impl Future<Output = ()> + use<'r, 'c, 'w, 'a> {
        async move {
            end.first_data = self.first_data;
            if wire.capacity() == 0 && self.is_sse {
                wire = take_wire();
            }
            let complete = matches!(state, Framing::Done) && end.error.is_none();
            let chunked_out = self.client_framing == ClientFraming::Chunked;
            let is_sse = self.is_sse;
            {
                let failure = end.error.as_ref().map(UpstreamError::to_gateway);
                let body_end = match &failure {
                    Some(err) => BodyEnd::Failed(err),
                    None => BodyEnd::Complete,
                };
                // What an event stream's filters add at the end (a held event, the error event)
                // is one more chunk.
                let at = (chunked_out && is_sse).then(|| begin_chunk(&mut wire));
                self.chain.finish(body_end, &mut wire);
                if let Some(at) = at {
                    end_chunk(&mut wire, at);
                }
            }
            end.usage = self.chain.usage();
            end.data_events = self.chain.data_events();
            end.answered_model = self.chain.take_answered_model();
            end.pivot = self.chain.take_pivot().map(Box::new);
            let framing_intact = complete || is_sse;
            if chunked_out && framing_intact {
                wire.extend_from_slice(LAST_CHUNK);
            }
            if !framing_intact || self.client_framing == ClientFraming::Close {
                end.client_reusable = false;
            }
            if !wire.is_empty() {
                match self.write(wire, end).await {
                    Some(w) if self.is_sse => give_back_wire(w),
                    Some(_) => {}
                    None => {
                        end.client_gone = true;
                        end.client_reusable = false;
                    }
                }
            } else if self.is_sse {
                give_back_wire(wire);
            }
            end.upstream_reusable = complete && !self.trailing_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_client_buffers_are_pooled_and_bounded() {
        let taken: Vec<Vec<u8>> = (0..SPARE_WIRES + 8).map(|_| take_wire()).collect();
        for w in &taken {
            assert!(w.is_empty() && w.capacity() >= WIRE_BUF);
        }
        let ptrs: Vec<*const u8> = taken.iter().map(|w| w.as_ptr()).collect();
        for mut w in taken {
            w.extend_from_slice(b"data: {}\n\n");
            give_back_wire(w);
        }
        assert_eq!(
            SPARE.with(Spares::len),
            SPARE_WIRES,
            "the spares are bounded"
        );
        // A buffer taken again is one given back, empty.
        let again = take_wire();
        assert!(again.is_empty());
        assert!(ptrs.contains(&again.as_ptr()), "reused, not allocated");
        give_back_wire(again);
        // A buffer grown past the bound is freed, not kept; one without capacity is ignored.
        let before = SPARE.with(Spares::len);
        let _ = take_wire();
        give_back_wire(Vec::with_capacity(MAX_SPARE_WIRE + 1));
        give_back_wire(Vec::new());
        assert_eq!(SPARE.with(Spares::len), before - 1);
    }
}

#[cfg(test)]
mod watch_tests {
    use monoio::io::Canceller;

    use super::*;
    use crate::clock::deadlines::tests::on_a_worker;
    use crate::listen::client_io;

    #[test]
    fn a_lasting_exchange_gives_back_the_kept_canceller() {
        on_a_worker(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let conn = monoio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let _peer = listener.accept().unwrap();
            let (mut rd, _wr) = client_io::plain(conn);
            let keep = |rd: &mut ClientRead| {
                if let Some((_, c)) = rd.idle_parts() {
                    *c = Some(Canceller::new());
                }
            };

            // A short exchange (done before the watch is due) keeps it for the next wait.
            keep(&mut rd);
            {
                let mut watch = ClientWatch::new(&mut rd);
                let quick = pin!(async { 7 });
                assert_eq!(watch.race(quick).await, Some(7));
                assert!(!watch.is_gone());
            }
            assert!(rd.keeps_canceller());

            // One that lasts (a stream) is watched, and gives it back for the rest.
            {
                let mut watch = ClientWatch::new(&mut rd);
                let slow = pin!(monoio::time::sleep(ARM_AFTER * 6));
                assert_eq!(watch.race(slow).await, Some(()));
                assert!(!watch.is_gone());
            }
            assert!(!rd.keeps_canceller());
        });
    }
}
