//! The semantic cache's index: answers found by the meaning of the last user message, when
//! everything else about the request is the same.
//!
//! A request's [`SemanticQuery`] is its last user message (the text compared) and a keyed hash
//! of everything else — scope, kind, model, system prompt, tools, sampling parameters and every
//! earlier turn — so a semantic hit never crosses conversations. The index keeps, per such
//! context, the normalised embedding of each answered prompt, its text and the exact key its
//! answer is stored under (the answer itself lives in the exact store, counted there).
//!
//! Search is exact: a dot product with every vector of the context (unit vectors: the dot
//! product is the cosine; stored as `i8`, a quarter of the bytes, within about 0.01), the best
//! at or above the threshold whose text passes the lexical guard ([`super::guard`]) wins. A
//! context holds at most [`MAX_PER_CONTEXT`] vectors, the whole index at most its byte bound;
//! the oldest go first.
//!
//! Bounded: a search reads the newest vectors first and at most the `max_scan` it is given
//! ([`SemanticIndex::search_within`]), and says how many it skipped. The caller picks the
//! bound: a worker scans at most [`INLINE_SCAN`] vectors itself (under a millisecond, see
//! `bench/benches/cache.rs`) and hands a larger context to a search thread, which scans it
//! whole (at most [`MAX_PER_CONTEXT`]).
//!
//! Concurrency note: a search takes the read lock, an insert the write lock; inserts happen at
//! settlement, once per answered semantic miss.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;

use serde_json::Value;

use super::guard;
use super::key::{keyed_hash, pivot_object, write_request, CacheKey, CallKind, KeyInput};

/// Vectors one context holds at most (exact search stays within a bench-proven bound).
pub const MAX_PER_CONTEXT: usize = 10_000;
/// Vectors a search on a worker thread scans at most: about 0.1 ms on a quiet core and under
/// a millisecond on a loaded one (`cache_semantic_search/1024` in `bench/benches/cache.rs`).
pub const INLINE_SCAN: usize = 1024;
/// Longest text compared (longer prompts are not cached semantically).
pub const MAX_TEXT_BYTES: usize = 8192;

/// What a request is looked up by in the semantic index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticQuery {
    /// Keyed hash of everything but the last user message.
    pub context: [u8; 32],
    /// The last user message's text.
    pub text: String,
}

/// The semantic query of a chat request; `None` when the last message is not a user's text
/// (or the request cannot be keyed).
pub fn query(secret: &[u8; 32], input: &KeyInput<'_>) -> Option<SemanticQuery> {
    if input.kind != CallKind::Chat {
        return None;
    }
    let mut map = pivot_object(input)?;
    let messages = map.get_mut("messages")?.as_array_mut()?;
    let last = messages.last_mut()?.as_object_mut()?;
    if last.get("role")?.as_str()? != "user" {
        return None;
    }
    let text = match last.get("content")? {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                // Only text parts: an image makes the prompt more than its words.
                if p.get("type")?.as_str()? != "text" {
                    return None;
                }
                text.push_str(p.get("text")?.as_str()?);
                text.push('\n');
            }
            text
        }
        _ => return None,
    };
    if text.trim().is_empty() || text.len() > MAX_TEXT_BYTES {
        return None;
    }
    last.insert("content".into(), Value::Null);
    let mut rest = Vec::with_capacity(input.body.len());
    write_request(&map, &mut rest);
    let parts = [
        b"semantic".as_slice(),
        input.scope.as_bytes(),
        input.kind.name().as_bytes(),
        input.model.as_bytes(),
    ];
    Some(SemanticQuery {
        context: keyed_hash(secret, &parts, &rest),
        text,
    })
}

/// `v` scaled to unit length (`None` for a zero or non-finite vector).
pub fn normalised(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    for x in &mut v {
        *x /= norm;
    }
    Some(v)
}

/// A unit vector quantised to `i8` (`x ≈ q · scale`): a quarter of the memory an `f32` vector
/// takes, and a search that reads a quarter of the bytes (exact search is bound by memory
/// bandwidth). The cosine it gives is within about 0.01 of the exact one.
struct Quantised {
    q: Box<[i8]>,
    scale: f32,
}

impl Quantised {
    fn new(v: &[f32]) -> Quantised {
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let q = v
            .iter()
            .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        Quantised { q, scale }
    }

    /// The cosine of two quantised unit vectors.
    fn cosine(&self, other: &Quantised) -> f32 {
        dot_i8(&self.q, &other.q) as f32 * self.scale * other.scale
    }
}

struct Item {
    id: u64,
    vector: Quantised,
    text: String,
    key: CacheKey,
    expires_ms: u64,
}

impl Item {
    fn bytes(&self) -> u64 {
        (self.vector.q.len() + self.text.len() + 100) as u64
    }
}

#[derive(Default)]
struct Inner {
    contexts: HashMap<[u8; 32], VecDeque<Item>>,
    /// (context, id) in insertion order, for evicting the oldest.
    order: VecDeque<([u8; 32], u64)>,
    bytes: u64,
    /// Vectors held (kept beside the lists: `size` is read at every settlement).
    vectors: u64,
    next_id: u64,
}

