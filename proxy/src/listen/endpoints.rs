//! The gateway's own endpoints and the routing table.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_core::error::bounded;
use sluice_core::error::{ErrorKind, GatewayError};

use crate::request::plan::ApiEndpoint;
use crate::state::Worker;

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`: the process is alive.
    Healthz,
    /// `GET /readyz`: config loaded, listeners up, an upstream reachable.
    Readyz,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/models/{id}`.
    Model,
    /// `GET /metrics`, when `admin.metrics_on_main` is set.
    Metrics,
    /// Forwarded upstream.
    Api(ApiEndpoint),
}

/// The `Allow` header of a path, for 405s.
pub fn allow_for(route: Route) -> &'static [u8] {
    match route {
        Route::Healthz | Route::Readyz | Route::Models | Route::Model | Route::Metrics => {
            b"GET, HEAD"
        }
        Route::Api(_) => b"POST",
    }
}

/// The gateway's fixed paths and where each goes (a model's own path, `/v1/models/{id}`, is
/// read by [`model_id`]).
const PATHS: [(&str, Route); 14] = [
    (
        "/v1/chat/completions",
        Route::Api(ApiEndpoint::ChatCompletions),
    ),
    ("/v1/responses", Route::Api(ApiEndpoint::Responses)),
    ("/v1/messages", Route::Api(ApiEndpoint::Messages)),
    ("/v1/completions", Route::Api(ApiEndpoint::Completions)),
    ("/v1/embeddings", Route::Api(ApiEndpoint::Embeddings)),
    (
        "/v1/messages/count_tokens",
        Route::Api(ApiEndpoint::CountTokens),
    ),
    ("/v1/moderations", Route::Api(ApiEndpoint::Moderations)),
    (
        "/v1/images/generations",
        Route::Api(ApiEndpoint::ImagesGenerations),
    ),
    (
        "/v1/audio/transcriptions",
        Route::Api(ApiEndpoint::AudioTranscriptions),
    ),
    ("/v1/audio/speech", Route::Api(ApiEndpoint::AudioSpeech)),
    ("/v1/models", Route::Models),
    ("/healthz", Route::Healthz),
    ("/readyz", Route::Readyz),
    ("/metrics", Route::Metrics),
];

/// A request's path for its record: one of the gateway's fixed paths, exactly as written,
/// borrowed (no allocation per request); any other (a query, a model id, a trailing slash,
/// an unknown path) copied.
pub fn recorded_path(path: &str) -> Cow<'static, str> {
    match PATHS.iter().find(|(p, _)| *p == path) {
        Some((p, _)) => Cow::Borrowed(p),
        None => Cow::Owned(path.to_owned()),
    }
}

/// Maps method and path to a route: 404 for an unknown path, 405 (with the route, for its
/// `Allow` header) for a known path with the wrong method.
pub fn route(method: &str, path: &str) -> Result<Route, (GatewayError, Option<Route>)> {
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let route = match PATHS.iter().find(|(p, _)| *p == path) {
        Some(&(_, route)) => route,
        None if model_id(path).is_some() => Route::Model,
        None => {
            return Err((
                GatewayError::new(
                    ErrorKind::RouteNotFound,
                    format!("Unknown request URL: {} {}", bounded(method), bounded(path)),
                ),
                None,
            ))
        }
    };
    let ok = match route {
        Route::Api(_) => method == "POST",
        _ => method == "GET" || method == "HEAD",
    };
    if ok {
        Ok(route)
    } else {
        Err((
            GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!(
                    "method {} is not allowed on {}",
                    bounded(method),
                    bounded(path)
                ),
            ),
            Some(route),
        ))
    }
}

/// The model id of a `/v1/models/{id}` path (percent-decoded; ids such as `org/model` may
/// come with their slash encoded or not).
fn model_id(path: &str) -> Option<String> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let raw = path
        .strip_prefix("/v1/models/")
        .filter(|id| !id.is_empty())?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One entry of OpenAI's model list.
fn model_object(worker: &Worker, id: &str, owned_by: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "object": "model",
        "created": worker.shared.started_unix,
        "owned_by": owned_by,
    })
}

/// The `/v1/models` body, in OpenAI's list format: every exact model name in config order,
/// then the upstream's models that the pattern groups serve (see `upstream::catalog`).
pub fn models_body(worker: &Worker) -> Vec<u8> {
    let cfg = &worker.shared.config;
    let exact = cfg.models.iter().filter(|m| !m.name.ends_with('*'));
    let mut data: Vec<serde_json::Value> = exact
        .clone()
        .map(|m| model_object(worker, &m.name, "sluice"))
        .collect();
    for id in worker.shared.catalog.ids().unwrap_or_default() {
        if !exact.clone().any(|m| &m.name == id) {
            data.push(model_object(worker, id, "upstream"));
        }
    }
    serde_json::to_vec(&serde_json::json!({ "object": "list", "data": data })).unwrap_or_default()
}

