//! The response cache on the request path: what `request::api` asks between admission and
//! reservation, how a stored answer goes back to the client, and what settlement keeps.
//!
//! ```text
//! Admitted ─► for_request(): a cache? ── no ─► reserve, forward (no lookup made at all)
//!                │ yes: lookup(): directives, scope, key (core::cache::key)
//!                ├─ store hit ─► replay(): the stored answer in the client's shape ─► Settled
//!                └─ miss ─► Ticket ─► reserve ─► forward (deliver captures the pivot)
//!                                                   └─► settle(): insert when complete, 2xx
//! ```
//! Decisions (keys, replay bytes, capture) are core's (`sluice_core::cache`); this module reads
//! headers and the caller, writes bytes and counts.

use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;
use sluice_core::attempt::AttemptLoop;
use sluice_core::cache::directives::Directives;
use sluice_core::cache::replay::{self, Replay};
use sluice_core::cache::settings::{CacheScope, GroupCache};
use sluice_core::cache::{CallKind, KeyInput, StoredAnswer};
use sluice_core::compress::AnswerFacts;
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::http1::RequestHead;
use sluice_core::request::{Admitted, Lookup, Settled};

use crate::listen::client_io::ClientWrite;
use crate::listen::respond::HeaderValue;
use crate::listen::respond::{self, ClientFraming};
use crate::request::auth::KeyEntry;
use crate::request::compress::{self, Encoded};
use crate::request::plan::{ApiEndpoint, Plan};
use crate::request::settle::Answer;
use crate::state::Worker;

pub mod coalesce;
pub mod embed;
pub mod keep;
pub mod note;
pub mod search;

pub use note::{CacheNote, Mark, Ticket};

/// The kind of call an endpoint's answers are cached as (`None`: not cached). Only answers
/// the key describes completely are cached (legacy completions exactly, like chat, in their
/// own shape): a token count is answered without the cache, a Responses call is keyed in no
/// chat shape yet, moderation, images and audio are not worth keeping (or binary, or a
/// multipart form the key does not read).
pub fn call_kind(endpoint: ApiEndpoint) -> Option<CallKind> {
    match endpoint {
        ApiEndpoint::ChatCompletions | ApiEndpoint::Messages => Some(CallKind::Chat),
        ApiEndpoint::Embeddings => Some(CallKind::Embeddings),
        ApiEndpoint::Completions => Some(CallKind::Completion),
        ApiEndpoint::Responses
        | ApiEndpoint::CountTokens
        | ApiEndpoint::Moderations
        | ApiEndpoint::ImagesGenerations
        | ApiEndpoint::AudioTranscriptions
        | ApiEndpoint::AudioSpeech => None,
    }
}

/// The tenant scope of a request: entries never cross it.
fn scope_of(scope: CacheScope, key: Option<&KeyEntry>) -> String {
    match (scope, key) {
        (CacheScope::Global, _) => "global".to_owned(),
        (_, None) => "anonymous".to_owned(),
        (CacheScope::Team, Some(k)) => format!("team:{}", k.team.name),
        (CacheScope::Key, Some(k)) => format!("key:{}", k.id),
    }
}

/// The group's cache, when it has one that this endpoint uses.
fn group_cache<'c>(worker: &'c Worker, plan: &Plan) -> Option<&'c GroupCache> {
    let cfg = &worker.shared.config;
    let cache = cfg.models.get(plan.group)?.cache.as_ref()?;
    call_kind(plan.endpoint)?;
    Some(cache)
}

/// What the cache said.
pub enum Looked {
    /// A stored answer: replay it (the request reserves nothing).
    Hit(Settled<Arc<KeyEntry>>, Arc<StoredAnswer>, Mark),
    /// Go upstream; a group with a cache hands its ticket to settlement.
    Miss(Admitted<Arc<KeyEntry>>, Option<Box<Ticket>>),
}

/// The cache a request is looked up in: its group's, when the group has one its endpoint
/// uses and the key does not opt out (a key with `cache = false` is served as if its group had
/// none). Without one the request goes upstream with no lookup and no ticket: the caller
/// checks this first, so a group without a cache makes no lookup future at all.
pub fn for_request<'c>(
    worker: &'c Worker,
    plan: &Plan,
    key: Option<&KeyEntry>,
) -> Option<&'c GroupCache> {
    group_cache(worker, plan).filter(|_| key.is_none_or(|k| k.record.uses_cache()))
}

