//! Response compression, the decision half: which content coding a client accepts
//! (`Accept-Encoding`, RFC 9110 §12.5.3, q-values included) and whether an answer is worth
//! compressing (size, content type, event stream). The bytes are compressed by the proxy.
//!
//! Call order: the proxy folds each `Accept-Encoding` field line of the request into an
//! [`AcceptEncoding`] ([`AcceptEncoding::add`]; a request without one never parses anything),
//! then, once the answer's head and length are known, asks [`CompressionConfig::decide`].
//!
//! Rules (RFC 9110 §12.5.3):
//! - no `Accept-Encoding` field: the client has no preference; we send identity (compressing
//!   for a client that did not ask breaks more clients than it helps);
//! - an empty field value: the client wants no content coding;
//! - a coding is acceptable when listed with a q-value above 0, or not listed and `*` is
//!   (`*` stands for every coding not listed); `x-gzip` is `gzip` (§8.4.1.3);
//! - identity is acceptable unless `identity;q=0`, or `*;q=0` with no `identity` entry: then
//!   even a small answer is compressed when a coding is acceptable;
//! - the highest q-value wins; ties go to the configured order (`algorithms`); a client that
//!   lists `identity` with a higher q-value than every coding gets identity;
//! - an element with a malformed q-value is ignored (it neither enables nor refuses anything).

/// A content coding the gateway can apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    /// Zstandard (RFC 8878), `zstd`.
    Zstd,
    /// Brotli (RFC 7932), `br`.
    Brotli,
    /// gzip (RFC 1952), `gzip`.
    Gzip,
}

