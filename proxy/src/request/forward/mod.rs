//! Forwarding one API request: the driver of core's attempt loop
//! ([`sluice_core::attempt::AttemptLoop`]). Core decides where each attempt goes, when to
//! retry, fall back, hedge or give up; this module carries out its commands — build and send a
//! request, read an error answer, wait, cancel a hedge loser — and feeds back what happened.
//!
//! ```text
//! plan ─► AttemptLoop::poll ─► Send / ReadErrorBody / Cancel / Wait ─► (I/O) ─► handle(event)
//!                         └──► Deliver ─► deliver (relay) ─► settle_delivered
//!                              PassThrough | Fail ─► answer;  Abandon ─► close
//! ```
//! Every attempt happens before anything reaches the client, so a stream is retried or failed
//! over only while nothing has been sent; once the head is out, failures end the stream with
//! an SSE error event (see the relay).
//!
//! A streamed upload (`request::upload`) is sent by the driver itself, one attempt at a time:
//! the attempt copies the rest of the client's body before its head is awaited, and once it
//! started copying, core's loop is told the body is spent (no retry, no fallback).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use sluice_core::attempt::{AttemptId, AttemptLoop, Command, Env, Event, TransportFailure};
use sluice_core::config::ModelGroup;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::ResponseHead;
use sluice_core::request::{Reserved, Settled};
use sluice_core::retry::{self, Failure};
use sluice_core::route::Target;
use smallvec::SmallVec;

pub use crate::request::plan::{plan, Plan, Translation};

mod error_answer;
mod report;

use error_answer::{pass_through, read_error_body, transport_failure};
use report::record_attempts;

use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::cold;
use crate::request::auth::KeyEntry;
use crate::request::client::{answer_error, ClientSide};
use crate::request::deliver::deliver;
use crate::request::plan::build_request;
use crate::request::relay::ClientWatch;
use crate::request::settle::Answer;
use crate::request::upload::{self, BodyRest, UploadError};
use crate::state::Worker;
use crate::upstream::attempt::{self, Sent};
use crate::upstream::pool::UpstreamError;

/// Largest error body read to decide on a retry (and passed through when it is the answer).
const MAX_ERROR_BODY: usize = 1 << 20;

/// What the exchange left for the client connection (what settlement needs is written into
/// the caller's answer and stage).
pub struct Exchanged {
    /// The client connection can carry another request.
    pub keep_alive: bool,
    /// Bytes of the client's next request that arrived during the exchange.
    pub early: Vec<u8>,
}

/// Runs the exchange: attempts deployments until one answers and relays its answer to the
/// client. Errors before the response head reached the client are answered as JSON here.
/// What the client got goes into `answer`; the caller and its permit, to settle, into
/// `stage`.
///
/// The plan and the client side are borrowed: an async fn's by-value arguments are stored
/// twice in its future (the argument and the local it is bound to), for the whole exchange.
/// The plan mutably: a stream being delivered frees its body ([`Plan::release_body`]).
// Not an `async fn` (see above): the block below uses the captured `reserved` in place.
#[allow(clippy::manual_async_fn)]
pub fn execute<'f, 'c>(
    worker: &'f Worker,
    reserved: Reserved<Arc<KeyEntry>>,
    plan: &'f mut Plan,
    (rd, upload): (&'f mut ClientRead, Option<&'f mut BodyRest>),
    wr: &'f mut ClientWrite,
    client: &'f ClientSide<'c>,
    (answer, stage): (&'f mut Answer, &'f mut Settled<Arc<KeyEntry>>),
) -> impl Future<Output = Exchanged> + use<'f, 'c> {
    async move {
        let mut watch = ClientWatch::new(rd);
        answer.stream = plan.inspected.stream;
        // The caller, for the breakers' blast-radius guard: a hash of its key id.
        let caller = reserved
            .principal()
            .map(|k| sluice_core::breaker::caller_id(&k.id));
        // One look at the clock for the synchronous stretch from here to the first attempt on
        // its way: the loop's start, its first commands, the pool's checkout (see `exchange`).
        let now = Instant::now();
        let (dispatch, settled) = reserved.dispatch();
        *stage = settled;
        // The loop (some 1 KiB) is built in place, into this future's state: made by the
        // initializer of its own `let`, with the environment `with_env_at` would give it as
        // temporaries of that statement. Assigned to a local declared before (or returned in
        // a pair, or through `with_env_at`'s frame) it was built on the stack and copied in:
        // 984 bytes, some 16 cache lines of stack, a request.
        let mut lp = dispatch.attempt(
            &mut env_of(
                &worker.shared,
                &mut worker.routes.borrow_mut().table,
                now,
                &mut || fastrand::u64(..),
            ),
            client.started,
            plan.deadline_override,
            caller,
        );
        // Breaker changes made while the loop was built, as `with_env_at` publishes them.
        worker.routes.borrow_mut().publish(&worker.shared.config);
        if upload.is_some() {
            // The client's socket carries the rest of the body: not watched until it is read.
            lp.streamed_body();
            watch.hold();
        }
        let io = Io {
            wr,
            watch: &mut watch,
            upload,
        };
        // Kept here and borrowed by the exchange (returned by value, its ~430 bytes were
        // copied twice more).
        let mut sends = Sends {
            answered: None,
            launched: SmallVec::new(),
            error_answer: None,
        };
        let keep_alive = exchange(
            worker,
            (&mut lp, now),
            plan,
            io,
            client,
            (&mut sends, &mut *answer),
        )
        .await;
        let first_group = lp.first_group();
        // Borrowed, not `into_report`: moving the loop (some 1 KiB) out of this future's state
        // to consume it was a copy of its own (and taking its report, one of 224 bytes).
        record_attempts(worker, &sends, first_group, lp.report(), client, answer);
        // A client that closes after its answer was written is not a cancellation: only a race
        // lost during the exchange (recorded there) is.
        let (early, gone) = watch.finish();
        Exchanged {
            keep_alive: keep_alive && !gone,
            early,
        }
    }
}