/// Asks the store for an answer to the request (after admission, before reservation), in the
/// request's `cache` ([`for_request`]): the exact key first, then, in a group with a semantic
/// cache, the prompt's embedding against the semantic index.
pub async fn lookup(
    worker: &Worker,
    cache: &GroupCache,
    head: &RequestHead,
    plan: &Plan,
    key: Option<&KeyEntry>,
    admitted: Admitted<Arc<KeyEntry>>,
    request_id: &str,
) -> Looked {
    let store = &*worker.shared.responses;
    let directives = Directives::from_headers(head.headers());
    let scope = scope_of(cache.scope, key);
    let input = call_kind(plan.endpoint).map(|kind| KeyInput {
        scope: &scope,
        kind,
        inbound: plan.endpoint.inbound(),
        model: &plan.inspected.model,
        body: &plan.body,
    });
    let cache_key = input.as_ref().and_then(|i| store.key(i));
    let read = directives.reads();
    let exact = cache_key.as_ref().filter(|_| read && cache.exact);
    let admitted = match admitted.lookup(store, exact, crate::clock::now_ms()) {
        Lookup::Hit(s, a) => return Looked::Hit(s, a, Mark::Hit),
        Lookup::Miss(a) => a,
    };
    // With `[shared]`: the fleet's second level (Redis), within `shared.timeout_ms`.
    let admitted = match crate::shared::cache::second_level(worker, exact).await {
        Some(answer) => match admitted.hit(answer) {
            Lookup::Hit(s, a) => return Looked::Hit(s, a, Mark::Hit),
            Lookup::Miss(a) => a,
        },
        None => admitted,
    };
    let mut ticket = Ticket {
        key: cache_key,
        ttl_ms: directives.ttl_ms.unwrap_or(cache.ttl_ms),
        write: directives.writes() && cache_key.is_some(),
        semantic: None,
        leader: None,
    };
    // Coalescing: an identical request in flight answers this one.
    let admitted = match cache_key.filter(|_| cache.coalesce && read && ticket.write) {
        None => admitted,
        Some(k) => match worker.shared.flights.join(k.hash) {
            coalesce::Role::Leader(l) => {
                ticket.leader = Some(l);
                admitted
            }
            coalesce::Role::Follower(rx) => {
                let limit = AttemptLoop::deadline_for(
                    &worker.shared.config,
                    plan.group,
                    std::time::Instant::now(),
                    None,
                )
                .saturating_duration_since(std::time::Instant::now());
                match coalesce::follow(rx, limit).await {
                    Some(answer) => {
                        return match admitted.hit(answer) {
                            Lookup::Hit(s, a) => Looked::Hit(s, a, Mark::Coalesced),
                            Lookup::Miss(a) => Looked::Miss(a, Some(Box::new(ticket))),
                        }
                    }
                    None => admitted,
                }
            }
        },
    };
    let semantic = match (&input, &cache.embedding_model) {
        (Some(i), Some(model)) if cache.semantic && (read || ticket.write) => {
            store.semantic_query(i).map(|q| (q, model))
        }
        _ => None,
    };
    if let Some((q, model)) = semantic {
        // Boxed: the embedding call's future lives on the heap only when it runs, so the
        // request future of every other request stays small.
        let call = Box::pin(embed::embed(
            worker,
            model,
            &q.text,
            cache.embedding_timeout_ms,
            request_id,
        ));
        if let Some(vector) = call.await {
            let threshold = directives.threshold.unwrap_or(cache.threshold);
            let now = crate::clock::now_ms();
            if read {
                let cfg = &worker.shared.config;
                let group = cfg
                    .models
                    .get(plan.group)
                    .map_or("none", |g| g.name.as_str());
                let responses = &worker.shared.responses;
                let found = search::similar(responses, &q, &vector, threshold, now, group).await;
                if let Some((answer, sim)) = found {
                    return match admitted.hit(answer) {
                        Lookup::Hit(s, a) => Looked::Hit(s, a, Mark::Semantic(sim)),
                        Lookup::Miss(a) => Looked::Miss(a, Some(Box::new(ticket))),
                    };
                }
            }
            ticket.semantic = Some((q, vector));
        }
    }
    Looked::Miss(admitted, Some(Box::new(ticket)))
}

