//! The commands that manage a running gateway through its admin API (`sluice keys`,
//! `sluice teams`), and the client they and the reports (`reports`) share. The token comes from `SLUICE_ADMIN_TOKEN`, the address
//! from `--admin` (or `SLUICE_ADMIN_URL`); each call says `x-sluice-client: cli`, so the audit
//! log shows the change came from here.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use super::table::Table;
use super::EXIT_CONFIG;

/// Where the admin API is and how to print its answers (shared by the admin commands).
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin listener.
    #[arg(
        long,
        global = true,
        env = "SLUICE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin: String,
}

/// Limits of a key or team, as flags.
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight.
    #[arg(long)]
    pub max_concurrency: Option<u32>,
    /// Budget in USD per period.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// daily, weekly, monthly (default) or lifetime.
    #[arg(long)]
    pub budget_period: Option<String>,
}

impl LimitArgs {
    fn fill(&self, v: &mut Map<String, Value>) {
        set(v, "rpm", json!(self.rpm));
        set(v, "tpm", json!(self.tpm));
        set(v, "max_concurrency", json!(self.max_concurrency));
        set(v, "budget_usd", json!(self.budget_usd));
        set(v, "budget_period", json!(self.budget_period));
    }
}

fn set(v: &mut Map<String, Value>, k: &str, x: Value) {
    if !x.is_null() {
        v.insert(k.to_string(), x);
    }
}

/// A limit or field `update` can clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Clearable {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
    /// Requests in flight.
    MaxConcurrency,
    /// The budget.
    BudgetUsd,
    /// The user (keys only).
    User,
    /// The model list (keys only: all models again).
    Models,
    /// The expiry (keys only).
    ExpiresAt,
}

impl Clearable {
    fn field(self) -> &'static str {
        match self {
            Clearable::Rpm => "rpm",
            Clearable::Tpm => "tpm",
            Clearable::MaxConcurrency => "max_concurrency",
            Clearable::BudgetUsd => "budget_usd",
            Clearable::User => "user",
            Clearable::Models => "models",
            Clearable::ExpiresAt => "expires_at",
        }
    }
}

/// `sluice keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Issue a key; it is printed once and never again.
    Create {
        /// A human name.
        #[arg(long)]
        name: String,
        /// The team it belongs to (default: `default`).
        #[arg(long)]
        team: Option<String>,
        /// The user it is issued to.
        #[arg(long)]
        user: Option<String>,
        /// Models it may call, comma-separated (`gpt-*` patterns allowed); default: all.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Its limits.
        #[command(flatten)]
        limits: LimitArgs,
        /// Unix second after which the key is refused.
        #[arg(long)]
        expires_at: Option<u64>,
        /// The response cache neither serves nor keeps this key's requests.
        #[arg(long)]
        no_cache: bool,
    },
    /// List every key (never the keys themselves: their prefixes).
    List,
    /// Show one key.
    Show {
        /// Its id.
        id: String,
    },
    /// Change a key's name, team, user, models, limits or expiry; `--clear` removes one.
    Update {
        /// Its id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Move it to this team.
        #[arg(long)]
        team: Option<String>,
        /// The user it is issued to.
        #[arg(long)]
        user: Option<String>,
        /// Models it may call, comma-separated.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// New limits.
        #[command(flatten)]
        limits: LimitArgs,
        /// Unix second after which the key is refused.
        #[arg(long)]
        expires_at: Option<u64>,
        /// Whether the response cache serves and keeps this key's requests.
        #[arg(long)]
        cache: Option<bool>,
        /// Remove a limit or field (repeat for several).
        #[arg(long, value_enum)]
        clear: Vec<Clearable>,
    },
    /// Issue a new key for the same id; the old one is refused at once.
    Rotate {
        /// Its id.
        id: String,
    },
    /// Refuse a key from now on (`--delete` removes it; its usage stays in the ledger).
    Revoke {
        /// Its id.
        id: String,
        /// Delete instead of disable.
        #[arg(long)]
        delete: bool,
    },
}

