//! JSON bodies of non-streaming answers, in OpenAI and Anthropic shapes.
//!
//! Bodies are written straight into a byte buffer: the only dynamic strings
//! are the echoed `model` (escaped by [`push_json_str`]) and the generated
//! text, which is plain ASCII.

use super::http::push_u64;
use super::stats::MockStats;

/// The `created` timestamp of every answer, fixed so outputs are stable.
pub(crate) const CREATED: u64 = 1_700_000_000;

/// The text every answer is made of, cycled.
const PATTERN: &[u8] = b"tok ";

/// What an answer contains, whichever shape it is written in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Unique number for the answer's id.
    pub(crate) id: u64,
    /// The request's `model`, echoed.
    pub(crate) model: String,
    /// `max(1, request body bytes / 4)`.
    pub(crate) prompt_tokens: u64,
    /// Content pieces (stream chunks); also the completion token count.
    pub(crate) chunks: u32,
    /// Bytes of text per piece.
    pub(crate) chunk_size: usize,
    /// Embeddings: how many inputs were given.
    pub(crate) inputs: usize,
    /// Embeddings: the inputs' texts (see `embed`).
    pub(crate) texts: Vec<String>,
}

impl Answer {
    fn total_tokens(&self) -> u64 {
        self.prompt_tokens + u64::from(self.chunks)
    }
}

/// Appends one content piece: `size` bytes of the pattern.
pub(crate) fn push_piece(out: &mut Vec<u8>, size: usize) {
    let mut left = size;
    while left > 0 {
        let n = left.min(PATTERN.len());
        out.extend_from_slice(&PATTERN[..n]);
        left -= n;
    }
}

/// Appends the whole answer text as a JSON string.
fn push_text(out: &mut Vec<u8>, a: &Answer) {
    out.push(b'"');
    for _ in 0..a.chunks {
        push_piece(out, a.chunk_size);
    }
    out.push(b'"');
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        plain_from = i + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// Appends `"id":"<prefix><n>","object":"<object>","created":..,"model":M`.
pub(crate) fn push_openai_envelope(out: &mut Vec<u8>, id_prefix: &str, object: &str, a: &Answer) {
    out.extend_from_slice(b"\"id\":\"");
    out.extend_from_slice(id_prefix.as_bytes());
    push_u64(out, a.id);
    out.extend_from_slice(b"\",\"object\":\"");
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(b"\",\"created\":");
    push_u64(out, CREATED);
    out.extend_from_slice(b",\"model\":");
    push_json_str(out, &a.model);
}

/// Appends an OpenAI `usage` object (`{"prompt_tokens":..}`).
pub(crate) fn push_openai_usage(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"prompt_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, a.total_tokens());
    out.push(b'}');
}

/// `POST /v1/chat/completions`, non-streaming.
pub(crate) fn chat(out: &mut Vec<u8>, a: &Answer) {
    out.push(b'{');
    push_openai_envelope(out, "chatcmpl-mock-", "chat.completion", a);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    push_text(out, a);
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":");
    push_openai_usage(out, a);
    out.push(b'}');
}

/// `POST /v1/completions`, non-streaming.
pub(crate) fn completion(out: &mut Vec<u8>, a: &Answer) {
    out.push(b'{');
    push_openai_envelope(out, "cmpl-mock-", "text_completion", a);
    out.extend_from_slice(b",\"choices\":[{\"text\":");
    push_text(out, a);
    out.extend_from_slice(
        b",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":",
    );
    push_openai_usage(out, a);
    out.push(b'}');
}

/// `POST /v1/embeddings`: one vector per input, from its text (see `embed`).
pub(crate) fn embeddings(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for i in 0..a.inputs {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        push_u64(out, i as u64);
        out.extend_from_slice(b",\"embedding\":");
        let text = a.texts.get(i).map_or("", String::as_str);
        super::embed::push_vector(out, &super::embed::embed(text));
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"model\":");
    push_json_str(out, &a.model);
    out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b"}}");
}

