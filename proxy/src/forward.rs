//! Forwarding one API request: choose a deployment, build the upstream request, send it on a
//! pooled (or new) connection, read the response head, and hand the body to the relay.

use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use sluice_core::config::Provider;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::{
    is_hop_by_hop, parse_response_head, BodyFraming, RequestHead, ResponseHead,
};
use sluice_core::inspect::{self, Rewrite};
use sluice_core::route::pick_weighted;
use sluice_core::sse::SseScanner;
use sluice_core::usage::Usage;

use crate::endpoints::ApiEndpoint;
use crate::log::{AccessRecord, Attempt};
use crate::relay::{BodyLimits, BodyMode, ClientWatch, Relay};
use crate::respond::{self, write_head, ClientFraming};
use crate::state::Worker;
use crate::upstream::{self, UpstreamConn, UpstreamError};

/// Largest upstream response head accepted.
const MAX_UPSTREAM_HEAD: usize = 64 * 1024;

/// A request ready to send: where, and the exact bytes.
pub struct Plan {
    /// Provider index.
    pub provider: usize,
    /// `provider/model`, sent back as `x-sluice-deployment`.
    pub deployment: String,
    /// Request head and body for the upstream.
    pub request: Vec<u8>,
    /// The client asked for a stream.
    pub stream: bool,
    /// The gateway added `include_usage`: strip the usage chunk from what the client sees.
    pub strip_usage: bool,
    /// The client's request body size, for estimates.
    pub body_len: usize,
    /// Span id of the attempt, when traced.
    pub span_id: Option<[u8; 8]>,
}

/// Client headers never forwarded: credentials meant for the gateway, and what the gateway
/// sets itself. `accept-encoding` is dropped so the upstream answers uncompressed and usage
/// can be read.
fn forwardable(name: &str) -> bool {
    const DROP: [&str; 8] = [
        "authorization",
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "cookie",
        "content-type",
        "accept-encoding",
        "x-request-id",
    ];
    !is_hop_by_hop(name)
        && !DROP.iter().any(|d| d.eq_ignore_ascii_case(name))
        && !name
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-sluice-"))
}

