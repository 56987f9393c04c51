//! Input mutations: byte-level ones for every target (flips, random bytes, insertions,
//! deletions, duplications, truncations, splices, dictionary tokens, interesting numbers) and
//! structure-aware ones chosen by the target's [`Shape`]: JSON values, HTTP head lines, SSE
//! events with JSON data, chunked framing.

use serde_json::{Map, Value};

use crate::rng::Rng;

/// What a target's inputs look like, to pick structure-aware mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An HTTP/1 head: CRLF-separated lines.
    HttpHead,
    /// A chunked body.
    Chunked,
    /// One JSON document.
    Json,
    /// An SSE stream whose `data:` lines hold JSON.
    Sse,
}

/// Largest input the engine builds.
pub const MAX_INPUT: usize = 64 * 1024;

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "255",
    "256",
    "65535",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "1e309",
    "-0",
    "0.5",
    "1E2",
    "fffffffffffffffff",
    "FFFFFFFF",
    "00000000000000001",
];

const BYTES: &[u8] = b"\r\n \t:;,\"{}[]\\0123456789abcdefABCDEF=-+.?/\x00\x7f\x80\xff";

/// Mutates `data` in place with one to a few stacked mutations; `other` is another corpus
/// entry for splicing, `dict` the target's tokens.
pub fn mutate(data: &mut Vec<u8>, other: &[u8], shape: Shape, dict: &[&[u8]], rng: &mut Rng) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if rng.one_in(3) {
            structured(data, other, shape, dict, rng);
        } else {
            bytewise(data, other, dict, rng);
        }
    }
    data.truncate(MAX_INPUT);
}

fn bytewise(data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]], rng: &mut Rng) {
    let len = data.len();
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = if rng.one_in(2) {
                *rng.pick(BYTES)
            } else {
                rng.byte()
            };
        }
        2 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(16.min(len - start))).min(len);
            data.drain(start..end);
        }
        3 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.one_in(2) {
                        *rng.pick(BYTES)
                    } else {
                        rng.byte()
                    }
                })
                .collect();
            data.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = start + 1 + rng.below((len - start).min(64));
            let copy = data[start..end].to_vec();
            let at = rng.below(len + 1);
            let max_times = if rng.one_in(8) { 64 } else { 2 };
            let times = 1 + rng.below(max_times);
            for _ in 0..times {
                data.splice(at..at, copy.iter().copied());
            }
        }
        5 if len > 0 => data.truncate(rng.below(len)),
        6 if !other.is_empty() => {
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 if !dict.is_empty() => {
            let token = rng.pick(dict);
            let at = rng.below(len + 1);
            data.splice(at..at, token.iter().copied());
        }
        8 if !dict.is_empty() && len > 0 => {
            let token = rng.pick(dict);
            let start = rng.below(len);
            let end = (start + token.len()).min(len);
            data.splice(start..end, token.iter().copied());
        }
        9 => replace_number(data, rng),
        10 if len > 1 => {
            let a = rng.below(len);
            let b = rng.below(len);
            data.swap(a, b);
        }
        _ => {
            let at = rng.below(len + 1);
            let b = rng.byte();
            data.insert(at, b);
        }
    }
}

/// Replaces a run of digits (or inserts at random) with an interesting number.
fn replace_number(data: &mut Vec<u8>, rng: &mut Rng) {
    let n = rng.pick(INTERESTING_NUMBERS).as_bytes();
    let digits: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_hexdigit() && (i == 0 || !data[i - 1].is_ascii_hexdigit()))
        .collect();
    if digits.is_empty() {
        let at = rng.below(data.len() + 1);
        data.splice(at..at, n.iter().copied());
        return;
    }
    let start = *rng.pick(&digits);
    let mut end = start;
    while end < data.len() && data[end].is_ascii_hexdigit() {
        end += 1;
    }
    data.splice(start..end, n.iter().copied());
}

