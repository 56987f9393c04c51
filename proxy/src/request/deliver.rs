//! Handing an upstream's answer to the client: whole answers (another dialect's, translated;
//! or a small JSON body, priced for `x-sluice-cost-usd`) are read first and written at once;
//! everything else goes through the relay as it arrives. Puts the upstream connection back in
//! the pool when it can; says how the answer ended so the attempt loop settles the balancer
//! and breaker.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use sluice_core::attempt::Relayed;
use sluice_core::cache::capture::{pivot_from_whole_with, PivotCapture};
use sluice_core::cache::CallKind;
use sluice_core::config::{Deployment, Provider};
use sluice_core::cost::UsdText;
use sluice_core::dialect::{self, ResponseContext, StreamTranslator};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::estimate::ImageRule;
use sluice_core::filter::{Capture, Chain, Stage};
use sluice_core::http1::BodyFraming;
use sluice_core::media::MediaUsage;
use sluice_core::route::Target;
use sluice_core::sse::SseScanner;
use sluice_core::usage::{self, Usage};

use crate::cache::note::{CacheNote, Mark};
use crate::listen::client_io::ClientWrite;
use crate::listen::cold;
use crate::listen::respond::ClientFraming;
use crate::request::client::{answer_error, write_response_head, ClientSide};
use crate::request::compress::{self, Encoded};
use crate::request::plan::ApiEndpoint;
use crate::request::plan::{Plan, Translation};
use crate::request::relay::{BodyLimits, ClientWatch, Relay, RelayEnd, MAX_CAPTURE};
use crate::request::settle::Answer;
use crate::state::Worker;
use crate::upstream::attempt::{self, Sent};

/// Largest successful non-streaming body buffered so its cost can go in a header.
const MAX_BUFFERED_BODY: u64 = 1 << 20;

/// How a delivered answer ended.
pub(crate) struct Delivered {
    /// The client connection can carry another request.
    pub keep_alive: bool,
    /// Whether the body reached the client.
    pub relayed: Relayed,
    /// What the balancer learns: time to first token for streams, total time otherwise.
    pub latency: Duration,
    /// When the delivery ended, where it read the clock as it returned (its caller settles
    /// the attempt in the same synchronous stretch, with this time instead of another read).
    pub ended: Option<Instant>,
}

/// What one delivery works with.
struct Delivery<'a, 'w, 'c> {
    worker: &'a Worker,
    plan: &'a Plan,
    dep: &'a Deployment,
    provider: &'a Provider,
    /// The upstream model name (for its price).
    upstream_model: &'a str,
    translation: Option<Translation>,
    /// When the attempt was sent.
    started: Instant,
    deadline: Instant,
    wr: &'a mut ClientWrite,
    watch: &'a mut ClientWatch<'w>,
    client: &'a ClientSide<'c>,
    /// The client connection may be kept (asked, and the gateway is not draining).
    keep_alive: bool,
}

