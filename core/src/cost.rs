//! What a request cost: prices per model and the arithmetic from [`Usage`] to micro-USD.
//!
//! Prices are USD per million tokens, which is exactly micro-USD per token, so a cost is
//! `tokens * price` micro-USD. Spend is kept as integer micro-USD everywhere (buckets, budgets,
//! the ledger); only prices are floating point.
//!
//! Lookup ([`PriceTable::price`]): the longest name that is the model or a prefix of it at a
//! boundary (`gpt-4o` for `gpt-4o-2024-08-06`), across the config's prices and the bundled table
//! ([`bundled_price`]); the config wins a tie. A model with no price costs 0
//! and cannot exhaust a budget: operators should price every model they route.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use crate::usage::Usage;

/// A model's list price, USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(from = "RawPrice")]
pub struct Price {
    /// Uncached input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output tokens, reasoning included.
    pub output_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input_per_mtok: f64,
    /// Input tokens written to the provider's prompt cache (Anthropic: 1.25x input for the
    /// 5-minute cache).
    pub cache_write_per_mtok: f64,
    /// Dearer rates for long prompts, where the provider has them.
    pub long_context: Option<LongContext>,
    /// The model's context window for input, where known (a catalog's `max_input_tokens`):
    /// no prompt estimate reserves more.
    pub max_input_tokens: Option<u64>,
    /// Rates per image, second of audio and character, for the models priced so.
    pub media: crate::media::MediaPrice,
}

/// The rates of a request whose prompt is longer than `above_input_tokens`: providers that
/// price by context length (Gemini 1.5 and 2.5 Pro, Claude Sonnet 4 with its 1M window) bill
/// the whole request at them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LongContext {
    /// The prompt length (input tokens, cached ones included) past which these rates apply.
    pub above_input_tokens: u64,
    /// Uncached input.
    pub input_per_mtok: f64,
    /// Output.
    pub output_per_mtok: f64,
    /// Cache reads.
    pub cached_input_per_mtok: f64,
    /// Cache writes.
    pub cache_write_per_mtok: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input_per_mtok: f64,
    #[serde(default)]
    output_per_mtok: f64,
    #[serde(default)]
    cached_input_per_mtok: Option<f64>,
    #[serde(default)]
    cache_write_per_mtok: Option<f64>,
    #[serde(default)]
    long_context: Option<RawLongContext>,
    #[serde(default)]
    max_input_tokens: Option<u64>,
    #[serde(default)]
    per_image_usd: Option<f64>,
    #[serde(default)]
    per_input_second_usd: Option<f64>,
    #[serde(default)]
    per_input_character_usd: Option<f64>,
    #[serde(default)]
    per_output_character_usd: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongContext {
    above_input_tokens: u64,
    input_per_mtok: f64,
    #[serde(default)]
    output_per_mtok: f64,
    #[serde(default)]
    cached_input_per_mtok: Option<f64>,
    #[serde(default)]
    cache_write_per_mtok: Option<f64>,
}

impl From<RawPrice> for Price {
    fn from(r: RawPrice) -> Self {
        let base = Price::new(r.input_per_mtok, r.output_per_mtok, r.cached_input_per_mtok)
            .with_cache_write(r.cache_write_per_mtok)
            .with_max_input_tokens(r.max_input_tokens)
            .with_media(crate::media::MediaPrice {
                per_image: r.per_image_usd.and_then(crate::media::usd_rate),
                per_input_second: r.per_input_second_usd.and_then(crate::media::usd_rate),
                per_input_character: r.per_input_character_usd.and_then(crate::media::usd_rate),
                per_output_character: r.per_output_character_usd.and_then(crate::media::usd_rate),
            });
        match r.long_context {
            None => base,
            Some(l) => base.with_long_context(
                l.above_input_tokens,
                l.input_per_mtok,
                l.output_per_mtok,
                l.cached_input_per_mtok,
                l.cache_write_per_mtok,
            ),
        }
    }
}

impl Price {
    /// A price; cached input (and cache writes) cost as much as input when not given.
    /// Negative or NaN rates become 0.
    pub fn new(input_per_mtok: f64, output_per_mtok: f64, cached: Option<f64>) -> Self {
        Price {
            input_per_mtok: clean(input_per_mtok),
            output_per_mtok: clean(output_per_mtok),
            cached_input_per_mtok: clean(cached.unwrap_or(input_per_mtok)),
            cache_write_per_mtok: clean(input_per_mtok),
            long_context: None,
            max_input_tokens: None,
            media: crate::media::MediaPrice::default(),
        }
    }

