//! `[alerts]`: where budget alerts go.
//!
//! ```toml
//! [alerts]
//! webhook_url = "https://hooks.example.com/sluice"   # or "env:ALERT_URL" / "file:/run/secrets/url"
//! headers = { authorization = "env:ALERT_TOKEN" }    # values: plain, env: or file:
//! timeout_ms = 5000
//! ```
//!
//! Without `webhook_url` an alert is still a log line and a counted metric.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{secret_reference, ConfigError, Secret, SecretSource};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    webhook_url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

/// The validated `[alerts]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Where alerts are POSTed as JSON (a secret: webhook URLs often carry a token).
    pub webhook_url: Option<Secret>,
    /// `scheme://host:port` of the webhook, for logs.
    pub webhook_display: Option<String>,
    /// Extra request headers, values resolved (secrets never shown).
    pub headers: Vec<(String, Secret)>,
    /// Timeout of one delivery attempt (connect, send, answer).
    pub timeout_ms: u64,
}

/// Default timeout of one delivery attempt.
const DEFAULT_TIMEOUT_MS: u64 = 5000;

pub(super) fn validate(
    raw: Option<RawAlerts>,
    secrets: &dyn SecretSource,
) -> Result<AlertsConfig, ConfigError> {
    let at = |k: &str, m: String| ConfigError(format!("invalid config at `alerts.{k}`: {m}"));
    let Some(raw) = raw else {
        return Ok(AlertsConfig {
            timeout_ms: DEFAULT_TIMEOUT_MS,
            ..AlertsConfig::default()
        });
    };
    let timeout_ms = match raw.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) if (1..=60_000).contains(&t) => t,
        Some(_) => return Err(at("timeout_ms", "must be 1 to 60000".into())),
    };
    let (webhook_url, webhook_display) = match raw.webhook_url {
        None => (None, None),
        Some(reference) => {
            let url = match secret_reference(&reference, secrets) {
                Some(Ok(u)) => u.trim().to_string(),
                Some(Err(m)) => return Err(at("webhook_url", m)),
                None => reference,
            };
            let parsed = url::Url::parse(&url).map_err(|e| at("webhook_url", e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(at(
                    "webhook_url",
                    "an http:// or https:// URL with a host".into(),
                ));
            }
            let display = format!(
                "{}://{}:{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default(),
                parsed.port_or_known_default().unwrap_or(0)
            );
            (Some(Secret::new(url)), Some(display))
        }
    };
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(at(
                "headers",
                format!("`{}` is not a header name", crate::error::bounded(&name)),
            ));
        }
        let value = match secret_reference(&value, secrets) {
            Some(Ok(v)) => v,
            Some(Err(m)) => return Err(at(&format!("headers.{name}"), m)),
            None => value,
        };
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(at(
                &format!("headers.{name}"),
                "control characters in the value".into(),
            ));
        }
        headers.push((name, Secret::new(value)));
    }
    if webhook_url.is_none() && !headers.is_empty() {
        return Err(at("headers", "only with a webhook_url".into()));
    }
    Ok(AlertsConfig {
        webhook_url,
        webhook_display,
        headers,
        timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let env: HashMap<String, String> =
            [("HOOK_TOKEN".to_string(), "s3cret".to_string())].into();
        Config::from_toml(extra, &env).map_err(|e| e.0)
    }

    #[test]
    fn alerts_section() {
        let c = parse("").unwrap();
        assert_eq!(c.alerts.webhook_url, None);
        assert_eq!(c.alerts.timeout_ms, 5000);
        let c = parse(
            "[alerts]\nwebhook_url = \"http://127.0.0.1:9/hook?token=x\"\ntimeout_ms = 250\nheaders = { authorization = \"env:HOOK_TOKEN\", x-team = \"ops\" }\n",
        )
        .unwrap();
        let a = &c.alerts;
        assert_eq!(
            a.webhook_url.as_ref().unwrap().expose(),
            "http://127.0.0.1:9/hook?token=x"
        );
        assert_eq!(a.webhook_display.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(a.timeout_ms, 250);
        assert_eq!(a.headers[0].0, "authorization");
        assert_eq!(a.headers[0].1.expose(), "s3cret");
        assert!(!format!("{a:?}").contains("s3cret"));
        for (bad, path) in [
            (
                "[alerts]\nwebhook_url = \"ftp://x\"\n",
                "alerts.webhook_url",
            ),
            (
                "[alerts]\nwebhook_url = \"env:NOPE\"\n",
                "alerts.webhook_url",
            ),
            (
                "[alerts]\nwebhook_url = \"http://x\"\ntimeout_ms = 0\n",
                "alerts.timeout_ms",
            ),
            (
                "[alerts]\nwebhook_url = \"http://x\"\nheaders = { \"a b\" = \"1\" }\n",
                "alerts.headers",
            ),
            (
                "[alerts]\nwebhook_url = \"http://x\"\nheaders = { a = \"env:NOPE\" }\n",
                "alerts.headers.a",
            ),
            ("[alerts]\nheaders = { a = \"1\" }\n", "alerts.headers"),
            ("[alerts]\nwebhok_url = \"http://x\"\n", "alerts"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(path), "{bad}: {e}");
        }
    }
}
