//! One client connection: read requests (keep-alive, pipelining, limits, timeouts), answer
//! them in order, close when asked or when the framing can no longer be trusted.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{self, BodyFraming, ChunkedDecoder, HeadLimits, RequestHead};

use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::endpoints::{self, Route};
use crate::listen::respond;
use crate::request::api;
use crate::request::settle::{settle, Answer, RequestFacts, Settlement};
use crate::state::{InflightGuard, Slot, Worker};
use crate::telemetry::context::RequestTrace;

/// Initial size of a connection's read buffer.
const READ_BUF: usize = 8 * 1024;

/// Outcome of a read with a time limit.
enum Read {
    Data(Vec<u8>),
    Eof,
    TimedOut,
    Failed,
}

/// Reads more bytes, appending to `buf`. On timeout the buffer is lost with the cancelled
/// read; the caller then closes the connection anyway.
async fn read_more(rd: &mut ClientRead, mut buf: Vec<u8>, limit: Duration) -> Read {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_BUF);
    }
    let len = buf.len();
    match monoio::time::timeout(limit, rd.read(buf.slice_mut(len..))).await {
        Err(_) => Read::TimedOut,
        Ok((Ok(0), _)) => Read::Eof,
        Ok((Ok(_), slice)) => Read::Data(slice.into_inner()),
        Ok((Err(_), _)) => Read::Failed,
    }
}

/// How long an idle keep-alive connection of a draining gateway still waits for a request.
///
/// Closing idle connections the moment the drain starts races with clients that picked the
/// connection from their pool and are sending on it: their request would meet a closed socket
/// (a reset, no answer). Instead the connection keeps its read posted for this grace: a
/// request that arrives is answered with `connection: close`, and only a connection that
/// stays silent is closed. A client can still send in the instant the grace ends; that is the
/// HTTP/1.1 idle-close race every keep-alive client has to retry anyway, now confined to
/// connections idle for the whole grace.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// Waits for the first bytes of the next request on an idle connection: up to the keep-alive
/// idle timeout, or, once the worker drains, up to [`DRAIN_IDLE_GRACE`] more. The read is
/// never dropped when the drain starts (it stays pinned and keeps running), so bytes that
/// arrive at that moment are not lost with a cancelled read.
async fn idle_read(worker: &Worker, rd: &mut ClientRead, buf: Vec<u8>) -> Read {
    let keepalive = Duration::from_millis(worker.shared.config.server.keepalive_idle_timeout_ms);
    let mut read = std::pin::pin!(read_more(rd, buf, keepalive));
    if !worker.shared.is_draining() {
        monoio::select! {
            r = &mut read => return r,
            _ = worker.drain_started() => {}
        }
    }
    match monoio::time::timeout(DRAIN_IDLE_GRACE.min(keepalive), read).await {
        Ok(r) => r,
        Err(_) => Read::TimedOut,
    }
}

/// Why the connection loop stops reading.
enum Stop {
    /// Close quietly (EOF, idle timeout, I/O error).
    Close,
    /// Answer this error, then close.
    Answer(GatewayError),
}

/// The client connection's halves and its pending input.
struct Client {
    rd: ClientRead,
    wr: ClientWrite,
    /// Bytes received and not yet consumed (the start of the next request).
    buf: Vec<u8>,
}

/// Serves one accepted connection (plain, or TLS after its handshake) to its end.
pub async fn serve_connection(slot: Rc<Slot>, (rd, wr): (ClientRead, ClientWrite)) {
    let mut client = Client {
        rd,
        wr,
        buf: Vec::with_capacity(READ_BUF),
    };
    serve_requests(&slot, &mut client).await;
    client.wr.close().await;
}

