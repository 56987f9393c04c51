//! Configuration in two stages: raw serde types that mirror the TOML file
//! (`deny_unknown_fields`, so a typo fails with its path), then a validated [`Config`] of typed
//! values that the data plane uses without further checks.
//!
//! Secrets are referenced, never inlined: `api_key = "env:OPENAI_API_KEY"` is read through a
//! [`SecretSource`], which tests fill without touching the process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::balance::{BalanceConfig, RawBalance, Strategy};
use crate::breaker::{BreakerConfig, RawBreaker};
use crate::hedge::{HedgePolicy, RawHedge};
use crate::retry::{RawRetry, RetryPolicy};

mod access;

pub use access::{AuthMode, LimitsConfig, StaticKey, StoreConfig};

/// Where `env:NAME` references are looked up.
pub trait SecretSource {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl SecretSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl SecretSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

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

/// A configuration that could not be accepted; the message names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

// ---------------------------------------------------------------------------------------------
// Raw stage
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    auth: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    tracing: RawTracing,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    models: Vec<RawModel>,
    store: Option<access::RawStore>,
    #[serde(default)]
    limits: access::RawLimits,
    #[serde(default)]
    prices: HashMap<String, crate::cost::Price>,
    #[serde(default)]
    keys: Vec<access::RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawWorkers {
    Count(u32),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    workers: Option<RawWorkers>,
    driver: Option<String>,
    pin_workers: Option<bool>,
    max_connections_per_worker: Option<u32>,
    max_header_bytes: Option<u32>,
    max_body_bytes: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    keepalive_idle_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    tls: Option<RawServerTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
    access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    max_queue_spans: Option<u32>,
    max_batch_spans: Option<u32>,
    flush_interval_ms: Option<u64>,
    export_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
    metrics_on_main: Option<bool>,
    per_key_metrics: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    kind: Option<String>,
    base_url: String,
    api_key: Option<String>,
    ca_file: Option<String>,
    default_max_tokens: Option<u32>,
    api_version: Option<String>,
    extra: Option<toml::Table>,
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    total_timeout_ms: Option<u64>,
    pool_max_idle: Option<u32>,
    pool_idle_timeout_ms: Option<u64>,
    dns_refresh_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    deployments: Vec<RawDeployment>,
    strategy: Option<Strategy>,
    #[serde(default)]
    fallbacks: Vec<String>,
    context_window_fallback: Option<String>,
    balance: Option<RawBalance>,
    retry: Option<RawRetry>,
    breaker: Option<RawBreaker>,
    hedge: Option<RawHedge>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    provider: String,
    model: String,
    weight: Option<u32>,
    rpm: Option<u32>,
    tpm: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Validated stage
// ---------------------------------------------------------------------------------------------

/// How many worker threads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workers {
    /// One per available core.
    Auto,
    /// Exactly this many.
    Count(usize),
}

/// Which I/O driver the workers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring or fail.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Listener, limits and timeouts of the client-facing server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address every worker listens on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Worker thread count.
    pub workers: Workers,
    /// I/O driver.
    pub driver: Driver,
    /// Pin worker `i` to core `i`.
    pub pin_workers: bool,
    /// Connections a worker holds at most; more are answered 503 and closed.
    pub max_connections_per_worker: usize,
    /// Largest request head (431 past it).
    pub max_header_bytes: usize,
    /// Largest request body (413 past it).
    pub max_body_bytes: u64,
    /// Time allowed to receive a whole request head once its first byte arrived (408 past it).
    pub header_read_timeout_ms: u64,
    /// Time allowed to receive a whole body (408 past it).
    pub body_read_timeout_ms: u64,
    /// Time an idle keep-alive connection is kept.
    pub keepalive_idle_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests get to finish.
    pub drain_timeout_ms: u64,
    /// TLS termination on the client listener; `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
}

/// Certificate and key of the client listener (`[server.tls]`), both PEM. The files are read
/// by the proxy at start-up and again on SIGHUP or when they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 RSA or SEC1).
    pub key_file: std::path::PathBuf,
}

/// Access and diagnostic logging.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info`; `RUST_LOG` overrides it.
    pub level: String,
    /// JSON lines or human text.
    pub json: bool,
    /// One line per request.
    pub access_log: bool,
}

/// The admin listener: metrics (and the admin API), off the data plane.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    /// Whether the admin listener runs.
    pub enabled: bool,
    /// Where it listens (default 127.0.0.1:8081; keep it private).
    pub listen: SocketAddr,
    /// Also serve `GET /metrics` on the client listener.
    pub metrics_on_main: bool,
    /// Label request metrics by key and team (bounded by the number of keys).
    pub per_key_metrics: bool,
}

