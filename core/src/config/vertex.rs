//! `kind = "vertex"` providers: Google Vertex AI reached with a service-account key.
//!
//! ```toml
//! [[providers]]
//! name = "vertex"
//! kind = "vertex"
//! project = "my-project"
//! region = "us-east5"                      # or "global"
//! credentials = "file:/run/secrets/sa.json" # or "env:VERTEX_SA_KEY"; never inlined
//! # base_url = "http://127.0.0.1:9000"     # only to reach a stand-in (tests)
//! ```
//!
//! The key is read and checked here (its JSON fields); signing with it and minting access
//! tokens is the proxy's job, off the data plane.

use super::{ConfigError, ModelGroup, Provider, ProviderKind, Secret, SecretSource};
use crate::dialect::Publisher;

/// Where a Vertex AI provider is and how it authenticates.
#[derive(Clone, Debug)]
pub struct VertexAuth {
    /// Google Cloud project id.
    pub project: String,
    /// Location (`us-east5`, `europe-west1`, `global`).
    pub region: String,
    /// The service account the access tokens are minted for.
    pub key: ServiceAccountKey,
}

/// The fields of a service-account JSON key that minting a token needs.
#[derive(Clone, Debug)]
pub struct ServiceAccountKey {
    /// `client_email`: the JWT's issuer and subject.
    pub client_email: String,
    /// `private_key_id`: the JWT header's `kid`, when present.
    pub private_key_id: Option<String>,
    /// `private_key`: a PKCS#8 PEM RSA key.
    pub private_key: Secret,
    /// `token_uri`: where the signed assertion is exchanged for an access token (and the
    /// JWT's audience).
    pub token_uri: String,
}

/// The raw fields of a `vertex` provider (absent on other kinds).
pub(super) struct RawVertex {
    pub project: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<String>,
}

/// Checks the Vertex AI fields of `providers[i]` of kind `is_vertex` and returns its base
/// URL (the API root of the project and region) and auth; other kinds must not set them.
pub(super) fn validate(
    i: usize,
    is_vertex: bool,
    base_url: Option<String>,
    raw: RawVertex,
    secrets: &dyn SecretSource,
) -> Result<(String, Option<VertexAuth>), ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");
    let fail =
        |field: &str, m: &str| ConfigError(format!("invalid config at `{}`: {m}", at(field)));
    if !is_vertex {
        for (field, set) in [
            ("project", raw.project.is_some()),
            ("region", raw.region.is_some()),
            ("credentials", raw.credentials.is_some()),
        ] {
            if set {
                return Err(fail(field, "only `kind = \"vertex\"` providers take it"));
            }
        }
        let base_url = base_url.ok_or_else(|| fail("base_url", "missing"))?;
        return Ok((base_url, None));
    }
    let id = |field: &str, v: Option<String>| {
        let v = v.ok_or_else(|| fail(field, "missing (a `vertex` provider needs it)"))?;
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(v)
        } else {
            Err(fail(field, "must be lower-case letters, digits and `-`"))
        }
    };
    let project = id("project", raw.project)?;
    let region = id("region", raw.region)?;
    let reference = raw.credentials.ok_or_else(|| {
        fail(
            "credentials",
            "missing (a service-account JSON key, `file:` or `env:`)",
        )
    })?;
    let json = match super::secret_reference(&reference, secrets) {
        Some(r) => r.map_err(|m| fail("credentials", &m))?,
        None => {
            return Err(fail(
                "credentials",
                "must be `file:/path` or `env:VARIABLE`, never inlined",
            ))
        }
    };
    let key = parse_key(&json).map_err(|m| fail("credentials", &m))?;
    let root = match base_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None if region == "global" => "https://aiplatform.googleapis.com".to_string(),
        None => format!("https://{region}-aiplatform.googleapis.com"),
    };
    let base_url = format!("{root}/v1/projects/{project}/locations/{region}");
    Ok((
        base_url,
        Some(VertexAuth {
            project,
            region,
            key,
        }),
    ))
}

/// A deployment's `publisher` (at `at`): `google` or `anthropic`.
pub(super) fn publisher(at: &str, raw: Option<&str>) -> Result<Option<Publisher>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(name) => Publisher::from_name(name).map(Some).ok_or_else(|| {
            ConfigError(format!(
                "invalid config at `{at}.publisher`: `{}` is not `google` or `anthropic`",
                crate::error::bounded(name)
            ))
        }),
    }
}

/// Only deployments of `vertex` providers may name a publisher.
pub(super) fn check_publishers(
    providers: &[Provider],
    models: &[ModelGroup],
) -> Result<(), ConfigError> {
    for (i, group) in models.iter().enumerate() {
        for (j, d) in group.deployments.iter().enumerate() {
            let vertex = providers
                .get(d.provider)
                .is_some_and(|p| matches!(p.kind, ProviderKind::Vertex(_)));
            if d.publisher.is_some() && !vertex {
                return Err(ConfigError(format!(
                    "invalid config at `models[{i}].deployments[{j}].publisher`: only deployments of `kind = \"vertex\"` providers take it"
                )));
            }
        }
    }
    Ok(())
}

