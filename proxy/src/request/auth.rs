//! Virtual keys on the request path: who is calling ([`Auth::authenticate`]), within which
//! limits ([`KeyEntry::limit_sets`], admitted by core's limiter; [`Auth::ask`] says what a
//! request reserves, [`Auth::refusal`] words a 429), and what it cost ([`Auth::record`], the
//! ledger).
//!
//! ```text
//! api ─► authenticate (Bearer / x-api-key → worker's memo, else SHA-256 → index)   401
//!     ─► core stages: inspect 400/404, allows_model 403, admit and reserve 429 + Retry-After
//!     ─► forward (x-ratelimit-* on the answer)
//!     ─► settle: the permit with real tokens and cost ─► record ─► ledger (never blocks)
//! ```
//!
//! The key index is an immutable [`Index`] behind an `ArcSwap`: workers only load it (one
//! atomic load per request), the admin thread builds a new one and swaps it in, so a created,
//! changed or revoked key takes effect on the next request. Limit state (buckets, concurrency,
//! budgets) lives in `Arc<LimitSet>`s that a rebuild carries over when a key's limit numbers
//! did not change; when they did, the new set starts with the old set's spend.
//!
//! Concurrency note: a request admitted before a limit change settles on the set it was
//! admitted against, so right after a change the new set can admit up to one extra
//! `max_concurrency` while old requests finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use metrics::Counter;
use sluice_core::config::{AuthMode, Config};
use sluice_core::cost::{self, PriceTable};
use sluice_core::error::{ErrorKind, GatewayError};
use sluice_core::estimate::{ImageRule, PromptScan};
use sluice_core::http1::RequestHead;
use sluice_core::inspect::Inspected;
use sluice_core::keys::{self, KeyRecord, KeyRefusal, Limits, TeamRecord};
use sluice_core::lease::Subject;
use sluice_core::limiter::{Ask, Denied, Refusal};
use sluice_core::limits::{period_start, BudgetPeriod, LimitSet, RateLimitHeaders};

use crate::listen::respond::HeaderValue;
use crate::request::key_memo::KeyMemo;
use crate::store::{LedgerSender, Scope, UsageRecord};
use crate::telemetry::log::AccessRecord;

/// A team as the data plane sees it: its limits (if it was created through the admin API)
/// and its spend this period.
pub struct TeamEntry {
    /// Name.
    pub name: Arc<str>,
    /// Its record, when the team exists in the store; `None` for a name keys merely mention.
    pub record: Option<TeamRecord>,
    /// Limits and spend, shared by every key of the team.
    pub limits: Arc<LimitSet>,
    /// Micro-USD per model group, for `sluice_cost_usd_total{team}`.
    pub cost_by_group: Arc<[AtomicU64]>,
    /// Its limits, [`Limits::normalized`]: a rebuild keeps `limits` while they are equal.
    shape: Limits,
}

/// A key as the data plane sees it.
pub struct KeyEntry {
    /// The record (hash and visible prefix, never the key).
    pub record: KeyRecord,
    /// `record.id`, shared cheaply with ledger records.
    pub id: Arc<str>,
    /// SHA-256 of the key.
    hash: [u8; 32],
    /// Declared in the config (read-only through the admin API).
    pub from_config: bool,
    /// The key's own limits and spend.
    pub limits: Arc<LimitSet>,
    /// Its team.
    pub team: Arc<TeamEntry>,
    /// Its limits, [`Limits::normalized`]: a rebuild keeps `limits` while they are equal.
    shape: Limits,
}

impl KeyEntry {
    /// The limits a request of this key is admitted against: the key's, then its team's.
    pub fn limit_sets(&self) -> [&LimitSet; 2] {
        [&self.limits, &self.team.limits]
    }
}

