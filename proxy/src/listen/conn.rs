//! One client connection: read requests (keep-alive, pipelining, limits, timeouts), answer
//! them in order, close when asked or when the framing can no longer be trusted.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{self, BodyFraming, ChunkedDecoder, HeadLimits, RequestHead};

use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::endpoints::{self, Route};
use crate::listen::respond;
use crate::request::auth::{self, KeyEntry};
use crate::request::client::ClientSide;
use crate::request::forward;
use crate::request::plan::ApiEndpoint;
use crate::state::{InflightGuard, Slot, Worker};
use crate::telemetry::context::RequestTrace;
use crate::telemetry::log::AccessRecord;

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
        let request_id = request_id(&head);
        let mut rec = AccessRecord {
            request_id: request_id.clone(),
            method: head.method().to_string(),
            path: head.path().to_string(),
            ..AccessRecord::default()
        };
        if crate::telemetry::trace::enabled() {
            rec.trace = RequestTrace::start(
                head.header("traceparent"),
                worker.shared.config.tracing.sample_ratio,
            );
            if rec.trace.is_some() {
                let since_start = started.elapsed();
                rec.start_unix_ns = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.saturating_sub(since_start).as_nanos() as u64);
            }
        }
        let body = match read_body(worker, client, &head, &limits).await {
            Ok(body) => body,
            Err(stop) => {
                if let Stop::Answer(err) = stop {
                    rec.status = err.status();
                    let bytes = respond::error(&err, false, &request_id);
                    let _ = client.wr.write_all(bytes).await;
                }
                rec.total_us = started.elapsed().as_micros() as u64;
                log_access(worker, &rec);
                return;
            }
        };
        rec.bytes_in = body.len() as u64;
        let keep_alive = head.keep_alive && !worker.shared.is_draining();
        let keep = respond_to(worker, client, &head, body, keep_alive, started, &mut rec).await;
        rec.total_us = started.elapsed().as_micros() as u64;
        log_access(worker, &rec);
        if !keep {
            return;
        }
    }
}