impl Coding {
    /// The token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The coding a config name stands for.
    pub fn from_name(name: &str) -> Option<Coding> {
        match name {
            "zstd" => Some(Coding::Zstd),
            "br" | "brotli" => Some(Coding::Brotli),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// A q-value in thousandths (`q=0.5` is 500), as RFC 9110 §12.4.2 allows three decimals.
type Q = u16;

const Q_MAX: Q = 1000;

/// What the client's `Accept-Encoding` field lines say, per coding we know.
///
/// `None` means "not listed". Built by [`AcceptEncoding::add`] with no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptEncoding {
    /// At least one `Accept-Encoding` field line was sent (maybe empty).
    present: bool,
    gzip: Option<Q>,
    br: Option<Q>,
    zstd: Option<Q>,
    identity: Option<Q>,
    any: Option<Q>,
}

impl AcceptEncoding {
    /// Parses a whole field value (equivalent to one `add` on a default value).
    pub fn parse(value: &[u8]) -> AcceptEncoding {
        let mut accept = AcceptEncoding::default();
        accept.add(value);
        accept
    }

    /// Folds one `Accept-Encoding` field line in (several lines form one list, RFC 9110
    /// §5.3). The first entry for a coding counts; later ones are ignored.
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for element in value.split(|b| *b == b',') {
            let mut parts = element.split(|b| *b == b';');
            let name = parts.next().unwrap_or_default().trim_ascii();
            if name.is_empty() {
                continue; // RFC 9110 §5.6.1: empty list elements are ignored.
            }
            let mut q = Some(Q_MAX);
            for param in parts {
                let param = param.trim_ascii();
                if let Some(v) = param
                    .strip_prefix(b"q=")
                    .or_else(|| param.strip_prefix(b"Q="))
                {
                    q = parse_qvalue(v);
                }
            }
            let Some(q) = q else { continue };
            let slot = if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip")
            {
                &mut self.gzip
            } else if name.eq_ignore_ascii_case(b"br") {
                &mut self.br
            } else if name.eq_ignore_ascii_case(b"zstd") {
                &mut self.zstd
            } else if name.eq_ignore_ascii_case(b"identity") {
                &mut self.identity
            } else if name == b"*" {
                &mut self.any
            } else {
                continue;
            };
            slot.get_or_insert(q);
        }
    }

    /// Whether the request carried an `Accept-Encoding` field at all.
    pub fn is_present(&self) -> bool {
        self.present
    }

    /// How much the client wants `coding` (0: not acceptable).
    pub fn q(&self, coding: Coding) -> u16 {
        let listed = match coding {
            Coding::Gzip => self.gzip,
            Coding::Brotli => self.br,
            Coding::Zstd => self.zstd,
        };
        listed.or(self.any).unwrap_or(0)
    }

    /// How much the client wants no coding: listed, else `*`'s, else acceptable (1).
    pub fn identity_q(&self) -> u16 {
        self.identity.or(self.any).unwrap_or(Q_MAX)
    }

    /// The client refused identity (`identity;q=0`, or `*;q=0` with no identity entry).
    pub fn refuses_identity(&self) -> bool {
        self.present && self.identity_q() == 0
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths; `None`
/// when malformed.
fn parse_qvalue(v: &[u8]) -> Option<Q> {
    let (int, frac) = match v.split_first()? {
        (b'0', rest) => (0, rest),
        (b'1', rest) => (1, rest),
        _ => return None,
    };
    let digits = match frac {
        [] => &[][..],
        [b'.', digits @ ..] if digits.len() <= 3 => digits,
        _ => return None,
    };
    let mut q: Q = int * Q_MAX;
    let mut scale = 100;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        q += Q::from(d - b'0') * scale;
        scale /= 10;
    }
    (q <= Q_MAX).then_some(q)
}

/// `[server.compression]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressionConfig {
    /// Whether answers are compressed for clients that ask.
    pub enabled: bool,
    /// Smallest body compressed (unless the client refused identity).
    pub min_bytes: u64,
    /// Largest body read whole to be compressed; larger ones are relayed as they come.
    pub max_bytes: u64,
    /// Bodies at most this large are compressed on the worker itself; larger ones on the
    /// compression threads.
    pub inline_max_bytes: u64,
    /// The codings offered, in the order that breaks q-value ties.
    pub algorithms: Vec<Coding>,
    /// Compress `text/event-stream` answers too (off by default: the reader needs every event
    /// at once, and each flush costs ratio).
    pub streams: bool,
    /// gzip level, 1..=9.
    pub gzip_level: u32,
    /// Brotli quality, 0..=11.
    pub br_level: u32,
    /// zstd level, 1..=19.
    pub zstd_level: i32,
    /// Compression threads (shared by every worker).
    pub threads: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_bytes: 32 * 1024,
            max_bytes: 16 * 1024 * 1024,
            inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
            algorithms: vec![Coding::Zstd, Coding::Brotli, Coding::Gzip],
            streams: false,
            gzip_level: DEFAULT_GZIP_LEVEL,
            br_level: DEFAULT_BR_LEVEL,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            threads: 0,
        }
    }
}

/// Default gzip level. The defaults come from `bench/benches/compress.rs` (figures in the
/// README): on a 1 MB embeddings answer zstd 1 has both the best ratio (2.5x) and the lowest
/// CPU cost; gzip 1 is miniz_oxide's fast path (within 5 % of gzip 9's ratio on embeddings,
/// at a fraction of its cost); brotli 2 matches brotli 4's ratio on chat text at a third of
/// its cost on embeddings.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;
/// Default brotli quality.
pub const DEFAULT_BR_LEVEL: u32 = 2;
/// Default zstd level.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Default largest body compressed on the worker itself.
pub const DEFAULT_INLINE_MAX_BYTES: u64 = 16 * 1024;

/// What the proxy should do with one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Compress with this coding; `None` sends the body as it is.
    pub coding: Option<Coding>,
    /// Send `Vary: Accept-Encoding`: the answer's bytes depend on what the client accepts.
    pub vary: bool,
}

/// The facts about one answer that decide whether it is compressed.
#[derive(Clone, Copy, Debug)]
pub struct AnswerFacts<'a> {
    /// The body's length.
    pub len: u64,
    /// Its `Content-Type`, if any.
    pub content_type: Option<&'a [u8]>,
    /// The upstream already applied a content coding.
    pub encoded: bool,
    /// The upstream sent `Cache-Control: no-transform`: a proxy MUST NOT change the content
    /// (RFC 9111 §5.2.2.6, RFC 9110 §7.7).
    pub no_transform: bool,
}

