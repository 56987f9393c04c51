//! A validating walk over a request body's top-level members: each key as written and where
//! each value is, checking the JSON grammar of every value it steps over, without building
//! anything.
//!
//! The answer scanner in `usage` may skip values unchecked, because an answer is the
//! upstream's. A request body that is not JSON must be refused with a 400, so this walk checks
//! what serde's `IgnoredAny` checks: strings end, hold no control byte and only the escapes
//! JSON has (`\u` with four hex digits), numbers follow the grammar, literals are spelt out,
//! brackets pair up, members are `"key": value` separated by commas, nothing follows the
//! object. Strings are skipped with `memchr2` over their contents (32 bytes a step), which is
//! where a chat body's bytes are.
//!
//! `usage` reads an answer's usage object with it too (a few numbers, without serde).
//!
//! The caller has already checked that the whole body is UTF-8. Anything this walk does not
//! settle (escaped keys, nesting deeper than [`MAX_DEPTH`], any grammar error) gives `None`,
//! and the caller asks serde, whose verdict and error message stand; so on any body this walk
//! accepts, serde accepts it too (the tests hold it to that).

use std::ops::Range;

/// Deepest nesting walked (the top-level object is depth 1); deeper gives `None`. Below
/// serde_json's recursion limit (128).
pub(crate) const MAX_DEPTH: u32 = 64;

/// One top-level member.
pub(crate) struct Member<'a> {
    /// The key between its quotes (never escaped: an escaped key ends the walk).
    pub(crate) key: &'a [u8],
    /// Where the value is in the body, from its first byte to its last.
    pub(crate) value: Range<usize>,
    /// For a string value: whether it has a backslash.
    pub(crate) escaped: bool,
}

/// JSON's four whitespace bytes (not `is_ascii_whitespace`, which adds form feed).
#[inline]
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

#[inline]
pub(crate) fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while i < json.len() && is_ws(json[i]) {
        i += 1;
    }
    i
}

/// Whether `bytes` has a control byte (below 0x20), which a JSON string may not hold raw.
/// Eight bytes a step: a word has a byte below `n` (`n` ≤ 128) exactly when
/// `(x - 0x01…01 * n) & !x & 0x80…80` is not zero (the borrow can only mark bytes above one
/// that is below `n`, so the answer for the word is exact).
#[inline]
fn has_control(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |word: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        x.wrapping_sub(ONES * 0x20) & !x & HIGH
    };
    // Four words a step, one branch for the four (a prompt is mostly long strings).
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        if below(&b[..8]) | below(&b[8..16]) | below(&b[16..24]) | below(&b[24..]) != 0 {
            return true;
        }
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for word in &mut words {
        if below(word) != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| b < 0x20)
}

/// The index of the first byte at or after `i` that ends a run of a string's plain bytes:
/// a `"`, a `\`, or (with `controls`) a control byte; `None` when there is none.
///
/// The first 16 bytes are tested a word at a time, in line (keys, ids, model names are
/// short: a `memchr2` call costs more than the whole run there); longer runs go on in
/// [`string_stop_far`]. In a word, a byte equal to `b` is found by the zero-byte test of
/// `x ^ b…b` and a byte below 0x20 as in [`has_control`]; either test can mark a byte above
/// (after) a marked one, never one before, so the lowest marked byte is the first one that
/// stops the run.
#[inline(always)]
pub(crate) fn string_stop(json: &[u8], mut i: usize, controls: bool) -> Option<usize> {
    if let Some(at) = stop_in_two_words(json, &mut i, controls) {
        return Some(at);
    }
    string_stop_far(json, i, controls)
}

/// The stop in the two words at `*i`, if one holds it; else `*i` moves past the words
/// tested (a word that would run past the end is not).
#[inline(always)]
fn stop_in_two_words(json: &[u8], i: &mut usize, controls: bool) -> Option<usize> {
    for _ in 0..2 {
        let stops = word_stops(json, *i, controls)?;
        if stops != 0 {
            return Some(*i + (stops.trailing_zeros() / 8) as usize);
        }
        *i += 8;
    }
    None
}

