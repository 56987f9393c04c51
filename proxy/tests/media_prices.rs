//! Prices per image, per second of audio and per character through the real binary and the
//! mock: images/generations at a catalog's `output_cost_per_image`, a WAV transcription by the
//! seconds in its header (an MP3 by its size, marked estimated), speech by its input's
//! characters; each cost lands in the ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::time::Duration;

use access::*;
use common::*;
use serde_json::{json, Value};

const BOUNDARY: &str = "sluiceMediaBoundary7";

/// A transcription form: the file part, then the model.
fn form(model: &str, file: &[u8], name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\ncontent-type: application/octet-stream\r\n\r\n").as_bytes());
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{BOUNDARY}--\r\n").as_bytes());
    b
}

/// 16 kHz mono 16-bit PCM: 32000 bytes a second.
fn wav(seconds: u32) -> Vec<u8> {
    let data = seconds * 32_000;
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(36 + data).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&[1, 0, 1, 0]);
    v.extend_from_slice(&16_000u32.to_le_bytes());
    v.extend_from_slice(&32_000u32.to_le_bytes());
    v.extend_from_slice(&[2, 0, 16, 0]);
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data.to_le_bytes());
    v.extend((0..data).map(|i| (i % 200) as u8));
    v
}

fn post(gw: &Gw, key: &str, path: &str, content_type: &str, body: &[u8]) -> Response {
    let mut c = Client::connect(gw.addr);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    c.send_raw(&req);
    c.read_response()
}

#[test]
fn images_audio_seconds_and_characters_are_priced_and_recorded() {
    let mock = mock();
    let dir = temp_dir("media");
    let catalog = dir.join("model_prices_and_context_window.json");
    std::fs::write(
        &catalog,
        r#"{"mock-image-model": {"output_cost_per_image": 0.04, "mode": "image_generation"},
            "mock-whisper": {"input_cost_per_second": 0.0001, "mode": "audio_transcription"},
            "mock-tts": {"input_cost_per_character": 1.5e-05, "mode": "audio_speech"}}"#,
    )
    .unwrap();
    let extra = format!(
        r#"
[pricing]
catalog_file = "{}"

[[models]]
name = "img"
deployments = [{{ provider = "mock", model = "mock-image-model" }}]

[[models]]
name = "whisper"
deployments = [{{ provider = "mock", model = "mock-whisper" }}]

[[models]]
name = "tts"
deployments = [{{ provider = "mock", model = "mock-tts" }}]
"#,
        catalog.display()
    );
    let gw = start(
        &store_config(mock.addr(), &dir.join("s.db"), 1, &extra),
        "epoll",
    );
    let (id, key) = gw.create_key(json!({"name": "media"}));

    // One image at $0.04.
    let r = post(
        &gw,
        &key,
        "/v1/images/generations",
        "application/json",
        br#"{"model":"img","prompt":"a cat","n":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sluice-cost-usd"), Some("0.040000"));

    // A 3-second WAV at $0.0001 a second (the mock reports tokens, not seconds).
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let r = post(
        &gw,
        &key,
        "/v1/audio/transcriptions",
        &ct,
        &form("whisper", &wav(3), "a.wav"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sluice-cost-usd"), Some("0.000300"));
    // 160 kB that is not a WAV: 10 seconds at 128 kbit/s, marked estimated.
    let mp3: Vec<u8> = (0..160_000u32).map(|i| (i % 199) as u8).collect();
    let r = post(
        &gw,
        &key,
        "/v1/audio/transcriptions",
        &ct,
        &form("whisper", &mp3, "a.mp3"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-sluice-cost-usd"), Some("0.001000"));

    // Speech: 11 characters at $0.000015.
    let r = post(
        &gw,
        &key,
        "/v1/audio/speech",
        "application/json",
        br#"{"model":"tts","input":"hello world","voice":"alloy"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The ledger has each cost.
    let rows = wait_for(Duration::from_secs(10), || {
        let (_, v) = gw.admin("GET", &format!("/admin/usage?key_id={id}&limit=100"), None);
        let rows = v["data"].as_array().cloned().unwrap_or_default();
        (rows.len() >= 4).then_some(rows)
    })
    .expect("four ledger rows");
    let mut costs: Vec<(String, u64)> = rows
        .iter()
        .map(|r: &Value| {
            (
                r["model"].as_str().unwrap().to_string(),
                r["cost_micros"].as_u64().unwrap(),
            )
        })
        .collect();
    costs.sort();
    assert_eq!(
        costs,
        [
            ("img".to_string(), 40_000),
            ("tts".to_string(), 165),
            ("whisper".to_string(), 300),
            ("whisper".to_string(), 1000),
        ],
        "{rows:?}"
    );
    let log = gw.access_lines(4);
    let estimated: Vec<bool> = log
        .iter()
        .filter(|l| l["path"] == "/v1/audio/transcriptions")
        .map(|l| l["tokens_estimated"] == true)
        .collect();
    assert_eq!(estimated, [false, true], "{log:?}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
