//! What image, audio and speech requests used and cost, for the models priced per image, per
//! second of audio or per character (LiteLLM's `output_cost_per_image`,
//! `input_cost_per_second`, `input_cost_per_character`, …; `[prices]` can say the same).
//!
//! - `POST /v1/images/generations`: the images in the answer's `data` array, at the price per
//!   image.
//! - `POST /v1/audio/transcriptions`: seconds of audio, as the provider reports them (the
//!   `duration` of a `verbose_json` answer, or `usage.seconds` of a `type: duration` usage);
//!   else read from the uploaded file when it is a WAV (its byte rate and data size); else
//!   estimated from the file's size at 128 kbit/s (MP3's common rate), and marked estimated.
//! - `POST /v1/audio/speech`: the characters of the request's `input`.
//!
//! Token prices still apply where the provider reports tokens (`gpt-image-1`,
//! `gpt-4o-transcribe`): a model is priced by whichever rates its entry has.

use serde::Deserialize;

/// Media rates in micro-USD per unit (USD per unit times a million). `None`: not priced so.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MediaPrice {
    /// Per image generated.
    pub per_image: Option<f64>,
    /// Per second of input audio.
    pub per_input_second: Option<f64>,
    /// Per character of input (text to speech).
    pub per_input_character: Option<f64>,
    /// Per character of output.
    pub per_output_character: Option<f64>,
}

impl MediaPrice {
    /// Whether any media rate is set.
    pub fn is_priced(&self) -> bool {
        *self != MediaPrice::default()
    }
}

/// What a media request used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MediaUsage {
    /// Images generated.
    pub images: u64,
    /// Seconds of input audio.
    pub audio_seconds: f64,
    /// Characters of input.
    pub input_characters: u64,
    /// Characters of output.
    pub output_characters: u64,
    /// Counted by the gateway from a guess (audio length from the file size), not reported.
    pub estimated: bool,
}

/// Micro-USD `usage` cost at `price`, rounded to nearest; 0 for what has no rate.
pub fn cost_micros(price: &MediaPrice, usage: &MediaUsage) -> u64 {
    let r = |rate: Option<f64>, n: f64| rate.map_or(0.0, |rate| rate * n);
    let micros = r(price.per_image, usage.images as f64)
        + r(price.per_input_second, usage.audio_seconds.max(0.0))
        + r(price.per_input_character, usage.input_characters as f64)
        + r(price.per_output_character, usage.output_characters as f64);
    // `as` saturates; rates are cleaned (finite, not negative).
    micros.round() as u64
}

/// A USD-per-unit rate as micro-USD per unit; negative, NaN and infinite become `None`.
pub fn usd_rate(usd_per_unit: f64) -> Option<f64> {
    (usd_per_unit.is_finite() && usd_per_unit >= 0.0).then_some(usd_per_unit * 1e6)
}

#[derive(Deserialize)]
struct ImagesAnswer {
    #[serde(default)]
    data: Vec<serde::de::IgnoredAny>,
}

/// The images an `images/generations` answer holds (its `data` items); 0 for anything else.
pub fn images_in_answer(body: &[u8]) -> u64 {
    serde_json::from_slice::<ImagesAnswer>(body).map_or(0, |a| a.data.len() as u64)
}

#[derive(Deserialize)]
struct TranscriptionAnswer {
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    usage: Option<DurationUsage>,
}

#[derive(Deserialize)]
struct DurationUsage {
    #[serde(default)]
    seconds: Option<f64>,
}

/// The seconds of audio a transcription answer reports: `usage.seconds` (`whisper-1`'s
/// `type: duration` usage) or the `duration` of a `verbose_json` answer.
pub fn reported_seconds(body: &[u8]) -> Option<f64> {
    let a: TranscriptionAnswer = serde_json::from_slice(body).ok()?;
    a.usage
        .and_then(|u| u.seconds)
        .or(a.duration)
        .filter(|s| s.is_finite() && *s >= 0.0)
}

