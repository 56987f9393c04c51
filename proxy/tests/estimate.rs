//! Prompt estimates through the real binary: a request carrying a 1 MB inline image reserves
//! the image's tokens by the provider's rule (not a quarter of its bytes), so a key with a tpm
//! of 50k can send it; and a prompt estimate never reserves past the model's context window.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use access::*;
use base64::Engine as _;
use common::*;
use serde_json::json;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PNG header for a 1024x1024 image followed by `pad` bytes standing for its pixels.
fn png_1024(pad: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    v.extend_from_slice(&1024u32.to_be_bytes());
    v.extend_from_slice(&1024u32.to_be_bytes());
    v.extend_from_slice(&[8, 6, 0, 0, 0]);
    v.resize(v.len() + pad, 0x5a);
    v
}

#[test]
fn a_one_megabyte_image_fits_a_50k_tpm_key_and_windows_cap_estimates() {
    let mock = mock();
    let dir = temp_dir("estimate");
    let extra = r#"
[[models]]
name = "mock-window"
deployments = [{ provider = "mock", model = "mock-window-model" }]

[prices."mock-window-model"]
input_per_mtok = 2.5
output_per_mtok = 10.0
max_input_tokens = 10000
"#;
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 1, extra);
    let gw = start(&cfg, "epoll");
    let (_, key) = gw.create_key(json!({"name": "vision", "tpm": 50000}));

    let image = b64(&png_1024(800_000));
    assert!(image.len() > 1_000_000);
    let body = format!(
        r#"{{"model":"mock-fast","max_tokens":100,"messages":[{{"role":"user","content":[{{"type":"text","text":"What is in this picture?"}},{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]}}"#
    );
    // Reserved: the text (about 40 tokens), 765 for the image (OpenAI's rule for 1024x1024)
    // and max_tokens. (The mock then reports a quarter of the body's bytes as prompt tokens,
    // so this key's bucket is spent by settlement: one request is the test.)
    let r = gw.chat_as(&key, &body, "");
    assert_eq!(r.status, 200, "{}", r.text());

    // The same bytes as text are too large for such a key: only images are read differently.
    let (_, text_key) = gw.create_key(json!({"name": "text", "tpm": 50000}));
    let text = chat_body("mock-fast", false, Some(100), body.len());
    let r = gw.chat_as(&text_key, &text, "");
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("Request too large"), "{}", r.text());

    // 300 KB of text is about 75k tokens, but mock-window-model takes at most 10k: the
    // estimate is capped there (the mock does not enforce windows, so it answers).
    let (_, window_key) = gw.create_key(json!({"name": "window", "tpm": 50000}));
    let long = chat_body("mock-window", false, Some(100), 300_000);
    let r = gw.chat_as(&window_key, &long, "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.chat_as(
        &text_key,
        &chat_body("mock-fast", false, Some(100), 300_000),
        "",
    );
    assert_eq!(r.status, 429, "without a window the same text is too large");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
