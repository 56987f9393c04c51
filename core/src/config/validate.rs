//! The validated stage: every raw value checked and turned into its typed form; each error
//! names the path of the bad key (`invalid config at `models[0].retry.max_attempts`: …`).

use super::*;

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

/// Checks every raw value and builds the validated [`Config`]; errors name the path of the
/// bad key.
pub(super) fn validate(raw: RawConfig, secrets: &dyn SecretSource) -> Result<Config, ConfigError> {
    let access = access::validate(
        raw.auth, raw.store, raw.limits, raw.prices, raw.keys, secrets,
    )?;
    let (providers, provider_index) = providers(raw.providers, secrets)?;
    let routing = models(raw.models, &provider_index)?;
    super::vertex::check_publishers(&providers, &routing.models)?;
    let config = Config {
        server: server(raw.server)?,
        log: log(raw.log)?,
        admin: admin(raw.admin)?,
        tracing: tracing(raw.tracing, secrets)?,
        providers,
        models: routing.models,
        auth: access.auth,
        store: access.store,
        shared: shared::validate(raw.shared, secrets)?,
        limits: access.limits,
        prices: access.prices,
        pricing: pricing(raw.pricing)?,
        keys: access.keys,
        cache: crate::cache::settings::validate(raw.cache)?,
        alerts: super::alerts::validate(raw.alerts, secrets)?,
        exact: routing.exact.into_iter().collect(),
        patterns: routing.patterns,
    };
    // A semantic cache's embeddings come from a model this gateway serves (another group).
    for (i, m) in config.models.iter().enumerate() {
        if let Some(name) = m.cache.as_ref().and_then(|c| c.embedding_model.as_deref()) {
            if config.model_index(name).is_none_or(|g| g == i) {
                return err(format!(
                    "invalid config at `models[{i}].cache.embedding_model`: `{name}` is not another model of this gateway"
                ));
            }
        }
    }
    Ok(config)
}

/// `[server]`.
fn server(s: RawServer) -> Result<ServerConfig, ConfigError> {
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
        compression: compression(s.compression.unwrap_or_default())?,
    };
    Ok(server)
}

/// `[server.compression]`.
fn compression(c: RawCompression) -> Result<crate::compress::CompressionConfig, ConfigError> {
    use crate::compress::{Coding, CompressionConfig};
    let d = CompressionConfig::default();
    let at = |key: &str, msg: String| {
        err(format!(
            "invalid config at `server.compression.{key}`: {msg}"
        ))
    };
    let algorithms = match c.algorithms {
        None => d.algorithms,
        Some(names) => {
            let mut out: Vec<Coding> = Vec::with_capacity(names.len());
            for name in &names {
                match Coding::from_name(name) {
                    Some(coding) if out.contains(&coding) => {
                        return at("algorithms", format!("`{name}` is listed twice"))
                    }
                    Some(coding) => out.push(coding),
                    None => {
                        return at(
                            "algorithms",
                            format!(
                                "unknown coding `{}`: expected zstd, br or gzip",
                                crate::error::bounded(name)
                            ),
                        )
                    }
                }
            }
            out
        }
    };
    let enabled = c.enabled.unwrap_or(true) && !algorithms.is_empty();
    let min_bytes = c.min_bytes.unwrap_or(d.min_bytes);
    let max_bytes = positive("server.compression.max_bytes", c.max_bytes, d.max_bytes)?;
    if min_bytes > max_bytes {
        return at(
            "min_bytes",
            format!("{min_bytes} is above max_bytes ({max_bytes})"),
        );
    }
    let gzip_level = c.gzip_level.unwrap_or(d.gzip_level);
    if !(1..=9).contains(&gzip_level) {
        return at("gzip_level", format!("expected 1..=9, got {gzip_level}"));
    }
    let br_level = c.br_level.unwrap_or(d.br_level);
    if br_level > 11 {
        return at("br_level", format!("expected 0..=11, got {br_level}"));
    }
    let zstd_level = c.zstd_level.unwrap_or(d.zstd_level);
    if !(1..=19).contains(&zstd_level) {
        return at("zstd_level", format!("expected 1..=19, got {zstd_level}"));
    }
    if c.streams == Some(true) {
        // Event streams are relayed event by event; compressing them needs a flush per event
        // in the relay, which is not built yet.
        return at(
            "streams",
            "compressing event streams is not supported yet".into(),
        );
    }
    let threads = match c.threads {
        None | Some(0) => 0,
        Some(n) if n <= 256 => n as usize,
        Some(n) => return at("threads", format!("expected 0 (auto) ..=256, got {n}")),
    };
    Ok(CompressionConfig {
        enabled,
        min_bytes,
        max_bytes,
        inline_max_bytes: c.inline_max_bytes.unwrap_or(d.inline_max_bytes),
        algorithms,
        streams: false,
        gzip_level,
        br_level,
        zstd_level,
        threads,
    })
}

