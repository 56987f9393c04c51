//! Prometheus metrics through the `metrics` facade, rendered by
//! `metrics-exporter-prometheus` from our own handlers (no second HTTP server, no extra
//! runtime).
//!
//! Recording takes no lock on the request path: each worker looks a label set up in the
//! registry once, keeps the handles in its own cache (keyed by small integers, never by
//! strings), and from then on only touches atomics. Label values come from the config (model
//! group names, deployment labels, provider names), never from requests, so cardinality is
//! bounded by the config.
//!
//! Names follow the Prometheus rules (units in names, `_total` counters) and the OpenTelemetry
//! GenAI conventions where they exist (`gen_ai.client.token.usage` →
//! `gen_ai_client_token_usage`, `gen_ai.client.operation.duration` →
//! `gen_ai_client_operation_duration_seconds`, `gen_ai.server.time_to_first_token` →
//! `gen_ai_server_time_to_first_token_seconds`). The `gen_ai_*` series carry the
//! conventions' attribute names as labels (`gen_ai_operation_name`, `gen_ai_provider_name`,
//! `gen_ai_request_model`, `gen_ai_token_type`); the `sluice_*` series keep `model`, the
//! public model group. With `admin.per_key_metrics`, requests and cost are also counted by
//! key and team (`sluice_key_requests_total`, `sluice_key_cost_usd_micros_total`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_core::config::Config;

use crate::telemetry::histograms::{self, LocalHistogram};
use crate::telemetry::log::AccessRecord;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 100 µs to 2 minutes.
const LATENCY_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
/// Gateway overhead buckets in seconds: 5 µs to 100 ms.
const OVERHEAD_BUCKETS: [f64; 14] = [
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1,
];
/// Token-count buckets (the GenAI convention's advice).
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The buckets of request histogram `name`: the overhead's and the token counts' own, the
/// latency buckets for the rest (the exporter's `_seconds` rule in [`install`] gives its
/// histograms the same).
fn buckets_for(name: &str) -> &'static [f64] {
    match name {
        "sluice_gateway_overhead_seconds" => &OVERHEAD_BUCKETS,
        "gen_ai_client_token_usage" => &TOKEN_BUCKETS,
        _ => &LATENCY_BUCKETS,
    }
}

/// Installs the global recorder once; later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // The request histograms are counted by the workers (`telemetry::histograms`, with
        // [`buckets_for`]); what still goes through the exporter is the cache's embedding
        // latency, a `_seconds` histogram.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Only fails when another recorder is installed, which never happens in the binary.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = install();
    metrics::counter!("sluice_log_lines_dropped_total")
        .absolute(crate::telemetry::log::dropped_lines() as u64);
    let spans = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("sluice_trace_spans_exported_total")
        .absolute(spans(&crate::telemetry::trace::EXPORTED_SPANS));
    metrics::counter!("sluice_trace_spans_dropped_total")
        .absolute(spans(&crate::telemetry::trace::DROPPED_SPANS));
    let mut text = handle.render();
    histograms::render(&mut text);
    crate::telemetry::process::render(&mut text);
    text
}

/// Drains histogram buffers; call periodically or they grow without bound.
pub fn upkeep() {
    install().run_upkeep();
}

/// The response cache's series (`sluice_cache_*`, counted in `cache::keep` through
/// [`WorkerMetrics::cache_hit`] and its siblings).
fn describe_cache() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "sluice_cache_hits_total",
        "Requests answered from the exact response cache, by model group."
    );
    describe_counter!(
        "sluice_cache_semantic_hits_total",
        "Requests answered from the semantic response cache, by model group."
    );
    describe_counter!(
        "sluice_cache_misses_total",
        "Requests of model groups with a cache that went upstream, by model group."
    );
    describe_counter!(
        "sluice_cache_saved_tokens_total",
        "Tokens the cache's hits did not spend, by model group."
    );
    describe_counter!(
        "sluice_cache_saved_cost_usd_micros_total",
        "Micro-USD the cache's hits did not spend (at the stored answer's price), by model group."
    );
    describe_gauge!("sluice_cache_entries", "Entries the response cache holds.");
    describe_gauge!(
        "sluice_cache_bytes",
        Unit::Bytes,
        "Bytes the response cache holds (bounded by [cache] max_bytes)."
    );
    describe_counter!(
        "sluice_cache_evictions_total",
        "Entries evicted to keep the response cache within max_bytes."
    );
    describe_histogram!(
        "sluice_cache_embedding_seconds",
        Unit::Seconds,
        "Time of the semantic cache's embedding calls, by model group."
    );
}

