//! The access part of the config: `auth`, `[store]`, `[limits]`, `[prices]` and static
//! `[[keys]]`. Raw serde types first, then the validated values in [`super::Config`].
//!
//! Static keys are hashed here, at load: the key itself never outlives validation, so no
//! `Debug` print of the config, no summary and no log line can show it.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{err, ConfigError, Secret, SecretSource};
use crate::cost::Price;
use crate::keys::{self, KeyRecord, Limits, KEY_PREFIX};
use crate::limits::BudgetPeriod;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<String>,
    url: Option<String>,
    ca_file: Option<String>,
    flush_interval_ms: Option<u64>,
    synchronous: Option<String>,
    retention_days: Option<u32>,
    spill_path: Option<String>,
    backlog_records: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    default_max_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    name: String,
    key: String,
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
    #[serde(default)]
    disabled: bool,
    metadata: Option<serde_json::Value>,
    /// `false`: the response cache neither serves nor keeps this key's requests
    /// (`KeyRecord::set_cache`).
    cache: Option<bool>,
}

impl RawKey {
    /// Its limit fields as a key carries them. They are spelled out above rather than
    /// flattened, because serde's `flatten` does not work with `deny_unknown_fields`.
    fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrency: self.max_concurrency,
            budget_usd: self.budget_usd,
            budget_period: self.budget_period.unwrap_or_default(),
        }
    }
}

/// Whether requests need a virtual key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every API request presents a valid key (the default for a config file).
    Keys,
    /// No authentication: any key, or none, is accepted; no per-key limits.
    None,
}

/// The store (keys, teams, spend, usage ledger): an SQLite file, or PostgreSQL for a fleet.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// The SQLite file; `None` with `url`, or when no store is used (`auth = "none"`
    /// without `[store]`).
    pub path: Option<PathBuf>,
    /// The PostgreSQL URL (`[store] url`, from `env:`, `file:` or literal), shared by every
    /// replica; it may hold a password, so it is a [`Secret`].
    pub url: Option<Secret>,
    /// Extra trusted roots (PEM) for PostgreSQL over TLS (`sslmode=require`).
    pub ca_file: Option<PathBuf>,
    /// Ledger rows older than this many days are removed; `None` keeps them all.
    pub retention_days: Option<u32>,
    /// Where ledger records spill while the database is down, replayed when it is back.
    pub spill_path: PathBuf,
    /// Records held in memory while the database is down, before spilling.
    pub backlog_records: usize,
    /// Longest a usage record waits before its batch is committed.
    pub flush_interval_ms: u64,
    /// Sync every commit to disk (`synchronous = "full"`) instead of at WAL checkpoints.
    pub synchronous_full: bool,
}

/// Defaults for admission.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Output tokens reserved for a request that does not set `max_tokens`.
    pub default_max_tokens: u64,
}

/// A key declared in the config: its record (hash and visible prefix only) and whether it
/// was written literally in the file (a demo key) rather than read from the environment.
#[derive(Clone, Debug)]
pub struct StaticKey {
    /// The record; its id is `cfg_<name>`.
    pub record: KeyRecord,
    /// The key was a literal in the file.
    pub literal: bool,
}

