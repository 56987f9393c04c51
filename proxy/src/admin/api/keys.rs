//! `/admin/keys`: issue, list, show, change, rotate, disable and delete virtual keys.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_core::error::bounded;
use sluice_core::keys::{self, KeyRecord, Limits};
use sluice_core::limits::BudgetPeriod;

use super::{
    check_budget, fail, field, limits, name_error, parse_body, patch_limit, rebuilt, registry,
    store_error, valid_name, Answer, Res,
};
use crate::request::auth::KeyEntry;
use crate::state::Shared;

/// `N` bytes from the OS's random source (`getrandom(2)`, which blocks only until the
/// kernel's pool is first seeded, and needs no file descriptor).
pub(super) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(std::io::Error::other)?;
    Ok(out)
}

/// A new key from 256 bits of the OS's randomness: (key, its record's hash and prefix).
pub fn new_key() -> std::io::Result<String> {
    Ok(keys::format_key(&random_bytes::<32>()?))
}

pub(super) fn spend_usd(set: &sluice_core::limits::LimitSet) -> f64 {
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
        "cache": k.uses_cache(),
        "metadata": k.metadata,
        "created_at": k.created_at_unix,
        "source": if from_config { "config" } else { "api" },
        "spend_usd": entry.map(|e| spend_usd(&e.limits)),
        "reserved_usd": entry.map(|e| {
            e.limits.budget.used().saturating_sub(e.limits.budget.spend()) as f64 / 1e6
        }),
        "in_flight": entry.and_then(|e| sluice_core::lease::in_flight(&e.limits)),
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
    /// `false`: the response cache neither serves nor keeps the key's requests.
    cache: Option<bool>,
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

pub(super) fn keys_api(shared: &Shared, method: &str, rest: &[&str], body: &[u8]) -> Res {
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
    let mut record = KeyRecord {
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
    if let Some(on) = c.cache {
        record.set_cache(on);
    }
    reg.store.create_key(&record).map_err(store_error)?;
    rebuilt(shared, &reg)?;
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
            rebuilt(shared, &reg)?;
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
    rebuilt(shared, &reg)?;
    tracing::info!(key_id = %id, change = %tail.first().copied().unwrap_or("patch"), "admin: key changed");
    let index = auth.index();
    let mut view = key_view(&record, index.key(id).map(|e| &**e), false);
    if let Some(secret) = shown {
        view["key"] = Value::String(secret);
    }
    Ok(Answer(200, view))
}

fn patch_key(k: &mut KeyRecord, patch: Map<String, Value>) -> Result<(), Answer> {
    // Applied last, so a `metadata` in the same patch cannot undo it.
    let mut cache = None;
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
            // `null` clears the setting: the default, cached.
            "cache" => cache = Some(field::<Option<bool>>(&name, v)?.unwrap_or(true)),
            "metadata" => {
                // The typed `cache` setting lives in the metadata: a new metadata keeps it
                // unless it says `cache` itself.
                let says_cache = v.get("cache").is_some();
                let on = k.uses_cache();
                k.metadata = v;
                if !says_cache {
                    k.set_cache(on);
                }
            }
            other => {
                return Err(fail(
                    400,
                    "invalid_request",
                    format!("unknown or read-only field `{}`", bounded(other)),
                ))
            }
        }
    }
    if let Some(on) = cache {
        k.set_cache(on);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let off: Map<String, Value> =
            serde_json::from_str(r#"{"cache": false, "metadata": {"owner": "ops"}}"#).unwrap();
        assert!(patch_key(&mut k, off).is_ok());
        assert!(!k.uses_cache());
        assert_eq!(k.metadata["owner"], "ops");
        let meta: Map<String, Value> =
            serde_json::from_str(r#"{"metadata": {"owner": "dev"}}"#).unwrap();
        assert!(patch_key(&mut k, meta).is_ok());
        assert!(!k.uses_cache(), "a new metadata keeps the setting");
        let on: Map<String, Value> = serde_json::from_str(r#"{"cache": true}"#).unwrap();
        assert!(patch_key(&mut k, on).is_ok());
        assert!(k.uses_cache());
        assert_eq!(k.metadata, serde_json::json!({"owner": "dev"}));
        let wrong: Map<String, Value> = serde_json::from_str(r#"{"cache": "no"}"#).unwrap();
        assert!(patch_key(&mut k, wrong).is_err());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"hash": "x"}"#).unwrap();
        assert!(patch_key(&mut k, bad).is_err());
        let neg: Map<String, Value> = serde_json::from_str(r#"{"budget_usd": -1}"#).unwrap();
        assert!(patch_key(&mut k, neg).is_err());
    }
}