/// Hands a successful (or final) answer to the client: small JSON bodies are buffered so the
/// cost can go in a header; everything else is relayed as it arrives.
// Not an `async fn`: an async fn stores each by-value argument twice in its future (the
// argument and the local it is bound to), and this one lasts as long as the stream.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(crate) fn deliver<'f, 'w, 'c>(
    worker: &'f Worker,
    plan: &'f mut Plan,
    sent: Sent,
    translation: Option<Translation>,
    target: Target,
    started: Instant,
    wr: &'f mut ClientWrite,
    watch: &'f mut ClientWatch<'w>,
    client: &'f ClientSide<'c>,
    answer: &'f mut Answer,
    deadline: Instant,
) -> impl Future<Output = Delivered> + use<'f, 'w, 'c> {
    async move {
        let cfg = &worker.shared.config;
        let dep = cfg
            .models
            .get(target.group)
            .and_then(|m| m.deployments.get(target.deployment));
        let Some((dep, provider)) = dep.and_then(|d| Some((d, cfg.providers.get(d.provider)?)))
        else {
            return Delivered {
                keep_alive: false,
                relayed: Relayed::ClientGone,
                latency: Duration::ZERO,
                ended: None,
            };
        };
        let status = sent.head.status;
        answer.upstream_reused = Some(sent.conn.reuses > 0);
        answer.status = status;
        let success = (200..300).contains(&status);
        let is_sse = sent.head.is_event_stream() && success;
        answer.stream = is_sse;
        if is_sse {
            // No attempt follows a delivery: a stream, which holds its plan for its whole life,
            // lets go of the request's body and forwarded headers now.
            plan.release_body();
        }
        let plan = &*plan;
        let mut d = Delivery {
            worker,
            plan,
            dep,
            provider,
            upstream_model: if dep.model == "*" {
                plan.inspected.model.as_str()
            } else {
                dep.model.as_str()
            },
            translation,
            started,
            deadline,
            wr,
            watch,
            client,
            keep_alive: client.keep_alive && !worker.shared.is_draining(),
        };
        // Whole answers, read first and written in one go: another dialect's (any framing; it is
        // translated), or a small OpenAI JSON body (so its cost can go in a header).
        // A larger sized body is read whole too when it may be compressed for the client.
        let compression = &cfg.server.compression;
        match (translation, is_sse, sent.head.body) {
            (Some(_), false, _) => whole(&mut d, sent, 16 << 20, answer).await,
            (None, false, BodyFraming::Length(n)) if success && n <= MAX_BUFFERED_BODY => {
                whole(&mut d, sent, MAX_BUFFERED_BODY as usize, answer).await
            }
            (None, false, BodyFraming::Length(n))
                if n <= compression.max_bytes
                    && compression.may_compress(&plan.accept_encoding) =>
            {
                whole(&mut d, sent, n as usize, answer).await
            }
            _ => relay(&mut d, sent, is_sse, answer).await,
        }
    }
}

/// The context a translated answer is written in: our id, the client's model, now.
fn response_context<'p>(plan: &'p Plan, id: &'p str) -> ResponseContext<'p> {
    ResponseContext {
        model: &plan.inspected.model,
        id,
        created: crate::clock::unix_s(),
        include_usage: plan.inspected.include_usage,
    }
}

/// The id of a translated answer: `msg_…` for Messages clients, `resp_…` for Responses
/// clients, `chatcmpl-…` otherwise.
fn answer_id(plan: &Plan, client: &ClientSide<'_>) -> String {
    let prefix = match plan.endpoint {
        ApiEndpoint::Messages => "msg_",
        ApiEndpoint::Responses => "resp_",
        _ => "chatcmpl-",
    };
    format!("{prefix}{}", client.request_id)
}

/// Microseconds from `start` to `at`.
fn micros_since(start: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(start).as_micros() as u64
}

