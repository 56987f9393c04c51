//! `[shared]`: the fleet's shared hot state on Redis (see `lease`). Absent, every limit stays in
//! the process (the embedded default).
//!
//! ```toml
//! [shared]
//! redis_url = "redis://127.0.0.1:6379"   # or rediss:// (TLS), "env:NAME" or "file:/path"
//! password = "env:REDIS_PASSWORD"        # optional, or "file:/path"; never inline
//! timeout_ms = 20                         # the most a request waits on Redis
//! on_unavailable = "local"                # or "closed": 503 + Retry-After
//! expected_replicas = 3                   # default: the replicas seen alive at the last sync
//! ca_file = "/etc/sluice/redis-ca.pem"    # rediss:// with a private CA (default: system roots)
//! ```

use serde::Deserialize;

use super::{err, ConfigError, Secret, SecretSource};
use crate::lease::OnUnavailable;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    redis_url: Option<String>,
    password: Option<String>,
    timeout_ms: Option<u64>,
    on_unavailable: Option<String>,
    expected_replicas: Option<u32>,
    key_prefix: Option<String>,
    sync_interval_ms: Option<u64>,
    lease_ttl_ms: Option<u64>,
    ca_file: Option<String>,
}

/// The validated `[shared]` section (changes only on restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedConfig {
    /// The Redis URL, with the password when one is configured (a secret: never logged).
    pub redis_url: Secret,
    /// The URL as it may be shown: scheme, host and port, no credentials.
    pub redis_display: String,
    /// Whether the connection uses TLS (`rediss://`).
    pub tls: bool,
    /// With `rediss://`: the PEM file of the CA that signed Redis's certificate; `None`
    /// trusts the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The most a request waits on Redis, in milliseconds (default 20).
    pub timeout_ms: u64,
    /// What to do while Redis is unavailable.
    pub on_unavailable: OnUnavailable,
    /// Replicas the limits are divided among while Redis is unavailable; `None`: those seen
    /// alive at the last successful sync.
    pub expected_replicas: Option<u32>,
    /// Prefix of every Redis key (default `sluice:`), so fleets can share a Redis.
    pub key_prefix: String,
    /// How often leases are topped up and spend reported, in milliseconds (default 50).
    pub sync_interval_ms: u64,
    /// How long a replica that stops syncing keeps its leases, in milliseconds (default
    /// 3000): a crashed replica's concurrency slots and budget come back after it.
    pub lease_ttl_ms: u64,
}