/// OpenTelemetry trace export (OTLP over HTTP/protobuf).
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// Where spans go, e.g. `http://127.0.0.1:4318/v1/traces`; `None` disables tracing.
    pub otlp_endpoint: Option<Endpoint>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of requests traced when the client sent no sampled `traceparent` (0..=1).
    pub sample_ratio: f64,
    /// Spans queued for export at most; more are dropped and counted.
    pub max_queue_spans: usize,
    /// Spans per export request at most.
    pub max_batch_spans: usize,
    /// Longest time a span waits before its batch is sent.
    pub flush_interval_ms: u64,
    /// Timeout of one export request.
    pub export_timeout_ms: u64,
}

/// The wire dialect a provider speaks: `openai` (and every OpenAI-compatible server),
/// `azure`, `anthropic` or `gemini`.
pub use crate::dialect::Dialect as ProviderKind;

/// Where a provider is, parsed from its base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or not.
    pub tls: bool,
    /// Host name or IP literal (without brackets), used for DNS, SNI and `Host`.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path_prefix: String,
    /// The `Host` header value (with the port when not the scheme's default).
    pub host_header: String,
}

/// One upstream provider.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Unique name, referenced by deployments and shown in logs.
    pub name: String,
    /// Dialect.
    pub kind: ProviderKind,
    /// Where it is.
    pub endpoint: Endpoint,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<Secret>,
    /// A PEM bundle of extra trusted roots for this provider (a private CA), on top of the
    /// system and webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Extra headers sent on every request.
    pub headers: Vec<(String, String)>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout_ms: u64,
    /// From request sent to the first byte of the response head.
    pub first_byte_timeout_ms: u64,
    /// Longest silence between two body reads.
    pub idle_timeout_ms: u64,
    /// Whole exchange.
    pub total_timeout_ms: u64,
    /// Idle keep-alive connections a worker keeps for this provider.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection may be reused.
    pub pool_idle_timeout_ms: u64,
    /// How often the host name is resolved again.
    pub dns_refresh_ms: u64,
    /// `max_tokens` sent to Anthropic when the client set none (it is required there).
    pub default_max_tokens: u32,
    /// Azure OpenAI `api-version`.
    pub api_version: Option<String>,
    /// Provider-specific fields merged into every translated request body.
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
}

/// An active health check: `GET {base_url}{path}` every `interval_ms`; a failure or a status
/// of 500 and above counts against the breakers of the provider's deployments, a success lets
/// an open breaker's probe through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path under the base URL, e.g. `/models`.
    pub path: String,
    /// Time between checks.
    pub interval_ms: u64,
    /// Time a check may take.
    pub timeout_ms: u64,
}

/// A provider plus the model name it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// Upstream model name; `*` keeps the name the client asked for.
    pub model: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// `provider/model`, for headers and logs.
    pub label: String,
    /// The provider's own requests-per-minute limit for this deployment: Sluice sends no
    /// more, so it never triggers the provider's 429.
    pub rpm: Option<u32>,
    /// The provider's own tokens-per-minute limit (prompt estimate + `max_tokens` reserved,
    /// settled with the real usage).
    pub tpm: Option<u64>,
}