fn structured(data: &mut Vec<u8>, other: &[u8], shape: Shape, dict: &[&[u8]], rng: &mut Rng) {
    match shape {
        Shape::Json => {
            if let Some(out) = mutate_json_doc(data, rng) {
                *data = out;
            } else {
                bytewise(data, other, dict, rng);
            }
        }
        Shape::HttpHead => lines(data, b"\r\n", dict, rng),
        Shape::Sse => {
            if rng.one_in(2) {
                sse_json(data, rng);
            } else {
                lines(data, b"\n", dict, rng);
            }
        }
        Shape::Chunked => {
            if rng.one_in(3) {
                *data = chunked_from_scratch(data, rng);
            } else {
                lines(data, b"\r\n", dict, rng);
            }
        }
    }
}

fn mutate_json_doc(data: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    let n = 1 + rng.below(3);
    for _ in 0..n {
        mutate_value(&mut v, rng, 0);
    }
    let out = if rng.one_in(4) {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    };
    out.ok()
}

const KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "include_usage",
    "usage",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "tool_calls",
    "tools",
    "tool_choice",
    "function",
    "arguments",
    "name",
    "id",
    "index",
    "choices",
    "delta",
    "finish_reason",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "system",
    "candidates",
    "parts",
    "functionCall",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "prompt_tokens",
    "completion_tokens",
    "image_url",
    "url",
    "response_format",
    "json_schema",
    "error",
    "message",
    "content_block",
    "tool_use",
    "input",
    "partial_json",
    "stop_reason",
    "thinking",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => match rng.below(4) {
            0 => Value::from(rng.next_u64()),
            1 => Value::from(-(rng.below(1000) as i64)),
            2 => Value::from(rng.below(10) as u64),
            _ => Value::from(f64::from(rng.below(1000) as u32) / 7.0),
        },
        3 => Value::String((*rng.pick(KEYS)).to_owned()),
        4 => Value::String(
            [
                "",
                "\u{0}",
                "é☃\u{1F600}",
                "[DONE]",
                "\"}",
                "data: x\n\n",
                "a\\b",
            ][rng.below(7)]
            .to_owned(),
        ),
        5 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(3) {
                m.insert((*rng.pick(KEYS)).to_owned(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Mutates one node somewhere in `v`.
fn mutate_value(v: &mut Value, rng: &mut Rng, depth: usize) {
    // Descend into a child most of the time, so deep fields get mutated too.
    let descend = depth < 12 && rng.below(4) != 0;
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let key = m.keys().nth(rng.below(m.len())).cloned();
            if let Some(child) = key.and_then(|k| m.get_mut(&k)) {
                mutate_value(child, rng, depth + 1);
            }
            return;
        }
        Value::Array(a) if descend && !a.is_empty() => {
            let i = rng.below(a.len());
            mutate_value(&mut a[i], rng, depth + 1);
            return;
        }
        _ => {}
    }
    let k = rng.below(6);
    if k == 2 && v.is_number() {
        let n: &&str = rng.pick(INTERESTING_NUMBERS);
        if let Ok(x) = serde_json::from_str::<Value>(n) {
            *v = x;
        }
        return;
    }
    match (v, k) {
        (Value::Object(m), 0) if !m.is_empty() => {
            let key = m.keys().nth(rng.below(m.len())).cloned();
            if let Some(k) = key {
                m.remove(&k);
            }
        }
        (Value::Object(m), 1) => {
            m.insert((*rng.pick(KEYS)).to_owned(), random_value(rng, depth));
        }
        (Value::Array(a), 0) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.remove(i);
        }
        (Value::Array(a), 1) if !a.is_empty() => {
            let i = rng.below(a.len());
            let copy = a[i].clone();
            a.insert(i, copy);
        }
        (v, 3) => {
            let inner = std::mem::take(v);
            *v = if rng.one_in(2) {
                Value::Array(vec![inner])
            } else {
                let mut m = Map::new();
                m.insert((*rng.pick(KEYS)).to_owned(), inner);
                Value::Object(m)
            };
        }
        (v, _) => *v = random_value(rng, depth),
    }
}

