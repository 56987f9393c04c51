//! Anthropic's Messages API: OpenAI chat requests translated to it, its answers translated back.
//!
//! | OpenAI | Anthropic |
//! | --- | --- |
//! | `system` / `developer` messages | top-level `system` |
//! | user `image_url` (data URL / http) | `image` block, `base64` / `url` source |
//! | assistant `tool_calls` (arguments: JSON string) | `tool_use` blocks (`input`: object) |
//! | `tool` messages | `tool_result` blocks in a user turn |
//! | `tools`, `tool_choice` `auto`/`none`/`required`/function | `tools`, `auto`/`none`/`any`/`tool` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use` |
//! | `max_tokens` / `max_completion_tokens` (else the configured default) | `max_tokens` |
//! | `stop`, `temperature`, `top_p`, `user` | `stop_sequences`, same, same, `metadata.user_id` |
//! | `n` > 1 | 400 naming `n` |

use serde_json::{json, Value};

use crate::error::bounded;
use crate::error::GatewayError;
use crate::usage::Usage;

use super::Translated;
use super::{check_single_choice, finish_body, invalid, note, openai};
use super::{parse_data_url, take_messages, Dialect, JsonMap, RequestOptions, ResponseContext};

/// Translates an OpenAI chat request to a Messages API request.
pub(crate) fn request(
    mut req: JsonMap,
    opts: &RequestOptions<'_>,
    mut dropped: Vec<String>,
) -> Result<Translated, GatewayError> {
    check_single_choice(&req, Dialect::Anthropic)?;
    let messages = take_messages(&mut req)?;
    let (system, turns) = convert_messages(messages, &mut dropped)?;
    let mut out = JsonMap::new();
    out.insert("model".into(), opts.upstream_model.into());
    if !system.is_empty() {
        out.insert("system".into(), system_value(system));
    }
    out.insert("messages".into(), Value::Array(turns));
    let mut max_tokens = None;
    let mut stream = false;
    let mut tool_choice = None;
    let mut parallel = true;
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "stream_options" | "n" => {}
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().ok_or_else(|| {
                    invalid(format!("`{key}` must be a positive integer")).with_param("max_tokens")
                })?;
                max_tokens = Some(max_tokens.map_or(n, |m: u64| m.min(n)));
            }
            "stream" => stream = value.as_bool().unwrap_or(false),
            "temperature" | "top_p" => {
                out.insert(key, value);
            }
            "stop" => {
                let stops = stop_sequences(value)?;
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "tools" => {
                let tools = tools(value, &mut dropped)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => parallel = value.as_bool().unwrap_or(true),
            "user" => {
                out.insert("metadata".into(), json!({ "user_id": value }));
            }
            _ => note(&mut dropped, key),
        }
    }
    out.insert(
        "max_tokens".into(),
        max_tokens
            .unwrap_or(u64::from(opts.default_max_tokens))
            .into(),
    );
    if stream {
        out.insert("stream".into(), true.into());
    }
    if out.contains_key("tools") {
        let mut choice = match tool_choice {
            Some(c) => convert_tool_choice(&c)?,
            None => json!({"type": "auto"}),
        };
        if let (false, Some(obj)) = (parallel, choice.as_object_mut()) {
            if obj.get("type").and_then(Value::as_str) != Some("none") {
                obj.insert("disable_parallel_tool_use".into(), true.into());
            }
        }
        if tool_choice_is_default(&choice) {
            // Leave Anthropic's default implicit.
        } else {
            out.insert("tool_choice".into(), choice);
        }
    } else if tool_choice.is_some() {
        note(&mut dropped, "tool_choice");
    }
    Ok(finish_body(out, opts, "/messages".into(), stream, dropped))
}

fn tool_choice_is_default(choice: &Value) -> bool {
    choice.as_object().is_some_and(|o| o.len() == 1) && choice.get("type") == Some(&json!("auto"))
}

/// `system` as a string when it is plain text, else as text blocks (keeping `cache_control`).
fn system_value(blocks: Vec<Value>) -> Value {
    let plain = blocks
        .iter()
        .all(|b| b.as_object().is_some_and(|o| o.len() == 2));
    if plain {
        let texts: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        Value::String(texts.join("\n\n"))
    } else {
        Value::Array(blocks)
    }
}