// Longer than ~100 lines on purpose: a flat list, one description per metric family.
fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_cache();
    describe_gauge!(
        "sluice_store_up",
        "1 while the store (SQLite or PostgreSQL) takes ledger commits, 0 while it refuses them."
    );
    describe_gauge!(
        "sluice_ledger_backlog_records",
        "Usage records waiting for the store while it is down (memory and spill file)."
    );
    describe_gauge!(
        "sluice_ledger_spilled_records",
        "Of the backlog, records in the local spill file, replayed when the store is back."
    );
    describe_counter!(
        "sluice_ledger_refused_records_total",
        "Usage records the store refused for their content, kept in the .refused file."
    );
    describe_counter!(
        "sluice_ledger_commit_failures_total",
        "Ledger commits the store refused (each is retried; nothing is dropped)."
    );
    describe_counter!(
        "sluice_requests_total",
        "Requests answered, by model group, deployment, provider, status class and stream."
    );
    histograms::describe(
        "sluice_request_duration_seconds",
        "Time from the request head to the end of the response.",
    );
    histograms::describe(
        "gen_ai_server_time_to_first_token_seconds",
        "Time from the request head to the first byte of the upstream's answer body.",
    );
    histograms::describe(
        "gen_ai_server_time_per_output_token_seconds",
        "Streaming: time after the first token divided by the remaining output tokens.",
    );
    histograms::describe(
        "sluice_gateway_overhead_seconds",
        "Time spent in Sluice, excluding waiting on the upstream.",
    );
    histograms::describe(
        "gen_ai_client_token_usage",
        "Tokens per request by gen_ai_token_type (input, output), operation, provider and requested model."
    );
    describe_counter!(
        "sluice_tokens_total",
        "Tokens by model group and type (input, output, cached, reasoning)."
    );
    describe_counter!(
        "sluice_unpriced_requests_total",
        "Requests with usage whose model has no price (they cost $0 and do not count toward budgets), by model group."
    );
    describe_counter!(
        "sluice_upstream_errors_total",
        "Upstream failures by provider and kind."
    );
    describe_counter!(
        "sluice_upstream_connections_opened_total",
        "Upstream connections opened, by provider."
    );
    describe_counter!(
        "sluice_upstream_connections_reused_total",
        "Requests sent on a pooled upstream connection, by provider."
    );
    describe_counter!(
        "sluice_client_cancelled_total",
        "Requests whose client went away before the end."
    );
    describe_counter!(
        "sluice_tls_handshake_failures_total",
        "TLS handshakes with clients that failed or timed out."
    );
    describe_counter!(
        "sluice_retries_total",
        "Attempts repeated after a retryable failure, by model group."
    );
    describe_counter!(
        "sluice_fallbacks_total",
        "Requests moved to a fallback group, by the requested model group."
    );
    describe_counter!(
        "sluice_hedges_total",
        "Hedged second attempts sent, by model group."
    );
    describe_gauge!(
        "sluice_circuit_breaker_state",
        "Circuit breaker per deployment (shared by the workers), as each worker last saw it: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        "sluice_panic_total",
        "Deployments picked in panic mode (too few breakers admit requests: all deployments not known down are used), by model group."
    );
    describe_counter!(
        "sluice_retry_budget_exhausted_total",
        "Retries and hedges refused because the model group's retry budget was spent."
    );
    describe_counter!(
        "sluice_caller_short_circuited_total",
        "Requests refused for their caller alone, whose own requests kept failing (blast-radius guard), by model group."
    );
    describe_gauge!(
        "sluice_inflight_requests",
        "Requests being handled, by worker."
    );
    describe_gauge!(
        "sluice_open_streams",
        "Event streams being relayed, by worker."
    );
    describe_gauge!(
        "sluice_client_connections",
        "Open client connections, by worker."
    );
    describe_counter!(
        "sluice_log_lines_dropped_total",
        "Log lines dropped because the writer fell behind."
    );
    histograms::describe(
        "gen_ai_client_operation_duration_seconds",
        "GenAI operation duration: request head to the end of the response, by operation, provider and requested model."
    );
    describe_counter!(
        "sluice_key_requests_total",
        "Requests by key and team (admin.per_key_metrics), by status class."
    );
    describe_counter!(
        "sluice_key_cost_usd_micros_total",
        "Spend in micro-USD at list prices by key and team (admin.per_key_metrics)."
    );
    describe_gauge!("sluice_build_info", "Build information.");
    describe_counter!(
        "sluice_trace_spans_exported_total",
        "Spans the OTLP collector accepted."
    );
    describe_counter!(
        "sluice_trace_spans_dropped_total",
        "Spans dropped: export queue full or collector unreachable."
    );
    describe_counter!(
        "sluice_compressed_responses_total",
        "Answers compressed for the client, by coding and where (inline on the worker, pool)."
    );
    describe_counter!(
        "sluice_compression_saved_bytes_total",
        Unit::Bytes,
        "Bytes compression kept off the client connections (body in minus body out)."
    );
    describe_counter!(
        "sluice_compression_busy_total",
        "Answers sent uncompressed because the compression threads' queue was full."
    );
}