/// `sluice teams` subcommands.
#[derive(Debug, Subcommand)]
pub enum TeamsAction {
    /// Create a team with limits its keys share.
    Create {
        /// Its name.
        name: String,
        /// Its limits.
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List every team with its keys and spend this period.
    List,
    /// Show one team.
    Show {
        /// Its name.
        name: String,
    },
    /// Change a team's limits; `--clear` removes one.
    Update {
        /// Its name.
        name: String,
        /// New limits.
        #[command(flatten)]
        limits: LimitArgs,
        /// Remove a limit (repeat for several).
        #[arg(long, value_enum)]
        clear: Vec<Clearable>,
    },
    /// Delete a team (its keys keep working and keep its name).
    Delete {
        /// Its name.
        name: String,
    },
}

/// A failed command: what to print, and the exit status.
pub(super) struct Failure(pub(super) String, pub(super) u8);

pub(super) type Outcome = Result<String, Failure>;

/// The admin token from the environment.
fn token() -> Result<String, Failure> {
    std::env::var("SLUICE_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Failure(
                "set SLUICE_ADMIN_TOKEN to the gateway's admin token".into(),
                EXIT_CONFIG,
            )
        })
}

/// One call; the answer's raw body on a 2xx, else a failure naming the API's message.
pub(super) fn call(
    admin: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<String, Failure> {
    let token = token()?;
    let (status, raw) = admin_call(admin, &token, method, path, body)
        .map_err(|e| Failure(format!("admin API at {admin}: {e}"), 1))?;
    if !(200..300).contains(&status) {
        let v: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
        let msg = v["error"]["message"]
            .as_str()
            .map_or_else(|| raw.clone(), str::to_string);
        return Err(Failure(format!("{status}: {msg}"), 1));
    }
    Ok(raw)
}

pub(super) fn parse(raw: &str) -> Result<Value, Failure> {
    serde_json::from_str(raw).map_err(|e| Failure(format!("the answer is not JSON: {e}"), 1))
}

/// One admin API call as a command makes it.
pub(super) struct Call {
    /// `GET`, `POST`, `PATCH` or `DELETE`.
    pub(super) method: &'static str,
    /// Path and query.
    pub(super) path: String,
    /// JSON body.
    pub(super) body: Option<Value>,
}

impl Call {
    /// A `GET` of `path`.
    pub(super) fn get(path: String) -> Self {
        Call {
            method: "GET",
            path,
            body: None,
        }
    }
}

/// The shape every admin command shares: make `call` (or fail before it), then print the
/// API's JSON as it came (`json`), or what `render` makes of the parsed answer (a table,
/// CSV); prints the outcome and returns the exit status.
pub(super) fn run(
    admin: &AdminArgs,
    call: Result<Call, Failure>,
    json: bool,
    render: impl FnOnce(&Value) -> Outcome,
) -> ExitCode {
    let outcome = call.and_then(|c| {
        let raw = self::call(&admin.admin, c.method, &c.path, c.body.as_ref())?;
        if json {
            return Ok(format!("{}\n", raw.trim_end()));
        }
        render(&parse(&raw)?)
    });
    finish(outcome)
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn query(path: &str, q: &[(&str, String)]) -> String {
    if q.is_empty() {
        return path.to_string();
    }
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{path}?{}", parts.join("&"))
}

pub(super) fn finish(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(Failure(msg, code)) => {
            eprintln!("sluice: {msg}");
            ExitCode::from(code)
        }
    }
}

pub(super) fn opt_num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap_or_default().to_string(),
    }
}

fn usd(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |s| format!("${s:.6}"))
}

fn budget(v: &Value) -> String {
    match v["budget_usd"].as_f64() {
        Some(b) => format!("${b} {}", v["budget_period"].as_str().unwrap_or("")),
        None => "-".into(),
    }
}

