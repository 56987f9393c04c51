//! One API request through core's stages, in order:
//!
//! ```text
//! authenticate (401) ─► Authenticated ─inspect (400, 404)─► Inspected ─ plan (400) ─ authorize (403)
//!   ─admit (429: requests, concurrency)─► Admitted ─► response store ─► hit: replay
//!   ─reserve (429: tokens, budget)─► Reserved ─► forward (attempts, relay) ─► Settlement
//! ```
//! Whatever happens, the request ends as one [`Settlement`] for the connection to settle.

use std::future::Future;
use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;
use sluice_core::error::GatewayError;
use sluice_core::http1::RequestHead;
use sluice_core::limiter::Ask;
use sluice_core::limits::LimitSet;
use sluice_core::request::{Authenticated, Inspected, Refused, Settled};

use crate::cache;
use crate::listen::client_io::{ClientRead, ClientWrite};
use crate::listen::cold;
use crate::listen::respond;
use crate::request::auth::KeyEntry;
use crate::request::client::ClientSide;
use crate::request::forward;
use crate::request::plan::{self, ApiEndpoint, Plan};
use crate::request::prepare;
use crate::request::settle::{Answer, Settlement};
use crate::request::upload::BodyRest;
use crate::state::Worker;

/// An API call as the connection sees it.
pub struct Call<'h> {
    /// The request head.
    pub head: &'h RequestHead,
    /// Which API.
    pub endpoint: ApiEndpoint,
    /// The client wants to keep the connection (and the gateway is not draining).
    pub keep_alive: bool,
}

/// How the call ended (what settlement needs is written into the caller's [`Settlement`]).
pub struct Served {
    /// The client connection can carry another request.
    pub keep_alive: bool,
    /// Bytes of the client's next request that arrived meanwhile.
    pub early: Vec<u8>,
}

impl Served {
    /// An authenticated request answered by the gateway itself (a refusal, a stored answer).
    fn local(
        keep_alive: bool,
        settlement: &mut Settlement,
        stage: Settled<Arc<KeyEntry>>,
        model: Option<String>,
    ) -> Self {
        settlement.stage = stage;
        settlement.model = model;
        settlement.authenticated = true;
        Served {
            keep_alive,
            early: Vec::new(),
        }
    }
}

/// Serves one API request (see the module docs).
// Not an `async fn`: an async fn stores each by-value argument twice in its future (the
// argument and the local it is bound to, for the whole request, a stream's minutes
// included); the block below uses the captured arguments in place.
#[allow(clippy::manual_async_fn)]
pub fn serve<'a>(
    worker: &'a Worker,
    call: Call<'a>,
    (body, upload): (Vec<u8>, Option<&'a mut BodyRest>),
    settlement: &'a mut Settlement,
    rd: &'a mut ClientRead,
    wr: &'a mut ClientWrite,
) -> impl Future<Output = Served> + 'a {
    async move {
        let shared = &worker.shared;
        let auth = &shared.auth;
        let key = match auth.authenticate(call.head, crate::clock::unix_s) {
            Ok(k) => k,
            Err(err) => {
                let bytes = respond::error(&err, call.keep_alive, &settlement.request.request_id);
                let keep_alive;
                (keep_alive, settlement.answer) =
                    cold::boxed(|| write(wr, bytes, err.status(), call.keep_alive)).await;
                return Served {
                    keep_alive,
                    early: Vec::new(),
                };
            }
        };
        let prepared = match prepare::prepare(call.endpoint, call.head, body) {
            Ok(p) => p,
            Err(error) => {
                let refused = unadmitted(error, key, None);
                return refuse(worker, wr, &call, settlement, refused, false).await;
            }
        };
        let probe = prepared.probe.as_deref().unwrap_or(&prepared.body);
        let inspected = match Authenticated::new(key.clone()).inspect(&shared.config, probe) {
            Ok(i) => i,
            Err(refused) => return refuse(worker, wr, &call, settlement, refused, false).await,
        };
        let body = prepared.body;
        let traced = settlement.request.trace.is_some();
        let group = inspected.group;
        let plan = match plan::plan(
            call.head,
            body,
            call.endpoint,
            inspected.fields.clone(),
            group,
            traced,
        ) {
            Ok(mut p) => {
                p.form = prepared.form;
                p.tail = upload.as_ref().map(|r| r.tail());
                p
            }
            Err(error) => {
                let refused = unadmitted(error, key, Some(inspected.fields.model.clone()));
                let stream = inspected.fields.stream;
                return refuse(worker, wr, &call, settlement, refused, stream).await;
            }
        };
        let stages = Stages {
            worker,
            key,
            call: &call,
            settlement,
            upload,
        };
        admit_and_forward(stages, inspected, plan, rd, wr).await
    }
}

