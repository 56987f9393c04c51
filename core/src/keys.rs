//! Virtual keys: how they look, how they are stored and how they are checked.
//!
//! A key is `sk-sluice-` followed by 43 base62 characters encoding 256 random bits that the
//! caller supplies (core reads no randomness source: the proxy passes bytes from the OS). Only
//! its SHA-256 hash and a short visible prefix are ever stored; a presented key is hashed and
//! looked up by hash, and the final comparison is constant-time.
//!
//! ```text
//! issue:   random [u8; 32] ─► format_key ─► shown once to the caller
//!                                  └─────► hash_key + visible_prefix ─► KeyRecord (stored)
//! request: Authorization ─► parse_bearer ─► hash_key ─► index lookup ─► constant_time_eq
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every Sluice key starts with.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// Base62 characters of a 256-bit body: ceil(256 / log2(62)).
pub const KEY_BODY_LEN: usize = 43;

/// Characters of the body kept in the visible prefix.
const VISIBLE_BODY_CHARS: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key from 32 random bytes: `sk-sluice-` and the bytes in base62, zero-padded to 43
/// characters so every key has the same length.
pub fn format_key(random: &[u8; 32]) -> String {
    // Big-endian base62 by repeated division of the 256-bit number, in 32-bit limbs.
    let mut limbs = [0u32; 8];
    for (limb, chunk) in limbs.iter_mut().zip(random.chunks_exact(4)) {
        *limb = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let mut digits = [b'0'; KEY_BODY_LEN];
    for slot in digits.iter_mut().rev() {
        let mut rem = 0u64;
        for limb in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / 62) as u32;
            rem = cur % 62;
        }
        *slot = BASE62[rem as usize];
    }
    let mut key = String::with_capacity(KEY_PREFIX.len() + KEY_BODY_LEN);
    key.push_str(KEY_PREFIX);
    key.extend(digits.iter().map(|&b| char::from(b)));
    key
}

/// Whether `key` has the shape of a Sluice key (prefix, 43 base62 characters). A cheap check
/// before hashing; it says nothing about whether the key exists.
pub fn looks_like_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|body| {
        body.len() == KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// SHA-256 of the key's bytes: what the store keeps and the index is keyed by.
///
/// A plain (unsalted) hash is enough because keys carry 256 bits of randomness: there is
/// nothing to brute-force, and the hash must be deterministic to look keys up.
pub fn hash_key(key: impl AsRef<[u8]>) -> [u8; 32] {
    Sha256::digest(key.as_ref()).into()
}

/// [`hash_key`] as 64 lowercase hex characters.
pub fn hash_hex(key: &str) -> String {
    to_hex(&hash_key(key))
}

/// Lowercase hex of any bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// Parses 64 hex characters back into a hash.
pub fn parse_hash_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The part of a key that may be shown and logged: `sk-sluice-` and the first 6 characters of
/// the body, then `…` (e.g. `sk-sluice-4fZq9a…`). Too little to guess the rest.
pub fn visible_prefix(key: &str) -> String {
    let body = key.strip_prefix(KEY_PREFIX).unwrap_or(key);
    let shown: String = body.chars().take(VISIBLE_BODY_CHARS).collect();
    format!("{KEY_PREFIX}{shown}…")
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// [`constant_time_eq`] for two zero-padded buffers of one size (a multiple of 8), a word at
/// a time: `subtle` compares 8-byte words, not bytes (about 20 instructions a byte), and
/// their verdicts are combined without a branch on the data.
pub fn constant_time_eq_words<const N: usize>(a: &[u8; N], b: &[u8; N]) -> bool {
    const { assert!(N.is_multiple_of(8), "whole words only") };
    let word = |w: &[u8]| u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
    let mut same = subtle::Choice::from(1);
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        same &= word(x).ct_eq(&word(y));
    }
    same.into()
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive,
/// surrounding spaces trimmed). `None` for another scheme, an empty token or non-UTF-8 bytes.
pub fn parse_bearer(authorization: &[u8]) -> Option<&str> {
    if authorization.is_ascii() {
        // ASCII is UTF-8.
        return parse_bearer_ascii(authorization).and_then(|t| std::str::from_utf8(t).ok());
    }
    parse_bearer_text(authorization)
}

/// [`parse_bearer`]'s token as the bytes it is, for a caller that compares or hashes them
/// (the gateway's key check): the same answer, without the UTF-8 check of a token already
/// known to be ASCII.
pub fn parse_bearer_bytes(authorization: &[u8]) -> Option<&[u8]> {
    if authorization.is_ascii() {
        return parse_bearer_ascii(authorization);
    }
    parse_bearer_text(authorization).map(str::as_bytes)
}

/// [`parse_bearer`] for an ASCII value (every real one), byte by byte: the same answer as
/// [`parse_bearer_text`] without its UTF-8 check and `char` walks (on every request with keys
/// on). In ASCII, `char::is_whitespace` is exactly tab, line feed, vertical tab, form feed,
/// carriage return and space.
fn parse_bearer_ascii(value: &[u8]) -> Option<&[u8]> {
    const fn is_space(b: u8) -> bool {
        matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
    }
    fn trim(mut v: &[u8]) -> &[u8] {
        while let [first, rest @ ..] = v {
            if !is_space(*first) {
                break;
            }
            v = rest;
        }
        while let [rest @ .., last] = v {
            if !is_space(*last) {
                break;
            }
            v = rest;
        }
        v
    }
    let value = trim(value);
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&value[..space], trim(&value[space + 1..]));
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return None;
    }
    // A space is at most 0x20: a token without such a byte (every real one) is looked at a
    // word at a time; one with some, byte by byte.
    (!has_byte_to_0x20(token) || !token.iter().any(|&b| is_space(b))).then_some(token)
}

