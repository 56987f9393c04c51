//! One client connection: read requests, carry out their [`Plan`]s in order,
//! and notice promptly when the client goes away.
//!
//! The stream is split once. The [`Reader`] owns the receive buffer and
//! parses requests from it; the [`Writer`] owns the send buffers. Answers that
//! wait (first-token delay, chunk delay, stall) race the writer against a
//! watch read on the reader: the read returning EOF or an error means the
//! client cancelled. The watch read is cancelled through a [`Canceller`] and
//! awaited, so the buffer comes back and any bytes of a pipelined next
//! request stay in it. A client that half-closes its sending side while an
//! answer waits counts as gone: LLM clients do not half-close, and a
//! cancelling proxy closes the whole socket.

use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    Canceller, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

use super::behaviour::{plan, Body, Overrides, Plan, Reply};
use super::http::{self, BodyAt, BodyKind, HttpError, MAX_BODY_BYTES, MAX_HEADERS, MAX_HEAD_BYTES};
use super::race::{race, Either};
use super::request::{record, Exchange};
use super::shapes;
use super::stats::{Counter, Shared};
use super::stream::{EventWriter, StreamSpec};
use super::surface;
use super::MockConfig;

/// Free space kept in the receive buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// Most bytes buffered from a client (a chunked body is larger raw than decoded).
const MAX_BUFFERED: usize = MAX_HEAD_BYTES + 2 * MAX_BODY_BYTES;
/// Stream bytes gathered before a write even when no delay asks for one.
const FLUSH_AT: usize = 64 * 1024;
/// How long a closing connection drains the client's bytes, so our last
/// answer is not lost to a reset.
const LINGER: Duration = Duration::from_millis(500);

/// What every connection of a worker shares.
pub(crate) struct Ctx {
    pub(crate) cfg: MockConfig,
    pub(crate) shared: Arc<Shared>,
}

/// Serves one connection until the client leaves or an answer closes it.
pub(crate) async fn serve(stream: TcpStream, ctx: Rc<Ctx>) {
    ctx.shared.bump(Counter::Connections);
    // Stream chunks must leave at once; Nagle would hold them back.
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut reader = Reader {
        rd,
        buf: Vec::with_capacity(READ_RESERVE),
        start: 0,
        scratch: Vec::new(),
    };
    let mut writer = Writer {
        wr,
        out: Vec::with_capacity(READ_RESERVE),
        body: Vec::new(),
        events: EventWriter::default(),
    };
    let mut continue_sent = false;
    loop {
        match reader.next_request(&ctx) {
            Next::Request(plan, mode) => {
                continue_sent = false;
                let outcome = if plan.waits() {
                    watched(&mut reader, &mut writer, plan, mode, &ctx).await
                } else {
                    writer.answer(plan, mode, &ctx).await
                };
                match outcome {
                    Outcome::KeepAlive => {}
                    Outcome::Close => return linger(reader, writer).await,
                    Outcome::Abort => return,
                }
            }
            Next::NeedMore { expect_continue } => {
                if expect_continue && !continue_sent {
                    continue_sent = true;
                    writer.out.extend_from_slice(http::CONTINUE);
                    if writer.flush().await.is_err() {
                        return;
                    }
                }
                match reader.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            Next::Invalid(err) => {
                writer.error(err.status(), &err.to_string(), AnswerMode::CLOSE);
                if writer.flush().await.is_ok() {
                    linger(reader, writer).await;
                }
                return;
            }
        }
    }
}

/// How an answer is framed and whether the connection outlives it.
#[derive(Debug, Clone, Copy)]
struct AnswerMode {
    /// Close the connection after this answer.
    close: bool,
    http10: bool,
}

impl AnswerMode {
    const CLOSE: AnswerMode = AnswerMode {
        close: true,
        http10: false,
    };
}

/// What the connection does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    KeepAlive,
    /// Close politely: half-close, drain, close.
    Close,
    /// Drop the connection now (client gone, or an injected disconnect).
    Abort,
}

enum Next {
    Request(Plan, AnswerMode),
    NeedMore { expect_continue: bool },
    Invalid(HttpError),
}

/// How a watch read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Cancelled by us: the client is still there.
    Cancelled,
    /// EOF or error: the client went away.
    Gone,
    /// The client kept sending past [`MAX_BUFFERED`].
    Flooded,
}

struct Reader {
    rd: OwnedReadHalf<TcpStream>,
    /// Received bytes; `buf[start..]` is not parsed yet.
    buf: Vec<u8>,
    start: usize,
    /// Decoded chunked request body.
    scratch: Vec<u8>,
}