/// What the admission stages share.
struct Stages<'a, 'h> {
    worker: &'a Worker,
    key: Option<Arc<KeyEntry>>,
    call: &'a Call<'h>,
    /// The request's record, filled in as it goes.
    settlement: &'a mut Settlement,
    /// The rest of a streamed upload, still in the client's socket.
    upload: Option<&'a mut BodyRest>,
}

/// From the model allow-list to the answer: authorize (403), admit (429), the response
/// store, reserve (429), forward.
// Not an `async fn`: an async fn stores each by-value argument twice in its future (the
// argument and the local it is bound to, for the whole request, a stream's minutes
// included); the block below uses the captured arguments in place.
#[allow(clippy::manual_async_fn)]
fn admit_and_forward<'a>(
    stages: Stages<'a, 'a>,
    inspected: Inspected<Arc<KeyEntry>>,
    mut plan: Plan,
    rd: &'a mut ClientRead,
    wr: &'a mut ClientWrite,
) -> impl Future<Output = Served> + 'a {
    async move {
        let Stages {
            worker,
            key,
            call,
            settlement,
            upload,
        } = stages;
        let shared = &worker.shared;
        let auth = &shared.auth;
        // The settlement's model is taken from the plan where the request ends (no copy
        // while it is under way).
        let group = plan.group;
        let no_sets: [&LimitSet; 0] = [];
        let key_sets = key.as_deref().map(KeyEntry::limit_sets);
        let sets: &[&LimitSet] = key_sets.as_ref().map_or(&no_sets[..], |s| &s[..]);
        let share;
        let mut limiter = &*shared.limiter;
        if let Some(fleet) = &shared.fleet {
            if fleet.fetch(sets, None).await {
                // Redis was late for this request: its local share admits it.
                share = sluice_core::lease::ShareOnLate(&fleet.limiter);
                limiter = &share;
            }
        }
        // No set, no bucket to look at: no clock read for the admission either.
        let now_ms = if sets.is_empty() {
            0
        } else {
            crate::clock::now_ms()
        };
        // Stages matched where they are made, never kept in a named local: a local that was
        // moved out still takes its room in this future until its scope ends, and this
        // future is part of every request's (and every stream's) allocation.
        let admitted = match inspected
            .authorize(|m| key.as_ref().is_none_or(|k| k.record.allows_model(m)))
            .and_then(|i| {
                i.admit(limiter, sets, now_ms, |d| {
                    auth.refusal(key.as_deref(), d, 0)
                })
            }) {
            Ok(a) => a,
            Err(refused) => {
                let stream = plan.inspected.stream;
                return refuse(worker, wr, call, settlement, refused, stream).await;
            }
        };
        if call.endpoint == ApiEndpoint::CountTokens
            && prepare::count_tokens_locally(&shared.config, group)
        {
            let stage = admitted.answer_locally();
            let keep_alive = cold::boxed(|| count_tokens(wr, call, settlement, &plan.body)).await;
            let model = Some(std::mem::take(&mut plan.inspected.model));
            return Served::local(keep_alive, settlement, stage, model);
        }
        let (admitted, ticket) = match cache::lookup(
            worker,
            call.head,
            &plan,
            key.as_deref(),
            admitted,
            &settlement.request.request_id,
        )
        .await
        {
            cache::Looked::Miss(a, ticket) => (a, ticket),
            cache::Looked::Hit(stage, stored, mark) => {
                let extra = key
                    .as_ref()
                    .map(|k| auth.ratelimit_headers(k))
                    .unwrap_or_default();
                let keep_alive;
                (keep_alive, settlement.answer) = cold::boxed(|| {
                    cache::replay(
                        worker,
                        wr,
                        &plan,
                        &stored,
                        mark,
                        call.keep_alive,
                        &settlement.request.request_id,
                        settlement.request.started,
                        &extra,
                    )
                })
                .await;
                let model = Some(std::mem::take(&mut plan.inspected.model));
                return Served::local(keep_alive, settlement, stage, model);
            }
        };
        // The prompt estimate (a scan of the whole body) and its cost matter only where they
        // are reserved: a key's or its team's limits and budget, a deployment's tpm, the fleet.
        let ask = if sets.is_empty()
            && shared.fleet.is_none()
            && !shared.provider_limits.counts_tokens(group)
        {
            // No set and no fleet: the reservation below looks at no bucket or budget, so
            // nothing reads the ask's times (two clock reads less per request).
            Ask {
                tokens: 0,
                cost_micros: 0,
                now_ms: 0,
                unix_s: 0,
            }
        } else {
            auth.ask(
                &shared.config,
                &shared.prices,
                group,
                &plan.inspected,
                &plan.prompt_scan(),
            )
        };
        if let Some(fleet) = &shared.fleet {
            fleet.fetch(sets, Some(&ask)).await;
        }
        let reserved = match admitted.reserve(limiter, sets, &ask, |d| {
            auth.refusal(key.as_deref(), d, ask.tokens)
        }) {
            Ok(r) => r,
            Err(refused) => {
                let stream = plan.inspected.stream;
                return refuse(worker, wr, call, settlement, refused, stream).await;
            }
        };
        let Settlement {
            request,
            stage,
            answer,
            ..
        } = &mut *settlement;
        let mut side = ClientSide {
            request_id: &request.request_id,
            http10: call.head.version == 0,
            keep_alive: call.keep_alive,
            started: request.started,
            extra_headers: Vec::new(),
            // At the reservation's time (its clock read: a key always has limit sets).
            rate_limits: key
                .as_ref()
                .map(|k| auth.rate_limits(k, ask.now_ms))
                .unwrap_or_default(),
            trace: request.trace,
        };
        cache::on_miss(ticket.as_deref(), &mut plan, &mut side.extra_headers);
        let io = (rd, upload);
        let done =
            forward::execute(worker, reserved, &mut plan, io, wr, &side, (answer, stage)).await;
        cache::after_miss(ticket, answer);
        settlement.model = Some(std::mem::take(&mut plan.inspected.model));
        settlement.authenticated = true;
        Served {
            keep_alive: done.keep_alive,
            early: done.early,
        }
    }
}