/// The request loop of [`serve_connection`]; returns when the connection should close.
///
/// Each request runs on the worker of the config generation current when it starts, and
/// keeps it to its end, so a reload never changes a request under way.
async fn serve_requests(slot: &Rc<Slot>, client: &mut Client) {
    loop {
        let worker = &slot.current();
        let cfg = &worker.shared.config.server;
        let limits = HeadLimits {
            max_header_bytes: cfg.max_header_bytes,
            max_body_bytes: cfg.max_body_bytes,
        };
        let (head, started) = match read_head(worker, client, &limits).await {
            Ok(x) => x,
            Err(Stop::Close) => return,
            Err(Stop::Answer(err)) => {
                let bytes = respond::error(&err, false, &new_request_id());
                let _ = client.wr.write_all(bytes).await;
                return;
            }
        };
        // A reload while the connection was idle applies to this request.
        let worker = &slot.current();
        let _inflight = InflightGuard::new(worker);
        let mut request = RequestFacts {
            request_id: request_id(&head),
            method: head.method().to_string(),
            path: head.path().to_string(),
            started,
            bytes_in: 0,
            trace: None,
            start_unix_ns: 0,
        };
        if crate::telemetry::trace::enabled() {
            request.trace = RequestTrace::start(
                head.header("traceparent"),
                worker.shared.config.tracing.sample_ratio,
            );
            if request.trace.is_some() {
                request.start_unix_ns = crate::clock::unix_ns_ago(started.elapsed());
            }
        }
        let body = match read_body(worker, client, &head, &limits).await {
            Ok(body) => body,
            Err(stop) => {
                let mut answer = Answer::default();
                if let Stop::Answer(err) = stop {
                    let bytes = respond::error(&err, false, &request.request_id);
                    (_, answer) = api::write(&mut client.wr, bytes, err.status(), false).await;
                }
                settle(worker, Settlement::local(request, answer));
                return;
            }
        };
        request.bytes_in = body.len() as u64;
        let keep_alive = head.keep_alive && !worker.shared.is_draining();
        let (keep, settlement) = respond_to(worker, client, &head, body, keep_alive, request).await;
        settle(worker, settlement);
        if !keep {
            return;
        }
    }
}

/// Reads until a complete request head is buffered. The header timeout runs from the first
/// byte of the request; before it, the idle keep-alive timeout applies.
async fn read_head(
    worker: &Worker,
    client: &mut Client,
    limits: &HeadLimits,
) -> Result<(RequestHead, Instant), Stop> {
    let cfg = &worker.shared.config.server;
    let mut started = (!client.buf.is_empty()).then(Instant::now);
    loop {
        if !client.buf.is_empty() {
            match http1::parse_request_head(&client.buf, limits) {
                Ok(Some((head, len))) => {
                    client.buf.drain(..len);
                    return Ok((head, started.unwrap_or_else(Instant::now)));
                }
                Ok(None) => {}
                Err(e) => return Err(Stop::Answer(e)),
            }
        }
        let buf = std::mem::take(&mut client.buf);
        let read = match started {
            None => idle_read(worker, &mut client.rd, buf).await,
            Some(t) => {
                let limit =
                    Duration::from_millis(cfg.header_read_timeout_ms).saturating_sub(t.elapsed());
                read_more(&mut client.rd, buf, limit).await
            }
        };
        match read {
            Read::Data(b) => {
                client.buf = b;
                started.get_or_insert_with(Instant::now);
            }
            Read::Eof | Read::Failed => return Err(Stop::Close),
            Read::TimedOut if started.is_some() => {
                return Err(Stop::Answer(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    "timed out reading the request head",
                )))
            }
            Read::TimedOut => return Err(Stop::Close),
        }
    }
}

/// Reads the body the head announced, within the body timeout and size limit.
async fn read_body(
    worker: &Worker,
    client: &mut Client,
    head: &RequestHead,
    limits: &HeadLimits,
) -> Result<Vec<u8>, Stop> {
    let cfg = &worker.shared.config.server;
    let deadline = Instant::now() + Duration::from_millis(cfg.body_read_timeout_ms);
    if head.expect_continue && head.body != BodyFraming::Empty && client.buf.is_empty() {
        let (res, _) = client
            .wr
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await;
        if res.is_err() {
            return Err(Stop::Close);
        }
    }
    match head.body {
        BodyFraming::Empty | BodyFraming::UntilClose => Ok(Vec::new()),
        BodyFraming::Length(n) => {
            let n = n as usize;
            let have = client.buf.len().min(n);
            let mut body = Vec::with_capacity(n);
            body.extend_from_slice(&client.buf[..have]);
            client.buf.drain(..have);
            while body.len() < n {
                let limit = deadline.saturating_duration_since(Instant::now());
                let len = body.len();
                let read =
                    monoio::time::timeout(limit, client.rd.read(body.slice_mut(len..n))).await;
                body = match read {
                    Err(_) => return Err(Stop::Answer(body_timeout())),
                    Ok((Ok(0), _)) | Ok((Err(_), _)) => return Err(Stop::Close),
                    Ok((Ok(_), slice)) => slice.into_inner(),
                };
            }
            Ok(body)
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits.max_body_bytes);
            let mut body = Vec::new();
            loop {
                let (used, done) =
                    decoder
                        .decode_into(&client.buf, &mut body)
                        .map_err(|e| match e {
                            http1::ChunkedError::TooLarge => {
                                Stop::Answer(http1::too_large_body(limits))
                            }
                            other => Stop::Answer(GatewayError::new(
                                ErrorKind::RequestSmuggling,
                                format!("invalid chunked body: {other}"),
                            )),
                        })?;
                client.buf.drain(..used);
                if done {
                    return Ok(body);
                }
                let limit = deadline.saturating_duration_since(Instant::now());
                let buf = std::mem::take(&mut client.buf);
                match read_more(&mut client.rd, buf, limit).await {
                    Read::Data(b) => client.buf = b,
                    Read::TimedOut => return Err(Stop::Answer(body_timeout())),
                    Read::Eof | Read::Failed => return Err(Stop::Close),
                }
            }
        }
    }
}

