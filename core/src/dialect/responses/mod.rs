//! The inbound Responses API (`POST /v1/responses`) for upstreams that speak chat completions
//! or Anthropic Messages: stateless requests translated to chat (the pivot, then on to the
//! target as for chat clients), answers translated back into a `response` object or its
//! stream of events.
//!
//! | Responses | chat completions |
//! | --- | --- |
//! | `instructions` | a first `system` message |
//! | `input` string | one `user` message |
//! | `input` message items (`input_text`, `output_text`, `input_image`) | messages with text and `image_url` parts; `developer` → `system` |
//! | `function_call` items | an assistant message's `tool_calls` (consecutive calls merged) |
//! | `function_call_output` items | `tool` messages |
//! | `reasoning` items | dropped (noted) |
//! | `tools` of type `function` (`name`, `parameters` at the top) | function tools |
//! | `tool_choice` `auto`/`none`/`required`/`{type: function, name}` | the same in chat's shape |
//! | `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `user` | `max_tokens`, the same |
//! | `text.format` `json_schema` / `json_object` | `response_format` |
//! | `reasoning.effort` | `reasoning_effort` |
//! | `stream: true` | `stream` + `stream_options.include_usage` |
//!
//! Server-side state cannot be translated: `previous_response_id`, `conversation`,
//! `store: true`, `background: true` and stored `prompt` templates are a 400 naming the field
//! (OpenAI deployments take the request as it came). So are hosted tools (`web_search`,
//! `file_search`, …), `input_file` parts and item types other than the above.

pub(crate) mod stream;

use serde_json::{json, Value};

use crate::error::bounded;
use crate::error::GatewayError;
use crate::usage::Usage;

use super::{invalid, note, JsonMap, ResponseContext, UpstreamError};

/// Fields that need state kept by OpenAI: a 400 on any other upstream.
const STATEFUL: [(&str, &str); 5] = [
    ("previous_response_id", "previous_response_id"),
    ("conversation", "conversation"),
    ("store", "store"),
    ("background", "background"),
    ("prompt", "prompt"),
];

fn stateful_error(field: &'static str, target: &str) -> GatewayError {
    invalid(format!(
        "`{field}` needs state kept by OpenAI's Responses API; the {target} upstream of this \
         model is stateless: send the whole conversation in `input` (and `store: false`)"
    ))
    .with_param(field)
}

/// Whether a field that needs state is really asked for (`store: false` and nulls are not).
fn asks_for_state(key: &str, value: &Value) -> bool {
    match key {
        "store" | "background" => value.as_bool() == Some(true),
        _ => !value.is_null(),
    }
}

