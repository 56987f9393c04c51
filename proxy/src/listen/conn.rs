//! One client connection: read requests (keep-alive, pipelining, limits, timeouts), answer
//! them in order, close when asked or when the framing can no longer be trusted.

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{self, BodyFraming, ChunkedDecoder, HeadLimits, RequestHead};

use crate::clock::deadlines::{within, Deadline};
use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::cold;
use crate::listen::endpoints::{self, Route};
use crate::listen::idle::{self, Read, Waited};
use crate::listen::respond;
use crate::request::settle::{settle, Answer, RequestFacts, Settlement};
use crate::request::{api, upload};
use crate::state::{InflightGuard, Slot, Worker};
use crate::telemetry::context::RequestTrace;

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
    /// Bytes received and not yet consumed (the start of the next request); a pooled buffer
    /// while a request is under way, no buffer at all while the connection is idle.
    buf: Vec<u8>,
}

/// Serves one accepted connection (plain, or TLS after its handshake) to its end.
///
/// The loop itself is small: between requests the connection waits in `listen::idle`, holding
/// no buffer once it parks. Each request's state (head, body, the exchange with its upstream
/// attempts) lives in one heap allocation made when the request's first bytes arrive and
/// freed when its answer is written, so ten thousand idle connections cost ten thousand small
/// tasks, not ten thousand exchanges' worth of state.
pub async fn serve_connection(slot: Rc<Slot>, (rd, wr): (ClientRead, ClientWrite)) {
    let mut client = Client {
        rd,
        wr,
        buf: Vec::new(),
    };
    loop {
        if client.buf.is_empty() {
            let worker = slot.current();
            match idle::wait_for_request(&worker, &mut client.rd).await {
                Waited::Data(b) => client.buf = b,
                Waited::Readable => {}
                Waited::Close => break,
            }
        }
        // Built in place in its allocation (the future is some 20 KiB: moving it would cost
        // more than the allocation).
        let request = Box::write(Box::new_uninit(), serve_request(&slot, &mut client));
        // Every request in flight (every stream) holds this allocation. monoio's timers are
        // cache-line padded (128-byte aligned on x86_64): one held inline would make mimalloc
        // round the ~10 KiB state up to its 12 KiB class, through its aligned path. Waits that
        // every request makes use coarse deadlines, rare ones box their timer (`clock`).
        debug_assert!(
            std::mem::align_of_val(&*request) <= 16,
            "request state aligned to {} bytes ({} bytes): a timer is held inline",
            std::mem::align_of_val(&*request),
            std::mem::size_of_val(&*request)
        );
        debug_assert!(
            std::mem::size_of_val(&*request) <= REQUEST_STATE_LIMIT,
            "request state of {} bytes, over mimalloc's {REQUEST_STATE_LIMIT}-byte class",
            std::mem::size_of_val(&*request)
        );
        let keep = Box::into_pin(request).await;
        idle::give_back(&mut client.buf);
        if !keep {
            break;
        }
    }
    client.wr.close().await;
}

/// The size class the request state must stay within: mimalloc's 7 KiB class. One byte more
/// and every request in flight (every stream, for its minutes) holds an 8 KiB block.
pub const REQUEST_STATE_LIMIT: usize = 7168;

