//! Server-sent events of streaming answers: OpenAI chat and text completion
//! chunks, Responses API events, and Anthropic's message events.
//!
//! A stream is three phases, whatever the dialect: [`StreamSpec::prelude`],
//! one [`StreamSpec::content`] per chunk, then [`StreamSpec::finish`]. Each
//! SSE event becomes one HTTP chunk; the connection decides when to write.

use super::http::{push_u64, write_chunk, LAST_CHUNK};
use super::shapes::{
    push_anthropic_envelope, push_json_str, push_openai_envelope, push_openai_usage, push_piece,
    responses, Answer,
};
use super::surface::gemini_tail;

/// Which event format a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `chat.completion.chunk` with `delta`s.
    OpenAiChat,
    /// `text_completion` chunks with `text`.
    OpenAiText,
    /// Anthropic `message_start` .. `message_stop`.
    Anthropic,
    /// Responses API `response.created` .. `response.completed`.
    Responses,
    /// Gemini `GenerateContentResponse` events (`alt=sse`), no end marker.
    Gemini,
    /// Bedrock ConverseStream: binary AWS event-stream frames, not SSE.
    Bedrock,
}

/// Everything needed to write one streaming answer.
#[derive(Debug)]
pub(crate) struct StreamSpec {
    dialect: Dialect,
    answer: Answer,
    /// OpenAI `stream_options.include_usage`.
    include_usage: bool,
    /// OpenAI: the JSON every chunk starts with, up to `"choices":[`.
    chunk_prefix: Vec<u8>,
}

/// Frames SSE events into HTTP chunks; owns the scratch buffer events are
/// built in.
#[derive(Debug, Default)]
pub(crate) struct EventWriter {
    /// False for HTTP/1.0 clients: the body is close-delimited.
    pub(crate) chunked: bool,
    scratch: Vec<u8>,
}

impl EventWriter {
    /// Appends one event (`event: name` line when named) to `out`.
    fn event(&mut self, out: &mut Vec<u8>, name: Option<&str>, data: impl FnOnce(&mut Vec<u8>)) {
        self.scratch.clear();
        if let Some(name) = name {
            self.scratch.extend_from_slice(b"event: ");
            self.scratch.extend_from_slice(name.as_bytes());
            self.scratch.push(b'\n');
        }
        self.scratch.extend_from_slice(b"data: ");
        data(&mut self.scratch);
        self.scratch.extend_from_slice(b"\n\n");
        write_chunk(out, &self.scratch, self.chunked);
    }

    /// Appends bytes that are not SSE (Bedrock's binary frames) as one chunk.
    fn raw(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        write_chunk(out, bytes, self.chunked);
    }

    /// Appends the end of the body (the last chunk), if chunked.
    pub(crate) fn end(&self, out: &mut Vec<u8>) {
        if self.chunked {
            out.extend_from_slice(LAST_CHUNK);
        }
    }
}

impl StreamSpec {
    pub(crate) fn new(dialect: Dialect, answer: Answer, include_usage: bool) -> StreamSpec {
        let mut chunk_prefix = Vec::new();
        let (id_prefix, object) = match dialect {
            Dialect::OpenAiChat => ("chatcmpl-mock-", "chat.completion.chunk"),
            Dialect::OpenAiText => ("cmpl-mock-", "text_completion"),
            Dialect::Anthropic | Dialect::Responses | Dialect::Gemini | Dialect::Bedrock => {
                ("", "")
            }
        };
        if matches!(dialect, Dialect::OpenAiChat | Dialect::OpenAiText) {
            chunk_prefix.push(b'{');
            push_openai_envelope(&mut chunk_prefix, id_prefix, object, &answer);
            chunk_prefix.extend_from_slice(b",\"choices\":[");
        }
        StreamSpec {
            dialect,
            answer,
            include_usage,
            chunk_prefix,
        }
    }

