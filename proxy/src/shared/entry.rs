//! How the response cache's second level writes an entry in Redis: its key name and its
//! value's frame (shared by the cache thread and the semantic index feed).

use sluice_core::cache::{CacheKey, CallKind, StoredAnswer};
use sluice_core::usage::Usage;

/// The first bytes of an encoded entry (and its format's version).
const MAGIC: &[u8; 4] = b"SLC1";

/// The Redis key of an entry.
pub fn entry_name(prefix: &str, key: &CacheKey) -> String {
    let mut s = format!("{prefix}c:{}:{}:", key.model_slot, key.scope_slot);
    for b in key.hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A stored answer as bytes: `SLC1`, the kind, the usage (a flag and six numbers), the cost
/// (a flag and a number), then the body.
pub fn encode(a: &StoredAnswer) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.body.len() + 72);
    out.extend_from_slice(MAGIC);
    out.push(match a.kind {
        CallKind::Chat => 0,
        CallKind::Embeddings => 1,
        CallKind::Completion => 2,
    });
    match &a.usage {
        Some(u) => {
            out.push(1);
            for n in [
                u.input_tokens,
                u.output_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.reasoning_tokens,
                u64::from(u.estimated),
            ] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
        None => out.push(0),
    }
    match a.cost_micros {
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&c.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&a.body);
    out
}

/// [`encode`]'s inverse; `None` for anything else (another version, a foreign value).
pub fn decode(bytes: &[u8]) -> Option<StoredAnswer> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (&kind, rest) = rest.split_first()?;
    let kind = match kind {
        0 => CallKind::Chat,
        1 => CallKind::Embeddings,
        2 => CallKind::Completion,
        _ => return None,
    };
    let number =
        |r: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(r.get(..8)?.try_into().ok()?)) };
    let (&has_usage, mut rest) = rest.split_first()?;
    let usage = match has_usage {
        0 => None,
        1 => {
            let mut n = [0u64; 6];
            for v in &mut n {
                *v = number(rest)?;
                rest = rest.get(8..)?;
            }
            Some(Usage {
                input_tokens: n[0],
                output_tokens: n[1],
                cached_tokens: n[2],
                cache_write_tokens: n[3],
                reasoning_tokens: n[4],
                estimated: n[5] != 0,
            })
        }
        _ => return None,
    };
    let (&has_cost, mut rest) = rest.split_first()?;
    let cost_micros = match has_cost {
        0 => None,
        1 => {
            let c = number(rest)?;
            rest = rest.get(8..)?;
            Some(c)
        }
        _ => return None,
    };
    Some(StoredAnswer {
        body: rest.to_vec(),
        usage,
        cost_micros,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_frame_and_foreign_bytes_are_misses() {
        let a = StoredAnswer {
            body: br#"{"choices":[]}"#.to_vec(),
            usage: Some(Usage {
                input_tokens: 12,
                output_tokens: 7,
                cached_tokens: 3,
                cache_write_tokens: 1,
                reasoning_tokens: 2,
                estimated: true,
            }),
            cost_micros: Some(4242),
            kind: CallKind::Chat,
        };
        assert_eq!(decode(&encode(&a)), Some(a.clone()));
        let bare = StoredAnswer {
            usage: None,
            cost_micros: None,
            kind: CallKind::Embeddings,
            ..a.clone()
        };
        assert_eq!(decode(&encode(&bare)), Some(bare));
        let whole = encode(&a);
        for cut in 0..(whole.len() - a.body.len()) {
            assert_eq!(decode(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(b"hello"), None);
        let mut other = whole.clone();
        other[4] = 9;
        assert_eq!(decode(&other), None);
    }
}