/// Every key and team, immutable once built.
#[derive(Default)]
pub struct Index {
    /// Unique to each built index (0 for an empty default one): a worker's key memo
    /// ([`key_memo`](super::key_memo)) is valid for one generation only.
    generation: u64,
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
    by_id: HashMap<String, Arc<KeyEntry>>,
    teams: HashMap<String, Arc<TeamEntry>>,
}

impl Index {
    /// This index's generation: no other index built by this process has the same.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key with `id`.
    pub fn key(&self, id: &str) -> Option<&Arc<KeyEntry>> {
        self.by_id.get(id)
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.by_id.values()
    }

    /// The team called `name` (created, or mentioned by a key).
    pub fn team(&self, name: &str) -> Option<&Arc<TeamEntry>> {
        self.teams.get(name)
    }

    /// Every team.
    pub fn teams(&self) -> impl Iterator<Item = &Arc<TeamEntry>> {
        self.teams.values()
    }
}

/// Where a rebuild gets the spend of a limit set it cannot carry over: micro-USD spent by a
/// key id or team name in the current `period`.
pub type SpendOf<'a> = &'a dyn Fn(Scope, &str, BudgetPeriod) -> u64;

/// A limit set for `shape` (normalized limits), reusing `prev` when its numbers are the same;
/// otherwise a new set that starts with `prev`'s spend (same period) or the store's.
fn limit_set(
    shape: Limits,
    prev: Option<(Limits, &Arc<LimitSet>)>,
    scope: Scope,
    id: &str,
    spend_of: SpendOf<'_>,
    unix_s: u64,
) -> Arc<LimitSet> {
    if let Some((s, set)) = prev {
        if s == shape {
            return set.clone();
        }
    }
    let start = period_start(shape.budget_period, unix_s);
    let spend = match prev {
        Some((s, set))
            if s.budget_period == shape.budget_period && set.budget.period_start() == start =>
        {
            set.budget.spend()
        }
        _ => spend_of(scope, id, shape.budget_period),
    };
    let subject = match scope {
        Scope::Key => Subject::Key(Arc::from(id)),
        Scope::Team => Subject::Team(Arc::from(id)),
    };
    Arc::new(LimitSet::from_limits(&shape, spend, unix_s).with_subject(subject))
}

/// Builds the index from every key (`(record, from_config)`) and team, carrying limit state
/// over from `prev`.
pub fn build_index(
    keys: Vec<(KeyRecord, bool)>,
    teams: Vec<TeamRecord>,
    prev: &Index,
    groups: usize,
    spend_of: SpendOf<'_>,
    unix_s: u64,
) -> Index {
    let mut records: HashMap<String, Option<TeamRecord>> = HashMap::new();
    for t in teams {
        records.insert(t.name.clone(), Some(t));
    }
    for (k, _) in &keys {
        records.entry(k.team.clone()).or_insert(None);
    }
    let mut team_map = HashMap::with_capacity(records.len());
    for (name, record) in records {
        let shape = record
            .as_ref()
            .map(|t| t.limits)
            .unwrap_or_default()
            .normalized();
        let old = prev.teams.get(&name);
        let limits = limit_set(
            shape,
            old.map(|t| (t.shape, &t.limits)),
            Scope::Team,
            &name,
            spend_of,
            unix_s,
        );
        let cost_by_group = match old {
            Some(t) if t.cost_by_group.len() == groups => t.cost_by_group.clone(),
            _ => (0..groups).map(|_| AtomicU64::new(0)).collect(),
        };
        let entry = TeamEntry {
            name: Arc::from(name.as_str()),
            record,
            limits,
            cost_by_group,
            shape,
        };
        team_map.insert(name, Arc::new(entry));
    }
    static GENERATIONS: AtomicU64 = AtomicU64::new(1);
    let mut index = Index {
        generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        by_hash: HashMap::with_capacity(keys.len()),
        by_id: HashMap::with_capacity(keys.len()),
        teams: HashMap::new(),
    };
    for (record, from_config) in keys {
        let Some(hash) = keys::parse_hash_hex(&record.hash) else {
            tracing::warn!(key_id = %record.id, "key with a malformed hash skipped");
            continue;
        };
        let Some(team) = team_map.get(&record.team).cloned() else {
            continue;
        };
        let shape = record.limits.normalized();
        let old = prev.by_id.get(&record.id);
        let limits = limit_set(
            shape,
            old.map(|k| (k.shape, &k.limits)),
            Scope::Key,
            &record.id,
            spend_of,
            unix_s,
        );
        let entry = Arc::new(KeyEntry {
            id: Arc::from(record.id.as_str()),
            record,
            hash,
            from_config,
            limits,
            team,
            shape,
        });
        index.by_hash.insert(hash, entry.clone());
        index.by_id.insert(entry.record.id.clone(), entry);
    }
    index.teams = team_map;
    index
}

