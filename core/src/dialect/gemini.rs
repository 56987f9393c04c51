//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`): OpenAI chat requests
//! translated to it, its answers translated back.
//!
//! | OpenAI | Gemini |
//! | --- | --- |
//! | `system` / `developer` messages | `systemInstruction.parts` |
//! | `user` / `assistant` messages | `contents` with role `user` / `model` |
//! | `image_url` data URL / http URL | `inlineData` / `fileData` part |
//! | assistant `tool_calls` (arguments: JSON string) | `functionCall` parts (`args`: object) |
//! | `tool` messages | `functionResponse` parts (the name found from the call's id) |
//! | `tools`, `tool_choice` `auto`/`none`/`required`/function | `functionDeclarations`, `toolConfig` `AUTO`/`NONE`/`ANY`(+ allowed name) |
//! | `temperature`, `top_p`, `max_tokens`, `stop`, `n`, `seed`, penalties | `generationConfig` fields |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType` / `responseJsonSchema` |

use serde_json::{json, Value};

use crate::error::bounded;
use crate::error::GatewayError;
use crate::usage::Usage;

use super::{content_text, finish_body, invalid, note, openai, parse_data_url, percent_encode};
use super::{take_messages, tool_call_id, JsonMap, RequestOptions, ResponseContext, Translated};

/// Translates an OpenAI chat request to a Gemini request.
pub(crate) fn request(
    mut req: JsonMap,
    opts: &RequestOptions<'_>,
    mut dropped: Vec<String>,
) -> Result<Translated, GatewayError> {
    let messages = take_messages(&mut req)?;
    let (system, contents) = convert_messages(messages, &mut dropped)?;
    let mut out = JsonMap::new();
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    out.insert("contents".into(), Value::Array(contents));
    let mut gen = JsonMap::new();
    let mut stream = false;
    let mut tool_choice = None;
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        let target = match key.as_str() {
            "model" | "stream_options" => continue,
            "stream" => {
                stream = value.as_bool().unwrap_or(false);
                continue;
            }
            "tools" => {
                let decls = tools(value, &mut dropped)?;
                if !decls.is_empty() {
                    out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
                }
                continue;
            }
            "tool_choice" => {
                tool_choice = Some(value);
                continue;
            }
            "response_format" => {
                response_format(&value, &mut gen, &mut dropped);
                continue;
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
                gen.insert("stopSequences".into(), Value::Array(stops));
                continue;
            }
            "max_tokens" | "max_completion_tokens" | "n" => {
                if !value.is_u64() {
                    return Err(invalid(format!("`{key}` must be a positive integer"))
                        .with_param(if key == "n" { "n" } else { "max_tokens" }));
                }
                if key == "n" {
                    "candidateCount"
                } else {
                    "maxOutputTokens"
                }
            }
            "temperature" => "temperature",
            "top_p" => "topP",
            "seed" => "seed",
            "presence_penalty" => "presencePenalty",
            "frequency_penalty" => "frequencyPenalty",
            _ => {
                note(&mut dropped, key);
                continue;
            }
        };
        gen.insert(target.into(), value);
    }
    if !gen.is_empty() {
        out.insert("generationConfig".into(), Value::Object(gen));
    }
    if let Some(choice) = tool_choice {
        if out.contains_key("tools") {
            out.insert("toolConfig".into(), tool_config(&choice)?);
        } else {
            note(&mut dropped, "tool_choice");
        }
    }
    let model = opts.upstream_model;
    let model = model.strip_prefix("models/").unwrap_or(model);
    let path = format!(
        "/models/{}:{}",
        percent_encode(model, true),
        if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        }
    );
    Ok(finish_body(out, opts, path, stream, dropped))
}