impl Inner {
    /// Drops the oldest item of the index.
    fn evict_oldest(&mut self) -> bool {
        let Some((ctx, id)) = self.order.pop_front() else {
            return false;
        };
        if let Some(list) = self.contexts.get_mut(&ctx) {
            if list.front().is_some_and(|i| i.id == id) {
                if let Some(item) = list.pop_front() {
                    self.bytes = self.bytes.saturating_sub(item.bytes());
                    self.vectors = self.vectors.saturating_sub(1);
                }
            }
            if list.is_empty() {
                self.contexts.remove(&ctx);
            }
        }
        true
    }
}

/// The semantic index (see the module docs).
pub struct SemanticIndex {
    inner: RwLock<Inner>,
    max_bytes: u64,
}

/// What a bounded search found, and how many vectors of the context it left unread.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Searched {
    /// The best match, if any.
    pub best: Option<Match>,
    /// Vectors of the context it did not read (the oldest), because of `max_scan`.
    pub skipped: usize,
}

/// A semantic match: the exact key its answer is stored under, and the cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Match {
    /// Where the answer is.
    pub key: CacheKey,
    /// Cosine similarity of the two prompts.
    pub similarity: f32,
}

impl SemanticIndex {
    /// An index of at most `max_bytes` (vectors, texts and bookkeeping).
    pub fn new(max_bytes: u64) -> Self {
        SemanticIndex {
            inner: RwLock::new(Inner::default()),
            max_bytes,
        }
    }

    /// The best match for `q` (its unit `vector`) at or above `threshold` that passes the
    /// lexical guard and is fresh at `now_ms`.
    pub fn search(
        &self,
        q: &SemanticQuery,
        vector: &[f32],
        threshold: f32,
        now_ms: u64,
    ) -> Option<Match> {
        self.search_within(q, vector, threshold, now_ms, MAX_PER_CONTEXT)
            .best
    }

    /// Vectors the context of `q` holds (what a search of it would read at most).
    pub fn context_len(&self, q: &SemanticQuery) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.contexts.get(&q.context).map_or(0, VecDeque::len)
    }

    /// [`Self::search`] reading at most the `max_scan` newest vectors of the context.
    pub fn search_within(
        &self,
        q: &SemanticQuery,
        vector: &[f32],
        threshold: f32,
        now_ms: u64,
        max_scan: usize,
    ) -> Searched {
        let probe = Quantised::new(vector);
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(list) = inner.contexts.get(&q.context) else {
            return Searched::default();
        };
        let skipped = list.len().saturating_sub(max_scan);
        let mut candidates: Vec<(f32, &Item)> = list
            .iter()
            .rev()
            .take(max_scan)
            .filter(|i| i.expires_ms > now_ms && i.vector.q.len() == vector.len())
            .map(|i| (i.vector.cosine(&probe), i))
            .filter(|(s, _)| *s >= threshold)
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        let best = candidates
            .into_iter()
            .find(|(_, i)| guard::agree(&i.text, &q.text))
            .map(|(similarity, i)| Match {
                key: i.key,
                similarity: similarity.min(1.0),
            });
        Searched { best, skipped }
    }

    /// Remembers that the answer to `q` (unit `vector`) is stored under `key`.
    pub fn insert(&self, q: &SemanticQuery, vector: Vec<f32>, key: CacheKey, expires_ms: u64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let id = inner.next_id;
        inner.next_id += 1;
        let item = Item {
            id,
            vector: Quantised::new(&vector),
            text: q.text.clone(),
            key,
            expires_ms,
        };
        let bytes = item.bytes();
        if bytes > self.max_bytes {
            return;
        }
        while inner.bytes + bytes > self.max_bytes && inner.evict_oldest() {}
        let list = inner.contexts.entry(q.context).or_default();
        let mut dropped = 0;
        let mut gone = 0;
        if list.len() >= MAX_PER_CONTEXT {
            if let Some(old) = list.pop_front() {
                dropped = old.bytes();
                gone = 1;
            }
        }
        list.push_back(item);
        inner.bytes = inner.bytes.saturating_sub(dropped) + bytes;
        inner.vectors = inner.vectors + 1 - gone;
        inner.order.push_back((q.context, id));
        // Dangling order entries (items dropped by the per-context cap) are skipped when
        // popped; keep the queue from growing without bound.
        if inner.order.len() > 4 * MAX_PER_CONTEXT + inner.contexts.len() * MAX_PER_CONTEXT {
            let Inner {
                contexts, order, ..
            } = &mut *inner;
            order.retain(|(c, i)| {
                contexts
                    .get(c)
                    .is_some_and(|l| l.iter().any(|it| it.id == *i))
            });
        }
    }

    /// Vectors held and the bytes they weigh.
    pub fn size(&self) -> (u64, u64) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.vectors, inner.bytes)
    }
}

