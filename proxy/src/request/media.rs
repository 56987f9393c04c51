//! What an image, transcription or speech request used, for the models priced per image,
//! second of audio or character (core's `media` module reads the bytes).

use sluice_core::cost::PriceTable;
use sluice_core::media::{self, MediaUsage};
use sluice_core::multipart;
use sluice_core::usage::Usage;

use super::plan::{ApiEndpoint, Plan};

/// The media `plan`'s request used, given the upstream's answer `body` when it was read
/// whole; `None` for the other endpoints, or when `model` has no media rate.
pub fn usage(
    prices: &PriceTable,
    model: &str,
    plan: &Plan,
    body: Option<&[u8]>,
) -> Option<MediaUsage> {
    // The endpoint first: a chat request (nearly all of them) needs no price lookup here.
    if !matches!(
        plan.endpoint,
        ApiEndpoint::ImagesGenerations
            | ApiEndpoint::AudioSpeech
            | ApiEndpoint::AudioTranscriptions
    ) || !prices.price_ref(model).is_some_and(|p| p.media.is_priced())
    {
        return None;
    }
    match plan.endpoint {
        ApiEndpoint::ImagesGenerations => Some(MediaUsage {
            images: body.map_or(0, media::images_in_answer),
            ..MediaUsage::default()
        }),
        ApiEndpoint::AudioSpeech => Some(MediaUsage {
            input_characters: media::speech_characters(&plan.body),
            ..MediaUsage::default()
        }),
        ApiEndpoint::AudioTranscriptions => {
            if let Some(s) = body.and_then(media::reported_seconds) {
                return Some(MediaUsage {
                    audio_seconds: s,
                    ..MediaUsage::default()
                });
            }
            let file = plan
                .form
                .as_ref()
                .and_then(|f| multipart::boundary(Some(&f.content_type)).ok())
                .and_then(|b| multipart::find_field(&plan.body, b, "file").ok().flatten())
                .and_then(|f| plan.body.get(f.value));
            let file = file.unwrap_or_default();
            Some(match media::wav_seconds(file) {
                Some(s) => MediaUsage {
                    audio_seconds: s,
                    ..MediaUsage::default()
                },
                None => MediaUsage {
                    audio_seconds: media::estimated_seconds(file.len()),
                    estimated: true,
                    ..MediaUsage::default()
                },
            })
        }
        _ => None,
    }
}

/// What a request cost at `model`'s price: its tokens and its media; `None` when neither is
/// known (no usage reported, no media counted) or the model has no price.
pub fn cost(
    prices: &PriceTable,
    model: &str,
    usage: Option<&Usage>,
    media_usage: Option<&MediaUsage>,
) -> Option<u64> {
    if usage.is_none() && media_usage.is_none() {
        return None;
    }
    let price = prices.price_ref(model)?;
    let tokens = usage.map_or(0, |u| sluice_core::cost::cost_micros(&price, u));
    let media = media_usage.map_or(0, |m| media::cost_micros(&price.media, m));
    Some(tokens.saturating_add(media))
}