impl Reader {
    /// Parses the next request if it is all there, and plans its answer.
    fn next_request(&mut self, ctx: &Ctx) -> Next {
        let pending = &self.buf[self.start..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = match http::parse_head(pending, &mut headers) {
            Ok(Some(head)) => head,
            Ok(None) => {
                return Next::NeedMore {
                    expect_continue: false,
                }
            }
            Err(err) => return Next::Invalid(err),
        };
        let rest = &pending[head.len..];
        let (at, body_len) = match http::locate_body(rest, head.framing, &mut self.scratch) {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Next::NeedMore {
                    expect_continue: head.expect_continue,
                }
            }
            Err(err) => return Next::Invalid(err),
        };
        let body = match at {
            BodyAt::Inline(range) => &rest[range],
            BodyAt::Scratch => &self.scratch[..],
        };
        let exchange = Exchange::read(&head, body);
        if !exchange.endpoint.is_control() {
            ctx.shared.bump(Counter::Requests);
            ctx.shared.record(record(&head, body));
        }
        let plan = plan(exchange, Overrides::from_head(&head), &ctx.cfg, &ctx.shared);
        let mode = AnswerMode {
            close: !head.keep_alive,
            http10: head.http10,
        };
        self.start += head.len + body_len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Next::Request(plan, mode)
    }

    /// Makes room at the end of the buffer, moving unparsed bytes to the front.
    fn make_room(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        if self.buf.len() >= MAX_BUFFERED {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "request too large",
            ));
        }
        self.buf.reserve(READ_RESERVE);
        Ok(())
    }

    /// Reads more bytes; `Ok(0)` is EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.make_room()?;
        let len = self.buf.len();
        let buf = std::mem::take(&mut self.buf);
        let (res, slice) = self.rd.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Reads until the client goes away or `cancel` fires; bytes received
    /// meanwhile are kept for the next request.
    async fn watch(&mut self, cancel: CancelHandle) -> Watch {
        loop {
            if self.make_room().is_err() {
                return Watch::Flooded;
            }
            let len = self.buf.len();
            let buf = std::mem::take(&mut self.buf);
            let (res, slice) = self
                .rd
                .cancelable_read(buf.slice_mut(len..), cancel.clone())
                .await;
            self.buf = slice.into_inner();
            match res {
                Ok(0) => return Watch::Gone,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return Watch::Cancelled,
                Err(_) => return Watch::Gone,
            }
        }
    }
}

/// Carries out a plan that waits, while watching for the client leaving.
async fn watched(
    reader: &mut Reader,
    writer: &mut Writer,
    plan: Plan,
    mode: AnswerMode,
    ctx: &Ctx,
) -> Outcome {
    let canceller = Canceller::new();
    let mut watch = pin!(reader.watch(canceller.handle()));
    match race(writer.answer(plan, mode, ctx), &mut watch).await {
        Either::Left(outcome) => {
            canceller.cancel();
            match watch.await {
                Watch::Cancelled => outcome,
                Watch::Gone | Watch::Flooded => Outcome::Abort,
            }
        }
        Either::Right(watch) => {
            if watch == Watch::Gone {
                ctx.shared.bump(Counter::StreamsCancelled);
            }
            Outcome::Abort
        }
    }
}