/// Reads the whole body (at most `max` bytes), translates it if needed, prices it, and writes
/// head and body at once.
async fn whole(
    d: &mut Delivery<'_, '_, '_>,
    mut sent: Sent,
    max: usize,
    answer: &mut Answer,
) -> Delivered {
    let read = attempt::read_small_body(&mut sent, &d.provider.name, max, d.deadline);
    let raced = d.watch.race(pin!(read)).await;
    let (body, reusable) = match raced {
        None => {
            answer.client_cancelled = true;
            return Delivered {
                keep_alive: false,
                relayed: Relayed::ClientGone,
                latency: d.started.elapsed(),
                ended: None,
            };
        }
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            answer.error = Some(e.label().into());
            let latency = d.started.elapsed();
            // Out of line (`listen::cold`), as below: an error answer's code and temporaries
            // stay out of the path every whole answer runs.
            let err = e.to_gateway();
            let keep_alive = cold::boxed(|| answer_error(d.wr, err, d.client, answer)).await;
            return Delivered {
                keep_alive,
                relayed: Relayed::UpstreamFailed(e.label()),
                latency,
                ended: None,
            };
        }
    };
    let client = d.client;
    let success = (200..300).contains(&sent.head.status);
    // An answer passed through is parsed once, for usage and the answered model; a cache
    // miss's capture reuses that usage when it keeps the body as it is. The answered model
    // is read only by the access line and the trace: not copied out when neither is on.
    let wants_model = d.worker.shared.config.log.access_log || client.trace.is_some();
    let plain = d.translation.is_none().then(|| {
        if wants_model {
            usage::with_model(&body)
        } else {
            (usage::from_body(&body), None)
        }
    });
    if d.plan.capture && success {
        capture_whole(d, &body, plain.as_ref().map(|p| p.0), answer);
    }
    if let Some(t) = d.translation.filter(|_| wants_model) {
        answer.response_model = dialect::answered_model(t.from, sent.head.status, &body);
    }
    let (body, used, content_type) = match d.translation {
        Some(t) => {
            let id = answer_id(d.plan, client);
            let ctx = response_context(d.plan, &id);
            let (out, used) =
                dialect::translate_response(t.from, t.to, sent.head.status, &body, &ctx);
            (out, used, Some(&b"application/json"[..]))
        }
        None => {
            // One parse for both: the answered model (for spans and the access line) and usage.
            let (used, model) = plain.unwrap_or_default();
            answer.response_model = model.filter(|_| success);
            (body, used, None)
        }
    };
    // One clock read for both (each read touches the vDSO's page, cold at low rates).
    let read_at = Instant::now();
    answer.upstream_us = Some(micros_since(d.started, read_at));
    answer.first_token_us = Some(micros_since(client.started, read_at));
    let shared = &d.worker.shared;
    let media = super::media::usage(&shared.prices, d.upstream_model, d.plan, Some(&body));
    answer.usage = mark_estimated(used, media.as_ref());
    answer.cost_micros = super::media::cost(
        &shared.prices,
        d.upstream_model,
        used.as_ref(),
        media.as_ref(),
    );
    let compression = &d.worker.shared.config.server.compression;
    let accept = &d.plan.accept_encoding;
    let Some(Encoded { body, decision }) =
        compress::encode_answer(compression, accept, &sent.head, content_type, body).await
    else {
        let err = GatewayError::new(ErrorKind::Internal, "the compressed answer was lost");
        let keep_alive = cold::boxed(|| answer_error(d.wr, err, client, answer)).await;
        return Delivered {
            keep_alive,
            relayed: Relayed::Complete,
            latency: d.started.elapsed(),
            ended: None,
        };
    };
    let framing = if client.http10 {
        ClientFraming::Close
    } else {
        ClientFraming::Length(body.len() as u64)
    };
    let mut wire = Vec::with_capacity(1024 + body.len());
    write_response_head(
        &mut wire,
        &sent.head,
        &d.dep.label,
        framing,
        d.keep_alive,
        client,
        // On the stack, a temporary of this statement: not kept in the request future.
        answer
            .cost_micros
            .filter(|_| success)
            .map(sluice_core::cost::usd_text)
            .as_ref()
            .map(UsdText::as_str),
        content_type,
        decision,
    );
    wire.extend_from_slice(&body);
    answer.bytes_out = wire.len() as u64;
    let (res, _) = d.wr.write_all(wire).await;
    // One clock read for the answer's end: its first byte's time, the pool's idle clock and
    // the attempt's latency.
    let written = Instant::now();
    answer.ttfb_us = Some(micros_since(client.started, written));
    if res.is_err() {
        answer.client_cancelled = true;
    }
    if reusable {
        d.worker.pool.borrow_mut().put(
            d.dep.provider,
            sent.conn,
            written,
            d.provider.pool_max_idle,
        );
    }
    // The upstream did its job even if the client left while we wrote.
    Delivered {
        keep_alive: res.is_ok() && d.keep_alive && !client.http10,
        relayed: Relayed::Complete,
        latency: written.saturating_duration_since(d.started),
        ended: Some(written),
    }
}

