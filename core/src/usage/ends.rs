//! A whole answer's top-level members read from both ends: the ones before its first array
//! value from the front, the ones after its last array value from the back, and the bytes
//! between (the choices, content, output or data: nearly all of the body) only searched for
//! what could change the answer, never walked.
//!
//! Providers put the big array in the middle and `usage` last (OpenAI, Anthropic, the
//! Responses API, embeddings), so a 1 KB answer costs a few hundred instructions here where
//! the member walk of `scan` steps over every string of the choices.
//!
//! What it gives is what [`scan::named`](super::scan::named) gives on valid JSON, or `None`
//! (the caller then walks the whole body):
//! - From the back, a value is found by matching brackets backwards; a string is ended by the
//!   nearest quote before it that no backslash precedes (inside a valid string every quote is
//!   escaped), and any quote a backslash precedes ends the attempt. So on valid JSON each
//!   member found from the back is a real top-level member.
//! - The middle is refused when it might hold one of the probe's keys at the top level (which
//!   serde would read, or refuse as a duplicate): a quote followed by one of their names and
//!   a quote, or a `\u00XX` escape of an ASCII letter (an escaped key that reads as one of
//!   them). It is also refused when it opens so many brackets that it could nest deeper than
//!   the walk goes ([`MAX_DEPTH`]), where serde may stop.
//! - The array value the front stops at is given from its `[` to the end of the body: the
//!   caller reads only its first bytes (whether it is an array, whether it is empty).

use super::scan::{skip_string, skip_value};
use crate::inspect::walk::{is_ws, skip_ws, MAX_DEPTH};

/// The probe's keys, in the order [`named_ends`] gives their values.
pub(super) const KEYS: [&[u8]; 4] = [b"choices", b"usage", b"response", b"model"];

/// The values of the top-level members named [`KEYS`] (see the module comment); `None` when
/// this reading does not settle the body.
pub(super) fn named_ends(json: &[u8]) -> Option<[Option<&[u8]>; 4]> {
    let mut found: [Option<&[u8]>; 4] = [None; 4];
    // The front: members up to the first whose value is an array.
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(json, i + 1);
    let middle_start = loop {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = skip_string(json, i)?;
        if escaped {
            return None;
        }
        let key = &json[i + 1..key_end - 1];
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(json, i + 1);
        if json.get(start) == Some(&b'[') {
            record(&mut found, key, &json[start..])?;
            break start + 1;
        }
        let (end, _) = skip_value(json, start)?;
        record(&mut found, key, &json[start..end])?;
        i = skip_ws(json, end);
        match json.get(i) {
            Some(b',') => i = skip_ws(json, i + 1),
            // No array at the top level: the front read it all (the member walk would have
            // done the same work).
            Some(b'}') => return (skip_ws(json, i + 1) == json.len()).then_some(found),
            _ => return None,
        }
    };
    // The back: members after the last array value.
    let mut j = back_ws(json, json.len());
    if j == 0 || json[j - 1] != b'}' {
        return None;
    }
    j -= 1;
    let middle_end = loop {
        let end = back_ws(json, j);
        let last = *json.get(end.checked_sub(1)?)?;
        if last == b']' {
            break end;
        }
        let start = match last {
            b'}' => back_nested(json, end - 1)?,
            b'"' => back_string(json, end - 1)?,
            _ => back_scalar(json, end),
        };
        if start == end {
            return None;
        }
        let colon = back_ws(json, start);
        if colon == 0 || json[colon - 1] != b':' {
            return None;
        }
        let key_close = back_ws(json, colon - 1);
        if key_close == 0 || json[key_close - 1] != b'"' {
            return None;
        }
        let key_open = back_string(json, key_close - 1)?;
        let key = &json[key_open + 1..key_close - 1];
        if key.contains(&b'\\') {
            return None;
        }
        record(&mut found, key, &json[start..end])?;
        let comma = back_ws(json, key_open);
        if comma == 0 || json[comma - 1] != b',' {
            return None;
        }
        j = comma - 1;
    };
    if middle_start > middle_end || !quiet_middle(&json[middle_start..middle_end]) {
        return None;
    }
    Some(found)
}

/// Keeps `value` when `key` is one of [`KEYS`]; `None` when it was found before (serde
/// refuses a repeated field).
fn record<'a>(found: &mut [Option<&'a [u8]>; 4], key: &[u8], value: &'a [u8]) -> Option<()> {
    if let Some(k) = KEYS.iter().position(|&name| name == key) {
        if found[k].is_some() {
            return None;
        }
        found[k] = Some(value);
    }
    Some(())
}

/// The index after the white space that ends at `end` (the first white-space byte of it).
fn back_ws(json: &[u8], mut end: usize) -> usize {
    while end > 0 && is_ws(json[end - 1]) {
        end -= 1;
    }
    end
}

/// `json[close]` is a string's closing quote: the index of its opening quote, the nearest
/// quote before it, which no backslash may precede (`None` then: it may be escaped).
fn back_string(json: &[u8], close: usize) -> Option<usize> {
    let open = memchr::memrchr(b'"', &json[..close])?;
    if open > 0 && json[open - 1] == b'\\' {
        return None;
    }
    Some(open)
}

