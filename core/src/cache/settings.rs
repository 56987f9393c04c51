//! Cache configuration: the `[cache]` table (the store's bounds) and a model group's
//! `cache = { exact, semantic, ttl_s, scope, threshold, embedding_model, embedding_timeout_ms,
//! coalesce }`, raw (as in the file) and validated.

use serde::Deserialize;

use crate::config::ConfigError;

/// Default bound of the whole store: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Default bound of one entry: 1 MiB.
pub const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Largest `max_entry_bytes` (an entry's weight is counted in KiB in a 16-bit field).
pub const LIMIT_ENTRY_BYTES: u64 = 64 << 20;
/// Default time to live: one hour.
pub const DEFAULT_TTL_S: u64 = 3600;
/// Default cosine threshold of the semantic cache (precision first).
pub const DEFAULT_THRESHOLD: f32 = 0.95;
/// Default time the embedding call may take before the request is a miss.
pub const DEFAULT_EMBEDDING_TIMEOUT_MS: u64 = 200;

/// `[cache]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    max_bytes: Option<u64>,
    max_entry_bytes: Option<u64>,
}

/// A group's `cache = {…}` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroupCache {
    exact: Option<bool>,
    semantic: Option<bool>,
    ttl_s: Option<u64>,
    scope: Option<String>,
    threshold: Option<f32>,
    embedding_model: Option<String>,
    embedding_timeout_ms: Option<u64>,
    coalesce: Option<bool>,
}

/// The store's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Bytes the store holds at most (bodies and bookkeeping); a full store evicts.
    pub max_bytes: u64,
    /// Largest answer kept.
    pub max_entry_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
        }
    }
}

/// Who shares a group's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheScope {
    /// Every key of a team (the default).
    Team,
    /// One key.
    Key,
    /// Everybody.
    Global,
}

/// A model group's cache.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCache {
    /// The exact cache.
    pub exact: bool,
    /// The semantic cache (needs `embedding_model`).
    pub semantic: bool,
    /// Time an entry lives, in milliseconds.
    pub ttl_ms: u64,
    /// Who shares entries.
    pub scope: CacheScope,
    /// Cosine similarity a semantic hit needs.
    pub threshold: f32,
    /// The public model (served by this gateway) that embeds prompts for the semantic cache.
    pub embedding_model: Option<String>,
    /// Time the embedding call may take before the request is a miss.
    pub embedding_timeout_ms: u64,
    /// Identical requests in flight wait for the first one's answer.
    pub coalesce: bool,
}

impl GroupCache {
    /// Whether any part of the cache is on.
    pub fn is_on(&self) -> bool {
        self.exact || self.semantic
    }
}

/// Validates `[cache]`.
pub fn validate(raw: Option<RawCache>) -> Result<CacheConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let max_entry_bytes = raw.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES);
    if max_entry_bytes == 0 || max_entry_bytes > LIMIT_ENTRY_BYTES {
        return Err(ConfigError(format!(
            "cache.max_entry_bytes must be between 1 and {LIMIT_ENTRY_BYTES}"
        )));
    }
    if max_bytes < max_entry_bytes {
        return Err(ConfigError(
            "cache.max_bytes must be at least cache.max_entry_bytes".into(),
        ));
    }
    Ok(CacheConfig {
        max_bytes,
        max_entry_bytes,
    })
}

/// Validates model group `group`'s `cache = {…}`; `None` when absent or off.
pub fn validate_group(
    group: &str,
    raw: Option<RawGroupCache>,
) -> Result<Option<GroupCache>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let at = |field: &str, msg: &str| ConfigError(format!("models.{group}.cache.{field}: {msg}"));
    let semantic = raw.semantic.unwrap_or(false);
    let scope = match raw.scope.as_deref() {
        None | Some("team") => CacheScope::Team,
        Some("key") => CacheScope::Key,
        Some("global") => CacheScope::Global,
        Some(_) => return Err(at("scope", "expected \"team\", \"key\" or \"global\"")),
    };
    let threshold = raw.threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(at("threshold", "must be in (0, 1]"));
    }
    let ttl_s = raw.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if ttl_s == 0 {
        return Err(at("ttl_s", "must be at least 1"));
    }
    if semantic && raw.embedding_model.is_none() {
        return Err(at(
            "embedding_model",
            "the semantic cache needs an embedding_model",
        ));
    }
    let cache = GroupCache {
        exact: raw.exact.unwrap_or(true),
        semantic,
        ttl_ms: ttl_s.saturating_mul(1000),
        scope,
        threshold,
        embedding_model: raw.embedding_model,
        embedding_timeout_ms: raw
            .embedding_timeout_ms
            .unwrap_or(DEFAULT_EMBEDDING_TIMEOUT_MS)
            .max(1),
        coalesce: raw.coalesce.unwrap_or(false),
    };
    Ok(cache.is_on().then_some(cache))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::collections::HashMap;

    fn load(cache: &str, extra: &str) -> Result<Config, String> {
        let text = format!(
            "auth = \"none\"\n{extra}\n[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n[[models]]\nname = \"m\"\ndeployments = [{{ provider = \"p\", model = \"a\" }}]\n{cache}\n[[models]]\nname = \"emb\"\ndeployments = [{{ provider = \"p\", model = \"e\" }}]\n"
        );
        Config::from_toml(&text, &HashMap::new()).map_err(|e| e.0)
    }

    #[test]
    fn group_caches_are_validated_with_their_path() {
        let c = load(
            "cache = { ttl_s = 60, scope = \"key\", coalesce = true }",
            "",
        )
        .unwrap();
        let g = c.models[0].cache.as_ref().unwrap();
        assert_eq!(
            (g.ttl_ms, g.scope, g.coalesce, g.exact),
            (60_000, super::CacheScope::Key, true, true)
        );
        assert_eq!(c.cache.max_bytes, super::DEFAULT_MAX_BYTES);
        assert!(load("cache = { exact = false }", "").unwrap().models[0]
            .cache
            .is_none());
        let errors = [
            ("cache = { scope = \"world\" }", "", "scope"),
            ("cache = { threshold = 1.5 }", "", "threshold"),
            ("cache = { ttl_s = 0 }", "", "ttl_s"),
            ("cache = { semantic = true }", "", "embedding_model"),
            (
                "cache = { semantic = true, embedding_model = \"nope\" }",
                "",
                "embedding_model",
            ),
            (
                "cache = { semantic = true, embedding_model = \"m\" }",
                "",
                "embedding_model",
            ),
            ("cache = { colour = 1 }", "", "colour"),
            (
                "",
                "[cache]\nmax_bytes = 10\nmax_entry_bytes = 100",
                "max_bytes",
            ),
            ("", "[cache]\nmax_entry_bytes = 0", "max_entry_bytes"),
        ];
        for (cache, extra, word) in errors {
            let e = load(cache, extra).unwrap_err();
            assert!(e.contains(word), "{cache} {extra}: {e}");
        }
        let ok = load("cache = { semantic = true, embedding_model = \"emb\" }", "").unwrap();
        assert!(ok.models[0].cache.as_ref().unwrap().semantic);
    }
}
