//! The upstream's model catalog for `GET /v1/models` of a gateway whose groups are patterns
//! (the embedded default serves `gpt-*` and friends, so it has no exact name to list): which
//! providers to ask, and which of the ids they list the gateway serves. The proxy fetches
//! (`GET {base_url}/models`, once per config generation, off the request path) and fills a
//! [`Catalog`].

use std::sync::OnceLock;

use serde_json::Value;

use crate::config::Config;
use crate::dialect::Dialect;

/// Most ids kept (a catalog is a few hundred).
const MAX_IDS: usize = 10_000;

/// The model ids the upstreams list for the pattern groups, set once per config generation.
#[derive(Debug, Default)]
pub struct Catalog {
    ids: OnceLock<Vec<String>>,
}

impl Catalog {
    /// The ids fetched, or `None` before the fetch ended (or when every provider failed).
    pub fn ids(&self) -> Option<&[String]> {
        self.ids.get().map(Vec::as_slice)
    }

    /// Whether the fetch found `id` (`None`: not known, no fetch succeeded).
    pub fn lists(&self, id: &str) -> Option<bool> {
        self.ids().map(|ids| ids.iter().any(|i| i == id))
    }

    /// Sets the ids, once; a second call is ignored.
    pub fn set(&self, ids: Vec<String>) {
        let _ = self.ids.set(ids);
    }
}

/// The providers (indices) that serve a pattern group with `model = "*"`. Bedrock and Vertex
/// AI providers are not asked: neither has a `GET {base_url}/models` (Bedrock lists its
/// models on the control-plane host, not `bedrock-runtime`; Vertex AI per publisher, in
/// another shape), so a pattern group on them lists only what clients name.
pub fn catalog_providers(cfg: &Config) -> Vec<usize> {
    let listable = |index: usize| {
        cfg.providers
            .get(index)
            .is_some_and(|p| !matches!(p.kind, Dialect::Bedrock | Dialect::Vertex(_)))
    };
    let mut out = Vec::new();
    for group in cfg.models.iter().filter(|m| m.name.ends_with('*')) {
        for d in group.deployments.iter().filter(|d| d.model == "*") {
            if listable(d.provider) && !out.contains(&d.provider) {
                out.push(d.provider);
            }
        }
    }
    out
}

/// Keeps the ids of a `/models` body that provider `provider` serves through a pattern
/// group, appending new ones to `out`. OpenAI and Anthropic answer `{"data":[{"id"}]}`;
/// Gemini answers `{"models":[{"name":"models/…"}]}`.
pub fn matching_ids(cfg: &Config, provider: usize, body: &[u8], out: &mut Vec<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let listed = |key: &str| v.get(key).and_then(Value::as_array).map(Vec::as_slice);
    let openai = listed("data")
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str));
    let gemini = listed("models")
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .map(|n| n.strip_prefix("models/").unwrap_or(n));
    for id in openai.chain(gemini) {
        if out.len() >= MAX_IDS || id.is_empty() || id.len() > 256 {
            continue;
        }
        let served = cfg
            .model_index(id)
            .and_then(|g| cfg.models.get(g))
            .is_some_and(|g| {
                g.name.ends_with('*')
                    && g.deployments
                        .iter()
                        .any(|d| d.provider == provider && d.model == "*")
            });
        if served && !out.iter().any(|i| i == id) {
            out.push(id.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ids_a_pattern_group_serves() {
        let cfg = Config::from_toml(
            r#"
[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[models]]
name = "gpt-*"
deployments = [{ provider = "a", model = "*" }]
[[models]]
name = "fixed"
deployments = [{ provider = "a", model = "gpt-4o" }]
"#,
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        assert_eq!(catalog_providers(&cfg), vec![0]);
        let body = br#"{"data":[{"id":"gpt-4o"},{"id":"dall-e-3"},{"id":"gpt-4o"},{"id":"gpt-4o-mini"},{"x":1}]}"#;
        let mut ids = Vec::new();
        matching_ids(&cfg, 0, body, &mut ids);
        assert_eq!(ids, ["gpt-4o", "gpt-4o-mini"]);
        matching_ids(&cfg, 0, b"not json", &mut ids);
        assert_eq!(ids.len(), 2);
        // Gemini's shape.
        let body = br#"{"models":[{"name":"models/gpt-5"},{"name":"models/gemini-2.0-flash"}]}"#;
        matching_ids(&cfg, 0, body, &mut ids);
        assert_eq!(ids, ["gpt-4o", "gpt-4o-mini", "gpt-5"]);
    }

    #[test]
    fn bedrock_and_vertex_are_not_asked() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/vertex/test-sa.json"
        );
        let cfg = Config::from_toml(
            &format!(
                r#"
[[providers]]
name = "b"
kind = "bedrock"
[providers.aws]
region = "us-east-1"
access_key_id = "env:K"
secret_access_key = "env:K"
[[providers]]
name = "v"
kind = "vertex"
project = "p"
region = "us-east5"
credentials = "file:{key}"
[[providers]]
name = "o"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[models]]
name = "anthropic.*"
deployments = [{{ provider = "b", model = "*" }}]
[[models]]
name = "gemini-*"
deployments = [{{ provider = "v", model = "*" }}, {{ provider = "o", model = "*" }}]
"#
            ),
            &std::collections::HashMap::from([("K".to_string(), "k".to_string())]),
        )
        .unwrap();
        assert_eq!(catalog_providers(&cfg), vec![2]);
    }
}
