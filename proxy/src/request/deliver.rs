//! Handing an upstream's answer to the client: whole answers (another dialect's, translated;
//! or a small JSON body, priced for `x-sluice-cost-usd`) are read first and written at once;
//! everything else goes through the relay as it arrives. Puts the upstream connection back in
//! the pool when it can; says how the answer ended so the attempt loop settles the balancer
//! and breaker.

use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use sluice_core::attempt::Relayed;
use sluice_core::dialect::{self, ResponseContext, StreamTranslator};
use sluice_core::filter::{Capture, Chain};
use sluice_core::http1::BodyFraming;
use sluice_core::inspect;
use sluice_core::sse::SseScanner;
use sluice_core::usage::{self, Usage};

use crate::listen::client_io::ClientWrite;
use crate::listen::respond::ClientFraming;
use crate::request::client::{answer_error, unix_now, write_response_head, ClientSide};
use crate::request::plan::ApiEndpoint;
use crate::request::plan::{Plan, Translation};
use crate::request::relay::{BodyLimits, ClientWatch, Relay, MAX_CAPTURE};
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
}

/// Hands a successful (or final) answer to the client: small JSON bodies are buffered so the
/// cost can go in a header; everything else is relayed as it arrives.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn deliver(
    worker: &Worker,
    plan: &Plan,
    mut sent: Sent,
    translation: Option<Translation>,
    (g, i): (usize, usize),
    started: Instant,
    wr: &mut ClientWrite,
    watch: &mut ClientWatch<'_>,
    client: &ClientSide<'_>,
    answer: &mut Answer,
    deadline: Instant,
) -> Delivered {
    let gone = |latency| Delivered {
        keep_alive: false,
        relayed: Relayed::ClientGone,
        latency,
    };
    let shared = &worker.shared;
    let cfg = &shared.config;
    let Some(dep) = cfg.models.get(g).and_then(|m| m.deployments.get(i)) else {
        return gone(Duration::ZERO);
    };
    let Some(provider) = cfg.providers.get(dep.provider) else {
        return gone(Duration::ZERO);
    };
    let upstream_model = if dep.model == "*" {
        plan.inspected.model.as_str()
    } else {
        dep.model.as_str()
    };
    answer.upstream_reused = Some(sent.conn.reuses > 0);
    answer.status = sent.head.status;
    let head_wait = started.elapsed();
    let keep_alive = client.keep_alive && !shared.is_draining();
    let is_sse = sent.head.is_event_stream() && (200..300).contains(&sent.head.status);
    answer.stream = is_sse;
    let success = (200..300).contains(&sent.head.status);
    let answer_id = format!(
        "{}{}",
        if plan.endpoint == ApiEndpoint::Messages {
            "msg_"
        } else {
            "chatcmpl-"
        },
        client.request_id
    );
    let ctx = ResponseContext {
        model: &plan.inspected.model,
        id: &answer_id,
        created: unix_now(),
        include_usage: plan.inspected.include_usage,
    };

    // Whole answers, read first and written in one go: another dialect's (any framing; it is
    // translated), or a small OpenAI JSON body (so its cost can go in a header).
    let whole = match (translation, is_sse, sent.head.body) {
        (Some(_), false, _) => Some(16 << 20),
        (None, false, BodyFraming::Length(n)) if success && n <= MAX_BUFFERED_BODY => {
            Some(MAX_BUFFERED_BODY as usize)
        }
        _ => None,
    };
    if let Some(max) = whole {
        let read = attempt::read_small_body(&mut sent, &provider.name, max, deadline);
        let (body, reusable) = match watch.race(read).await {
            None => {
                answer.client_cancelled = true;
                return gone(started.elapsed());
            }
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                answer.error = Some(e.label().into());
                let latency = started.elapsed();
                let keep_alive = answer_error(wr, e.to_gateway(), client, answer).await;
                return Delivered {
                    keep_alive,
                    relayed: Relayed::UpstreamFailed(e.label()),
                    latency,
                };
            }
        };
        let (body, used, content_type) = match translation {
            Some(t) => {
                let (out, used) =
                    dialect::translate_response(t.from, t.to, sent.head.status, &body, &ctx);
                (out, used, Some(&b"application/json"[..]))
            }
            None => {
                let used = usage::from_body(&body);
                (body, used, None)
            }
        };
        answer.upstream_us = Some(started.elapsed().as_micros() as u64);
        answer.first_token_us = Some(
            Instant::now()
                .saturating_duration_since(client.started)
                .as_micros() as u64,
        );
        answer.usage = used;
        answer.cost_micros = used.and_then(|u| cost_of(shared, upstream_model, &u));
        let cost_text = answer
            .cost_micros
            .filter(|_| success)
            .map(sluice_core::cost::format_usd);
        let mut wire = Vec::with_capacity(1024 + body.len());
        write_response_head(
            &mut wire,
            &sent.head,
            &dep.label,
            if client.http10 {
                ClientFraming::Close
            } else {
                ClientFraming::Length(body.len() as u64)
            },
            keep_alive,
            client,
            cost_text.as_deref(),
            content_type,
        );
        wire.extend_from_slice(&body);
        answer.bytes_out = wire.len() as u64;
        let (res, _) = wr.write_all(wire).await;
        answer.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
        if res.is_err() {
            answer.client_cancelled = true;
        }
        if reusable {
            worker.pool.borrow_mut().put(
                dep.provider,
                sent.conn,
                Instant::now(),
                provider.pool_max_idle,
            );
        }
        // The upstream did its job even if the client left while we wrote.
        return Delivered {
            keep_alive: res.is_ok() && keep_alive && !client.http10,
            relayed: Relayed::Complete,
            latency: started.elapsed(),
        };
    }

    let mut chain = Chain::new();
    match translation {
        Some(t) if is_sse => chain.push(Box::new(StreamTranslator::new(t.from, t.to, ctx))),
        _ if is_sse => chain.push(Box::new(SseScanner::new(plan.strip_usage))),
        _ => chain.push(Box::new(Capture::new(MAX_CAPTURE, true))),
    }
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
        &dep.label,
        client_framing,
        keep_alive,
        client,
        None,
        translation.map(|_| &b"text/event-stream"[..]),
    );
    let limits = BodyLimits {
        idle: Duration::from_millis(provider.idle_timeout_ms),
        deadline,
        provider: provider.name.clone(),
    };
    if is_sse {
        worker.metrics.open_streams.increment(1.0);
    }
    let Sent {
        mut conn,
        head,
        buf,
        body_at,
    } = sent;
    let end = Relay::new(&mut conn, wr, watch, client_framing, chain, is_sse, limits)
        .run(head.body, wire, buf, body_at)
        .await;
    if is_sse {
        worker.metrics.open_streams.decrement(1.0);
    }
    answer.ttfb_us = end
        .first_write
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    answer.first_token_us = end
        .first_data
        .map(|t| t.saturating_duration_since(client.started).as_micros() as u64);
    answer.upstream_us = Some((head_wait + end.upstream_wait).as_micros() as u64);
    answer.bytes_out = end.bytes_out;
    answer.usage = end.usage.or_else(|| {
        (is_sse && end.data_events > 0).then(|| Usage {
            input_tokens: inspect::estimate_prompt_tokens(plan.body.len()),
            output_tokens: end.data_events,
            estimated: true,
            ..Usage::default()
        })
    });
    answer.cost_micros = answer
        .usage
        .and_then(|u| cost_of(shared, upstream_model, &u));
    if let Some(e) = &end.error {
        answer.error = Some(e.label().into());
        worker.metrics.upstream_error(cfg, dep.provider, e.label());
        tracing::debug!(provider = %provider.name, error = %e, "upstream body failed");
    }
    if end.client_gone {
        answer.client_cancelled = true;
    }
    // The balancer learns time to first token for streams, total time otherwise.
    let latency = match (is_sse, end.first_data) {
        (true, Some(t)) => t.saturating_duration_since(started),
        _ => started.elapsed(),
    };
    let relayed = match (&end.error, end.client_gone) {
        (_, true) => Relayed::ClientGone,
        (Some(e), false) => Relayed::UpstreamFailed(e.label()),
        (None, false) => Relayed::Complete,
    };
    if end.upstream_reusable && head.keep_alive {
        worker
            .pool
            .borrow_mut()
            .put(dep.provider, conn, Instant::now(), provider.pool_max_idle);
    }
    Delivered {
        keep_alive: keep_alive && end.client_reusable,
        relayed,
        latency,
    }
}

/// What `usage` cost at `model`'s price; `None` for a model with no known price.
fn cost_of(shared: &crate::state::Shared, model: &str, usage: &Usage) -> Option<u64> {
    shared
        .prices
        .price(model)
        .map(|p| sluice_core::cost::cost_micros(&p, usage))
}