impl CompressionConfig {
    /// The coding the client prefers among ours, or `None` when it accepts none of them or
    /// prefers identity.
    pub fn choose(&self, accept: &AcceptEncoding) -> Option<Coding> {
        if !self.enabled || !accept.present {
            return None;
        }
        let mut best: Option<(Coding, Q)> = None;
        for &c in &self.algorithms {
            let q = accept.q(c);
            if q > 0 && best.is_none_or(|(_, b)| q > b) {
                best = Some((c, q));
            }
        }
        let (coding, q) = best?;
        // An explicit preference for identity (or `*`) over every coding we have wins; an
        // unlisted identity is acceptable but carries no preference.
        if accept.identity.or(accept.any).is_some_and(|iq| iq > q) {
            return None;
        }
        Some(coding)
    }

    /// Whether (and how) to compress an answer the client will get whole.
    pub fn decide(&self, accept: &AcceptEncoding, answer: &AnswerFacts<'_>) -> Decision {
        if !self.enabled || answer.encoded || answer.no_transform || answer.len > self.max_bytes {
            return Decision::default();
        }
        let Some(ct) = answer.content_type else {
            return Decision::default();
        };
        if !compressible(ct) || (is_event_stream(ct) && !self.streams) {
            return Decision::default();
        }
        let big = answer.len >= self.min_bytes;
        if !big && !accept.refuses_identity() {
            return Decision::default();
        }
        Decision {
            coding: self.choose(accept),
            vary: true,
        }
    }

    /// Whether this request could get a compressed answer at all (cheap: no parse).
    pub fn may_compress(&self, accept: &AcceptEncoding) -> bool {
        self.enabled && accept.present
    }
}

fn is_event_stream(ct: &[u8]) -> bool {
    media_type(ct).eq_ignore_ascii_case(b"text/event-stream")
}

