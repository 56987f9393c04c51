//! The streaming writer against the tree path: the same bytes (so the same key) for every
//! body, and the same refusals.

use proptest::prelude::*;

use super::Canonical;
use crate::cache::key::{exact_key, exact_key_tree, normalise_tree, CallKind, KeyInput};
use crate::dialect::Inbound;

/// The tree path's normalisation of `body`.
fn tree(body: &[u8]) -> Option<Vec<u8>> {
    normalise_tree(&KeyInput {
        scope: "s",
        kind: CallKind::Chat,
        inbound: Some(Inbound::OpenAiChat),
        model: "m",
        body,
    })
}

fn streamed(body: &[u8]) -> Option<Vec<u8>> {
    let mut c = Canonical::default();
    c.write_request(body)?;
    Some(c.out)
}

fn same(body: &[u8]) {
    let (t, s) = (tree(body), streamed(body));
    assert_eq!(
        t.as_deref().map(String::from_utf8_lossy),
        s.as_deref().map(String::from_utf8_lossy),
        "body: {}",
        String::from_utf8_lossy(body)
    );
}

/// A JSON value to render in many spellings.
#[derive(Clone, Debug)]
enum J {
    Lit(&'static str),
    Num(&'static str),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

const NUMBERS: [&str; 24] = [
    "0",
    "-0",
    "0.0",
    "-0.0",
    "1",
    "1.0",
    "1e2",
    "1E2",
    "1e+2",
    "100",
    "-5",
    "3.14159",
    "1e-7",
    "0.1",
    "0.30000000000000004",
    "123456789012345678",
    "-123456789012345678",
    "1234567890123456789",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "1.5e300",
    "2.5E-300",
];
/// Numbers serde_json refuses (rarer, so most generated bodies are valid).
const BAD_NUMBERS: [&str; 7] = ["1e400", "00", "01", "1.", "-", ".5", "1e"];
const KEYS: [&str; 14] = [
    "a",
    "b",
    "B",
    "model",
    "n",
    "user",
    "stream",
    "metadata",
    "messages",
    "content",
    "role",
    "é",
    "a\"b",
    "tab\there",
];
const CHARS: [char; 16] = [
    'a', 'b', 'A', ' ', 'é', '😀', '"', '\\', '/', '\n', '\t', '\u{1}', '\u{1f}', '\u{7f}',
    '\u{2028}', '\u{fffd}',
];

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&CHARS[..]), 0..12)
        .prop_map(|cs| cs.into_iter().collect())
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        10 => prop::sample::select(&["true", "false", "null"][..]).prop_map(J::Lit),
        20 => prop::sample::select(&NUMBERS[..]).prop_map(J::Num),
        1 => prop::sample::select(&BAD_NUMBERS[..]).prop_map(J::Num),
        20 => text().prop_map(J::Str),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
            prop::collection::vec(
                (
                    prop::sample::select(&KEYS[..]).prop_map(str::to_owned),
                    inner
                ),
                0..6
            )
            .prop_map(J::Obj),
        ]
    })
}

/// A top-level object (with `n` sometimes).
fn request() -> impl Strategy<Value = J> {
    let n = prop::sample::select(&["1", "null", "2", "1.0", "\"1\"", "0"][..]);
    (
        prop::collection::vec(
            (
                prop::sample::select(&KEYS[..]).prop_map(str::to_owned),
                value(),
            ),
            0..7,
        ),
        prop::option::of(n),
    )
        .prop_map(|(mut members, n)| {
            if let Some(n) = n {
                let v = match n {
                    "null" => J::Lit("null"),
                    "\"1\"" => J::Str("1".into()),
                    other => J::Num(other),
                };
                members.push(("n".into(), v));
            }
            J::Obj(members)
        })
}

/// A small deterministic generator for the spelling choices.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
    fn ws(&mut self, out: &mut String) {
        while self.one_in(3) {
            out.push([' ', '\n', '\t', '\r'][(self.next() % 4) as usize]);
        }
    }
}

fn render_str(s: &str, ch: &mut Choices, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        if !must && !ch.one_in(4) {
            out.push(c);
            continue;
        }
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\r' => Some("\\r"),
            _ => None,
        };
        match short {
            Some(e) if ch.one_in(2) => out.push_str(e),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    if ch.one_in(2) {
                        out.push_str(&format!("\\u{u:04X}"));
                    } else {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
        }
    }
    out.push('"');
}

fn render(v: &J, ch: &mut Choices, out: &mut String) {
    ch.ws(out);
    match v {
        J::Lit(l) | J::Num(l) => out.push_str(l),
        J::Str(s) => render_str(s, ch, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, ch, out);
            }
            ch.ws(out);
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ch.ws(out);
                render_str(k, ch, out);
                ch.ws(out);
                out.push(':');
                render(v, ch, out);
            }
            ch.ws(out);
            out.push('}');
        }
    }
    ch.ws(out);
}

/// `members` in another order (a rotation and a swap), the last of each duplicate key kept
/// last, so the meaning is the same.
fn shuffled(members: &[(String, J)], ch: &mut Choices) -> Vec<(String, J)> {
    let mut keyed: Vec<(String, J)> = Vec::new();
    for (k, v) in members {
        keyed.retain(|(k2, _)| k2 != k);
        keyed.push((k.clone(), v.clone()));
    }
    if !keyed.is_empty() {
        let r = (ch.next() as usize) % keyed.len();
        keyed.rotate_left(r);
    }
    keyed
}