/// `[log]`.
fn log(l: RawLog) -> Result<LogConfig, ConfigError> {
    let log = LogConfig {
        level: l.level.unwrap_or_else(|| "info".to_string()),
        json: match l.format.as_deref() {
            None | Some("json") => true,
            Some("human") | Some("text") => false,
            Some(other) => {
                return err(format!(
                    "invalid config at `log.format`: expected json or human, got `{other}`"
                ))
            }
        },
        access_log: l.access_log.unwrap_or(true),
    };
    Ok(log)
}

/// `[pricing]`.
fn pricing(p: RawPricing) -> Result<PricingConfig, ConfigError> {
    if p.catalog_file
        .as_ref()
        .is_some_and(|f| f.as_os_str().is_empty())
    {
        return err("invalid config at `pricing.catalog_file`: empty path");
    }
    Ok(PricingConfig {
        catalog_file: p.catalog_file,
    })
}

/// `[admin]`.
fn admin(a: RawAdmin) -> Result<AdminConfig, ConfigError> {
    let admin = AdminConfig {
        enabled: a.enabled.unwrap_or(true),
        listen: match a.listen.as_deref() {
            None => SocketAddr::from(([127, 0, 0, 1], 8081)),
            Some(s) => s.parse().or_else(|_| {
                err(format!(
                    "invalid config at `admin.listen`: `{s}` is not an address like 127.0.0.1:8081"
                ))
            })?,
        },
        metrics_on_main: a.metrics_on_main.unwrap_or(false),
        per_key_metrics: a.per_key_metrics.unwrap_or(false),
    };
    Ok(admin)
}

/// `[tracing]`.
fn tracing(mut t: RawTracing, secrets: &dyn SecretSource) -> Result<TracingConfig, ConfigError> {
    let env = super::otel_env::apply(&mut t, secrets)?;
    let otlp_endpoint = match t.otlp_endpoint {
        None => None,
        Some(url) => Some(parse_endpoint(&url).map_err(|m| {
            ConfigError(format!(
                "invalid config at `tracing.otlp_endpoint` (or OTEL_EXPORTER_OTLP_ENDPOINT): {m}"
            ))
        })?),
    };
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return err("invalid config at `tracing.sample_ratio`: must be in 0..=1");
    }
    let tracing = TracingConfig {
        otlp_endpoint,
        service_name: t.service_name.unwrap_or_else(|| "sluice".to_string()),
        otlp_headers: env.headers,
        resource_attributes: env.resource_attributes,
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
    Ok(tracing)
}

/// `[[providers]]`, and their index by name.
fn providers(
    raw_providers: Vec<RawProvider>,
    secrets: &dyn SecretSource,
) -> Result<(Vec<Provider>, HashMap<String, usize>), ConfigError> {
    let mut providers = Vec::with_capacity(raw_providers.len());
    let mut provider_index = HashMap::new();
    for (i, p) in raw_providers.into_iter().enumerate() {
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
        providers.push(provider(i, p, secrets)?);
    }
    Ok((providers, provider_index))
}

/// One `[[providers]]` entry (its name already checked).
fn provider(i: usize, p: RawProvider, secrets: &dyn SecretSource) -> Result<Provider, ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");
    let kind = match p.kind.as_deref() {
        None => ProviderKind::OpenAi,
        Some(name) => ProviderKind::from_name(name).ok_or_else(|| {
            ConfigError(format!(
                "invalid config at `{}`: unknown provider kind `{name}` (supported: openai, azure, anthropic, gemini, vertex, bedrock)",
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
    let raw_vertex = super::vertex::RawVertex {
        project: p.project,
        region: p.region,
        credentials: p.credentials,
    };
    let is_vertex = matches!(kind, ProviderKind::Vertex(_));
    // A `bedrock` provider may leave `base_url` out: its region names the endpoint.
    let (aws, base_url) = if matches!(kind, ProviderKind::Bedrock) || p.aws.is_some() {
        let (aws, url) = super::aws::aws(i, kind, p.aws, p.base_url.unwrap_or_default(), secrets)?;
        (aws, Some(url))
    } else {
        (None, p.base_url)
    };
    let (base_url, vertex) = super::vertex::validate(i, is_vertex, base_url, raw_vertex, secrets)?;
    let endpoint = parse_endpoint(&base_url)
        .map_err(|m| ConfigError(format!("invalid config at `{}`: {m}", at("base_url"))))?;
    let api_key = match p.api_key {
        None => None,
        Some(r) => Some(
            resolve_secret(&r, secrets)
                .map_err(|m| ConfigError(format!("invalid config at `{}`: {m}", at("api_key"))))?,
        ),
    };
    let headers = headers(i, p.headers, secrets)?;
    Ok(Provider {
        name: p.name,
        kind,
        endpoint,
        api_key,
        aws,
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
        vertex,
        responses_api: p.responses_api.unwrap_or(true),
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
                    interval_ms: positive(&at("health_check.interval_ms"), h.interval_ms, 10_000)?,
                    timeout_ms: positive(&at("health_check.timeout_ms"), h.timeout_ms, 2_000)?,
                })
            }
        },
    })
}