/// Splits OpenAI messages into the system blocks and the alternating turns.
fn convert_messages(
    messages: Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, msg) in messages.into_iter().enumerate() {
        let Value::Object(mut msg) = msg else {
            return Err(
                invalid(format!("`messages[{i}]` must be an object")).with_param("messages")
            );
        };
        let role = match msg.remove("role") {
            Some(Value::String(r)) => r,
            _ => {
                return Err(invalid(format!("`messages[{i}].role` must be a string"))
                    .with_param("messages"))
            }
        };
        let content = msg.remove("content").unwrap_or(Value::Null);
        let (turn_role, blocks) = match role.as_str() {
            "system" | "developer" => {
                system.extend(content_blocks(content, i, dropped)?);
                continue;
            }
            "user" => ("user", content_blocks(content, i, dropped)?),
            "assistant" => {
                let mut blocks = content_blocks(content, i, dropped)?;
                if let Some(calls) = msg.remove("tool_calls").filter(|v| !v.is_null()) {
                    blocks.extend(tool_use_blocks(calls, i)?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = msg
                    .remove("tool_call_id")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        invalid(format!("`messages[{i}].tool_call_id` must be a string"))
                            .with_param("messages")
                    })?;
                let result = match content {
                    Value::String(s) => Value::String(s),
                    other => Value::Array(content_blocks(other, i, dropped)?),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
                )
            }
            other => {
                return Err(invalid(format!(
                    "`messages[{i}].role` `{}` cannot be sent to an Anthropic upstream",
                    bounded(other)
                ))
                .with_param("messages"))
            }
        };
        for (k, v) in msg {
            if !v.is_null() {
                note(dropped, format!("messages[{i}].{k}"));
            }
        }
        push_turn(&mut turns, turn_role, blocks);
    }
    Ok((system, turns))
}

/// Appends blocks to the last turn when it has the same role (Anthropic wants all tool results
/// of one assistant turn in the next user turn), else starts a turn.
fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(content)) = last.get_mut("content") {
                content.extend(blocks);
                return;
            }
        }
    }
    turns.push(json!({"role": role, "content": blocks}));
}

/// Content blocks of an OpenAI `content` (string or parts).
fn content_blocks(
    content: Value,
    i: usize,
    dropped: &mut Vec<String>,
) -> Result<Vec<Value>, GatewayError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                if let Some(b) = part_block(&part, &format!("messages[{i}].content[{j}]"), dropped)
                {
                    blocks.push(b);
                }
            }
            Ok(blocks)
        }
        _ => Err(invalid(format!(
            "`messages[{i}].content` must be a string or an array"
        ))
        .with_param("messages")),
    }
}

/// One OpenAI content part as an Anthropic block; `None` (noted) when it has no equivalent.
fn part_block(part: &Value, path: &str, dropped: &mut Vec<String>) -> Option<Value> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    let block = match kind {
        "text" | "refusal" => {
            let text = part.get(kind).and_then(Value::as_str).unwrap_or("");
            if text.is_empty() {
                return None;
            }
            json!({"type": "text", "text": text})
        }
        "image_url" => {
            let image = part.get("image_url");
            let url = image
                .and_then(|i| i.get("url"))
                .or(image)
                .and_then(Value::as_str)
                .unwrap_or("");
            if image.and_then(|i| i.get("detail")).is_some() {
                note(dropped, format!("{path}.image_url.detail"));
            }
            match image_source(url) {
                Some(source) => json!({"type": "image", "source": source}),
                None => {
                    note(
                        dropped,
                        format!("{path} (image url that is neither data: nor http)"),
                    );
                    return None;
                }
            }
        }
        "file" => {
            let data = part
                .get("file")
                .and_then(|f| f.get("file_data"))
                .and_then(Value::as_str)
                .and_then(parse_data_url);
            match data {
                Some((mime @ "application/pdf", data)) => json!({
                    "type": "document",
                    "source": {"type": "base64", "media_type": mime, "data": data},
                }),
                _ => {
                    note(dropped, format!("{path} (file)"));
                    return None;
                }
            }
        }
        _ => {
            note(dropped, format!("{path} (type `{kind}`)"));
            return None;
        }
    };
    match (part.get("cache_control"), block) {
        (Some(cc), Value::Object(mut b)) => {
            b.insert("cache_control".into(), cc.clone());
            Some(Value::Object(b))
        }
        (_, block) => Some(block),
    }
}