/// A public model name and the deployments that serve it.
#[derive(Clone, Debug)]
pub struct ModelGroup {
    /// Public name, or a prefix pattern ending in `*`.
    pub name: String,
    /// At least one.
    pub deployments: Vec<Deployment>,
    /// How a deployment is chosen.
    pub strategy: Strategy,
    /// Balancer tuning (EWMA decay, penalties).
    pub balance: BalanceConfig,
    /// Retries within the group and the request deadline.
    pub retry: RetryPolicy,
    /// Circuit breaker per deployment.
    pub breaker: BreakerConfig,
    /// Hedged requests, when enabled.
    pub hedge: Option<HedgePolicy>,
    /// Groups tried in order when this one is exhausted (indices into [`Config::models`]).
    pub fallbacks: Vec<usize>,
    /// The group tried when the prompt does not fit this group's context window.
    pub context_window_fallback: Option<usize>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client-facing server.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Admin listener and metrics.
    pub admin: AdminConfig,
    /// Trace export.
    pub tracing: TracingConfig,
    /// Providers, referenced by index.
    pub providers: Vec<Provider>,
    /// Model groups in config order (the order of `/v1/models`).
    pub models: Vec<ModelGroup>,
    /// Whether API requests need a virtual key (`auth = "none"` turns it off).
    pub auth: AuthMode,
    /// The embedded store.
    pub store: StoreConfig,
    /// Admission defaults.
    pub limits: LimitsConfig,
    /// `[prices]`: USD per million tokens by model name or prefix, over the bundled table.
    pub prices: HashMap<String, crate::cost::Price>,
    /// Keys declared in the config (hashed at load).
    pub keys: Vec<StaticKey>,
    exact: HashMap<String, usize>,
    /// (prefix, group index), longest prefix first.
    patterns: Vec<(String, usize)>,
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            if path.is_empty() || path == "." {
                ConfigError(format!("invalid config: {msg}"))
            } else {
                ConfigError(format!("invalid config at `{path}`: {msg}"))
            }
        })?;
        validate(raw, secrets)
    }

    /// The embedded default: 127.0.0.1:8080 and the providers whose keys are in the
    /// environment (`OPENAI_API_KEY`, with `OPENAI_BASE_URL` to point elsewhere).
    ///
    /// It listens on loopback only and runs without authentication and without a store, so
    /// trying the gateway needs nothing; `SLUICE_AUTH=keys` turns keys (and the store) on.
    pub fn embedded_default(secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
        let auth = match secrets.var("SLUICE_AUTH").as_deref() {
            None | Some("none") => "none",
            Some("keys") => "keys",
            Some(other) => {
                return err(format!(
                    "SLUICE_AUTH: expected \"keys\" or \"none\", got `{other}`"
                ))
            }
        };
        let mut text = format!("auth = \"{auth}\"\n[server]\nlisten = \"127.0.0.1:8080\"\n");
        if secrets.var("OPENAI_API_KEY").is_some() {
            let base = secrets
                .var("OPENAI_BASE_URL")
                .unwrap_or_else(|| "https://api.openai.com/v1".to_string());
            let base = toml::Value::String(base);
            text.push_str(&format!(
                "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = {base}\napi_key = \"env:OPENAI_API_KEY\"\n"
            ));
            for pattern in [
                "gpt-*",
                "chatgpt-*",
                "o1*",
                "o3*",
                "o4*",
                "text-embedding-*",
                "omni-moderation-*",
            ] {
                text.push_str(&format!(
                    "[[models]]\nname = \"{pattern}\"\ndeployments = [{{ provider = \"openai\", model = \"*\" }}]\n"
                ));
            }
        }
        Config::from_toml(&text, secrets)
    }

    /// The group serving public model `name`: an exact name first, then the longest matching
    /// `prefix*` pattern.
    pub fn model(&self, name: &str) -> Option<&ModelGroup> {
        self.model_index(name).and_then(|i| self.models.get(i))
    }

    /// The index in [`Config::models`] of the group serving `name` (see [`Config::model`]).
    pub fn model_index(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.exact.get(name) {
            return Some(*i);
        }
        self.patterns
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, i)| *i)
    }

    /// A human summary of what would be served, for `sluice check-config`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "listen {} ({} workers, driver {:?})\n",
            self.server.listen,
            match self.server.workers {
                Workers::Auto => "auto".to_string(),
                Workers::Count(n) => n.to_string(),
            },
            self.server.driver
        );
        if let Some(tls) = &self.server.tls {
            out.push_str(&format!(
                "tls on the listener: cert {} key {}\n",
                tls.cert_file.display(),
                tls.key_file.display()
            ));
        }
        for p in &self.providers {
            out.push_str(&format!(
                "provider {} ({:?}) {}://{}:{}{}{}\n",
                p.name,
                p.kind,
                if p.endpoint.tls { "https" } else { "http" },
                p.endpoint.host,
                p.endpoint.port,
                p.endpoint.path_prefix,
                if p.api_key.is_some() {
                    " [key set]"
                } else {
                    ""
                }
            ));
        }
        match (self.auth, &self.store.path) {
            (AuthMode::None, _) => out.push_str("auth none (any key or none is accepted)\n"),
            (AuthMode::Keys, _) => out.push_str(&format!(
                "auth keys ({} declared in the config; more through the admin API)\n",
                self.keys.len()
            )),
        }
        if let Some(path) = &self.store.path {
            out.push_str(&format!("store {}\n", path.display()));
        }
        for k in &self.keys {
            out.push_str(&format!(
                "key {} ({}, team {}){}\n",
                k.record.name,
                k.record.prefix,
                k.record.team,
                if k.literal {
                    " [literal in the file: demo only]"
                } else {
                    ""
                }
            ));
        }
        for m in &self.models {
            let deps: Vec<String> = m
                .deployments
                .iter()
                .map(|d| format!("{} (weight {})", d.label, d.weight))
                .collect();
            out.push_str(&format!("model {} -> {}\n", m.name, deps.join(", ")));
        }
        out
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().or_else(|_| {
        err(format!(
            "invalid config at `server.listen`: `{s}` is not an address like 127.0.0.1:8080"
        ))
    })
}

