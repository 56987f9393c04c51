//! The scanner against serde: on generated JSON bodies (member order, whitespace, duplicate
//! keys, `usage` and `model` nested in inner objects, keys and strings with escaped quotes,
//! strings holding `"usage":{`, wrong types, counts that are not `u64`) [`with_model`] and
//! [`from_body`] give exactly what the whole-body serde parse gives; on broken bytes they do
//! not panic.

use super::*;
use proptest::prelude::*;

/// `with_model` as it was: the whole-body serde parse.
fn serde_with_model_gated(body: &[u8]) -> (Option<Usage>, Option<String>) {
    if !mentions_usage_object(body) {
        return (None, crate::answered_model::from_json(body));
    }
    serde_with_model(body)
}

/// `from_body` as it was.
fn serde_from_body(body: &[u8]) -> Option<Usage> {
    if !mentions_usage_object(body) {
        return None;
    }
    UsageProbe::parse(body).and_then(UsageProbe::usage)
}

/// A JSON value; strings and keys as written between their quotes (escapes kept).
#[derive(Debug, Clone)]
enum J {
    Lit(&'static str),
    Str(&'static str),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

const LITS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "7",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1.5",
    "2e3",
];

const STRS: &[&str] = &[
    "",
    "x",
    "gpt-4o-2024-08-06",
    "usage",
    r#"\"usage\":{"#,
    r#"\"usage\": {\"prompt_tokens\":1}"#,
    r#"a \"usage"#,
    r#"\u00e9t\u00e9 \ud83d\ude00"#,
    "été",
    r"mod\\el",
    r"\n\t\/",
    "}]{[,:",
    r#"\\"#,
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
     xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
     xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
     xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

const KEYS: &[&str] = &[
    "usage",
    "usage",
    "model",
    "model",
    "choices",
    "response",
    "id",
    "modelVersion",
    "message",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_tokens_details",
    "output_tokens_details",
    "cached_tokens",
    "reasoning_tokens",
    r#"a \"usage"#,
    r"usag\u0065",
    r"mod\u0065l",
    r#"\"usage\":{"#,
];

const COUNTS: &[&str] = &[
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
];

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
    (0..list.len()).prop_map(move |i| list[i])
}

/// A usage-shaped object: counts (mostly small integers) and detail objects.
fn usage_like() -> impl Strategy<Value = J> + Clone {
    let count = prop_oneof![
        6 => (0u32..5).prop_map(|n| J::Lit(["0", "1", "9", "12", "30"][n as usize])),
        1 => pick(LITS).prop_map(J::Lit),
    ];
    let member = (pick(COUNTS), count);
    let details = proptest::collection::vec(member.clone(), 0..3).prop_map(J::Obj);
    let detail_key = pick(&[
        "prompt_tokens_details",
        "completion_tokens_details",
        "input_tokens_details",
        "output_tokens_details",
    ]);
    proptest::collection::vec(prop_oneof![4 => member, 1 => (detail_key, details)], 0..5)
        .prop_map(J::Obj)
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        pick(LITS).prop_map(J::Lit),
        pick(STRS).prop_map(J::Str),
        usage_like(),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            proptest::collection::vec((pick(KEYS), inner), 0..5).prop_map(J::Obj),
        ]
    })
}

/// A body: mostly an object whose members are the probe's keys and others.
fn body() -> impl Strategy<Value = J> {
    prop_oneof![
        8 => proptest::collection::vec((pick(KEYS), value()), 0..7).prop_map(J::Obj),
        1 => value(),
    ]
}

/// Writes `j` with whitespace taken in turn from `ws` between tokens.
fn write(j: &J, ws: &[&str], at: &mut usize, out: &mut String) {
    fn space(ws: &[&str], at: &mut usize, out: &mut String) {
        if !ws.is_empty() {
            out.push_str(ws[*at % ws.len()]);
            *at += 1;
        }
    }
    match j {
        J::Lit(l) => out.push_str(l),
        J::Str(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(ws, at, out);
                write(item, ws, at, out);
                space(ws, at, out);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(ws, at, out);
                out.push('"');
                out.push_str(k);
                out.push('"');
                space(ws, at, out);
                out.push(':');
                space(ws, at, out);
                write(v, ws, at, out);
                space(ws, at, out);
            }
            out.push('}');
        }
    }
}

fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(pick(&["", "", "", " ", "\n", "\t", "\r\n  "]), 0..6)
}

fn text(j: &J, ws: &[&str]) -> String {
    let mut out = String::new();
    let mut at = 0;
    out.push_str(ws.first().copied().unwrap_or(""));
    write(j, ws, &mut at, &mut out);
    out.push_str(ws.last().copied().unwrap_or(""));
    out
}

/// Both functions agree with serde; whenever the scanner answers by itself, it answers what
/// serde does (whatever the usage-object test says).
fn agrees(body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(with_model(body), serde_with_model_gated(body));
    prop_assert_eq!(from_body(body), serde_from_body(body));
    if let Some(t) = top_level(body) {
        let model = t.model.and_then(crate::answered_model::bounded);
        prop_assert_eq!((t.usage, model), serde_with_model(body));
    }
    // A stream event's usage and usage-only flag, and the answered model, as serde reads them.
    let by_probe = UsageProbe::parse(body).and_then(|p| {
        let usage_only = p.choices.as_ref().is_some_and(Vec::is_empty);
        Some((p.usage()?, usage_only))
    });
    prop_assert_eq!(in_event(body), by_probe);
    // `from_json` as it was: the key test, then serde.
    let has_key = memchr::memmem::find(body, b"\"model").is_some();
    prop_assert_eq!(
        crate::answered_model::from_json(body),
        crate::answered_model::by_serde(body).filter(|_| has_key)
    );
    if let Some(m) = crate::answered_model::top_level_model(body) {
        prop_assert_eq!(
            crate::answered_model::bounded(m),
            crate::answered_model::by_serde(body)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn scanner_gives_what_serde_gives(j in body(), ws in whitespace()) {
        let body = text(&j, &ws);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "{}", body);
        agrees(body.as_bytes())?;
    }

    /// Cut or edited bodies: never a panic, and serde's answer whenever the bytes are still
    /// JSON.
    #[test]
    fn broken_bodies_do_not_panic(
        j in body(),
        ws in whitespace(),
        cut in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(
            (any::<prop::sample::Index>(), pick(&["\"", "\\", "{", "}", "[", "]", ",", ":", " ", "", "\u{1}", "\u{e9}"])),
            0..3,
        ),
    ) {
        let mut body = text(&j, &ws).into_bytes();
        for (at, with) in edits {
            if !body.is_empty() {
                let i = at.index(body.len());
                body.splice(i..=i, with.bytes());
            }
        }
        let end = cut.index(body.len() + 1);
        for bytes in [&body[..], &body[..end]] {
            let _ = with_model(bytes);
            let _ = from_body(bytes);
            if serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
                agrees(bytes)?;
            }
        }
    }

    #[test]
    fn random_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = with_model(&bytes);
        let _ = from_body(&bytes);
        let mut framed = br#"{"usage":{"#.to_vec();
        framed.extend_from_slice(&bytes);
        let _ = with_model(&framed);
        let _ = from_body(&framed);
    }
}

#[test]
fn providers_bodies_take_the_scanner() {
    for body in [
        &br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\":{} is \\ here"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":4}}}"#[..],
        br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":3,"output_tokens":2}}"#,
        br#"{"id":"resp_1","object":"response","model":"gpt-4o","output":[],"usage":{"input_tokens":5,"output_tokens":3,"input_tokens_details":{"cached_tokens":1}}}"#,
        br#"{"object":"list","data":[{"object":"embedding","embedding":[0.1,-2e-3]}],"model":"e","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
    ] {
        let t = top_level(body).expect("walked");
        assert!(t.usage.is_some() && t.model.is_some());
        assert!(crate::answered_model::top_level_model(body).is_some());
        assert_eq!(with_model(body), serde_with_model(body));
    }
    // Left to serde, with serde's answer: an escaped key, a duplicate, a model with escapes.
    for body in [
        &br#"{"usag\u0065":{"prompt_tokens":1},"model":"m"}"#[..],
        br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
        br#"{"usage":{"prompt_tokens":1},"model":"a\/b"}"#,
    ] {
        assert!(top_level(body).is_none());
    }
    assert_eq!(
        with_model(br#"{"usage":{"prompt_tokens":1},"model":"a\/b"}"#)
            .1
            .as_deref(),
        Some("a/b")
    );
}
