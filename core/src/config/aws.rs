//! `[providers.aws]`: the region and credentials of a `bedrock` provider. The proxy signs
//! every Bedrock request with them (SigV4, service `bedrock`); they never appear in logs,
//! errors or `Debug` output.
//!
//! ```toml
//! [[providers]]
//! name = "bedrock"
//! kind = "bedrock"
//! # base_url defaults to https://bedrock-runtime.{region}.amazonaws.com
//! [providers.aws]
//! region = "us-east-1"
//! access_key_id = "env:AWS_ACCESS_KEY_ID"
//! secret_access_key = "env:AWS_SECRET_ACCESS_KEY"
//! session_token = "env:AWS_SESSION_TOKEN"   # optional
//! ```

use serde::Deserialize;

use super::{ConfigError, ProviderKind, Secret, SecretSource};

/// `[providers.aws]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// The region and credentials a `bedrock` provider signs its requests with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsAuth {
    /// E.g. `us-east-1`: part of the signature's scope and of the default base URL.
    pub region: String,
    /// The access key id (`AKIA…`, `ASIA…`).
    pub access_key_id: Secret,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials (`x-amz-security-token`).
    pub session_token: Option<Secret>,
}

/// Checks `[providers.aws]` of provider `i` against its kind, resolves its secrets, and
/// returns it with the base URL to use (`base_url`, else Bedrock's regional endpoint).
pub(super) fn aws(
    i: usize,
    kind: ProviderKind,
    raw: Option<RawAws>,
    base_url: String,
    secrets: &dyn SecretSource,
) -> Result<(Option<AwsAuth>, String), ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");
    let raw = match (kind, raw) {
        (ProviderKind::Bedrock, Some(raw)) => raw,
        (ProviderKind::Bedrock, None) => {
            return Err(ConfigError(format!(
                "invalid config at `{}`: a `bedrock` provider needs `[providers.aws]` with \
                 region, access_key_id and secret_access_key",
                at("aws")
            )))
        }
        (_, Some(_)) => {
            return Err(ConfigError(format!(
                "invalid config at `{}`: only `bedrock` providers take AWS credentials",
                at("aws")
            )))
        }
        (_, None) => return Ok((None, base_url)),
    };
    let region_ok = !raw.region.is_empty()
        && raw
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(ConfigError(format!(
            "invalid config at `{}`: `{}` is not an AWS region (e.g. us-east-1)",
            at("aws.region"),
            crate::error::bounded(&raw.region)
        )));
    }
    let secret = |field: &str, reference: &str| {
        match super::secret_reference(reference, secrets) {
            Some(r) => r.map(Secret),
            None => Err(
                "secrets must be referenced as `env:VARIABLE` or `file:/path`, never inlined"
                    .to_owned(),
            ),
        }
        .map(|s| Secret::new(s.expose().trim().to_owned()))
        .map_err(|m| ConfigError(format!("invalid config at `{}`: {m}", at(field))))
    };
    let auth = AwsAuth {
        access_key_id: secret("aws.access_key_id", &raw.access_key_id)?,
        secret_access_key: secret("aws.secret_access_key", &raw.secret_access_key)?,
        session_token: raw
            .session_token
            .map(|t| secret("aws.session_token", &t))
            .transpose()?,
        region: raw.region,
    };
    let base_url = if base_url.is_empty() {
        format!("https://bedrock-runtime.{}.amazonaws.com", auth.region)
    } else {
        base_url
    };
    Ok((Some(auth), base_url))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Config;

    const BEDROCK: &str = r#"
[[providers]]
name = "bedrock"
kind = "bedrock"
[providers.aws]
region = "eu-west-3"
access_key_id = "env:AK"
secret_access_key = "file:/nonexistent/secret"
session_token = "env:TOKEN"

[[models]]
name = "claude"
deployments = [{ provider = "bedrock", model = "anthropic.claude-3-haiku-20240307-v1:0" }]
"#;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn regional_endpoint_and_secrets_never_shown() {
        let text = BEDROCK.replace("file:/nonexistent/secret", "env:SK");
        let cfg = Config::from_toml(
            &text,
            &env(&[
                ("AK", "AKIDEXAMPLE"),
                ("SK", "wJalrXUtnFEMI"),
                ("TOKEN", "tok"),
            ]),
        )
        .unwrap();
        let p = &cfg.providers[0];
        assert_eq!(p.endpoint.host, "bedrock-runtime.eu-west-3.amazonaws.com");
        assert!(p.endpoint.tls);
        let aws = p.aws.as_ref().unwrap();
        assert_eq!(aws.access_key_id.expose(), "AKIDEXAMPLE");
        assert_eq!(aws.session_token.as_ref().unwrap().expose(), "tok");
        let shown = format!("{p:?} {}", cfg.summary());
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("AKIDEXAMPLE"));

        let text = text.replace(
            "kind = \"bedrock\"",
            "kind = \"bedrock\"\nbase_url = \"http://127.0.0.1:9/\"",
        );
        let env = env(&[("AK", "a"), ("SK", "s"), ("TOKEN", "t")]);
        let cfg = Config::from_toml(&text, &env).unwrap();
        assert_eq!(cfg.providers[0].endpoint.host_header, "127.0.0.1:9");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::from_toml(BEDROCK, &env(&[("AK", "a"), ("TOKEN", "t")])).unwrap_err();
        assert!(e.0.contains("providers[0].aws.secret_access_key"), "{e}");
        let inline = BEDROCK.replace("env:AK", "AKIDINLINE");
        let e = Config::from_toml(&inline, &env(&[])).unwrap_err();
        assert!(
            e.0.contains("aws.access_key_id") && !e.0.contains("AKIDINLINE"),
            "{e}"
        );
        let e = Config::from_toml(&BEDROCK.replace("eu-west-3", "EU WEST"), &env(&[])).unwrap_err();
        assert!(e.0.contains("aws.region"), "{e}");
        let bare = "[[providers]]\nname = \"b\"\nkind = \"bedrock\"\n";
        let e = Config::from_toml(bare, &env(&[])).unwrap_err();
        assert!(e.0.contains("providers[0].aws"), "{e}");
        let other = BEDROCK.replace(
            "kind = \"bedrock\"",
            "kind = \"openai\"\nbase_url = \"http://x/\"",
        );
        let e = Config::from_toml(&other, &env(&[])).unwrap_err();
        assert!(e.0.contains("only `bedrock` providers"), "{e}");
    }
}
