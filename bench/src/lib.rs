//! # sluice-bench
//!
//! Deterministic fixtures shared by the criterion benches in `benches/`: OpenAI-shaped chat
//! requests, streamed (SSE) and plain chat completion responses, and a small seeded RNG.
//!
//! Every builder is a pure function of its arguments — no clock, no OS randomness — so two
//! runs (or two machines) bench exactly the same bytes. Text is JSON-escaped with
//! `serde_json`, so every fixture is valid JSON by construction, and it mixes in what makes
//! real prompts slower to scan than ASCII: multi-byte UTF-8, `\"` and `\n` escapes, and
//! code.

#![warn(missing_docs)]

pub mod alloc_count;
pub mod cli;
pub mod fixture;
pub mod live_alloc;
pub mod report;

/// A SplitMix64 generator: tiny, seedable and good enough to vary fixture shapes and routing
/// rolls. Not for anything that needs real randomness.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`; the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
}

/// The pieces prompt and answer text is assembled from: prose, non-Latin scripts, emoji,
/// quotes and newlines that JSON must escape, and code.
const FRAGMENTS: &[&str] = &[
    "Could you summarise the attached incident report for the on-call channel? ",
    "The service returned \"503 Service Unavailable\" for about four minutes.\n",
    "Der Übergang zur neuen Datenbank verlief größtenteils reibungslos. ",
    "日本語のテキストも含まれています。ユーザーは東京とパリにいます。",
    "Voilà — the café's menu costs 12,50 € and includes crème brûlée. ",
    "Here is the failing function:\n```rust\nfn parse(s: &str) -> Result<u32, \"err\"> {\n    s.trim().parse()\n}\n```\n",
    "Please answer in a table with the columns \"step\", \"owner\" and \"status\". ",
    "Привет! Мы обсуждаем задержки в очереди сообщений. ",
    "Sure 👍 — here are the three options, ranked by cost 💸:\n1. Cache the embeddings\n2. Batch the requests\n3. Shorten the prompts\n",
    "The path on Windows is C:\\Users\\dev\\AppData\\Local\\Temp\\run.log, not \\\\server\\share. ",
    "Tabs\tand \"nested 'quotes'\" show up in pasted spreadsheets. ",
    "Latency p99 rose from 180 ms to 2.4 s after the deploy at 14:05 UTC. ",
    "We think the root cause is connection-pool exhaustion in the payments service. ",
    "{\"level\":\"error\",\"msg\":\"upstream timed out\",\"retry\":3}\n",
];

/// Filler for the last few bytes of a fixture: ASCII needing no escapes, so each character
/// adds exactly one byte to the JSON.
const PAD: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";

/// The system prompt of every chat fixture.
const SYSTEM_PROMPT: &str = "You are a helpful assistant for the SRE team at Example Corp. \
Answer concisely, cite the runbook section when you can, and say \"I don't know\" rather than guess.";

/// One compact function tool; [`chat_body`] repeats it (with distinct names) for bigger bodies.
fn tool(i: usize) -> String {
    format!(
        r#"{{"type":"function","function":{{"name":"lookup_runbook_{i}","description":"Find the runbook section for an alert","parameters":{{"type":"object","properties":{{"alert":{{"type":"string","description":"Alert name, e.g. \"HighLatency\""}},"service":{{"type":"string","enum":["api","payments","search"]}}}},"required":["alert"]}}}}}}"#
    )
}

/// `s` as a JSON string literal, quotes included.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Length of `s` once JSON-escaped, quotes excluded.
fn escaped_len(s: &str) -> usize {
    json_str(s).len() - 2
}

/// Text of about `target` escaped bytes (never more), made of whole fragments picked by `rng`.
fn text(rng: &mut SplitMix64, target: usize) -> String {
    let mut out = String::new();
    let mut len = 0;
    // A few tries at a fragment that still fits before giving up on this text.
    let mut misses = 0;
    while misses < 4 {
        let f = FRAGMENTS[rng.range(0, FRAGMENTS.len())];
        let n = escaped_len(f);
        if len + n > target {
            misses += 1;
            continue;
        }
        out.push_str(f);
        len += n;
    }
    out
}

/// Appends `n` bytes of [`PAD`] text to `s`.
fn pad(s: &mut String, n: usize) {
    for c in PAD.chars().cycle().take(n) {
        s.push(c);
    }
}