/// The dot product of two `i8` vectors of the same length.
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // Sixteen lanes of i32: the compiler vectorises the widening multiply-add.
    let mut acc = [0i32; 16];
    let chunks = a.len() / 16 * 16;
    for (x, y) in a[..chunks]
        .chunks_exact(16)
        .zip(b[..chunks].chunks_exact(16))
    {
        for k in 0..16 {
            acc[k] += i32::from(x[k]) * i32::from(y[k]);
        }
    }
    let mut sum: i32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += i32::from(*x) * i32::from(*y);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Inbound;

    const SECRET: [u8; 32] = [3; 32];

    fn q(system: &str, earlier: &str, last: &str) -> SemanticQuery {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{earlier}"}},{{"role":"assistant","content":"ok"}},{{"role":"user","content":"{last}"}}]}}"#
        );
        query(
            &SECRET,
            &KeyInput {
                scope: "team:a",
                kind: CallKind::Chat,
                inbound: Some(Inbound::OpenAiChat),
                model: "m",
                body: body.as_bytes(),
            },
        )
        .unwrap()
    }

    fn key(n: u8) -> CacheKey {
        CacheKey {
            hash: [n; 32],
            model_slot: 0,
            scope_slot: 0,
        }
    }

    #[test]
    fn the_context_is_everything_but_the_last_user_message() {
        let a = q("be brief", "hello", "What is the capital of France?");
        let b = q("be brief", "hello", "what's the capital of France");
        assert_eq!(a.context, b.context);
        assert_eq!(b.text, "what's the capital of France");
        assert_ne!(a.context, q("be verbose", "hello", "x").context);
        assert_ne!(a.context, q("be brief", "hi", "x").context);
    }

    #[test]
    fn search_needs_the_threshold_the_guard_and_freshness() {
        let index = SemanticIndex::new(1 << 20);
        let a = q("s", "e", "is it safe to take 2 tablets");
        index.insert(&a, normalised(vec![1.0, 0.0, 0.0]).unwrap(), key(1), 100);
        let near = normalised(vec![0.98, 0.2, 0.0]).unwrap();
        let hit = index.search(&a, &near, 0.95, 0).unwrap();
        assert_eq!(hit.key, key(1));
        assert!(hit.similarity > 0.95 && hit.similarity < 1.0);
        assert!(
            index.search(&a, &near, 0.99, 0).is_none(),
            "below the threshold"
        );
        assert!(index.search(&a, &near, 0.95, 100).is_none(), "expired");
        let negated = q("s", "e", "is it not safe to take 2 tablets");
        assert!(index.search(&negated, &near, 0.5, 0).is_none(), "the guard");
        let other_context = q("t", "e", "is it safe to take 2 tablets");
        assert!(index.search(&other_context, &near, 0.5, 0).is_none());
    }

    #[test]
    fn a_bounded_search_reads_the_newest_and_counts_the_rest() {
        let index = SemanticIndex::new(1 << 20);
        let a = q("s", "e", "what is the capital of france");
        let old = normalised(vec![1.0, 0.0, 0.0]).unwrap();
        index.insert(&a, old.clone(), key(1), 100);
        for n in 2..=5 {
            index.insert(&a, normalised(vec![0.0, 1.0, 0.0]).unwrap(), key(n), 100);
        }
        assert_eq!(index.context_len(&a), 5);
        let all = index.search_within(&a, &old, 0.9, 0, 5);
        assert_eq!((all.best.map(|m| m.key), all.skipped), (Some(key(1)), 0));
        let newest = index.search_within(&a, &old, 0.9, 0, 4);
        assert_eq!(
            (newest.best, newest.skipped),
            (None, 1),
            "the oldest is not read"
        );
        let near_new = normalised(vec![0.0, 1.0, 0.1]).unwrap();
        let hit = index.search_within(&a, &near_new, 0.9, 0, 1);
        assert_eq!((hit.best.map(|m| m.key), hit.skipped), (Some(key(5)), 4));
        let unknown = q("s", "other", "x");
        assert_eq!(
            index.search_within(&unknown, &old, 0.9, 0, 1),
            Searched::default()
        );
        assert_eq!(index.context_len(&unknown), 0);
    }

    #[test]
    fn quantised_cosines_are_close_to_exact_ones() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 2001) as f32 / 1000.0 - 1.0
        };
        for _ in 0..50 {
            let a = normalised((0..1536).map(|_| next()).collect()).unwrap();
            let b: Vec<f32> = a.iter().map(|x| x + 0.3 * next() / 40.0).collect();
            let b = normalised(b).unwrap();
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let approx = Quantised::new(&a).cosine(&Quantised::new(&b));
            assert!((exact - approx).abs() < 0.01, "{exact} {approx}");
        }
    }

    #[test]
    fn the_index_stays_within_its_bytes() {
        let index = SemanticIndex::new(64 << 10);
        for i in 0..1000u32 {
            let query = q("s", "e", &format!("question {i}"));
            let v = normalised(vec![1.0; 64]).unwrap();
            index.insert(&query, v, key(1), 1000);
            assert!(index.size().1 <= 64 << 10);
        }
        assert!(index.size().0 > 50);
        let held: usize = {
            let inner = index.inner.read().unwrap();
            inner.contexts.values().map(VecDeque::len).sum()
        };
        assert_eq!(index.size().0, held as u64, "the count follows the lists");
    }
}