/// A provider's extra `headers`: names we can send, values without control characters,
/// `env:` references resolved.
fn headers(
    i: usize,
    raw: BTreeMap<String, String>,
    secrets: &dyn SecretSource,
) -> Result<Vec<(String, String)>, ConfigError> {
    let at = |field: &str| format!("providers[{i}].{field}");
    let mut headers = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        if httparse_token(&k).is_err() || crate::http1::is_hop_by_hop(&k) {
            return err(format!(
                "invalid config at `{}`: `{k}` is not a header we can send",
                at("headers")
            ));
        }
        let v = if v.starts_with("env:") || v.starts_with("file:") {
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
    Ok(headers)
}

/// The model groups and how names find them.
struct Routing {
    models: Vec<ModelGroup>,
    exact: HashMap<String, usize>,
    patterns: Vec<(String, usize)>,
}

/// `[[models]]`: groups, their deployments and policies, fallbacks resolved by name.
fn models(
    raw_models: Vec<RawModel>,
    provider_index: &HashMap<String, usize>,
) -> Result<Routing, ConfigError> {
    let mut models = Vec::with_capacity(raw_models.len());
    let mut fallback_names = Vec::with_capacity(raw_models.len());
    let mut exact = HashMap::new();
    let mut patterns = Vec::new();
    for (i, m) in raw_models.into_iter().enumerate() {
        if m.name.is_empty() {
            return err(format!("invalid config at `models[{i}].name`: empty name"));
        }
        if m.deployments.is_empty() {
            return err(format!(
                "invalid config at `models[{i}].deployments`: a model needs at least one deployment"
            ));
        }
        let deployments = deployments(i, m.deployments, provider_index)?;
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
        let cache = crate::cache::settings::validate_group(&m.name, m.cache)?;
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
            cache,
        });
    }
    resolve_fallbacks(&mut models, fallback_names, &exact)?;
    patterns.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Ok(Routing {
        models,
        exact,
        patterns,
    })
}

/// Fallbacks name other groups by their exact name; resolved once every group is known.
fn resolve_fallbacks(
    models: &mut [ModelGroup],
    names: Vec<(Vec<String>, Option<String>)>,
    exact: &HashMap<String, usize>,
) -> Result<(), ConfigError> {
    for (i, (names, context)) in names.into_iter().enumerate() {
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
    Ok(())
}

/// The deployments of `models[i]`.
fn deployments(
    i: usize,
    raw: Vec<RawDeployment>,
    provider_index: &HashMap<String, usize>,
) -> Result<Vec<Deployment>, ConfigError> {
    let mut deployments = Vec::with_capacity(raw.len());
    for (j, d) in raw.into_iter().enumerate() {
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
        let publisher = super::vertex::publisher(&at, d.publisher.as_deref())?;
        deployments.push(Deployment {
            publisher,
            provider,
            label: format!("{}/{}", d.provider, d.model),
            model: d.model,
            weight,
            rpm: d.rpm,
            tpm: d.tpm,
        });
    }
    Ok(deployments)
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

/// Resolves `env:NAME` or `file:/path`. Inline secrets are refused, so a config file can be
/// shared safely.
pub(super) fn resolve_secret(
    reference: &str,
    secrets: &dyn SecretSource,
) -> Result<Secret, String> {
    match super::secret_reference(reference, secrets) {
        Some(r) => r.map(Secret),
        None => Err(
            "secrets must be referenced as `env:VARIABLE` or `file:/path`, never inlined"
                .to_string(),
        ),
    }
}

pub(super) fn parse_endpoint(base_url: &str) -> Result<Endpoint, String> {
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