/// Whether ASCII `bytes` hold a byte at or below 0x20 (exact: no byte is 0x80 or above).
fn has_byte_to_0x20(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Below 0x21: (x - 0x21 per byte) & !x sets a byte's high bit (exact for "any").
    let low = |w: &[u8]| {
        let x = u64::from_ne_bytes(w.try_into().unwrap_or([0xff; 8]));
        x.wrapping_sub(0x21 * ONES) & !x & HIGHS != 0
    };
    let mut words = bytes.chunks_exact(8);
    words.by_ref().any(low) || words.remainder().iter().any(|&b| b <= 0x20)
}

/// [`parse_bearer`] for any bytes: UTF-8 or nothing, Unicode whitespace.
fn parse_bearer_text(authorization: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(authorization).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// The metadata field that holds a key's `cache` setting ([`KeyRecord::uses_cache`]).
const CACHE_FIELD: &str = "cache";

/// A virtual key as stored: everything but the key itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stable id (not secret), e.g. `key_…`; what admin calls and the ledger use.
    pub id: String,
    /// A human name.
    #[serde(default)]
    pub name: String,
    /// The team it belongs to.
    pub team: String,
    /// The user it was issued to, if any.
    #[serde(default)]
    pub user: Option<String>,
    /// SHA-256 of the key, hex ([`hash_hex`]). Never the key.
    pub hash: String,
    /// The visible prefix ([`visible_prefix`]).
    pub prefix: String,
    /// Model names or groups it may call; empty for all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Rate, concurrency and budget limits (flattened: the same JSON fields as before).
    #[serde(flatten)]
    pub limits: Limits,
    /// Unix second after which the key is refused.
    #[serde(default)]
    pub expires_at_unix: Option<u64>,
    /// Refused while set.
    #[serde(default)]
    pub disabled: bool,
    /// Free-form JSON the operator attaches.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Unix second of issue.
    #[serde(default)]
    pub created_at_unix: u64,
}