/// Relays the body as it arrives, through the filter chain: a translated or scanned event
/// stream, or any other body with a bounded copy to read usage from.
// Not an `async fn`: an async fn stores each by-value argument twice in its future (the
// argument and the local it is bound to), and this one lasts as long as the stream; the
// block below uses the captured answer in place (its fields, not destructured copies).
#[allow(clippy::manual_async_fn)]
fn relay<'f, 'a, 'w, 'c>(
    d: &'f mut Delivery<'a, 'w, 'c>,
    mut sent: Sent,
    is_sse: bool,
    answer: &'f mut Answer,
) -> impl Future<Output = Delivered> + use<'f, 'a, 'w, 'c> {
    async move {
        let (worker, client) = (d.worker, d.client);
        let head_wait = d.started.elapsed();
        let ok = (200..300).contains(&sent.head.status);
        let client_framing = if client.http10 {
            ClientFraming::Close
        } else {
            match sent.head.body {
                BodyFraming::Empty => ClientFraming::Length(0),
                BodyFraming::Length(n) if !is_sse => ClientFraming::Length(n),
                _ => ClientFraming::Chunked,
            }
        };
        let mut wire = Vec::with_capacity(1024 + sent.buf.len());
        write_response_head(
            &mut wire,
            &sent.head,
            &d.dep.label,
            client_framing,
            d.keep_alive,
            client,
            None,
            d.translation.map(|_| &b"text/event-stream"[..]),
            Default::default(),
        );
        if is_sse {
            worker.metrics.open_streams.increment(1.0);
        }
        let buf = std::mem::take(&mut sent.buf);
        // The chain is built straight into the relay: a local that was borrowed keeps its space
        // in this future beside the relay that owns it, for the whole stream.
        let limits = BodyLimits {
            idle: Duration::from_millis(d.provider.idle_timeout_ms),
            deadline: d.deadline,
            provider: &d.provider.name,
        };
        let mut relay = Relay::new(
            relay_chain(d, ok, is_sse),
            limits,
            client_framing,
            is_sse,
            (&mut sent.conn, d.wr, d.watch),
        );
        let mut end = relay.run(sent.head.body, wire, buf, sent.body_at).await;
        drop(relay);
        if is_sse {
            worker.metrics.open_streams.decrement(1.0);
        }
        record_relay(d, &mut end, head_wait, is_sse, answer);
        if let Some(pivot) = end.pivot {
            answer
                .cache
                .get_or_insert_with(|| Box::new(CacheNote::new(Mark::Miss)))
                .captured = Some(*pivot);
        }
        // One clock read for the relay's end: the pool's idle clock, the latency, and the
        // attempt's settlement (by the caller).
        let ended = Instant::now();
        if end.upstream_reusable && sent.head.keep_alive {
            worker.pool.borrow_mut().put(
                d.dep.provider,
                sent.conn,
                ended,
                d.provider.pool_max_idle,
            );
        }
        // The balancer learns time to first token for streams, total time otherwise.
        let latency = match (is_sse, end.first_data) {
            (true, Some(t)) => t.saturating_duration_since(d.started),
            _ => ended.saturating_duration_since(d.started),
        };
        Delivered {
            keep_alive: d.keep_alive && end.client_reusable,
            relayed: match (&end.error, end.client_gone) {
                (_, true) => Relayed::ClientGone,
                (Some(e), false) => Relayed::UpstreamFailed(e.label()),
                (None, false) => Relayed::Complete,
            },
            latency,
            ended: Some(ended),
        }
    }
}

/// The filters a relayed body goes through: the cache's capture first (a 2xx answer, when
/// the plan captures), then the stream's translation or scan, or a bounded copy of any other
/// body to read usage from.
fn relay_chain(d: &Delivery<'_, '_, '_>, ok: bool, is_sse: bool) -> Chain {
    let plan = d.plan;
    let mut chain = Chain::new();
    if plan.capture && ok {
        chain.push(Stage::Pivot(Box::new(pivot_capture(d, is_sse))));
    }
    match d.translation {
        Some(t) if is_sse => {
            let id = answer_id(plan, d.client);
            let ctx = response_context(plan, &id);
            chain.push(Stage::Translate(Box::new(StreamTranslator::new(
                t.from, t.to, ctx,
            ))));
        }
        _ if is_sse => {
            // The answered model is read only by the access line and the trace.
            let scan = SseScanner::new(plan.strip_usage);
            let wants_model = d.worker.shared.config.log.access_log || d.client.trace.is_some();
            chain.push(Stage::Scan(if wants_model {
                scan
            } else {
                scan.without_model()
            }));
        }
        _ => chain.push(Stage::Capture(Capture::new(MAX_CAPTURE, true))),
    }
    chain
}