/// One request's label set, as indices into the config.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    /// Model group and deployment, when known (`none` in the labels otherwise).
    route: Option<(usize, Option<usize>)>,
    status_class: u8,
    stream: bool,
    /// `gen_ai.operation.name` of the request's path.
    operation: &'static str,
}

/// A worker's request series, by [`RequestKey`]. Nearly every request has the key of the one
/// before it: that one is compared first, without hashing the key (SipHash cost some 500
/// instructions a request).
#[derive(Default)]
struct RequestSeries {
    index: HashMap<RequestKey, usize>,
    handles: Vec<(RequestKey, RequestHandles)>,
    last: usize,
}

impl RequestSeries {
    fn get(&mut self, config: &Config, key: RequestKey) -> &mut RequestHandles {
        if self.handles.get(self.last).is_some_and(|(k, _)| *k == key) {
            return &mut self.handles[self.last].1;
        }
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.handles.push((key, RequestHandles::new(config, key)));
                self.index.insert(key, self.handles.len() - 1);
                self.handles.len() - 1
            }
        };
        self.last = i;
        &mut self.handles[i].1
    }
}

struct RequestHandles {
    model: String,
    /// Made on the first request whose model has no price, so priced models show no series.
    unpriced: Option<Counter>,
    requests: Counter,
    duration: LocalHistogram,
    operation_duration: LocalHistogram,
    ttft: LocalHistogram,
    tpot: LocalHistogram,
    overhead: LocalHistogram,
    usage_input: LocalHistogram,
    usage_output: LocalHistogram,
    tokens: [Counter; 4],
}

/// One key's series (per-key metrics): its team when made, requests by status class, cost.
struct KeyHandles {
    team: String,
    requests: [Option<Counter>; 6],
    cost: Counter,
}

/// One model group's cache series.
struct CacheGroupHandles {
    hits: Counter,
    semantic_hits: Counter,
    misses: Counter,
    saved_tokens: Counter,
    saved_micros: Counter,
}

impl CacheGroupHandles {
    fn new(model: &str) -> Self {
        let c = |name: &'static str| metrics::counter!(name, "model" => model.to_owned());
        CacheGroupHandles {
            hits: c("sluice_cache_hits_total"),
            semantic_hits: c("sluice_cache_semantic_hits_total"),
            misses: c("sluice_cache_misses_total"),
            saved_tokens: c("sluice_cache_saved_tokens_total"),
            saved_micros: c("sluice_cache_saved_cost_usd_micros_total"),
        }
    }
}