fn reorder_all(v: &J, ch: &mut Choices) -> J {
    match v {
        J::Arr(items) => J::Arr(items.iter().map(|i| reorder_all(i, ch)).collect()),
        J::Obj(members) => J::Obj(
            shuffled(members, ch)
                .into_iter()
                .map(|(k, v)| (k, reorder_all(&v, ch)))
                .collect(),
        ),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_streaming_writer_gives_the_tree_paths_bytes(req in request(), seed in any::<u64>()) {
        let mut ch = Choices(seed);
        let mut a = String::new();
        render(&req, &mut ch, &mut a);
        same(a.as_bytes());
        // Another spelling and member order of the same request: one equality class.
        let mut b = String::new();
        render(&reorder_all(&req, &mut ch), &mut ch, &mut b);
        same(b.as_bytes());
        // (Unless a dropped duplicate held what made the first refused.)
        if let Some(first) = streamed(a.as_bytes()) {
            prop_assert_eq!(Some(first), streamed(b.as_bytes()));
        }
    }

    #[test]
    fn broken_bodies_are_refused_alike(req in request(), seed in any::<u64>(), at in any::<usize>(),
                                       byte in prop::sample::select(&b"{}[]\",:\\ 0-.eatnu\x01\xc3\xff"[..])) {
        let mut ch = Choices(seed);
        let mut body = String::new();
        render(&req, &mut ch, &mut body);
        let mut body = body.into_bytes();
        let at = at % (body.len() + 1);
        match seed % 3 {
            0 => body.truncate(at),
            1 => body.insert(at, byte),
            _ => {
                if at < body.len() {
                    body[at] = byte;
                }
            }
        }
        same(&body);
    }
}

/// The property above means something only if most generated bodies are keyed.
#[test]
fn most_generated_bodies_are_keyed() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (request(), any::<u64>());
    let mut keyed = 0;
    for _ in 0..500 {
        let (req, seed) = strategy.new_tree(&mut runner).unwrap().current();
        let mut body = String::new();
        render(&req, &mut Choices(seed), &mut body);
        keyed += usize::from(streamed(body.as_bytes()).is_some());
    }
    assert!(keyed > 150, "{keyed} of 500 keyed");
}

#[test]
fn known_spellings() {
    for body in [
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        r#"{"a":"\u0041","b":"A\n\/é\u00e9\ud83d\ude00","c":[0,0.0,-0,1e2,1E+2,-5]}"#,
        r#"{"a":1,"a":2,"b":{"x":1,"x":{"y":[]}}}"#,
        r#" { "z" : { "b" : 1 , "a" : [ { "d" : null , "c" : true } ] } } "#,
        r#"{"k\u0000\"\\":"\u001f\u007f\b\f\r\t"}"#,
        r#"{"n":1,"x":1}"#,
        r#"{"n":null}"#,
        r#"{"n":2}"#,
        r#"{"n":1.0}"#,
        r#"{"n":1,"n":2}"#,
        r#"{"n":2,"n":1}"#,
        r#"{"s":"\ud800"}"#,
        r#"{"s":"\udc00"}"#,
        r#"{"s":"\ud800\u0041"}"#,
        "{\"s\":\"raw\ncontrol\"}",
        r#"{"a":1}x"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"[1,2]"#,
        "",
        "not json",
        r#"{"a":tru}"#,
        r#"{"a":1e400}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        r#"{}"#,
        r#"{"user":"u","stream":true,"stream_options":{"include_usage":true},"metadata":{}}"#,
    ] {
        same(body.as_bytes());
    }
    assert!(streamed(b"{\"a\":\"\xff\"}").is_none());
}

#[test]
fn nesting_is_refused_where_serde_json_refuses_it() {
    for depth in [125, 126, 127, 128, 129, 300] {
        let body = format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        same(body.as_bytes());
        let body = format!(
            r#"{{"a":{}1{}}}"#,
            r#"{"b":"#.repeat(depth),
            "}".repeat(depth)
        );
        same(body.as_bytes());
    }
    let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
    assert!(streamed(deep.as_bytes()).is_some());
    let deeper = format!(r#"{{"a":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
    assert!(streamed(deeper.as_bytes()).is_none());
}

#[test]
fn the_exact_key_is_the_tree_paths_key() {
    let body = br#"{"model":"m","messages":[{"content":"a\nb","role":"user"}],"temperature":0.2}"#;
    for inbound in [
        None,
        Some(Inbound::OpenAiChat),
        Some(Inbound::AnthropicMessages),
    ] {
        let input = KeyInput {
            scope: "team:a",
            kind: CallKind::Chat,
            inbound,
            model: "m",
            body,
        };
        let secret = [3; 32];
        assert_eq!(exact_key(&secret, &input), exact_key_tree(&secret, &input));
    }
    // A large body: the reused buffers grow, shrink back, and still agree.
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x\\n".repeat(600_000)
    );
    same(big.as_bytes());
    same(body);
}