/// Bytes of one request's state: `serve_request`'s future, the one heap allocation each
/// request in flight holds (see `serve_connection`). Printed by `alloc-count`, bounded by a
/// test and, in debug builds, at each request.
pub fn request_state_size() -> usize {
    fn output_size<A, B, R>(_: fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    output_size::<&Rc<Slot>, &mut Client, _>(serve_request)
}

/// Serves one request whose first bytes have arrived (or are ready to read); returns whether
/// the connection stays open for another.
///
/// Each request runs on the worker of the config generation current when it starts, and
/// keeps it to its end, so a reload never changes a request under way.
async fn serve_request(slot: &Rc<Slot>, client: &mut Client) -> bool {
    let worker = &slot.current();
    let cfg = &worker.shared.config.server;
    let limits = HeadLimits {
        max_header_bytes: cfg.max_header_bytes,
        max_body_bytes: cfg.max_body_bytes,
    };
    let (head, head_len, started) = match read_head(worker, client, &limits).await {
        Ok(x) => x,
        Err(Stop::Close) => return false,
        Err(Stop::Answer(err)) => {
            // The rare branches are made and polled out of line (`listen::cold`): their code
            // and temporaries stay out of the path every request runs.
            let bytes = respond::error(&err, false, &new_request_id());
            let _ = cold::boxed(|| client.wr.write_all(bytes)).await;
            return false;
        }
    };
    let _inflight = InflightGuard::new(worker);
    // Routed once here; a refused route is made again (with its error) only on that path.
    let route = endpoints::route(head.method(), head.path()).ok();
    // In a block: the scan and the read's result are gone before the exchange is awaited.
    let (body, mut rest) = {
        // A form whose `model` field is found before its end is streamed upstream from there.
        let scan = match route {
            Some(Route::Api(endpoint)) => upload::model_scan(endpoint, &head),
            _ => None,
        };
        let read = match scan {
            Some(scan) => {
                client.buf.drain(..head_len);
                cold::boxed(|| read_form_start(worker, client, &head, &limits, scan)).await
            }
            None => read_body(worker, client, (&head, head_len), &limits)
                .await
                .map(|b| (b, None)),
        };
        match read {
            Ok(read) => read,
            Err(stop) => {
                let request = request_facts(worker, &head, started);
                let mut answer = Answer::default();
                if let Stop::Answer(err) = stop {
                    let bytes = respond::error(&err, false, &request.request_id);
                    let status = err.status();
                    (_, answer) =
                        cold::boxed(|| api::write(&mut client.wr, bytes, status, false)).await;
                }
                settle(worker, &mut Settlement::local(request, answer));
                return false;
            }
        }
    };
    // Made once the body is read, by a plain function: a local that lived across the reads
    // above, or that this future borrowed, would keep its place in every request's state
    // (a stream's minutes included) after it is moved on to the exchange.
    // The request's record is made here and filled in place by the stages (borrowed, never
    // moved: passed and returned by value, its some 450 bytes were copied a dozen times).
    let mut settlement =
        Settlement::local(request_facts(worker, &head, started), Answer::default());
    settlement.request.bytes_in = body.len() as u64;
    // The read buffer goes back to the worker's spares for the rest of the exchange (unless
    // it holds the start of a pipelined request): a stream can last minutes, and two thousand
    // of them should not each hold 8 KiB they will not read into.
    idle::give_back(&mut client.buf);
    let keep_alive = head.keep_alive && !worker.shared.is_draining();
    let keep = respond_to(
        worker,
        client,
        (&head, route),
        (body, rest.as_mut()),
        keep_alive,
        &mut settlement,
    )
    .await;
    if let Some(r) = &rest {
        settlement.request.bytes_in += r.received();
    }
    settle(worker, &mut settlement);
    // A streamed body not read to its end (refused, or the exchange failed before it was
    // sent) leaves the connection's framing unknown.
    keep && rest.is_none_or(|r| r.is_done())
}

/// What settlement records of a request whose head was read at `started`.
fn request_facts(worker: &Worker, head: &RequestHead, started: Instant) -> RequestFacts {
    let mut request = RequestFacts {
        request_id: request_id(head),
        method: crate::telemetry::log::method_text(head.method()),
        path: crate::listen::endpoints::recorded_path(head.path()),
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
    request
}

/// Reads the start of a form body, up to its `model` field (see `request::upload`).
async fn read_form_start(
    worker: &Worker,
    client: &mut Client,
    head: &RequestHead,
    limits: &HeadLimits,
    scan: sluice_core::multipart::FieldScan,
) -> Result<(Vec<u8>, Option<upload::BodyRest>), Stop> {
    let cfg = &worker.shared.config.server;
    let deadline = Instant::now() + Duration::from_millis(cfg.body_read_timeout_ms);
    send_continue(client, head).await?;
    upload::read_form_start(
        &mut client.rd,
        &mut client.buf,
        head,
        limits.max_body_bytes,
        deadline,
        scan,
    )
    .await
    .map_err(|s| match s {
        upload::Stopped::Close => Stop::Close,
        upload::Stopped::Answer(e) => Stop::Answer(e),
    })
}

/// Answers `Expect: 100-continue` when the body has not started to arrive.
async fn send_continue(client: &mut Client, head: &RequestHead) -> Result<(), Stop> {
    if head.expect_continue && head.body != BodyFraming::Empty && client.buf.is_empty() {
        let (res, _) = client
            .wr
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await;
        if res.is_err() {
            return Err(Stop::Close);
        }
    }
    Ok(())
}

/// Reads until a complete request head is buffered, within the header timeout, which runs
/// from the request's first bytes (they have arrived, or are ready to read, when this runs).
/// Returns the head and its length: its bytes stay at the front of the buffer, for the body's
/// reader to consume with the body (a body that came with its head is copied once, not moved
/// to the buffer's front first).
async fn read_head(
    worker: &Worker,
    client: &mut Client,
    limits: &HeadLimits,
) -> Result<(RequestHead, usize, Instant), Stop> {
    let cfg = &worker.shared.config.server;
    let started = Instant::now();
    // The first read's limit is the whole timeout: `started` was read in this synchronous
    // stretch (no clock read for what has not elapsed).
    let mut first = true;
    loop {
        if !client.buf.is_empty() {
            match http1::parse_request_head(&client.buf, limits) {
                Ok(Some((head, len))) => return Ok((head, len, started)),
                Ok(None) => {}
                Err(e) => return Err(Stop::Answer(e)),
            }
        }
        let buf = std::mem::take(&mut client.buf);
        let timeout = Duration::from_millis(cfg.header_read_timeout_ms);
        let limit = if std::mem::take(&mut first) {
            timeout
        } else {
            timeout.saturating_sub(started.elapsed())
        };
        let was_empty = buf.is_empty();
        match idle::read_more(&mut client.rd, buf, limit).await {
            Read::Data(b) => client.buf = b,
            // A connection that was only readable closed (or failed) before a byte of a
            // request: a quiet close, like an idle timeout.
            Read::Eof | Read::Failed => return Err(Stop::Close),
            // Only the first read after a readable wake starts empty: nothing of a request came.
            Read::TimedOut if was_empty => return Err(Stop::Close),
            Read::TimedOut => {
                return Err(Stop::Answer(GatewayError::new(
                    ErrorKind::RequestTimeout,
                    "timed out reading the request head",
                )))
            }
        }
    }
}

/// Reads the body the head announced (the head's `head_len` bytes still lead the buffer),
/// within the body timeout and size limit.
async fn read_body(
    worker: &Worker,
    client: &mut Client,
    (head, head_len): (&RequestHead, usize),
    limits: &HeadLimits,
) -> Result<Vec<u8>, Stop> {
    let cfg = &worker.shared.config.server;
    // Set when a read is needed: a body that came with its head (most of them) reads no clock
    // and takes no deadline.
    let deadline = || Instant::now() + Duration::from_millis(cfg.body_read_timeout_ms);
    if let BodyFraming::Length(n) = head.body {
        // Copied from behind the head; the drain then moves only what follows the body (a
        // pipelined request's start, usually nothing).
        let n = n as usize;
        let have = (client.buf.len() - head_len).min(n);
        let mut body = Vec::with_capacity(n);
        body.extend_from_slice(&client.buf[head_len..head_len + have]);
        client.buf.drain(..head_len + have);
        if have == 0 {
            send_continue(client, head).await?;
        }
        return read_body_rest(client, body, n, &deadline).await;
    }
    client.buf.drain(..head_len);
    send_continue(client, head).await?;
    match head.body {
        BodyFraming::Empty | BodyFraming::UntilClose | BodyFraming::Length(_) => Ok(Vec::new()),
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(limits.max_body_bytes);
            let mut body = Vec::new();
            let mut until = None;
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
                let limit = until
                    .get_or_insert_with(deadline)
                    .saturating_duration_since(Instant::now());
                let buf = std::mem::take(&mut client.buf);
                match idle::read_more(&mut client.rd, buf, limit).await {
                    Read::Data(b) => client.buf = b,
                    Read::TimedOut => return Err(Stop::Answer(body_timeout())),
                    Read::Eof | Read::Failed => return Err(Stop::Close),
                }
            }
        }
    }
}