    /// This price with media rates (per image, second, character).
    pub fn with_media(mut self, media: crate::media::MediaPrice) -> Self {
        self.media = media;
        self
    }

    /// This price with a context window of `tokens` (0 or `None`: unknown).
    pub fn with_max_input_tokens(mut self, tokens: Option<u64>) -> Self {
        self.max_input_tokens = tokens.filter(|t| *t > 0);
        self
    }

    /// `prompt_tokens` capped at the context window, where known: a prompt estimate past it
    /// would be refused by the provider anyway, so it never reserves more.
    pub fn cap_prompt(&self, prompt_tokens: u64) -> u64 {
        self.max_input_tokens
            .map_or(prompt_tokens, |m| prompt_tokens.min(m))
    }

    /// This price with dearer rates past `above_input_tokens` of prompt. Cache reads and
    /// writes not given keep their ratio to input from the base price.
    pub fn with_long_context(
        mut self,
        above_input_tokens: u64,
        input_per_mtok: f64,
        output_per_mtok: f64,
        cached: Option<f64>,
        cache_write: Option<f64>,
    ) -> Self {
        let input = clean(input_per_mtok);
        let ratio = |base: f64| {
            if self.input_per_mtok > 0.0 {
                input * base / self.input_per_mtok
            } else {
                input
            }
        };
        self.long_context = Some(LongContext {
            above_input_tokens,
            input_per_mtok: input,
            output_per_mtok: clean(output_per_mtok),
            cached_input_per_mtok: cached.map_or_else(|| ratio(self.cached_input_per_mtok), clean),
            cache_write_per_mtok: cache_write
                .map_or_else(|| ratio(self.cache_write_per_mtok), clean),
        });
        self
    }

    /// The rates for a request with `input_tokens` of prompt: (input, output, cache read,
    /// cache write).
    pub fn rates(&self, input_tokens: u64) -> (f64, f64, f64, f64) {
        match self.long_context {
            Some(l) if input_tokens > l.above_input_tokens => (
                l.input_per_mtok,
                l.output_per_mtok,
                l.cached_input_per_mtok,
                l.cache_write_per_mtok,
            ),
            _ => (
                self.input_per_mtok,
                self.output_per_mtok,
                self.cached_input_per_mtok,
                self.cache_write_per_mtok,
            ),
        }
    }

    /// This price with cache writes at `rate` (USD per million tokens); `None` keeps the
    /// input rate.
    pub fn with_cache_write(mut self, rate: Option<f64>) -> Self {
        if let Some(r) = rate {
            self.cache_write_per_mtok = clean(r);
        }
        self
    }
}

fn clean(v: f64) -> f64 {
    if v.is_nan() || v < 0.0 {
        0.0
    } else {
        v
    }
}

/// Micro-USD a request cost: cache reads at the cached rate, cache writes at the cache-write
/// rate, the rest of the input at the input rate, all output (reasoning included) at the
/// output rate; all at the long-context rates when the prompt is past their threshold.
/// Rounded to nearest.
pub fn cost_micros(price: &Price, usage: &Usage) -> u64 {
    let (input, output, read, write) = price.rates(usage.input_tokens);
    let cached = usage.cached_tokens.min(usage.input_tokens);
    let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
    let uncached = usage.input_tokens - cached - written;
    let micros = uncached as f64 * input
        + cached as f64 * read
        + written as f64 * write
        + usage.output_tokens as f64 * output;
    // `as` saturates; NaN cannot occur since rates are cleaned.
    micros.round() as u64
}

/// Micro-USD to reserve before a request runs: every prompt token at the full input rate (no
/// cache hit assumed) and `max_output_tokens` at the output rate (long-context rates past
/// their threshold), rounded up.
pub fn estimate_micros(price: &Price, prompt_tokens: u64, max_output_tokens: u64) -> u64 {
    let (input, output, _, _) = price.rates(prompt_tokens);
    let micros = prompt_tokens as f64 * input + max_output_tokens as f64 * output;
    micros.ceil() as u64
}

/// Micro-USD as a decimal USD string with six places, for `x-sluice-cost-usd`: `0.001234`.
pub fn format_usd(micros: u64) -> String {
    String::from(usd_text(micros).as_str())
}