fn response_format(value: &Value, gen: &mut JsonMap, dropped: &mut Vec<String>) {
    match value.get("type").and_then(Value::as_str) {
        Some("json_object") => {
            gen.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            gen.insert("responseMimeType".into(), "application/json".into());
            if let Some(schema) = value.get("json_schema").and_then(|s| s.get("schema")) {
                gen.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        Some("text") => {}
        _ => note(dropped, "response_format"),
    }
}

/// Splits OpenAI messages into system parts and `contents`.
fn convert_messages(
    messages: Vec<Value>,
    dropped: &mut Vec<String>,
) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    // Tool-call id → function name, since a Gemini function response is matched by name.
    let mut names: Vec<(String, String)> = Vec::new();
    for (i, msg) in messages.iter().enumerate() {
        let bad = |what: &str| invalid(format!("`messages[{i}]{what}")).with_param("messages");
        let role = msg
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(".role` must be a string"))?;
        let content = msg.get("content").unwrap_or(&Value::Null);
        let (role, parts) = match role {
            "system" | "developer" => {
                let text = content_text(content);
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
                continue;
            }
            "user" => ("user", parts(content, i, dropped)?),
            "assistant" => {
                let mut parts = parts(content, i, dropped)?;
                let calls = msg.get("tool_calls").and_then(Value::as_array);
                for (j, call) in calls
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let f = call.get("function");
                    let name = f
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            bad(&format!(".tool_calls[{j}].function.name` must be a string"))
                        })?;
                    let args = match f.and_then(|f| f.get("arguments")) {
                        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
                        Some(Value::String(s)) => serde_json::from_str::<Value>(s)
                            .ok()
                            .filter(Value::is_object)
                            .ok_or_else(|| {
                                bad(&format!(
                                    ".tool_calls[{j}].function.arguments` must be a JSON object"
                                ))
                            })?,
                        Some(v @ Value::Object(_)) => v.clone(),
                        _ => json!({}),
                    };
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        names.push((id.to_owned(), name.to_owned()));
                    }
                    parts.push(json!({ "functionCall": { "name": name, "args": args } }));
                }
                ("model", parts)
            }
            "tool" => {
                let id = msg
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let name = names
                    .iter()
                    .find(|(known, _)| known == id)
                    .map_or(id, |(_, name)| name.as_str());
                let text = content_text(content);
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({ "content": text }),
                };
                (
                    "user",
                    vec![json!({ "functionResponse": { "name": name, "response": response } })],
                )
            }
            other => {
                return Err(bad(&format!(
                    ".role` `{}` cannot be sent to a Gemini upstream",
                    bounded(other)
                )))
            }
        };
        if parts.is_empty() {
            continue;
        }
        if let Some(last) = contents.last_mut() {
            if last.get("role").and_then(Value::as_str) == Some(role) {
                if let Some(Value::Array(existing)) = last.get_mut("parts") {
                    existing.extend(parts);
                    continue;
                }
            }
        }
        contents.push(json!({ "role": role, "parts": parts }));
    }
    Ok((system, contents))
}

/// Gemini parts of an OpenAI `content`.
fn parts(content: &Value, i: usize, dropped: &mut Vec<String>) -> Result<Vec<Value>, GatewayError> {
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
                if image.and_then(|i| i.get("detail")).is_some() {
                    note(dropped, format!("{path}.image_url.detail"));
                }
                if let Some((mime, data)) = parse_data_url(url) {
                    out.push(json!({ "inlineData": { "mimeType": mime, "data": data } }));
                } else if url.starts_with("https://")
                    || url.starts_with("http://")
                    || url.starts_with("gs://")
                {
                    out.push(
                        json!({ "fileData": { "mimeType": guess_mime(url), "fileUri": url } }),
                    );
                } else {
                    note(dropped, format!("{path} (image url)"));
                }
            }
            "input_audio" => {
                let audio = part.get("input_audio");
                let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
                let format = audio
                    .and_then(|a| a.get("format"))
                    .and_then(Value::as_str)
                    .unwrap_or("wav");
                match data {
                    Some(data) => out.push(json!({
                        "inlineData": { "mimeType": format!("audio/{format}"), "data": data }
                    })),
                    None => note(dropped, format!("{path} (input_audio)")),
                }
            }
            "file" => {
                let data = part
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                    .and_then(parse_data_url);
                match data {
                    Some((mime, data)) => {
                        out.push(json!({ "inlineData": { "mimeType": mime, "data": data } }))
                    }
                    None => note(dropped, format!("{path} (file)")),
                }
            }
            _ => note(dropped, format!("{path} (type `{kind}`)")),
        }
    }
    Ok(out)
}

/// The image mime type a URL's extension suggests.
fn guess_mime(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".pdf") {
        "application/pdf"
    } else {
        "image/jpeg"
    }
}

