//! `SLUICE__<SECTION>__<KEY>=value`: any scalar setting of the file, from the environment.
//!
//! The name is the setting's path in upper case with `__` between levels:
//! `SLUICE__SERVER__LISTEN`, `SLUICE__STORE__URL`, `SLUICE__SERVER__TLS__CERT_FILE`,
//! `SLUICE__AUTH` (a top-level key). The double underscore keeps them apart from the
//! single-underscore variables Sluice already reads (`SLUICE_AUTH`, `SLUICE_DRIVER`,
//! `SLUICE_ADMIN_TOKEN`). What a Kubernetes Deployment or a twelve-factor operator expects:
//! several replicas run from one file and differ by environment.
//!
//! The value is read as a TOML value when it is one of the setting's type (`8`, `true`,
//! `0.5`), else as a string (`127.0.0.1:8080`, `auto`), so nothing needs quoting. It replaces
//! the file's value before validation, so it is checked exactly as the file is. A variable
//! that names no setting, or a list or table (`providers`, `models`, `keys`, `prices`), is
//! refused at start with its name: a typo never passes silently.

use super::{ConfigError, RawConfig};

/// What every override's name starts with.
pub const PREFIX: &str = "SLUICE__";

/// The setting path of variable `name` (`SLUICE__SERVER__LISTEN` → `["server", "listen"]`).
fn path_of(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(PREFIX)?;
    let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    path.iter()
        .all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .then_some(path)
}

/// `table` with `value` at `path`, creating tables on the way; `false` when a value that is
/// not a table is in the way.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = table;
    for p in parents {
        let next = at
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match next {
            toml::Value::Table(t) => at = t,
            _ => return false,
        }
    }
    at.insert(last.clone(), value);
    true
}

/// How the raw config takes `value` at `path` alone: `Ok` when it does (a missing sibling
/// field is fine here: the file may have it), else the deserializer's message.
fn probe(path: &[String], value: &toml::Value) -> Result<(), String> {
    let mut table = toml::Table::new();
    if !set(&mut table, path, value.clone()) {
        return Err("not a setting".into());
    }
    match serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(table)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let msg = e.into_inner().message().to_string();
            if msg.starts_with("missing field") {
                Ok(())
            } else {
                Err(msg)
            }
        }
    }
}

/// The override's value: as TOML when the setting takes it so, else as a string.
fn value_for(name: &str, path: &[String], text: &str) -> Result<toml::Value, ConfigError> {
    let dotted = path.join(".");
    let typed = format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)));
    let as_string = toml::Value::String(text.to_string());
    let first_err = match typed {
        Some(v) => match probe(path, &v) {
            Ok(()) => return Ok(v),
            Err(m) => Some(m),
        },
        None => None,
    };
    match probe(path, &as_string) {
        Ok(()) => Ok(as_string),
        Err(m) => {
            let m = first_err.unwrap_or(m);
            if m.starts_with("unknown field") || m == "not a setting" {
                Err(ConfigError(format!(
                    "unknown environment variable `{name}`: there is no setting `{dotted}` \
                     (overrides are SLUICE__<SECTION>__<KEY> for a scalar setting)"
                )))
            } else if m.starts_with("invalid type: map")
                || m.contains("expected struct")
                || m.contains("expected a sequence")
                || m.contains("expected a map")
            {
                Err(ConfigError(format!(
                    "environment variable `{name}`: `{dotted}` is not a scalar setting \
                     (lists and tables are set in the file)"
                )))
            } else {
                // Only what was expected: serde's message would echo the value, which may
                // be a secret.
                let expected = m
                    .split_once(", expected ")
                    .map_or("another type", |(_, e)| e);
                Err(ConfigError(format!(
                    "environment variable `{name}`: invalid value for `{dotted}`: expected \
                     {expected}"
                )))
            }
        }
    }
}

/// Applies every `SLUICE__…` variable of `vars` to the file's `table`, in name order.
pub fn apply(table: &mut toml::Table, vars: &[(String, String)]) -> Result<(), ConfigError> {
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort();
    for (name, text) in vars {
        let Some(path) = path_of(name) else {
            return Err(ConfigError(format!(
                "unknown environment variable `{name}`: overrides are \
                 SLUICE__<SECTION>__<KEY> (letters, digits and single underscores)"
            )));
        };
        let value = value_for(name, &path, text)?;
        if !set(table, &path, value) {
            return Err(ConfigError(format!(
                "environment variable `{name}`: `{}` is not a table in the config file",
                path[..path.len() - 1].join(".")
            )));
        }
    }
    Ok(())
}
