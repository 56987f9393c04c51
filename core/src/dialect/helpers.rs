//! Helpers shared by the dialects: reading upstream errors, JSON and body utilities, the
//! 400s every translator answers the same way.

use serde_json::Value;

use crate::error::bounded;
use crate::error::{ErrorKind, GatewayError};

use super::{Dialect, JsonMap, RequestOptions, Translated};

/// An upstream error body, read from any dialect's shape (all keep `error.message`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UpstreamError {
    /// The provider's message.
    pub(crate) message: String,
    /// The provider's `error.type` (OpenAI, Anthropic) or `error.status` (Gemini).
    pub(crate) kind: Option<String>,
}

impl UpstreamError {
    /// Reads the `error` object of a stream's error event: its `message`, its kind from
    /// `kind_field` (`type` for OpenAI and Anthropic, `status` for Gemini), and the status in
    /// its numeric `code`, when it has one.
    pub(crate) fn from_stream_event(err: &Value, kind_field: &str) -> (UpstreamError, Option<u16>) {
        let error = UpstreamError {
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the upstream stream failed")
                .to_owned(),
            kind: err
                .get(kind_field)
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        let status = err
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok());
        (error, status)
    }

    /// Reads an error body; a body that is not JSON becomes the message, shortened.
    pub(crate) fn parse(body: &[u8]) -> UpstreamError {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        let err = v.as_ref().and_then(|v| v.get("error"));
        let message = err
            .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_owned))
            .or_else(|| err.and_then(Value::as_str).map(str::to_owned))
            .or_else(|| {
                v.as_ref()
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(512).collect();
                if text.is_empty() {
                    "the upstream answered with an error and no body".to_owned()
                } else {
                    text
                }
            });
        let kind = err
            .and_then(|e| {
                ["type", "status", "code"]
                    .iter()
                    .find_map(|k| e.get(*k).and_then(Value::as_str))
            })
            .map(str::to_owned);
        UpstreamError { message, kind }
    }
}

pub(crate) fn to_vec(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(crate) fn invalid(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, msg)
}

/// Parses a request body that must be a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<JsonMap, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("request body must be a JSON object")),
        Err(e) => Err(invalid(format!(
            "invalid JSON body: {}",
            bounded(&e.to_string())
        ))),
    }
}

/// Takes the required `messages` array.
pub(crate) fn take_messages(req: &mut JsonMap) -> Result<Vec<Value>, GatewayError> {
    match req.remove("messages") {
        Some(Value::Array(m)) => Ok(m),
        None | Some(Value::Null) => {
            Err(invalid("you must provide a `messages` array").with_param("messages"))
        }
        Some(_) => Err(invalid("`messages` must be an array").with_param("messages")),
    }
}

/// 400 unless `n` is absent, null or 1.
pub(crate) fn check_single_choice(req: &JsonMap, target: Dialect) -> Result<(), GatewayError> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(()),
        Some(n) if n.as_f64() == Some(1.0) => Ok(()),
        Some(n) => Err(invalid(format!(
            "`n` = {} is not supported by the {} upstream of this model: it answers with one \
             choice; send `n` = 1 or several requests",
            bounded(&n.to_string()),
            target.name()
        ))
        .with_param("n")),
    }
}

/// Notes a dropped field once.
/// One OpenAI function tool, as both translating dialects read it.
pub(crate) struct FunctionTool<'a> {
    /// `tools[i]`, for extras a dialect keeps (e.g. Anthropic's `cache_control`).
    pub tool: &'a Value,
    /// `function.name`.
    pub name: &'a str,
    /// `function.description`, when set.
    pub description: Option<&'a Value>,
    /// `function.parameters`, when it is an object.
    pub parameters: Option<&'a Value>,
}

/// Reads OpenAI's `tools`: function tools are returned, other kinds are dropped (noted), a
/// function without a string name is a 400.
pub(crate) fn function_tools<'a>(
    value: &'a Value,
    dropped: &mut Vec<String>,
) -> Result<Vec<FunctionTool<'a>>, GatewayError> {
    let Value::Array(items) = value else {
        return Err(invalid("`tools` must be an array").with_param("tools"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let kind = tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        let Some(function) = tool.get("function").filter(|_| kind == "function") else {
            note(dropped, format!("tools[{i}] (type `{kind}`)"));
            continue;
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(format!("`tools[{i}].function.name` must be a string")).with_param("tools")
            })?;
        if function.get("strict").and_then(Value::as_bool) == Some(true) {
            note(dropped, format!("tools[{i}].function.strict"));
        }
        out.push(FunctionTool {
            tool,
            name,
            description: function.get("description").filter(|d| !d.is_null()),
            parameters: function.get("parameters").filter(|p| p.is_object()),
        });
    }
    Ok(out)
}

/// Names a dropped field, for the debug log; a client-chosen part (a `type`) is bounded.
pub(crate) fn note(dropped: &mut Vec<String>, path: impl Into<String>) {
    let path = path.into();
    let path = match bounded(&path) {
        std::borrow::Cow::Borrowed(_) => path,
        std::borrow::Cow::Owned(short) => short,
    };
    if !dropped.contains(&path) {
        dropped.push(path);
    }
}

/// Merges `extra` into `into`: objects merge key by key, anything else replaces.
pub(crate) fn merge(into: &mut JsonMap, extra: &JsonMap) {
    for (k, v) in extra {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Merges the provider extras and serialises a translated body.
pub(crate) fn finish_body(
    mut body: JsonMap,
    opts: &RequestOptions<'_>,
    path: String,
    stream: bool,
    dropped_fields: Vec<String>,
) -> Translated {
    if let Some(extra) = opts.extra {
        merge(&mut body, extra);
    }
    Translated {
        body: to_vec(&Value::Object(body)),
        path,
        stream,
        dropped_fields,
    }
}

/// `data:<mime>;base64,<data>` split into mime type and data.
pub(crate) fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((
        if mime.is_empty() {
            "application/octet-stream"
        } else {
            mime
        },
        data,
    ))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/` when `keep_slash`).
pub(crate) fn percent_encode(s: &str, keep_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// The text of an OpenAI `content` (a string, or the `text` of its text parts).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .or_else(|| p.get("refusal"))
                    .and_then(Value::as_str)
            })
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A tool-call id for a provider that sends none, unique within one response.
pub(crate) fn tool_call_id(seed: &str, choice: u64, n: u64) -> String {
    let seed: String = seed
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .rev()
        .take(24)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if choice == 0 {
        format!("call_{seed}_{n}")
    } else {
        format!("call_{seed}_{choice}_{n}")
    }
}
