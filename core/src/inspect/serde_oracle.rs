//! The walk against serde: on generated request bodies (member order, white space, repeated
//! fields, escaped keys, fields of every type, strings with escapes and raw control bytes,
//! numbers in and out of the grammar, broken and truncated JSON), whenever [`walked`] settles
//! a body, serde's probe ([`probed`]) reads the same fields from it; on bodies serde reads
//! that hold nothing odd, the walk settles them.

use super::*;
use proptest::prelude::*;

/// What `inspect` does after its prefix checks, by each path.
fn both(body: &str) -> Option<(Option<Inspected>, Result<Inspected, GatewayError>)> {
    let object_start = match body.find(|c: char| !c.is_ascii_whitespace()) {
        Some(i) if body.as_bytes()[i] == b'{' => i + 1,
        _ => return None,
    };
    Some((walked(body, object_start), probed(body, object_start)))
}

const LEAVES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "7",
    "256",
    "-0",
    "-1",
    "1.5",
    "2e3",
    "1E+2",
    "-0.0e-0",
    "18446744073709551615",
    "18446744073709551616",
    "01",
    "1.",
    ".5",
    "+1",
    "tru",
    "nul",
    "\"\"",
    "\"gpt-4o\"",
    "\"mock-fast\"",
    r#""a \"quoted\" word""#,
    r#""line\nbreak\ttab\/slash\\""#,
    r#""\u00e9t\u00e9 \ud83d\ude00""#,
    r#""\ud800 lone""#,
    r#""\u12g4""#,
    r#""bad \q escape""#,
    "\"raw\ttab\"",
    "\"raw\nnewline\"",
    "\"été ✓\"",
    "\"}]{[,:\"",
    "\"unterminated",
];

const KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "messages",
    "temperature",
    "x",
    r"mod\u0065l",
    r"stre\u0061m",
];

const WS: &[&str] = &["", " ", "\n", "\t", "\r\n  ", "\u{c}"];

fn leaf() -> impl Strategy<Value = String> {
    prop::sample::select(LEAVES).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            (
                prop::collection::vec(inner.clone(), 0..5),
                prop::sample::select(WS)
            )
                .prop_map(|(items, ws)| format!("[{ws}{}{ws}]", items.join(","))),
            (
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..4),
                prop::sample::select(WS)
            )
                .prop_map(|(members, ws)| {
                    let m: Vec<String> = members
                        .iter()
                        .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                        .collect();
                    format!("{{{}{ws}}}", m.join(","))
                }),
        ]
    })
}

/// A top-level object: a model most of the time, other members around it.
fn body() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::sample::select(KEYS), value()), 0..6),
        prop::option::weighted(0.8, leaf()),
        0usize..8,
        prop::sample::select(WS),
    )
        .prop_map(|(mut members, model, at, ws)| {
            if let Some(m) = model {
                members.insert(at.min(members.len()), ("model", m));
            }
            let m: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\"{ws}:{ws}{v}"))
                .collect();
            format!("{ws}{{{ws}{}{ws}}}{ws}", m.join(&format!(",{ws}")))
        })
}

/// A body, sometimes broken: cut short, or a byte changed to one JSON cares about.
fn maybe_broken() -> impl Strategy<Value = String> {
    (
        body(),
        0u8..4,
        any::<prop::sample::Index>(),
        prop::sample::select(&[",", "]", "}", "\"", ":", "\\", "\u{1}", " ", "0", "-"][..]),
    )
        .prop_map(|(b, how, at, byte)| {
            let boundaries: Vec<usize> = (0..=b.len()).filter(|i| b.is_char_boundary(*i)).collect();
            let i = boundaries[at.index(boundaries.len())];
            match how {
                0 => b[..i].to_owned(),
                1 => format!("{}{byte}{}", &b[..i], &b[i..]),
                _ => b,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn walked_agrees_with_serde(body in maybe_broken()) {
        if let Some((Some(w), serde)) = both(&body) {
            prop_assert_eq!(serde.as_ref().ok(), Some(&w), "{}", body);
        }
    }
}

/// Bodies a client sends every day are settled by the walk (so it is the path taken), with
/// serde's answer.
#[test]
fn everyday_bodies_take_the_walk() {
    let long = "word ".repeat(2000);
    let bodies = [
        r#"{"max_tokens":256,"messages":[{"content":"You are concise.","role":"system"},{"content":"Why is p99 high?","role":"user"}],"model":"mock-fast","stream":false,"temperature":0.2,"user":"sluice-load"}"#.to_owned(),
        "{\n  \"model\": \"gpt-4o\",\n  \"messages\": [{\"role\": \"user\", \"content\": \"line one\\nline \\\"two\\\"\\t\\u00e9\\ud83d\\ude00\"}],\n  \"stream\": true,\n  \"stream_options\": {\"include_usage\": false}\n}\n".to_owned(),
        r#"{"model":"claude","max_output_tokens":0,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"number","minimum":-1.5e-3}},"required":["x"]}}}],"input":[],"metadata":null,"n":1}"#.to_owned(),
        format!(r#"{{"messages":[{{"role":"user","content":"{long}"}}],"model":"m","stream":null,"max_completion_tokens":18446744073709551615}}"#),
        "{\"model\":\"m\u{e9}\",\"input\":\"caf\u{e9} \u{2713}\"}".to_owned(),
    ];
    for body in &bodies {
        let (walk, serde) = both(body).unwrap();
        let walk = walk.unwrap_or_else(|| panic!("the walk left {body}"));
        assert_eq!(serde.unwrap(), walk);
        assert_eq!(inspect(body.as_bytes()).unwrap(), walk);
    }
}

/// Bodies serde refuses get serde's message, whichever path looked first.
#[test]
fn refused_bodies_keep_serde_messages() {
    for (body, msg) in [
        (r#"{"model":"a","model":"b"}"#, "duplicate field `model`"),
        (r#"{"model":"a","messages":[1,]}"#, "invalid JSON body"),
        (r#"{"model":"a","stream":"yes"}"#, "invalid JSON body"),
        (r#"{"model":"a","max_tokens":-1}"#, "invalid JSON body"),
        (r#"{"model":7}"#, "`model` must be a string"),
        (r#"{"model":""}"#, "`model` must not be empty"),
        (r#"{"messages":[]}"#, "you must provide a model parameter"),
        (
            "{\"model\":\"a\",\"x\":\"raw\nnewline\"}",
            "invalid JSON body",
        ),
    ] {
        let err = inspect(body.as_bytes()).unwrap_err();
        assert!(err.message.contains(msg), "{body}: {}", err.message);
    }
}