/// The validated access settings.
#[derive(Clone, Debug)]
pub(super) struct Access {
    pub auth: AuthMode,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub prices: HashMap<String, Price>,
    pub keys: Vec<StaticKey>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A literal key may be written in the file only in the Sluice shape, so a provider secret
/// pasted by mistake is refused.
fn literal_key_ok(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|body| {
        !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub(super) fn validate(
    auth: Option<String>,
    store: Option<RawStore>,
    limits: RawLimits,
    prices: HashMap<String, Price>,
    raw_keys: Vec<RawKey>,
    secrets: &dyn SecretSource,
) -> Result<Access, ConfigError> {
    let auth = match auth.as_deref() {
        None | Some("keys") => AuthMode::Keys,
        Some("none") => AuthMode::None,
        Some(other) => {
            return err(format!(
                "invalid config at `auth`: expected \"keys\" or \"none\", got `{other}`"
            ))
        }
    };
    let explicit_store = store.is_some();
    let store = store.unwrap_or_default();
    let url = match store.url {
        None => None,
        Some(u) => Some(Secret::new(store_url(&u, secrets)?)),
    };
    let path = match store.path {
        Some(_) if url.is_some() => {
            return err(
                "invalid config at `store`: `path` (SQLite) and `url` (PostgreSQL) \
                 exclude each other",
            )
        }
        Some(p) if p.is_empty() => return err("invalid config at `store.path`: empty path"),
        Some(p) => Some(PathBuf::from(p)),
        None if url.is_some() => None,
        None if explicit_store || auth == AuthMode::Keys => Some(default_store_path(secrets)),
        None => None,
    };
    let retention_days = match store.retention_days {
        Some(0) => return err("invalid config at `store.retention_days`: must be 1 or more"),
        other => other,
    };
    let backlog_records = match store.backlog_records {
        None => 100_000,
        Some(n @ 1..=10_000_000) => n as usize,
        Some(_) => return err("invalid config at `store.backlog_records`: must be 1..=10000000"),
    };
    let spill_path = match (store.spill_path, &path) {
        (Some(p), _) if p.is_empty() => {
            return err("invalid config at `store.spill_path`: empty path")
        }
        (Some(p), _) => PathBuf::from(p),
        (None, Some(db)) => {
            let mut p = db.clone().into_os_string();
            p.push(".spill");
            PathBuf::from(p)
        }
        (None, None) => default_store_path(secrets).with_file_name("sluice-ledger.spill"),
    };
    let ca_file = match store.ca_file {
        Some(p) if p.is_empty() => return err("invalid config at `store.ca_file`: empty path"),
        other => other.map(PathBuf::from),
    };
    let synchronous_full = match store.synchronous.as_deref() {
        None | Some("normal") => false,
        Some("full") => true,
        Some(other) => {
            return err(format!(
                "invalid config at `store.synchronous`: expected normal or full, got `{other}`"
            ))
        }
    };
    let flush_interval_ms = match store.flush_interval_ms {
        None => 50,
        Some(n @ 1..=10_000) => n,
        Some(_) => return err("invalid config at `store.flush_interval_ms`: must be 1..=10000"),
    };
    let default_max_tokens = match limits.default_max_tokens {
        None => 1024,
        Some(0) => {
            return err("invalid config at `limits.default_max_tokens`: must be greater than 0")
        }
        Some(n) => n,
    };
    if prices.keys().any(|m| m.is_empty()) {
        return err("invalid config at `prices`: empty model name");
    }

    let keys = static_keys(raw_keys, secrets)?;
    Ok(Access {
        auth,
        store: StoreConfig {
            path,
            url,
            ca_file,
            retention_days,
            spill_path,
            backlog_records,
            flush_interval_ms,
            synchronous_full,
        },
        limits: LimitsConfig { default_max_tokens },
        prices,
        keys,
    })
}

/// `[[keys]]`: keys declared in the file, read-only through the admin API.
fn static_keys(
    raw_keys: Vec<RawKey>,
    secrets: &dyn SecretSource,
) -> Result<Vec<StaticKey>, ConfigError> {
    let mut keys = Vec::with_capacity(raw_keys.len());
    let mut names = HashMap::new();
    let mut hashes = HashMap::new();
    for (i, k) in raw_keys.into_iter().enumerate() {
        let limits = k.limits();
        let at = |field: &str| format!("keys[{i}].{field}");
        if !valid_name(&k.name) {
            return err(format!(
                "invalid config at `{}`: names are 1 to 64 characters of A-Z a-z 0-9 - _ .",
                at("name")
            ));
        }
        if names.insert(k.name.clone(), i).is_some() {
            return err(format!(
                "invalid config at `{}`: duplicate key name `{}`",
                at("name"),
                k.name
            ));
        }
        let (value, literal) = key_value(&at("key"), k.key, secrets)?;
        let hash = keys::hash_hex(&value);
        if let Some(other) = hashes.insert(hash.clone(), i) {
            return err(format!(
                "invalid config at `{}`: the same key as keys[{other}]",
                at("key")
            ));
        }
        let team = k.team.unwrap_or_else(|| "default".to_string());
        if !valid_name(&team) {
            return err(format!(
                "invalid config at `{}`: names are 1 to 64 characters of A-Z a-z 0-9 - _ .",
                at("team")
            ));
        }
        if !keys::budget_is_valid(k.budget_usd) {
            return err(format!(
                "invalid config at `{}`: must be 0 or more",
                at("budget_usd")
            ));
        }
        if k.models.iter().any(|m| m.is_empty()) {
            return err(format!(
                "invalid config at `{}`: empty model name",
                at("models")
            ));
        }
        let metadata = k.metadata.unwrap_or(serde_json::Value::Null);
        let mut record = KeyRecord {
            id: format!("cfg_{}", k.name),
            prefix: keys::visible_prefix(&value),
            name: k.name,
            team,
            user: k.user,
            hash,
            models: k.models,
            limits,
            expires_at_unix: k.expires_at,
            disabled: k.disabled,
            metadata,
            created_at_unix: 0,
        };
        if let Some(on) = k.cache {
            record.set_cache(on);
        }
        keys.push(StaticKey { record, literal });
    }
    Ok(keys)
}

/// The value of a configured key (`env:VARIABLE`, or a literal in the Sluice shape, for
/// demos) and whether it was written literally. The value never appears in an error.
fn key_value(
    at: &str,
    key: String,
    secrets: &dyn SecretSource,
) -> Result<(String, bool), ConfigError> {
    Ok(match super::secret_reference(&key, secrets) {
        Some(Ok(v)) if !v.is_empty() && !v.contains(char::is_whitespace) => (v, false),
        Some(Ok(_)) => {
            let source = match key.strip_prefix("env:") {
                Some(var) => format!("environment variable `{var}`"),
                None => format!("`{}`", &key["file:".len()..]),
            };
            return err(format!(
                "invalid config at `{at}`: {source} holds an empty or malformed key"
            ));
        }
        Some(Err(m)) => return err(format!("invalid config at `{at}`: {m}")),
        None if literal_key_ok(&key) => (key, true),
        None => {
            return err(format!(
                "invalid config at `{}`: reference the key as `env:VARIABLE` or `file:/path`; a literal is \
                 accepted only in the form `{KEY_PREFIX}…` (letters, digits, - and _), for demos",
                at
            ))
        }
    })
}

/// `[store] url`: `env:VARIABLE`, `file:/path` or a literal `postgres://` (or
/// `postgresql://`) URL. Errors never show the URL (it may carry a password).
fn store_url(raw: &str, secrets: &dyn SecretSource) -> Result<String, ConfigError> {
    let at = "store.url";
    let url = match super::secret_reference(raw, secrets) {
        Some(Ok(u)) => u.trim().to_string(),
        Some(Err(m)) => return err(format!("invalid config at `{at}`: {m}")),
        None => raw.to_string(),
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return err(format!(
            "invalid config at `{at}`: expected a postgres:// URL (or `env:VARIABLE` / \
             `file:/path` holding one)"
        ));
    }
    Ok(url)
}

/// `$STATE_DIRECTORY/sluice.db` under systemd (its first directory), else `./sluice.db`.
fn default_store_path(secrets: &dyn SecretSource) -> PathBuf {
    match secrets
        .var("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next().map(str::to_string))
        .filter(|d| !d.is_empty())
    {
        Some(dir) => PathBuf::from(dir).join("sluice.db"),
        None => PathBuf::from("sluice.db"),
    }
}