/// Translates a Responses API request to a chat request: (body, stream, dropped fields).
/// `target` names the upstream's dialect in errors.
pub(crate) fn to_chat(
    mut req: JsonMap,
    upstream_model: &str,
    target: &str,
) -> Result<(JsonMap, bool, Vec<String>), GatewayError> {
    for (key, field) in STATEFUL {
        if req.get(key).is_some_and(|v| asks_for_state(key, v)) {
            return Err(stateful_error(field, target));
        }
    }
    let mut dropped = Vec::new();
    let mut messages = Vec::new();
    match req.remove("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(invalid("`instructions` must be a string").with_param("instructions"))
        }
    }
    match req.remove("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                convert_item(item, i, &mut messages, &mut dropped)?;
            }
        }
        None | Some(Value::Null) => {
            return Err(invalid("you must provide `input`").with_param("input"))
        }
        Some(_) => return Err(invalid("`input` must be a string or an array").with_param("input")),
    }
    let mut out = JsonMap::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("messages".into(), Value::Array(messages));
    let mut stream = false;
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "store" | "background" => {}
            "max_output_tokens" => {
                out.insert("max_tokens".into(), value);
            }
            "temperature" | "top_p" | "parallel_tool_calls" | "user" => {
                out.insert(key, value);
            }
            "stream" => stream = value.as_bool().unwrap_or(false),
            "tools" => {
                let tools = tools(&value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                out.insert("tool_choice".into(), tool_choice(&value)?);
            }
            "text" => {
                if let Some(format) = response_format(&value)? {
                    out.insert("response_format".into(), format);
                }
                if value.get("verbosity").is_some() {
                    note(&mut dropped, "text.verbosity");
                }
            }
            "reasoning" => match value.get("effort") {
                Some(Value::String(e)) => {
                    out.insert("reasoning_effort".into(), e.clone().into());
                }
                _ => note(&mut dropped, "reasoning"),
            },
            _ => note(&mut dropped, key),
        }
    }
    if !out.contains_key("tools") {
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    if stream {
        out.insert("stream".into(), true.into());
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok((out, stream, dropped))
}

/// One `input` item, appended to `messages` as chat messages.
fn convert_item(
    item: Value,
    i: usize,
    messages: &mut Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(), GatewayError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(if item.get("role").is_some() {
            "message"
        } else {
            ""
        })
        .to_owned();
    match kind.as_str() {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("user") => "user",
                Some("assistant") => "assistant",
                Some("system" | "developer") => "system",
                _ => {
                    return Err(invalid(format!(
                        "`input[{i}].role` must be `user`, `assistant`, `system` or `developer`"
                    ))
                    .with_param("input"))
                }
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => content_parts(parts, i, role)?,
                _ => {
                    return Err(invalid(format!(
                        "`input[{i}].content` must be a string or an array"
                    ))
                    .with_param("input"))
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call_id = item.get("call_id").and_then(Value::as_str);
            let name = item.get("name").and_then(Value::as_str);
            let (Some(call_id), Some(name)) = (call_id, name) else {
                return Err(invalid(format!(
                    "`input[{i}]` (a function_call) needs `call_id` and `name`"
                ))
                .with_param("input"));
            };
            let arguments = item
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let call = json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            });
            // Consecutive calls are one assistant turn.
            let last_is_calls = messages.last().is_some_and(|m| {
                m.get("role").and_then(Value::as_str) == Some("assistant")
                    && m.get("tool_calls").is_some()
            });
            match messages.last_mut().filter(|_| last_is_calls) {
                Some(last) => {
                    if let Some(Value::Array(calls)) = last.get_mut("tool_calls") {
                        calls.push(call);
                    }
                }
                None => messages.push(json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [call],
                })),
            }
        }
        "function_call_output" => {
            let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                return Err(invalid(format!(
                    "`input[{i}]` (a function_call_output) needs `call_id`"
                ))
                .with_param("input"));
            };
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => super::content_text(&Value::Array(parts.clone())),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        "reasoning" => note(dropped, format!("input[{i}] (type `reasoning`)")),
        other => {
            return Err(invalid(format!(
                "`input[{i}].type` `{}` cannot be sent to this model's upstream: only \
                 messages, function_call and function_call_output items translate",
                bounded(other)
            ))
            .with_param("input"))
        }
    }
    Ok(())
}

/// A message item's content parts as chat content parts.
fn content_parts(parts: &[Value], i: usize, role: &str) -> Result<Value, GatewayError> {
    let mut out = Vec::with_capacity(parts.len());
    let mut text_only = true;
    for (j, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str).unwrap_or("") {
            "input_text" | "output_text" | "text" => out.push(json!({
                "type": "text",
                "text": p.get("text").and_then(Value::as_str).unwrap_or(""),
            })),
            "refusal" => out.push(json!({
                "type": "text",
                "text": p.get("refusal").and_then(Value::as_str).unwrap_or(""),
            })),
            "input_image" => {
                let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                    return Err(invalid(format!(
                        "`input[{i}].content[{j}]`: only images given by `image_url` translate \
                         (`file_id` needs OpenAI's file store)"
                    ))
                    .with_param("input"));
                };
                text_only = false;
                let mut image = json!({"url": url});
                if let Some(d) = p.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = d.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(invalid(format!(
                    "`input[{i}].content[{j}].type` `{}` cannot be sent to this model's upstream",
                    bounded(other)
                ))
                .with_param("input"))
            }
        }
    }
    // Assistant and system turns are text: join their parts.
    if text_only || role != "user" {
        let text: Vec<&str> = out
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        return Ok(Value::String(text.join("")));
    }
    Ok(Value::Array(out))
}