fn log_access(worker: &Worker, rec: &AccessRecord) {
    worker.metrics.observe(&worker.shared.config, rec);
    if rec.trace.is_some() {
        crate::telemetry::trace::export(crate::telemetry::trace::request_spans(
            rec,
            &worker.shared.config,
        ));
    }
    if worker.shared.config.log.access_log {
        rec.emit();
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

/// Answers one request; returns whether the connection stays open.
async fn respond_to(
    worker: &Worker,
    client: &mut Client,
    head: &RequestHead,
    body: Vec<u8>,
    keep_alive: bool,
    started: Instant,
    rec: &mut AccessRecord,
) -> bool {
    let request_id = rec.request_id.clone();
    let route = match endpoints::route(head.method(), head.path()) {
        Ok(r) => r,
        Err((err, route)) => {
            let allow = route.map(endpoints::allow_for);
            let extra: Vec<(&str, &[u8])> = allow.map(|a| ("allow", a)).into_iter().collect();
            let bytes = respond::error_with(&err, &extra, keep_alive, &request_id);
            return write_local(client, bytes, err.status(), keep_alive, rec).await;
        }
    };
    let head_only = head.method() == "HEAD";
    let local = |status: u16, body: &[u8]| {
        let mut bytes = respond::json(status, body, &[], keep_alive, &request_id);
        if head_only {
            bytes.truncate(bytes.len() - body.len());
        }
        bytes
    };
    match route {
        Route::Healthz => {
            let bytes = local(200, br#"{"status":"ok"}"#);
            write_local(client, bytes, 200, keep_alive, rec).await
        }
        Route::Readyz => {
            let (ready, reason) = endpoints::readiness(worker).await;
            let status = if ready { 200 } else { 503 };
            let body = serde_json::to_vec(&serde_json::json!({
                "status": if ready { "ready" } else { "not_ready" },
                "reason": reason,
            }))
            .unwrap_or_default();
            let bytes = local(status, &body);
            write_local(client, bytes, status, keep_alive, rec).await
        }
        Route::Metrics if worker.shared.config.admin.metrics_on_main => {
            let bytes = crate::admin::listener::metrics_response(&worker.shared, keep_alive);
            write_local(client, bytes, 200, keep_alive, rec).await
        }
        Route::Metrics => {
            let err = GatewayError::new(
                ErrorKind::RouteNotFound,
                "Unknown request URL: GET /metrics (metrics are on the admin listener)",
            );
            let bytes = respond::error(&err, keep_alive, &request_id);
            write_local(client, bytes, 404, keep_alive, rec).await
        }
        Route::Models => {
            let bytes = local(200, &endpoints::models_body(worker));
            write_local(client, bytes, 200, keep_alive, rec).await
        }
        Route::Api(endpoint) => {
            let call = ApiCall {
                head,
                endpoint,
                keep_alive,
                started,
            };
            api(worker, client, call, body, rec).await
        }
    }
}

/// An API request's context.
struct ApiCall<'h> {
    head: &'h RequestHead,
    endpoint: ApiEndpoint,
    keep_alive: bool,
    started: Instant,
}

/// An API request: authenticate (401), plan (400, 404), the key's model list (403), admit
/// (429), forward, then settle what it used and hand its usage to the ledger.
async fn api(
    worker: &Worker,
    client: &mut Client,
    call: ApiCall<'_>,
    body: Vec<u8>,
    rec: &mut AccessRecord,
) -> bool {
    let shared = &worker.shared;
    let auth = &shared.auth;
    let key = match auth.authenticate(call.head, auth::unix_now()) {
        Ok(k) => k,
        Err(err) => {
            // Unauthenticated requests are not written to the ledger (the access log and
            // metrics have them), so nobody without a key can grow the database.
            let bytes = respond::error(&err, call.keep_alive, &rec.request_id);
            return write_local(client, bytes, err.status(), call.keep_alive, rec).await;
        }
    };
    if let Some(k) = &key {
        rec.key_id = Some(k.id.to_string());
        rec.team = Some(k.team.name.to_string());
    }
    let plan = match forward::plan(worker, call.head, body, call.endpoint, rec) {
        Ok(p) => p,
        Err(err) => return refuse(worker, client, key, &err, &call, rec).await,
    };
    let mut admission = None;
    if let Some(k) = &key {
        if !k.record.allows_model(&plan.inspected.model) {
            let err = GatewayError::new(
                ErrorKind::Forbidden,
                format!(
                    "This API key may not use the model `{}`.",
                    plan.inspected.model
                ),
            )
            .with_param("model");
            return refuse(worker, client, key, &err, &call, rec).await;
        }
        match auth.admit(
            k,
            &shared.config,
            &shared.prices,
            plan.group,
            &plan.inspected,
            plan.body.len(),
        ) {
            Ok(a) => admission = Some(a),
            Err(err) => return refuse(worker, client, key, &err, &call, rec).await,
        }
    }
    let request_id = rec.request_id.clone();
    let side = ClientSide {
        request_id: &request_id,
        http10: call.head.version == 0,
        keep_alive: call.keep_alive,
        started: call.started,
        extra_headers: key
            .as_ref()
            .map(|k| auth.ratelimit_headers(k))
            .unwrap_or_default(),
    };
    let done = forward::execute(worker, plan, &mut client.rd, &mut client.wr, side, rec).await;
    if let Some(a) = admission {
        a.settle(rec);
    }
    rec.total_us = call.started.elapsed().as_micros() as u64;
    auth.record(&shared.config, key.as_deref(), rec);
    // Pipelined bytes that arrived during the exchange follow those read before it.
    client.buf.extend_from_slice(&done.early);
    done.keep_alive
}

/// Answers an authenticated API request locally with `err` (and the key's `x-ratelimit-*`
/// headers), and records it in the ledger.
async fn refuse(
    worker: &Worker,
    client: &mut Client,
    key: Option<Arc<KeyEntry>>,
    err: &GatewayError,
    call: &ApiCall<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let auth = &worker.shared.auth;
    let headers = key
        .as_ref()
        .map(|k| auth.ratelimit_headers(k))
        .unwrap_or_default();
    let extra: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let keep = call.keep_alive && !err.kind.closes_connection();
    let bytes = respond::error_with(err, &extra, keep, &rec.request_id);
    let keep = write_local(client, bytes, err.status(), keep, rec).await;
    rec.total_us = call.started.elapsed().as_micros() as u64;
    auth.record(&worker.shared.config, key.as_deref(), rec);
    keep
}

async fn write_local(
    client: &mut Client,
    bytes: Vec<u8>,
    status: u16,
    keep_alive: bool,
    rec: &mut AccessRecord,
) -> bool {
    rec.status = status;
    rec.bytes_out = bytes.len() as u64;
    let (res, _) = client.wr.write_all(bytes).await;
    res.is_ok() && keep_alive
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