fn keys_table(list: &[Value]) -> String {
    let mut t = Table::new(&[
        ("ID", false),
        ("NAME", false),
        ("TEAM", false),
        ("PREFIX", false),
        ("STATUS", false),
        ("RPM", true),
        ("TPM", true),
        ("MAX CONC", true),
        ("BUDGET", false),
        ("SPEND", true),
        ("IN FLIGHT", true),
        ("CACHE", false),
    ]);
    for k in list {
        let s = |f: &str| k[f].as_str().unwrap_or_default().to_string();
        t.push(vec![
            s("id"),
            s("name"),
            s("team"),
            s("prefix"),
            if k["disabled"].as_bool() == Some(true) {
                "disabled".into()
            } else {
                "active".into()
            },
            opt_num(&k["rpm"]),
            opt_num(&k["tpm"]),
            opt_num(&k["max_concurrency"]),
            budget(k),
            usd(&k["spend_usd"]),
            opt_num(&k["in_flight"]),
            if k["cache"].as_bool() == Some(false) {
                "off".into()
            } else {
                "on".into()
            },
        ]);
    }
    t.render()
}

fn teams_table(list: &[Value]) -> String {
    let mut t = Table::new(&[
        ("TEAM", false),
        ("KEYS", true),
        ("RPM", true),
        ("TPM", true),
        ("MAX CONC", true),
        ("BUDGET", false),
        ("SPEND", true),
        ("IN FLIGHT", true),
    ]);
    for r in list {
        t.push(vec![
            r["name"].as_str().unwrap_or_default().to_string(),
            opt_num(&r["keys"]),
            opt_num(&r["rpm"]),
            opt_num(&r["tpm"]),
            opt_num(&r["max_concurrency"]),
            budget(r),
            usd(&r["spend_usd"]),
            opt_num(&r["in_flight"]),
        ]);
    }
    t.render()
}

pub(super) fn list_of(v: &Value) -> &[Value] {
    v["data"].as_array().map_or(&[], Vec::as_slice)
}

fn clear_into(patch: &mut Map<String, Value>, clear: &[Clearable]) {
    for c in clear {
        patch.insert(c.field().to_string(), Value::Null);
    }
}

fn nothing_to_change() -> Failure {
    Failure(
        "nothing to change: give a flag such as --rpm, or --clear".into(),
        EXIT_CONFIG,
    )
}

/// The call of a `sluice keys` action.
fn keys_call(action: &KeysAction) -> Result<Call, Failure> {
    let (method, path, body) = match action {
        KeysAction::Create {
            name,
            team,
            user,
            models,
            limits,
            expires_at,
            no_cache,
        } => {
            let mut v = Map::new();
            v.insert("name".into(), json!(name));
            v.insert("models".into(), json!(models));
            set(&mut v, "team", json!(team));
            set(&mut v, "user", json!(user));
            set(&mut v, "expires_at", json!(expires_at));
            if *no_cache {
                v.insert("cache".into(), json!(false));
            }
            limits.fill(&mut v);
            ("POST", "/admin/keys".to_string(), Some(Value::Object(v)))
        }
        KeysAction::List => ("GET", "/admin/keys".to_string(), None),
        KeysAction::Show { id } => ("GET", format!("/admin/keys/{}", encode(id)), None),
        KeysAction::Update {
            id,
            name,
            team,
            user,
            models,
            limits,
            expires_at,
            cache,
            clear,
        } => {
            let mut v = Map::new();
            set(&mut v, "name", json!(name));
            set(&mut v, "team", json!(team));
            set(&mut v, "user", json!(user));
            set(&mut v, "models", json!(models));
            set(&mut v, "expires_at", json!(expires_at));
            set(&mut v, "cache", json!(cache));
            limits.fill(&mut v);
            clear_into(&mut v, clear);
            if v.is_empty() {
                return Err(nothing_to_change());
            }
            (
                "PATCH",
                format!("/admin/keys/{}", encode(id)),
                Some(Value::Object(v)),
            )
        }
        KeysAction::Rotate { id } => ("POST", format!("/admin/keys/{}/rotate", encode(id)), None),
        KeysAction::Revoke { id, delete: true } => {
            ("DELETE", format!("/admin/keys/{}", encode(id)), None)
        }
        KeysAction::Revoke { id, delete: false } => {
            ("POST", format!("/admin/keys/{}/disable", encode(id)), None)
        }
    };
    Ok(Call { method, path, body })
}