fn message(role: &str, content: &str) -> String {
    format!(r#"{{"role":"{role}","content":{}}}"#, json_str(content))
}

/// A realistic OpenAI chat completions request of about `target_bytes` bytes (exactly, for
/// any target above about 1 KB), with `"model":"mock-fast"`.
///
/// Shape, in the key order the OpenAI Python SDK sends: `messages` (a system prompt, then
/// alternating user/assistant turns of 100 B to 3 KB ending with a user turn), `model`,
/// `stream: true` without `stream_options` (so an include_usage rewrite has to insert it),
/// `temperature`, `max_tokens` and a `tools` array (one tool below 4 KB, three above).
/// Content mixes multi-byte UTF-8, escaped quotes, newlines and backslashes.
pub fn chat_body(target_bytes: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(0x5EED_C4A7 ^ target_bytes as u64);
    let tools: Vec<String> = (0..if target_bytes < 4096 { 1 } else { 3 })
        .map(tool)
        .collect();
    let tail = format!(
        r#"],"model":"mock-fast","stream":true,"temperature":0.7,"max_tokens":512,"tools":[{}]}}"#,
        tools.join(",")
    );
    let system = message("system", SYSTEM_PROMPT);
    let fixed = r#"{"messages":["#.len() + system.len() + tail.len();
    // Turn contents, newest last, each sized so the whole body stays within the target.
    let overhead = message("assistant", "").len() + 1;
    let mut budget = target_bytes.saturating_sub(fixed);
    let mut contents = Vec::new();
    while budget > overhead + 64 || contents.is_empty() {
        let want = rng.range(100, 3000).min(budget.saturating_sub(overhead));
        let t = text(&mut rng, want);
        budget = budget.saturating_sub(overhead + escaped_len(&t));
        contents.push(t);
    }
    let n = contents.len();
    let mut messages = vec![system];
    for (i, c) in contents.iter().enumerate() {
        // Count roles back from the last turn, which is the user's.
        let role = if (n - 1 - i) % 2 == 0 {
            "user"
        } else {
            "assistant"
        };
        messages.push(message(role, c));
    }
    let mut body = format!(r#"{{"messages":[{}{tail}"#, messages.join(","));
    if body.len() < target_bytes {
        // Top up the last user turn to the exact size.
        if let Some(last) = contents.last_mut() {
            pad(last, target_bytes - body.len());
            if let Some(m) = messages.last_mut() {
                *m = message("user", last);
            }
            body = format!(r#"{{"messages":[{}{tail}"#, messages.join(","));
        }
    }
    body.into_bytes()
}

/// The constant prefix of every chunk of [`sse_stream`]: what OpenAI sends for gpt-4o.
const CHUNK_HEAD: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_eb9dce56a8","choices":"#;

/// A streamed chat completion as the upstream sends it: one `data:` event per chunk, each
/// ended by a blank line.
///
/// `events` content chunks of `content_bytes` bytes of text each (a real token is 3-5 bytes),
/// between a role chunk and a `finish_reason: "stop"` chunk, then the usage-only chunk
/// (`"choices":[]`) and `data: [DONE]`. With `with_usage_nulls`, every chunk before the usage
/// one carries `"usage":null`, as OpenAI sends once `stream_options.include_usage` is set.
pub fn sse_stream(events: usize, content_bytes: usize, with_usage_nulls: bool) -> Vec<u8> {
    let usage_null = if with_usage_nulls {
        r#","usage":null"#
    } else {
        ""
    };
    let mut out = String::new();
    let mut chunk = |choices: &str, extra: &str| {
        out.push_str("data: ");
        out.push_str(CHUNK_HEAD);
        out.push_str(choices);
        out.push_str(extra);
        out.push_str("}\n\n");
    };
    chunk(
        r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#,
        usage_null,
    );
    // Tokens are cut from the fragments, on character boundaries.
    let source: String = FRAGMENTS.concat();
    let mut chars = source.chars().cycle();
    let mut completion_chars = 0u64;
    for _ in 0..events {
        let mut token = String::new();
        while token.len() < content_bytes.max(1) {
            if let Some(c) = chars.next() {
                token.push(c);
            }
        }
        completion_chars += token.chars().count() as u64;
        let choices = format!(
            r#"[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}]"#,
            json_str(&token)
        );
        chunk(&choices, usage_null);
    }
    chunk(
        r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#,
        usage_null,
    );
    let completion_tokens = (events as u64).max(completion_chars / 4);
    chunk(
        "[]",
        &format!(
            r#","usage":{{"prompt_tokens":1117,"completion_tokens":{completion_tokens},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":1024,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}"#,
            1117 + completion_tokens
        ),
    );
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// A non-streaming chat completion response of about `bytes` bytes (exactly, above about
/// 800 B): one assistant message, then `usage` near the end, as OpenAI orders it.
pub fn chat_response(bytes: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(0xA11CE ^ bytes as u64);
    let build = |content: &str| {
        format!(
            r#"{{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":{},"refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1117,"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#,
            json_str(content),
            content.len() / 4,
            1117 + content.len() / 4,
        )
    };
    let fixed = build("").len() + 8; // token counts grow by a few digits with the content
    let mut content = text(&mut rng, bytes.saturating_sub(fixed));
    let mut body = build(&content);
    if body.len() < bytes {
        pad(&mut content, bytes - body.len());
        body = build(&content);
    }
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn chat_body_is_valid_and_sized() {
        for target in [1024, 4096, 100 * 1024] {
            let body = chat_body(target);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["model"], "mock-fast");
            let msgs = v["messages"].as_array().unwrap();
            assert_eq!(msgs[0]["role"], "system");
            assert_eq!(msgs.last().unwrap()["role"], "user");
            assert!(v["tools"].as_array().is_some_and(|t| !t.is_empty()));
            assert!(body.len().abs_diff(target) <= target / 50, "{}", body.len());
            assert_eq!(body, chat_body(target), "deterministic");
        }
    }

    #[test]
    fn sse_stream_is_well_formed() {
        let s = sse_stream(10, 4, true);
        let text = std::str::from_utf8(&s).unwrap();
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        assert_eq!(events.len(), 10 + 4);
        assert_eq!(*events.last().unwrap(), "data: [DONE]");
        for e in &events[..events.len() - 1] {
            let v: serde_json::Value =
                serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            assert!(v.get("choices").is_some());
        }
        assert_eq!(text.matches(r#""usage":null"#).count(), 10 + 2);
        assert!(!std::str::from_utf8(&sse_stream(3, 4, false))
            .unwrap()
            .contains("null}\n"));
    }

    #[test]
    fn chat_response_is_valid_and_sized() {
        for bytes in [1024, 64 * 1024] {
            let body = chat_response(bytes);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["usage"]["prompt_tokens"].as_u64().is_some());
            assert!(body.len().abs_diff(bytes) <= bytes / 50, "{}", body.len());
        }
    }
}
