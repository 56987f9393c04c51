//! What a request asks of the cache in its headers: `cache-control: no-cache` (skip the lookup,
//! refresh the entry), `cache-control: no-store` (neither read nor write),
//! `x-sluice-cache-ttl` (seconds) and `x-sluice-cache-threshold` (cosine, semantic cache).
//! A value that cannot be read is ignored (the group's setting applies), never an error.

/// Largest TTL a request may ask for: one week.
pub const MAX_TTL_S: u64 = 7 * 24 * 3600;

/// The request's cache directives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Directives {
    /// Skip the lookup (the answer still refreshes the entry).
    pub no_cache: bool,
    /// Neither read nor write.
    pub no_store: bool,
    /// Time to live of the entry this request writes, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// Cosine threshold for a semantic hit.
    pub threshold: Option<f32>,
}

impl Directives {
    /// Reads the directives from the request's headers (name, value), names in any case.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut d = Directives::default();
        for (name, value) in headers {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            if name.eq_ignore_ascii_case("cache-control") {
                for token in value.split(',') {
                    let token = token.trim();
                    d.no_cache |= token.eq_ignore_ascii_case("no-cache");
                    d.no_store |= token.eq_ignore_ascii_case("no-store");
                }
            } else if name.eq_ignore_ascii_case("x-sluice-cache-ttl") {
                d.ttl_ms = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| s.min(MAX_TTL_S) * 1000);
            } else if name.eq_ignore_ascii_case("x-sluice-cache-threshold") {
                d.threshold = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|t| *t > 0.0 && *t <= 1.0);
            }
        }
        d
    }

    /// Whether the lookup runs.
    pub fn reads(&self) -> bool {
        !self.no_cache && !self.no_store
    }

    /// Whether the answer is kept.
    pub fn writes(&self) -> bool {
        !self.no_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_and_bad_values_ignored() {
        let d = Directives::from_headers([
            ("Cache-Control", &b"max-age=0, No-Cache"[..]),
            ("x-sluice-cache-ttl", b"60"),
            ("X-Sluice-Cache-Threshold", b"0.9"),
        ]);
        assert!(d.no_cache && !d.no_store && !d.reads() && d.writes());
        assert_eq!(d.ttl_ms, Some(60_000));
        assert_eq!(d.threshold, Some(0.9));
        let bad = Directives::from_headers([
            ("cache-control", &b"no-store"[..]),
            ("x-sluice-cache-ttl", b"-3"),
            ("x-sluice-cache-threshold", b"7"),
        ]);
        assert!(!bad.reads() && !bad.writes());
        assert_eq!((bad.ttl_ms, bad.threshold), (None, None));
        let huge = Directives::from_headers([("x-sluice-cache-ttl", &b"999999999999"[..])]);
        assert_eq!(huge.ttl_ms, Some(MAX_TTL_S * 1000));
    }
}
