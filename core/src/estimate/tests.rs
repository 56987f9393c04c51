use base64::Engine as _;

use super::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PNG signature and IHDR for a `w`x`h` image, then `pad` bytes of (fake) pixel data.
fn png(w: u32, h: u32, pad: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&w.to_be_bytes());
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.resize(v.len() + pad, 0x5a);
    v
}

/// A JPEG with an APP1 segment of `app_len` bytes before its SOF0.
fn jpeg(w: u16, h: u16, app_len: u16) -> Vec<u8> {
    let mut v = vec![0xff, 0xd8, 0xff, 0xe1];
    v.extend_from_slice(&(app_len + 2).to_be_bytes());
    v.resize(v.len() + usize::from(app_len), 0x11);
    v.extend_from_slice(&[0xff, 0xff, 0xc0, 0, 17, 8]);
    v.extend_from_slice(&h.to_be_bytes());
    v.extend_from_slice(&w.to_be_bytes());
    v.resize(v.len() + 64, 0);
    v
}

fn size_of(bytes: &[u8]) -> Option<(u32, u32)> {
    let text = b64(bytes);
    image_size(&Base64Bytes::new(text.as_bytes()))
}

#[test]
fn reads_sizes_from_headers() {
    assert_eq!(size_of(&png(1024, 768, 100)), Some((1024, 768)));
    assert_eq!(size_of(&jpeg(4000, 3000, 30_000)), Some((4000, 3000)));
    assert_eq!(size_of(&jpeg(1, 2, 0)), Some((1, 2)));
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0x20, 0x03, 0x58, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(size_of(&gif), Some((800, 600)));
    // WebP lossy: VP8 chunk, frame tag, start code, then 14-bit sizes.
    let mut webp = b"RIFF\0\0\0\0WEBPVP8 \0\0\0\0".to_vec();
    webp.extend_from_slice(&[0, 0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0, 0]);
    assert_eq!(size_of(&webp), Some((640, 480)));
    // Lossless: signature byte, then (w-1) and (h-1) in 14 bits each.
    let bits: u32 = (640 - 1) | ((480 - 1) << 14);
    let mut webp = b"RIFF\0\0\0\0WEBPVP8L\0\0\0\0\x2f".to_vec();
    webp.extend_from_slice(&bits.to_le_bytes());
    assert_eq!(size_of(&webp), Some((640, 480)));
    // Extended: 24-bit (w-1) and (h-1) after 4 bytes of flags.
    let mut webp = b"RIFF\0\0\0\0WEBPVP8X\0\0\0\0\0\0\0\0".to_vec();
    webp.extend_from_slice(&[0x7f, 0x0c, 0, 0x37, 0x09, 0]);
    assert_eq!(size_of(&webp), Some((3200, 2360)));
    // Not an image, truncated, not base64.
    assert_eq!(size_of(b"hello world, this is not an image at all"), None);
    assert_eq!(size_of(&png(1, 1, 0)[..18]), None);
    assert_eq!(image_size(&Base64Bytes::new(b"!!!!????")), None);
    // A JPEG whose segments run off the end.
    assert_eq!(size_of(&[0xff, 0xd8, 0xff, 0xe1, 0xff, 0xff, 0, 0]), None);
}

#[test]
fn providers_rules() {
    // OpenAI's published examples.
    assert_eq!(openai_tokens(1024, 1024, false), 765);
    assert_eq!(openai_tokens(2048, 4096, false), 1105);
    assert_eq!(openai_tokens(4096, 8192, true), 85);
    assert_eq!(openai_tokens(100, 100, false), 255);
    // Anthropic's: 1000x1000 is about 1334, 1092x1092 about 1590; large ones are capped.
    assert_eq!(anthropic_tokens(1000, 1000), 1334);
    assert_eq!(anthropic_tokens(1092, 1092), 1590);
    assert_eq!(anthropic_tokens(8000, 8000), 1600);
    assert_eq!(anthropic_tokens(0, 0), 1);
    // Gemini.
    assert_eq!(gemini_tokens(384, 384), 258);
    assert_eq!(gemini_tokens(1024, 1024), 4 * 258);
}