/// Half-closes, then drains what the client still sends for a while, so it
/// reads our last answer instead of a reset.
async fn linger(mut reader: Reader, mut writer: Writer) {
    let _ = writer.wr.shutdown().await;
    let drain = async {
        loop {
            reader.buf.clear();
            reader.start = 0;
            if !matches!(reader.fill().await, Ok(n) if n > 0) {
                return;
            }
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

struct Writer {
    wr: OwnedWriteHalf<TcpStream>,
    /// Bytes to send next.
    out: Vec<u8>,
    /// A JSON body being rendered, before its head is known.
    body: Vec<u8>,
    events: EventWriter,
}

impl Writer {
    /// Writes all of `out` and clears it.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.wr.write_all(out).await;
        out.clear();
        self.out = out;
        res.map(drop)
    }

    /// [`Writer::flush`] for the last bytes of an answer: bumps the given
    /// counters first, so a client that read the whole answer finds it
    /// counted, and takes them back if the write fails.
    async fn flush_counted(&mut self, shared: &Shared, counters: &[Counter]) -> io::Result<()> {
        counters.iter().for_each(|&c| shared.bump(c));
        let res = self.flush().await;
        if res.is_err() {
            counters.iter().for_each(|&c| shared.unbump(c));
        }
        res
    }

    /// Carries out `plan`.
    async fn answer(&mut self, plan: Plan, mode: AnswerMode, ctx: &Ctx) -> Outcome {
        if matches!(plan.reply, Reply::Stream { .. }) {
            ctx.shared.bump(Counter::StreamsStarted);
        }
        if plan.delay_ms > 0 {
            monoio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
        }
        match plan.reply {
            Reply::Body {
                status,
                body,
                retry_after_s,
            } => {
                let control = matches!(body, Body::Stats | Body::Reset);
                self.render(status, &body, &ctx.shared);
                http::write_head(
                    &mut self.out,
                    status,
                    BodyKind::Sized(body.content_type(), self.body.len()),
                    retry_after_s,
                    mode.close,
                    mode.http10,
                );
                self.out.extend_from_slice(&self.body);
                let counted: &[Counter] = if control {
                    &[]
                } else {
                    &[Counter::ResponsesCompleted]
                };
                if self.flush_counted(&ctx.shared, counted).await.is_err() {
                    return Outcome::Abort;
                }
                if mode.close {
                    Outcome::Close
                } else {
                    Outcome::KeepAlive
                }
            }
            Reply::Stream {
                spec,
                chunk_delay_ms,
                disconnect_after,
            } => {
                let res = self
                    .stream(&spec, chunk_delay_ms, disconnect_after, mode, &ctx.shared)
                    .await;
                match res {
                    Ok(StreamEnd::Finished) => {
                        // HTTP/1.0 streams end when the connection does.
                        if mode.close || mode.http10 {
                            Outcome::Close
                        } else {
                            Outcome::KeepAlive
                        }
                    }
                    Ok(StreamEnd::Disconnected) => Outcome::Abort,
                    Err(_) => {
                        ctx.shared.bump(Counter::StreamsCancelled);
                        Outcome::Abort
                    }
                }
            }
            Reply::Stall => std::future::pending().await,
            Reply::Disconnect => Outcome::Abort,
        }
    }

    /// Writes a stream: everything ready is sent at once, and each chunk
    /// delay flushes what came before it.
    async fn stream(
        &mut self,
        spec: &StreamSpec,
        chunk_delay_ms: u64,
        disconnect_after: Option<u32>,
        mode: AnswerMode,
        shared: &Shared,
    ) -> io::Result<StreamEnd> {
        let chunks = spec.chunks();
        let stop_at = disconnect_after.map(|n| n.min(chunks));
        self.events.chunked = !mode.http10;
        http::write_head(
            &mut self.out,
            200,
            BodyKind::EventStream(spec.content_type()),
            None,
            mode.close || mode.http10,
            mode.http10,
        );
        spec.prelude(&mut self.events, &mut self.out);
        for i in 0..chunks {
            if stop_at == Some(i) {
                self.flush().await?;
                return Ok(StreamEnd::Disconnected);
            }
            if i > 0 && chunk_delay_ms > 0 {
                self.flush().await?;
                monoio::time::sleep(Duration::from_millis(chunk_delay_ms)).await;
            } else if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
            spec.content(&mut self.events, &mut self.out);
        }
        if stop_at == Some(chunks) {
            self.flush().await?;
            return Ok(StreamEnd::Disconnected);
        }
        spec.finish(&mut self.events, &mut self.out);
        let counted = [Counter::StreamsCompleted, Counter::ResponsesCompleted];
        self.flush_counted(shared, &counted).await?;
        Ok(StreamEnd::Finished)
    }

    /// Renders a JSON body into `self.body`.
    fn render(&mut self, status: u16, body: &Body, shared: &Shared) {
        let out = &mut self.body;
        out.clear();
        match body {
            Body::Chat(a) => shapes::chat(out, a),
            Body::Completion(a) => shapes::completion(out, a),
            Body::Embeddings(a) => shapes::embeddings(out, a),
            Body::Responses(a) => shapes::responses(out, a),
            Body::Messages(a) => shapes::messages(out, a),
            Body::CountTokens(a) => surface::count_tokens(out, a),
            Body::Moderation(a) => surface::moderation(out, a),
            Body::Image(a) => surface::image(out, a),
            Body::Transcription(a) => surface::transcription(out, a),
            Body::Speech(a) => surface::speech(out, a),
            Body::Gemini(a) => surface::gemini(out, a),
            Body::Bedrock(a) => super::bedrock::converse(out, a),
            Body::Models => shapes::models(out),
            Body::Json(json) => out.extend_from_slice(json.as_bytes()),
            Body::Stats => shapes::stats(out, &shared.snapshot()),
            Body::Reset => {
                shared.reset();
                out.extend_from_slice(b"{\"reset\":true}");
            }
            Body::Error(message) => shapes::error(out, status, message),
        }
    }

    /// Puts a complete error answer in `out`.
    fn error(&mut self, status: u16, message: &str, mode: AnswerMode) {
        self.body.clear();
        shapes::error(&mut self.body, status, message);
        http::write_head(
            &mut self.out,
            status,
            BodyKind::Sized("application/json", self.body.len()),
            None,
            mode.close,
            mode.http10,
        );
        self.out.extend_from_slice(&self.body);
    }
}

/// How a stream ended, short of a write error.
enum StreamEnd {
    Finished,
    /// `x-mock-disconnect-after` reached.
    Disconnected,
}