/// Responses function tools (flat) as chat tools (nested under `function`); any other tool
/// type is a 400 naming it.
fn tools(value: &Value) -> Result<Vec<Value>, GatewayError> {
    let Value::Array(items) = value else {
        return Err(invalid("`tools` must be an array").with_param("tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            return Err(invalid(format!(
                "`tools[{i}].type` `{}` is a hosted tool of OpenAI's Responses API; this model's \
                 upstream takes only `function` tools",
                bounded(kind)
            ))
            .with_param("tools"));
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(invalid(format!("`tools[{i}].name` must be a string")).with_param("tools"));
        };
        let mut function = JsonMap::new();
        function.insert("name".into(), name.into());
        for key in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                function.insert(key.into(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn tool_choice(value: &Value) -> Result<Value, GatewayError> {
    match value {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(value.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                invalid("`tool_choice.name` must be a string").with_param("tool_choice")
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "`tool_choice` must be `auto`, `none`, `required` or a function: hosted tools do not \
             translate to this model's upstream",
        )
        .with_param("tool_choice")),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(text: &Value) -> Result<Option<Value>, GatewayError> {
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = JsonMap::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(
            invalid("`text.format.type` must be `text`, `json_object` or `json_schema`")
                .with_param("text"),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------------

/// The Responses `usage` object.
pub(crate) fn usage_json(u: Option<&Usage>) -> Value {
    let u = u.copied().unwrap_or_default();
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
    })
}

/// A `response` object: `status` `in_progress`, `completed` or `incomplete` (with its
/// reason), the output items so far, usage when known.
pub(crate) fn response_object(
    ctx: &ResponseContext<'_>,
    status: &str,
    incomplete: Option<&str>,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    json!({
        "id": ctx.id,
        "object": "response",
        "created_at": ctx.created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete.map(|r| json!({"reason": r})),
        "instructions": null,
        "max_output_tokens": null,
        "metadata": {},
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": if status == "in_progress" { Value::Null } else { usage_json(usage) },
        "user": null,
    })
}

/// The `status` and incomplete reason of a chat `finish_reason`.
pub(crate) fn status_of(finish: &str) -> (&'static str, Option<&'static str>) {
    match finish {
        "length" => ("incomplete", Some("max_output_tokens")),
        "content_filter" => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

/// A message output item.
pub(crate) fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if text.is_empty() && status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    };
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": content,
    })
}

/// A function-call output item.
pub(crate) fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// The id of output item `n` of response `ctx.id` (`msg_…`, `fc_…`).
pub(crate) fn item_id(prefix: &str, response_id: &str, n: usize) -> String {
    let seed = response_id.strip_prefix("resp_").unwrap_or(response_id);
    format!("{prefix}_{seed}_{n}")
}

/// A chat completion (first choice) as a `response` object.
pub(crate) fn from_chat(chat: &Value, ctx: &ResponseContext<'_>, usage: Option<&Usage>) -> Value {
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let mut output = Vec::new();
    let text = message
        .and_then(|m| m.get("content"))
        .map(super::content_text)
        .unwrap_or_default();
    if !text.is_empty() {
        output.push(message_item(&item_id("msg", ctx.id, 0), &text, "completed"));
    }
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for call in calls {
        let f = call.get("function");
        let n = output.len();
        output.push(function_call_item(
            &item_id("fc", ctx.id, n),
            call.get("id").and_then(Value::as_str).unwrap_or(""),
            f.and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .unwrap_or(""),
            f.and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("{}"),
            "completed",
        ));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let (status, incomplete) = status_of(finish);
    response_object(ctx, status, incomplete, output, usage)
}

/// An OpenAI error body (the Responses API answers errors as chat does).
pub(crate) fn error_json(status: u16, err: &UpstreamError) -> Value {
    super::openai::error_json(status, err)
}

#[cfg(test)]
mod tests;