/// Runs `f` with the loop's environment: this worker's routing table, the providers' limits,
/// the clock and randomness. Breaker changes are published when it returns.
pub(crate) fn with_env<R>(worker: &Worker, f: impl FnOnce(&mut Env<'_>) -> R) -> R {
    with_env_at(worker, Instant::now(), f)
}

/// [`with_env`] with the clock as the caller read it, in the same synchronous stretch (no
/// await since): a time read before an await would be stale after it.
pub(crate) fn with_env_at<R>(
    worker: &Worker,
    now: Instant,
    f: impl FnOnce(&mut Env<'_>) -> R,
) -> R {
    let mut routes = worker.routes.borrow_mut();
    let mut rng = || fastrand::u64(..);
    let out = f(&mut env_of(
        &worker.shared,
        &mut routes.table,
        now,
        &mut rng,
    ));
    routes.publish(&worker.shared.config);
    out
}

/// The loop's environment on this worker: its routing table (the caller publishes breaker
/// changes once done with it), the providers' limits, the clock as read, randomness.
fn env_of<'a>(
    shared: &'a crate::state::Shared,
    routes: &'a mut sluice_core::route::RouteTable,
    now: Instant,
    rng: &'a mut dyn FnMut() -> u64,
) -> Env<'a> {
    Env {
        config: &shared.config,
        routes,
        limits: &*shared.provider_limits,
        now,
        now_ms: crate::clock::ms_at(now),
        rng,
    }
}

/// Attempts on their way (the request went out, the head is awaited): at most two, a hedged
/// pair. Each is boxed while it is on its way (one allocation per attempt, freed when its
/// head arrives): pinned in the exchange's own frame instead, the two slots (some 3.7 KiB
/// each) stayed in every request's state to its end, a stream's minutes included.
struct Flights<F> {
    slots: [Option<Pin<Box<F>>>; 2],
    ids: [Option<AttemptId>; 2],
}

impl<F: Future<Output = Result<Sent, UpstreamError>>> Flights<F> {
    /// Puts the future `make` builds in a free slot (the loop never has more than two
    /// attempts in flight). The box is allocated first and `make` called after, so the
    /// attempt's state (about 3.5 KB) is built in the box instead of on the stack and then
    /// copied into it (with the future passed by value, it was copied twice).
    #[inline(always)]
    fn start(&mut self, id: AttemptId, make: impl FnOnce() -> F) {
        let k = usize::from(self.ids[0].is_some());
        let slot = Box::new_uninit();
        self.slots[k] = Some(Box::into_pin(Box::write(slot, make())));
        self.ids[k] = Some(id);
    }