/// Answers `count_tokens` with the gateway's estimate, marked `x-sluice-estimate: true` (a
/// body it cannot read is a 400).
async fn count_tokens(
    wr: &mut ClientWrite,
    call: &Call<'_>,
    settlement: &mut Settlement,
    body: &[u8],
) -> bool {
    let request_id = &settlement.request.request_id;
    let (status, bytes) = match prepare::count_tokens_body(body) {
        Ok(out) => {
            let headers: [(&str, &[u8]); 1] = [("x-sluice-estimate", b"true")];
            let bytes = respond::json(200, &out, &headers, call.keep_alive, request_id);
            (200, bytes)
        }
        Err(err) => (
            err.status(),
            respond::error(&err, call.keep_alive, request_id),
        ),
    };
    let keep_alive;
    (keep_alive, settlement.answer) = write(wr, bytes, status, call.keep_alive).await;
    settlement.answer.cost_micros = Some(0);
    keep_alive
}

/// The refusal of `key`'s request before admission (no limit counted it yet): `error`, and the
/// model the body named when it was read.
fn unadmitted(
    error: GatewayError,
    key: Option<Arc<KeyEntry>>,
    model: Option<String>,
) -> Box<Refused<Arc<KeyEntry>>> {
    Box::new(Refused {
        error,
        principal: key,
        permit: None,
        denied: None,
        model,
    })
}

/// Answers a request a stage refused with its error (and the key's `x-ratelimit-*` headers),
/// made and polled out of line (`listen::cold`), as the other local answers are (count_tokens,
/// a stored answer's replay): the stages every request runs keep only the forwarding path's
/// code and temporaries.
fn refuse<'a>(
    worker: &'a Worker,
    wr: &'a mut ClientWrite,
    call: &'a Call<'_>,
    settlement: &'a mut Settlement,
    refused: Box<Refused<Arc<KeyEntry>>>,
    stream: bool,
) -> impl Future<Output = Served> + 'a {
    cold::boxed(move || refusal(worker, wr, call, settlement, refused, stream))
}

/// [`refuse`]'s answer.
async fn refusal(
    worker: &Worker,
    wr: &mut ClientWrite,
    call: &Call<'_>,
    settlement: &mut Settlement,
    refused: Box<Refused<Arc<KeyEntry>>>,
    stream: bool,
) -> Served {
    let auth = &worker.shared.auth;
    let model = refused.model.clone();
    let (stage, err): (Settled<Arc<KeyEntry>>, GatewayError) = Settled::refused(*refused);
    let headers = stage
        .principal
        .as_ref()
        .map(|k| auth.ratelimit_headers(k))
        .unwrap_or_default();
    let extra: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let keep = call.keep_alive && !err.kind.closes_connection();
    let bytes = respond::error_with(&err, &extra, keep, &settlement.request.request_id);
    let keep_alive;
    (keep_alive, settlement.answer) = write(wr, bytes, err.status(), keep).await;
    // The access log and metrics say whether the refused request asked for a stream.
    settlement.answer.stream = stream;
    Served::local(keep_alive, settlement, stage, model)
}

/// Writes a local answer; whether the connection stays open, and what the client got.
pub async fn write(
    wr: &mut ClientWrite,
    bytes: Vec<u8>,
    status: u16,
    keep_alive: bool,
) -> (bool, Answer) {
    let answer = Answer {
        status,
        bytes_out: bytes.len() as u64,
        ..Answer::default()
    };
    let (res, _) = wr.write_all(bytes).await;
    (res.is_ok() && keep_alive, answer)
}
