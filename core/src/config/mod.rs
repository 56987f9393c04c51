//! Configuration in two stages: raw serde types that mirror the TOML file
//! (`deny_unknown_fields`, so a typo fails with its path), then a validated [`Config`] of typed
//! values that the data plane uses without further checks.
//!
//! Secrets are referenced, never inlined: `api_key = "env:OPENAI_API_KEY"` is read through a
//! [`SecretSource`], which tests fill without touching the process environment.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::Deserialize;

use crate::balance::{BalanceConfig, RawBalance, Strategy};
use crate::breaker::{BreakerConfig, RawBreaker};
use crate::hedge::{HedgePolicy, RawHedge};
use crate::retry::{RawRetry, RetryPolicy};

mod access;
mod alerts;
mod aws;
mod otel_env;
pub mod overrides;
mod pinning;
mod secret;
mod shared;
#[cfg(test)]
mod tests;
mod validate;
mod vertex;

pub use access::{AuthMode, LimitsConfig, StaticKey, StoreConfig};
pub use alerts::AlertsConfig;
pub use aws::AwsAuth;
pub use pinning::{pinning, Pinning};
use secret::secret_reference;
pub use secret::{read_secret_file, ProcessEnv, Secret, SecretSource};
pub use shared::SharedConfig;
pub use vertex::{ServiceAccountKey, VertexAuth};

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
    shared: Option<shared::RawShared>,
    #[serde(default)]
    limits: access::RawLimits,
    #[serde(default)]
    prices: HashMap<String, crate::cost::Price>,
    #[serde(default)]
    pricing: RawPricing,
    #[serde(default)]
    keys: Vec<access::RawKey>,
    cache: Option<crate::cache::settings::RawCache>,
    alerts: Option<alerts::RawAlerts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    catalog_file: Option<std::path::PathBuf>,
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
    compression: Option<RawCompression>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    enabled: Option<bool>,
    min_bytes: Option<u64>,
    max_bytes: Option<u64>,
    inline_max_bytes: Option<u64>,
    algorithms: Option<Vec<String>>,
    streams: Option<bool>,
    gzip_level: Option<u32>,
    br_level: Option<u32>,
    zstd_level: Option<i32>,
    threads: Option<u32>,
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
    base_url: Option<String>,
    project: Option<String>,
    region: Option<String>,
    credentials: Option<String>,
    api_key: Option<String>,
    aws: Option<aws::RawAws>,
    ca_file: Option<String>,
    default_max_tokens: Option<u32>,
    api_version: Option<String>,
    responses_api: Option<bool>,
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
    cache: Option<crate::cache::settings::RawGroupCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    provider: String,
    model: String,
    weight: Option<u32>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    publisher: Option<String>,
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

impl Driver {
    /// The config name of this driver: `auto`, `io_uring` or `epoll`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
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
    /// Pin worker `i` to the `i`-th allowed CPU, when the CPU set holds exactly one CPU per
    /// worker ([`pinning`]).
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
    /// Compression of answers for clients that ask (`[server.compression]`).
    pub compression: crate::compress::CompressionConfig,
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

/// `[pricing]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PricingConfig {
    /// A price catalog in LiteLLM's `model_prices_and_context_window.json` format, read by
    /// the loader at start and on reload; `[prices]` wins over it.
    pub catalog_file: Option<std::path::PathBuf>,
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

/// OpenTelemetry trace export (OTLP over HTTP/protobuf, http or https). The `OTEL_*`
/// environment variables fill what the file leaves unset (see `otel_env`).
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// Where spans go, e.g. `http://127.0.0.1:4318/v1/traces`; `None` disables tracing.
    pub otlp_endpoint: Option<Endpoint>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Headers sent with each export (`OTEL_EXPORTER_OTLP_HEADERS`), names in lower case.
    pub otlp_headers: Vec<(String, Secret)>,
    /// Further resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, without `service.name`).
    pub resource_attributes: Vec<(String, String)>,
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
/// `azure`, `anthropic`, `gemini` or `bedrock`.
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
    /// A `bedrock` provider's region and credentials (`[providers.aws]`).
    pub aws: Option<AwsAuth>,
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
    /// `kind = "vertex"`: project, region and service-account key.
    pub vertex: Option<VertexAuth>,
    /// An `openai` provider serves OpenAI's Responses API (`/responses`, passed through, state
    /// and all); `false` for OpenAI-compatible servers that have chat completions only, whose
    /// Responses requests are then translated (stateless).
    pub responses_api: bool,
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
    /// On a `vertex` provider: the model's publisher, when its name does not tell
    /// (`claude-*` is Anthropic's, the rest Google's).
    pub publisher: Option<crate::dialect::Publisher>,
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
    /// The response cache, when on (`cache = {…}`).
    pub cache: Option<crate::cache::settings::GroupCache>,
}

/// A map looked up on the request path, keyed by names the config (not a client) chose: foldhash
/// instead of SipHash, which cost some hundreds of instructions a lookup.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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
    /// `[shared]`: limits shared by a fleet through Redis; `None` keeps them in the process.
    pub shared: Option<SharedConfig>,
    /// Admission defaults.
    pub limits: LimitsConfig,
    /// `[prices]`: USD per million tokens by model name or prefix, over the bundled table;
    /// with the entries of the `[pricing]` catalog file the config does not name, once the
    /// loader has added them ([`Config::add_price_catalog`]).
    pub prices: HashMap<String, crate::cost::Price>,
    /// `[pricing]`: where more prices come from.
    pub pricing: PricingConfig,
    /// Keys declared in the config (hashed at load).
    pub keys: Vec<StaticKey>,
    /// `[cache]`: the response store's bounds.
    pub cache: crate::cache::settings::CacheConfig,
    /// `[alerts]`: where budget alerts go.
    pub alerts: AlertsConfig,
    /// Exact model names: looked up on every request, so hashed by foldhash, not SipHash (the
    /// keys are the config's, not a client's).
    exact: FastMap<String, usize>,
    /// (prefix, group index), longest prefix first.
    patterns: Vec<(String, usize)>,
}

