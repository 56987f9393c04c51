//! The prompt-token estimate a request reserves before its real count is known, with images
//! counted the way the providers bill them rather than as text.
//!
//! Text is about four bytes a token. An image sent inline is a base64 string of a megabyte or
//! more, which as text would count as hundreds of thousands of tokens; the providers bill it by
//! its pixel size instead. [`scan`] walks the JSON body once (string literals only, no DOM),
//! takes every inline image out of the text count, reads its width and height from the
//! PNG/JPEG/GIF/WebP header inside the base64 (decoding only the few bytes the header walk
//! needs, never the image), and sums each provider's rule ([`ImageRule`]):
//!
//! - OpenAI: `detail: low` is 85 tokens; otherwise the image is scaled to fit 2048x2048, then
//!   its short side to 768, and costs 85 + 170 per 512-pixel tile.
//! - Anthropic: an image whose long edge is past 1568 pixels is scaled down to it; then
//!   `width * height / 750` tokens, at most about 1600.
//! - Gemini: 258 tokens when both sides are at most 384 pixels, else 258 per 768x768 tile.
//!
//! An image given by URL (`https://…`) cannot be measured without fetching it: it counts
//! [`URL_IMAGE_TOKENS`], the most either OpenAI's or Anthropic's rule charges for one image
//! at the size they scale to. So does an inline image whose size cannot be read.

use base64::Engine as _;

use crate::config::ProviderKind;
use crate::dialect::Publisher;

/// Tokens counted for an image given by URL, or inline with a header we cannot read: the
/// most OpenAI (8 tiles: 1445) or Anthropic (about 1600) bill for one image.
pub const URL_IMAGE_TOKENS: u64 = 1600;

/// Bytes of a string literal below which it is never taken for an inline image (a data URL
/// of a 1x1 PNG is about 90 bytes).
const MIN_INLINE_IMAGE: usize = 64;

/// Whose published rule prices an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageRule {
    /// OpenAI and Azure OpenAI (and OpenAI-compatible servers).
    OpenAi,
    /// Anthropic.
    Anthropic,
    /// Google Gemini.
    Gemini,
}

impl ImageRule {
    /// The rule of an upstream that speaks `kind`.
    pub fn of(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::OpenAi | ProviderKind::Azure => ImageRule::OpenAi,
            ProviderKind::Anthropic | ProviderKind::Vertex(Publisher::Anthropic) => {
                ImageRule::Anthropic
            }
            ProviderKind::Gemini | ProviderKind::Vertex(Publisher::Google) => ImageRule::Gemini,
            // Bedrock's image models are mostly Claude: Anthropic's rule (the most it charges).
            ProviderKind::Bedrock => ImageRule::Anthropic,
        }
    }

    fn index(self) -> usize {
        match self {
            ImageRule::OpenAi => 0,
            ImageRule::Anthropic => 1,
            ImageRule::Gemini => 2,
        }
    }
}

/// What a body's prompt is made of: bytes of text and the images' tokens under each rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptScan {
    /// Body bytes that are not images.
    pub text_bytes: u64,
    /// Images found (inline and by URL).
    pub images: u64,
    /// The images' tokens under each rule, in [`ImageRule`] order.
    image_tokens: [u64; 3],
}

impl PromptScan {
    /// A prompt of `bytes` bytes of text and no image (a multipart form's fields).
    pub fn text(bytes: usize) -> Self {
        PromptScan {
            text_bytes: bytes as u64,
            ..PromptScan::default()
        }
    }

    /// The estimated prompt tokens for an upstream priced by `rule`: about four bytes of text
    /// a token plus the images' tokens; at least 1.
    pub fn tokens(&self, rule: ImageRule) -> u64 {
        self.text_bytes
            .div_ceil(4)
            .saturating_add(self.image_tokens[rule.index()])
            .max(1)
    }
}

/// Reads what `body` (a JSON request) is made of. Never fails: what is not an image counts as
/// text, so a body that is not JSON is all text.
pub fn scan(body: &[u8]) -> PromptScan {
    // Every image `image_tokens` finds is a string opening `"data` (a data URL, or the value
    // of a `data` key) or one after a key ending `url"` (`url`, `image_url`): a body holding
    // neither (most chat bodies) is all text, without the walk over its strings. Built once:
    // `memmem::find` would build a searcher on every request.
    static DATA: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"data"));
    static URL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"url\""));
    if DATA.find(body).is_none() && URL.find(body).is_none() {
        return PromptScan::text(body.len());
    }
    scan_strings(body)
}

