//! The inbound Anthropic Messages API (`POST /v1/messages`) for an OpenAI-compatible upstream:
//! requests translated to chat completions, answers translated back.
//!
//! | Anthropic | OpenAI |
//! | --- | --- |
//! | `system` (string or text blocks) | a first `system` message |
//! | `image` block (`base64` / `url`) | `image_url` part (data URL / URL) |
//! | assistant `tool_use` blocks (`input`: object) | `tool_calls` (`arguments`: JSON string) |
//! | user `tool_result` blocks | `tool` messages, before the rest of that user turn |
//! | `tools` (`input_schema`), `tool_choice` `auto`/`any`/`tool`/`none` | function tools, `auto`/`required`/function/`none` |
//! | `disable_parallel_tool_use` | `parallel_tool_calls: false` |
//! | `stop_sequences`, `metadata.user_id` | `stop`, `user` |
//! | `stream: true` | `stream` + `stream_options.include_usage` |

use serde_json::{json, Value};

use crate::error::bounded;
use crate::error::GatewayError;

use super::{invalid, note, JsonMap, RequestOptions, ResponseContext, UpstreamError};

/// Translates a Messages API request to a chat request: (body, stream, dropped fields).
pub(crate) fn to_chat(
    mut req: JsonMap,
    opts: &RequestOptions<'_>,
) -> Result<(JsonMap, bool, Vec<String>), GatewayError> {
    let mut dropped = Vec::new();
    let mut messages = Vec::new();
    match req.remove("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = blocks_text(&blocks, "system", &mut dropped);
            messages.push(json!({"role": "system", "content": text}));
        }
        Some(_) => {
            return Err(invalid("`system` must be a string or an array").with_param("system"))
        }
    }
    for (i, msg) in super::take_messages(&mut req)?.into_iter().enumerate() {
        convert_message(msg, i, &mut messages, &mut dropped)?;
    }
    let mut out = JsonMap::new();
    out.insert("model".into(), opts.upstream_model.into());
    out.insert("messages".into(), Value::Array(messages));
    let mut stream = false;
    let mut tool_choice = None;
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {}
            "max_tokens" | "temperature" | "top_p" => {
                out.insert(key, value);
            }
            "stop_sequences" => {
                out.insert("stop".into(), value);
            }
            "stream" => stream = value.as_bool().unwrap_or(false),
            "metadata" => match value.get("user_id") {
                Some(id) if !id.is_null() => {
                    out.insert("user".into(), id.clone());
                }
                _ => {}
            },
            "tools" => {
                let tools = tools(value, &mut dropped)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice = Some(value),
            _ => note(&mut dropped, key),
        }
    }
    if let Some(choice) = tool_choice {
        let kind = choice.get("type").and_then(Value::as_str).unwrap_or("");
        let mapped = match (kind, choice.get("name").and_then(Value::as_str)) {
            ("auto", _) => json!("auto"),
            ("any", _) => json!("required"),
            ("none", _) => json!("none"),
            ("tool", Some(name)) => json!({"type": "function", "function": {"name": name}}),
            _ => {
                return Err(invalid(
                    "`tool_choice.type` must be `auto`, `any`, `tool` (with `name`) or `none`",
                )
                .with_param("tool_choice"))
            }
        };
        if out.contains_key("tools") {
            out.insert("tool_choice".into(), mapped);
            if choice
                .get("disable_parallel_tool_use")
                .and_then(Value::as_bool)
                == Some(true)
            {
                out.insert("parallel_tool_calls".into(), false.into());
            }
        }
    }
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok((out, stream, dropped))
}

/// The text of text blocks (noting what else was there).
fn blocks_text(blocks: &[Value], path: &str, dropped: &mut Vec<String>) -> String {
    let mut text = String::new();
    for (j, b) in blocks.iter().enumerate() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
                if b.get("cache_control").is_some() {
                    note(dropped, "cache_control");
                }
            }
            other => note(
                dropped,
                format!("{path}[{j}] (type `{}`)", other.unwrap_or("")),
            ),
        }
    }
    text
}