/// Gemini function declarations for OpenAI function tools.
fn tools(value: Value, dropped: &mut Vec<String>) -> Result<Vec<Value>, GatewayError> {
    let read = super::function_tools(&value, dropped)?;
    Ok(read
        .into_iter()
        .map(|f| {
            let mut decl = JsonMap::new();
            decl.insert("name".into(), f.name.into());
            if let Some(d) = f.description {
                decl.insert("description".into(), d.clone());
            }
            if let Some(params) = f.parameters {
                let mut params = params.clone();
                clean_schema(&mut params);
                // Gemini refuses an object schema without properties.
                if params
                    .get("properties")
                    .is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty()))
                {
                    decl.insert("parameters".into(), params);
                }
            }
            Value::Object(decl)
        })
        .collect())
}

/// Removes the JSON Schema keywords Gemini's OpenAPI subset refuses.
fn clean_schema(schema: &mut Value) {
    let Value::Object(o) = schema else {
        return;
    };
    for k in ["$schema", "additionalProperties", "strict", "$id"] {
        o.remove(k);
    }
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        props.values_mut().for_each(clean_schema);
    }
    if let Some(items) = o.get_mut("items") {
        clean_schema(items);
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(a)) = o.get_mut(k) {
            a.iter_mut().for_each(clean_schema);
        }
    }
}

fn tool_config(choice: &Value) -> Result<Value, GatewayError> {
    let name = choice
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    let config = match (choice.as_str(), name) {
        (Some("auto"), _) => json!({ "mode": "AUTO" }),
        (Some("none"), _) => json!({ "mode": "NONE" }),
        (Some("required"), _) => json!({ "mode": "ANY" }),
        (None, Some(name)) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
        _ => {
            return Err(invalid(
                "`tool_choice` must be `auto`, `none`, `required` or {\"type\":\"function\",\"function\":{\"name\":…}}",
            )
            .with_param("tool_choice"))
        }
    };
    Ok(json!({ "functionCallingConfig": config }))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// The common usage of a `usageMetadata` object: thoughts count as output (and reasoning),
/// tool-use prompt tokens as input.
pub(crate) fn usage(meta: Option<&Value>) -> Option<Usage> {
    let meta = meta?.as_object()?;
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Some(Usage {
        input_tokens: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        output_tokens: n("candidatesTokenCount").saturating_add(thoughts),
        cached_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
        estimated: false,
    })
}

/// OpenAI's `finish_reason` for a Gemini `finishReason`.
pub(crate) fn finish_reason(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// The text and function calls of a candidate's parts (thoughts skipped). Tool calls are
/// numbered from `first_tool` for generated ids.
pub(crate) fn read_parts(
    candidate: &Value,
    seed: &str,
    choice: u64,
    first_tool: u64,
) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array);
    for part in parts.map(Vec::as_slice).unwrap_or_default() {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            let n = first_tool + calls.len() as u64;
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| tool_call_id(seed, choice, n));
            let name = call.get("name").and_then(Value::as_str).unwrap_or("");
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            calls.push(openai::tool_call(&id, name, args.to_string()));
        }
    }
    (text, calls)
}

/// A `GenerateContentResponse` as a chat completion; `None` when it is not one.
pub(crate) fn response(body: &[u8], ctx: &ResponseContext<'_>) -> Option<(Value, Option<Usage>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    if !obj.contains_key("candidates") && !obj.contains_key("promptFeedback") {
        return None;
    }
    let mut choices = Vec::new();
    let candidates = v.get("candidates").and_then(Value::as_array);
    for (pos, cand) in candidates
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let index = cand
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(pos as u64);
        let (text, calls) = read_parts(cand, ctx.id, index, 0);
        let reason = cand
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP");
        let finish = finish_reason(reason, !calls.is_empty());
        choices.push(openai::choice(index, text, calls, finish));
    }
    if choices.is_empty() {
        // The prompt was blocked (`promptFeedback.blockReason`): no candidate at all.
        choices.push(openai::choice(
            0,
            String::new(),
            Vec::new(),
            "content_filter",
        ));
    }
    let usage = usage(v.get("usageMetadata"));
    Some((openai::completion(ctx, choices, usage.as_ref()), usage))
}
