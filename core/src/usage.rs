//! Token usage, read from whichever shape the provider answered with.
//!
//! Chat and text completions and embeddings report `prompt_tokens` / `completion_tokens`; the
//! Responses API reports `input_tokens` / `output_tokens`, at the top level of a body or inside
//! `response` of its `response.completed` stream event. All land in one [`Usage`].

use serde::de::IgnoredAny;
use serde::Deserialize;

mod scan;

/// Tokens one request used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub input_tokens: u64,
    /// Completion (output) tokens, reasoning ones included.
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// `cache_creation_input_tokens`), priced at the cache-write rate; part of `input_tokens`.
    pub cache_write_tokens: u64,
    /// Output tokens spent on hidden reasoning.
    pub reasoning_tokens: u64,
    /// `true` when counted by the gateway (e.g. a cancelled stream), not reported by the
    /// provider.
    pub estimated: bool,
}

impl Usage {
    /// Input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// Every spelling of usage we know, as the provider sent it.
#[derive(Deserialize)]
pub(crate) struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

impl RawUsage {
    /// A usage object read by the request body's validating walk (`inspect::walk`) instead of
    /// serde: its few counts, by hand. `None` for anything it leaves to serde (a repeated
    /// field, a value of another type than serde reads, grammar it does not settle), so what it
    /// returns is what serde returns.
    fn read(json: &[u8]) -> Option<RawUsage> {
        use crate::inspect::walk::{count, members, once};
        // serde checks the UTF-8 of every key it reads; the walk compares bytes. (ASCII, a
        // word at a time, is the usual answer.)
        if !json.is_ascii() {
            std::str::from_utf8(json).ok()?;
        }
        let mut counts: [Option<Option<u64>>; 4] = [None; 4];
        let mut details: [Option<Option<Details>>; 4] = [None, None, None, None];
        members(json, |m| {
            let v = &json[m.value];
            let (slot, detail) = match m.key {
                b"prompt_tokens" => (0, false),
                b"completion_tokens" => (1, false),
                b"input_tokens" => (2, false),
                b"output_tokens" => (3, false),
                b"prompt_tokens_details" => (0, true),
                b"input_tokens_details" => (1, true),
                b"completion_tokens_details" => (2, true),
                b"output_tokens_details" => (3, true),
                _ => return Some(()),
            };
            if detail {
                once(&mut details[slot], Details::read(v))
            } else {
                once(&mut counts[slot], count(v))
            }
        })?;
        let [prompt_tokens, completion_tokens, input_tokens, output_tokens] =
            counts.map(Option::flatten);
        let [prompt_tokens_details, input_tokens_details, completion_tokens_details, output_tokens_details] =
            details.map(Option::flatten);
        Some(RawUsage {
            prompt_tokens,
            completion_tokens,
            input_tokens,
            output_tokens,
            prompt_tokens_details,
            input_tokens_details,
            completion_tokens_details,
            output_tokens_details,
        })
    }
}

impl Details {
    /// An `Option<Details>` value (`null` or an object) read as [`RawUsage::read`] reads.
    fn read(v: &[u8]) -> Option<Option<Details>> {
        use crate::inspect::walk::{count, members, once};
        if v == b"null" {
            return Some(None);
        }
        let mut counts: [Option<Option<u64>>; 2] = [None; 2];
        members(v, |m| {
            let slot = match m.key {
                b"cached_tokens" => 0,
                b"reasoning_tokens" => 1,
                _ => return Some(()),
            };
            once(&mut counts[slot], count(&v[m.value]))
        })?;
        let [cached_tokens, reasoning_tokens] = counts.map(Option::flatten);
        Some(Some(Details {
            cached_tokens,
            reasoning_tokens,
        }))
    }
}

impl From<RawUsage> for Usage {
    fn from(r: RawUsage) -> Self {
        let cached = r
            .prompt_tokens_details
            .or(r.input_tokens_details)
            .and_then(|d| d.cached_tokens);
        let reasoning = r
            .completion_tokens_details
            .or(r.output_tokens_details)
            .and_then(|d| d.reasoning_tokens);
        Usage {
            input_tokens: r.prompt_tokens.or(r.input_tokens).unwrap_or(0),
            output_tokens: r.completion_tokens.or(r.output_tokens).unwrap_or(0),
            cached_tokens: cached.unwrap_or(0),
            cache_write_tokens: 0,
            reasoning_tokens: reasoning.unwrap_or(0),
            estimated: false,
        }
    }
}

#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// The top-level fields of a response body or a stream event that usage can hide in.
#[derive(Deserialize)]
pub(crate) struct UsageProbe<'a> {
    #[serde(default)]
    pub(crate) choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    response: Option<Nested>,
    /// The answering model (a whole body's top-level `model`), borrowed from the body
    /// unless it has escapes.
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> UsageProbe<'a> {
    /// Parses a JSON object; `None` when it is not one.
    pub(crate) fn parse(json: &'a [u8]) -> Option<UsageProbe<'a>> {
        serde_json::from_slice(json).ok()
    }

    /// The usage found, if any.
    pub(crate) fn usage(self) -> Option<Usage> {
        self.usage
            .or(self.response.and_then(|r| r.usage))
            .map(Usage::from)
    }
}

/// Whether `json` has a `"usage"` member whose value is an object — the cheap test run before
/// parsing. Providers put `"usage":null` in every stream chunk once usage is requested; those
/// must not cost a parse.
pub fn mentions_usage_object(json: &[u8]) -> bool {
    // Built once: `memmem::find` would build a searcher on every call (every stream chunk).
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    let mut from = 0;
    while let Some(i) = USAGE.find(&json[from..]) {
        if usage_value_is_object(&json[from + i + 7..]) {
            return true;
        }
        from += i + 7;
    }
    false
}

/// `after` follows a `"usage"` key: whether its value is an object (`:` then `{`, whitespace
/// around the colon allowed).
pub(crate) fn usage_value_is_object(after: &[u8]) -> bool {
    let mut rest = after.iter().skip_while(|b| b.is_ascii_whitespace());
    rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Usage and the answering model (bounded) of a non-streaming body in one parse; a body
/// without a usage object is parsed only for its model.
pub fn with_model(body: &[u8]) -> (Option<Usage>, Option<String>) {
    // The walk first: when it finds a top-level `usage` object, the body mentions one (its
    // key is written without escapes, `"usage"`, then `:` and `{`), so the test over the
    // whole body (a second pass over every byte) can only say yes and is skipped.
    let top = top_level(body);
    if let Some(t) = top.as_ref().filter(|t| t.usage_member) {
        return (t.usage, t.model.and_then(crate::answered_model::bounded));
    }
    if !mentions_usage_object(body) {
        return (None, crate::answered_model::from_json(body));
    }
    match top {
        Some(t) => (t.usage, t.model.and_then(crate::answered_model::bounded)),
        None => serde_with_model(body),
    }
}

/// Usage of a non-streaming response body, when it reports one.
pub fn from_body(body: &[u8]) -> Option<Usage> {
    // As in `with_model`: a top-level `usage` object settles the usage-object test.
    let top = top_level(body);
    if let Some(t) = top.as_ref().filter(|t| t.usage_member) {
        return t.usage;
    }
    if !mentions_usage_object(body) {
        return None;
    }
    match top {
        Some(t) => t.usage,
        None => UsageProbe::parse(body).and_then(UsageProbe::usage),
    }
}

/// [`with_model`] after the usage-object test, by a serde parse of the whole body: what the
/// scanner falls back to for the shapes it leaves to serde.
fn serde_with_model(body: &[u8]) -> (Option<Usage>, Option<String>) {
    match UsageProbe::parse(body) {
        Some(mut p) => {
            let model = p
                .model
                .take()
                .and_then(|m| crate::answered_model::bounded(&m));
            (p.usage(), model)
        }
        None => (None, None),
    }
}

/// What [`top_level`] reads of a body or an event.
pub(crate) struct TopLevel<'a> {
    /// The usage found (`usage`, or `response.usage`).
    pub(crate) usage: Option<Usage>,
    /// The top-level `model`, as written (no escapes).
    pub(crate) model: Option<&'a str>,
    /// `choices` is an empty array (a stream's usage-only chunk).
    pub(crate) choices_empty: bool,
    /// `usage` is a top-level member whose value is an object.
    pub(crate) usage_member: bool,
}

/// A [`UsageProbe`]'s usage and model, read from a body's top-level members without parsing
/// the other values (see `scan`): only `usage` (or `response.usage`) is parsed, with serde,
/// and `model` is taken as written. `None` for everything it leaves to serde: a body the walk
/// cannot read, a top-level key with escapes, a duplicate of one of the probe's keys, one of
/// them with a type other than the plain one (`choices` an array, `usage` and `response`
/// objects serde reads, `model` a string without escapes or control bytes, each or `null`).
/// So on valid JSON the answer is always the serde parse's.
pub(crate) fn top_level(body: &[u8]) -> Option<TopLevel<'_>> {
    let [choices, usage, response, model] = scan::probe_members(body)?;
    let null = crate::inspect::walk::absent_or_null;
    if !(null(choices) || choices?.first() == Some(&b'[')) {
        return None;
    }
    // `[`, whitespace, `]`: serde's `Vec` of no element.
    let choices_empty = choices.is_some_and(|v| {
        v.get(1..)
            .and_then(|inner| inner.iter().find(|&&b| !crate::inspect::walk::is_ws(b)))
            == Some(&b']')
    });
    let model = match model {
        Some(v) if v != b"null" => Some(crate::answered_model::plain_string(v)?),
        _ => None,
    };
    let object = |v: Option<&[u8]>| v.is_some_and(|v| v.first() == Some(&b'{'));
    if !(null(usage) || object(usage)) || !(null(response) || object(response)) {
        return None;
    }
    let usage_member = object(usage);
    let usage = match usage.filter(|v| v != b"null") {
        Some(v) => Some(RawUsage::read(v).or_else(|| serde_json::from_slice(v).ok())?),
        None => None,
    };
    let response = match response.filter(|v| v != b"null") {
        Some(v) => serde_json::from_slice::<Nested>(v).ok()?.usage,
        None => None,
    };
    Some(TopLevel {
        usage: usage.or(response).map(Usage::from),
        model,
        choices_empty,
        usage_member,
    })
}

