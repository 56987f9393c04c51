use super::*;

/// The rule [`lookup`] implements, as a scan of every name (what it replaced).
fn scan<'a>(names: impl Iterator<Item = &'a str> + Clone, model: &str) -> Option<usize> {
    let prefix_matches = |name: &str, m: &str| {
        m.starts_with(name)
            && m[name.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    };
    let best = |m: &str| {
        names
            .clone()
            .filter(|name| prefix_matches(name, m))
            .map(str::len)
            .max()
    };
    best(model).or_else(|| model.rsplit_once('/').and_then(|(_, tail)| best(tail)))
}

#[test]
fn the_indexed_lookup_finds_what_a_scan_of_every_name_finds() {
    let names = [
        "gpt-4o",
        "gpt-4o-mini",
        "o1",
        "claude-3-5",
        "gpt",
        "x/y",
        "é",
        "a-é",
    ];
    let table: HashMap<&str, u8> = names.iter().map(|n| (*n, 0)).collect();
    let models = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-2024-11-20",
        "gpt-4omini",
        "gpt-4",
        "gpt",
        "gpt5",
        "o1",
        "o1-preview",
        "o10",
        "openai/gpt-4o",
        "a/b/gpt-4o-mini",
        "claude-3-5-sonnet",
        "claude-3-5",
        "x/y",
        "x/y-1",
        "z/x/y",
        "é",
        "éa",
        "é-1",
        "a-é",
        "a-éb",
        "",
        "-",
        "/",
        "gpt-4o/",
        "gpt-4o@2024",
        "gpt-4o:latest",
        "us.gpt-4o",
    ];
    for m in models {
        let found = lookup(&table, m).map(|(len, _)| len);
        assert_eq!(found, scan(names.iter().copied(), m), "{m}");
    }
    for m in [
        "gpt-4o-mini-2024-07-18",
        "claude-sonnet-4-5-20250929",
        "openai/o3-mini",
        "x",
    ] {
        let found = bundled_lookup(m).map(|(len, _)| len);
        assert_eq!(found, scan(BUNDLED.iter().map(|b| b.0), m), "{m}");
    }
}

fn usage(input: u64, output: u64, cached: u64, reasoning: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_tokens: cached,
        cache_write_tokens: 0,
        reasoning_tokens: reasoning,
        estimated: false,
    }
}

#[test]
fn costs_by_token_kind() {
    let p = Price::new(2.5, 10.0, Some(1.25));
    // 1000 input (400 cached), 500 output (200 of them reasoning).
    // 600 * 2.5 + 400 * 1.25 + 500 * 10 = 1500 + 500 + 5000.
    assert_eq!(cost_micros(&p, &usage(1000, 500, 400, 200)), 7000);
    assert_eq!(cost_micros(&p, &usage(0, 0, 0, 0)), 0);
    // Cached more than input (a confused provider): capped at input.
    assert_eq!(cost_micros(&p, &usage(10, 0, 50, 0)), 13);
    // A million output tokens of claude-opus-4 is $75.
    let opus = bundled_price("claude-opus-4-20250514").unwrap();
    assert_eq!(cost_micros(&opus, &usage(0, 1_000_000, 0, 0)), 75_000_000);
    assert_eq!(estimate_micros(&p, 1000, 100), 3500);
    assert_eq!(estimate_micros(&Price::new(0.15, 0.6, None), 1, 0), 1);
    let huge = cost_micros(&p, &usage(u64::MAX, u64::MAX, 0, 0));
    assert_eq!(huge, u64::MAX);
}

