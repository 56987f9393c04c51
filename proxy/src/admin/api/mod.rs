//! The admin API on the admin listener: keys, teams, spend and usage, as JSON.
//!
//! Guarded by `SLUICE_ADMIN_TOKEN` (`Authorization: Bearer …`, compared by hash in constant
//! time); without it in the environment the API refuses every call with 503 and says how to
//! turn it on. Every change is written to the store first, then a new key index is built and
//! swapped in ([`crate::request::auth::Auth::replace`]), so it takes effect on the next request.
//!
//! | call | what it does |
//! | --- | --- |
//! | `POST /admin/keys` | issue a key: 201 with `key` (shown once) |
//! | `GET /admin/keys`, `GET /admin/keys/{id}` | list, show (with spend this period) |
//! | `PATCH /admin/keys/{id}` | change fields (`null` clears) |
//! | `POST /admin/keys/{id}/rotate` | new key (shown once); the old one is refused at once |
//! | `POST /admin/keys/{id}/disable`, `/enable` | refuse / accept again |
//! | `DELETE /admin/keys/{id}` | remove (its ledger rows stay) |
//! | `POST/GET/PATCH/DELETE /admin/teams[/{name}]` | the same for teams |
//! | `GET /admin/spend?group_by=key\|team\|model\|deployment\|day&from=&to=` | ledger totals |
//! | `GET /admin/usage?from=&to=&limit=&key_id=&team=` | ledger rows |
//! | `GET /admin/cache`, `DELETE /admin/cache?model=&scope=` | response cache stats, clear |
//! | `GET /admin/audit?from=&to=&limit=` | the audit log of changes, newest first |
//! | `GET /admin/live` | requests/s, errors, tokens/s, p50/p99 latency and TTFT per model |
//! | `GET /admin/health` | breaker state per deployment, active health per provider |
//! | `GET /admin/whoami` | the id of the token presented (for the page) |
//!
//! Every call that changes something is written to the audit log (`audit`).

mod audit;
mod cache;
mod keys;
mod spend;
mod teams;
mod traffic;

use std::sync::MutexGuard;

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_core::calendar::Date;
use sluice_core::error::bounded;
use sluice_core::http1::RequestHead;
use sluice_core::keys::{self as key_format, Limits};
use sluice_core::limits::BudgetPeriod;

use crate::listen::respond;
use crate::registry::Registry;
use crate::state::Shared;
use crate::store::StoreError;

pub use keys::new_key;
pub use traffic::started;

/// An admin answer: status and JSON body.
struct Answer(u16, Value);

fn fail(status: u16, code: &str, message: impl Into<String>) -> Answer {
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    Answer(
        status,
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}}),
    )
}

fn store_error(e: StoreError) -> Answer {
    match e {
        StoreError::Conflict(what) => fail(409, "conflict", format!("{what} already exists")),
        StoreError::NotFound(what) => fail(404, "not_found", format!("no such {what}")),
        other if other.is_unavailable() => {
            tracing::warn!(error = %other, "admin: store unavailable");
            fail(
                503,
                "store_unavailable",
                "the store cannot be reached; try again shortly",
            )
        }
        other => {
            tracing::error!(error = %other, "admin: store error");
            fail(
                500,
                "store_error",
                "the store failed; see the gateway's log",
            )
        }
    }
}

/// Whether `path` belongs to the admin API.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Answers one admin API request.
pub fn handle(shared: &Shared, head: &RequestHead, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let Answer(status, value) = route(shared, head, body);
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    respond::json(status, &bytes, &[], keep_alive, "admin")
}

fn check_token(shared: &Shared, head: &RequestHead) -> Result<(), Answer> {
    let Some(expected) = &shared.admin_token else {
        return Err(fail(
            503,
            "admin_disabled",
            "The admin API is off: set SLUICE_ADMIN_TOKEN in the gateway's environment (a long \
             random string) and restart it, then send `Authorization: Bearer <token>`.",
        ));
    };
    let presented = head
        .header("authorization")
        .and_then(key_format::parse_bearer);
    match presented {
        Some(t) if key_format::constant_time_eq(&key_format::hash_key(t), expected) => Ok(()),
        _ => Err(fail(
            401,
            "invalid_admin_token",
            "Missing or wrong admin token: send `Authorization: Bearer $SLUICE_ADMIN_TOKEN`.",
        )),
    }
}

/// Rebuilds the data plane's key index after a change and announces it to the other
/// replicas of a fleet (`[shared]`), which rebuild theirs.
fn rebuilt(shared: &Shared, reg: &Registry) -> Result<(), Answer> {
    reg.rebuild(&shared.auth).map_err(store_error)?;
    if let Some(f) = &shared.fleet {
        f.keys_changed();
    }
    Ok(())
}

fn registry(shared: &Shared) -> Result<MutexGuard<'_, Registry>, Answer> {
    match &shared.registry {
        Some(m) => Ok(m.lock().unwrap_or_else(|e| e.into_inner())),
        None => Err(fail(
            503,
            "no_store",
            "No store is configured (auth = \"none\" without [store]): add a [store] section.",
        )),
    }
}