/// [`format_usd`]'s text on the stack, for the cost header of every priced answer (no
/// allocation): `usd_text(1_234).as_str() == "0.001234"`.
pub fn usd_text(micros: u64) -> UsdText {
    // Written by hand: `format!` cost some 800 instructions on every priced answer.
    let mut digits = [b'0'; 27];
    let mut i = digits.len();
    let mut rest = micros;
    while rest > 0 || digits.len() - i < 8 {
        i -= 1;
        if digits.len() - i == 7 {
            digits[i] = b'.';
            continue;
        }
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    UsdText {
        digits,
        start: i as u8,
    }
}

/// A [`usd_text`]: at most 20 digits of `u64`, a dot and six places.
#[derive(Clone, Copy)]
pub struct UsdText {
    digits: [u8; 27],
    /// Where the text starts in `digits` (it runs to the end).
    start: u8,
}

impl UsdText {
    /// The text: ASCII digits and a dot.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[usize::from(self.start)..]).unwrap_or_default()
    }
}

/// (model, input, output, cached input), USD per million tokens: the providers' public list
/// prices for standard (non-batch) use at the time of writing, the lowest context tier where
/// prices are tiered (the higher tier is in [`LONG_CONTEXT`]). Cache writes cost the input rate, except Anthropic's
/// ([`ANTHROPIC_CACHE_WRITE`] times it). Prices change: operators should override them with `[prices]` in the
/// config, which always wins over this table.
const BUNDLED: &[(&str, f64, f64, f64)] = &[
    // OpenAI (the gpt-5 family: dated ids and `-codex`/`-chat-latest` match by prefix)
    ("gpt-5", 1.25, 10.00, 0.125),
    ("gpt-5-mini", 0.25, 2.00, 0.025),
    ("gpt-5-nano", 0.05, 0.40, 0.005),
    ("gpt-5-pro", 15.00, 120.00, 15.00),
    ("gpt-5.1", 1.25, 10.00, 0.125),
    ("gpt-5.1-codex-mini", 0.25, 2.00, 0.025),
    ("gpt-5.2", 1.75, 14.00, 0.175),
    ("gpt-5.2-pro", 21.00, 168.00, 21.00),
    ("gpt-4o", 2.50, 10.00, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("gpt-4.1", 2.00, 8.00, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("o1", 15.00, 60.00, 7.50),
    ("o1-mini", 1.10, 4.40, 0.55),
    ("o3", 2.00, 8.00, 0.50),
    ("o3-mini", 1.10, 4.40, 0.55),
    ("o3-pro", 20.00, 80.00, 20.00),
    ("o4-mini", 1.10, 4.40, 0.275),
    ("text-embedding-3-small", 0.02, 0.0, 0.02),
    ("text-embedding-3-large", 0.13, 0.0, 0.13),
    // Anthropic (cached = cache reads)
    ("claude-3-5-haiku", 0.80, 4.00, 0.08),
    ("claude-3-5-sonnet", 3.00, 15.00, 0.30),
    ("claude-3-7-sonnet", 3.00, 15.00, 0.30),
    ("claude-sonnet-4", 3.00, 15.00, 0.30),
    ("claude-sonnet-4-5", 3.00, 15.00, 0.30),
    ("claude-haiku-4-5", 1.00, 5.00, 0.10),
    ("claude-opus-4", 15.00, 75.00, 1.50),
    ("claude-opus-4-1", 15.00, 75.00, 1.50),
    // Opus 4.5 and later cost a third of Opus 4 and 4.1: name each, or `claude-opus-4`
    // would price them at $15/$75.
    ("claude-opus-4-5", 5.00, 25.00, 0.50),
    ("claude-opus-4-6", 5.00, 25.00, 0.50),
    // Google (prompts up to 128k / 200k tokens)
    ("gemini-1.5-flash", 0.075, 0.30, 0.01875),
    ("gemini-1.5-pro", 1.25, 5.00, 0.3125),
    ("gemini-2.0-flash", 0.10, 0.40, 0.025),
    ("gemini-2.5-flash", 0.30, 2.50, 0.075),
    ("gemini-2.5-flash-lite", 0.10, 0.40, 0.025),
    ("gemini-2.5-pro", 1.25, 10.00, 0.31),
];

/// (model, prompt tokens past which, input, output, cached input): the long-context tier of
/// the bundled models that have one; the name is the same as in [`BUNDLED`].
const LONG_CONTEXT: &[(&str, u64, f64, f64, f64)] = &[
    ("claude-sonnet-4", 200_000, 6.00, 22.50, 0.60),
    ("claude-sonnet-4-5", 200_000, 6.00, 22.50, 0.60),
    ("gemini-1.5-flash", 128_000, 0.15, 0.60, 0.0375),
    ("gemini-1.5-pro", 128_000, 2.50, 10.00, 0.625),
    ("gemini-2.5-pro", 200_000, 2.50, 15.00, 0.625),
];

/// Anthropic bills a write to its 5-minute prompt cache at 1.25x the input price (the 1-hour
/// cache at 2x, which usage does not tell apart: operators using it set
/// `cache_write_per_mtok`).
pub const ANTHROPIC_CACHE_WRITE: f64 = 1.25;

/// The best entry of `table` for `model` and the length of its name: exact, then the longest
/// name that `model` continues with a version suffix (`-2024-08-06`, `@20241022`, `:latest`, …:
/// the character after the name is not a letter or digit); a `provider/` path before the name (`openai/gpt-4o`) is
/// ignored when the full name matches nothing.
///
/// A name `n` matches `model` exactly when `n == model[..i]` for an `i` at the end of `model` or
/// before a character that is not a letter or digit, so the longest match is found with one hash
/// lookup per such `i`, longest first, instead of a scan of every name: prices are looked up on
/// every request.
fn lookup<K, T>(table: &HashMap<K, T>, model: &str) -> Option<(usize, T)>
where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq,
    T: Copy,
{
    let best = |m: &str| {
        (0..=m.len())
            .rev()
            .filter(|&i| {
                m.is_char_boundary(i)
                    && m.as_bytes()
                        .get(i)
                        .is_none_or(|b| !b.is_ascii_alphanumeric())
            })
            .find_map(|i| table.get(&m[..i]).map(|v| (i, *v)))
    };
    best(model).or_else(|| model.rsplit_once('/').and_then(|(_, tail)| best(tail)))
}

/// The bundled table with its prices resolved, built once.
static BUNDLED_PRICES: std::sync::LazyLock<HashMap<&'static str, Price>> =
    std::sync::LazyLock::new(|| {
        BUNDLED
            .iter()
            .map(|&(name, i, o, c)| {
                let anthropic = name.starts_with("claude-");
                let price = Price::new(i, o, Some(c))
                    .with_cache_write(anthropic.then_some(i * ANTHROPIC_CACHE_WRITE));
                let price = match LONG_CONTEXT.iter().find(|l| l.0 == name) {
                    Some(&(_, above, li, lo, lc)) => price.with_long_context(
                        above,
                        li,
                        lo,
                        Some(lc),
                        anthropic.then_some(li * ANTHROPIC_CACHE_WRITE),
                    ),
                    None => price,
                };
                (name, price)
            })
            .collect()
    });

fn bundled_lookup(model: &str) -> Option<(usize, Price)> {
    lookup(&BUNDLED_PRICES, model)
}

/// The bundled list price for `model`, by exact name then longest prefix
/// (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`).
pub fn bundled_price(model: &str) -> Option<Price> {
    bundled_lookup(model)
        .or_else(|| crate::dialect::without_bedrock_prefixes(model).and_then(bundled_lookup))
        .map(|(_, p)| p)
}

/// Prices from a model price catalog in the format of LiteLLM's
/// `model_prices_and_context_window.json` (a JSON object of model name → entry, with costs in
/// USD per token: `input_cost_per_token`, `output_cost_per_token`,
/// `cache_read_input_token_cost`, `cache_creation_input_token_cost`, and the same
/// `…_above_200k_tokens` for a long-context tier; `max_input_tokens` caps prompt estimates;
/// `output_cost_per_image` (else `input_cost_per_image`), `input_cost_per_second`,
/// `input_cost_per_character` and `output_cost_per_character` for media). Entries with
/// neither a cost per token nor a media cost (per-pixel pricing, the `sample_spec` example)
/// are skipped; of several long-context tiers
/// the lowest is kept. Returns (prices by model name, entries skipped).
pub fn parse_litellm_catalog(json: &str) -> Result<(HashMap<String, Price>, usize), String> {
    let all: HashMap<String, serde_json::Value> =
        serde_json::from_str(json).map_err(|e| format!("not a LiteLLM price catalog: {e}"))?;
    let per_mtok = |v: &serde_json::Value| -> Option<f64> {
        let usd_per_token = match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }?;
        (usd_per_token.is_finite() && usd_per_token >= 0.0).then_some(usd_per_token * 1e6)
    };
    let mut prices = HashMap::new();
    let mut skipped = 0;
    for (name, entry) in all {
        let usd = |key: &str| {
            entry.get(key).and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
        };
        let media = crate::media::MediaPrice {
            per_image: usd("output_cost_per_image")
                .or_else(|| usd("input_cost_per_image"))
                .and_then(crate::media::usd_rate),
            per_input_second: usd("input_cost_per_second").and_then(crate::media::usd_rate),
            per_input_character: usd("input_cost_per_character").and_then(crate::media::usd_rate),
            per_output_character: usd("output_cost_per_character").and_then(crate::media::usd_rate),
        };
        let input = entry
            .get("input_cost_per_token")
            .and_then(per_mtok)
            .or(media.is_priced().then_some(0.0));
        let Some(input) = input.filter(|_| name != "sample_spec" && !name.is_empty()) else {
            skipped += 1;
            continue;
        };
        let output = entry
            .get("output_cost_per_token")
            .and_then(per_mtok)
            .unwrap_or(0.0);
        let cached = entry.get("cache_read_input_token_cost").and_then(per_mtok);
        let write = entry
            .get("cache_creation_input_token_cost")
            .and_then(per_mtok);
        let window = entry
            .get("max_input_tokens")
            .and_then(serde_json::Value::as_u64);
        let mut price = Price::new(input, output, cached)
            .with_cache_write(write)
            .with_max_input_tokens(window)
            .with_media(media);
        // `input_cost_per_token_above_200k_tokens` and its siblings: the lowest tier.
        let tier = entry
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let thousands = k
                    .strip_prefix("input_cost_per_token_above_")?
                    .strip_suffix("k_tokens")?
                    .parse::<u64>()
                    .ok()?;
                Some((thousands, per_mtok(v)?))
            })
            .min_by_key(|(thousands, _)| *thousands);
        if let Some((thousands, tier_input)) = tier {
            let at = |key: &str| {
                entry
                    .get(format!("{key}_above_{thousands}k_tokens"))
                    .and_then(per_mtok)
            };
            price = price.with_long_context(
                thousands.saturating_mul(1000),
                tier_input,
                at("output_cost_per_token").unwrap_or(output),
                at("cache_read_input_token_cost"),
                at("cache_creation_input_token_cost"),
            );
        }
        prices.insert(name, price);
    }
    Ok((prices, skipped))
}

