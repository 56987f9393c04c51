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

use std::sync::MutexGuard;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::calendar::Date;
use sluice_core::cost::format_usd;
use sluice_core::error::bounded;
use sluice_core::http1::RequestHead;
use sluice_core::keys::{self, KeyRecord, Limits, TeamRecord};
use sluice_core::limits::BudgetPeriod;

use crate::listen::respond;
use crate::registry::Registry;
use crate::request::auth::{KeyEntry, TeamEntry};
use crate::state::Shared;
use crate::store::{SpendGroup, StoreError};

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut out = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

/// A new key from 256 bits of the OS's randomness: (key, its record's hash and prefix).
pub fn new_key() -> std::io::Result<String> {
    Ok(keys::format_key(&random_bytes::<32>()?))
}

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
    let presented = head.header("authorization").and_then(keys::parse_bearer);
    match presented {
        Some(t) if keys::constant_time_eq(&keys::hash_key(t), expected) => Ok(()),
        _ => Err(fail(
            401,
            "invalid_admin_token",
            "Missing or wrong admin token: send `Authorization: Bearer $SLUICE_ADMIN_TOKEN`.",
        )),
    }
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
        ("GET", ["spend"]) => spend(shared, query),
        ("GET", ["usage"]) => usage(shared, query),
        (_, ["keys", rest @ ..]) => keys_api(shared, method, rest, body),
        (_, ["teams", rest @ ..]) => teams_api(shared, method, rest, body),
        _ => Err(fail(
            404,
            "unknown_url",
            format!("Unknown admin URL: {} {}", bounded(method), bounded(path)),
        )),
    };
    result.unwrap_or_else(|a| a)
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

fn spend_usd(set: &sluice_core::limits::LimitSet) -> f64 {
    set.budget.spend() as f64 / 1e6
}

fn key_view(k: &KeyRecord, entry: Option<&KeyEntry>, from_config: bool) -> Value {
    json!({
        "object": "key",
        "id": k.id,
        "name": k.name,
        "team": k.team,
        "user": k.user,
        "prefix": k.prefix,
        "models": k.models,
        "rpm": k.limits.rpm,
        "tpm": k.limits.tpm,
        "max_concurrency": k.limits.max_concurrency,
        "budget_usd": k.limits.budget_usd,
        "budget_period": k.limits.budget_period,
        "expires_at": k.expires_at_unix,
        "disabled": k.disabled,
        "metadata": k.metadata,
        "created_at": k.created_at_unix,
        "source": if from_config { "config" } else { "api" },
        "spend_usd": entry.map(|e| spend_usd(&e.limits)),
        "reserved_usd": entry.map(|e| {
            e.limits.budget.used().saturating_sub(e.limits.budget.spend()) as f64 / 1e6
        }),
        "in_flight": entry.and_then(|e| e.limits.concurrency.as_ref().map(|c| c.in_flight())),
    })
}