/// The cache's series: per model group, made on first use (so groups without a cache show
/// none); the store's occupancy as last published, so its gauges are set only when it changed.
#[derive(Default)]
struct CacheHandles {
    /// By model group index; the last slot is for requests without a group (`none`).
    groups: Vec<Option<CacheGroupHandles>>,
    /// Entries, bytes, evictions.
    occupancy: Option<(Gauge, Gauge, Counter)>,
    published: Option<(u64, u64, u64)>,
}

/// A worker's metric handles.
pub struct WorkerMetrics {
    requests: RefCell<RequestSeries>,
    /// By key id, when `admin.per_key_metrics` (bounded by the number of keys).
    per_key: Option<RefCell<HashMap<String, KeyHandles>>>,
    errors: RefCell<HashMap<(usize, &'static str), Counter>>,
    /// Requests in flight on this worker.
    pub inflight: Gauge,
    /// Event streams being relayed by this worker.
    pub open_streams: Gauge,
    /// Client connections held by this worker.
    pub connections: Gauge,
    opened: Vec<Counter>,
    reused: Vec<Counter>,
    cancelled: Counter,
    /// TLS handshakes with clients that failed or timed out (TLS listener only).
    pub tls_handshake_failures: Counter,
    /// Per model group: retries, fallbacks, hedges.
    resilience: Vec<[Counter; 3]>,
    /// The response cache's series.
    cache: RefCell<CacheHandles>,
}

impl WorkerMetrics {
    /// Handles for worker `id`.
    pub fn new(id: usize, config: &Config) -> Self {
        install();
        let worker = id.to_string();
        let per_provider = |name: &'static str| {
            config
                .providers
                .iter()
                .map(|p| metrics::counter!(name, "provider" => p.name.clone()))
                .collect()
        };
        metrics::gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        WorkerMetrics {
            requests: RefCell::default(),
            per_key: config
                .admin
                .per_key_metrics
                .then(|| RefCell::new(HashMap::new())),
            errors: RefCell::new(HashMap::new()),
            inflight: metrics::gauge!("sluice_inflight_requests", "worker" => worker.clone()),
            open_streams: metrics::gauge!("sluice_open_streams", "worker" => worker.clone()),
            connections: metrics::gauge!("sluice_client_connections", "worker" => worker),
            opened: per_provider("sluice_upstream_connections_opened_total"),
            reused: per_provider("sluice_upstream_connections_reused_total"),
            cancelled: metrics::counter!("sluice_client_cancelled_total"),
            tls_handshake_failures: metrics::counter!("sluice_tls_handshake_failures_total"),
            resilience: config
                .models
                .iter()
                .map(|m| {
                    let c = |name: &'static str| metrics::counter!(name, "model" => m.name.clone());
                    [
                        c("sluice_retries_total"),
                        c("sluice_fallbacks_total"),
                        c("sluice_hedges_total"),
                    ]
                })
                .collect(),
            cache: RefCell::new(CacheHandles::default()),
        }
    }

    /// Counts a request of model group `group` (`None`: no group) answered from the cache
    /// (`semantic`: from its semantic index), and what the answer saved.
    pub fn cache_hit(
        &self,
        config: &Config,
        group: Option<usize>,
        semantic: bool,
        saved_tokens: u64,
        saved_micros: u64,
    ) {
        self.cache_group(config, group, |h| {
            if semantic {
                h.semantic_hits.increment(1);
            } else {
                h.hits.increment(1);
            }
            h.saved_tokens.increment(saved_tokens);
            h.saved_micros.increment(saved_micros);
        });
    }

    /// Counts a request of model group `group` (`None`: no group) that the cache missed.
    pub fn cache_miss(&self, config: &Config, group: Option<usize>) {
        self.cache_group(config, group, |h| h.misses.increment(1));
    }

