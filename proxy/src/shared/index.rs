//! Semantic cache entries across the fleet: each replica keeps its own in-memory semantic index
//! (the cache's first level); a prompt vector kept by one replica is appended to a Redis stream
//! (`<key_prefix>sem`, capped at [`STREAM_MAX`] entries), and every replica's index thread reads
//! that stream — from its start when the replica starts, then as entries arrive — and feeds its
//! own index with the vector and its first level with the answer (read from the shared level;
//! an answer already gone there is skipped, so an entry never outlives its answer's TTL).
//!
//! ```text
//!  settle (A): kept + semantic ─► XADD sem (replica, key, context, text, vector)
//!  index thread (every replica but A): XREAD BLOCK ─► GET + PTTL the answer ─► insert, insert_similar
//! ```

use std::sync::Arc;
use std::time::Duration;

use sluice_core::cache::{CacheKey, ResponseStore, SemanticQuery};
use sluice_core::config::SharedConfig;

use super::entry::{decode, entry_name};
use super::Target;

/// The stream keeps about this many entries (`XADD MAXLEN ~`).
pub const STREAM_MAX: u64 = 10_000;

/// A prompt longer than this (bytes) is not shared.
const MAX_TEXT: usize = 16 << 10;

/// A vector longer than this (dimensions) is not shared.
const MAX_DIMS: usize = 8192;

/// Entries read per call.
const READ_COUNT: usize = 256;

/// The stream's name.
pub fn stream(prefix: &str) -> String {
    format!("{prefix}sem")
}

/// The `XADD` arguments of one entry (after the stream's name), or `None` when it is too large
/// to share.
pub(super) fn entry(
    replica: &str,
    key: &CacheKey,
    q: &SemanticQuery,
    vector: &[f32],
) -> Option<Vec<(&'static str, Vec<u8>)>> {
    if q.text.len() > MAX_TEXT || vector.len() > MAX_DIMS {
        return None;
    }
    let mut k = key.hash.to_vec();
    k.push(key.model_slot);
    k.push(key.scope_slot);
    let v: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
    Some(vec![
        ("r", replica.as_bytes().to_vec()),
        ("k", k),
        ("c", q.context.to_vec()),
        ("t", q.text.as_bytes().to_vec()),
        ("v", v),
    ])
}

/// One stream entry read back: (replica, key, query, vector).
fn parse(fields: &redis::Value) -> Option<(String, CacheKey, SemanticQuery, Vec<f32>)> {
    let map: std::collections::HashMap<String, Vec<u8>> =
        redis::from_redis_value_ref(fields).ok()?;
    let k = map.get("k")?;
    if k.len() != 34 {
        return None;
    }
    let key = CacheKey {
        hash: k.get(..32)?.try_into().ok()?,
        model_slot: k[32],
        scope_slot: k[33],
    };
    let context: [u8; 32] = map.get("c")?.as_slice().try_into().ok()?;
    let text = String::from_utf8(map.get("t")?.clone()).ok()?;
    let v = map.get("v")?;
    if v.len() % 4 != 0 || v.len() / 4 > MAX_DIMS || text.len() > MAX_TEXT {
        return None;
    }
    let vector = v
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let replica = String::from_utf8_lossy(map.get("r")?).into_owned();
    Some((replica, key, SemanticQuery { context, text }, vector))
}

/// Starts this replica's index thread: it feeds `store` from the stream until the process ends.
pub(super) fn spawn(
    config: &SharedConfig,
    target: Target,
    replica: String,
    store: Arc<dyn ResponseStore>,
) -> std::io::Result<()> {
    let prefix = config.key_prefix.clone();
    let limit = Duration::from_millis((config.timeout_ms * 5).max(100));
    std::thread::Builder::new()
        .name("sluice-shared-index".into())
        .spawn(move || {
            let name = stream(&prefix);
            let mut last = "0-0".to_string();
            loop {
                let conn = target.client().and_then(|c| {
                    let conn = c.get_connection_with_timeout(limit)?;
                    // The read blocks a second at most; a little more for the answer.
                    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                    Ok(conn)
                });
                let Ok(mut conn) = conn else {
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                };
                while follow(&mut conn, &name, &prefix, &replica, &*store, &mut last).is_ok() {}
            }
        })?;
    Ok(())
}

/// Reads what arrived after `last` (waiting up to a second) and feeds `store`.
fn follow(
    conn: &mut redis::Connection,
    stream: &str,
    prefix: &str,
    me: &str,
    store: &dyn ResponseStore,
    last: &mut String,
) -> redis::RedisResult<()> {
    let reply: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(stream)
        .arg(last.as_str())
        .query(conn)?;
    // [[stream, [[id, [field, value, …]], …]]] or nil on timeout.
    let streams: Vec<(String, Vec<(String, redis::Value)>)> =
        match redis::from_redis_value_ref(&reply) {
            Ok(s) => s,
            Err(_) => return Ok(()),
        };
    for (_, entries) in streams {
        for (id, fields) in entries {
            *last = id;
            let Some((from, key, q, vector)) = parse(&fields) else {
                continue;
            };
            if from == me {
                continue;
            }
            let name = entry_name(prefix, &key);
            let (value, left): (Option<Vec<u8>>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&name)
                .cmd("PTTL")
                .arg(&name)
                .query(conn)?;
            let (Some(answer), true) = (value.and_then(|v| decode(&v)), left > 0) else {
                continue;
            };
            let left = left.unsigned_abs();
            let now = crate::clock::now_ms();
            if store.insert(&key, answer, left, now) {
                store.insert_similar(&q, vector, &key, left, now);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_oversized_ones_are_not_shared() {
        let key = CacheKey {
            hash: [7; 32],
            model_slot: 3,
            scope_slot: 9,
        };
        let q = SemanticQuery {
            context: [1; 32],
            text: "how tall is a lock gate?".into(),
        };
        let vector = vec![0.5f32, -1.25, 3.0];
        let fields = entry("r1", &key, &q, &vector).unwrap();
        let flat: Vec<redis::Value> = fields
            .into_iter()
            .flat_map(|(n, v)| {
                [
                    redis::Value::BulkString(n.as_bytes().to_vec()),
                    redis::Value::BulkString(v),
                ]
            })
            .collect();
        let (from, k, back, v) = parse(&redis::Value::Array(flat)).unwrap();
        assert_eq!((from.as_str(), k, back, v), ("r1", key, q.clone(), vector));
        let long = SemanticQuery {
            text: "x".repeat(MAX_TEXT + 1),
            ..q.clone()
        };
        assert!(entry("r1", &key, &long, &[1.0]).is_none());
        assert!(entry("r1", &key, &q, &vec![0.0; MAX_DIMS + 1]).is_none());
    }
}