fn positive(path: &str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        Some(0) => err(format!(
            "invalid config at `{path}`: must be greater than 0"
        )),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

fn validate(raw: RawConfig, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
    let access = access::validate(
        raw.auth, raw.store, raw.limits, raw.prices, raw.keys, secrets,
    )?;
    let s = raw.server;
    let workers = match s.workers {
        None => Workers::Auto,
        Some(RawWorkers::Word(w)) if w == "auto" => Workers::Auto,
        Some(RawWorkers::Count(n)) if (1..=1024).contains(&n) => Workers::Count(n as usize),
        Some(other) => {
            return err(format!(
                "invalid config at `server.workers`: expected \"auto\" or 1..=1024, got {other:?}"
            ))
        }
    };
    let driver = match s.driver.as_deref() {
        None | Some("auto") => Driver::Auto,
        Some("io_uring") | Some("iouring") => Driver::IoUring,
        Some("epoll") | Some("legacy") => Driver::Epoll,
        Some(other) => {
            return err(format!(
                "invalid config at `server.driver`: expected auto, io_uring or epoll, got `{other}`"
            ))
        }
    };
    let server = ServerConfig {
        listen: parse_listen(s.listen.as_deref().unwrap_or("127.0.0.1:8080"))?,
        workers,
        driver,
        pin_workers: s.pin_workers.unwrap_or(true),
        max_connections_per_worker: positive(
            "server.max_connections_per_worker",
            s.max_connections_per_worker.map(u64::from),
            16_384,
        )? as usize,
        max_header_bytes: positive(
            "server.max_header_bytes",
            s.max_header_bytes.map(u64::from),
            32 * 1024,
        )? as usize,
        max_body_bytes: positive("server.max_body_bytes", s.max_body_bytes, 16 * 1024 * 1024)?,
        header_read_timeout_ms: positive(
            "server.header_read_timeout_ms",
            s.header_read_timeout_ms,
            10_000,
        )?,
        body_read_timeout_ms: positive(
            "server.body_read_timeout_ms",
            s.body_read_timeout_ms,
            60_000,
        )?,
        keepalive_idle_timeout_ms: positive(
            "server.keepalive_idle_timeout_ms",
            s.keepalive_idle_timeout_ms,
            75_000,
        )?,
        drain_timeout_ms: positive("server.drain_timeout_ms", s.drain_timeout_ms, 30_000)?,
        tls: match s.tls {
            None => None,
            Some(t) => {
                for (name, v) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
                    if v.trim().is_empty() {
                        return err(format!(
                            "invalid config at `server.tls.{name}`: must name a PEM file"
                        ));
                    }
                }
                Some(ServerTls {
                    cert_file: t.cert_file.into(),
                    key_file: t.key_file.into(),
                })
            }
        },
    };
    let log = LogConfig {
        level: raw.log.level.unwrap_or_else(|| "info".to_string()),
        json: match raw.log.format.as_deref() {
            None | Some("json") => true,
            Some("human") | Some("text") => false,
            Some(other) => {
                return err(format!(
                    "invalid config at `log.format`: expected json or human, got `{other}`"
                ))
            }
        },
        access_log: raw.log.access_log.unwrap_or(true),
    };

    let admin = AdminConfig {
        enabled: raw.admin.enabled.unwrap_or(true),
        listen: match raw.admin.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 8081)),
            Some(s) => s.parse().or_else(|_| {
                err(format!(
                    "invalid config at `admin.listen`: `{s}` is not an address like 127.0.0.1:8081"
                ))
            })?,
        },
        metrics_on_main: raw.admin.metrics_on_main.unwrap_or(false),
        per_key_metrics: raw.admin.per_key_metrics.unwrap_or(false),
    };

    let t = raw.tracing;
    let otlp_endpoint = match t.otlp_endpoint {
        None => None,
        Some(url) => {
            let e = parse_endpoint(&url).map_err(|m| {
                ConfigError(format!("invalid config at `tracing.otlp_endpoint`: {m}"))
            })?;
            if e.tls {
                return err(
                    "invalid config at `tracing.otlp_endpoint`: export over https is not supported; \
                     send to a local collector over http",
                );
            }
            Some(e)
        }
    };
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return err("invalid config at `tracing.sample_ratio`: must be in 0..=1");
    }
    let tracing = TracingConfig {
        otlp_endpoint,
        service_name: t.service_name.unwrap_or_else(|| "sluice".to_string()),
        sample_ratio,
        max_queue_spans: positive(
            "tracing.max_queue_spans",
            t.max_queue_spans.map(u64::from),
            8192,
        )? as usize,
        max_batch_spans: positive(
            "tracing.max_batch_spans",
            t.max_batch_spans.map(u64::from),
            512,
        )? as usize,
        flush_interval_ms: positive("tracing.flush_interval_ms", t.flush_interval_ms, 1000)?,
        export_timeout_ms: positive("tracing.export_timeout_ms", t.export_timeout_ms, 2000)?,
    };

    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut provider_index = HashMap::new();
    for (i, p) in raw.providers.into_iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        if p.name.is_empty() {
            return err(format!("invalid config at `{}`: empty name", at("name")));
        }
        if provider_index.insert(p.name.clone(), i).is_some() {
            return err(format!(
                "invalid config at `{}`: duplicate provider `{}`",
                at("name"),
                p.name
            ));
        }
        let kind = match p.kind.as_deref() {
            None => ProviderKind::OpenAi,
            Some(name) => ProviderKind::from_name(name).ok_or_else(|| {
                ConfigError(format!(
                    "invalid config at `{}`: unknown provider kind `{name}` (supported: openai, azure, anthropic, gemini)",
                    at("kind")
                ))
            })?,
        };
        let extra = match p.extra {
            None => None,
            Some(table) => match serde_json::to_value(table) {
                Ok(serde_json::Value::Object(map)) => Some(map),
                _ => {
                    return err(format!(
                        "invalid config at `{}`: must be a table",
                        at("extra")
                    ))
                }
            },
        };
        let endpoint = parse_endpoint(&p.base_url)
            .map_err(|m| ConfigError(format!("invalid config at `{}`: {m}", at("base_url"))))?;
        let api_key =
            match p.api_key {
                None => None,
                Some(r) => Some(resolve_secret(&r, secrets).map_err(|m| {
                    ConfigError(format!("invalid config at `{}`: {m}", at("api_key")))
                })?),
            };
        let mut headers = Vec::with_capacity(p.headers.len());
        for (k, v) in p.headers {
            if httparse_token(&k).is_err() || crate::http1::is_hop_by_hop(&k) {
                return err(format!(
                    "invalid config at `{}`: `{k}` is not a header we can send",
                    at("headers")
                ));
            }
            let v = if v.starts_with("env:") {
                resolve_secret(&v, secrets)
                    .map_err(|m| {
                        ConfigError(format!("invalid config at `{}.{k}`: {m}", at("headers")))
                    })?
                    .expose()
                    .to_string()
            } else {
                v
            };
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return err(format!(
                    "invalid config at `{}.{k}`: control characters in value",
                    at("headers")
                ));
            }
            headers.push((k, v));
        }
        providers.push(Provider {
            name: p.name,
            kind,
            endpoint,
            api_key,
            ca_file: p.ca_file.map(std::path::PathBuf::from),
            headers,
            connect_timeout_ms: positive(&at("connect_timeout_ms"), p.connect_timeout_ms, 3_000)?,
            first_byte_timeout_ms: positive(
                &at("first_byte_timeout_ms"),
                p.first_byte_timeout_ms,
                120_000,
            )?,
            idle_timeout_ms: positive(&at("idle_timeout_ms"), p.idle_timeout_ms, 60_000)?,
            total_timeout_ms: positive(&at("total_timeout_ms"), p.total_timeout_ms, 600_000)?,
            pool_max_idle: p.pool_max_idle.unwrap_or(64) as usize,
            pool_idle_timeout_ms: positive(
                &at("pool_idle_timeout_ms"),
                p.pool_idle_timeout_ms,
                60_000,
            )?,
            dns_refresh_ms: positive(&at("dns_refresh_ms"), p.dns_refresh_ms, 30_000)?,
            default_max_tokens: positive(
                &at("default_max_tokens"),
                p.default_max_tokens.map(u64::from),
                u64::from(crate::dialect::DEFAULT_MAX_TOKENS),
            )? as u32,
            api_version: p.api_version,
            extra,
            health_check: match p.health_check {
                None => None,
                Some(h) => {
                    let path = h.path.unwrap_or_else(|| "/models".to_string());
                    if !path.starts_with('/')
                        || path
                            .bytes()
                            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                    {
                        return err(format!(
                            "invalid config at `{}`: must be a path starting with `/`",
                            at("health_check.path")
                        ));
                    }
                    Some(HealthCheck {
                        path,
                        interval_ms: positive(
                            &at("health_check.interval_ms"),
                            h.interval_ms,
                            10_000,
                        )?,
                        timeout_ms: positive(&at("health_check.timeout_ms"), h.timeout_ms, 2_000)?,
                    })
                }
            },
        });
    }

    let mut models = Vec::with_capacity(raw.models.len());
    let mut fallback_names = Vec::with_capacity(raw.models.len());
    let mut exact = HashMap::new();
    let mut patterns = Vec::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        if m.name.is_empty() {
            return err(format!("invalid config at `models[{i}].name`: empty name"));
        }
        if m.deployments.is_empty() {
            return err(format!(
                "invalid config at `models[{i}].deployments`: a model needs at least one deployment"
            ));
        }
        let mut deployments = Vec::with_capacity(m.deployments.len());
        for (j, d) in m.deployments.into_iter().enumerate() {
            let at = format!("models[{i}].deployments[{j}]");
            let Some(&provider) = provider_index.get(&d.provider) else {
                return err(format!(
                    "invalid config at `{at}.provider`: no provider named `{}`",
                    d.provider
                ));
            };
            if d.model.is_empty() {
                return err(format!("invalid config at `{at}.model`: empty model name"));
            }
            let weight = d.weight.unwrap_or(1);
            if weight == 0 {
                return err(format!(
                    "invalid config at `{at}.weight`: must be greater than 0"
                ));
            }
            if d.rpm == Some(0) || d.tpm == Some(0) {
                return err(format!(
                    "invalid config at `{at}`: `rpm` and `tpm` must be greater than 0"
                ));
            }
            deployments.push(Deployment {
                provider,
                label: format!("{}/{}", d.provider, d.model),
                model: d.model,
                weight,
                rpm: d.rpm,
                tpm: d.tpm,
            });
        }
        let group = models.len();
        if let Some(prefix) = m.name.strip_suffix('*') {
            if patterns.iter().any(|(p, _)| p == prefix) {
                return err(format!(
                    "invalid config at `models[{i}].name`: duplicate model `{}`",
                    m.name
                ));
            }
            patterns.push((prefix.to_string(), group));
        } else {
            if m.name.contains('*') {
                return err(format!(
                    "invalid config at `models[{i}].name`: `*` is only allowed at the end"
                ));
            }
            if deployments.iter().any(|d| d.model == "*") {
                return err(format!(
                    "invalid config at `models[{i}].deployments`: model `*` needs a pattern name ending in `*`"
                ));
            }
            if exact.insert(m.name.clone(), group).is_some() {
                return err(format!(
                    "invalid config at `models[{i}].name`: duplicate model `{}`",
                    m.name
                ));
            }
        }
        let at = |what: &str, e: String| {
            ConfigError(format!("invalid config at `models[{i}]`: {what}{e}"))
        };
        let balance = m
            .balance
            .unwrap_or_default()
            .validate()
            .map_err(|e| at("", e))?;
        let retry = m
            .retry
            .unwrap_or_default()
            .validate()
            .map_err(|e| at("", e))?;
        let breaker = m
            .breaker
            .unwrap_or_default()
            .validate()
            .map_err(|e| at("", e))?;
        let hedge = m
            .hedge
            .map(|h| h.validate())
            .transpose()
            .map_err(|e| at("", e))?;
        if hedge.is_some() && deployments.len() < 2 {
            return err(format!(
                "invalid config at `models[{i}].hedge`: hedging needs at least two deployments"
            ));
        }
        fallback_names.push((m.fallbacks, m.context_window_fallback));
        models.push(ModelGroup {
            name: m.name,
            deployments,
            strategy: m.strategy.unwrap_or_default(),
            balance,
            retry,
            breaker,
            hedge,
            fallbacks: Vec::new(),
            context_window_fallback: None,
        });
    }
    // Fallbacks name other groups by their exact name; resolved once every group is known.
    for (i, (names, context)) in fallback_names.into_iter().enumerate() {
        let find = |name: &str, field: &str| {
            exact.get(name).copied().filter(|g| *g != i).ok_or_else(|| {
                ConfigError(format!(
                    "invalid config at `models[{i}].{field}`: no other model named `{name}`"
                ))
            })
        };
        let fallbacks = names
            .iter()
            .map(|n| find(n, "fallbacks"))
            .collect::<Result<Vec<_>, _>>()?;
        let context = context
            .map(|n| find(&n, "context_window_fallback"))
            .transpose()?;
        if let Some(g) = models.get_mut(i) {
            g.fallbacks = fallbacks;
            g.context_window_fallback = context;
        }
    }
    patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));

    Ok(Config {
        server,
        log,
        admin,
        tracing,
        providers,
        models,
        auth: access.auth,
        store: access.store,
        limits: access.limits,
        prices: access.prices,
        keys: access.keys,
        exact,
        patterns,
    })
}