    /// Publishes the cache's (entries, bytes, evictions) when they changed since this worker
    /// last did.
    pub fn cache_occupancy(&self, occupancy: (u64, u64, u64)) {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return;
        };
        if cache.published == Some(occupancy) {
            return;
        }
        cache.published = Some(occupancy);
        let (entries, bytes, evictions) = cache.occupancy.get_or_insert_with(|| {
            (
                metrics::gauge!("sluice_cache_entries"),
                metrics::gauge!("sluice_cache_bytes"),
                metrics::counter!("sluice_cache_evictions_total"),
            )
        });
        entries.set(occupancy.0 as f64);
        bytes.set(occupancy.1 as f64);
        evictions.absolute(occupancy.2);
    }

    /// Calls `f` with model group `group`'s cache series, made on first use. `config` is the
    /// one these handles were made for (the worker's), so an index names the same group.
    fn cache_group(
        &self,
        config: &Config,
        group: Option<usize>,
        f: impl FnOnce(&CacheGroupHandles),
    ) {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return;
        };
        let none = config.models.len();
        let slot = group.map_or(none, |g| g.min(none));
        if cache.groups.len() <= slot {
            cache.groups.resize_with(slot + 1, || None);
        }
        let handles = cache.groups[slot].get_or_insert_with(|| {
            CacheGroupHandles::new(config.models.get(slot).map_or("none", |g| g.name.as_str()))
        });
        f(handles);
    }

    /// Counts a retry for model group `g`.
    pub fn retry(&self, g: usize) {
        if let Some(c) = self.resilience.get(g) {
            c[0].increment(1);
        }
    }

    /// Counts a move to a fallback group, for the request's model group `g`.
    pub fn fallback(&self, g: usize) {
        if let Some(c) = self.resilience.get(g) {
            c[1].increment(1);
        }
    }

    /// Counts a hedged request for model group `g`.
    pub fn hedge(&self, g: usize) {
        if let Some(c) = self.resilience.get(g) {
            c[2].increment(1);
        }
    }

    /// Counts a new upstream connection to provider `p`.
    pub fn connection_opened(&self, p: usize) {
        if let Some(c) = self.opened.get(p) {
            c.increment(1);
        }
    }

    /// Counts a request sent on a pooled connection to provider `p`.
    pub fn connection_reused(&self, p: usize) {
        if let Some(c) = self.reused.get(p) {
            c.increment(1);
        }
    }

    /// Counts an upstream failure of `kind` at provider `p`.
    pub fn upstream_error(&self, config: &Config, p: usize, kind: &'static str) {
        let mut errors = self.errors.borrow_mut();
        errors
            .entry((p, kind))
            .or_insert_with(|| {
                let provider = config.providers.get(p).map_or("none", |p| p.name.as_str());
                metrics::counter!("sluice_upstream_errors_total", "provider" => provider.to_string(), "kind" => kind)
            })
            .increment(1);
    }

    /// Records a finished request.
    pub fn observe(&self, config: &Config, rec: &AccessRecord) {
        let key = RequestKey {
            route: rec.route,
            status_class: (rec.status / 100).min(9) as u8,
            stream: rec.stream,
            operation: crate::telemetry::trace::operation(&rec.path),
        };
        let mut cache = self.requests.borrow_mut();
        let h = cache.get(config, key);
        h.requests.increment(1);
        if rec.client_cancelled {
            self.cancelled.increment(1);
        }
        let total_s = rec.total_us as f64 / 1e6;
        h.duration.record(total_s);
        h.operation_duration.record(total_s);
        if let Some(up) = rec.upstream_us {
            h.overhead
                .record(rec.total_us.saturating_sub(up) as f64 / 1e6);
        }
        if let Some(first) = rec.first_token_us {
            h.ttft.record(first as f64 / 1e6);
            if let Some(u) = rec.usage.filter(|_| rec.stream) {
                if u.output_tokens > 1 {
                    let rest = rec.total_us.saturating_sub(first) as f64 / 1e6;
                    h.tpot.record(rest / (u.output_tokens - 1) as f64);
                }
            }
        }
        if rec.usage.is_some() && rec.cost_micros.is_none() && rec.route.is_some() {
            let model = &h.model;
            h.unpriced
                .get_or_insert_with(|| {
                    metrics::counter!("sluice_unpriced_requests_total", "model" => model.clone())
                })
                .increment(1);
        }
        if let Some(u) = rec.usage {
            h.usage_input.record(u.input_tokens as f64);
            h.usage_output.record(u.output_tokens as f64);
            for (c, n) in h.tokens.iter().zip([
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
            ]) {
                c.increment(n);
            }
        }
        drop(cache);
        if let (Some(per_key), Some(key)) = (&self.per_key, rec.key_id.as_deref()) {
            self.observe_key(per_key, key, rec);
        }
    }

    /// Counts a request with key `key` in its per-key series.
    fn observe_key(
        &self,
        per_key: &RefCell<HashMap<String, KeyHandles>>,
        key: &str,
        rec: &AccessRecord,
    ) {
        let team = rec.team.as_deref().unwrap_or("");
        let mut map = per_key.borrow_mut();
        if map.get(key).is_none_or(|h| h.team != team) {
            map.insert(
                key.to_string(),
                KeyHandles {
                    team: team.to_string(),
                    requests: Default::default(),
                    cost: metrics::counter!("sluice_key_cost_usd_micros_total", "key" => key.to_string(), "team" => team.to_string()),
                },
            );
        }
        let Some(KeyHandles {
            team,
            requests,
            cost,
        }) = map.get_mut(key)
        else {
            return;
        };
        let class = usize::from(rec.status / 100).min(5);
        requests[class]
            .get_or_insert_with(|| {
                let status_class = if class == 0 {
                    "none".to_string()
                } else {
                    format!("{class}xx")
                };
                metrics::counter!("sluice_key_requests_total", "key" => key.to_string(), "team" => team.clone(), "status_class" => status_class)
            })
            .increment(1);
        if let Some(m) = rec.cost_micros {
            cost.increment(m);
        }
    }
}