/// The stop bytes of the word at `json[i..i + 8]`, one high bit each; `None` past the end.
#[inline(always)]
fn word_stops(json: &[u8], i: usize, controls: bool) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut w = [0u8; 8];
    w.copy_from_slice(json.get(i..i + 8)?);
    let x = u64::from_le_bytes(w);
    let mut stops = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
    if controls {
        stops |= x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    }
    Some(stops)
}

/// [`string_stop`] past its first 16 bytes: two more words, then `memchr2` (32 bytes a
/// step) and [`has_control`] over what it passed.
#[inline(never)]
fn string_stop_far(json: &[u8], mut i: usize, controls: bool) -> Option<usize> {
    if let Some(at) = stop_in_two_words(json, &mut i, controls) {
        return Some(at);
    }
    let run = json.get(i..)?;
    let at = memchr::memchr2(b'"', b'\\', run).unwrap_or(run.len());
    if controls && has_control(&run[..at]) {
        return run[..at].iter().position(|&b| b < 0x20).map(|c| i + c);
    }
    (at < run.len()).then_some(i + at)
}

/// `json[open]` is a `"`: the index after the closing quote, and whether a backslash was seen.
fn string(json: &[u8], open: usize) -> Option<(usize, bool)> {
    string_in_line(json, open)
}

/// [`string`] in line: for a member's key, where most strings are short and a call's saves
/// and restores cost as much as the key.
#[inline(always)]
fn string_in_line(json: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = string_stop(json, i, true)?;
        match json[i] {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {}
            // A control byte, which a string may not hold raw.
            _ => return None,
        }
        escaped = true;
        i += match *json.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
            b'u' if json.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
            _ => return None,
        };
    }
}

