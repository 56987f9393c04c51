//! SSE writing for the translators. Reading goes through [`crate::sse::EventSplitter`].

use serde_json::Value;

/// Largest event held back for translation. A longer one is skipped whole (a translator cannot
/// read half a JSON document); providers send events far smaller.
pub(crate) const MAX_EVENT_BYTES: usize = 4 << 20;

/// The OpenAI end of stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// A splitter for a stream to translate.
pub(crate) fn splitter() -> crate::sse::EventSplitter {
    crate::sse::EventSplitter::new(MAX_EVENT_BYTES)
}

/// Writes `data: {json}` and a blank line.
pub(crate) fn write_data(out: &mut Vec<u8>, json: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&super::to_vec(json));
    out.extend_from_slice(b"\n\n");
}

/// Writes `event: {name}`, `data: {json}` and a blank line.
pub(crate) fn write_named(out: &mut Vec<u8>, name: &str, json: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(out, json);
}