/// The usage a stream event's data reports, and whether the event is the usage-only chunk
/// (`"choices":[]`): what a [`UsageProbe`] parse says, read by [`top_level`] when it can (no
/// allocation, no serde pass over the other members) and by serde otherwise. `None` when
/// the event reports no usage.
pub(crate) fn in_event(data: &[u8]) -> Option<(Usage, bool)> {
    if let Some(t) = top_level(data) {
        return Some((t.usage?, t.choices_empty));
    }
    let probe = UsageProbe::parse(data)?;
    let usage_only = probe.choices.as_ref().is_some_and(Vec::is_empty);
    Some((probe.usage()?, usage_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_model_in_one_parse() {
        let body = br#"{"id":"x","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#;
        let (u, m) = with_model(body);
        assert_eq!(u.map(|u| u.input_tokens), Some(9));
        assert_eq!(m.as_deref(), Some("gpt-4o-2024-08-06"));
        let (u, m) = with_model(br#"{"model":"m","data":[]}"#);
        assert_eq!((u, m.as_deref()), (None, Some("m")));
        assert_eq!(with_model(b"not json"), (None, None));
    }

    #[test]
    fn chat_completion_usage() {
        let u = from_body(br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#).unwrap();
        assert_eq!(
            u,
            Usage {
                input_tokens: 9,
                output_tokens: 12,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 2,
                estimated: false
            }
        );
        assert_eq!(u.total_tokens(), 21);
    }

    #[test]
    fn responses_and_embeddings_usage() {
        let u = from_body(br#"{"object":"response","usage":{"input_tokens":5,"output_tokens":3,"input_tokens_details":{"cached_tokens":1}}}"#).unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cached_tokens),
            (5, 3, 1)
        );
        let u = from_body(br#"{"type":"response.completed","response":{"usage":{"input_tokens":2,"output_tokens":1}}}"#).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (2, 1));
        let u = from_body(
            br#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
        )
        .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (8, 0));
    }

    #[test]
    fn usage_object_test_skips_nulls() {
        assert!(mentions_usage_object(br#"{"usage" : {"a":1}}"#));
        assert!(mentions_usage_object(br#"{"x":"usage","usage":{}}"#));
        assert!(!mentions_usage_object(br#"{"choices":[],"usage":null}"#));
        assert!(!mentions_usage_object(br#"{"content":"\"usage\""}"#));
        assert!(!mentions_usage_object(b"\"usage\""));
    }

    /// The walk settles a top-level `usage` object without the test over the whole body;
    /// `usage` elsewhere (in a string, nested, escaped, not an object) still goes through the
    /// test and gives what it gave.
    #[test]
    fn a_top_level_usage_object_is_read_wherever_usage_is_mentioned() {
        let content = r#"\"usage\":{\"prompt_tokens\":99}"#;
        for body in [
            format!(
                r#"{{"model":"m","choices":[{{"message":{{"content":"{content}"}}}}],"usage":{{"prompt_tokens":3}}}}"#
            ),
            r#"{"usage" : {"prompt_tokens":3},"model":"m","x":{"usage":{"prompt_tokens":99}}}"#
                .to_string(),
            r#"{"choices":[{"usage":{"prompt_tokens":99}}],"usage":{"prompt_tokens":3},"model":"m"}"#
                .to_string(),
        ] {
            let (u, m) = with_model(body.as_bytes());
            assert_eq!(u.map(|u| u.input_tokens), Some(3), "{body}");
            assert_eq!(m.as_deref(), Some("m"));
            assert_eq!(from_body(body.as_bytes()).map(|u| u.input_tokens), Some(3));
        }
        // Only nested or quoted: no usage (a nested one is not the answer's).
        for body in [
            format!(r#"{{"model":"m","choices":[{{"message":{{"content":"{content}"}}}}]}}"#),
            r#"{"model":"m","x":{"usage":{"prompt_tokens":99}},"usage":null}"#.to_string(),
            r#"{"model":"m","usage":7}"#.to_string(),
        ] {
            assert_eq!(
                with_model(body.as_bytes()),
                (None, Some("m".into())),
                "{body}"
            );
            assert_eq!(from_body(body.as_bytes()), None, "{body}");
        }
        // A repeated `usage` is left to serde, which refuses the body.
        let twice = br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#;
        assert_eq!(with_model(twice), (None, None));
        assert_eq!(from_body(twice), None);
    }

    #[test]
    fn no_usage() {
        assert!(from_body(br#"{"choices":[]}"#).is_none());
        assert!(from_body(br#"{"usage":null}"#).is_none());
        assert!(from_body(b"\"usage\" not json").is_none());
    }
}

#[cfg(test)]
mod serde_oracle;