/// `json[close]` is `}`: the index of the `{` or `[` that opens the value it closes, the
/// strings inside stepped over backwards.
fn back_nested(json: &[u8], close: usize) -> Option<usize> {
    let mut level = 0u32;
    let mut i = close + 1;
    while i > 0 {
        i -= 1;
        match json[i] {
            b'"' => i = back_string(json, i)?,
            b'}' | b']' => {
                level += 1;
                if level + 1 > MAX_DEPTH {
                    return None;
                }
            }
            b'{' | b'[' => {
                level -= 1;
                if level == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A number or literal ending at `end`: where it starts (after the delimiter before it).
fn back_scalar(json: &[u8], end: usize) -> usize {
    json[..end]
        .iter()
        .rposition(|&b| matches!(b, b',' | b':' | b'{' | b'[') || is_ws(b))
        .map_or(0, |p| p + 1)
}

/// Whether the middle bytes cannot hide a probe key at the top level, nor nest deeper than
/// the walk goes (see the module comment).
fn quiet_middle(middle: &[u8]) -> bool {
    // Two levels are already open (the body and the array the middle starts in).
    if memchr::memchr2_iter(b'{', b'[', middle).count() + 2 >= MAX_DEPTH as usize {
        return false;
    }
    for at in memchr::memchr2_iter(b'"', b'\\', middle) {
        let rest = &middle[at + 1..];
        if middle[at] == b'"' {
            let named = KEYS.iter().any(|name| {
                rest.strip_prefix(*name)
                    .is_some_and(|r| r.first() == Some(&b'"'))
            });
            if named {
                return false;
            }
        } else if let Some(hex) = rest.strip_prefix(b"u00").and_then(|r| r.get(..2)) {
            // `\u00XX`: refused when it spells a letter of a probe key's name.
            let byte = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if byte.is_some_and(|b| b.is_ascii_alphabetic()) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(json: &str) -> (Option<[Option<&[u8]>; 4]>, Option<[Option<&[u8]>; 4]>) {
        (
            named_ends(json.as_bytes()),
            super::super::scan::named(json.as_bytes(), KEYS),
        )
    }

    #[test]
    fn reads_the_ends_of_providers_answers() {
        let openai = r#"{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\":{} \\ b"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":4}},"system_fingerprint":"fp_1"}"#;
        let (ends, walk) = both(openai);
        let ends = ends.expect("read from the ends");
        let walk = walk.unwrap();
        assert_eq!(ends[1], walk[1]);
        assert_eq!(ends[3], walk[3]);
        assert_eq!(ends[2], None);
        // The array it stopped at: from its `[` on.
        assert!(ends[0].unwrap().starts_with(b"[{\"index\""));
        let embeddings = r#" {"object":"list","data":[{"embedding":[0.1,-2e-3]}] , "model" : "e", "usage":{"prompt_tokens":8,"total_tokens":8}}
"#;
        let (ends, walk) = both(embeddings);
        assert_eq!(ends.expect("read"), walk.unwrap());
        let empty = r#"{"choices":[],"usage":{"prompt_tokens":1}}"#;
        let ends = named_ends(empty.as_bytes()).expect("read");
        assert!(ends[0].unwrap().starts_with(b"[]"));
        // No array: read from the front alone.
        let flat = r#"{"model":"m","usage":{"input_tokens":2}}"#;
        let (ends, walk) = both(flat);
        assert_eq!(ends.expect("read"), walk.unwrap());
    }

    #[test]
    fn leaves_to_the_walk_what_the_middle_may_change() {
        for body in [
            // A probe key after the first array, before the last one.
            r#"{"choices":[1],"model":"m","x":[2],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[1],"usage":{"prompt_tokens":9},"x":[2],"usage":{"prompt_tokens":1}}"#,
            // An escaped key that reads as one.
            r#"{"choices":[1],"mod\u0065l":"m","x":[2],"usage":{"prompt_tokens":1}}"#,
            // A repeated key at the ends.
            r#"{"model":"a","choices":[1],"model":"b","usage":{"prompt_tokens":1}}"#,
            // A quote a backslash precedes, from the back.
            r#"{"choices":[1],"usage":{"prompt_tokens":1},"s":"a\"b"}"#,
            // An escaped key at the back.
            r#"{"choices":[1],"usage":{"prompt_tokens":1},"k\n":1}"#,
            // Not an object, or not ended.
            r#"[{"usage":{}}]"#,
            r#"{"choices":[1],"usage":{"prompt_tokens":1}"#,
        ] {
            assert!(named_ends(body.as_bytes()).is_none(), "{body}");
        }
        // Deep nesting in the middle is left to the walk.
        let deep = format!(
            r#"{{"choices":[{}{}],"usage":{{"prompt_tokens":1}}}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        assert!(named_ends(deep.as_bytes()).is_none());
        // Non-ASCII escapes and quoted names in content do not matter.
        let fine = r#"{"choices":[{"c":"\u00e9 \u4f60 say \"usage\" and model"}],"usage":{"prompt_tokens":1}}"#;
        assert!(named_ends(fine.as_bytes()).is_some());
    }

    #[test]
    fn broken_bytes_do_not_panic() {
        for body in [
            "",
            "{",
            "}",
            "{}",
            "{\"a\":[",
            "{\"a\":[}",
            "]}",
            "{\"a\":[]\"}",
            "{\"a\":[]:1}",
            "{\"a\":[],\"b\"}",
            "{\"a\":[],:1}",
            "{\"a\":[],\"\":1}",
            "{\"a\":[],\"b\":}",
            "{\"a\":[],\"b\":\"}",
            "{\"a\":[],\"b\":{]}",
            "{\"a\":[\"],\"b\":1}",
        ] {
            let _ = named_ends(body.as_bytes());
        }
    }
}