/// An Anthropic image `source` for an OpenAI image URL.
fn image_source(url: &str) -> Option<Value> {
    if let Some((mime, data)) = parse_data_url(url) {
        Some(json!({"type": "base64", "media_type": mime, "data": data}))
    } else if url.starts_with("https://") || url.starts_with("http://") {
        Some(json!({"type": "url", "url": url}))
    } else {
        None
    }
}

/// `tool_use` blocks for an assistant's `tool_calls`; arguments must be a JSON object.
fn tool_use_blocks(calls: Value, i: usize) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(calls) = calls else {
        return Err(
            invalid(format!("`messages[{i}].tool_calls` must be an array")).with_param("messages"),
        );
    };
    let mut blocks = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let bad = |what: &str| {
            invalid(format!("`messages[{i}].tool_calls[{j}]{what}")).with_param("messages")
        };
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(".id` must be a string"))?;
        let function = call
            .get("function")
            .ok_or_else(|| bad(".function` is missing"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(".function.name` must be a string"))?;
        let input = match function.get("arguments") {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| bad(".function.arguments` must be a JSON object"))?,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(bad(".function.arguments` must be a JSON object")),
        };
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

fn stop_sequences(value: Value) -> Result<Vec<Value>, GatewayError> {
    let bad = || invalid("`stop` must be a string or an array of strings").with_param("stop");
    match value {
        Value::String(s) => Ok(vec![Value::String(s)]),
        Value::Array(items) => {
            if items.iter().all(Value::is_string) {
                Ok(items)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// Anthropic tools for OpenAI function tools.
fn tools(value: Value, dropped: &mut Vec<String>) -> Result<Vec<Value>, GatewayError> {
    let read = super::function_tools(&value, dropped)?;
    Ok(read
        .into_iter()
        .map(|f| {
            let mut t = JsonMap::new();
            t.insert("name".into(), f.name.into());
            if let Some(d) = f.description {
                t.insert("description".into(), d.clone());
            }
            let schema = f
                .parameters
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            t.insert("input_schema".into(), schema);
            if let Some(cc) = f.tool.get("cache_control") {
                t.insert("cache_control".into(), cc.clone());
            }
            Value::Object(t)
        })
        .collect())
}

fn convert_tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    let name = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    match (choice.as_str(), name) {
        (Some("auto"), _) => Ok(json!({"type": "auto"})),
        (Some("none"), _) => Ok(json!({"type": "none"})),
        (Some("required"), _) => Ok(json!({"type": "any"})),
        (None, Some(name)) => Ok(json!({"type": "tool", "name": name})),
        _ => Err(invalid(
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
        .with_param("tool_choice")),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Anthropic's token counts, as the latest event or body reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AnthropicUsage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    seen: bool,
}

impl AnthropicUsage {
    /// Takes the counts a `usage` object holds (later events repeat or extend earlier ones).
    pub(crate) fn update(&mut self, usage: Option<&Value>) {
        let Some(o) = usage.and_then(Value::as_object) else {
            return;
        };
        let mut set = |key: &str, field: &mut u64| {
            if let Some(n) = o.get(key).and_then(Value::as_u64) {
                *field = n;
                self.seen = true;
            }
        };
        set("input_tokens", &mut self.input);
        set("output_tokens", &mut self.output);
        set("cache_read_input_tokens", &mut self.cache_read);
        set("cache_creation_input_tokens", &mut self.cache_creation);
    }

    /// The common shape: cache reads and writes count as input, reads also as cached, writes
    /// also as cache writes.
    pub(crate) fn usage(&self) -> Option<Usage> {
        self.seen.then(|| Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_creation),
            output_tokens: self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
            reasoning_tokens: 0,
            estimated: false,
        })
    }
}

/// Usage of a Messages API body.
pub(crate) fn usage_from_body(body: &[u8]) -> Option<Usage> {
    memchr::memmem::find(body, b"\"usage\"")?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut u = AnthropicUsage::default();
    u.update(v.get("usage"));
    u.usage()
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// A Messages API body as a chat completion; `None` when it is not a message.
pub(crate) fn response(body: &[u8], ctx: &ResponseContext<'_>) -> Option<(Value, Option<Usage>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let blocks = v.get("content")?.as_array()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(openai::tool_call(id, name, input.to_string()));
            }
            _ => {}
        }
    }
    let finish = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .map_or("stop", finish_reason);
    let mut u = AnthropicUsage::default();
    u.update(v.get("usage"));
    let usage = u.usage();
    let choice = openai::choice(0, text, calls, finish);
    Some((openai::completion(ctx, vec![choice], usage.as_ref()), usage))
}