/// Reads the rest of a sized body (`n` bytes, of which `body` holds the start) by `deadline`
/// (read only when a read is needed).
async fn read_body_rest(
    client: &mut Client,
    mut body: Vec<u8>,
    n: usize,
    deadline: &dyn Fn() -> Instant,
) -> Result<Vec<u8>, Stop> {
    if body.len() < n {
        // A coarse deadline (`clock::deadlines`): no timer held in the request's state.
        let mut limit = Deadline::at(deadline());
        while body.len() < n {
            let len = body.len();
            let read = pin!(client.rd.read(body.slice_mut(len..n)));
            body = match within(&mut limit, read).await {
                Err(_) => return Err(Stop::Answer(body_timeout())),
                Ok((Ok(0), _)) | Ok((Err(_), _)) => return Err(Stop::Close),
                Ok((Ok(_), slice)) => slice.into_inner(),
            };
        }
    }
    Ok(body)
}

fn body_timeout() -> GatewayError {
    GatewayError::new(
        ErrorKind::RequestTimeout,
        "timed out reading the request body",
    )
}

/// Answers one request, filling in `settlement`; returns whether the connection stays open.
// Not an `async fn`: an async fn stores each by-value argument twice in its future (the
// argument and the local it is bound to, for the whole request, a stream's minutes
// included); the block below uses the captured arguments in place.
#[allow(clippy::manual_async_fn)]
fn respond_to<'a>(
    worker: &'a Worker,
    client: &'a mut Client,
    (head, route): (&'a RequestHead, Option<Route>),
    (body, rest): (Vec<u8>, Option<&'a mut upload::BodyRest>),
    keep_alive: bool,
    settlement: &'a mut Settlement,
) -> impl Future<Output = bool> + 'a {
    async move {
        let routed = route.map_or_else(|| endpoints::route(head.method(), head.path()), Ok);
        let Ok(Route::Api(endpoint)) = routed else {
            // Made and polled out of line (`listen::cold`): the answers the gateway makes
            // itself (health, readiness, models, a refused route) keep their code and
            // temporaries out of the path every API request runs.
            return cold::boxed(|| {
                answer_locally(worker, client, head, routed, keep_alive, settlement)
            })
            .await;
        };
        let call = api::Call {
            head,
            endpoint,
            keep_alive,
        };
        let served = api::serve(
            worker,
            call,
            (body, rest),
            settlement,
            &mut client.rd,
            &mut client.wr,
        )
        .await;
        // Pipelined bytes that arrived during the exchange follow those read before it.
        client.buf.extend_from_slice(&served.early);
        served.keep_alive
    }
}