/// [`scan`] by a walk over every string literal of `body`.
fn scan_strings(body: &[u8]) -> PromptScan {
    let mut out = PromptScan::text(body.len());
    // (start, end) of the previous string literal's content, and where it closed.
    let mut prev: Option<(usize, usize)> = None;
    let mut i = 0;
    while let Some(open) = memchr::memchr(b'"', &body[i..]).map(|o| i + o) {
        let start = open + 1;
        let Some(end) = string_end(body, start) else {
            break;
        };
        let content = &body[start..end];
        let key = prev
            .filter(|&(_, pend)| is_key_gap(&body[pend + 1..open]))
            .map(|(ps, pend)| &body[ps..pend]);
        if let Some(tokens) = image_tokens(body, open, end, content, key) {
            out.images += 1;
            out.text_bytes = out.text_bytes.saturating_sub(content.len() as u64);
            for (sum, t) in out.image_tokens.iter_mut().zip(tokens) {
                *sum = sum.saturating_add(t);
            }
        }
        prev = Some((start, end));
        i = end + 1;
    }
    out
}

/// Where the string literal whose content starts at `start` ends (its closing quote).
fn string_end(body: &[u8], start: usize) -> Option<usize> {
    let mut j = start;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', &body[j..])?;
        if body[k] == b'"' {
            return Some(k);
        }
        j = k + 2;
        if j > body.len() {
            return None;
        }
    }
}

/// Whether the bytes between two strings make the first a key of the second (`"k": "v"`).
fn is_key_gap(gap: &[u8]) -> bool {
    let t = gap.trim_ascii();
    t == b":"
}

/// The tokens under each rule of the string `content` (the literal runs from `open` to
/// `end`), when it is an image: a `data:image/…;base64,` URL, a bare base64 image under a
/// `data` key (Anthropic's `source`), or an `http(s)` URL under a `url` or `image_url` key.
fn image_tokens(
    body: &[u8],
    open: usize,
    end: usize,
    content: &[u8],
    key: Option<&[u8]>,
) -> Option<[u64; 3]> {
    let is_url_key = matches!(key, Some(b"url" | b"image_url"));
    if is_url_key && (content.starts_with(b"http://") || content.starts_with(b"https://")) {
        return Some([URL_IMAGE_TOKENS; 3]);
    }
    if content.len() < MIN_INLINE_IMAGE {
        return None;
    }
    let payload = if content.starts_with(b"data:image/") {
        let head = &content[..content.len().min(128)];
        let comma = memchr::memmem::find(head, b";base64,")?;
        &content[comma + 8..]
    } else if key == Some(b"data") {
        content
    } else {
        return None;
    };
    let size = image_size(&Base64Bytes::new(payload));
    if size.is_none() && !content.starts_with(b"data:image/") {
        // Bare base64 that is not an image we know: text.
        return None;
    }
    let low = low_detail(body, open, end);
    Some(match size {
        Some((w, h)) => [
            openai_tokens(w, h, low),
            anthropic_tokens(w, h),
            gemini_tokens(w, h),
        ],
        None => [URL_IMAGE_TOKENS; 3],
    })
}

/// Whether the object holding the string at `open..=end` says `"detail": "low"` (OpenAI's
/// `image_url` object: `{"url": "data:…", "detail": "low"}`, in either order).
fn low_detail(body: &[u8], open: usize, end: usize) -> bool {
    let from = memchr::memrchr2(b'{', b'}', &body[..open]).map_or(0, |p| p + 1);
    let to = memchr::memchr2(b'{', b'}', &body[end..]).map_or(body.len(), |p| end + p);
    let has_low = |part: &[u8]| {
        memchr::memmem::find(part, b"\"detail\"").is_some_and(|d| {
            let rest = part[d + 8..].trim_ascii_start();
            rest.strip_prefix(b":")
                .is_some_and(|v| v.trim_ascii_start().starts_with(b"\"low\""))
        })
    };
    has_low(&body[from..open]) || has_low(&body[end + 1..to])
}

/// OpenAI's rule for a `w`x`h` image (gpt-4o, gpt-4.1 and their kin).
pub fn openai_tokens(w: u32, h: u32, low_detail: bool) -> u64 {
    if low_detail {
        return 85;
    }
    let (mut w, mut h) = (f64::from(w.max(1)), f64::from(h.max(1)));
    let fit = (2048.0 / w.max(h)).min(1.0);
    (w, h) = (w * fit, h * fit);
    let short = (768.0 / w.min(h)).min(1.0);
    (w, h) = (w * short, h * short);
    let tiles = (w / 512.0).ceil() as u64 * (h / 512.0).ceil() as u64;
    85 + 170 * tiles
}

/// Anthropic's rule for a `w`x`h` image: scaled to a long edge of 1568 at most, then
/// `w * h / 750`, at most 1600.
pub fn anthropic_tokens(w: u32, h: u32) -> u64 {
    let (w, h) = (f64::from(w.max(1)), f64::from(h.max(1)));
    let fit = (1568.0 / w.max(h)).min(1.0);
    let tokens = (w * fit * h * fit / 750.0).ceil() as u64;
    tokens.clamp(1, 1600)
}

