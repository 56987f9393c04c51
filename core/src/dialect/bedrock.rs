//! Amazon Bedrock's Converse API (`/model/{modelId}/converse`, `/converse-stream`): OpenAI
//! chat requests translated to it, its answers translated back. The request is signed with
//! SigV4 by the proxy over these exact bytes; nothing here knows the credentials.
//!
//! | OpenAI | Bedrock Converse |
//! | --- | --- |
//! | `system` / `developer` messages | `system: [{text}]` |
//! | `user` / `assistant` messages | `messages` with `content: [{text}]` blocks |
//! | user `image_url` (data URL of png/jpeg/gif/webp) | `image: {format, source: {bytes}}` |
//! | assistant `tool_calls` (arguments: JSON string) | `toolUse: {toolUseId, name, input}` |
//! | `tool` messages | `toolResult: {toolUseId, content: [{text}]}` in a user turn |
//! | `tools`, `tool_choice` `auto`/`required`/function | `toolConfig.tools[].toolSpec`, `toolChoice` `auto`/`any`/`tool` |
//! | `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig` `maxTokens`, `temperature`, `topP`, `stopSequences` |
//! | `n` > 1, `tool_choice: "none"` with tools | 400 naming the field |
//! | `stopReason` | `finish_reason` (`end_turn`/`stop_sequence` → `stop`, `max_tokens` → `length`, `tool_use` → `tool_calls`, guardrail/filter → `content_filter`) |
//! | `usage` `inputTokens` + `cacheRead/WriteInputTokens`, `outputTokens` | usage (cache reads and writes counted as input) |

use serde_json::{json, Value};

use crate::error::bounded;
use crate::error::GatewayError;
use crate::usage::Usage;

use super::{check_single_choice, content_text, finish_body, invalid, note, openai};
use super::{parse_data_url, percent_encode, take_messages, tool_call_id};
use super::{Dialect, JsonMap, RequestOptions, ResponseContext, Translated};

/// Translates an OpenAI chat request to a Converse (or ConverseStream) request.
pub(crate) fn request(
    mut req: JsonMap,
    opts: &RequestOptions<'_>,
    mut dropped: Vec<String>,
) -> Result<Translated, GatewayError> {
    check_single_choice(&req, Dialect::Bedrock)?;
    let messages = take_messages(&mut req)?;
    let (system, turns) = convert_messages(messages, &mut dropped)?;
    let mut out = JsonMap::new();
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut inference = JsonMap::new();
    let mut stream = false;
    let mut tools = Vec::new();
    let mut tool_choice = None;
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "stream_options" | "n" => {}
            "stream" => stream = value.as_bool().unwrap_or(false),
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().ok_or_else(|| {
                    invalid(format!("`{key}` must be a positive integer")).with_param("max_tokens")
                })?;
                let n = inference
                    .get("maxTokens")
                    .and_then(Value::as_u64)
                    .map_or(n, |m| m.min(n));
                inference.insert("maxTokens".into(), n.into());
            }
            "temperature" => {
                inference.insert("temperature".into(), value);
            }
            "top_p" => {
                inference.insert("topP".into(), value);
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a,
                    _ => {
                        return Err(invalid("`stop` must be a string or an array of strings")
                            .with_param("stop"))
                    }
                };
                if !stops.is_empty() {
                    inference.insert("stopSequences".into(), Value::Array(stops));
                }
            }
            "tools" => tools = tool_specs(&value, &mut dropped)?,
            "tool_choice" => tool_choice = Some(value),
            _ => note(&mut dropped, key),
        }
    }
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if !tools.is_empty() {
        let mut config = JsonMap::new();
        config.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice.as_ref().map(convert_tool_choice).transpose()? {
            config.insert("toolChoice".into(), choice);
        }
        out.insert("toolConfig".into(), Value::Object(config));
    } else if tool_choice.is_some() {
        note(&mut dropped, "tool_choice");
    }
    let path = format!(
        "/model/{}/{}",
        percent_encode(opts.upstream_model, false),
        if stream {
            "converse-stream"
        } else {
            "converse"
        }
    );
    Ok(finish_body(out, opts, path, stream, dropped))
}