/// Why a key that exists is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Disabled by an operator.
    Disabled,
    /// Past `expires_at_unix`.
    Expired,
    /// The model is not in its list.
    ModelNotAllowed,
}

impl KeyRecord {
    /// Whether the key may be used at `unix_s` (not disabled, not expired).
    pub fn check_usable(&self, unix_s: u64) -> Result<(), KeyRefusal> {
        if self.disabled {
            return Err(KeyRefusal::Disabled);
        }
        if self.expires_at_unix.is_some_and(|e| unix_s >= e) {
            return Err(KeyRefusal::Expired);
        }
        Ok(())
    }

    /// Whether it may call `model`: every model when its list is empty, else an entry equal to
    /// the model name, or a `prefix*` entry the name starts with (`"*"` allows every model).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }

    /// Whether the response cache serves this key: the key setting `cache` (`cache = false`
    /// on a key in the config file, `"cache": false` through the admin API and `sluice keys
    /// create --no-cache`). It is kept in the record's metadata as `"cache": false` (the store
    /// has no column for it; an older `{"metadata": {"cache": false}}` means the same) —
    /// read and written only through this and [`Self::set_cache`].
    pub fn uses_cache(&self) -> bool {
        self.metadata.get(CACHE_FIELD) != Some(&serde_json::Value::Bool(false))
    }

    /// Sets the key's `cache` setting (see [`Self::uses_cache`]): `false` is written into the
    /// metadata (an object then), `true` removes it.
    pub fn set_cache(&mut self, on: bool) {
        if on {
            if let Some(m) = self.metadata.as_object_mut() {
                m.remove(CACHE_FIELD);
            }
            return;
        }
        if !self.metadata.is_object() {
            self.metadata = serde_json::Value::Object(Default::default());
        }
        if let Some(m) = self.metadata.as_object_mut() {
            m.insert(CACHE_FIELD.into(), serde_json::Value::Bool(false));
        }
    }

    /// Whether `presented` is this key: its hash, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(hash_hex(presented).as_bytes(), self.hash.as_bytes())
    }
}

/// A team: limits and a budget shared by all its keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    /// Unique name.
    pub name: String,
    /// Rate, concurrency and budget limits (flattened: the same JSON fields as before).
    #[serde(flatten)]
    pub limits: Limits,
}

/// The limits a key or a team carries, written once for both: [`KeyRecord`] and
/// [`TeamRecord`] flatten it into their own JSON, the store keeps it in the same columns of
/// both tables, and `limits::LimitSet::from_limits` turns it into limit state.
///
/// `None` means no such limit. Without a budget, spend is still counted (for reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Budget per period, in USD.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// When the budget starts over.
    #[serde(default)]
    pub budget_period: BudgetPeriod,
}

impl Limits {
    /// The budget in micro-USD, if any.
    pub fn budget_micros(&self) -> Option<u64> {
        self.budget_usd.map(usd_to_micros)
    }

    /// These limits as a `limits::LimitSet` sees them: the budget rounded to whole
    /// micro-USD (negative and NaN as 0), and the period [`BudgetPeriod::Lifetime`] when there
    /// is no budget (spend is then counted over the key's life). Two limits whose normalized
    /// forms are equal build the same limit set, so a rebuild may keep the old one.
    pub fn normalized(&self) -> Limits {
        let budget_micros = self.budget_micros();
        Limits {
            // Exact for any budget below 2^53 micro-USD.
            budget_usd: budget_micros.map(|m| m as f64 / 1_000_000.0),
            budget_period: if budget_micros.is_some() {
                self.budget_period
            } else {
                BudgetPeriod::Lifetime
            },
            ..*self
        }
    }
}

/// USD to micro-USD, rounded to nearest; negative and NaN become 0.
pub fn usd_to_micros(usd: f64) -> u64 {
    if usd.is_nan() || usd <= 0.0 {
        0
    } else {
        // `as` saturates on overflow.
        (usd * 1_000_000.0).round() as u64
    }
}