fn body_timeout() -> GatewayError {
    GatewayError::new(
        ErrorKind::RequestTimeout,
        "timed out reading the request body",
    )
}

/// Answers one request; returns whether the connection stays open, and what to settle.
async fn respond_to(
    worker: &Worker,
    client: &mut Client,
    head: &RequestHead,
    body: Vec<u8>,
    keep_alive: bool,
    request: RequestFacts,
) -> (bool, Settlement) {
    let request_id = &request.request_id;
    let route = match endpoints::route(head.method(), head.path()) {
        Ok(r) => r,
        Err((err, route)) => {
            let allow = route.map(endpoints::allow_for);
            let extra: Vec<(&str, &[u8])> = allow.map(|a| ("allow", a)).into_iter().collect();
            let bytes = respond::error_with(&err, &extra, keep_alive, request_id);
            return local(client, bytes, err.status(), keep_alive, request).await;
        }
    };
    let head_only = head.method() == "HEAD";
    let json = |status: u16, body: &[u8]| {
        let mut bytes = respond::json(status, body, &[], keep_alive, request_id);
        if head_only {
            bytes.truncate(bytes.len() - body.len());
        }
        bytes
    };
    let (status, bytes) = match route {
        Route::Healthz => (200, json(200, br#"{"status":"ok"}"#)),
        Route::Readyz => {
            let (ready, reason) = endpoints::readiness(worker).await;
            let status = if ready { 200 } else { 503 };
            let mut detail = serde_json::json!({
                "status": if ready { "ready" } else { "not_ready" },
                "reason": reason,
            });
            // The store does not decide readiness (requests flow while it is down), but
            // its state is shown.
            if let Some(store) = endpoints::store_detail(worker) {
                detail["store"] = store;
            }
            let body = serde_json::to_vec(&detail).unwrap_or_default();
            (status, json(status, &body))
        }
        Route::Metrics if worker.shared.config.admin.metrics_on_main => (
            200,
            crate::admin::listener::metrics_response(&worker.shared, keep_alive),
        ),
        Route::Metrics => {
            let err = GatewayError::new(
                ErrorKind::RouteNotFound,
                "Unknown request URL: GET /metrics (metrics are on the admin listener)",
            );
            (404, respond::error(&err, keep_alive, request_id))
        }
        Route::Models => (200, json(200, &endpoints::models_body(worker))),
        Route::Api(endpoint) => {
            let call = api::Call {
                head,
                endpoint,
                keep_alive,
            };
            let served =
                api::serve(worker, call, body, request, &mut client.rd, &mut client.wr).await;
            // Pipelined bytes that arrived during the exchange follow those read before it.
            client.buf.extend_from_slice(&served.early);
            return (served.keep_alive, served.settlement);
        }
    };
    local(client, bytes, status, keep_alive, request).await
}

/// Writes an answer the gateway makes itself.
async fn local(
    client: &mut Client,
    bytes: Vec<u8>,
    status: u16,
    keep_alive: bool,
    request: RequestFacts,
) -> (bool, Settlement) {
    let (keep, answer) = api::write(&mut client.wr, bytes, status, keep_alive).await;
    (keep, Settlement::local(request, answer))
}

/// The client's `x-request-id` when it is a sane token, else a new one.
fn request_id(head: &RequestHead) -> String {
    match head.header_str("x-request-id") {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_string()
        }
        _ => new_request_id(),
    }
}

fn new_request_id() -> String {
    format!("req_{:016x}", fastrand::u64(..))
}