impl Config {
    /// Parses and validates TOML text.
    ///
    /// `SLUICE__<SECTION>__<KEY>` variables from `secrets` override the file's scalars
    /// ([`overrides`]); an unknown one is refused with its name.
    pub fn from_toml(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(n) => ConfigError(format!("invalid config at line {n}: {}", e.message())),
                None => ConfigError(format!("invalid config: {}", e.message())),
            }
        })?;
        overrides::apply(&mut table, &secrets.overrides())?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let msg = inner.message().to_string();
                if path.is_empty() || path == "." {
                    ConfigError(format!("invalid config: {msg}"))
                } else {
                    ConfigError(format!("invalid config at `{path}`: {msg}"))
                }
            })?;
        validate::validate(raw, secrets)
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

    /// Adds the prices of a LiteLLM-format catalog (the text of `pricing.catalog_file`) for
    /// every model `[prices]` does not name; returns (entries added, entries skipped).
    pub fn add_price_catalog(&mut self, json: &str) -> Result<(usize, usize), ConfigError> {
        let (catalog, skipped) = crate::cost::parse_litellm_catalog(json)
            .map_err(|e| ConfigError(format!("invalid config at `pricing.catalog_file`: {e}")))?;
        let mut added = 0;
        for (model, price) in catalog {
            if let std::collections::hash_map::Entry::Vacant(v) = self.prices.entry(model) {
                v.insert(price);
                added += 1;
            }
        }
        Ok((added, skipped))
    }

    /// Deployments whose upstream model has no price (in `[prices]`, the catalog or the
    /// bundled table), as (model group, deployment label): their requests cost 0 and cannot
    /// exhaust a budget. Deployments that pass the client's model through (`*`) are left out.
    pub fn unpriced(&self) -> Vec<(&str, &str)> {
        let table = self.price_table();
        self.models
            .iter()
            .flat_map(|m| m.deployments.iter().map(move |d| (m, d)))
            .filter(|(_, d)| d.model != "*" && table.price(&d.model).is_none())
            .map(|(m, d)| (m.name.as_str(), d.label.as_str()))
            .collect()
    }

    /// The price table: `[prices]` (with the catalog's) over the bundled list, the
    /// deployments' upstream models resolved ahead (a request is priced at one of them).
    pub fn price_table(&self) -> crate::cost::PriceTable {
        crate::cost::PriceTable::new(self.prices.clone()).with_known(
            self.models
                .iter()
                .flat_map(|m| m.deployments.iter())
                .map(|d| d.model.as_str())
                .filter(|m| *m != "*"),
        )
    }

    /// A human summary of what would be served, for `sluice check-config`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "listen {} ({} workers, driver {})\n",
            self.server.listen,
            match self.server.workers {
                Workers::Auto => "auto".to_string(),
                Workers::Count(n) => n.to_string(),
            },
            self.server.driver.name()
        );
        if let Some(tls) = &self.server.tls {
            out.push_str(&format!(
                "tls on the listener: cert {} key {}\n",
                tls.cert_file.display(),
                tls.key_file.display()
            ));
        }
        let c = &self.server.compression;
        if c.enabled {
            let codings: Vec<&str> = c.algorithms.iter().map(|a| a.token()).collect();
            out.push_str(&format!(
                "compression: {} from {} bytes (zstd {}, br {}, gzip {})\n",
                codings.join(", "),
                c.min_bytes,
                c.zstd_level,
                c.br_level,
                c.gzip_level
            ));
        } else {
            out.push_str("compression: off\n");
        }
        for p in &self.providers {
            out.push_str(&format!(
                "provider {} ({}) {}://{}:{}{}{}\n",
                p.name,
                p.kind.name(),
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
        if self.store.url.is_some() {
            out.push_str("store postgresql ([store] url)\n");
        }
        if let Some(sh) = &self.shared {
            out.push_str(&format!(
                "shared limits on {} (timeout {} ms, on_unavailable {:?})\n",
                sh.redis_display, sh.timeout_ms, sh.on_unavailable
            ));
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
            if let Some(c) = &m.cache {
                out.push_str(&format!(
                    "cache on {}: exact {}, semantic {}, ttl {} s, scope {:?}{}\n",
                    m.name,
                    c.exact,
                    c.semantic,
                    c.ttl_ms / 1000,
                    c.scope,
                    if c.coalesce { ", coalesced" } else { "" }
                ));
            }
        }
        if let Some(file) = &self.pricing.catalog_file {
            out.push_str(&format!("price catalog {}\n", file.display()));
        }
        for (model, deployment) in self.unpriced() {
            out.push_str(&format!(
                "warning: no price for {deployment} (model {model}): its requests cost $0 and \
                 do not count toward budgets; add [prices.\"{}\"]\n",
                deployment.split_once('/').map_or(deployment, |(_, m)| m)
            ));
        }
        out
    }
}
