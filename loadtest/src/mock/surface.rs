//! Answers of the OpenAI endpoints beyond chat (moderations, images, audio) and Anthropic's
//! token counting, in the providers' shapes, with usage where the provider reports it.

use super::http::push_u64;
use super::shapes::{push_json_str, push_piece, Answer, CREATED};

/// `POST /v1/messages/count_tokens`: `{"input_tokens": n}`, n the mock's prompt estimate.
pub(crate) fn count_tokens(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"input_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.push(b'}');
}

/// `POST /v1/moderations`: one result, nothing flagged (moderations report no usage).
pub(crate) fn moderation(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"id\":\"modr-mock-");
    push_u64(out, a.id);
    out.extend_from_slice(b"\",\"model\":");
    push_json_str(out, &a.model);
    out.extend_from_slice(b",\"results\":[{\"flagged\":false,\"categories\":{");
    const CATEGORIES: [&str; 4] = ["harassment", "hate", "self-harm", "violence"];
    for (i, c) in CATEGORIES.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, c);
        out.extend_from_slice(b":false");
    }
    out.extend_from_slice(b"},\"category_scores\":{");
    for (i, c) in CATEGORIES.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(out, c);
        out.extend_from_slice(b":0.0001");
    }
    out.extend_from_slice(b"}}]}");
}

/// `POST /v1/images/generations`: one image as base64 (the bytes `mock`), with token usage
/// as `gpt-image-1` reports it.
pub(crate) fn image(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"created\":");
    push_u64(out, CREATED);
    out.extend_from_slice(b",\"data\":[{\"b64_json\":\"bW9jaw==\",\"revised_prompt\":\"a mock image\"}],\"usage\":{\"input_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, a.prompt_tokens + u64::from(a.chunks));
    out.extend_from_slice(b",\"input_tokens_details\":{\"text_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"image_tokens\":0}}}");
}

/// `POST /v1/audio/transcriptions`: the answer text, with token usage as
/// `gpt-4o-transcribe` reports it.
pub(crate) fn transcription(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"text\":\"");
    for _ in 0..a.chunks {
        push_piece(out, a.chunk_size);
    }
    out.extend_from_slice(b"\",\"usage\":{\"type\":\"tokens\",\"input_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, a.prompt_tokens + u64::from(a.chunks));
    out.extend_from_slice(b"}}");
}

/// `POST /v1/audio/speech`: binary "audio" (`audio/mpeg`): an ID3 tag, then every byte
/// value in turn, so a client can check the bytes arrived unchanged.
pub(crate) fn speech(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"ID3\x04\x00\x00\x00\x00\x00\x00");
    let len = 256 * (a.chunks as usize).max(1);
    out.extend((0..len).map(|i| (i % 256) as u8));
}

/// A Gemini `GenerateContentResponse` with the whole text and `usageMetadata`.
pub(crate) fn gemini(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"");
    for _ in 0..a.chunks {
        push_piece(out, a.chunk_size);
    }
    out.extend_from_slice(b"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],");
    gemini_tail(out, a);
}

/// `"usageMetadata":{…},"modelVersion":M,"responseId":…}`: the end of every Gemini answer
/// that reports usage.
pub(crate) fn gemini_tail(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"\"usageMetadata\":{\"promptTokenCount\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"candidatesTokenCount\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"totalTokenCount\":");
    push_u64(out, a.prompt_tokens + u64::from(a.chunks));
    out.extend_from_slice(b"},\"modelVersion\":");
    push_json_str(out, &a.model);
    out.extend_from_slice(b",\"responseId\":\"mock-");
    push_u64(out, a.id);
    out.extend_from_slice(b"\"}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            id: 7,
            model: "m\"x".into(),
            prompt_tokens: 5,
            chunks: 3,
            chunk_size: 4,
            inputs: 1,
        }
    }

    #[test]
    fn bodies_are_valid_json_with_usage() {
        for write in [count_tokens, moderation, image, transcription, gemini] {
            let mut out = Vec::new();
            write(&mut out, &answer());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(v.is_object());
        }
        let mut out = Vec::new();
        image(&mut out, &answer());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["output_tokens"], 3);
        let mut audio = Vec::new();
        speech(&mut audio, &answer());
        assert!(audio.starts_with(b"ID3") && audio.len() == 10 + 768);
    }
}
