//! An upstream's failures and error answers: a transport failure classified for the attempt
//! loop, an error answer read whole (it may be retried elsewhere), and, when it is the last
//! word, passed through to the client in its dialect.

use std::pin::pin;
use std::time::Instant;

use monoio::io::AsyncWriteRentExt;
use sluice_core::attempt::{AttemptId, Event, TransportFailure};
use sluice_core::dialect::{self, ResponseContext};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::retry;

use super::{launch_of, Launch, Plan, Sends, MAX_ERROR_BODY};
use crate::listen::client_io::ClientWrite;
use crate::listen::respond::ClientFraming;
use crate::request::client::{answer_error, write_response_head, ClientSide};
use crate::request::relay::ClientWatch;
use crate::request::settle::Answer;
use crate::state::Worker;
use crate::upstream::attempt::{self, Sent};
use crate::upstream::pool::UpstreamError;

/// Classifies an upstream failure for the attempt loop, and counts it.
pub(super) fn transport_failure(
    worker: &Worker,
    launch: Option<&Launch>,
    e: &UpstreamError,
) -> TransportFailure {
    let cfg = &worker.shared.config;
    let provider = launch.map_or(0, |l| l.provider);
    worker.metrics.upstream_error(cfg, provider, e.label());
    let name = cfg.providers.get(provider).map_or("?", |p| p.name.as_str());
    tracing::debug!(provider = name, error = %e, "upstream attempt failed");
    e.transport_failure()
}

/// Reads an error answer whole, pools its connection when it can, and keeps the answer to
/// pass through if it turns out to be the last word.
pub(super) async fn read_error_body(
    worker: &Worker,
    sends: &mut Sends,
    attempt: AttemptId,
    deadline: Instant,
    watch: &mut ClientWatch<'_>,
) -> Event {
    let cfg = &worker.shared.config;
    let Some(mut sent) = sends.take_answered(attempt) else {
        return Event::Failed {
            attempt,
            failure: transport_failure(
                worker,
                None,
                &UpstreamError::Protocol {
                    provider: "?".into(),
                    message: "answer vanished".into(),
                },
            ),
        };
    };
    let provider = launch_of(sends, attempt).map_or(0, |l| l.provider);
    let Some(p) = cfg.providers.get(provider) else {
        return Event::ClientGone;
    };
    let read = attempt::read_small_body(&mut sent, &p.name, MAX_ERROR_BODY, deadline);
    let raced = watch.race(pin!(read)).await;
    match raced {
        None => Event::ClientGone,
        Some(Ok((body, reusable))) => {
            let status = sent.head.status;
            let context_window = status == 400 && retry::is_context_window_error(status, &body);
            let Sent { conn, head, .. } = sent;
            if reusable {
                worker
                    .pool
                    .borrow_mut()
                    .put(provider, conn, Instant::now(), p.pool_max_idle);
            }
            sends.error_answer = Some((attempt, head, body));
            Event::ErrorBody {
                attempt,
                context_window,
            }
        }
        Some(Err(e)) => Event::Failed {
            attempt,
            failure: transport_failure(worker, launch_of(sends, attempt), &e),
        },
    }
}

/// No attempt succeeded and the last one was the upstream's own error answer: pass it
/// through whole (in the client's dialect).
pub(super) async fn pass_through(
    worker: &Worker,
    plan: &Plan,
    sends: &mut Sends,
    attempt: AttemptId,
    wr: &mut ClientWrite,
    client: &ClientSide<'_>,
    answer: &mut Answer,
) -> bool {
    let Some((_, head, body)) = sends.error_answer.take().filter(|(a, ..)| *a == attempt) else {
        let err = GatewayError::new(ErrorKind::Internal, "answer vanished");
        return answer_error(wr, err, client, answer).await;
    };
    let launch = launch_of(sends, attempt);
    let translation = launch.and_then(|l| l.translation);
    let deployment = launch.map_or("", |l| l.label(&worker.shared.config));
    answer.status = head.status;
    let body = match translation {
        None => body,
        Some(t) => {
            let id = format!("gen-{}", client.request_id);
            let ctx = ResponseContext {
                model: &plan.inspected.model,
                id: &id,
                created: crate::clock::unix_s(),
                include_usage: false,
            };
            dialect::translate_response(t.from, t.to, head.status, &body, &ctx).0
        }
    };
    let mut wire = Vec::with_capacity(512 + body.len());
    write_response_head(
        &mut wire,
        &head,
        deployment,
        ClientFraming::Length(body.len() as u64),
        client.keep_alive,
        client,
        None,
        translation.map(|_| &b"application/json"[..]),
        Default::default(),
    );
    wire.extend_from_slice(&body);
    answer.bytes_out = wire.len() as u64;
    let (res, _) = wr.write_all(wire).await;
    answer.ttfb_us = Some(client.started.elapsed().as_micros() as u64);
    res.is_ok() && client.keep_alive
}
