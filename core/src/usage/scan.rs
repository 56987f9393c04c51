//! A structural walk over a JSON object's top-level members: each key as written and each
//! value's bytes, without building anything.
//!
//! Values are skipped, not parsed: a string with `memchr2` over its contents (to its closing
//! quote, stepping over escapes), an object or array by counting brackets while skipping the
//! strings inside, a number or literal up to its delimiter. So a 1 KB answer costs a few hundred
//! instructions instead of a serde parse of every value; the caller then parses only the few
//! values it wants (a `usage` object) with serde.
//!
//! The object itself is walked by the request body's walk (`inspect::walk::members_with`:
//! members are `"key": value` separated by commas, keys end and have no escapes, nothing
//! follows the object); only the values are skipped here, checking structure, not grammar:
//! bracket pairs match, strings end. Numbers, literals and escapes inside skipped values are
//! not checked. A body it cannot walk, or nested deeper than [`MAX_DEPTH`], gives `None` and
//! the caller falls back to serde, which also decides every odd case (the caller falls back
//! for those too), so the answer on any valid JSON is serde's.

use crate::inspect::walk::{self, is_ws, MAX_DEPTH};

/// `json[open]` is a `"`: the index after the closing quote, and whether a backslash was seen.
/// In line (most strings here are short: a call's saves and restores cost as much as the
/// string).
#[inline(always)]
fn skip_string(json: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = walk::string_stop(json, i, false)?;
        if json[i] == b'"' {
            return Some((i + 1, escaped));
        }
        escaped = true;
        // The escaped byte, whatever it is (`\"` included), is part of the string.
        i += 2;
    }
}

/// `json[open]` is `{` or `[` at nesting depth `depth` (its own): the index after its match.
fn skip_nested(json: &[u8], open: usize, depth: u32) -> Option<usize> {
    // One bit per open bracket below this one, 1 for an object: at most MAX_DEPTH levels.
    let mut stack: u64 = u64::from(json[open] == b'{');
    let mut level = 1u32;
    let mut i = open + 1;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i = skip_string(json, i)?.0;
                continue;
            }
            b @ (b'{' | b'[') => {
                level += 1;
                if depth + level > MAX_DEPTH + 1 {
                    return None;
                }
                stack = stack << 1 | u64::from(b == b'{');
            }
            b @ (b'}' | b']') => {
                if (stack & 1 == 1) != (b == b'}') {
                    return None;
                }
                stack >>= 1;
                level -= 1;
                if level == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value starting at `json[start]` (not whitespace), one level below the top: the index
/// after it, and for a string whether it has a backslash.
#[inline]
fn skip_value(json: &[u8], start: usize) -> Option<(usize, bool)> {
    match *json.get(start)? {
        b'"' => skip_string(json, start),
        b'{' | b'[' => Some((skip_nested(json, start, 2)?, false)),
        b',' | b'}' | b']' | b':' => None,
        _ => {
            // A number or a literal: up to the next delimiter.
            let len = json[start..]
                .iter()
                .position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b))
                .unwrap_or(json.len() - start);
            Some((start + len, false))
        }
    }
}

/// The values of `json`'s top-level `choices`, `usage`, `response` and `model` members, in
/// that order, skipped unchecked: [`walk::named_with`] with this scanner's skipping and the
/// four keys matched as literals (a length switch, no slice comparison per key and name).
/// `None` when one of them is repeated or the walk stops.
pub(super) fn probe_members(json: &[u8]) -> Option<[Option<&[u8]>; 4]> {
    let mut found = [None; 4];
    walk::members_with(json, skip_value, |m| {
        let k = match m.key {
            b"choices" => 0,
            b"usage" => 1,
            b"response" => 2,
            b"model" => 3,
            _ => return Some(()),
        };
        walk::once(&mut found[k], Some(&json[m.value]))
    })?;
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(json: &[u8]) -> Option<Vec<(String, bool, String)>> {
        let mut out = Vec::new();
        walk::members_with(json, skip_value, |m| {
            out.push((
                String::from_utf8_lossy(m.key).into_owned(),
                m.escaped,
                String::from_utf8_lossy(&json[m.value]).into_owned(),
            ));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn walks_top_level_members_only() {
        let got = walk(
            br#" { "a" : {"usage":{"x":[1,"]}"]}} ,"b":"s\\\"}" ,"c":-1.5e3,"d":[[],{}],"e":null}
"#,
        )
        .unwrap();
        let want = [
            ("a", false, r#"{"usage":{"x":[1,"]}"]}}"#),
            ("b", true, r#""s\\\"}""#),
            ("c", false, "-1.5e3"),
            ("d", false, "[[],{}]"),
            ("e", false, "null"),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1, g.2.as_str()), w);
        }
        assert_eq!(walk(b"{}").unwrap().len(), 0);
    }

    /// The probe's members are `walk::named_with`'s for the same keys, whatever the body.
    #[test]
    fn probe_members_are_named_withs() {
        let keys: [&[u8]; 4] = [b"choices", b"usage", b"response", b"model"];
        for body in [
            &br#"{"id":"x","model":"m","choices":[{"a":"}"}],"usage":{"total_tokens":3}}"#[..],
            br#"{"response":{"usage":null},"model":null,"modelx":1,"usag":2}"#,
            br#"{"usage":{},"usage":{}}"#,
            br#"{"model":"a","choices":[],"model":"b"}"#,
            br#"{"choices":[1,2],"usage":null,"response":"r","model":"m"}"#,
            br#"{"mode\u006c":"m"}"#,
            br#"{}"#,
            br#"{"a":1,}"#,
            b"[]",
        ] {
            assert_eq!(
                probe_members(body),
                walk::named_with(body, keys, skip_value),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_walk() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":[}]}",
            b"{\"a\":{]}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":\"x\\",
            b"{\"a\":1} x",
            b"{\"a\":}",
            b"{a:1}",
            // An escaped key: left to serde.
            b"{\"b\\\"usage\":1}",
        ] {
            assert!(walk(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(walk(deep(MAX_DEPTH as usize - 1).as_bytes()).is_some());
        assert!(walk(deep(MAX_DEPTH as usize).as_bytes()).is_none());
    }
}