/// A miss went upstream: what settlement needs to keep its answer. Adds `x-sluice-cache: miss`
/// to the answer's headers and tells `deliver` to capture the answer.
pub fn on_miss(
    ticket: Option<&Ticket>,
    plan: &mut Plan,
    headers: &mut Vec<(&'static str, HeaderValue)>,
) {
    if let Some(t) = ticket {
        plan.capture = t.write;
        headers.push(("x-sluice-cache", HeaderValue::from_slice(b"miss")));
    }
}

/// The exchange ended: the miss's ticket joins what `deliver` captured.
pub fn after_miss(ticket: Option<Box<Ticket>>, answer: &mut Answer) {
    if let Some(t) = ticket {
        let note = answer
            .cache
            .get_or_insert_with(|| Box::new(CacheNote::new(Mark::Miss)));
        note.mark = Mark::Miss;
        note.ticket = Some(t);
    }
}

/// Answers from the store: the stored answer in the client's shape, whole or as a stream,
/// marked `x-sluice-cache: hit`, compressed when the client accepts it (as an upstream's
/// answer would be). The request counted against the caller's request rate; it
/// reserves and spends no tokens and no money.
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    worker: &Worker,
    wr: &mut ClientWrite,
    plan: &Plan,
    stored: &StoredAnswer,
    mark: Mark,
    keep_alive: bool,
    request_id: &str,
    started: std::time::Instant,
    extra: &[(&'static str, HeaderValue)],
) -> (bool, Answer) {
    let prefix = match plan.endpoint {
        ApiEndpoint::Messages => "msg_",
        ApiEndpoint::Completions => "cmpl-",
        _ => "chatcmpl-",
    };
    let id = format!("{prefix}{request_id}");
    let r = Replay {
        inbound: plan.endpoint.inbound(),
        stream: plan.inspected.stream && stored.kind != CallKind::Embeddings,
        include_usage: plan.inspected.include_usage,
        model: &plan.inspected.model,
        id: &id,
        created: crate::clock::unix_s(),
    };
    let (body, content_type) = replay::body(stored, &r);
    // Compressed like an upstream's answer would be, when the client accepts it.
    let facts = AnswerFacts {
        len: body.len() as u64,
        content_type: Some(content_type.as_bytes()),
        encoded: false,
        no_transform: false,
    };
    let compression = &worker.shared.config.server.compression;
    let Encoded { body, decision } =
        match compress::encode_body(compression, &plan.accept_encoding, &facts, body).await {
            Some(e) => e,
            // A compression thread died with the body (a bug): an empty answer would be
            // wrong, so the client is told the gateway failed.
            None => return replay_lost(wr, keep_alive, request_id).await,
        };
    let marked = match mark {
        Mark::Semantic(s) => format!("semantic; similarity={s:.2}"),
        Mark::Coalesced => "hit; coalesced".to_owned(),
        other => other.label().to_owned(),
    };
    let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(3 + extra.len());
    headers.push(("content-type", content_type.as_bytes()));
    headers.push(("x-sluice-cache", marked.as_bytes()));
    if r.stream {
        headers.push(("cache-control", b"no-cache"));
    }
    if let Some(coding) = decision.coding {
        headers.push(("content-encoding", coding.token().as_bytes()));
    }
    if decision.vary {
        headers.push(("vary", b"accept-encoding"));
    }
    for (n, v) in extra {
        headers.push((n, &v[..]));
    }
    let mut wire = Vec::with_capacity(512 + body.len());
    respond::write_head(
        &mut wire,
        200,
        &headers,
        ClientFraming::Length(body.len() as u64),
        keep_alive,
        request_id,
    );
    wire.extend_from_slice(&body);
    let mut note = CacheNote::new(mark);
    note.saved_micros = stored.cost_micros.unwrap_or(0);
    note.saved_tokens = stored.usage.map_or(0, |u| u.total_tokens());
    let mut answer = Answer {
        status: 200,
        stream: r.stream,
        cost_micros: Some(0),
        bytes_out: wire.len() as u64,
        cache: Some(Box::new(note)),
        ..Answer::default()
    };
    let (res, _) = wr.write_all(wire).await;
    answer.ttfb_us = Some(started.elapsed().as_micros() as u64);
    if res.is_err() {
        answer.client_cancelled = true;
    }
    (res.is_ok() && keep_alive, answer)
}

/// The 500 of a replay whose compressed body was lost.
async fn replay_lost(wr: &mut ClientWrite, keep_alive: bool, request_id: &str) -> (bool, Answer) {
    let err = GatewayError::new(ErrorKind::Internal, "the compressed answer was lost");
    let wire = respond::error(&err, keep_alive, request_id);
    let answer = Answer {
        status: err.status(),
        bytes_out: wire.len() as u64,
        ..Answer::default()
    };
    let (res, _) = wr.write_all(wire).await;
    (res.is_ok() && keep_alive, answer)
}

/// 32 random bytes for the process's cache key (so keys differ per process and nobody can
/// aim a collision): from the kernel (`getrandom`), or, failing that, from std's randomly seeded hasher.
pub fn secret() -> [u8; 32] {
    let mut out = [0u8; 32];
    if getrandom::fill(&mut out).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, part) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u64(crate::clock::unix_ms());
            part.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    out
}