impl RequestHandles {
    fn new(config: &Config, key: RequestKey) -> Self {
        let group = key.route.and_then(|(g, _)| config.models.get(g));
        let model = group.map_or("none".to_string(), |g| g.name.clone());
        let dep = key.route.and_then(|(_, d)| group?.deployments.get(d?));
        let deployment = dep.map_or("none".to_string(), |d| d.label.clone());
        let provider_entry = dep.and_then(|d| config.providers.get(d.provider));
        let provider = provider_entry.map_or("none".to_string(), |p| p.name.clone());
        let gen_ai_provider =
            provider_entry.map_or("none", |p| crate::telemetry::trace::provider_name(p.kind));
        let op = key.operation;
        let status_class = match key.status_class {
            0 => "none".to_string(),
            c => format!("{c}xx"),
        };
        let stream = if key.stream { "true" } else { "false" };
        let tokens = |kind: &'static str| metrics::counter!("sluice_tokens_total", "model" => model.clone(), "gen_ai_token_type" => kind);
        let gen_ai = [
            ("gen_ai_operation_name", op),
            ("gen_ai_provider_name", gen_ai_provider),
            ("gen_ai_request_model", model.as_str()),
        ];
        let hist = |name: &'static str, labels: &[(&str, &str)]| {
            LocalHistogram::new(name, buckets_for(name), labels)
        };
        RequestHandles {
            model: model.clone(),
            unpriced: None,
            requests: metrics::counter!(
                "sluice_requests_total",
                "model" => model.clone(),
                "deployment" => deployment,
                "provider" => provider,
                "status_class" => status_class,
                "stream" => stream
            ),
            duration: hist(
                "sluice_request_duration_seconds",
                &[("model", &model), ("stream", stream)],
            ),
            operation_duration: hist("gen_ai_client_operation_duration_seconds", &gen_ai),
            ttft: hist("gen_ai_server_time_to_first_token_seconds", &gen_ai),
            tpot: hist("gen_ai_server_time_per_output_token_seconds", &gen_ai),
            overhead: hist("sluice_gateway_overhead_seconds", &[("model", &model)]),
            usage_input: hist(
                "gen_ai_client_token_usage",
                &[
                    gen_ai[0],
                    gen_ai[1],
                    gen_ai[2],
                    ("gen_ai_token_type", "input"),
                ],
            ),
            usage_output: hist(
                "gen_ai_client_token_usage",
                &[
                    gen_ai[0],
                    gen_ai[1],
                    gen_ai[2],
                    ("gen_ai_token_type", "output"),
                ],
            ),
            tokens: [
                tokens("input"),
                tokens("output"),
                tokens("cached"),
                tokens("reasoning"),
            ],
        }
    }
}