pub(super) fn validate(
    raw: Option<RawShared>,
    secrets: &dyn SecretSource,
) -> Result<Option<SharedConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let at = |k: &str, m: String| ConfigError(format!("invalid config at `shared.{k}`: {m}"));
    let Some(url) = raw.redis_url else {
        return err("invalid config at `shared.redis_url`: required in [shared]");
    };
    let url = match super::secret_reference(&url, secrets) {
        Some(Ok(u)) => u.trim().to_string(),
        Some(Err(m)) => return Err(at("redis_url", m)),
        None => url,
    };
    let parsed = url::Url::parse(&url).map_err(|e| at("redis_url", e.to_string()))?;
    let tls = match parsed.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(at(
                "redis_url",
                format!("unsupported scheme `{other}` (redis or rediss)"),
            ))
        }
    };
    let host = parsed.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(at("redis_url", "no host".to_string()));
    }
    let redis_display = format!(
        "{}://{}:{}",
        parsed.scheme(),
        host,
        parsed.port().unwrap_or(6379)
    );
    let mut with_password = parsed.clone();
    if let Some(reference) = raw.password {
        let value =
            match super::secret_reference(&reference, secrets) {
                Some(Ok(v)) => v,
                Some(Err(m)) => return Err(at("password", m)),
                None => return Err(at(
                    "password",
                    "secrets must be referenced as `env:VARIABLE` or `file:/path`, never inlined"
                        .to_string(),
                )),
            };
        with_password
            .set_password(Some(&value))
            .map_err(|()| at("password", "cannot be set on this URL".to_string()))?;
    }
    let ca_file = match raw.ca_file {
        None => None,
        Some(p) if p.is_empty() => return Err(at("ca_file", "empty path".to_string())),
        Some(_) if !tls => {
            return Err(at(
                "ca_file",
                "only with a rediss:// (TLS) redis_url".to_string(),
            ))
        }
        Some(p) => Some(std::path::PathBuf::from(p)),
    };
    let timeout_ms = match raw.timeout_ms {
        None => 20,
        Some(n @ 1..=10_000) => n,
        Some(_) => return Err(at("timeout_ms", "must be 1..=10000".to_string())),
    };
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("local") => OnUnavailable::Local,
        Some("closed") => OnUnavailable::Closed,
        Some(other) => {
            return Err(at(
                "on_unavailable",
                format!("expected \"local\" or \"closed\", got `{other}`"),
            ))
        }
    };
    if raw.expected_replicas == Some(0) {
        return Err(at("expected_replicas", "must be at least 1".to_string()));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "sluice:".to_string());
    if key_prefix.len() > 64 {
        return Err(at("key_prefix", "at most 64 bytes".to_string()));
    }
    let sync_interval_ms = match raw.sync_interval_ms {
        None => 50,
        Some(n @ 5..=5_000) => n,
        Some(_) => return Err(at("sync_interval_ms", "must be 5..=5000".to_string())),
    };
    let lease_ttl_ms = match raw.lease_ttl_ms {
        None => 3_000,
        Some(n) if n >= 4 * sync_interval_ms && n <= 600_000 => n,
        Some(_) => {
            return Err(at(
                "lease_ttl_ms",
                "must be at least 4 × sync_interval_ms and at most 600000".to_string(),
            ))
        }
    };
    Ok(Some(SharedConfig {
        redis_url: Secret::new(with_password.to_string()),
        redis_display,
        tls,
        ca_file,
        timeout_ms,
        on_unavailable,
        expected_replicas: raw.expected_replicas,
        key_prefix,
        sync_interval_ms,
        lease_ttl_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Option<SharedConfig>, ConfigError> {
        let raw: RawShared = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        validate(Some(raw), &env)
    }

    #[test]
    fn shared_section_parses_with_defaults_and_secrets() {
        let c = parse("redis_url = \"redis://127.0.0.1:6390/2\"", &[])
            .unwrap()
            .unwrap();
        assert_eq!(c.timeout_ms, 20);
        assert_eq!(c.on_unavailable, OnUnavailable::Local);
        assert_eq!(c.expected_replicas, None);
        assert_eq!(c.redis_display, "redis://127.0.0.1:6390");
        assert!(!c.tls);
        let c = parse(
            "redis_url = \"rediss://cache.internal\"\npassword = \"env:RP\"\non_unavailable = \"closed\"\nexpected_replicas = 3\ntimeout_ms = 5",
            &[("RP", "s3cret")],
        )
        .unwrap()
        .unwrap();
        assert!(c.tls);
        assert_eq!(c.ca_file, None);
        assert_eq!(c.redis_url.expose(), "rediss://:s3cret@cache.internal");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.on_unavailable, OnUnavailable::Closed);
        assert_eq!(c.expected_replicas, Some(3));
        let c = parse("redis_url = \"env:RURL\"", &[("RURL", "redis://h:1")])
            .unwrap()
            .unwrap();
        assert_eq!(c.redis_display, "redis://h:1");
        assert!(validate(None, &HashMap::new()).unwrap().is_none());
    }

    #[test]
    fn shared_url_and_password_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("sluice-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (url_file, pw_file) = (dir.join("url"), dir.join("pw"));
        std::fs::write(&url_file, "rediss://cache.internal:6380\n").unwrap();
        std::fs::write(&pw_file, "fr0m-file\n").unwrap();
        let text = format!(
            "redis_url = \"file:{}\"\npassword = \"file:{}\"",
            url_file.display(),
            pw_file.display()
        );
        let c = parse(&text, &[]).unwrap().unwrap();
        assert_eq!(
            c.redis_url.expose(),
            "rediss://:fr0m-file@cache.internal:6380"
        );
        assert_eq!(c.redis_display, "rediss://cache.internal:6380");
        assert!(!format!("{c:?}").contains("fr0m-file"));
        // A missing or relative file is refused by name, at the setting.
        for (text, needle) in [
            (
                "redis_url = \"file:/nonexistent/sluice/redis\"",
                "redis_url",
            ),
            ("redis_url = \"file:relative/redis\"", "absolute"),
            (
                "redis_url = \"redis://x\"\npassword = \"file:/nonexistent/sluice/pw\"",
                "/nonexistent/sluice/pw",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{text}: {e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shared_section_refuses_bad_values() {
        for (text, needle) in [
            ("timeout_ms = 20", "redis_url"),
            ("redis_url = \"http://x\"", "redis_url"),
            (
                "redis_url = \"redis://x\"\npassword = \"inline\"",
                "password",
            ),
            (
                "redis_url = \"redis://x\"\npassword = \"env:NOPE\"",
                "password",
            ),
            ("redis_url = \"redis://x\"\ntimeout_ms = 0", "timeout_ms"),
            (
                "redis_url = \"redis://x\"\non_unavailable = \"open\"",
                "on_unavailable",
            ),
            (
                "redis_url = \"redis://x\"\nexpected_replicas = 0",
                "expected_replicas",
            ),
            (
                "redis_url = \"redis://x\"\nlease_ttl_ms = 10",
                "lease_ttl_ms",
            ),
            ("redis_url = \"env:NOPE\"", "redis_url"),
            (
                "redis_url = \"redis://x\"\nca_file = \"/ca.pem\"",
                "ca_file",
            ),
        ] {
            let e = parse(text, &[]).unwrap_err();
            assert!(e.0.contains(needle), "{text}: {e}");
        }
        assert!(parse("redis_urll = \"redis://x\"", &[]).is_err());
    }
}