/// `POST /v1/responses`: a completed Responses API object with one message.
pub(crate) fn responses(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"id\":\"resp_mock_");
    push_u64(out, a.id);
    out.extend_from_slice(b"\",\"object\":\"response\",\"created_at\":");
    push_u64(out, CREATED);
    out.extend_from_slice(b",\"status\":\"completed\",\"model\":");
    push_json_str(out, &a.model);
    out.extend_from_slice(b",\"output\":[{\"type\":\"message\",\"id\":\"msg_mock_");
    push_u64(out, a.id);
    out.extend_from_slice(
        b"\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":",
    );
    push_text(out, a);
    out.extend_from_slice(b",\"annotations\":[]}]}],\"usage\":{\"input_tokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, a.total_tokens());
    out.extend_from_slice(b"}}");
}

/// Model ids listed by `GET /v1/models`.
pub(crate) const MODELS: [&str; 4] = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "claude-3-5-haiku-latest",
];

/// `GET /v1/models`.
pub(crate) fn models(out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, id) in MODELS.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        push_json_str(out, id);
        out.extend_from_slice(b",\"object\":\"model\",\"created\":");
        push_u64(out, CREATED);
        out.extend_from_slice(b",\"owned_by\":\"sluice-mock\"}");
    }
    out.extend_from_slice(b"]}");
}

/// Appends `"id":"msg_mock_<n>","type":"message","role":"assistant","model":M`.
pub(crate) fn push_anthropic_envelope(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"\"id\":\"msg_mock_");
    push_u64(out, a.id);
    out.extend_from_slice(b"\",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    push_json_str(out, &a.model);
}

/// `POST /v1/messages` (Anthropic), non-streaming.
pub(crate) fn messages(out: &mut Vec<u8>, a: &Answer) {
    out.push(b'{');
    push_anthropic_envelope(out, a);
    out.extend_from_slice(b",\"content\":[{\"type\":\"text\",\"text\":");
    push_text(out, a);
    out.extend_from_slice(
        b"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":",
    );
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b"}}");
}

/// An OpenAI-style error body: `{"error":{"message":..,"type":..,"code":null}}`.
pub(crate) fn error(out: &mut Vec<u8>, status: u16, message: &str) {
    let kind = match status {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    out.extend_from_slice(b"{\"error\":{\"message\":");
    push_json_str(out, message);
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"code\":null}}");
}

/// `GET /mock/stats`.
pub(crate) fn stats(out: &mut Vec<u8>, stats: &MockStats) {
    if serde_json::to_writer(&mut *out, stats).is_err() {
        // Serializing plain integers cannot fail; keep the body valid anyway.
        out.clear();
        out.extend_from_slice(b"{}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            id: 7,
            model: "m\"1\n".into(),
            prompt_tokens: 3,
            chunks: 2,
            chunk_size: 6,
            inputs: 2,
            texts: vec!["a".into(), "b".into()],
        }
    }

    fn json(write: fn(&mut Vec<u8>, &Answer)) -> serde_json::Value {
        let mut out = Vec::new();
        write(&mut out, &answer());
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        push_json_str(&mut out, "a\"b\\c\u{1}é");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\u{1}é");
    }

    #[test]
    fn bodies_are_valid_json() {
        let chat = json(chat);
        assert_eq!(chat["model"], "m\"1\n");
        assert_eq!(chat["choices"][0]["message"]["content"], "tok totok to");
        assert_eq!(chat["usage"]["total_tokens"], 5);
        assert_eq!(json(completion)["choices"][0]["text"], "tok totok to");
        assert_eq!(json(embeddings)["data"][1]["index"], 1);
        assert_eq!(json(responses)["usage"]["output_tokens"], 2);
        assert_eq!(json(messages)["usage"]["input_tokens"], 3);
        let mut out = Vec::new();
        models(&mut out);
        let models: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(models["data"].as_array().unwrap().len(), MODELS.len());
        out.clear();
        error(&mut out, 429, "slow down");
        let error: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
    }
}