fn convert_message(
    msg: Value,
    i: usize,
    messages: &mut Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    let bad = |what: &str| invalid(format!("`messages[{i}]{what}")).with_param("messages");
    let role = msg
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(".role` must be a string"))?;
    let blocks = match msg.get("content") {
        Some(Value::String(s)) => {
            messages.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(bad(".content` must be a string or an array")),
    };
    match role {
        "user" => {
            let mut parts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                let path = format!("messages[{i}].content[{j}]");
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_result") => {
                        let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                        let content = match b.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Array(inner)) => blocks_text(inner, &path, dropped),
                            _ => String::new(),
                        };
                        if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                            note(dropped, format!("{path}.is_error"));
                        }
                        messages
                            .push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                    }
                    Some("text") => parts.push(json!({
                        "type": "text",
                        "text": b.get("text").and_then(Value::as_str).unwrap_or(""),
                    })),
                    Some("image") => match image_url(b.get("source")) {
                        Some(url) => {
                            parts.push(json!({"type": "image_url", "image_url": {"url": url}}))
                        }
                        None => note(dropped, format!("{path} (image source)")),
                    },
                    other => note(dropped, format!("{path} (type `{}`)", other.unwrap_or(""))),
                }
            }
            if !parts.is_empty() {
                messages.push(json!({"role": "user", "content": parts}));
            }
        }
        "assistant" => {
            let mut text = String::new();
            let mut calls = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("tool_use") => calls.push(json!({
                        "id": b.get("id").and_then(Value::as_str).unwrap_or(""),
                        "type": "function",
                        "function": {
                            "name": b.get("name").and_then(Value::as_str).unwrap_or(""),
                            "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                        },
                    })),
                    other => note(
                        dropped,
                        format!("messages[{i}].content[{j}] (type `{}`)", other.unwrap_or("")),
                    ),
                }
            }
            let mut m = JsonMap::new();
            m.insert("role".into(), "assistant".into());
            m.insert(
                "content".into(),
                if text.is_empty() && !calls.is_empty() {
                    Value::Null
                } else {
                    text.into()
                },
            );
            if !calls.is_empty() {
                m.insert("tool_calls".into(), Value::Array(calls));
            }
            messages.push(Value::Object(m));
        }
        other => {
            return Err(bad(&format!(
                ".role` `{}` must be `user` or `assistant`",
                bounded(other)
            )));
        }
    }
    Ok(())
}

/// An OpenAI image URL for an Anthropic image `source`.
fn image_url(source: Option<&Value>) -> Option<String> {
    let source = source?;
    match source.get("type").and_then(Value::as_str)? {
        "base64" => Some(format!(
            "data:{};base64,{}",
            source.get("media_type").and_then(Value::as_str)?,
            source.get("data").and_then(Value::as_str)?
        )),
        "url" => source.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn tools(value: Value, dropped: &mut Vec<String>) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(items) = value else {
        return Err(invalid("`tools` must be an array").with_param("tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.into_iter().enumerate() {
        let name = tool.get("name").and_then(Value::as_str);
        let schema = tool.get("input_schema");
        let (Some(name), Some(schema)) = (name, schema) else {
            // Server tools (web search, code execution…) have no OpenAI equivalent.
            note(dropped, format!("tools[{i}]"));
            continue;
        };
        let mut function = JsonMap::new();
        function.insert("name".into(), name.into());
        if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
            function.insert("description".into(), d.clone());
        }
        function.insert("parameters".into(), schema.clone());
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`.
pub(crate) fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `usage` object for the common usage (cache reads and writes split back out).
pub(crate) fn usage_json(u: Option<&crate::usage::Usage>) -> Value {
    let u = u.copied().unwrap_or_default();
    json!({
        "input_tokens": u.input_tokens
            .saturating_sub(u.cached_tokens)
            .saturating_sub(u.cache_write_tokens),
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// A chat completion (first choice) as a Messages API body.
pub(crate) fn from_chat(
    chat: &Value,
    ctx: &ResponseContext<'_>,
    usage: Option<&crate::usage::Usage>,
) -> Value {
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    let text = message
        .and_then(|m| m.get("content"))
        .map(super::content_text)
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for call in calls {
        let f = call.get("function");
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).unwrap_or(""),
            "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or(""),
            "input": arguments_object(f.and_then(|f| f.get("arguments"))),
        }));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .unwrap_or("stop");
    json!({
        "id": ctx.id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage_json(usage),
    })
}

/// Tool-call `arguments` (a JSON string) as the object Anthropic wants; `{}` when unreadable.
pub(crate) fn arguments_object(args: Option<&Value>) -> Value {
    match args {
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({})),
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    }
}

/// Anthropic's `error.type` for a status.
fn error_type(status: u16, kind: Option<&str>) -> &'static str {
    const KNOWN: [&str; 8] = [
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
    ];
    if let Some(k) = kind.and_then(|k| KNOWN.iter().find(|known| **known == k)) {
        return k;
    }
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic error body.
pub(crate) fn error_json(status: u16, err: &UpstreamError) -> Value {
    json!({
        "type": "error",
        "error": {"type": error_type(status, err.kind.as_deref()), "message": err.message},
    })
}