/// Answers a request the gateway answers itself (anything but an API call), filling in
/// `settlement`'s answer; returns whether the connection stays open.
async fn answer_locally(
    worker: &Worker,
    client: &mut Client,
    head: &RequestHead,
    routed: Result<Route, (GatewayError, Option<Route>)>,
    keep_alive: bool,
    settlement: &mut Settlement,
) -> bool {
    let request_id = &settlement.request.request_id;
    let route = match routed {
        Ok(r) => r,
        Err((err, route)) => {
            let allow = route.map(endpoints::allow_for);
            let extra: Vec<(&str, &[u8])> = allow.map(|a| ("allow", a)).into_iter().collect();
            let bytes = respond::error_with(&err, &extra, keep_alive, request_id);
            return local(
                client,
                bytes,
                err.status(),
                keep_alive,
                &mut settlement.answer,
            )
            .await;
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
            // its state is shown; so is the fleet's shared state.
            if let Some(store) = endpoints::store_detail(worker) {
                detail["store"] = store;
            }
            if let Some(f) = worker.shared.fleet.as_ref() {
                detail["shared"] = f.status();
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
        Route::Model => match endpoints::model_body(worker, head.path()) {
            Ok(body) => (200, json(200, &body)),
            Err(err) => {
                let mut bytes = respond::error(&err, keep_alive, request_id);
                if head_only {
                    // A HEAD answer has the GET answer's head and no body.
                    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n");
                    bytes.truncate(end.map_or(bytes.len(), |i| i + 4));
                }
                (err.status(), bytes)
            }
        },
        // `respond_to` serves API calls itself; one that came here is a bug, answered as one.
        Route::Api(_) => {
            let err = GatewayError::new(ErrorKind::Internal, "an API call answered locally");
            (err.status(), respond::error(&err, keep_alive, request_id))
        }
    };
    local(client, bytes, status, keep_alive, &mut settlement.answer).await
}

/// Writes an answer the gateway makes itself.
async fn local(
    client: &mut Client,
    bytes: Vec<u8>,
    status: u16,
    keep_alive: bool,
    answer: &mut Answer,
) -> bool {
    let keep;
    (keep, *answer) = api::write(&mut client.wr, bytes, status, keep_alive).await;
    keep
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

/// `req_` and 16 hex digits, in one allocation (`format!` grows its string twice), written
/// as bytes first (a `push` per digit checked the capacity and encoded a char each time).
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u64(..);
    let mut id = *b"req_0000000000000000";
    for (k, b) in id[4..].iter_mut().enumerate() {
        *b = HEX[((n >> ((15 - k) * 4)) & 0xf) as usize];
    }
    // The bytes are ASCII: `from_utf8` cannot fail.
    String::from(std::str::from_utf8(&id).unwrap_or("req_0000000000000000"))
}

#[cfg(test)]
mod tests {
    use super::{new_request_id, request_state_size, REQUEST_STATE_LIMIT};

    #[test]
    fn the_request_state_stays_in_its_size_class() {
        let size = request_state_size();
        assert!(
            size <= REQUEST_STATE_LIMIT,
            "serve_request's future is {size} bytes, over mimalloc's {REQUEST_STATE_LIMIT}-byte class"
        );
    }

    #[test]
    fn new_request_ids_are_req_and_16_hex_digits() {
        let a = new_request_id();
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("req_"));
        assert!(a[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, new_request_id());
        // The digits are the random number's, most significant first.
        fastrand::seed(7);
        let n = fastrand::u64(..);
        fastrand::seed(7);
        assert_eq!(new_request_id(), format!("req_{n:016x}"));
    }
}