fn convert_tool_choice(choice: &Value) -> Result<Value, GatewayError> {
    let name = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    Ok(match (choice.as_str(), name) {
        (Some("auto"), _) => json!({ "auto": {} }),
        (Some("required"), _) => json!({ "any": {} }),
        (None, Some(name)) => json!({ "tool": { "name": name } }),
        (Some("none"), _) => {
            return Err(invalid(
                "`tool_choice` = \"none\" cannot be expressed to a bedrock upstream (Converse has \
                 no way to forbid tool use while tools are offered); leave `tools` out instead",
            )
            .with_param("tool_choice"))
        }
        _ => {
            return Err(invalid(
                "`tool_choice` must be `auto`, `required` or {\"type\":\"function\",\"function\":{\"name\":…}}",
            )
            .with_param("tool_choice"))
        }
    })
}

/// Converse `toolSpec`s for OpenAI function tools.
fn tool_specs(value: &Value, dropped: &mut Vec<String>) -> Result<Vec<Value>, GatewayError> {
    let read = super::function_tools(value, dropped)?;
    Ok(read
        .into_iter()
        .map(|f| {
            let mut spec = JsonMap::new();
            spec.insert("name".into(), f.name.into());
            if let Some(d) = f.description {
                spec.insert("description".into(), d.clone());
            }
            let schema = f
                .parameters
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            json!({ "toolSpec": spec })
        })
        .collect())
}

/// Splits OpenAI messages into `system` blocks and alternating Converse turns.
fn convert_messages(
    messages: Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let bad = |what: &str| invalid(format!("`messages[{i}]{what}")).with_param("messages");
        if !msg.is_object() {
            return Err(bad("` must be an object"));
        }
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(".role` must be a string"))?;
        let content = msg.get("content").unwrap_or(&Value::Null);
        let (role, blocks) = match role {
            "system" | "developer" => {
                let text = content_text(content);
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
                continue;
            }
            "user" => ("user", blocks(content, i, dropped)?),
            "assistant" => {
                let mut blocks = blocks(content, i, dropped)?;
                let calls = msg.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    blocks.push(tool_use(call, i, j)?);
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(".tool_call_id` must be a string"))?;
                let text = content_text(content);
                let result = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => json!({ "json": v }),
                    _ => json!({ "text": text }),
                };
                (
                    "user",
                    vec![json!({ "toolResult": { "toolUseId": id, "content": [result] } })],
                )
            }
            other => {
                return Err(bad(&format!(
                    ".role` `{}` cannot be sent to a bedrock upstream",
                    bounded(other)
                )))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        if let Some(last) = turns.last_mut() {
            if last.get("role").and_then(Value::as_str) == Some(role) {
                if let Some(Value::Array(existing)) = last.get_mut("content") {
                    existing.extend(blocks);
                    continue;
                }
            }
        }
        turns.push(json!({ "role": role, "content": blocks }));
    }
    Ok((system, turns))
}

/// A `toolUse` block for one of an assistant's `tool_calls`.
fn tool_use(call: &Value, i: usize, j: usize) -> Result<Value, GatewayError> {
    let bad = |what: &str| {
        invalid(format!("`messages[{i}].tool_calls[{j}]{what}")).with_param("messages")
    };
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(".id` must be a string"))?;
    let f = call.get("function");
    let name = f
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(".function.name` must be a string"))?;
    let input = match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| bad(".function.arguments` must be a JSON object"))?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    Ok(json!({ "toolUse": { "toolUseId": id, "name": name, "input": input } }))
}

