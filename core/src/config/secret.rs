//! Secrets: `env:NAME` and `file:/path` references, read through a [`SecretSource`] (tests
//! fill one without touching the process environment), and the [`Secret`] that never prints.

use std::collections::HashMap;
use std::fmt;

use super::overrides;

/// Where `env:NAME` and `file:/path` references, and `SLUICE__…` overrides, are looked up.
pub trait SecretSource {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;

    /// The secret in the file at `path` (a Kubernetes Secret mount, a systemd credential,
    /// `/run/secrets/…`), without its trailing newline. The error never holds the content.
    fn file(&self, path: &str) -> Result<String, String> {
        read_secret_file(path)
    }

    /// Every `SLUICE__<SECTION>__<KEY>` variable, name and value ([`overrides`]).
    fn overrides(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Reads a secret file: at most 64 KiB, UTF-8, one trailing `\n` or `\r\n` removed.
pub fn read_secret_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    let mut bytes = Vec::new();
    file.take(64 * 1024 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{path}`: {e}"))?;
    if bytes.len() > 64 * 1024 {
        return Err(format!("`{path}` is larger than 64 KiB"));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| format!("`{path}` is not UTF-8"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The value behind `env:NAME` or `file:/path` (an empty one is an error); `None` when
/// `reference` is neither. Errors name the variable or file, never a value.
pub(super) fn secret_reference(
    reference: &str,
    secrets: &dyn SecretSource,
) -> Option<Result<String, String>> {
    if let Some(name) = reference.strip_prefix("env:") {
        return Some(
            secrets
                .var(name)
                .ok_or_else(|| format!("environment variable `{name}` is not set")),
        );
    }
    let path = reference.strip_prefix("file:")?;
    if !path.starts_with('/') {
        return Some(Err(format!(
            "`file:` takes an absolute path, not `{}`",
            crate::error::bounded(path)
        )));
    }
    Some(secrets.file(path).and_then(|v| {
        if v.is_empty() {
            Err(format!("`{path}` is empty"))
        } else {
            Ok(v)
        }
    }))
}

/// The process environment.
pub struct ProcessEnv;

impl SecretSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn overrides(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let k = k.into_string().ok()?;
                k.starts_with(overrides::PREFIX)
                    .then(|| (k, v.to_string_lossy().into_owned()))
            })
            .collect()
    }
}

impl SecretSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }

    fn overrides(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .iter()
            .filter(|(k, _)| k.starts_with(overrides::PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.sort();
        out
    }
}

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