#[test]
fn bundled_matching() {
    let p = |m| bundled_price(m).map(|p| (p.input_per_mtok, p.output_per_mtok));
    assert_eq!(p("gpt-4o"), Some((2.5, 10.0)));
    assert_eq!(p("gpt-4o-2024-08-06"), Some((2.5, 10.0)));
    assert_eq!(p("gpt-4o-mini-2024-07-18"), Some((0.15, 0.6)));
    assert_eq!(p("gpt-4.1-nano"), Some((0.1, 0.4)));
    assert_eq!(p("o3-mini-2025-01-31"), Some((1.1, 4.4)));
    assert_eq!(p("o3"), Some((2.0, 8.0)));
    assert_eq!(p("o1-preview"), Some((15.0, 60.0)));
    assert_eq!(p("claude-3-5-sonnet-20241022"), Some((3.0, 15.0)));
    assert_eq!(p("claude-3-5-haiku@20241022"), Some((0.8, 4.0)));
    assert_eq!(p("gemini-2.5-flash-lite"), Some((0.1, 0.4)));
    assert_eq!(p("gemini-2.5-flash-preview-05-20"), Some((0.3, 2.5)));
    assert_eq!(p("openai/gpt-4.1-mini"), Some((0.4, 1.6)));
    assert_eq!(p("text-embedding-3-large"), Some((0.13, 0.0)));
    // Not a prefix at a boundary, or unknown.
    assert_eq!(p("o30"), None);
    assert_eq!(p("gpt-4"), None);
    assert_eq!(p("llama-3"), None);
    // Bedrock ids: region and provider prefixes, `-v1:0`; Vertex AI's `@date`.
    for id in [
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "apac.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-sonnet-4@20250514",
    ] {
        assert_eq!(p(id), Some((3.0, 15.0)), "{id}");
    }
    assert_eq!(
        p("us.anthropic.claude-haiku-4-5-20251001-v1:0"),
        Some((1.0, 5.0))
    );
    assert_eq!(p("anthropic.claude-3-haiku-20240307-v1:0"), None);
    assert_eq!(p("us.anthropic."), None);
    assert_eq!(p("meta.llama3-70b-instruct-v1:0"), None);
    let e = bundled_price("text-embedding-3-small").unwrap();
    assert_eq!(e.cached_input_per_mtok, 0.02);
}

#[test]
fn config_overrides_bundled() {
    let cfg: HashMap<String, Price> = serde_json::from_str(
        r#"{"gpt-4o": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "my-llama": {"input_per_mtok": 0.5, "output_per_mtok": 0.5, "cached_input_per_mtok": 0.1}}"#,
    )
    .unwrap();
    let t = PriceTable::new(cfg);
    let gpt = t.price("gpt-4o-2024-11-20").unwrap();
    assert_eq!(gpt, Price::new(1.0, 2.0, Some(1.0)));
    assert_eq!(t.price("gpt-4o-mini").unwrap().input_per_mtok, 0.15);
    assert_eq!(t.cost_micros("my-llama-70b", &usage(100, 100, 50, 0)), 80);
    assert_eq!(t.cost_micros("unknown", &usage(100, 100, 0, 0)), 0);
    let bad: Result<Price, _> = serde_json::from_str(r#"{"input_per_mtok": 1.0, "typo": 2.0}"#);
    assert!(bad.is_err());
    assert_eq!(Price::new(-1.0, f64::NAN, None).input_per_mtok, 0.0);
}

#[test]
fn names_resolved_ahead_are_priced_as_the_search_prices_them() {
    let cfg: HashMap<String, Price> = serde_json::from_str(
        r#"{"gpt-4o": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
            "my-llama": {"input_per_mtok": 0.5, "output_per_mtok": 0.5}}"#,
    )
    .unwrap();
    let names = [
        "gpt-4o-2024-11-20",
        "gpt-4o-mini",
        "my-llama-70b",
        "unknown",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "claude-opus-4-1",
        "",
    ];
    let plain = PriceTable::new(cfg.clone());
    let ahead = PriceTable::new(cfg).with_known(names);
    assert_eq!(ahead.known.len(), names.len());
    for name in names.iter().chain(&["gpt-4o", "my-llama", "gpt-5"]) {
        assert_eq!(ahead.price(name), plain.price(name), "{name}");
    }
    assert_eq!(ahead.known["unknown"], None);
    assert_eq!(
        ahead.price("gpt-4o-2024-11-20").unwrap().input_per_mtok,
        1.0
    );
}