/// Gemini's rule for a `w`x`h` image: 258 tokens up to 384x384, else 258 per 768x768 tile.
pub fn gemini_tokens(w: u32, h: u32) -> u64 {
    if w <= 384 && h <= 384 {
        return 258;
    }
    258 * u64::from(w.div_ceil(768).max(1)) * u64::from(h.div_ceil(768).max(1))
}

/// The bytes a base64 payload decodes to, read a few at a time: byte `k` is in the 4-character
/// group at `k / 3 * 4`, so a header walk decodes only the groups it looks at. A payload with
/// JSON escapes (`\/`) is unescaped first.
struct Base64Bytes<'a> {
    text: std::borrow::Cow<'a, [u8]>,
}

impl<'a> Base64Bytes<'a> {
    fn new(payload: &'a [u8]) -> Self {
        let text = if payload.contains(&b'\\') {
            let mut v = Vec::with_capacity(payload.len());
            let mut escaped = false;
            for &b in payload {
                if b == b'\\' && !escaped {
                    escaped = true;
                    continue;
                }
                escaped = false;
                v.push(b);
            }
            std::borrow::Cow::Owned(v)
        } else {
            std::borrow::Cow::Borrowed(payload)
        };
        Base64Bytes { text }
    }

    /// Bytes `at..at + N`, or `None` past the end or on bad base64.
    fn read<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        let first = at / 3 * 4;
        let last = (at + N).div_ceil(3) * 4;
        let chars = self.text.get(first..last.min(self.text.len()))?;
        let mut buf = [0u8; 64];
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(chars, &mut buf)
            .ok()?;
        let skip = at - at / 3 * 3;
        buf.get(skip..skip + N)
            .filter(|_| skip + N <= n)?
            .try_into()
            .ok()
    }
}

/// Width and height from an image's header: PNG, GIF, WebP (lossy, lossless, extended) and
/// JPEG (walking its segments to the frame header).
fn image_size(b: &Base64Bytes<'_>) -> Option<(u32, u32)> {
    let magic: [u8; 12] = b.read(0)?;
    let be32 = |x: [u8; 4]| u32::from_be_bytes(x);
    let le16 = |x: [u8; 2]| u32::from(u16::from_le_bytes(x));
    if magic.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some((be32(b.read(16)?), be32(b.read(20)?)));
    }
    if magic.starts_with(b"GIF8") {
        return Some((le16(b.read(6)?), le16(b.read(8)?)));
    }
    if magic.starts_with(b"RIFF") && &magic[8..12] == b"WEBP" {
        let chunk: [u8; 4] = b.read(12)?;
        return match &chunk {
            b"VP8 " => {
                let d: [u8; 4] = b.read(26)?;
                Some((le16([d[0], d[1]]) & 0x3fff, le16([d[2], d[3]]) & 0x3fff))
            }
            b"VP8L" => {
                let d: [u8; 4] = b.read(21)?;
                let bits = u32::from_le_bytes(d);
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            b"VP8X" => {
                let d: [u8; 6] = b.read(24)?;
                let w = u32::from_le_bytes([d[0], d[1], d[2], 0]) + 1;
                let h = u32::from_le_bytes([d[3], d[4], d[5], 0]) + 1;
                Some((w, h))
            }
            _ => None,
        };
    }
    if magic.starts_with(&[0xff, 0xd8]) {
        return jpeg_size(b);
    }
    None
}

/// A JPEG's size from its start-of-frame segment (SOF0 to SOF15 but DHT, JPG and DAC).
fn jpeg_size(b: &Base64Bytes<'_>) -> Option<(u32, u32)> {
    let mut at = 2;
    // A segment is at least 4 bytes: the walk ends within payload/4 steps.
    for _ in 0..100_000 {
        let [ff, mut marker]: [u8; 2] = b.read(at)?;
        if ff != 0xff {
            return None;
        }
        // Fill bytes.
        while marker == 0xff {
            at += 1;
            [marker] = b.read(at + 1)?;
        }
        if marker == 0xd8 || (0xd0..=0xd7).contains(&marker) || marker == 0x01 {
            at += 2;
            continue;
        }
        let len: [u8; 2] = b.read(at + 2)?;
        let len = usize::from(u16::from_be_bytes(len));
        if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            let d: [u8; 5] = b.read(at + 4)?;
            let h = u32::from(u16::from_be_bytes([d[1], d[2]]));
            let w = u32::from(u16::from_be_bytes([d[3], d[4]]));
            return (w > 0 && h > 0).then_some((w, h));
        }
        if len < 2 {
            return None;
        }
        at += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests;