#[test]
fn a_megabyte_image_is_not_a_megabyte_of_text() {
    let image = b64(&png(1024, 1024, 750_000));
    assert!(image.len() > 1_000_000);
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":[{{"type":"text","text":"What is in this picture?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]}}"#
    );
    let s = scan(body.as_bytes());
    assert_eq!(s.images, 1);
    let text = (body.len() - image.len() - "data:image/png;base64,".len()) as u64;
    assert_eq!(s.text_bytes, text);
    assert_eq!(s.tokens(ImageRule::OpenAi), text.div_ceil(4) + 765);
    assert_eq!(s.tokens(ImageRule::Anthropic), text.div_ceil(4) + 1399);
    assert_eq!(s.tokens(ImageRule::Gemini), text.div_ceil(4) + 4 * 258);
    // The old estimate: a quarter of the body.
    assert!(crate::inspect::estimate_prompt_tokens(body.len()) > 250_000);

    // Low detail, before or after the url.
    for detail in [
        format!(r#"{{"detail":"low","url":"data:image/png;base64,{image}"}}"#),
        format!(r#"{{"url":"data:image/png;base64,{image}", "detail" : "low"}}"#),
    ] {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{detail}}}]}}]}}"#
        );
        assert_eq!(scan(body.as_bytes()).image_tokens[0], 85);
    }
}

#[test]
fn anthropic_sources_urls_and_escapes() {
    let jpg = b64(&jpeg(1000, 1000, 5000));
    let body = format!(
        r#"{{"model":"claude","messages":[{{"role":"user","content":[{{"type":"image","source":{{"type":"base64","media_type":"image/jpeg","data":"{jpg}"}}}},{{"type":"image","source":{{"type":"url","url":"https://example.com/a.png"}}}}]}}]}}"#
    );
    let s = scan(body.as_bytes());
    assert_eq!(s.images, 2);
    assert_eq!(s.image_tokens, [765 + 1600, 1334 + 1600, 4 * 258 + 1600]);
    // A JSON encoder that escapes `/`.
    let escaped = b64(&png(512, 512, 3000)).replace('/', "\\/");
    let body = format!(
        r#"{{"image_url":"data:image\/png;base64,{escaped}","x":"data:image/png;base64,{escaped}"}}"#
    );
    let s = scan(body.as_bytes());
    // The first is not `data:image/` literally, so it is text; the second is read.
    assert_eq!(s.images, 1);
    assert_eq!(s.image_tokens[0], 255);
    // A `data` string that is not an image stays text; a `url` that is not http stays text.
    let body = format!(r#"{{"data":"{}","url":"ftp://x"}}"#, "QUJD".repeat(100));
    assert_eq!(scan(body.as_bytes()), PromptScan::text(body.len()));
    // A data URL whose header cannot be read counts the fixed estimate.
    let body = format!(r#"{{"u":"data:image/png;base64,{}"}}"#, "QUJD".repeat(100));
    assert_eq!(scan(body.as_bytes()).image_tokens, [URL_IMAGE_TOKENS; 3]);
}

#[test]
fn text_bodies_count_as_before() {
    for body in [
        &br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi \"there\" \\"}]}"#[..],
        b"",
        b"not json at all",
        b"\"unterminated \\",
        b"{\"a\":\"\\",
    ] {
        let s = scan(body);
        assert_eq!(s.images, 0);
        assert_eq!(
            s.tokens(ImageRule::OpenAi),
            crate::inspect::estimate_prompt_tokens(body.len())
        );
    }
}

proptest::proptest! {
    #[test]
    fn scan_never_panics_and_never_counts_more_text_than_the_body(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
    ) {
        let s = scan(&body);
        proptest::prop_assert!(s.text_bytes <= body.len() as u64);
    }
}

/// Pieces of request bodies: keys and strings that are images or look like them.
fn piece() -> impl proptest::strategy::Strategy<Value = String> {
    let png = b64(&png(640, 480, 200));
    proptest::sample::select(vec![
        "{".to_string(),
        "}".to_string(),
        "[".to_string(),
        "]".to_string(),
        ",".to_string(),
        ":".to_string(),
        " ".to_string(),
        "\\".to_string(),
        "\"".to_string(),
        "\"url\"".to_string(),
        "\"image_url\"".to_string(),
        "\"data\"".to_string(),
        "\"content\"".to_string(),
        "\"https://example.com/cat.png\"".to_string(),
        "\"http://x\"".to_string(),
        format!("\"data:image/png;base64,{png}\""),
        format!("\"{png}\""),
        format!("\"{}\"", "QUJD".repeat(30)),
        "\"detail\":\"low\"".to_string(),
        "\"hello world\"".to_string(),
    ])
}

proptest::proptest! {
    /// The pre-check skips only bodies the walk would count as all text.
    #[test]
    fn the_pre_check_agrees_with_the_walk(
        pieces in proptest::collection::vec(piece(), 0..40)
    ) {
        let body = pieces.concat();
        proptest::prop_assert_eq!(scan(body.as_bytes()), scan_strings(body.as_bytes()));
    }
}

#[test]
fn a_chat_body_without_images_is_all_text() {
    let body =
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"my data is at the url"}]}"#;
    assert_eq!(scan(body), PromptScan::text(body.len()));
    assert_eq!(scan_strings(body), PromptScan::text(body.len()));
}