#[test]
fn bedrock_ids_priced_by_their_bare_name() {
    let cfg: HashMap<String, Price> = serde_json::from_str(
        r#"{"claude-sonnet-4-5": {"input_per_mtok": 2.0, "output_per_mtok": 4.0},
            "us.anthropic.claude-sonnet-4-5": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}"#,
    )
    .unwrap();
    let t = PriceTable::new(cfg);
    let input = |m| t.price(m).map(|p| p.input_per_mtok);
    // The name as written wins; else the bare name, the config's over the bundled one.
    assert_eq!(
        input("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        Some(1.0)
    );
    assert_eq!(
        input("eu.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        Some(2.0)
    );
    assert_eq!(
        input("anthropic.claude-sonnet-4-5-20250929-v1:0"),
        Some(2.0)
    );
    assert_eq!(
        input("global.anthropic.claude-haiku-4-5-20251001-v1:0"),
        Some(1.0)
    );
    assert_eq!(input("amazon.nova-pro-v1:0"), None);
}

#[test]
fn current_models_at_their_list_prices() {
    let p = |m| {
        bundled_price(m).map(|p| (p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok))
    };
    assert_eq!(p("gpt-5"), Some((1.25, 10.0, 0.125)));
    assert_eq!(p("gpt-5-2025-08-07"), Some((1.25, 10.0, 0.125)));
    assert_eq!(p("gpt-5-codex"), Some((1.25, 10.0, 0.125)));
    assert_eq!(p("gpt-5-mini-2025-08-07"), Some((0.25, 2.0, 0.025)));
    assert_eq!(p("gpt-5-nano"), Some((0.05, 0.4, 0.005)));
    assert_eq!(p("gpt-5.1-codex"), Some((1.25, 10.0, 0.125)));
    assert_eq!(p("gpt-5.1-codex-mini"), Some((0.25, 2.0, 0.025)));
    assert_eq!(p("gpt-5.2-2025-12-11"), Some((1.75, 14.0, 0.175)));
    // Opus 4.5 and later are not Opus 4's $15/$75.
    assert_eq!(p("claude-opus-4-5-20251101"), Some((5.0, 25.0, 0.5)));
    assert_eq!(p("claude-opus-4-5"), Some((5.0, 25.0, 0.5)));
    assert_eq!(p("claude-opus-4-6"), Some((5.0, 25.0, 0.5)));
    assert_eq!(p("claude-opus-4-1-20250805"), Some((15.0, 75.0, 1.5)));
    assert_eq!(p("claude-opus-4-20250514"), Some((15.0, 75.0, 1.5)));
    assert_eq!(p("claude-haiku-4-5-20251001"), Some((1.0, 5.0, 0.1)));
    assert_eq!(p("claude-sonnet-4-5@20250929"), Some((3.0, 15.0, 0.3)));
    // Reasoning tokens are output: 1000 output of which 800 reasoning cost 1000 outputs.
    let gpt5 = bundled_price("gpt-5").unwrap();
    assert_eq!(cost_micros(&gpt5, &usage(0, 1000, 0, 800)), 10_000);
}

#[test]
fn cache_writes_at_their_own_rate() {
    let opus = bundled_price("claude-opus-4-5").unwrap();
    assert_eq!(opus.cache_write_per_mtok, 6.25);
    // 1000 input: 200 read from the cache, 300 written to it, 500 plain; no output.
    // 500 * 5 + 200 * 0.5 + 300 * 6.25 = 2500 + 100 + 1875.
    let u = Usage {
        cache_write_tokens: 300,
        ..usage(1000, 0, 200, 0)
    };
    assert_eq!(cost_micros(&opus, &u), 4475);
    // Writes beyond the uncached input (a confused provider) are capped.
    let over = Usage {
        cache_write_tokens: 5000,
        ..usage(1000, 0, 200, 0)
    };
    assert_eq!(
        cost_micros(&opus, &over),
        200 * 500 / 1000 + 800 * 6250 / 1000
    );
    // OpenAI has no cache-write price: the input rate.
    assert_eq!(bundled_price("gpt-5").unwrap().cache_write_per_mtok, 1.25);
    // From the config.
    let p: Price = serde_json::from_str(
        r#"{"input_per_mtok": 3.0, "output_per_mtok": 15.0, "cache_write_per_mtok": 6.0}"#,
    )
    .unwrap();
    assert_eq!(
        (p.cached_input_per_mtok, p.cache_write_per_mtok),
        (3.0, 6.0)
    );
    assert_eq!(p.with_cache_write(Some(-1.0)).cache_write_per_mtok, 0.0);
}

#[test]
fn long_prompts_at_the_long_context_rates() {
    let sonnet = bundled_price("claude-sonnet-4-5-20250929").unwrap();
    // Up to 200k prompt tokens: $3 in, $15 out.
    assert_eq!(cost_micros(&sonnet, &usage(200_000, 1000, 0, 0)), 615_000);
    // Past it, the whole request at $6 / $22.50 (cache writes 1.25x: $7.50).
    assert_eq!(cost_micros(&sonnet, &usage(200_001, 1000, 0, 0)), 1_222_506);
    let l = sonnet.long_context.unwrap();
    assert_eq!(
        (l.cached_input_per_mtok, l.cache_write_per_mtok),
        (0.6, 7.5)
    );
    let gemini = bundled_price("gemini-2.5-pro").unwrap();
    assert_eq!(gemini.rates(300_000), (2.5, 15.0, 0.625, 2.5));
    assert_eq!(gemini.rates(100_000).0, 1.25);
    assert_eq!(estimate_micros(&gemini, 300_000, 0), 750_000);
    assert!(bundled_price("gpt-5").unwrap().long_context.is_none());
    // From the config; cache rates not given keep their ratio to input.
    let p: Price = serde_json::from_str(
        r#"{"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_input_per_mtok": 0.1,
            "long_context": {"above_input_tokens": 1000, "input_per_mtok": 2.0, "output_per_mtok": 4.0}}"#,
    )
    .unwrap();
    assert_eq!(p.rates(1001), (2.0, 4.0, 0.2, 2.0));
    let typo: Result<Price, _> = serde_json::from_str(
        r#"{"input_per_mtok": 1.0, "long_context": {"above": 1, "input_per_mtok": 2.0}}"#,
    );
    assert!(typo.is_err());
}