    /// Drops `id`'s attempt, which closes its connection: cancelled upstream.
    fn cancel(&mut self, id: AttemptId) {
        for k in 0..2 {
            if self.ids[k] == Some(id) {
                self.slots[k] = None;
                self.ids[k] = None;
            }
        }
    }

    /// The first attempt to finish, and how. A head is put straight in `answered`, where the
    /// driver keeps it (returned instead, its ~190 bytes were copied through every future
    /// between here and there).
    async fn next(
        &mut self,
        answered: &mut Option<(AttemptId, Sent)>,
    ) -> (AttemptId, Result<(), UpstreamError>) {
        let (k, id, r) = std::future::poll_fn(|cx| {
            for k in 0..2 {
                let Some(id) = self.ids[k] else { continue };
                if let Some(fut) = self.slots[k].as_mut() {
                    if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                        // A second head at once would be a hedge partner the loop is about
                        // to cancel.
                        let r = r.map(|sent| *answered = Some((id, sent)));
                        return Poll::Ready((k, id, r));
                    }
                }
            }
            Poll::Pending
        })
        .await;
        self.slots[k] = None;
        self.ids[k] = None;
        (id, r)
    }
}

/// What the driver keeps per attempt.
struct Sends {
    /// The attempt whose head arrived (one at a time: the loop cancels a hedge's partner
    /// before it reads or delivers the answer).
    answered: Option<(AttemptId, Sent)>,
    /// Per attempt (by id): provider index, label, span id, translation.
    launched: SmallVec<[Launch; 2]>,
    /// The error answer read last, kept to pass through: (attempt, head, body).
    error_answer: Option<(AttemptId, ResponseHead, Vec<u8>)>,
}

impl Sends {
    fn take_answered(&mut self, id: AttemptId) -> Option<Sent> {
        match self.answered.take() {
            Some((a, sent)) if a == id => Some(sent),
            other => {
                self.answered = other;
                None
            }
        }
    }
}

/// The client side of an exchange: where answers go, the watch on the client, and the rest
/// of a streamed upload.
struct Io<'x, 'w, 'r> {
    wr: &'x mut ClientWrite,
    watch: &'x mut ClientWatch<'w>,
    upload: Option<&'r mut BodyRest>,
}

/// Runs the attempt loop to its end and answers the client; returns whether the client
/// connection can be kept. What was launched (for the access record) is left in `sends`.
///
/// `lp` is borrowed, not moved in: an async fn's by-value argument is stored twice in its
/// future (as the argument and as the local it is bound to), and the loop is some 1 KiB.
/// `now` is the caller's clock read, made in the synchronous stretch this starts in.
async fn exchange(
    worker: &Worker,
    (lp, now): (&mut AttemptLoop, Instant),

    plan: &mut Plan,
    io: Io<'_, '_, '_>,
    client: &ClientSide<'_>,
    (sends, answer): (&mut Sends, &mut Answer),
) -> bool {
    let Io {
        wr,
        watch,
        mut upload,
    } = io;
    let deadline = lp.deadline();
    let mut flights = Flights {
        slots: [None, None],
        ids: [None, None],
    };
    // An event is handled and the next command polled under one look at the clock, and the
    // clock is read again only after an await: commands that follow one another without
    // one (a send, then the wait for it) and the checkout of a send's pooled connection (its
    // future is first polled by that wait) share a read. `None` once an await ran.
    let mut clock = Some(now);
    let mut event: Option<Event> = None;
    loop {
        let now = *clock.get_or_insert_with(Instant::now);
        let command = with_env_at(worker, now, |env| {
            if let Some(e) = event.take() {
                lp.handle(env, e);
            }
            lp.poll(env)
        });
        event = Some(match command {
            Command::Send {
                attempt,
                target,
                hedge,
            } => {
                if hedge {
                    worker.metrics.hedge(plan.group);
                }
                match Launch::new(worker, plan, target, client) {
                    Ok(mut launch) => {
                        let request = std::mem::take(&mut launch.request);
                        let provider = launch.provider;
                        sends.launched.push(launch);
                        let Some(rest) = upload.as_deref_mut() else {
                            flights.start(attempt, || {
                                attempt::send_at(worker, provider, request, deadline, now)
                            });
                            continue;
                        };
                        clock = None;
                        // A streamed body: sent here, one attempt at a time.
                        // Out of line (`listen::cold`): the upload's state (some 2.8 KB) would
                        // otherwise size every request's state, a stream's included, and its
                        // poll would sit in this loop's code, for this rare path.
                        let (result, spent) = cold::boxed(|| {
                            upload::send(worker, provider, request, rest, watch, deadline)
                        })
                        .await;
                        if spent {
                            lp.body_spent();
                        }
                        match result {
                            Ok(sent) => head_event(sends, attempt, sent),
                            Err(UploadError::Upstream(e)) => Event::Failed {
                                attempt,
                                failure: transport_failure(worker, launch_of(sends, attempt), &e),
                            },
                            Err(UploadError::Client(error)) => Event::Refused { attempt, error },
                            Err(UploadError::ClientGone) => Event::ClientGone,
                        }
                    }
                    Err(error) => {
                        sends
                            .launched
                            .push(Launch::placeholder(&worker.shared.config, target));
                        Event::Refused { attempt, error }
                    }
                }
            }
            Command::Cancel { attempt } => {
                // Dropping the future or the connection closes it: cancelled upstream.
                flights.cancel(attempt);
                drop(sends.take_answered(attempt));
                continue;
            }
            Command::Wait { until } => {
                clock = None;
                wait(worker, sends, &mut flights, until, watch).await
            }
            Command::ReadErrorBody { attempt } => {
                clock = None;
                // The rare branches are made and polled out of line (`listen::cold`), so
                // their code and temporaries stay out of this loop, which every request runs.
                cold::boxed(|| read_error_body(worker, sends, attempt, deadline, watch)).await
            }
            Command::Deliver { attempt } => {
                let io = (&mut *wr, &mut *watch);
                break deliver_attempt(worker, lp, plan, sends, attempt, io, client, answer).await;
            }
            Command::PassThrough { attempt } => {
                break cold::boxed(|| {
                    pass_through(worker, plan, sends, attempt, wr, client, answer)
                })
                .await;
            }
            Command::Fail(err) => {
                log_failed(plan, &err);
                break cold::boxed(|| answer_error(wr, err, client, answer)).await;
            }
            Command::Abandon => {
                answer.client_cancelled = true;
                answer.status = 499;
                break false;
            }
        });
    }
}

