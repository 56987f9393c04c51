//! `GET /admin/cache` (the store's counters and the groups with a cache) and
//! `DELETE /admin/cache?model=…&scope=…` (drop entries: all, of a public model, of a scope —
//! `team:NAME`, `key:ID`, `global` or `anonymous`).

use serde_json::{json, Value};
use sluice_core::cache::settings::CacheScope;
use sluice_core::cache::Clear;

use super::{fail, query_params, Answer, Res};
use crate::state::Shared;

/// Answers a cache admin call.
pub(super) fn cache_api(shared: &Shared, method: &str, query: &str) -> Res {
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
            Ok(Answer(
                200,
                json!({"store": store.stats(), "groups": groups}),
            ))
        }
        "DELETE" => {
            let mut model = None;
            let mut scope = None;
            for (k, v) in query_params(query) {
                match k {
                    "model" if !v.is_empty() => model = Some(v),
                    "scope" if !v.is_empty() => scope = Some(v),
                    _ => {
                        return Err(fail(
                            400,
                            "bad_query",
                            "DELETE /admin/cache takes `model` and `scope` (both optional)",
                        ))
                    }
                }
            }
            store.clear(Clear { model, scope });
            if let Some(fleet) = &shared.fleet {
                fleet.cache.clear(Clear { model, scope });
            }
            Ok(Answer(
                200,
                json!({"cleared": {"model": model, "scope": scope}, "store": store.stats()}),
            ))
        }
        _ => Err(fail(
            405,
            "method_not_allowed",
            "use GET or DELETE on /admin/cache",
        )),
    }
}
