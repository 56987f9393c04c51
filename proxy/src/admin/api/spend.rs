//! `/admin/spend` and `/admin/usage`: reports from the ledger.

use serde_json::{json, Value};
use sluice_core::cost::format_usd;
use sluice_core::error::bounded;

use super::{fail, query_params, range, registry, store_error, Answer, Res};
use crate::state::Shared;
use crate::store::SpendGroup;

pub(super) fn spend(shared: &Shared, query: &str) -> Res {
    let params = query_params(query);
    let (from, to) = range(&params)?;
    let by = params
        .iter()
        .find(|(k, _)| *k == "group_by")
        .map_or("key", |(_, v)| *v);
    let group = match by {
        "key" => SpendGroup::Key,
        "team" => SpendGroup::Team,
        "model" => SpendGroup::Model,
        "deployment" => SpendGroup::Deployment,
        "day" => SpendGroup::Day,
        other => {
            return Err(fail(
                400,
                "invalid_request",
                format!(
                    "`group_by` must be key, team, model, deployment or day, not `{}`",
                    bounded(other)
                ),
            ))
        }
    };
    let reg = registry(shared)?;
    let rows = reg.store.spend_by(group, from, to).map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "group": r.group,
                "requests": r.requests,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cached_tokens": r.cached_tokens,
                "reasoning_tokens": r.reasoning_tokens,
                "cost_micros": r.cost_micros,
                "cost_usd": format_usd(r.cost_micros),
            })
        })
        .collect();
    Ok(Answer(
        200,
        json!({"object": "list", "group_by": by, "from_ms": from, "to_ms": to, "data": data}),
    ))
}

pub(super) fn usage(shared: &Shared, query: &str) -> Res {
    let params = query_params(query);
    let (from, to) = range(&params)?;
    let get = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let limit = match get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| fail(400, "invalid_request", "`limit` must be 1..=10000"))?,
    };
    let (key_id, team) = (get("key_id"), get("team"));
    let filtered = key_id.is_some() || team.is_some();
    let reg = registry(shared)?;
    let fetch = if filtered { 100_000 } else { limit };
    let rows = reg.store.ledger(from, to, fetch).map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .filter(|r| key_id.is_none_or(|k| r.key_id.as_deref() == Some(k)))
        .filter(|r| team.is_none_or(|t| r.team.as_deref() == Some(t)))
        .take(limit)
        .map(|r| {
            json!({
                "request_id": r.request_id,
                "ts_ms": r.ts_ms,
                "key_id": r.key_id.as_deref(),
                "team": r.team.as_deref(),
                "model": &*r.model,
                "deployment": r.deployment.as_deref(),
                "input_tokens": r.usage.input_tokens,
                "output_tokens": r.usage.output_tokens,
                "cached_tokens": r.usage.cached_tokens,
                "reasoning_tokens": r.usage.reasoning_tokens,
                "estimated": r.usage.estimated,
                "cost_micros": r.cost_micros,
                "cost_usd": format_usd(r.cost_micros),
                "status": r.status,
                "latency_ms": r.latency_ms,
            })
        })
        .collect();
    Ok(Answer(200, json!({"object": "list", "data": data})))
}