fn team_view(t: &TeamEntry, keys: usize) -> Value {
    let r = t.record.as_ref().map(|r| &r.limits);
    json!({
        "object": "team",
        "name": &*t.name,
        "rpm": r.and_then(|r| r.rpm),
        "tpm": r.and_then(|r| r.tpm),
        "max_concurrency": r.and_then(|r| r.max_concurrency),
        "budget_usd": r.and_then(|r| r.budget_usd),
        "budget_period": r.map(|r| r.budget_period),
        "created": r.is_some(),
        "keys": keys,
        "spend_usd": spend_usd(&t.limits),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    team: Option<String>,
    user: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    budget_usd: Option<f64>,
    budget_period: Option<BudgetPeriod>,
    expires_at: Option<u64>,
    metadata: Option<Value>,
}

impl CreateKey {
    /// Its limit fields as a key carries them. [`CreateKey`] and [`CreateTeam`] spell them out
    /// because serde's `flatten` does not work with `deny_unknown_fields`.
    fn limits(&self) -> Limits {
        limits(
            self.rpm,
            self.tpm,
            self.max_concurrency,
            self.budget_usd,
            self.budget_period,
        )
    }
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

fn keys_api(shared: &Shared, method: &str, rest: &[&str], body: &[u8]) -> Res {
    let auth = &shared.auth;
    match (method, rest) {
        ("GET", []) => {
            let index = auth.index();
            let mut list: Vec<&std::sync::Arc<KeyEntry>> = index.keys().collect();
            list.sort_by(|a, b| {
                (a.record.created_at_unix, &a.record.id)
                    .cmp(&(b.record.created_at_unix, &b.record.id))
            });
            let data: Vec<Value> = list
                .iter()
                .map(|e| key_view(&e.record, Some(e), e.from_config))
                .collect();
            Ok(Answer(200, json!({"object": "list", "data": data})))
        }
        ("POST", []) => create_key(shared, body),
        (_, [id, tail @ ..]) => key_action(shared, method, id, tail, body),
        _ => Err(fail(
            405,
            "method_not_allowed",
            format!("{} is not allowed here", bounded(method)),
        )),
    }
}

/// `POST /admin/keys`: a new key, shown once.
fn create_key(shared: &Shared, body: &[u8]) -> Res {
    let auth = &shared.auth;
    let c: CreateKey = parse_body(body)?;
    let limits = c.limits();
    let team = c.team.unwrap_or_else(|| "default".to_string());
    if !valid_name(&c.name) {
        return Err(name_error("name"));
    }
    if !valid_name(&team) {
        return Err(name_error("team"));
    }
    check_budget(c.budget_usd)?;
    let reg = registry(shared)?;
    let secret = new_key().map_err(|e| {
        tracing::error!(error = %e, "admin: no randomness for a new key");
        fail(500, "no_randomness", "cannot read the OS random source")
    })?;
    let id_bytes = random_bytes::<8>()
        .map_err(|_| fail(500, "no_randomness", "cannot read the OS random source"))?;
    let record = KeyRecord {
        id: format!("key_{}", keys::to_hex(&id_bytes)),
        name: c.name,
        team,
        user: c.user,
        hash: keys::hash_hex(&secret),
        prefix: keys::visible_prefix(&secret),
        limits,
        models: c.models,
        expires_at_unix: c.expires_at,
        disabled: false,
        metadata: c.metadata.unwrap_or(Value::Null),
        created_at_unix: crate::clock::unix_s(),
    };
    reg.store.create_key(&record).map_err(store_error)?;
    reg.rebuild(auth).map_err(store_error)?;
    tracing::info!(key_id = %record.id, prefix = %record.prefix, team = %record.team, "admin: key created");
    let mut view = key_view(&record, auth.index().key(&record.id).map(|e| &**e), false);
    view["key"] = Value::String(secret);
    Ok(Answer(201, view))
}

/// `GET|PATCH|DELETE /admin/keys/{id}` and `POST /admin/keys/{id}/(disable|enable|rotate)`.
fn key_action(shared: &Shared, method: &str, id: &str, tail: &[&str], body: &[u8]) -> Res {
    let auth = &shared.auth;
    let index = auth.index();
    let Some(entry) = index.key(id).cloned() else {
        return Err(fail(
            404,
            "not_found",
            format!("No key with id `{}`.", bounded(id)),
        ));
    };
    if method == "GET" && tail.is_empty() {
        return Ok(Answer(
            200,
            key_view(&entry.record, Some(&entry), entry.from_config),
        ));
    }
    if entry.from_config {
        return Err(fail(
            409,
            "declared_in_config",
            format!(
                "Key `{}` is declared in the config file; change it there.",
                bounded(id)
            ),
        ));
    }
    let reg = registry(shared)?;
    // The store is the truth: re-read under the lock.
    let mut record = reg.store.get_key(id).map_err(store_error)?.ok_or_else(|| {
        fail(
            404,
            "not_found",
            format!("No key with id `{}`.", bounded(id)),
        )
    })?;
    let mut shown = None;
    match (method, tail) {
        ("PATCH", []) => {
            let patch: Map<String, Value> = parse_body(body)?;
            patch_key(&mut record, patch)?;
            reg.store.update_key(&record).map_err(store_error)?;
        }
        ("POST", ["disable"]) | ("POST", ["enable"]) => {
            record.disabled = tail == ["disable"];
            reg.store.update_key(&record).map_err(store_error)?;
        }
        ("POST", ["rotate"]) => {
            let secret = new_key()
                .map_err(|_| fail(500, "no_randomness", "cannot read the OS random source"))?;
            let old = record.clone();
            record.hash = keys::hash_hex(&secret);
            record.prefix = keys::visible_prefix(&secret);
            // Same id (spend and ledger continue), new hash: delete and re-create.
            reg.store.delete_key(id).map_err(store_error)?;
            if let Err(e) = reg.store.create_key(&record) {
                let _ = reg.store.create_key(&old);
                return Err(store_error(e));
            }
            shown = Some(secret);
        }
        ("DELETE", []) => {
            reg.store.delete_key(id).map_err(store_error)?;
            reg.rebuild(auth).map_err(store_error)?;
            tracing::info!(key_id = %id, "admin: key deleted");
            return Ok(Answer(
                200,
                json!({"object": "key", "id": id, "deleted": true}),
            ));
        }
        _ => {
            return Err(fail(
                405,
                "method_not_allowed",
                format!("{} is not allowed here", bounded(method)),
            ))
        }
    }
    reg.rebuild(auth).map_err(store_error)?;
    tracing::info!(key_id = %id, change = %tail.first().copied().unwrap_or("patch"), "admin: key changed");
    let index = auth.index();
    let mut view = key_view(&record, index.key(id).map(|e| &**e), false);
    if let Some(secret) = shown {
        view["key"] = Value::String(secret);
    }
    Ok(Answer(200, view))
}

fn check_budget(b: Option<f64>) -> Result<(), Answer> {
    if keys::budget_is_valid(b) {
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

fn patch_key(k: &mut KeyRecord, patch: Map<String, Value>) -> Result<(), Answer> {
    for (name, v) in patch {
        let Some(v) = patch_limit(&mut k.limits, &name, v)? else {
            continue;
        };
        match name.as_str() {
            "name" => {
                k.name = field(&name, v)?;
                if !valid_name(&k.name) {
                    return Err(name_error("name"));
                }
            }
            "team" => {
                k.team = field(&name, v)?;
                if !valid_name(&k.team) {
                    return Err(name_error("team"));
                }
            }
            "user" => k.user = field(&name, v)?,
            "models" => k.models = field::<Option<Vec<String>>>(&name, v)?.unwrap_or_default(),
            "expires_at" => k.expires_at_unix = field(&name, v)?,
            "disabled" => k.disabled = field(&name, v)?,
            "metadata" => k.metadata = v,
            other => {
                return Err(fail(
                    400,
                    "invalid_request",
                    format!("unknown or read-only field `{}`", bounded(other)),
                ))
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTeam {
    name: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrency: Option<u32>,
    budget_usd: Option<f64>,
    budget_period: Option<BudgetPeriod>,
}

impl CreateTeam {
    /// Its limit fields as a team carries them.
    fn limits(&self) -> Limits {
        limits(
            self.rpm,
            self.tpm,
            self.max_concurrency,
            self.budget_usd,
            self.budget_period,
        )
    }
}

fn teams_api(shared: &Shared, method: &str, rest: &[&str], body: &[u8]) -> Res {
    let auth = &shared.auth;
    let index = auth.index();
    let count = |name: &str| index.keys().filter(|k| &*k.team.name == name).count();
    match (method, rest) {
        ("GET", []) => {
            let mut teams: Vec<&std::sync::Arc<TeamEntry>> = index.teams().collect();
            teams.sort_by(|a, b| a.name.cmp(&b.name));
            let data: Vec<Value> = teams.iter().map(|t| team_view(t, count(&t.name))).collect();
            Ok(Answer(200, json!({"object": "list", "data": data})))
        }
        ("GET", [name]) => match index.team(name) {
            Some(t) => Ok(Answer(200, team_view(t, count(name)))),
            None => Err(fail(
                404,
                "not_found",
                format!("No team `{}`.", bounded(name)),
            )),
        },
        ("POST", []) => {
            let c: CreateTeam = parse_body(body)?;
            if !valid_name(&c.name) {
                return Err(name_error("name"));
            }
            check_budget(c.budget_usd)?;
            let record = TeamRecord {
                limits: c.limits(),
                name: c.name,
            };
            let reg = registry(shared)?;
            reg.store.create_team(&record).map_err(store_error)?;
            reg.rebuild(auth).map_err(store_error)?;
            tracing::info!(team = %record.name, "admin: team created");
            let index = auth.index();
            let view = index
                .team(&record.name)
                .map_or(Value::Null, |t| team_view(t, count(&record.name)));
            Ok(Answer(201, view))
        }
        ("PATCH", [name]) => {
            let patch: Map<String, Value> = parse_body(body)?;
            let reg = registry(shared)?;
            let mut t = reg
                .store
                .get_team(name)
                .map_err(store_error)?
                .ok_or_else(|| {
                    fail(
                        404,
                        "not_found",
                        format!(
                            "No team `{}` (create it with POST /admin/teams).",
                            bounded(name)
                        ),
                    )
                })?;
            for (f, v) in patch {
                if patch_limit(&mut t.limits, &f, v)?.is_some() {
                    return Err(fail(
                        400,
                        "invalid_request",
                        format!("unknown or read-only field `{}`", bounded(&f)),
                    ));
                }
            }
            reg.store.update_team(&t).map_err(store_error)?;
            reg.rebuild(auth).map_err(store_error)?;
            let index = auth.index();
            let view = index
                .team(name)
                .map_or(Value::Null, |e| team_view(e, count(name)));
            Ok(Answer(200, view))
        }
        ("DELETE", [name]) => {
            let reg = registry(shared)?;
            reg.store.delete_team(name).map_err(store_error)?;
            reg.rebuild(auth).map_err(store_error)?;
            Ok(Answer(
                200,
                json!({"object": "team", "name": name, "deleted": true}),
            ))
        }
        _ => Err(fail(
            405,
            "method_not_allowed",
            format!("{} is not allowed here", bounded(method)),
        )),
    }
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

fn spend(shared: &Shared, query: &str) -> Res {
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

fn usage(shared: &Shared, query: &str) -> Res {
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

    #[test]
    fn keys_are_random_and_well_formed() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert!(keys::looks_like_key(&a) && a != b);
    }

    #[test]
    fn patches() {
        let mut k = KeyRecord {
            id: "key_1".into(),
            name: "a".into(),
            team: "t".into(),
            user: None,
            hash: String::new(),
            prefix: String::new(),
            models: vec![],
            limits: Limits {
                rpm: Some(1),
                ..Limits::default()
            },
            expires_at_unix: None,
            disabled: false,
            metadata: Value::Null,
            created_at_unix: 0,
        };
        let p: Map<String, Value> = serde_json::from_str(
            r#"{"rpm": null, "tpm": 5, "models": ["x"], "budget_period": "daily"}"#,
        )
        .unwrap();
        assert!(patch_key(&mut k, p).is_ok());
        assert_eq!(
            (k.limits.rpm, k.limits.tpm, k.models.len()),
            (None, Some(5), 1)
        );
        assert_eq!(k.limits.budget_period, BudgetPeriod::Daily);
        let bad: Map<String, Value> = serde_json::from_str(r#"{"hash": "x"}"#).unwrap();
        assert!(patch_key(&mut k, bad).is_err());
        let neg: Map<String, Value> = serde_json::from_str(r#"{"budget_usd": -1}"#).unwrap();
        assert!(patch_key(&mut k, neg).is_err());
    }
}