/// The debug line of a request that failed after all attempts: out of line, as a log
/// call's expansion is long and the exchange every request runs should stay short.
#[cold]
#[inline(never)]
fn log_failed(plan: &Plan, err: &GatewayError) {
    tracing::debug!(model = %plan.inspected.model, error = %err, "request failed after all attempts");
}

/// Hands `attempt`'s answer to the client, then settles the attempt with how the relay ended.
#[allow(clippy::too_many_arguments)]
async fn deliver_attempt(
    worker: &Worker,
    lp: &mut AttemptLoop,
    plan: &mut Plan,
    sends: &mut Sends,
    attempt: AttemptId,
    (wr, watch): (&mut ClientWrite, &mut ClientWatch<'_>),
    client: &ClientSide<'_>,
    answer: &mut Answer,
) -> bool {
    let Some(sent) = sends.take_answered(attempt) else {
        let err = GatewayError::new(ErrorKind::Internal, "answer vanished");
        return cold::boxed(|| answer_error(wr, err, client, answer)).await;
    };
    let translation = launch_of(sends, attempt).and_then(|l| l.translation);
    let target = lp.target(attempt).unwrap_or(Target {
        group: plan.group,
        deployment: 0,
    });
    let started = lp.started(attempt).unwrap_or_else(Instant::now);
    let deadline = lp.deadline();
    answer.delivered_attempt = Some(attempt.0);
    let done = deliver(
        worker,
        plan,
        sent,
        translation,
        target,
        started,
        wr,
        watch,
        client,
        answer,
        deadline,
    )
    .await;
    let used = answer.usage.map_or(0, |u| u.total_tokens());
    // The delivery's own end time when it read one (no await since).
    let now = done.ended.unwrap_or_else(Instant::now);
    with_env_at(worker, now, |env| {
        lp.settle_delivered(env, done.relayed, done.latency, used)
    });
    done.keep_alive
}

fn launch_of(sends: &Sends, id: AttemptId) -> Option<&Launch> {
    sends.launched.get(id.0)
}

/// Waits for the first of: an attempt's head (or failure), the time `until`, the client
/// leaving.
async fn wait<F: Future<Output = Result<Sent, UpstreamError>>>(
    worker: &Worker,
    sends: &mut Sends,
    flights: &mut Flights<F>,
    until: Option<Instant>,
    watch: &mut ClientWatch<'_>,
) -> Event {
    let first = flights.next(&mut sends.answered);
    let timer = async {
        match until {
            Some(t) => crate::clock::sleep(t.saturating_duration_since(Instant::now())).await,
            None => std::future::pending::<()>().await,
        }
    };
    let raced = watch
        .race(pin!(async {
            monoio::select! {
                biased;
                done = first => Some(done),
                _ = timer => None,
            }
        }))
        .await;
    let (id, result) = match raced {
        None => return Event::ClientGone,
        Some(None) => return Event::Timer,
        Some(Some(done)) => done,
    };
    match result {
        Ok(()) => answered_event(sends, id),
        Err(e) => Event::Failed {
            attempt: id,
            failure: transport_failure(worker, launch_of(sends, id), &e),
        },
    }
}

/// The event of `id`'s response head; the answer is kept to read or deliver.
fn head_event(sends: &mut Sends, id: AttemptId, sent: Sent) -> Event {
    // A second head at once would be a hedge partner the loop is about to cancel.
    sends.answered = Some((id, sent));
    answered_event(sends, id)
}

/// The event of the response head kept in `sends.answered` (`id`'s).
fn answered_event(sends: &Sends, id: AttemptId) -> Event {
    let Some((_, sent)) = &sends.answered else {
        return Event::Failed {
            attempt: id,
            failure: TransportFailure {
                failure: Failure::Connect,
                error: GatewayError::new(ErrorKind::Internal, "answer vanished"),
                label: "internal",
            },
        };
    };
    // Read only for an error answer: the loop looks at it only for a status it may retry,
    // and config validation keeps `retry_on` within 400..=599 (a success answer, every
    // request's, skips two header lookups).
    let retry_after = (sent.head.status >= 400)
        .then(|| retry::retry_after(&sent.head))
        .flatten();
    Event::Head {
        attempt: id,
        status: sent.head.status,
        retry_after,
    }
}

/// One launched attempt: where it went and what it sent.
struct Launch {
    provider: usize,
    /// The deployment (its label is read from the config when needed, not copied).
    target: Target,
    request: Vec<u8>,
    span_id: Option<[u8; 8]>,
    translation: Option<Translation>,
}

impl Launch {
    fn new(
        worker: &Worker,
        plan: &Plan,
        target: Target,
        client: &ClientSide<'_>,
    ) -> Result<Launch, GatewayError> {
        let cfg = &worker.shared.config;
        let dep = cfg
            .models
            .get(target.group)
            .and_then(|g: &ModelGroup| g.deployments.get(target.deployment));
        let provider = dep.map_or(0, |d| d.provider);
        let span_id = client
            .trace
            .map(|_| crate::telemetry::context::new_span_id());
        let traceparent = client.trace.zip(span_id).map(|(t, s)| t.traceparent_for(s));
        let (request, translation) = match (dep, cfg.providers.get(provider)) {
            (Some(d), Some(p)) => {
                let token = crate::upstream::vertex::access_token(
                    &worker.shared.vertex_tokens,
                    p,
                    provider,
                )?;
                let token = token.as_ref().and_then(|t| t.as_deref()).map(|t| t.value());
                build_request(plan, p, d, client.request_id, traceparent.as_deref(), token)?
            }
            _ => {
                return Err(GatewayError::new(
                    ErrorKind::Internal,
                    "deployment vanished",
                ))
            }
        };
        Ok(Launch {
            provider,
            target,
            request,
            span_id,
            translation,
        })
    }

    /// The deployment's label (empty if it vanished).
    fn label<'c>(&self, cfg: &'c sluice_core::config::Config) -> &'c str {
        cfg.models
            .get(self.target.group)
            .and_then(|g| g.deployments.get(self.target.deployment))
            .map_or("", |d| d.label.as_str())
    }

    /// Stands for an attempt whose request could not be built (it never went out).
    fn placeholder(cfg: &sluice_core::config::Config, target: Target) -> Launch {
        let dep = cfg
            .models
            .get(target.group)
            .and_then(|g| g.deployments.get(target.deployment));
        Launch {
            provider: dep.map_or(0, |d| d.provider),
            target,
            request: Vec::new(),
            span_id: None,
            translation: None,
        }
    }
}