/// The length of a WAV file from its header: the `data` chunk's size over the `fmt ` chunk's
/// byte rate. `None` when `file` is not a RIFF/WAVE file with both chunks.
pub fn wav_seconds(file: &[u8]) -> Option<f64> {
    if file.get(0..4)? != b"RIFF" || file.get(8..12)? != b"WAVE" {
        return None;
    }
    let le32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(file.get(at..at + 4)?.try_into().ok()?))
    };
    let mut at = 12;
    let mut byte_rate = None;
    // A WAV has a handful of chunks; 64 is plenty.
    for _ in 0..64 {
        let id = file.get(at..at + 4)?;
        let size = le32(at + 4)? as usize;
        if id == b"fmt " {
            byte_rate = le32(at + 16).filter(|r| *r > 0);
        } else if id == b"data" {
            // A streamed WAV may say 0 or 0xFFFFFFFF: take what is there.
            let size = if size == 0 || size == u32::MAX as usize {
                file.len().saturating_sub(at + 8)
            } else {
                size
            };
            return Some(size as f64 / f64::from(byte_rate?));
        }
        at = at.checked_add(8 + size + (size & 1))?;
    }
    None
}

/// The estimated length of `bytes` of compressed audio: 128 kbit/s.
pub fn estimated_seconds(bytes: usize) -> f64 {
    bytes as f64 / 16_000.0
}

#[derive(Deserialize)]
struct SpeechRequest {
    #[serde(default)]
    input: Option<String>,
}

/// The characters of a speech request's `input`; 0 when it has none.
pub fn speech_characters(body: &[u8]) -> u64 {
    serde_json::from_slice::<SpeechRequest>(body)
        .ok()
        .and_then(|r| r.input)
        .map_or(0, |t| t.chars().count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, bits: u16, samples: u32) -> Vec<u8> {
        let block = channels * bits / 8;
        let data = samples * u32::from(block);
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(36 + data).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"LIST\x03\0\0\0abc\0");
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data.to_le_bytes());
        v.resize(v.len() + data as usize, 0);
        v
    }

    #[test]
    fn wav_lengths() {
        assert_eq!(wav_seconds(&wav(16_000, 1, 16, 48_000)), Some(3.0));
        assert_eq!(wav_seconds(&wav(44_100, 2, 16, 22_050)), Some(0.5));
        assert_eq!(wav_seconds(b"ID3\x04 not a wav"), None);
        assert_eq!(wav_seconds(b"RIFF\0\0\0\0WAVE"), None);
        let mut no_fmt = wav(8000, 1, 8, 10);
        no_fmt[12..16].copy_from_slice(b"junk");
        assert_eq!(wav_seconds(&no_fmt), None);
        assert_eq!(estimated_seconds(160_000), 10.0);
    }

    #[test]
    fn what_answers_and_requests_say() {
        assert_eq!(
            images_in_answer(br#"{"created":1,"data":[{"b64_json":"x"},{"url":"u"}]}"#),
            2
        );
        assert_eq!(images_in_answer(b"not json"), 0);
        assert_eq!(
            reported_seconds(br#"{"text":"hi","usage":{"type":"duration","seconds":7.5}}"#),
            Some(7.5)
        );
        assert_eq!(
            reported_seconds(br#"{"text":"hi","duration":3.25,"segments":[]}"#),
            Some(3.25)
        );
        assert_eq!(
            reported_seconds(br#"{"text":"hi","usage":{"type":"tokens","input_tokens":3}}"#),
            None
        );
        assert_eq!(reported_seconds(br#"{"duration":-1}"#), None);
        assert_eq!(
            speech_characters(r#"{"model":"tts-1","input":"héllo","voice":"alloy"}"#.as_bytes()),
            5
        );
        assert_eq!(speech_characters(b"{}"), 0);
    }

    #[test]
    fn costs() {
        let p = MediaPrice {
            per_image: usd_rate(0.04),
            per_input_second: usd_rate(0.0001),
            per_input_character: usd_rate(0.000015),
            per_output_character: None,
        };
        assert!(p.is_priced() && !MediaPrice::default().is_priced());
        let images = MediaUsage {
            images: 2,
            ..MediaUsage::default()
        };
        assert_eq!(cost_micros(&p, &images), 80_000);
        let audio = MediaUsage {
            audio_seconds: 30.0,
            ..MediaUsage::default()
        };
        assert_eq!(cost_micros(&p, &audio), 3000);
        let speech = MediaUsage {
            input_characters: 1000,
            output_characters: 50,
            ..MediaUsage::default()
        };
        assert_eq!(cost_micros(&p, &speech), 15_000);
        assert_eq!(usd_rate(-1.0), None);
        assert_eq!(usd_rate(f64::NAN), None);
    }
}