/// `json[start]` starts a number: the index after it, if it follows the grammar.
fn number(json: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while json.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start + usize::from(json[start] == b'-');
    i = match *json.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if json.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(json.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(json.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// One scalar (string, number, literal) at `json[start]`: the index after it.
#[inline]
fn scalar(json: &[u8], start: usize) -> Option<usize> {
    match *json.get(start)? {
        b'"' => Some(string(json, start)?.0),
        b'-' | b'0'..=b'9' => number(json, start),
        b't' => json[start..].starts_with(b"true").then_some(start + 4),
        b'f' => json[start..].starts_with(b"false").then_some(start + 5),
        b'n' => json[start..].starts_with(b"null").then_some(start + 4),
        _ => None,
    }
}

/// `json[i]` should open an object member: its key string, the colon and the white space
/// after it; the index of the member's value.
#[inline]
fn member_key(json: &[u8], i: usize) -> Option<usize> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let (end, _) = string(json, i)?;
    let colon = skip_ws(json, end);
    (json.get(colon) == Some(&b':')).then(|| skip_ws(json, colon + 1))
}

/// The value starting at `json[start]` (not white space), one level below the top: the index
/// after it, with every byte inside checked.
fn value(json: &[u8], start: usize) -> Option<usize> {
    // One bit per open bracket, 1 for an object; `level` of them open.
    let mut stack: u64 = 0;
    let mut level = 0u32;
    let mut i = start;
    loop {
        // A value starts at `i`.
        match *json.get(i)? {
            b @ (b'{' | b'[') => {
                level += 1;
                if level + 1 > MAX_DEPTH {
                    return None;
                }
                stack = stack << 1 | u64::from(b == b'{');
                i = skip_ws(json, i + 1);
                let close = if b == b'{' { b'}' } else { b']' };
                if json.get(i) != Some(&close) {
                    if b == b'{' {
                        i = member_key(json, i)?;
                    }
                    continue;
                }
                // An empty object or array: a whole value, closed below.
            }
            _ => {
                i = scalar(json, i)?;
                if level == 0 {
                    return Some(i);
                }
                i = skip_ws(json, i);
            }
        }
        // After a value inside `level` open brackets (or at an empty one's closing bracket):
        // close what ends here, then expect the next element.
        loop {
            let object = stack & 1 == 1;
            match *json.get(i)? {
                b'}' if object => {}
                b']' if !object => {}
                b',' => {
                    i = skip_ws(json, i + 1);
                    if object {
                        i = member_key(json, i)?;
                    }
                    break;
                }
                _ => return None,
            }
            stack >>= 1;
            level -= 1;
            i += 1;
            if level == 0 {
                return Some(i);
            }
            i = skip_ws(json, i);
        }
    }
}

/// Calls `each` on every top-level member of `json`, a JSON object, in order; stops with
/// `None` when `each` does, or when the body is not one this walk settles (see the module
/// comment).
pub(crate) fn members<'a>(
    json: &'a [u8],
    each: impl FnMut(Member<'a>) -> Option<()>,
) -> Option<()> {
    members_with(json, checked_value, each)
}

/// The values of `json`'s top-level members named `keys` (keys as written), in the order of
/// `keys`, each value checked; `None` when one of them is repeated or the walk stops.
pub(crate) fn named<'a, const N: usize>(
    json: &'a [u8],
    keys: [&[u8]; N],
) -> Option<[Option<&'a [u8]>; N]> {
    named_with(json, keys, checked_value)
}

/// [`named`], with `skip` stepping over each value (see [`members_with`]).
pub(crate) fn named_with<'a, const N: usize>(
    json: &'a [u8],
    keys: [&[u8]; N],
    skip: impl Fn(&'a [u8], usize) -> Option<(usize, bool)>,
) -> Option<[Option<&'a [u8]>; N]> {
    let mut found = [None; N];
    members_with(json, skip, |m| {
        if let Some(k) = keys.iter().position(|&key| key == m.key) {
            if found[k].is_some() {
                return None;
            }
            found[k] = Some(&json[m.value]);
        }
        Some(())
    })?;
    Some(found)
}

/// Whether a member [`named`] found is absent or `null`.
pub(crate) fn absent_or_null(v: Option<&[u8]>) -> bool {
    v.is_none_or(|v| v == b"null")
}

/// The value starting at `json[start]`, checked: the index after it, and for a string
/// whether it has a backslash.
#[inline]
fn checked_value(json: &[u8], start: usize) -> Option<(usize, bool)> {
    match json.get(start) {
        Some(b'"') => string(json, start),
        _ => Some((value(json, start)?, false)),
    }
}

/// [`members`], with `skip` stepping over each value (it gets the body and where the value
/// starts, and gives the index after it and, for a string, whether it has a backslash). The
/// object's own structure and its keys are always checked; an escaped key ends the walk.
/// The answer scanner in `usage` skips values without checking them.
pub(crate) fn members_with<'a>(
    json: &'a [u8],
    skip: impl Fn(&'a [u8], usize) -> Option<(usize, bool)>,
    mut each: impl FnMut(Member<'a>) -> Option<()>,
) -> Option<()> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(json, i + 1);
    if json.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if json.get(i) != Some(&b'"') {
                return None;
            }
            let (key_end, key_escaped) = string_in_line(json, i)?;
            if key_escaped {
                return None;
            }
            let key = &json[i + 1..key_end - 1];
            i = skip_ws(json, key_end);
            if json.get(i) != Some(&b':') {
                return None;
            }
            let start = skip_ws(json, i + 1);
            let (end, escaped) = skip(json, start)?;
            each(Member {
                key,
                value: start..end,
                escaped,
            })?;
            i = skip_ws(json, end);
            match json.get(i) {
                Some(b',') => i = skip_ws(json, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(json, i) == json.len()).then_some(())
}

/// Fills `slot` with `value` once: `None` (leave it to serde) when the field is repeated
/// (serde refuses a repeated field) or `value` is `None`.
pub(crate) fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

/// A JSON value read as serde reads an `Option<u64>`: plain digits by hand, anything else by
/// serde; `None` when serde refuses it.
pub(crate) fn count(v: &[u8]) -> Option<Option<u64>> {
    let plain = !v.is_empty()
        && v.len() <= 19
        && v.iter().all(u8::is_ascii_digit)
        && (v.len() == 1 || v[0] != b'0');
    if plain {
        return Some(Some(
            v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
        ));
    }
    serde_json::from_slice(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(json: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        members(json.as_bytes(), |m| {
            out.push((
                String::from_utf8_lossy(m.key).into_owned(),
                json[m.value].to_owned(),
            ));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn walks_top_level_members_and_checks_what_it_skips() {
        let got = walk(
            " { \"a\" : {\"b\":[1,-0.5e+3,\"]}\\\"\\u00e9\",{},[],true,false,null]} ,\"c\":\"x\\n\" ,\"d\":[ ],\"e\":{ }}\n",
        )
        .unwrap();
        let want = [
            (
                "a",
                r#"{"b":[1,-0.5e+3,"]}\"\u00e9",{},[],true,false,null]}"#,
            ),
            ("c", r#""x\n""#),
            ("d", "[ ]"),
            ("e", "{ }"),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str()), w);
        }
        assert_eq!(walk("{}").unwrap().len(), 0);
    }

    #[test]
    fn refuses_what_serde_refuses_and_what_it_leaves_to_serde() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\":[1,]}",
            "{\"a\":{\"b\":1,}}",
            "{\"a\":[,1]}",
            "{\"a\" 1}",
            "{\"a\":[}]}",
            "{\"a\":{]}",
            "{\"a\":{\"b\"}}",
            "{\"a\":{1:2}}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"x\\",
            "{\"a\":\"x\\q\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"new\nline\"}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":truex}",
            "{\"a\":nul}",
            "{\"a\":[1 2]}",
            "{\"a\":1} x",
            "{\"a\":}",
            "{a:1}",
            "{\"a\\u0062\":1}",
        ] {
            assert!(walk(bad).is_none(), "{bad:?}");
        }
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n), "]".repeat(n));
        assert!(walk(&deep(MAX_DEPTH as usize - 1)).is_some());
        assert!(walk(&deep(MAX_DEPTH as usize)).is_none());
    }

    #[test]
    fn finds_control_bytes_at_every_place() {
        for len in 0..80 {
            let clean: Vec<u8> = (0..len).map(|i| 0x20 + (i * 37 % 224) as u8).collect();
            assert!(!has_control(&clean), "{len}");
            for at in 0..len {
                for ctl in [0u8, 0x01, 0x0a, 0x1f] {
                    let mut dirty = clean.clone();
                    dirty[at] = ctl;
                    assert!(has_control(&dirty), "{len} {at} {ctl}");
                }
            }
        }
        // Bytes at 0x20 and above, 0x7f and 0x80..=0xff included, are not control bytes here.
        assert!(!has_control(&[
            0x20, 0x7f, 0x80, 0xff, 0x21, 0x20, 0xc3, 0xa9, 0x20
        ]));
    }

    #[test]
    fn string_stops_where_a_byte_by_byte_search_stops() {
        let naive = |json: &[u8], from: usize, controls: bool| {
            json.iter()
                .skip(from)
                .position(|&b| b == b'"' || b == b'\\' || (controls && b < 0x20))
                .map(|p| from + p)
        };
        let fillers = [b'a', b' ', 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d];
        for len in 0..80 {
            for at in 0..=len {
                for stop in [b'"', b'\\', 0x00, 0x01, 0x1f, b'x'] {
                    for (f, &fill) in fillers.iter().enumerate() {
                        let mut json = vec![fill; len];
                        if at < len {
                            json[at] = stop;
                            // Another stop further on must not be taken first.
                            if at + 3 < len {
                                json[at + 3] = [b'"', b'\\', 0x02][f % 3];
                            }
                        }
                        for from in [0, 1, 7, 9].into_iter().filter(|&i| i <= len) {
                            for controls in [false, true] {
                                assert_eq!(
                                    string_stop(&json, from, controls),
                                    naive(&json, from, controls),
                                    "{json:?} from {from} controls {controls}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn counts_as_serde_reads_them() {
        for v in [
            "0",
            "7",
            "256",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "01",
            "-0",
            "-1",
            "1.0",
            "1e2",
            "null",
            "\"7\"",
            "true",
            " 7",
            "",
        ] {
            let serde: Option<Option<u64>> = serde_json::from_str(v).ok();
            assert_eq!(count(v.as_bytes()), serde, "{v:?}");
        }
    }
}