/// The `/v1/models/{id}` body: the model object of a name the gateway serves — an exact
/// name, or a name a pattern group matches that the upstream lists (any matching name while
/// the upstream's list is unknown). 404 in OpenAI's shape otherwise, the id bounded.
pub fn model_body(worker: &Worker, path: &str) -> Result<Vec<u8>, GatewayError> {
    let cfg = &worker.shared.config;
    let id = model_id(path).unwrap_or_default();
    let group = cfg.model_index(&id).and_then(|g| cfg.models.get(g));
    let found = match group {
        Some(g) if !g.name.ends_with('*') => Some("sluice"),
        Some(_) => worker
            .shared
            .catalog
            .lists(&id)
            .unwrap_or(true)
            .then_some("upstream"),
        None => None,
    };
    match found {
        Some(owner) => {
            Ok(serde_json::to_vec(&model_object(worker, &id, owner)).unwrap_or_default())
        }
        None => Err(GatewayError::new(
            ErrorKind::ModelNotFound,
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                bounded(&id)
            ),
        )
        .with_param("model")),
    }
}

/// How long a readiness answer is reused before probing again.
const READY_CACHE: Duration = Duration::from_secs(2);
/// How long a readiness probe waits for a TCP connect.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Readiness: listeners up on every worker, not draining, and at least one provider accepting
/// TCP connections. Returns the verdict and a reason.
pub async fn readiness(worker: &Worker) -> (bool, &'static str) {
    let shared = &worker.shared;
    if shared.is_draining() {
        return (false, "draining");
    }
    if shared
        .listeners_up
        .load(std::sync::atomic::Ordering::Relaxed)
        < shared.workers
    {
        return (false, "listeners starting");
    }
    if shared.config.providers.is_empty() {
        return (false, "no upstream provider configured");
    }
    let now = Instant::now();
    if let Some((at, ok)) = worker.ready_cache.get() {
        if now.saturating_duration_since(at) < READY_CACHE {
            return (ok, if ok { "ready" } else { "no upstream reachable" });
        }
    }
    let mut ok = false;
    'providers: for i in 0..shared.config.providers.len() {
        match shared
            .health
            .get(i)
            .map(|h| h.load(std::sync::atomic::Ordering::Relaxed))
        {
            Some(crate::upstream::health::HEALTHY) => {
                ok = true;
                break;
            }
            Some(crate::upstream::health::UNHEALTHY) => continue,
            _ => {}
        }
        if worker.pool.borrow().idle_count(i) > 0 {
            ok = true;
            break;
        }
        for addr in shared.dns.addrs(i).iter() {
            if probe(*addr).await {
                ok = true;
                break 'providers;
            }
        }
    }
    worker.ready_cache.set(Some((Instant::now(), ok)));
    (ok, if ok { "ready" } else { "no upstream reachable" })
}

/// The store's state for `/readyz`: `ok`, or `unavailable` with the records waiting for it
/// (in memory and spilled to disk). `None` without a store.
pub fn store_detail(worker: &Worker) -> Option<serde_json::Value> {
    let ledger = worker.shared.auth.ledger.as_ref()?;
    let down = ledger.store_down();
    Some(serde_json::json!({
        "status": if down { "unavailable" } else { "ok" },
        "backlog_records": ledger.backlog(),
        "spilled_records": ledger.spilled(),
    }))
}

async fn probe(addr: SocketAddr) -> bool {
    matches!(
        crate::clock::timeout(
            PROBE_TIMEOUT,
            std::pin::pin!(monoio::net::TcpStream::connect_addr(addr)),
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_paths_are_recorded_borrowed_others_as_written() {
        for (p, _) in PATHS {
            assert!(matches!(recorded_path(p), Cow::Borrowed(b) if b == p));
        }
        for odd in [
            "/v1/chat/completions/",
            "/v1/models/gpt-4o",
            "/v1/embeddings?x=1",
            "/",
        ] {
            let r = recorded_path(odd);
            assert!(matches!(r, Cow::Owned(_)) && r == odd, "{odd}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("POST", "/v1/chat/completions").unwrap(),
            Route::Api(ApiEndpoint::ChatCompletions)
        );
        assert_eq!(route("GET", "/v1/models/").unwrap(), Route::Models);
        assert_eq!(route("GET", "/v1/models/gpt-4o").unwrap(), Route::Model);
        assert_eq!(route("HEAD", "/v1/models/a/b").unwrap(), Route::Model);
        assert_eq!(route("POST", "/v1/models/x").unwrap_err().0.status(), 405);
        assert_eq!(
            model_id("/v1/models/org%2Fm%zz").as_deref(),
            Some("org/m%zz")
        );
        assert_eq!(model_id("/v1/models/%ff"), None);
        let (e, r) = route("GET", "/v1/chat/completions").unwrap_err();
        assert_eq!(e.status(), 405);
        assert_eq!(allow_for(r.unwrap()), b"POST");
        let (e, r) = route("POST", "/nope").unwrap_err();
        assert_eq!((e.status(), r), (404, None));
    }
}