/// When a budget starts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Every day at 00:00 UTC.
    Daily,
    /// Every Monday at 00:00 UTC.
    Weekly,
    /// The first of every month at 00:00 UTC.
    #[default]
    Monthly,
    /// Never: one budget for the life of the key.
    Lifetime,
}

impl BudgetPeriod {
    /// The lowercase name, as in config and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Lifetime => "lifetime",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "daily" => BudgetPeriod::Daily,
            "weekly" => BudgetPeriod::Weekly,
            "monthly" => BudgetPeriod::Monthly,
            "lifetime" => BudgetPeriod::Lifetime,
            _ => return None,
        })
    }
}

/// Whether a budget is acceptable: none, or a number of USD that is 0 or more (not NaN). The
/// config file and the admin API both check limits with it.
pub fn budget_is_valid(budget_usd: Option<f64>) -> bool {
    budget_usd.is_none_or(|b| b >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_zero_or_more() {
        assert!(budget_is_valid(None) && budget_is_valid(Some(0.0)) && budget_is_valid(Some(2.5)));
        assert!(!budget_is_valid(Some(-1.0)) && !budget_is_valid(Some(f64::NAN)));
    }

    #[test]
    fn keys_have_fixed_shape() {
        let zero = format_key(&[0; 32]);
        assert_eq!(zero, format!("sk-sluice-{}", "0".repeat(43)));
        let max = format_key(&[0xff; 32]);
        assert_eq!(max.len(), KEY_PREFIX.len() + KEY_BODY_LEN);
        // 2^256 - 1 needs all 43 base62 digits.
        assert!(!max.starts_with("sk-sluice-0"));
        assert!(looks_like_key(&zero) && looks_like_key(&max));
        let mut one = [0u8; 32];
        one[31] = 61;
        assert!(format_key(&one).ends_with("0z"));
        one[31] = 62;
        assert!(format_key(&one).ends_with("10"));
        assert!(!looks_like_key("sk-sluice-short"));
        assert!(!looks_like_key(&format!("sk-other-{}", "0".repeat(43))));
        assert!(!looks_like_key(&format!("sk-sluice-{}-", "0".repeat(42))));
    }

    #[test]
    fn different_bytes_give_different_keys() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..=255u8 {
            let mut r = [7u8; 32];
            r[(i % 32) as usize] = i;
            r[0] = i;
            seen.insert(format_key(&r));
        }
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn hashing_and_prefixes() {
        // SHA-256("abc"), FIPS 180-2.
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = format_key(&[42; 32]);
        assert_eq!(parse_hash_hex(&hash_hex(&key)), Some(hash_key(&key)));
        assert_eq!(parse_hash_hex("zz"), None);
        assert_eq!(parse_hash_hex(&"g".repeat(64)), None);
        let p = visible_prefix(&key);
        assert_eq!(p.chars().count(), KEY_PREFIX.len() + 7);
        assert!(key.starts_with(p.trim_end_matches('…')));
        assert!(p.ends_with('…'));
        assert_eq!(visible_prefix("abc"), "sk-sluice-abc…");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
        let a = [7u8; 24];
        assert!(constant_time_eq_words(&a, &a));
        for i in 0..a.len() {
            let mut b = a;
            b[i] ^= 0x80;
            assert!(!constant_time_eq_words(&a, &b), "byte {i}");
        }
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(parse_bearer(b"Bearer sk-sluice-x"), Some("sk-sluice-x"));
        assert_eq!(parse_bearer(b"bearer   tok  "), Some("tok"));
        assert_eq!(parse_bearer(b"  BEARER tok"), Some("tok"));
        assert_eq!(parse_bearer(b"Basic dXNlcg=="), None);
        assert_eq!(parse_bearer(b"Bearer"), None);
        assert_eq!(parse_bearer(b"Bearer "), None);
        assert_eq!(parse_bearer(b"Bearer a b"), None);
        assert_eq!(parse_bearer(b"Bearer \xff"), None);
    }

    #[test]
    fn the_ascii_bearer_parse_agrees_with_the_text_one() {
        let parts: [&[u8]; 12] = [
            b"Bearer",
            b"bearer",
            b"BeArEr",
            b"Basic",
            b" ",
            b"\t",
            b"\x0b",
            b"\x0c",
            b"\r\n",
            b"sk-sluice-x",
            b"a b",
            b"",
        ];
        let mut checked = 0;
        for a in parts {
            for b in parts {
                for c in parts {
                    for d in parts {
                        let value = [a, b, c, d].concat();
                        assert_eq!(
                            parse_bearer_ascii(&value),
                            parse_bearer_text(&value).map(str::as_bytes),
                            "{:?}",
                            String::from_utf8_lossy(&value)
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 12 * 12 * 12 * 12);
        // Every ASCII byte, alone and around a token.
        for x in 0u8..0x80 {
            for value in [
                vec![x],
                [b"Bearer ", &[x][..], b"t"].concat(),
                [b"Bearer t", &[x][..]].concat(),
                [&[x][..], b"Bearer t"].concat(),
            ] {
                assert_eq!(
                    parse_bearer_ascii(&value),
                    parse_bearer_text(&value).map(str::as_bytes),
                    "{value:?}"
                );
            }
        }
        // Tokens of whole and part words, with a byte around 0x20 at every place.
        for len in 1..26 {
            for at in 0..len {
                for x in [
                    b'\t', b'\n', 0x0b, 0x0c, b'\r', b' ', 0x01, 0x1f, 0x21, 0x7f,
                ] {
                    let mut value = b"Bearer ".to_vec();
                    value.extend((0..len).map(|i| if i == at { x } else { b'k' }));
                    assert_eq!(
                        parse_bearer_ascii(&value),
                        parse_bearer_text(&value).map(str::as_bytes),
                        "{value:?}"
                    );
                    assert_eq!(
                        parse_bearer_bytes(&value),
                        parse_bearer(&value).map(str::as_bytes)
                    );
                }
            }
        }
    }

    fn record(key: &str) -> KeyRecord {
        KeyRecord {
            id: "key_1".into(),
            name: "ci".into(),
            team: "core".into(),
            user: None,
            hash: hash_hex(key),
            prefix: visible_prefix(key),
            models: vec!["gpt-4o".into()],
            limits: Limits {
                rpm: Some(60),
                tpm: None,
                max_concurrency: None,
                budget_usd: Some(12.5),
                budget_period: BudgetPeriod::Weekly,
            },
            expires_at_unix: Some(1_000),
            disabled: false,
            metadata: serde_json::json!({"owner": "ops"}),
            created_at_unix: 10,
        }
    }

    #[test]
    fn records_check_and_never_hold_the_key() {
        let key = format_key(&[9; 32]);
        let r = record(&key);
        assert!(r.matches(&key));
        assert!(!r.matches(&format_key(&[8; 32])));
        assert_eq!(r.check_usable(999), Ok(()));
        assert_eq!(r.check_usable(1_000), Err(KeyRefusal::Expired));
        assert!(r.allows_model("gpt-4o") && !r.allows_model("gpt-4o-mini"));
        assert_eq!(r.limits.budget_micros(), Some(12_500_000));
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains(&key[KEY_PREFIX.len()..]));
        assert!(json.contains("\"budget_period\":\"weekly\""));
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let disabled = KeyRecord {
            disabled: true,
            models: vec![],
            ..r
        };
        assert_eq!(disabled.check_usable(0), Err(KeyRefusal::Disabled));
        assert!(disabled.allows_model("anything"));
        let listed = KeyRecord {
            models: vec!["gpt-4o".into(), "mock-*".into()],
            ..disabled.clone()
        };
        assert!(listed.allows_model("gpt-4o") && !listed.allows_model("gpt-4o-mini"));
        assert!(listed.allows_model("mock-fast") && listed.allows_model("mock-"));
        assert!(!listed.allows_model("mock") && !listed.allows_model("xmock-fast"));
        let star = KeyRecord {
            models: vec!["*".into()],
            ..disabled.clone()
        };
        assert!(star.allows_model("anything"));
        let team: TeamRecord = serde_json::from_str(r#"{"name":"core","tpm":1000}"#).unwrap();
        assert_eq!(team.limits.tpm, Some(1000));
        assert_eq!(team.limits.budget_period, BudgetPeriod::Monthly);
        assert_eq!(team.limits.budget_micros(), None);
        assert_eq!(usd_to_micros(-1.0), 0);
        assert_eq!(usd_to_micros(f64::NAN), 0);
        assert_eq!(usd_to_micros(0.000_001_4), 1);
    }

    #[test]
    fn records_keep_their_json_field_names() {
        // The limits are flattened: the same fields, in the same places, as when each record
        // spelled them out.
        let key_json = concat!(
            r#"{"id":"key_1","name":"ci","team":"core","user":null,"#,
            r#""hash":"ab","prefix":"sk-sluice-abc…","models":["gpt-4o"],"#,
            r#""rpm":60,"tpm":null,"max_concurrency":4,"budget_usd":12.5,"#,
            r#""budget_period":"weekly","expires_at_unix":1000,"disabled":false,"#,
            r#""metadata":{"owner":"ops"},"created_at_unix":10}"#
        );
        let key = KeyRecord {
            hash: "ab".into(),
            prefix: "sk-sluice-abc…".into(),
            limits: Limits {
                max_concurrency: Some(4),
                ..record("x").limits
            },
            ..record("x")
        };
        assert_eq!(serde_json::to_string(&key).unwrap(), key_json);
        assert_eq!(serde_json::from_str::<KeyRecord>(key_json).unwrap(), key);

        let team_json = concat!(
            r#"{"name":"core","rpm":null,"tpm":1000,"max_concurrency":null,"#,
            r#""budget_usd":3.0,"budget_period":"daily"}"#
        );
        let team = TeamRecord {
            name: "core".into(),
            limits: Limits {
                tpm: Some(1000),
                budget_usd: Some(3.0),
                budget_period: BudgetPeriod::Daily,
                ..Limits::default()
            },
        };
        assert_eq!(serde_json::to_string(&team).unwrap(), team_json);
        assert_eq!(serde_json::from_str::<TeamRecord>(team_json).unwrap(), team);
        // Integers are read as a budget too, and missing limit fields take their defaults.
        let bare: TeamRecord = serde_json::from_str(r#"{"name":"t","budget_usd":3}"#).unwrap();
        assert_eq!(bare.limits.budget_micros(), Some(3_000_000));
        assert_eq!(bare.limits.budget_period, BudgetPeriod::Monthly);
    }

    #[test]
    fn normalized_limits_compare_as_limit_sets_do() {
        let none = Limits {
            budget_period: BudgetPeriod::Daily,
            ..Limits::default()
        };
        assert_eq!(none.normalized().budget_period, BudgetPeriod::Lifetime);
        assert_eq!(none.normalized(), Limits::default().normalized());
        let a = Limits {
            rpm: Some(5),
            budget_usd: Some(1.000_000_1),
            budget_period: BudgetPeriod::Weekly,
            ..Limits::default()
        };
        let b = Limits {
            budget_usd: Some(1.0),
            ..a
        };
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.normalized().budget_period, BudgetPeriod::Weekly);
        assert_ne!(a.normalized(), Limits { rpm: None, ..b }.normalized());
        let neg = Limits {
            budget_usd: Some(-2.0),
            ..Limits::default()
        };
        assert_eq!(neg.normalized().budget_usd, Some(0.0));
        assert_eq!(neg.normalized().budget_period, BudgetPeriod::Monthly);
    }
}