fn route(shared: &Shared, head: &RequestHead, body: &[u8]) -> Answer {
    if let Err(a) = check_token(shared, head) {
        return a;
    }
    let (path, query) = match head.target().split_once('?') {
        Some((p, q)) => (p, q),
        None => (head.target(), ""),
    };
    let parts: Vec<&str> = path
        .trim_start_matches("/admin")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let method = head.method();
    let result = match (method, parts.as_slice()) {
        ("GET", ["whoami"]) => Ok(Answer(
            200,
            json!({"object": "admin", "token_id": shared.admin_token.as_ref().map(audit::token_id)}),
        )),
        ("GET", ["audit"]) => audit::list(shared, query),
        ("GET", ["live"]) => traffic::live(shared),
        ("GET", ["health"]) => traffic::health(shared),
        ("GET", ["spend"]) => spend::spend(shared, query),
        ("GET", ["usage"]) => spend::usage(shared, query),
        (_, ["cache"]) => cache::cache_api(shared, method, query),
        (_, ["keys", rest @ ..]) => keys::keys_api(shared, method, rest, body),
        (_, ["teams", rest @ ..]) => teams::teams_api(shared, method, rest, body),
        _ => Err(fail(
            404,
            "unknown_url",
            format!("Unknown admin URL: {} {}", bounded(method), bounded(path)),
        )),
    };
    let answer = result.unwrap_or_else(|a| a);
    audit::record(shared, head, &parts, &answer);
    answer
}

type Res = Result<Answer, Answer>;

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body)
        .map_err(|e| fail(400, "invalid_request", format!("invalid JSON body: {e}")))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn name_error(field: &str) -> Answer {
    fail(
        400,
        "invalid_request",
        format!("`{field}` must be 1 to 64 characters of A-Z a-z 0-9 - _ ."),
    )
}

/// Limits from the fields of a create body; no `budget_period` means the default.
fn limits(
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    budget_usd: Option<f64>,
    budget_period: Option<BudgetPeriod>,
) -> Limits {
    Limits {
        rpm,
        tpm,
        max_concurrency,
        budget_usd,
        budget_period: budget_period.unwrap_or_default(),
    }
}

fn check_budget(b: Option<f64>) -> Result<(), Answer> {
    if key_format::budget_is_valid(b) {
        Ok(())
    } else {
        Err(fail(
            400,
            "invalid_request",
            "`budget_usd` must be 0 or more",
        ))
    }
}

fn field<T: for<'de> Deserialize<'de>>(name: &str, v: Value) -> Result<T, Answer> {
    serde_json::from_value(v).map_err(|e| {
        fail(
            400,
            "invalid_request",
            format!("invalid `{}`: {e}", bounded(name)),
        )
    })
}

/// Sets the limit field `name` (`null` clears it; a cleared period is the default) and
/// returns `None`, or gives `v` back when `name` is not a limit field.
fn patch_limit(l: &mut Limits, name: &str, v: Value) -> Result<Option<Value>, Answer> {
    match name {
        "rpm" => l.rpm = field(name, v)?,
        "tpm" => l.tpm = field(name, v)?,
        "max_concurrency" => l.max_concurrency = field(name, v)?,
        "budget_usd" => {
            l.budget_usd = field(name, v)?;
            check_budget(l.budget_usd)?;
        }
        "budget_period" => {
            l.budget_period = field::<Option<BudgetPeriod>>(name, v)?.unwrap_or_default()
        }
        _ => return Ok(Some(v)),
    }
    Ok(None)
}

/// `name=value` pairs of a query string (no percent-decoding needed for our values beyond
/// `%3A`/`+`, which dates and ids do not use).
fn query_params(query: &str) -> Vec<(&str, &str)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect()
}

/// A time bound in unix milliseconds: unix seconds, or a UTC date `YYYY-MM-DD`.
fn parse_time(name: &str, v: &str) -> Result<u64, Answer> {
    if let Ok(s) = v.parse::<u64>() {
        return Ok(s.saturating_mul(1000));
    }
    // A date that exists, from 1970 on (`2025-02-31` is refused).
    if let Some(s) = Date::parse(v).and_then(Date::unix_s) {
        return Ok(s.saturating_mul(1000));
    }
    Err(fail(
        400,
        "invalid_request",
        format!(
            "`{}` must be unix seconds or a date YYYY-MM-DD (UTC)",
            bounded(name)
        ),
    ))
}

fn range(params: &[(&str, &str)]) -> Result<(u64, u64), Answer> {
    let mut from = 0;
    let mut to = i64::MAX as u64;
    for (k, v) in params {
        match *k {
            "from" => from = parse_time("from", v)?,
            "to" => to = parse_time("to", v)?,
            _ => {}
        }
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_queries() {
        assert_eq!(parse_time("from", "86400").ok(), Some(86_400_000));
        assert_eq!(
            parse_time("from", "2024-03-15").ok(),
            Some(1_710_460_800_000)
        );
        assert!(parse_time("from", "yesterday").is_err());
        for bad in [
            "2025-02-31",
            "2023-02-29",
            "2025-04-31",
            "1969-12-31",
            "2025-13-01",
        ] {
            let Err(Answer(status, body)) = parse_time("from", bad) else {
                panic!("{bad} accepted");
            };
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["error"]["code"], "invalid_request", "{bad}: {body}");
        }
        assert_eq!(parse_time("to", "2024-02-29").ok(), Some(1_709_164_800_000));
        assert_eq!(
            query_params("group_by=team&from=1"),
            vec![("group_by", "team"), ("from", "1")]
        );
        assert!(is_admin_path("/admin/keys") && !is_admin_path("/administrator"));
    }
}