fn httparse_token(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// Resolves `env:NAME`. Inline secrets are refused, so a config file can be shared safely.
fn resolve_secret(reference: &str, secrets: &dyn SecretSource) -> Result<Secret, String> {
    let Some(name) = reference.strip_prefix("env:") else {
        return Err("secrets must be referenced as `env:VARIABLE`, never inlined".to_string());
    };
    secrets
        .var(name)
        .map(Secret)
        .ok_or_else(|| format!("environment variable `{name}` is not set"))
}

fn parse_endpoint(base_url: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(base_url).map_err(|e| format!("`{base_url}`: {e}"))?;
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("unsupported scheme `{other}` (http or https)")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed; use api_key".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a base URL has no query or fragment".to_string());
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("missing host".to_string()),
    };
    let default_port = if tls { 443 } else { 80 };
    let port = url.port().unwrap_or(default_port);
    let host_literal = match url.host() {
        Some(url::Host::Ipv6(_)) => format!("[{host}]"),
        _ => host.clone(),
    };
    let host_header = if port == default_port {
        host_literal
    } else {
        format!("{host_literal}:{port}")
    };
    Ok(Endpoint {
        tls,
        host,
        port,
        path_prefix: url.path().trim_end_matches('/').to_string(),
        host_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MOCK: &str = r#"
[server]
listen = "127.0.0.1:8080"
workers = 2

[[providers]]
name = "mock"
base_url = "http://127.0.0.1:9000/v1/"
api_key = "env:MOCK_KEY"
headers = { "x-team" = "search" }

[[models]]
name = "mock-fast"
deployments = [{ provider = "mock", model = "gpt-4o-mini", weight = 3 }]

[[models]]
name = "mock-*"
deployments = [{ provider = "mock", model = "*" }]
"#;

    #[test]
    fn parses_the_mock_config() {
        let cfg = Config::from_toml(MOCK, &env(&[("MOCK_KEY", "sk-test")])).unwrap();
        assert_eq!(cfg.server.workers, Workers::Count(2));
        assert_eq!(cfg.server.max_header_bytes, 32 * 1024);
        let p = &cfg.providers[0];
        assert_eq!(p.endpoint.path_prefix, "/v1");
        assert_eq!(p.endpoint.host_header, "127.0.0.1:9000");
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-test");
        assert_eq!(format!("{:?}", p.api_key), "Some(Secret(***))");
        assert_eq!(cfg.model("mock-fast").unwrap().deployments[0].weight, 3);
        assert_eq!(cfg.model("mock-other").unwrap().name, "mock-*");
        assert!(cfg.model("gpt-4").is_none());
        assert!(cfg.summary().contains("mock-fast -> mock/gpt-4o-mini"));
        assert!(!cfg.summary().contains("sk-test"));
    }

    #[test]
    fn errors_name_the_path() {
        let e = Config::from_toml("[server]\nlisten = \"x\"\nbogus = 1\n", &env(&[])).unwrap_err();
        assert!(e.0.contains("server"), "{e}");
        let e = Config::from_toml("[server]\nlisten = \"nope\"\n", &env(&[])).unwrap_err();
        assert!(e.0.contains("server.listen"), "{e}");
        let e = Config::from_toml(MOCK, &env(&[])).unwrap_err();
        assert!(
            e.0.contains("providers[0].api_key") && e.0.contains("MOCK_KEY"),
            "{e}"
        );
        let e = Config::from_toml(
            &MOCK.replace("api_key = \"env:MOCK_KEY\"", "api_key = \"sk-inline\""),
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            e.0.contains("never inlined") && !e.0.contains("sk-inline"),
            "{e}"
        );
        let e = Config::from_toml(
            &MOCK.replace(
                "provider = \"mock\", model = \"gpt",
                "provider = \"nope\", model = \"gpt",
            ),
            &env(&[("MOCK_KEY", "k")]),
        )
        .unwrap_err();
        assert!(e.0.contains("models[0].deployments[0].provider"), "{e}");
        let e = Config::from_toml("[[models]]\nname = \"a\"\ndeployments = []\n", &env(&[]))
            .unwrap_err();
        assert!(e.0.contains("models[0].deployments"), "{e}");
        let e = Config::from_toml("[server]\nworkers = \"many\"\n", &env(&[])).unwrap_err();
        assert!(e.0.contains("server.workers"), "{e}");
    }

    #[test]
    fn embedded_default_registers_env_providers() {
        let cfg = Config::embedded_default(&env(&[])).unwrap();
        assert!(cfg.providers.is_empty());
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
        let cfg = Config::embedded_default(&env(&[("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!(cfg.providers[0].endpoint.host, "api.openai.com");
        assert!(cfg.providers[0].endpoint.tls);
        assert_eq!(cfg.model("gpt-4o").unwrap().deployments[0].model, "*");
        assert_eq!(
            cfg.model("text-embedding-3-small").unwrap().name,
            "text-embedding-*"
        );
    }

    #[test]
    fn endpoints() {
        let e = parse_endpoint("https://[::1]:8443/openai").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.host_header, "[::1]:8443");
        assert_eq!(e.path_prefix, "/openai");
        let e = parse_endpoint("https://api.example.com").unwrap();
        assert_eq!(
            (e.port, e.path_prefix.as_str(), e.host_header.as_str()),
            (443, "", "api.example.com")
        );
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("http://u:p@x").is_err());
    }

    #[test]
    fn access_settings() {
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n";
        // A config file requires keys and opens a store by default.
        let cfg = Config::from_toml(base, &env(&[])).unwrap();
        assert_eq!(cfg.auth, AuthMode::Keys);
        assert_eq!(
            cfg.store.path.as_deref(),
            Some(std::path::Path::new("sluice.db"))
        );
        assert_eq!(cfg.limits.default_max_tokens, 1024);
        let cfg =
            Config::from_toml(base, &env(&[("STATE_DIRECTORY", "/var/lib/sluice:/x")])).unwrap();
        assert_eq!(
            cfg.store.path.as_deref(),
            Some(std::path::Path::new("/var/lib/sluice/sluice.db"))
        );
        let cfg = Config::from_toml(&format!("auth = \"none\"\n{base}"), &env(&[])).unwrap();
        assert_eq!((cfg.auth, cfg.store.path.is_none()), (AuthMode::None, true));
        let e = Config::from_toml(&format!("auth = \"maybe\"\n{base}"), &env(&[])).unwrap_err();
        assert!(e.0.contains("`auth`"), "{e}");

        let text = r#"
[store]
path = "/tmp/x.db"
synchronous = "full"
[limits]
default_max_tokens = 256
[prices."mock-model"]
input_per_mtok = 1.0
output_per_mtok = 2.0
[[keys]]
name = "demo"
key = "sk-sluice-demo"
models = ["mock-fast"]
rpm = 10
[[keys]]
name = "ci"
key = "env:CI_KEY"
team = "search"
budget_usd = 5.0
budget_period = "daily"
metadata = { owner = "ops" }
"#;
        let cfg = Config::from_toml(text, &env(&[("CI_KEY", "sk-sluice-fromenv")])).unwrap();
        assert!(cfg.store.synchronous_full);
        assert_eq!(cfg.limits.default_max_tokens, 256);
        assert_eq!(cfg.prices["mock-model"].output_per_mtok, 2.0);
        let demo = &cfg.keys[0];
        assert!(demo.literal && demo.record.matches("sk-sluice-demo"));
        assert_eq!(demo.record.id, "cfg_demo");
        assert_eq!(demo.record.team, "default");
        let ci = &cfg.keys[1];
        assert!(!ci.literal && ci.record.matches("sk-sluice-fromenv"));
        assert_eq!(ci.record.limits.budget_period.as_str(), "daily");
        assert_eq!(ci.record.metadata["owner"], "ops");
        // The key never shows: not in Debug, not in the summary.
        let shown = format!("{cfg:?}{}", cfg.summary());
        assert!(!shown.contains("sk-sluice-fromenv") && !shown.contains("sk-sluice-demo\""));
        assert!(cfg.summary().contains("demo only"));

        // Literal provider-looking secrets are refused, without echoing them.
        let bad = text.replace("sk-sluice-demo", "sk-proj-abcdef");
        let e = Config::from_toml(&bad, &env(&[("CI_KEY", "k")])).unwrap_err();
        assert!(
            e.0.contains("keys[0].key") && !e.0.contains("sk-proj-abcdef"),
            "{e}"
        );
        let e = Config::from_toml(text, &env(&[])).unwrap_err();
        assert!(e.0.contains("keys[1].key") && e.0.contains("CI_KEY"), "{e}");
        let e = Config::from_toml(text, &env(&[("CI_KEY", "sk-sluice-demo")])).unwrap_err();
        assert!(e.0.contains("same key"), "{e}");
        let e = Config::from_toml(
            &text.replace("name = \"ci\"", "name = \"demo\""),
            &env(&[("CI_KEY", "x")]),
        )
        .unwrap_err();
        assert!(e.0.contains("duplicate key name"), "{e}");
        let e = Config::from_toml(
            &text.replace("rpm = 10", "rpn = 10"),
            &env(&[("CI_KEY", "x")]),
        )
        .unwrap_err();
        assert!(e.0.contains("keys"), "{e}");
    }

    #[test]
    fn embedded_default_auth() {
        let cfg = Config::embedded_default(&env(&[])).unwrap();
        assert_eq!(cfg.auth, AuthMode::None);
        assert!(cfg.store.path.is_none());
        let cfg = Config::embedded_default(&env(&[("SLUICE_AUTH", "keys")])).unwrap();
        assert_eq!(cfg.auth, AuthMode::Keys);
        assert!(Config::embedded_default(&env(&[("SLUICE_AUTH", "x")])).is_err());
    }

    #[test]
    fn server_tls_table() {
        let with = MOCK.replace(
            "workers = 2",
            "workers = 2\n[server.tls]\ncert_file = \"/etc/sluice/cert.pem\"\nkey_file = \"/etc/sluice/key.pem\"",
        );
        let cfg = Config::from_toml(&with, &env(&[("MOCK_KEY", "sk-test")])).unwrap();
        let tls = cfg.server.tls.clone().unwrap();
        assert_eq!(
            tls.cert_file,
            std::path::PathBuf::from("/etc/sluice/cert.pem")
        );
        assert_eq!(
            tls.key_file,
            std::path::PathBuf::from("/etc/sluice/key.pem")
        );
        assert!(cfg
            .summary()
            .contains("tls on the listener: cert /etc/sluice/cert.pem"));
        assert!(Config::from_toml(MOCK, &env(&[("MOCK_KEY", "sk-test")]))
            .unwrap()
            .server
            .tls
            .is_none());
        let missing = MOCK.replace(
            "workers = 2",
            "workers = 2\n[server.tls]\ncert_file = \"/c.pem\"",
        );
        let e = Config::from_toml(&missing, &env(&[("MOCK_KEY", "sk-test")])).unwrap_err();
        assert!(e.0.contains("server.tls"), "{e:?}");
        let empty = MOCK.replace(
            "workers = 2",
            "workers = 2\n[server.tls]\ncert_file = \"\"\nkey_file = \"/k.pem\"",
        );
        let e = Config::from_toml(&empty, &env(&[("MOCK_KEY", "sk-test")])).unwrap_err();
        assert!(e.0.contains("server.tls.cert_file"), "{e:?}");
    }
}