/// The media type without its parameters, trimmed.
fn media_type(ct: &[u8]) -> &[u8] {
    ct.split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// Whether a `Cache-Control` value carries `no-transform`.
pub fn has_no_transform(cache_control: &[u8]) -> bool {
    cache_control
        .split(|b| *b == b',')
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
}

/// Text and JSON compress well; images, audio and already packed formats do not.
pub fn compressible(ct: &[u8]) -> bool {
    let mt = media_type(ct);
    let lower = |p: &[u8]| mt.len() >= p.len() && mt[..p.len()].eq_ignore_ascii_case(p);
    let ends = |s: &[u8]| mt.len() >= s.len() && mt[mt.len() - s.len()..].eq_ignore_ascii_case(s);
    lower(b"text/")
        || ends(b"+json")
        || ends(b"+xml")
        || [
            &b"application/json"[..],
            b"application/x-ndjson",
            b"application/jsonl",
            b"application/xml",
            b"application/javascript",
        ]
        .iter()
        .any(|t| mt.eq_ignore_ascii_case(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_value_parses_without_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let a = AcceptEncoding::parse(&v);
            for c in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
                prop_assert!(a.q(c) <= Q_MAX);
            }
            prop_assert!(a.identity_q() <= Q_MAX);
            let _ = cfg().choose(&a);
        }

        #[test]
        fn lines_split_at_a_comma_are_one_list(
            elems in proptest::collection::vec(
                "(gzip|br|zstd|identity|\\*|deflate)( ?; ?q=(0|1|0\\.[0-9]{1,3}))?",
                0..6,
            ),
            cut in 0usize..6,
        ) {
            let cut = cut.min(elems.len());
            let mut split = AcceptEncoding::default();
            split.add(elems[..cut].join(", ").as_bytes());
            split.add(elems[cut..].join(",").as_bytes());
            prop_assert_eq!(AcceptEncoding::parse(elems.join(" , ").as_bytes()), split);
        }
    }

    fn cfg() -> CompressionConfig {
        CompressionConfig::default()
    }

    fn json(len: u64) -> AnswerFacts<'static> {
        AnswerFacts {
            len,
            content_type: Some(b"application/json"),
            encoded: false,
            no_transform: false,
        }
    }

    fn chosen(header: &str) -> Option<Coding> {
        cfg().choose(&AcceptEncoding::parse(header.as_bytes()))
    }

    #[test]
    fn qvalues_follow_the_grammar() {
        for (v, q) in [
            ("0", Some(0)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("0.125", Some(125)),
            ("0.", Some(0)),
            ("1.000", Some(1000)),
            ("1.001", None),
            ("1.5", None),
            ("0.1234", None),
            ("2", None),
            (".5", None),
            ("", None),
            ("0.a", None),
            ("-0", None),
        ] {
            assert_eq!(parse_qvalue(v.as_bytes()), q, "{v}");
        }
    }

    #[test]
    fn no_header_means_identity_and_an_empty_one_too() {
        assert_eq!(cfg().choose(&AcceptEncoding::default()), None);
        assert_eq!(chosen(""), None);
        assert_eq!(chosen(" , "), None);
    }

    #[test]
    fn plain_lists_take_the_configured_order() {
        assert_eq!(chosen("gzip"), Some(Coding::Gzip));
        assert_eq!(chosen("gzip, deflate, br"), Some(Coding::Brotli));
        assert_eq!(chosen("gzip, deflate, br, zstd"), Some(Coding::Zstd));
        assert_eq!(chosen("deflate"), None);
        assert_eq!(chosen("GZIP"), Some(Coding::Gzip));
        assert_eq!(chosen("x-gzip"), Some(Coding::Gzip));
        let gzip_first = CompressionConfig {
            algorithms: vec![Coding::Gzip, Coding::Zstd],
            ..cfg()
        };
        let accept = AcceptEncoding::parse(b"zstd, gzip, br");
        assert_eq!(gzip_first.choose(&accept), Some(Coding::Gzip));
        // A coding that is not configured is never chosen.
        assert_eq!(
            gzip_first.choose(&AcceptEncoding::parse(b"br")),
            None,
            "br is off"
        );
    }

    #[test]
    fn the_highest_qvalue_wins() {
        assert_eq!(chosen("zstd;q=0.5, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(
            chosen("zstd;q=0.5, gzip ; q=0.8 , br;q=0.9"),
            Some(Coding::Brotli)
        );
        assert_eq!(chosen("br;Q=0.1,gzip;q=0.2"), Some(Coding::Gzip));
        assert_eq!(chosen("zstd;q=0, gzip;q=0.001"), Some(Coding::Gzip));
        assert_eq!(chosen("zstd;q=0, br;q=0, gzip;q=0"), None);
    }

    #[test]
    fn star_stands_for_every_coding_not_listed() {
        assert_eq!(chosen("*"), Some(Coding::Zstd));
        assert_eq!(chosen("zstd;q=0, *"), Some(Coding::Brotli));
        assert_eq!(chosen("*;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(chosen("*;q=0"), None);
        assert_eq!(chosen("*;q=0, br"), Some(Coding::Brotli));
    }

    #[test]
    fn identity_preferred_over_every_coding_wins() {
        assert_eq!(chosen("identity, gzip;q=0.5"), None);
        assert_eq!(chosen("identity;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(
            chosen("identity, gzip"),
            Some(Coding::Gzip),
            "a tie compresses"
        );
        // Unlisted identity stays acceptable but carries no preference.
        assert_eq!(chosen("gzip;q=0.1"), Some(Coding::Gzip));
    }

    #[test]
    fn identity_can_be_refused() {
        for h in ["identity;q=0", "gzip, identity;q=0", "*;q=0", "*;q=0, gzip"] {
            assert!(
                AcceptEncoding::parse(h.as_bytes()).refuses_identity(),
                "{h}"
            );
        }
        for h in ["gzip", "*;q=0, identity", "identity;q=0.1", ""] {
            assert!(
                !AcceptEncoding::parse(h.as_bytes()).refuses_identity(),
                "{h}"
            );
        }
        assert!(!AcceptEncoding::default().refuses_identity());
        // Refused identity compresses even a small answer...
        let c = cfg();
        let small = json(100);
        let d = c.decide(&AcceptEncoding::parse(b"gzip, identity;q=0"), &small);
        assert_eq!(d.coding, Some(Coding::Gzip));
        // ...and when nothing is acceptable identity goes anyway (RFC 9110 §12.5.3).
        let d = c.decide(&AcceptEncoding::parse(b"deflate, identity;q=0"), &small);
        assert_eq!(d.coding, None);
    }

    #[test]
    fn malformed_elements_are_ignored() {
        assert_eq!(chosen("gzip;q=2"), None);
        assert_eq!(chosen("gzip;q=abc, br"), Some(Coding::Brotli));
        assert_eq!(chosen("gzip;level=9"), Some(Coding::Gzip));
        assert_eq!(chosen(";q=1, gzip"), Some(Coding::Gzip));
        assert_eq!(
            chosen("gzip;q=0.5;q=0"),
            None,
            "the last q parameter counts"
        );
    }

    #[test]
    fn the_first_entry_for_a_coding_counts_across_lines() {
        let mut a = AcceptEncoding::default();
        a.add(b"gzip;q=0");
        a.add(b"gzip, br;q=0.2");
        assert_eq!(a.q(Coding::Gzip), 0);
        assert_eq!(cfg().choose(&a), Some(Coding::Brotli));
    }

    #[test]
    fn no_transform_is_found_in_a_list() {
        assert!(has_no_transform(b"no-transform"));
        assert!(has_no_transform(b"private, No-Transform , max-age=0"));
        assert!(!has_no_transform(b"no-store"));
        assert!(!has_no_transform(b"no-transformer"));
    }

    #[test]
    fn small_answers_go_as_they_are() {
        let c = cfg();
        let a = AcceptEncoding::parse(b"gzip");
        assert_eq!(c.decide(&a, &json(c.min_bytes - 1)), Decision::default());
        let d = c.decide(&a, &json(c.min_bytes));
        assert_eq!(d.coding, Some(Coding::Gzip));
        assert!(d.vary);
        assert_eq!(c.decide(&a, &json(c.max_bytes + 1)), Decision::default());
    }

    #[test]
    fn a_large_answer_varies_even_for_a_client_that_did_not_ask() {
        let d = cfg().decide(&AcceptEncoding::default(), &json(1 << 20));
        assert_eq!(
            d,
            Decision {
                coding: None,
                vary: true
            }
        );
    }

    #[test]
    fn content_types_and_codings_decide_too() {
        let c = cfg();
        let a = AcceptEncoding::parse(b"gzip");
        let with = |ct: &'static [u8]| AnswerFacts {
            content_type: Some(ct),
            ..json(1 << 20)
        };
        for ct in [
            &b"application/json; charset=utf-8"[..],
            b"text/plain",
            b"application/problem+json",
            b"Application/JSON",
        ] {
            assert_eq!(c.decide(&a, &with(ct)).coding, Some(Coding::Gzip));
        }
        for ct in [
            &b"image/png"[..],
            b"application/octet-stream",
            b"audio/mpeg",
        ] {
            assert_eq!(c.decide(&a, &with(ct)), Decision::default());
        }
        assert_eq!(
            c.decide(&a, &with(b"text/event-stream")),
            Decision::default()
        );
        let streams = CompressionConfig {
            streams: true,
            ..cfg()
        };
        assert_eq!(
            streams.decide(&a, &with(b"text/event-stream")).coding,
            Some(Coding::Gzip)
        );
        let untyped = AnswerFacts {
            content_type: None,
            ..json(1 << 20)
        };
        assert_eq!(c.decide(&a, &untyped), Decision::default());
        let encoded = AnswerFacts {
            encoded: true,
            ..json(1 << 20)
        };
        assert_eq!(c.decide(&a, &encoded), Decision::default());
        let kept = AnswerFacts {
            no_transform: true,
            ..json(1 << 20)
        };
        assert_eq!(c.decide(&a, &kept), Decision::default());
        let off = CompressionConfig {
            enabled: false,
            ..cfg()
        };
        assert_eq!(off.decide(&a, &json(1 << 20)), Decision::default());
        assert!(!off.may_compress(&a));
    }
}