/// Prices from the config over the bundled table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    overrides: HashMap<String, Price>,
    /// Names resolved when the table was made ([`with_known`](Self::with_known)): the
    /// deployments' models, which nearly every request is priced at, cost one lookup instead
    /// of one per name boundary in both tables (three lookups a request: the reservation at
    /// admission, the media check and the cost at settlement).
    /// Hashed by foldhash: the names are the config's, and SipHash cost some hundreds of
    /// instructions on each of those lookups.
    known: crate::config::FastMap<Box<str>, Option<Price>>,
}

impl PriceTable {
    /// A table with the config's prices (model name or prefix → price).
    pub fn new(overrides: HashMap<String, Price>) -> Self {
        PriceTable {
            overrides,
            known: Default::default(),
        }
    }

    /// The table with `names` resolved ahead: [`price`](Self::price) answers them from a
    /// single lookup, with what the longest-prefix search gives (the search still answers
    /// every other name).
    pub fn with_known<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        for name in names {
            if !self.known.contains_key(name) {
                let price = self.search(name);
                self.known.insert(name.into(), price);
            }
        }
        self
    }

    /// The price for `model`: the longest matching name in either table, the config's on a
    /// tie. So a config `gpt-4o` covers `gpt-4o-2024-11-20` but not `gpt-4o-mini`, which the
    /// bundled table names exactly.
    ///
    /// A Bedrock id that matches nothing in either table is looked up again without its
    /// region and provider prefixes (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` costs
    /// what `claude-sonnet-4-5` does), so a name the operator priced in full always wins.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.price_ref(model).map(Cow::into_owned)
    }

    /// [`price`](Self::price) without copying it out: a resolved name's price (the lookup
    /// every request makes, up to three times) by reference, another's as computed. A
    /// `Price` is some 170 bytes.
    pub fn price_ref(&self, model: &str) -> Option<Cow<'_, Price>> {
        match self.known.get(model) {
            Some(known) => known.as_ref().map(Cow::Borrowed),
            None => self.search(model).map(Cow::Owned),
        }
    }

    fn search(&self, model: &str) -> Option<Price> {
        self.price_exactly(model).or_else(|| {
            crate::dialect::without_bedrock_prefixes(model)
                .and_then(|bare| self.price_exactly(bare))
        })
    }

    fn price_exactly(&self, model: &str) -> Option<Price> {
        let config = lookup(&self.overrides, model);
        match (config, bundled_lookup(model)) {
            (Some((cl, c)), Some((bl, _))) if cl >= bl => Some(c),
            (_, Some((_, b))) => Some(b),
            (c, None) => c.map(|(_, c)| c),
        }
    }

    /// What `usage` cost on `model`; 0 for an unpriced model.
    pub fn cost_micros(&self, model: &str, usage: &Usage) -> u64 {
        self.price_ref(model).map_or(0, |p| cost_micros(&p, usage))
    }
}

#[cfg(test)]
mod tests;