/// Inspects the body, picks a deployment and builds the upstream request.
pub fn plan(
    worker: &Worker,
    head: &RequestHead,
    body: &[u8],
    endpoint: ApiEndpoint,
    request_id: &str,
    rec: &mut AccessRecord,
) -> Result<Plan, GatewayError> {
    let inspected = inspect::inspect(body)?;
    rec.model = Some(inspected.model.clone());
    rec.stream = inspected.stream;
    let cfg = &worker.shared.config;
    let not_found = || {
        GatewayError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{}` does not exist", inspected.model),
        )
        .with_param("model")
    };
    let group_index = cfg.model_index(&inspected.model).ok_or_else(not_found)?;
    let group = cfg.models.get(group_index).ok_or_else(not_found)?;
    let pick_index = pick_weighted(&group.deployments, fastrand::u64(..))
        .ok_or_else(|| GatewayError::new(ErrorKind::UpstreamUnavailable, "no deployment"))?;
    let pick = group
        .deployments
        .get(pick_index)
        .ok_or_else(|| GatewayError::new(ErrorKind::UpstreamUnavailable, "no deployment"))?;
    rec.route = Some((group_index, pick_index));
    let provider = cfg
        .providers
        .get(pick.provider)
        .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "deployment without provider"))?;
    let upstream_model = (pick.model != "*").then_some(pick.model.as_str());
    let strip_usage =
        inspected.stream && endpoint.takes_stream_options() && !inspected.include_usage;
    let edits = Rewrite {
        model: upstream_model,
        force_include_usage: strip_usage,
    };

    let mut req = Vec::with_capacity(512 + body.len() + 64);
    build_head(
        &mut req,
        provider,
        head,
        endpoint,
        request_id,
        inspected.stream,
        rec.trace.is_some(),
    );
    // A traced request continues as our attempt span; otherwise the client's own
    // `traceparent` passes through untouched.
    let span_id = rec.trace.map(|t| {
        let span = crate::trace::new_span_id();
        push_header(&mut req, "traceparent", t.traceparent_for(span).as_bytes());
        span
    });
    if edits.is_noop(&inspected) {
        push_content_length(&mut req, body.len());
        req.extend_from_slice(body);
    } else {
        let mut rewritten = Vec::with_capacity(body.len() + 64);
        inspect::rewrite(body, &inspected, edits, &mut rewritten);
        push_content_length(&mut req, rewritten.len());
        req.extend_from_slice(&rewritten);
    }
    rec.deployment = Some(pick.label.clone());
    Ok(Plan {
        provider: pick.provider,
        deployment: pick.label.clone(),
        request: req,
        stream: inspected.stream,
        strip_usage,
        body_len: body.len(),
        span_id,
    })
}

fn build_head(
    req: &mut Vec<u8>,
    provider: &Provider,
    head: &RequestHead,
    endpoint: ApiEndpoint,
    request_id: &str,
    stream: bool,
    traced: bool,
) {
    req.extend_from_slice(b"POST ");
    req.extend_from_slice(provider.endpoint.path_prefix.as_bytes());
    req.extend_from_slice(endpoint.upstream_suffix().as_bytes());
    if let Some((_, query)) = head.target().split_once('?') {
        req.push(b'?');
        req.extend_from_slice(query.as_bytes());
    }
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(provider.endpoint.host_header.as_bytes());
    req.extend_from_slice(b"\r\ncontent-type: application/json\r\nx-request-id: ");
    req.extend_from_slice(request_id.as_bytes());
    req.extend_from_slice(b"\r\n");
    if let Some(key) = &provider.api_key {
        req.extend_from_slice(b"authorization: Bearer ");
        req.extend_from_slice(key.expose().as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    for (name, value) in &provider.headers {
        push_header(req, name, value.as_bytes());
    }
    let mut saw_accept = false;
    for (name, value) in head.headers() {
        if forwardable(name)
            && !(traced && name.eq_ignore_ascii_case("traceparent"))
            && !provider
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            saw_accept |= name.eq_ignore_ascii_case("accept");
            push_header(req, name, value);
        }
    }
    if stream && !saw_accept {
        req.extend_from_slice(b"accept: text/event-stream\r\n");
    }
}

fn push_header(req: &mut Vec<u8>, name: &str, value: &[u8]) {
    req.extend_from_slice(name.as_bytes());
    req.extend_from_slice(b": ");
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
}

fn push_content_length(req: &mut Vec<u8>, len: usize) {
    req.extend_from_slice(b"content-length: ");
    req.extend_from_slice(respond::itoa_u64(len as u64).as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
}

/// What the exchange left for the client connection.
pub struct Exchanged {
    /// The client connection can carry another request.
    pub keep_alive: bool,
    /// Bytes of the client's next request that arrived during the exchange.
    pub early: Vec<u8>,
}

/// Runs the exchange: sends `plan` upstream and relays the answer to the client. Errors before
/// the response head reached the client are answered as JSON here.
pub async fn execute(
    worker: &Worker,
    plan: Plan,
    rd: &mut OwnedReadHalf<TcpStream>,
    wr: &mut OwnedWriteHalf<TcpStream>,
    client: ClientSide<'_>,
    rec: &mut AccessRecord,
) -> Exchanged {
    let mut watch = ClientWatch::new(rd);
    let keep_alive = exchange(worker, plan, wr, &mut watch, &client, rec).await;
    // A client that closes after its answer was written is not a cancellation: only a race
    // lost during the exchange (recorded there) is.
    let (early, gone) = watch.finish().await;
    Exchanged {
        keep_alive: keep_alive && !gone,
        early,
    }
}

/// What the client asked of the connection.
pub struct ClientSide<'r> {
    /// `x-request-id`.
    pub request_id: &'r str,
    /// The client speaks HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// The client wants to keep the connection.
    pub keep_alive: bool,
    /// When the request head arrived.
    pub started: Instant,
}

async fn exchange(
    worker: &Worker,
    mut plan: Plan,
    wr: &mut OwnedWriteHalf<TcpStream>,
    watch: &mut ClientWatch<'_>,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let shared = &worker.shared;
    let Some(provider) = shared.config.providers.get(plan.provider) else {
        return answer_error(
            wr,
            GatewayError::new(ErrorKind::Internal, "no provider"),
            client,
            rec,
        )
        .await;
    };
    let deadline = client.started + Duration::from_millis(provider.total_timeout_ms);
    let upstream_started = Instant::now();
    let since_start = |t: Instant| t.saturating_duration_since(client.started).as_micros() as u64;
    let mut attempt = Attempt {
        deployment: plan.deployment.clone(),
        provider: plan.provider,
        span_id: plan.span_id,
        start_us: since_start(upstream_started),
        end_us: 0,
        status: 0,
        error: None,
    };

    let request = std::mem::take(&mut plan.request);
    let sent = send(worker, provider, plan.provider, request, watch, deadline).await;
    let (mut conn, head, ubuf, body_at) = match sent {
        Ok(x) => x,
        Err(SendError::ClientGone) => {
            rec.client_cancelled = true;
            rec.status = 499;
            rec.error = Some("client_gone".into());
            attempt.end_us = since_start(Instant::now());
            attempt.error = Some("client_gone");
            rec.attempts.push(attempt);
            return false;
        }
        Err(SendError::Upstream(e)) => {
            rec.error = Some(e.label().into());
            attempt.end_us = since_start(Instant::now());
            attempt.error = Some(e.label());
            rec.attempts.push(attempt);
            worker
                .metrics
                .upstream_error(&shared.config, plan.provider, e.label());
            tracing::debug!(provider = %provider.name, error = %e, "upstream request failed");
            return answer_error(wr, e.to_gateway(), client, rec).await;
        }
    };
    let head_wait = upstream_started.elapsed();
    rec.upstream_reused = Some(conn.reuses > 0);
    rec.status = head.status;

    let is_sse = head.is_event_stream() && (200..300).contains(&head.status);
    let mode = if is_sse {
        BodyMode::Sse(SseScanner::new(plan.strip_usage))
    } else {
        BodyMode::Buffered(Vec::new())
    };
    rec.stream = is_sse;
    let client_framing = if client.http10 {
        ClientFraming::Close
    } else {
        match head.body {
            BodyFraming::Empty => ClientFraming::Length(0),
            BodyFraming::Length(n) if !is_sse => ClientFraming::Length(n),
            _ => ClientFraming::Chunked,
        }
    };
    let keep_alive = client.keep_alive && !shared.is_draining();
    let mut wire = Vec::with_capacity(1024 + ubuf.len());
    write_response_head(
        &mut wire,
        &head,
        &plan.deployment,
        client_framing,
        keep_alive,
        client.request_id,
    );
    let limits = BodyLimits {
        idle: Duration::from_millis(provider.idle_timeout_ms),
        deadline,
        provider: provider.name.clone(),
    };
    if is_sse {
        worker.metrics.open_streams.increment(1.0);
    }
    let end = Relay::new(&mut conn, wr, watch, client_framing, mode, limits)
        .run(head.body, wire, ubuf, body_at)
        .await;
    if is_sse {
        worker.metrics.open_streams.decrement(1.0);
    }

    rec.ttfb_us = end
        .first_write
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    rec.upstream_us = Some((head_wait + end.upstream_wait).as_micros() as u64);
    rec.bytes_out = end.bytes_out;
    rec.usage = end.usage.or_else(|| {
        (is_sse && end.data_events > 0).then(|| Usage {
            input_tokens: inspect::estimate_prompt_tokens(plan.body_len),
            output_tokens: end.data_events,
            estimated: true,
            ..Usage::default()
        })
    });
    rec.first_token_us = end
        .first_data
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    if let Some(e) = &end.error {
        rec.error = Some(e.label().into());
        worker
            .metrics
            .upstream_error(&shared.config, plan.provider, e.label());
        tracing::debug!(provider = %provider.name, error = %e, "upstream body failed");
    }
    if end.client_gone {
        rec.client_cancelled = true;
    }
    attempt.end_us = since_start(Instant::now());
    attempt.status = head.status;
    attempt.error = end
        .error
        .as_ref()
        .map(UpstreamError::label)
        .or(end.client_gone.then_some("client_gone"));
    rec.attempts.push(attempt);
    if end.upstream_reusable && head.keep_alive {
        worker
            .pool
            .borrow_mut()
            .put(plan.provider, conn, Instant::now(), provider.pool_max_idle);
    }
    keep_alive && end.client_reusable
}

enum SendError {
    ClientGone,
    Upstream(UpstreamError),
}

type Sent = (UpstreamConn, ResponseHead, Vec<u8>, usize);

/// Sends the request and reads the response head. A pooled connection that fails before any
/// response byte (the upstream closed it while idle) is replaced by a new one, once.
async fn send(
    worker: &Worker,
    provider: &Provider,
    provider_index: usize,
    mut request: Vec<u8>,
    watch: &mut ClientWatch<'_>,
    deadline: Instant,
) -> Result<Sent, SendError> {
    let shared = &worker.shared;
    let pooled = worker.pool.borrow_mut().take(
        provider_index,
        Instant::now(),
        Duration::from_millis(provider.pool_idle_timeout_ms),
    );
    let mut fresh_tried = false;
    if pooled.is_some() {
        worker.metrics.connection_reused(provider_index);
    }
    let mut conn = pooled;
    loop {
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                fresh_tried = true;
                let addrs = shared.dns.addrs(provider_index);
                let Some(tls) = shared.tls.get(provider_index) else {
                    return Err(SendError::Upstream(UpstreamError::Resolve(
                        provider.name.clone(),
                    )));
                };
                let connected = watch
                    .race(upstream::connect(provider, &addrs, tls))
                    .await
                    .ok_or(SendError::ClientGone)?;
                worker.pool.borrow_mut().opened += 1;
                worker.metrics.connection_opened(provider_index);
                connected.map_err(SendError::Upstream)?
            }
        };
        let (res, req_back) = watch
            .race(c.io.write_all(request))
            .await
            .ok_or(SendError::ClientGone)?;
        request = req_back;
        if let Err(e) = res {
            if !fresh_tried {
                continue;
            }
            return Err(SendError::Upstream(UpstreamError::Io {
                provider: provider.name.clone(),
                message: e.to_string(),
            }));
        }
        match read_head(&mut c, provider, watch, deadline).await {
            Ok((head, buf, at)) => return Ok((c, head, buf, at)),
            Err(HeadError::ClientGone) => return Err(SendError::ClientGone),
            Err(HeadError::Stale(_)) if !fresh_tried => continue,
            Err(HeadError::Stale(e)) | Err(HeadError::Failed(e)) => {
                return Err(SendError::Upstream(e))
            }
        }
    }
}

enum HeadError {
    ClientGone,
    /// Closed or reset before any byte of the response: maybe a stale pooled connection.
    Stale(UpstreamError),
    Failed(UpstreamError),
}

async fn read_head(
    conn: &mut UpstreamConn,
    provider: &Provider,
    watch: &mut ClientWatch<'_>,
    deadline: Instant,
) -> Result<(ResponseHead, Vec<u8>, usize), HeadError> {
    let first_byte = Instant::now() + Duration::from_millis(provider.first_byte_timeout_ms);
    let until = first_byte.min(deadline);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0;
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
                        provider: provider.name.clone(),
                        message: e.to_string(),
                    }))
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let wait = until.saturating_duration_since(Instant::now());
        let read = monoio::time::timeout(wait, conn.io.read_append(buf));
        match watch.race(read).await {
            None => return Err(HeadError::ClientGone),
            Some(Err(_)) => {
                let e = if until == deadline {
                    UpstreamError::TotalTimeout(provider.name.clone())
                } else {
                    UpstreamError::FirstByteTimeout(provider.name.clone())
                };
                return Err(HeadError::Failed(e));
            }
            Some(Ok((Ok(0), b))) | Some(Ok((Err(_), b))) if b.is_empty() => {
                return Err(HeadError::Stale(UpstreamError::Io {
                    provider: provider.name.clone(),
                    message: "connection closed before the response".into(),
                }))
            }
            Some(Ok((Ok(0), _))) => {
                return Err(HeadError::Failed(UpstreamError::Io {
                    provider: provider.name.clone(),
                    message: "connection closed inside the response head".into(),
                }))
            }
            Some(Ok((Ok(_), b))) => buf = b,
            Some(Ok((Err(e), _))) => {
                return Err(HeadError::Failed(UpstreamError::Io {
                    provider: provider.name.clone(),
                    message: e.to_string(),
                }))
            }
        }
    }
}

/// Response headers never passed back: framing (set here), and the upstream's request id,
/// which is renamed so the client sees ours.
fn write_response_head(
    wire: &mut Vec<u8>,
    head: &ResponseHead,
    deployment: &str,
    framing: ClientFraming,
    keep_alive: bool,
    request_id: &str,
) {
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(head.headers.len() + 2);
    for (name, value) in &head.headers {
        if is_hop_by_hop(name) {
            continue;
        }
        if name == "x-request-id" {
            headers.push(("x-upstream-request-id", value));
        } else {
            headers.push((name, value));
        }
    }
    headers.push(("x-sluice-deployment", deployment.as_bytes()));
    write_head(wire, head.status, &headers, framing, keep_alive, request_id);
}

/// Answers an error as JSON when nothing was sent to the client yet.
async fn answer_error(
    wr: &mut OwnedWriteHalf<TcpStream>,
    err: GatewayError,
    client: &ClientSide<'_>,
    rec: &mut AccessRecord,
) -> bool {
    let keep_alive = client.keep_alive && !err.kind.closes_connection();
    let bytes = respond::error(&err, keep_alive, client.request_id);
    rec.status = err.status();
    rec.bytes_out = bytes.len() as u64;
    let (res, _) = wr.write_all(bytes).await;
    if res.is_ok() {
        rec.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
    }
    keep_alive && res.is_ok()
}