/// The fields of a service-account key. Messages name fields, never values.
fn parse_key(json: &str) -> Result<ServiceAccountKey, String> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|_| "is not a service-account JSON key (not JSON)".to_string())?;
    let field = |name: &str| {
        v.get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("the service-account key has no `{name}`"))
    };
    if v.get("type").and_then(serde_json::Value::as_str) != Some("service_account") {
        return Err("is not a service-account key (`type` is not `service_account`)".into());
    }
    let private_key = field("private_key")?;
    if !private_key.contains("-----BEGIN PRIVATE KEY-----") {
        return Err("the service-account key's `private_key` is not a PKCS#8 PEM key".into());
    }
    let token_uri = field("token_uri")?;
    match url::Url::parse(&token_uri) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => return Err("the service-account key's `token_uri` is not an http(s) URL".into()),
    }
    Ok(ServiceAccountKey {
        client_email: field("client_email")?,
        private_key_id: field("private_key_id").ok(),
        private_key: Secret::new(private_key),
        token_uri,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KEY: &str = r#"{"type":"service_account","client_email":"sa@p.iam.gserviceaccount.com",
        "private_key_id":"k1","private_key":"-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n",
        "token_uri":"https://oauth2.googleapis.com/token"}"#;

    fn config(provider: &str, deployment: &str) -> Result<crate::config::Config, ConfigError> {
        let env: std::collections::HashMap<String, String> =
            [("SA".to_string(), KEY.to_string())].into();
        crate::config::Config::from_toml(
            &format!(
                "[[providers]]\nname = \"v\"\n{provider}\n\n[[models]]\nname = \"m\"\ndeployments = [{{ provider = \"v\", model = \"claude-x\"{deployment} }}]\n"
            ),
            &env,
        )
    }

    #[test]
    fn vertex_providers_need_project_region_and_a_referenced_key() {
        let ok =
            "kind = \"vertex\"\nproject = \"p-1\"\nregion = \"us-east5\"\ncredentials = \"env:SA\"";
        let cfg = config(ok, ", publisher = \"anthropic\"").unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.endpoint.host, "us-east5-aiplatform.googleapis.com");
        assert_eq!(
            p.endpoint.path_prefix,
            "/v1/projects/p-1/locations/us-east5"
        );
        assert_eq!(
            p.vertex.as_ref().unwrap().key.token_uri,
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(
            cfg.models[0].deployments[0].publisher,
            Some(Publisher::Anthropic)
        );
        let global = ok.replace("us-east5", "global");
        assert_eq!(
            config(&global, "").unwrap().providers[0].endpoint.host,
            "aiplatform.googleapis.com"
        );
        let tests = format!("{ok}\nbase_url = \"http://127.0.0.1:9\"");
        let cfg = config(&tests, "").unwrap();
        assert_eq!(cfg.providers[0].endpoint.port, 9);
        assert_eq!(
            cfg.providers[0].endpoint.path_prefix,
            "/v1/projects/p-1/locations/us-east5"
        );

        let cases = [
            (
                ok.replace("project = \"p-1\"\n", ""),
                "",
                "providers[0].project",
            ),
            (ok.replace("us-east5", "US East"), "", "providers[0].region"),
            (ok.replace("env:SA", "{}"), "", "providers[0].credentials"),
            (
                ok.replace("env:SA", "env:NOPE"),
                "",
                "providers[0].credentials",
            ),
            (
                ok.to_string(),
                ", publisher = \"meta\"",
                "models[0].deployments[0].publisher",
            ),
            (
                "kind = \"gemini\"\nbase_url = \"http://x\"".to_string(),
                ", publisher = \"google\"",
                "models[0].deployments[0].publisher",
            ),
            (
                "kind = \"gemini\"\nbase_url = \"http://x\"\nproject = \"p\"".to_string(),
                "",
                "providers[0].project",
            ),
            ("kind = \"openai\"".to_string(), "", "providers[0].base_url"),
        ];
        for (provider, deployment, path) in cases {
            let e = config(&provider, deployment).unwrap_err().0;
            assert!(e.contains(path), "{provider}: {e}");
            assert!(!e.contains("BEGIN PRIVATE"), "{e}");
        }
    }

    #[test]
    fn a_key_is_read_and_its_errors_name_fields_not_values() {
        let k = parse_key(KEY).unwrap();
        assert_eq!(k.client_email, "sa@p.iam.gserviceaccount.com");
        assert_eq!(k.private_key_id.as_deref(), Some("k1"));
        assert!(!format!("{k:?}").contains("MII"));
        let e = parse_key("{\"type\":\"service_account\",\"private_key\":\"secret\"}").unwrap_err();
        assert!(e.contains("PKCS#8") && !e.contains("secret"), "{e}");
        assert!(parse_key("nope").unwrap_err().contains("not JSON"));
    }
}
