//! The exact key of a request: a keyed BLAKE3 hash of who may see the entry, the kind of call,
//! the public model and the request in the pivot (OpenAI chat) shape, normalised for meaning.
//!
//! Normalisation: an Anthropic Messages request is first translated to the chat shape (so both
//! dialects share entries); then the JSON is written back canonically — object keys sorted,
//! no whitespace — without the fields that do not change the answer (`user`, `stream`,
//! `stream_options`, `metadata`, `model`: the public model is keyed on its own). A request
//! asking for more than one choice (`n > 1`) is not keyed: it is never cached.
//!
//! Two writers give the same bytes: a request already in the chat shape is written by
//! [`super::canonical`] straight from its bytes (no JSON tree: about half the time of the
//! tree on a 1 KB body, two thirds on 100 KB, see `cache_key` in `bench/benches/cache.rs`); an Anthropic request is translated
//! first, then parsed into a `serde_json::Value` and written by `write_request` (the tree
//! path, which the semantic query also uses, as it needs the messages as a map).
//!
//! Why BLAKE3, keyed with a per-process random key: the key is a cryptographic PRF of the
//! request, so no tenant can craft two prompts that collide (and read or poison another
//! prompt's entry), and its speed (GB/s) leaves the cost of a key to the JSON normalisation.
//! xxh3 is faster on small inputs but not collision-resistant against chosen inputs.

use std::cell::RefCell;

use serde_json::{Map, Value};

use super::canonical::Canonical;
use crate::dialect::{self, Dialect, Inbound, RequestOptions};

thread_local! {
    /// Each thread's canonical writer: its buffers are reused by every key it computes.
    static CANONICAL: RefCell<Canonical> = RefCell::new(Canonical::default());
}

/// Top-level request fields that do not change the answer.
const IGNORED: [&str; 5] = ["user", "stream", "stream_options", "metadata", "model"];

/// The kind of call an entry answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// A chat completion (OpenAI `/chat/completions` or Anthropic `/messages`).
    Chat,
    /// Embeddings (whole answers only).
    Embeddings,
    /// A legacy text completion (OpenAI `/completions`), stored in its own shape.
    Completion,
}

impl CallKind {
    /// Its name in the key and in stats.
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Chat => "chat",
            CallKind::Embeddings => "embeddings",
            CallKind::Completion => "completion",
        }
    }
}

/// What a key is computed from.
#[derive(Clone, Copy, Debug)]
pub struct KeyInput<'a> {
    /// The tenant scope (`team:…`, `key:…`, `global`, `anonymous`): entries never cross it.
    pub scope: &'a str,
    /// Which kind of call.
    pub kind: CallKind,
    /// The API the client called (Anthropic requests are keyed in the chat shape).
    pub inbound: Option<Inbound>,
    /// The public model name the client asked for.
    pub model: &'a str,
    /// The client's body.
    pub body: &'a [u8],
}

/// A request's key: its hash, and the slots its model and scope fall in (for clearing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The keyed hash of everything that decides the answer.
    pub hash: [u8; 32],
    /// Slot of the public model name (see [`slot`]).
    pub model_slot: u8,
    /// Slot of the scope.
    pub scope_slot: u8,
}

/// The request in the pivot shape, as a JSON object: an Anthropic Messages request translated
/// to chat. `None` when the body is not a JSON object, or asks for `n > 1`.
pub(crate) fn pivot_object(input: &KeyInput<'_>) -> Option<Map<String, Value>> {
    let value: Value = match input.inbound {
        Some(Inbound::AnthropicMessages) => {
            let opts = RequestOptions::new(input.model);
            let t = dialect::translate_request(
                Inbound::AnthropicMessages,
                Dialect::OpenAi,
                input.body,
                &opts,
            )
            .ok()?;
            serde_json::from_slice(&t.body).ok()?
        }
        _ => serde_json::from_slice(input.body).ok()?,
    };
    let Value::Object(map) = value else {
        return None;
    };
    if let Some(n) = map.get("n") {
        if n.as_u64() != Some(1) && !n.is_null() {
            return None;
        }
    }
    Some(map)
}

/// `map` written canonically without the fields that do not change the answer.
pub(crate) fn write_request(map: &Map<String, Value>, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut keys: Vec<&String> = map
        .keys()
        .filter(|k| !IGNORED.contains(&k.as_str()) && k.as_str() != "n")
        .collect();
    keys.sort_unstable();
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        if let Some(v) = map.get(k) {
            write_canonical(v, out);
        }
    }
    out.push(b'}');
}

/// The normalised request: the chat messages and parameters as canonical JSON, without the
/// ignored fields. `None` when the body is not a JSON object, or asks for `n > 1`.
pub fn normalise(input: &KeyInput<'_>) -> Option<Vec<u8>> {
    match input.inbound {
        Some(Inbound::AnthropicMessages) => normalise_tree(input),
        _ => with_canonical(|c| {
            c.write_request(input.body)?;
            Some(c.out.clone())
        }),
    }
}