/// Line-level mutations: delete, duplicate, swap, insert a dictionary line, change the line
/// ending, fold (leading space), change case.
fn lines(data: &mut Vec<u8>, sep: &[u8], dict: &[&[u8]], rng: &mut Rng) {
    let mut ls: Vec<Vec<u8>> = split_keep(data, sep);
    if ls.is_empty() {
        ls.push(Vec::new());
    }
    let i = rng.below(ls.len());
    match rng.below(8) {
        0 if ls.len() > 1 => {
            ls.remove(i);
        }
        1 => {
            let copy = ls[i].clone();
            ls.insert(i, copy);
        }
        2 => {
            let j = rng.below(ls.len());
            ls.swap(i, j);
        }
        3 if !dict.is_empty() => {
            let mut line = rng.pick(dict).to_vec();
            line.extend_from_slice(sep);
            ls.insert(i, line);
        }
        4 => {
            // Change the line ending of this line: CRLF, LF, CR, or none.
            let body_len = line_body_len(&ls[i]);
            ls[i].truncate(body_len);
            const ENDINGS: [&[u8]; 5] = [b"\r\n", b"\n", b"\r", b"", b"\n\n"];
            let ending: &&[u8] = rng.pick(&ENDINGS);
            ls[i].extend_from_slice(ending);
        }
        5 => ls[i].insert(0, if rng.one_in(2) { b' ' } else { b'\t' }),
        6 => {
            for b in ls[i].iter_mut() {
                *b = if rng.one_in(2) {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                };
            }
        }
        _ => {
            // Split this line in two at a random point.
            let at = rng.below(ls[i].len() + 1);
            let tail = ls[i].split_off(at);
            ls[i].extend_from_slice(sep);
            ls.insert(i + 1, tail);
        }
    }
    *data = ls.concat();
}

fn line_body_len(line: &[u8]) -> usize {
    let mut n = line.len();
    while n > 0 && (line[n - 1] == b'\n' || line[n - 1] == b'\r') {
        n -= 1;
    }
    n
}

/// Splits after each `sep`, keeping it on its line.
fn split_keep(data: &[u8], sep: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + sep.len() <= data.len() {
        if &data[i..i + sep.len()] == sep {
            out.push(data[start..i + sep.len()].to_vec());
            i += sep.len();
            start = i;
        } else {
            i += 1;
        }
    }
    if start < data.len() {
        out.push(data[start..].to_vec());
    }
    out
}

/// Mutates the JSON of one `data:` line of an SSE stream.
fn sse_json(data: &mut Vec<u8>, rng: &mut Rng) {
    let mut ls = split_keep(data, b"\n");
    let candidates: Vec<usize> = (0..ls.len())
        .filter(|&i| ls[i].starts_with(b"data:"))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let i = *rng.pick(&candidates);
    let body_len = line_body_len(&ls[i]);
    let ending = ls[i][body_len..].to_vec();
    let payload = ls[i][5..body_len].trim_ascii_start().to_vec();
    let Some(mut json) = mutate_json_doc(&payload, rng) else {
        return;
    };
    // Pretty JSON would span lines; SSE data stays on one.
    json.retain(|b| *b != b'\n');
    let mut line = b"data: ".to_vec();
    line.extend_from_slice(&json);
    line.extend_from_slice(&ending);
    ls[i] = line;
    *data = ls.concat();
}

/// A fresh chunked body: random chunk sizes (upper/lower hex, leading zeros), extensions, a
/// lying size now and then, trailers; body bytes taken from the old input.
fn chunked_from_scratch(old: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let mut src = old.iter().copied().cycle();
    for _ in 0..rng.below(6) {
        let n = if rng.one_in(4) {
            rng.below(600)
        } else {
            1 + rng.below(20)
        };
        let mut size = format!("{n:x}");
        if rng.one_in(4) {
            size = size.to_uppercase();
        }
        if rng.one_in(6) {
            size.insert_str(0, "000");
        }
        out.extend_from_slice(size.as_bytes());
        if rng.one_in(5) {
            out.extend_from_slice(b";ext=\"v\"");
        }
        out.extend_from_slice(b"\r\n");
        let actual = if rng.one_in(10) { n + rng.below(3) } else { n };
        out.extend((0..actual).map(|_| src.next().unwrap_or(b'x')));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if rng.one_in(3) {
        out.extend_from_slice(b"X-Trailer: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if rng.one_in(4) {
        out.extend_from_slice(b"GET / HTTP/1.1\r\n");
    }
    out
}