    /// The stream's content type.
    pub(crate) fn content_type(&self) -> &'static str {
        match self.dialect {
            Dialect::Bedrock => "application/vnd.amazon.eventstream",
            _ => "text/event-stream",
        }
    }

    /// Content chunks in this stream.
    pub(crate) fn chunks(&self) -> u32 {
        self.answer.chunks
    }

    /// Events before the first content chunk.
    pub(crate) fn prelude(&self, ev: &mut EventWriter, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::OpenAiChat => self.openai_chunk(ev, out, |d| {
                d.extend_from_slice(
                    b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}",
                )
            }),
            Dialect::OpenAiText | Dialect::Gemini => {}
            Dialect::Bedrock => ev.raw(out, &super::bedrock::prelude()),
            Dialect::Responses => {
                let a = &self.answer;
                ev.event(out, Some("response.created"), |d| {
                    d.extend_from_slice(b"{\"type\":\"response.created\",\"response\":{\"id\":\"resp_mock_");
                    push_u64(d, a.id);
                    d.extend_from_slice(b"\",\"object\":\"response\",\"status\":\"in_progress\",\"model\":");
                    push_json_str(d, &a.model);
                    d.extend_from_slice(b",\"output\":[]}}");
                });
                ev.event(out, Some("response.output_item.added"), |d| {
                    d.extend_from_slice(b"{\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_mock\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}");
                });
                ev.event(out, Some("response.content_part.added"), |d| {
                    d.extend_from_slice(b"{\"type\":\"response.content_part.added\",\"item_id\":\"msg_mock\",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}");
                });
            }
            Dialect::Anthropic => {
                let a = &self.answer;
                ev.event(out, Some("message_start"), |d| {
                    d.extend_from_slice(b"{\"type\":\"message_start\",\"message\":{");
                    push_anthropic_envelope(d, a);
                    d.extend_from_slice(b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":");
                    push_u64(d, a.prompt_tokens);
                    d.extend_from_slice(b",\"output_tokens\":1}}}");
                });
                ev.event(out, Some("content_block_start"), |d| {
                    d.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}");
                });
            }
        }
    }

    /// One content chunk.
    pub(crate) fn content(&self, ev: &mut EventWriter, out: &mut Vec<u8>) {
        let size = self.answer.chunk_size;
        match self.dialect {
            Dialect::OpenAiChat => self.openai_chunk(ev, out, |d| {
                d.extend_from_slice(b"{\"index\":0,\"delta\":{\"content\":\"");
                push_piece(d, size);
                d.extend_from_slice(b"\"},\"logprobs\":null,\"finish_reason\":null}");
            }),
            Dialect::OpenAiText => self.openai_chunk(ev, out, |d| {
                d.extend_from_slice(b"{\"text\":\"");
                push_piece(d, size);
                d.extend_from_slice(b"\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}");
            }),
            Dialect::Gemini => ev.event(out, None, |d| {
                d.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"");
                push_piece(d, size);
                d.extend_from_slice(b"\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":");
                push_json_str(d, &self.answer.model);
                d.push(b'}');
            }),
            Dialect::Bedrock => ev.raw(out, &super::bedrock::content(size)),
            Dialect::Responses => ev.event(out, Some("response.output_text.delta"), |d| {
                d.extend_from_slice(b"{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_mock\",\"output_index\":0,\"content_index\":0,\"delta\":\"");
                push_piece(d, size);
                d.extend_from_slice(b"\"}");
            }),
            Dialect::Anthropic => ev.event(out, Some("content_block_delta"), |d| {
                d.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
                push_piece(d, size);
                d.extend_from_slice(b"\"}}");
            }),
        }
    }

    /// Events after the last content chunk, then the end of the body.
    pub(crate) fn finish(&self, ev: &mut EventWriter, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::OpenAiChat | Dialect::OpenAiText => {
                let stop: &[u8] = if self.dialect == Dialect::OpenAiChat {
                    b"{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}"
                } else {
                    b"{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}"
                };
                self.openai_chunk(ev, out, |d| d.extend_from_slice(stop));
                if self.include_usage {
                    ev.event(out, None, |d| {
                        d.extend_from_slice(&self.chunk_prefix);
                        d.extend_from_slice(b"],\"usage\":");
                        push_openai_usage(d, &self.answer);
                        d.push(b'}');
                    });
                }
                ev.event(out, None, |d| d.extend_from_slice(b"[DONE]"));
            }
            Dialect::Bedrock => ev.raw(out, &super::bedrock::finish(&self.answer)),
            Dialect::Gemini => ev.event(out, None, |d| {
                d.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],");
                gemini_tail(d, &self.answer);
            }),
            Dialect::Responses => {
                ev.event(out, Some("response.output_item.done"), |d| {
                    d.extend_from_slice(b"{\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"type\":\"message\",\"id\":\"msg_mock\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"text\":\"");
                    for _ in 0..self.answer.chunks {
                        push_piece(d, self.answer.chunk_size);
                    }
                    d.extend_from_slice(b"\"}]}}");
                });
                ev.event(out, Some("response.completed"), |d| {
                    d.extend_from_slice(b"{\"type\":\"response.completed\",\"response\":");
                    responses(d, &self.answer);
                    d.push(b'}');
                });
            }
            Dialect::Anthropic => {
                ev.event(out, Some("content_block_stop"), |d| {
                    d.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":0}");
                });
                ev.event(out, Some("message_delta"), |d| {
                    d.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":");
                    push_u64(d, u64::from(self.answer.chunks));
                    d.extend_from_slice(b"}}");
                });
                ev.event(out, Some("message_stop"), |d| {
                    d.extend_from_slice(b"{\"type\":\"message_stop\"}");
                });
            }
        }
        ev.end(out);
    }

    /// One OpenAI chunk event holding one choice; `"usage":null` is added
    /// when the client asked for usage, as OpenAI does.
    fn openai_chunk(
        &self,
        ev: &mut EventWriter,
        out: &mut Vec<u8>,
        choice: impl FnOnce(&mut Vec<u8>),
    ) {
        ev.event(out, None, |d| {
            d.extend_from_slice(&self.chunk_prefix);
            choice(d);
            if self.include_usage {
                d.extend_from_slice(b"],\"usage\":null}");
            } else {
                d.extend_from_slice(b"]}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(dialect: Dialect, include_usage: bool) -> Vec<String> {
        let answer = Answer {
            id: 1,
            model: "m".into(),
            prompt_tokens: 2,
            chunks: 2,
            chunk_size: 4,
            inputs: 1,
            texts: Vec::new(),
        };
        let spec = StreamSpec::new(dialect, answer, include_usage);
        let mut ev = EventWriter::default();
        let mut out = Vec::new();
        spec.prelude(&mut ev, &mut out);
        for _ in 0..spec.chunks() {
            spec.content(&mut ev, &mut out);
        }
        spec.finish(&mut ev, &mut out);
        let text = String::from_utf8(out).unwrap();
        text.split_terminator("\n\n").map(str::to_owned).collect()
    }

    fn data(event: &str) -> serde_json::Value {
        let line = event.lines().last().unwrap();
        serde_json::from_str(line.strip_prefix("data: ").unwrap()).unwrap()
    }

    #[test]
    fn openai_chat_sequence() {
        let ev = events(Dialect::OpenAiChat, true);
        assert_eq!(ev.len(), 6);
        assert_eq!(data(&ev[0])["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(data(&ev[1])["choices"][0]["delta"]["content"], "tok ");
        assert!(data(&ev[1])["usage"].is_null());
        assert_eq!(data(&ev[3])["choices"][0]["finish_reason"], "stop");
        assert_eq!(data(&ev[4])["usage"]["completion_tokens"], 2);
        assert_eq!(ev[5], "data: [DONE]");
        let plain = events(Dialect::OpenAiChat, false);
        assert_eq!(plain.len(), 5);
        assert!(data(&plain[1]).get("usage").is_none());
    }

    #[test]
    fn anthropic_sequence() {
        let ev = events(Dialect::Anthropic, false);
        let names: Vec<&str> = ev.iter().map(|e| e.lines().next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "event: message_start",
                "event: content_block_start",
                "event: content_block_delta",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: message_delta",
                "event: message_stop",
            ]
        );
        assert_eq!(data(&ev[5])["usage"]["output_tokens"], 2);
    }

    #[test]
    fn gemini_sequence() {
        let ev = events(Dialect::Gemini, false);
        assert_eq!(ev.len(), 3);
        assert_eq!(
            data(&ev[0])["candidates"][0]["content"]["parts"][0]["text"],
            "tok "
        );
        assert_eq!(data(&ev[2])["candidates"][0]["finishReason"], "STOP");
        assert_eq!(data(&ev[2])["usageMetadata"]["candidatesTokenCount"], 2);
    }

    #[test]
    fn responses_sequence() {
        let ev = events(Dialect::Responses, false);
        assert_eq!(ev.len(), 7);
        assert_eq!(data(&ev[3])["delta"], "tok ");
        let done = data(&ev[6]);
        assert_eq!(done["type"], "response.completed");
        assert_eq!(done["response"]["usage"]["output_tokens"], 2);
        assert_eq!(data(&ev[5])["item"]["content"][0]["text"], "tok tok ");
    }
}