/// [`normalise`] through a `serde_json::Value` tree (the reference the streaming writer is
/// tested and benched against; the path of Anthropic requests, translated first).
pub fn normalise_tree(input: &KeyInput<'_>) -> Option<Vec<u8>> {
    let map = pivot_object(input)?;
    let mut out = Vec::with_capacity(input.body.len());
    write_request(&map, &mut out);
    Some(out)
}

/// Runs `f` with this thread's canonical writer (a fresh one if it is in use or gone).
fn with_canonical<T>(f: impl FnOnce(&mut Canonical) -> Option<T>) -> Option<T> {
    let mut f = Some(f);
    let reused = CANONICAL.try_with(|cell| {
        let mut c = cell.try_borrow_mut().ok()?;
        (f.take()?)(&mut c)
    });
    match (reused, f) {
        (Ok(found), None) => found,
        (_, Some(f)) => f(&mut Canonical::default()),
        (Err(_), None) => None,
    }
}

/// A keyed hash of `parts` (length-prefixed, so no two splits hash alike) and `tail`.
pub(crate) fn keyed_hash(secret: &[u8; 32], parts: &[&[u8]], tail: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(tail);
    *h.finalize().as_bytes()
}

/// The key of `input` under the process's `secret`; `None` when it cannot be keyed.
pub fn exact_key(secret: &[u8; 32], input: &KeyInput<'_>) -> Option<CacheKey> {
    let parts = [
        input.scope.as_bytes(),
        input.kind.name().as_bytes(),
        input.model.as_bytes(),
    ];
    let hash = match input.inbound {
        Some(Inbound::AnthropicMessages) => keyed_hash(secret, &parts, &normalise_tree(input)?),
        _ => with_canonical(|c| {
            c.write_request(input.body)?;
            Some(keyed_hash(secret, &parts, &c.out))
        })?,
    };
    Some(CacheKey {
        hash,
        model_slot: slot(input.model),
        scope_slot: slot(input.scope),
    })
}

/// [`exact_key`] through the tree path only (the reference, for tests and benches).
pub fn exact_key_tree(secret: &[u8; 32], input: &KeyInput<'_>) -> Option<CacheKey> {
    let parts = [
        input.scope.as_bytes(),
        input.kind.name().as_bytes(),
        input.model.as_bytes(),
    ];
    Some(CacheKey {
        hash: keyed_hash(secret, &parts, &normalise_tree(input)?),
        model_slot: slot(input.model),
        scope_slot: slot(input.scope),
    })
}

/// The slot (0..=255) a model or scope name falls in: clearing a name clears its slot.
pub fn slot(name: &str) -> u8 {
    blake3::hash(name.as_bytes()).as_bytes()[0]
}

/// Writes `v` canonically: object keys sorted, no whitespace.
pub fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is canonical (the same text always gives the same bytes).
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    fn key(scope: &str, inbound: Option<Inbound>, body: &str) -> Option<CacheKey> {
        exact_key(
            &SECRET,
            &KeyInput {
                scope,
                kind: CallKind::Chat,
                inbound,
                model: "m",
                body: body.as_bytes(),
            },
        )
    }

    #[test]
    fn order_whitespace_and_transport_fields_do_not_matter() {
        let a = key(
            "team:a",
            None,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        );
        let b = key(
            "team:a",
            None,
            r#"{ "temperature": 0, "stream": true, "stream_options": {"include_usage": true},
                "user": "u1", "metadata": {"x": 1}, "n": 1,
                "messages": [ { "content": "hi", "role": "user" } ], "model": "m" }"#,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        let other_scope = key(
            "team:b",
            None,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}"#,
        );
        assert_ne!(a.map(|k| k.hash), other_scope.map(|k| k.hash));
        let other_param = key(
            "team:a",
            None,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#,
        );
        assert_ne!(a, other_param);
    }

    #[test]
    fn n_above_one_and_bad_json_are_not_keyed() {
        assert!(key("s", None, r#"{"model":"m","messages":[],"n":2}"#).is_none());
        assert!(key("s", None, "not json").is_none());
        assert!(key("s", None, "[1,2]").is_none());
    }

    #[test]
    fn an_anthropic_request_is_keyed_in_the_chat_shape() {
        let chat = key(
            "s",
            Some(Inbound::OpenAiChat),
            r#"{"model":"m","max_tokens":50,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        );
        let messages = key(
            "s",
            Some(Inbound::AnthropicMessages),
            r#"{"model":"m","max_tokens":50,"system":"be brief","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert!(chat.is_some());
        assert_eq!(chat, messages);
    }
}