/// Converse content blocks of an OpenAI `content`.
fn blocks(
    content: &Value,
    i: usize,
    dropped: &mut Vec<String>,
) -> Result<Vec<Value>, GatewayError> {
    let items = match content {
        Value::Null => return Ok(Vec::new()),
        Value::String(s) if s.is_empty() => return Ok(Vec::new()),
        Value::String(s) => return Ok(vec![json!({ "text": s })]),
        Value::Array(items) => items,
        _ => {
            return Err(invalid(format!(
                "`messages[{i}].content` must be a string or an array"
            ))
            .with_param("messages"))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (j, part) in items.iter().enumerate() {
        let path = format!("messages[{i}].content[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" | "refusal" => {
                let text = part.get(kind).and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    out.push(json!({ "text": text }));
                }
            }
            "image_url" => {
                let image = part.get("image_url");
                let url = image
                    .and_then(|i| i.get("url"))
                    .or(image)
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let format = parse_data_url(url).and_then(|(mime, data)| {
                    let format = mime.strip_prefix("image/")?;
                    let format = if format == "jpg" { "jpeg" } else { format };
                    ["png", "jpeg", "gif", "webp"]
                        .contains(&format)
                        .then_some((format, data))
                });
                match format {
                    Some((format, data)) => out.push(json!({
                        "image": { "format": format, "source": { "bytes": data } }
                    })),
                    None => {
                        return Err(invalid(format!(
                            "`{path}.image_url` must be a data: URL of a png, jpeg, gif or webp \
                             image for a bedrock upstream (it does not fetch URLs)"
                        ))
                        .with_param("messages"))
                    }
                }
            }
            _ => note(dropped, format!("{path} (type `{kind}`)")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// The common usage of a Converse `usage` object: cache reads and writes count as input
/// (Bedrock's `inputTokens` leaves them out), reads also as cached, writes as cache writes.
pub(crate) fn usage(u: Option<&Value>) -> Option<Usage> {
    let u = u?.as_object()?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    Some(Usage {
        input_tokens: n("inputTokens").saturating_add(read).saturating_add(write),
        output_tokens: n("outputTokens"),
        cached_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
        estimated: false,
    })
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub(crate) fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// A Converse response as a chat completion; `None` when it is not one.
pub(crate) fn response(body: &[u8], ctx: &ResponseContext<'_>) -> Option<(Value, Option<Usage>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let content = v
        .get("output")?
        .get("message")?
        .get("content")?
        .as_array()?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(tool) = block.get("toolUse") {
            let id = tool
                .get("toolUseId")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| tool_call_id(ctx.id, 0, calls.len() as u64));
            let name = tool.get("name").and_then(Value::as_str).unwrap_or("");
            let input = tool.get("input").cloned().unwrap_or_else(|| json!({}));
            calls.push(openai::tool_call(&id, name, input.to_string()));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let choice = openai::choice(0, text, calls, finish_reason(stop));
    let usage = usage(v.get("usage"));
    Some((openai::completion(ctx, vec![choice], usage.as_ref()), usage))
}

/// Amazon Bedrock's cross-region inference profile prefixes (`us.anthropic.claude-…`).
const BEDROCK_REGIONS: &[&str] = &[
    "us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.",
];

/// Amazon Bedrock's model provider prefixes (`anthropic.claude-…`, `meta.llama3-…`).
const BEDROCK_PROVIDERS: &[&str] = &[
    "anthropic.",
    "amazon.",
    "meta.",
    "mistral.",
    "cohere.",
    "ai21.",
    "deepseek.",
    "openai.",
    "qwen.",
    "writer.",
];

/// `model` without a Bedrock region prefix and then a provider prefix
/// (`us.anthropic.claude-sonnet-4-5-20250929-v1:0` → `claude-sonnet-4-5-20250929-v1:0`), or
/// `None` when it has neither. The `-v1:0` and Vertex AI's `@20250514` suffixes need no
/// stripping: a name matches a longer id up to a non-alphanumeric boundary.
pub(crate) fn without_bedrock_prefixes(model: &str) -> Option<&str> {
    fn strip<'m>(prefixes: &[&str], s: &'m str) -> &'m str {
        prefixes
            .iter()
            .find_map(|p| s.strip_prefix(p))
            .filter(|rest| !rest.is_empty())
            .unwrap_or(s)
    }
    let rest = strip(BEDROCK_PROVIDERS, strip(BEDROCK_REGIONS, model));
    (rest.len() < model.len()).then_some(rest)
}