#[test]
fn litellm_catalog() {
    let json = r#"{
        "sample_spec": {"input_cost_per_token": 0.0, "mode": "chat"},
        "my-model": {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                     "cache_read_input_token_cost": 5e-07,
                     "cache_creation_input_token_cost": 2.5e-06, "litellm_provider": "openai",
                     "max_input_tokens": 128000, "mode": "chat"},
        "vertex_ai/my-model": {"input_cost_per_token": "1.5e-06", "output_cost_per_token": 3e-06},
        "tiered": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                   "input_cost_per_token_above_200k_tokens": 2e-06,
                   "output_cost_per_token_above_200k_tokens": 3e-06,
                   "input_cost_per_token_above_1000k_tokens": 9e-06},
        "dall-e-3": {"output_cost_per_image": 0.04, "mode": "image_generation"},
        "whisper-1": {"input_cost_per_second": "0.0001", "output_cost_per_second": 0.0001},
        "tts-1": {"input_cost_per_character": 1.5e-05, "mode": "audio_speech"},
        "dall-e-2": {"input_cost_per_pixel": 2.4e-08, "mode": "image_generation"},
        "bad": {"input_cost_per_token": -1}
    }"#;
    let (prices, skipped) = parse_litellm_catalog(json).unwrap();
    assert_eq!(
        skipped, 3,
        "sample_spec, a per-pixel image model and a negative price"
    );
    assert_eq!(prices["dall-e-3"].media.per_image, Some(40_000.0));
    assert_eq!(prices["dall-e-3"].input_per_mtok, 0.0);
    assert_eq!(prices["whisper-1"].media.per_input_second, Some(100.0));
    assert_eq!(prices["tts-1"].media.per_input_character, Some(15.0));
    assert_eq!(
        prices["my-model"],
        Price::new(2.0, 8.0, Some(0.5))
            .with_cache_write(Some(2.5))
            .with_max_input_tokens(Some(128_000))
    );
    assert_eq!(prices["my-model"].cap_prompt(300_000), 128_000);
    assert_eq!(prices["tiered"].cap_prompt(300_000), 300_000);
    assert_eq!(prices["vertex_ai/my-model"], Price::new(1.5, 3.0, None));
    assert_eq!(prices["tiered"].rates(200_001), (2.0, 3.0, 2.0, 2.0));
    assert_eq!(prices["tiered"].rates(200_000), (1.0, 2.0, 1.0, 1.0));
    assert!(parse_litellm_catalog("[1, 2]").is_err());
    assert!(parse_litellm_catalog("{").is_err());
    let t = PriceTable::new(prices);
    assert_eq!(
        t.cost_micros("my-model-2025", &usage(1000, 100, 0, 0)),
        2800
    );
}

#[test]
fn usd_strings() {
    assert_eq!(format_usd(0), "0.000000");
    assert_eq!(format_usd(1_234), "0.001234");
    assert_eq!(format_usd(12_500_000), "12.500000");
    for micros in [1, 999_999, 1_000_000, 1_000_001, 123_456_789, u64::MAX] {
        assert_eq!(
            format_usd(micros),
            format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
        );
        assert_eq!(usd_text(micros).as_str(), format_usd(micros));
    }
}