/// The response cache's capture of a relayed answer (first in the chain: it sees the
/// upstream's bytes, in the provider's dialect).
fn pivot_capture(d: &Delivery<'_, '_, '_>, is_sse: bool) -> PivotCapture {
    let cfg = &d.worker.shared.config;
    let kind = crate::cache::call_kind(d.plan.endpoint).unwrap_or(CallKind::Chat);
    let id = format!("chatcmpl-{}", d.client.request_id);
    PivotCapture::new(
        d.provider.kind,
        kind,
        is_sse,
        cfg.cache.max_entry_bytes as usize,
        (&d.plan.inspected.model, &id, crate::clock::unix_s()),
    )
}

/// The response cache's capture of a whole 2xx answer: its pivot, for settlement to keep.
fn capture_whole(
    d: &Delivery<'_, '_, '_>,
    body: &[u8],
    body_usage: Option<Option<Usage>>,
    answer: &mut Answer,
) {
    let cfg = &d.worker.shared.config;
    if body.len() as u64 > cfg.cache.max_entry_bytes {
        return;
    }
    let kind = crate::cache::call_kind(d.plan.endpoint).unwrap_or(CallKind::Chat);
    let id = format!("chatcmpl-{}", d.client.request_id);
    let ctx = ResponseContext {
        model: &d.plan.inspected.model,
        id: &id,
        created: crate::clock::unix_s(),
        include_usage: true,
    };
    if let Some(pivot) = pivot_from_whole_with(d.provider.kind, kind, body, &ctx, body_usage) {
        answer
            .cache
            .get_or_insert_with(|| Box::new(CacheNote::new(Mark::Miss)))
            .captured = Some(pivot);
    }
}

/// What the relay's end tells settlement: timings, bytes, usage (estimated for a stream cut
/// short), cost, the upstream's failure.
fn record_relay(
    d: &Delivery<'_, '_, '_>,
    end: &mut RelayEnd,
    head_wait: Duration,
    is_sse: bool,
    answer: &mut Answer,
) {
    let (worker, plan, client) = (d.worker, d.plan, d.client);
    let since_client = |t: Instant| t.saturating_duration_since(client.started).as_micros() as u64;
    answer.ttfb_us = end.first_write.map(since_client);
    answer.first_token_us = end.first_data.map(since_client);
    answer.upstream_us = Some((head_wait + end.upstream_wait).as_micros() as u64);
    answer.bytes_out = end.bytes_out;
    if (200..300).contains(&answer.status) {
        answer.response_model = end.answered_model.take();
    }
    answer.usage = end.usage.or_else(|| {
        // A stream cut short (or without a usage chunk): estimate what was delivered.
        (is_sse && end.data_events > 0).then(|| Usage {
            input_tokens: plan.prompt_scan().tokens(
                worker
                    .shared
                    .config
                    .providers
                    .get(d.dep.provider)
                    .map_or(ImageRule::OpenAi, |p| ImageRule::of(p.kind)),
            ),
            output_tokens: end.data_events,
            estimated: true,
            ..Usage::default()
        })
    });
    let prices = &worker.shared.prices;
    let media = super::media::usage(prices, d.upstream_model, plan, None);
    answer.cost_micros = super::media::cost(
        prices,
        d.upstream_model,
        answer.usage.as_ref(),
        media.as_ref(),
    );
    answer.usage = mark_estimated(answer.usage, media.as_ref());
    if let Some(e) = &end.error {
        answer.error = Some(e.label().into());
        worker
            .metrics
            .upstream_error(&worker.shared.config, d.dep.provider, e.label());
        tracing::debug!(provider = %d.provider.name, error = %e, "upstream body failed");
    }
    if end.client_gone {
        answer.client_cancelled = true;
    }
}

/// `usage`, marked estimated when the media count behind the cost was a guess (an audio
/// file's length from its size); an empty usage carries the mark when none was reported.
fn mark_estimated(usage: Option<Usage>, media: Option<&MediaUsage>) -> Option<Usage> {
    if !media.is_some_and(|m| m.estimated) {
        return usage;
    }
    Some(Usage {
        estimated: true,
        ..usage.unwrap_or_default()
    })
}
