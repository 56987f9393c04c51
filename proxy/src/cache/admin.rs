//! `GET /admin/cache` (the store's counters and the groups with a cache) and
//! `DELETE /admin/cache?model=…&scope=…` (drop entries: all, of a public model, of a scope —
//! `team:NAME`, `key:ID`, `global` or `anonymous`).

use serde_json::{json, Value};
use sluice_core::cache::settings::CacheScope;
use sluice_core::cache::Clear;

use crate::state::Shared;

/// Answers a cache admin call: (status, JSON body).
pub fn handle(shared: &Shared, method: &str, query: &str) -> (u16, Value) {
    let store = &*shared.responses;
    match method {
        "GET" => {
            let groups: Vec<Value> = shared
                .config
                .models
                .iter()
                .filter_map(|m| {
                    let c = m.cache.as_ref()?;
                    Some(json!({
                        "model": m.name,
                        "exact": c.exact,
                        "semantic": c.semantic,
                        "ttl_s": c.ttl_ms / 1000,
                        "scope": match c.scope {
                            CacheScope::Team => "team",
                            CacheScope::Key => "key",
                            CacheScope::Global => "global",
                        },
                        "threshold": c.threshold,
                        "embedding_model": c.embedding_model,
                        "coalesce": c.coalesce,
                    }))
                })
                .collect();
            (200, json!({"store": store.stats(), "groups": groups}))
        }
        "DELETE" => {
            let mut model = None;
            let mut scope = None;
            for (k, v) in query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            {
                match k {
                    "model" if !v.is_empty() => model = Some(v),
                    "scope" if !v.is_empty() => scope = Some(v),
                    _ => {
                        return (
                            400,
                            json!({"error": {"message": "DELETE /admin/cache takes `model` and `scope` (both optional)", "type": "invalid_request_error", "param": null, "code": "bad_query"}}),
                        )
                    }
                }
            }
            store.clear(Clear { model, scope });
            (
                200,
                json!({"cleared": {"model": model, "scope": scope}, "store": store.stats()}),
            )
        }
        _ => (
            405,
            json!({"error": {"message": "use GET or DELETE on /admin/cache", "type": "invalid_request_error", "param": null, "code": "method_not_allowed"}}),
        ),
    }
}