thread_local! {
    /// This worker's memo of the keys it saw last (each data-plane worker is a thread).
    static MEMO: std::cell::RefCell<KeyMemo<Arc<KeyEntry>>> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's key memo.
fn with_memo<T>(f: impl FnOnce(&mut KeyMemo<Arc<KeyEntry>>) -> T) -> T {
    MEMO.with_borrow_mut(f)
}

/// Metric handles for admission.
struct Meters {
    rate_limited: [Counter; 3],
    budget: Counter,
    ledger_dropped: Counter,
}

impl Meters {
    fn new() -> Self {
        metrics::describe_counter!(
            "sluice_rate_limited_total",
            "Requests refused by a rate limit, by scope (requests, tokens, concurrency)."
        );
        metrics::describe_counter!(
            "sluice_budget_rejections_total",
            "Requests refused because a key's or team's budget is spent."
        );
        metrics::describe_counter!(
            "sluice_ledger_dropped_total",
            "Usage records dropped because the ledger writer fell behind."
        );
        Meters {
            rate_limited: ["requests", "tokens", "concurrency"]
                .map(|s| metrics::counter!("sluice_rate_limited_total", "scope" => s)),
            budget: metrics::counter!("sluice_budget_rejections_total"),
            ledger_dropped: metrics::counter!("sluice_ledger_dropped_total"),
        }
    }
}

/// Authentication and admission, shared by every worker.
pub struct Auth {
    mode: AuthMode,
    index: ArcSwap<Index>,
    default_max_tokens: u64,
    meters: Meters,
    /// Micro-USD per model group, for `sluice_cost_usd_total`.
    /// Swapped on a config reload (see [`Auth::regroup`]).
    cost_by_group: ArcSwap<Box<[AtomicU64]>>,
    /// The ledger writer, when a store is configured.
    pub ledger: Option<LedgerSender>,
    /// The config's group names and deployment labels, shared by ledger records.
    names: ArcSwap<Names>,
}

/// The config's model group names and deployment labels as shared strings, so a ledger
/// record names them without an allocation. Rebuilt on a config reload ([`Auth::regroup`]).
#[derive(Default)]
struct Names {
    groups: Vec<Arc<str>>,
    deployments: Vec<Vec<Arc<str>>>,
}

impl Names {
    fn of(config: &Config) -> Self {
        Names {
            groups: config
                .models
                .iter()
                .map(|m| Arc::from(m.name.as_str()))
                .collect(),
            deployments: config
                .models
                .iter()
                .map(|m| {
                    m.deployments
                        .iter()
                        .map(|d| Arc::from(d.label.as_str()))
                        .collect()
                })
                .collect(),
        }
    }
}

impl Auth {
    /// Auth for `config` with a first `index` (install the metrics recorder first).
    pub fn new(config: &Config, index: Index, ledger: Option<LedgerSender>) -> Self {
        Auth {
            mode: config.auth,
            index: ArcSwap::from_pointee(index),
            default_max_tokens: config.limits.default_max_tokens,
            meters: Meters::new(),
            cost_by_group: ArcSwap::from_pointee(
                (0..config.models.len())
                    .map(|_| AtomicU64::new(0))
                    .collect(),
            ),
            ledger,
            names: ArcSwap::from_pointee(Names::of(config)),
        }
    }

    /// Whether keys are required.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The current index.
    pub fn index(&self) -> Arc<Index> {
        self.index.load_full()
    }

    /// Swaps in a new index (the admin thread, after a change).
    pub fn replace(&self, index: Index) {
        self.index.store(Arc::new(index));
    }

    /// Micro-USD spent per model group since start (indices into `config.models`).
    pub fn cost_by_group(&self) -> Vec<u64> {
        self.cost_by_group
            .load()
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Re-indexes the per-group cost for a reloaded config: each group keeps its total by
    /// name; new groups start at zero.
    pub fn regroup(&self, old: &Config, new: &Config) {
        let current = self.cost_by_group.load();
        let table: Box<[AtomicU64]> = new
            .models
            .iter()
            .map(|m| {
                let spent = old
                    .models
                    .iter()
                    .position(|o| o.name == m.name)
                    .and_then(|g| current.get(g))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                AtomicU64::new(spent)
            })
            .collect();
        self.cost_by_group.store(Arc::new(table));
        self.names.store(Arc::new(Names::of(new)));
    }

    /// The key a request presents (`Authorization: Bearer`, `x-api-key` or `api-key`), checked:
    /// `Ok(None)` when auth is off; 401 when missing, unknown, disabled or expired. `unix_s`
    /// reads the wall clock, only for a key with an expiry.
    pub fn authenticate(
        &self,
        head: &RequestHead,
        unix_s: impl FnOnce() -> u64,
    ) -> Result<Option<Arc<KeyEntry>>, GatewayError> {
        if self.mode == AuthMode::None {
            return Ok(None);
        }
        let unauthorized = |msg: &str| GatewayError::new(ErrorKind::Unauthorized, msg);
        // OpenAI clients send `Authorization: Bearer`, Anthropic's `x-api-key`, Azure's `api-key`.
        // The token's bytes: the memo compares them and the index hashes them (no `&str`).
        let token = head
            .header("authorization")
            .and_then(keys::parse_bearer_bytes)
            .or_else(|| {
                ["x-api-key", "api-key"]
                    .iter()
                    .find_map(|h| head.header_str(h))
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::as_bytes)
            });
        let Some(token) = token else {
            return Err(unauthorized(
                "Missing API key: send it as `Authorization: Bearer sk-sluice-…` or `x-api-key`.",
            ));
        };
        let index = self.index.load();
        let generation = index.generation;
        // The key this worker saw last (compared in constant time), else the index's.
        let entry = match with_memo(|m| m.find(generation, token).cloned()) {
            Some(entry) => entry,
            None => {
                let hash = keys::hash_key(token);
                // The map finds the entry by hash; the final check is constant-time.
                let entry = index
                    .by_hash
                    .get(&hash)
                    .filter(|e| keys::constant_time_eq(&e.hash, &hash))
                    .ok_or_else(|| unauthorized("Incorrect API key provided."))?;
                with_memo(|m| m.remember(generation, token, entry));
                entry.clone()
            }
        };
        // Without an expiry the time does not matter (and is not read).
        let now = match entry.record.expires_at_unix {
            Some(_) => unix_s(),
            None => 0,
        };
        match entry.record.check_usable(now) {
            Ok(()) => Ok(Some(entry)),
            Err(KeyRefusal::Expired) => Err(unauthorized("This API key has expired.")),
            Err(_) => Err(unauthorized("This API key has been revoked.")),
        }
    }

    /// What a request to model group `group` with the routing fields `inspected` and a prompt
    /// made of `prompt` reserves: the prompt estimate (images by the rule of each deployment's
    /// provider, capped at its context window where known) plus `max_tokens` (or the default),
    /// and their cost, both at the largest of the group's deployments.
    pub fn ask(
        &self,
        config: &Config,
        prices: &PriceTable,
        group: usize,
        inspected: &Inspected,
        prompt: &PromptScan,
    ) -> Ask {
        let output = inspected.max_tokens.unwrap_or(self.default_max_tokens);
        let (prompt, cost_micros) =
            estimate_prompt_and_cost(config, prices, group, &inspected.model, prompt, output);
        Ask {
            tokens: prompt.saturating_add(output),
            cost_micros,
            now_ms: crate::clock::now_ms(),
            unix_s: crate::clock::unix_s(),
        }
    }

    /// The 429 for a refusal by `key`'s limits (its own, or its team's), counted; `tokens` is
    /// what the request asked to reserve. With `Retry-After` when waiting helps.
    pub fn refusal(&self, key: Option<&KeyEntry>, denied: &Denied, tokens: u64) -> GatewayError {
        let Some(key) = key else {
            return GatewayError::new(ErrorKind::RateLimited, "Rate limit reached.");
        };
        let whose = if denied.set == 0 {
            format!("key `{}`", key.record.name)
        } else {
            format!("team `{}`", key.team.name)
        };
        let set = if denied.set == 0 {
            &*key.limits
        } else {
            &*key.team.limits
        };
        let (kind, message) = match denied.refusal {
            Refusal::Requests(_) => {
                self.meters.rate_limited[0].increment(1);
                let limit = set.requests.as_ref().map_or(0, |b| b.capacity());
                (
                    ErrorKind::RateLimited,
                    format!("Rate limit reached for {whose}: {limit} requests per minute."),
                )
            }
            Refusal::Tokens(r) => {
                self.meters.rate_limited[1].increment(1);
                let limit = set.tokens.as_ref().map_or(0, |b| b.capacity());
                let msg = if r.is_never() {
                    format!(
                        "Request too large for {whose}: it reserves {tokens} tokens (prompt estimate plus max_tokens), the limit is {limit} tokens per minute. Lower max_tokens."
                    )
                } else {
                    format!("Rate limit reached for {whose}: {limit} tokens per minute.")
                };
                (ErrorKind::RateLimited, msg)
            }
            Refusal::Concurrency => {
                self.meters.rate_limited[2].increment(1);
                let limit = set.concurrency.as_ref().map_or(0, |c| c.limit());
                (
                    ErrorKind::RateLimited,
                    format!("Too many requests in flight for {whose} (limit {limit})."),
                )
            }
            Refusal::Budget(_) => {
                self.meters.budget.increment(1);
                let limit = set.budget_limit_micros.unwrap_or(0);
                (
                    ErrorKind::BudgetExceeded,
                    format!(
                        "Budget exceeded for {whose}: {} USD per {} period, {} USD used.",
                        cost::format_usd(limit),
                        set.budget_period.as_str(),
                        cost::format_usd(set.budget.used())
                    ),
                )
            }
            Refusal::Unavailable => (
                ErrorKind::Overloaded,
                format!(
                    "The limits of {whose} cannot be checked: the shared store is unavailable. Retry shortly."
                ),
            ),
        };
        let mut err = GatewayError::new(kind, message);
        if let Some(s) = denied.refusal.retry_after_s() {
            err = err.with_retry_after(s);
        }
        err
    }

    /// OpenAI's `x-ratelimit-*` numbers for `key`: its own buckets, else its team's; none when
    /// neither has a request or token limit. Rendered into the answer's head when it is
    /// written ([`RateLimitHeaders::write_lines`]).
    /// `now` is [`clock::now_ms`](crate::clock::now_ms) (the caller's read of it).
    pub fn rate_limits(&self, key: &KeyEntry, now: u64) -> RateLimitHeaders {
        // With `[shared]` the fleet's view of the buckets (as of this replica's last transfer
        // for them), else this process's.
        let snapshot = |tokens: bool| {
            sluice_core::lease::rate_snapshot(&key.limits, tokens, now)
                .or_else(|| sluice_core::lease::rate_snapshot(&key.team.limits, tokens, now))
        };
        RateLimitHeaders {
            requests: snapshot(false),
            tokens: snapshot(true),
        }
    }

    /// [`rate_limits`](Self::rate_limits) as a list of headers (for answers written from a
    /// list: refusals, cache hits).
    pub fn ratelimit_headers(&self, key: &KeyEntry) -> Vec<(&'static str, HeaderValue)> {
        let mut headers = Vec::new();
        let now = crate::clock::now_ms();
        self.rate_limits(key, now).each(|name, value| {
            if headers.capacity() == 0 {
                headers.reserve_exact(6);
            }
            headers.push((name, HeaderValue::from_slice(value)));
        });
        headers
    }

    /// Counts `rec`'s cost and hands its usage record, stamped `ts_ms` (wall-clock unix
    /// milliseconds), to the ledger (never blocking); the row takes `rec`'s request id (left
    /// empty). `rec` is borrowed, not moved: a move copied all of its ~460 bytes.
    pub fn record(
        &self,
        config: &Config,
        key: Option<&KeyEntry>,
        rec: &mut AccessRecord,
        ts_ms: u64,
    ) {
        let cost = rec.cost_micros.unwrap_or(0);
        if cost > 0 {
            if let Some((group, _)) = rec.route {
                // With per-key metrics a key's cost is counted under its team only, so the
                // series of `sluice_cost_usd_total` add up to the total.
                let team = key
                    .filter(|_| config.admin.per_key_metrics)
                    .and_then(|k| k.team.cost_by_group.get(group));
                let all = self.cost_by_group.load();
                if let Some(c) = team.or_else(|| all.get(group)) {
                    c.fetch_add(cost, Ordering::Relaxed);
                }
            }
        }
        let Some(ledger) = &self.ledger else {
            return;
        };
        // The model and deployment as the config's shared strings (no allocation), unless
        // the client named the model otherwise (an alias, a `provider/` path).
        let names = self.names.load();
        let group = rec.route.and_then(|(g, _)| names.groups.get(g));
        let deployment = rec.route.and_then(|(g, d)| {
            let label = config.models.get(g)?.deployments.get(d?)?.label.as_str();
            // The names are swapped after the config on a reload: use them where they agree.
            match names.deployments.get(g).and_then(|l| l.get(d?)) {
                Some(shared) if **shared == *label => Some(shared.clone()),
                _ => Some(Arc::from(label)),
            }
        });
        let requested = rec.model.as_deref().unwrap_or("");
        let model = match group {
            Some(name) if **name == *requested => name.clone(),
            _ => Arc::from(requested),
        };
        let usage = UsageRecord {
            request_id: std::mem::take(&mut rec.request_id),
            ts_ms,
            key_id: key.map(|k| k.id.clone()),
            team: key.map(|k| k.team.name.clone()),
            model,
            deployment,
            usage: rec.usage.unwrap_or_default(),
            cost_micros: cost,
            status: rec.status,
            latency_ms: rec.total_us / 1000,
            cache: rec.cache,
            saved_micros: rec.saved_micros.unwrap_or(0),
        };
        if ledger.record(usage).is_err() {
            self.meters.ledger_dropped.increment(1);
        }
    }
}

/// The prompt tokens and the cost to reserve for a request to `group`: for each deployment,
/// the prompt by its provider's image rule capped at its model's context window, every prompt
/// token at the input rate and `output` tokens at the output rate; the largest of each.
pub fn estimate_prompt_and_cost(
    config: &Config,
    prices: &PriceTable,
    group: usize,
    model: &str,
    scan: &PromptScan,
    output: u64,
) -> (u64, u64) {
    let Some(g) = config
        .models
        .get(group)
        .filter(|g| !g.deployments.is_empty())
    else {
        return (scan.tokens(ImageRule::OpenAi), 0);
    };
    let mut most = (0, 0);
    for d in &g.deployments {
        let rule = config
            .providers
            .get(d.provider)
            .map_or(ImageRule::OpenAi, |p| ImageRule::of(p.kind));
        let price = prices.price_ref(if d.model == "*" { model } else { &d.model });
        let tokens = scan.tokens(rule);
        let tokens = price.as_ref().map_or(tokens, |p| p.cap_prompt(tokens));
        let cost = price.map_or(0, |p| cost::estimate_micros(&p, tokens, output));
        most = (most.0.max(tokens), most.1.max(cost));
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, team: &str, rpm: Option<u64>) -> KeyRecord {
        let secret = format!("sk-sluice-{id}");
        KeyRecord {
            id: id.into(),
            name: id.into(),
            team: team.into(),
            user: None,
            hash: keys::hash_hex(&secret),
            prefix: keys::visible_prefix(&secret),
            models: vec!["gpt-*".into(), "mock-fast".into()],
            limits: Limits {
                rpm,
                ..Limits::default()
            },
            expires_at_unix: None,
            disabled: false,
            metadata: serde_json::Value::Null,
            created_at_unix: 0,
        }
    }

    #[test]
    fn rebuild_keeps_unchanged_limits_and_spend() {
        let none = |_: Scope, _: &str, _: BudgetPeriod| 7;
        let a = build_index(
            vec![(key("a", "t", Some(5)), false), (key("b", "t", None), true)],
            vec![],
            &Index::default(),
            2,
            &none,
            100,
        );
        let ka = a.key("a").unwrap().clone();
        assert!(ka.limits.requests.is_some());
        assert_eq!(ka.limits.budget.spend(), 7);
        ka.limits.budget.add_spend(10);
        assert!(Arc::ptr_eq(&ka.team, a.team("t").unwrap()));
        // Same numbers: same set. New numbers: new set, spend carried over.
        let b = build_index(
            vec![(key("a", "t", Some(5)), false)],
            vec![],
            &a,
            2,
            &none,
            100,
        );
        assert!(Arc::ptr_eq(&b.key("a").unwrap().limits, &ka.limits));
        assert!(b.key("b").is_none());
        let c = build_index(
            vec![(key("a", "t", Some(9)), false)],
            vec![],
            &b,
            2,
            &none,
            100,
        );
        let kc = c.key("a").unwrap();
        assert!(!Arc::ptr_eq(&kc.limits, &ka.limits));
        assert_eq!(kc.limits.budget.spend(), 17);
        assert_eq!(kc.limits.requests.as_ref().unwrap().capacity(), 9);
    }

    #[test]
    fn every_index_has_its_own_generation_and_keys_are_found_again() {
        let none = |_: Scope, _: &str, _: BudgetPeriod| 0;
        let a = build_index(
            vec![(key("a", "t", None), false)],
            vec![],
            &Index::default(),
            1,
            &none,
            0,
        );
        let b = build_index(vec![(key("a", "t", None), false)], vec![], &a, 1, &none, 0);
        assert_ne!(a.generation(), b.generation());
        assert_ne!(a.generation(), Index::default().generation());
        // The memo serves a key seen before and is emptied by a new index.
        let mut memo = KeyMemo::<Arc<KeyEntry>>::default();
        let entry = a.key("a").unwrap();
        memo.remember(a.generation(), b"sk-sluice-a", entry);
        assert!(Arc::ptr_eq(
            memo.find(a.generation(), b"sk-sluice-a").unwrap(),
            entry
        ));
        assert!(memo.find(b.generation(), b"sk-sluice-a").is_none());
    }

    #[test]
    fn model_lists() {
        let k = key("a", "t", None);
        assert!(k.allows_model("mock-fast") && k.allows_model("gpt-4o"));
        assert!(!k.allows_model("mock-stream"));
        let all = KeyRecord {
            models: vec![],
            ..k
        };
        assert!(all.allows_model("anything"));
    }
}