/// Runs `sluice keys`.
pub fn keys(admin: &AdminArgs, raw_json: bool, action: KeysAction) -> ExitCode {
    run(admin, keys_call(&action), raw_json, |answer| {
        Ok(match &action {
            KeysAction::List => keys_table(list_of(answer)),
            KeysAction::Revoke { delete: true, id } => format!("deleted {id}\n"),
            _ => {
                let mut out = keys_table(std::slice::from_ref(answer));
                if let Some(key) = answer["key"].as_str() {
                    out.push_str(&format!(
                        "\nkey: {key}\n(shown once: store it now; only its hash is kept)\n"
                    ));
                }
                out
            }
        })
    })
}

/// The call of a `sluice teams` action.
fn teams_call(action: &TeamsAction) -> Result<Call, Failure> {
    let (method, path, body) = match action {
        TeamsAction::Create { name, limits } => {
            let mut v = Map::new();
            v.insert("name".into(), json!(name));
            limits.fill(&mut v);
            ("POST", "/admin/teams".to_string(), Some(Value::Object(v)))
        }
        TeamsAction::List => ("GET", "/admin/teams".to_string(), None),
        TeamsAction::Show { name } => ("GET", format!("/admin/teams/{}", encode(name)), None),
        TeamsAction::Update {
            name,
            limits,
            clear,
        } => {
            let mut v = Map::new();
            limits.fill(&mut v);
            if let Some(c) = clear.iter().find(|c| {
                matches!(
                    c,
                    Clearable::User | Clearable::Models | Clearable::ExpiresAt
                )
            }) {
                return Err(Failure(
                    format!("a team has no `{}`", c.field()),
                    EXIT_CONFIG,
                ));
            }
            clear_into(&mut v, clear);
            if v.is_empty() {
                return Err(nothing_to_change());
            }
            (
                "PATCH",
                format!("/admin/teams/{}", encode(name)),
                Some(Value::Object(v)),
            )
        }
        TeamsAction::Delete { name } => ("DELETE", format!("/admin/teams/{}", encode(name)), None),
    };
    Ok(Call { method, path, body })
}

/// Runs `sluice teams`.
pub fn teams(admin: &AdminArgs, raw_json: bool, action: TeamsAction) -> ExitCode {
    run(admin, teams_call(&action), raw_json, |answer| {
        Ok(match &action {
            TeamsAction::List => teams_table(list_of(answer)),
            TeamsAction::Delete { name } => format!("deleted team {name}\n"),
            _ => teams_table(std::slice::from_ref(answer)),
        })
    })
}

/// One call to the admin API (`http://` or `https://`) over the process's blocking HTTP
/// client: (status, raw body). Bodies are JSON; answers are read up to 64 MiB.
fn admin_call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), String> {
    use std::time::Duration;
    use ureq::typestate::{WithBody, WithoutBody};
    use ureq::RequestBuilder;
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err("the admin URL must start with http:// or https://".into());
    }
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let agent = crate::blocking_http::agent(Duration::from_secs(30));
    let auth = format!("Bearer {token}");
    let with = |r: RequestBuilder<WithoutBody>| {
        r.header("authorization", &auth)
            .header("x-sluice-client", "cli")
    };
    let with_body = |r: RequestBuilder<WithBody>| {
        r.header("authorization", &auth)
            .header("x-sluice-client", "cli")
            .header("content-type", "application/json")
    };
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = match method {
        "GET" => with(agent.get(&url)).call(),
        "DELETE" => with(agent.delete(&url)).call(),
        "POST" => with_body(agent.post(&url)).send(payload.as_bytes()),
        "PATCH" => with_body(agent.patch(&url)).send(payload.as_bytes()),
        other => return Err(format!("no such method {other}")),
    };
    let mut response = answer.map_err(|e| format!("{e}"))?;
    let status = response.status().as_u16();
    let raw = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok((status, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(
            query(
                "/admin/usage",
                &[("key_id", "key_1".into()), ("from", "2024-01-01".into())]
            ),
            "/admin/usage?key_id=key_1&from=2024-01-01"
        );
        assert_eq!(query("/admin/spend", &[]), "/admin/spend");
    }
}
