//! Request inspection and rewrite, without building a DOM.
//!
//! [`inspect`] reads the few top-level fields the gateway decides on (`model`, `stream`,
//! `stream_options`, `max_tokens`) into borrowed values, remembering where they are in the
//! body. [`rewrite`] then splices new bytes into those places — the upstream model name, a
//! `stream_options.include_usage` the client did not ask for — and copies every other byte as
//! it came, so the upstream sees the client's JSON untouched but for the edits.

use std::ops::Range;

pub(crate) mod walk;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::bounded;
use crate::error::{ErrorKind, GatewayError};

/// What the gateway needs to know about a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    /// The `model` the client asked for.
    pub model: String,
    /// Where the `model` string literal (quotes included) is in the body.
    model_span: Range<usize>,
    /// `"stream": true`.
    pub stream: bool,
    /// What the client asked for in `stream_options.include_usage`.
    pub include_usage: bool,
    /// Where the `stream_options` value is in the body, if present.
    stream_options_span: Option<Range<usize>>,
    /// `max_tokens` or `max_completion_tokens` or `max_output_tokens`, if set.
    pub max_tokens: Option<u64>,
    /// Offset just after the opening `{` of the body.
    object_start: usize,
}

fn some_raw<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: Deserializer<'de>,
{
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default, deserialize_with = "some_raw")]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default, deserialize_with = "some_raw")]
    stream_options: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

fn invalid(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, msg)
}

/// Where `inner` (a sub-slice of `outer`) starts in `outer`.
fn span_of(outer: &str, inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start + inner.len();
    (end <= outer.len()).then_some(start..end)
}

/// Reads the routing fields of a JSON request body.
///
/// Fails with 400 when the body is not a JSON object, a field has the wrong type, a field is
/// repeated, or `model` is missing.
pub fn inspect(body: &[u8]) -> Result<Inspected, GatewayError> {
    let text = std::str::from_utf8(body).map_err(|_| invalid("request body is not valid UTF-8"))?;
    let object_start = match text.find(|c: char| !c.is_ascii_whitespace()) {
        Some(i) if text.as_bytes()[i] == b'{' => i + 1,
        _ => return Err(invalid("request body must be a JSON object")),
    };
    // Most bodies are settled by the walk, which steps over the prompt without serde's
    // per-value machinery; any body it leaves (escaped keys, a wrong type, a repeated field,
    // broken JSON) gets serde's verdict and message.
    match walked(text, object_start) {
        Some(found) => Ok(found),
        None => probed(text, object_start),
    }
}

/// The routing fields as serde's borrowed probe reads them.
fn probed(text: &str, object_start: usize) -> Result<Inspected, GatewayError> {
    let probe: Probe<'_> = serde_json::from_str(text)
        .map_err(|e| invalid(format!("invalid JSON body: {}", bounded(&e.to_string()))))?;
    let raw_model = probe
        .model
        .ok_or_else(|| invalid("you must provide a model parameter").with_param("model"))?;
    let model: String = serde_json::from_str(raw_model.get())
        .map_err(|_| invalid("`model` must be a string").with_param("model"))?;
    if model.is_empty() {
        return Err(invalid("`model` must not be empty").with_param("model"));
    }
    let model_span = span_of(text, raw_model.get())
        .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "model span"))?;
    let (include_usage, stream_options_span) = match probe.stream_options {
        None => (false, None),
        Some(raw) => {
            let opts: Option<StreamOptions> = serde_json::from_str(raw.get()).map_err(|_| {
                invalid("`stream_options` must be an object").with_param("stream_options")
            })?;
            (
                opts.and_then(|o| o.include_usage).unwrap_or(false),
                span_of(text, raw.get()),
            )
        }
    };
    Ok(Inspected {
        model,
        model_span,
        stream: probe.stream.unwrap_or(false),
        include_usage,
        stream_options_span,
        max_tokens: probe
            .max_tokens
            .or(probe.max_completion_tokens)
            .or(probe.max_output_tokens),
        object_start,
    })
}

/// The routing fields as [`walk::members`] finds them, or `None` when serde should decide (the
/// walk refused the body, or a field is repeated, of a type the serde path refuses, or needs
/// decoding the walk does not do). What it returns is what the serde path returns.
fn walked(text: &str, object_start: usize) -> Option<Inspected> {
    let json = text.as_bytes();
    let mut model: Option<(Range<usize>, bool)> = None;
    let mut stream: Option<Option<bool>> = None;
    let mut stream_options: Option<Range<usize>> = None;
    // max_tokens, max_completion_tokens, max_output_tokens.
    let mut limits: [Option<Option<u64>>; 3] = [None; 3];
    use walk::{count, once};
    walk::members(json, |m| {
        let v = &json[m.value.clone()];
        // A field serde's Probe reads may appear once (serde refuses a repeat).
        match m.key {
            b"model" => once(&mut model, Some((m.value, m.escaped))),
            b"stream" => once(
                &mut stream,
                match v {
                    b"true" => Some(Some(true)),
                    b"false" => Some(Some(false)),
                    b"null" => Some(None),
                    _ => None,
                },
            ),
            b"stream_options" => once(&mut stream_options, Some(m.value)),
            b"max_tokens" => once(&mut limits[0], count(v)),
            b"max_completion_tokens" => once(&mut limits[1], count(v)),
            b"max_output_tokens" => once(&mut limits[2], count(v)),
            _ => Some(()),
        }
    })?;
    let (model_span, escaped) = model?;
    let raw = &text[model_span.clone()];
    let model: String = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(plain) if !escaped => plain.to_owned(),
        _ => serde_json::from_str(raw).ok()?,
    };
    if model.is_empty() {
        return None;
    }
    let include_usage = match &stream_options {
        None => false,
        Some(span) => serde_json::from_str::<Option<StreamOptions>>(&text[span.clone()])
            .ok()?
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    };
    let [a, b, c] = limits.map(Option::flatten);
    Some(Inspected {
        model,
        model_span,
        stream: stream.flatten().unwrap_or(false),
        include_usage,
        stream_options_span: stream_options,
        max_tokens: a.or(b).or(c),
        object_start,
    })
}

/// Edits to make while copying a body upstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rewrite<'a> {
    /// Replace `model` with this name.
    pub model: Option<&'a str>,
    /// Make sure `stream_options.include_usage` is true.
    pub force_include_usage: bool,
}

impl Rewrite<'_> {
    /// Whether there is nothing to change.
    pub fn is_noop(&self, inspected: &Inspected) -> bool {
        self.model.is_none_or(|m| m == inspected.model)
            && (inspected.include_usage || !self.force_include_usage)
    }
}

/// Copies `body` into `out` with the edits of `rewrite` spliced in. Bytes outside the edited
/// values are copied unchanged.
pub fn rewrite(body: &[u8], inspected: &Inspected, edits: Rewrite<'_>, out: &mut Vec<u8>) {
    rewrite_after(body, inspected, edits, out, |_, _| {});
}

/// [`rewrite`], with `before(out, len)` called first with the length of the rewritten body:
/// a caller writes the `Content-Length` that precedes it there, and the body goes straight
/// after (instead of moving a body written first to make room for its length).
pub fn rewrite_after(
    body: &[u8],
    inspected: &Inspected,
    edits: Rewrite<'_>,
    out: &mut Vec<u8>,
    before: impl FnOnce(&mut Vec<u8>, usize),
) {
    // (position, bytes removed, what is inserted), applied in order of position.
    let mut splices: [(usize, usize, Insert<'_>); 2] = Default::default();
    let mut n = 0;
    if let Some(model) = edits.model.filter(|m| *m != inspected.model) {
        splices[n] = (
            inspected.model_span.start,
            inspected.model_span.len(),
            Insert::Model(model),
        );
        n += 1;
    }
    if edits.force_include_usage && !inspected.include_usage {
        match &inspected.stream_options_span {
            Some(span) => {
                let raw = &body[span.clone()];
                let mut opts: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(raw).unwrap_or_default();
                opts.insert("include_usage".into(), serde_json::Value::Bool(true));
                let bytes = serde_json::to_vec(&opts).unwrap_or_default();
                splices[n] = (span.start, span.len(), Insert::Bytes(bytes));
            }
            None => {
                splices[n] = (
                    inspected.object_start,
                    0,
                    Insert::Static(b"\"stream_options\":{\"include_usage\":true},"),
                );
            }
        }
        n += 1;
    }
    let splices = &mut splices[..n];
    splices.sort_by_key(|s| s.0);
    let mut len = body.len();
    for (_, removed, inserted) in splices.iter() {
        len = len - removed + inserted.len();
    }
    before(out, len);
    out.reserve(len);
    let mut pos = 0;
    for (at, removed, inserted) in splices.iter() {
        out.extend_from_slice(&body[pos..*at]);
        match inserted {
            // Written straight into `out` as a JSON string literal (no copy of its own).
            Insert::Model(m) => {
                if serde_json::to_writer(&mut *out, m).is_err() {
                    out.extend_from_slice(b"\"\"");
                }
            }
            Insert::Bytes(b) => out.extend_from_slice(b),
            Insert::Static(b) => out.extend_from_slice(b),
            Insert::Empty => {}
        }
        pos = at + removed;
    }
    out.extend_from_slice(&body[pos..]);
}

/// What a splice of [`rewrite`] inserts.
#[derive(Default)]
enum Insert<'a> {
    /// A model name, written as a JSON string.
    Model(&'a str),
    /// Bytes made for this body.
    Bytes(Vec<u8>),
    /// Fixed bytes.
    Static(&'static [u8]),
    /// Nothing (an unused slot).
    #[default]
    Empty,
}

impl Insert<'_> {
    /// How many bytes [`rewrite`] writes for this insert.
    fn len(&self) -> usize {
        match self {
            // As written: serde's JSON string (`""` if that failed).
            Insert::Model(m) => {
                let mut count = ByteCount(0);
                match serde_json::to_writer(&mut count, m) {
                    Ok(()) => count.0,
                    Err(_) => 2,
                }
            }
            Insert::Bytes(b) => b.len(),
            Insert::Static(b) => b.len(),
            Insert::Empty => 0,
        }
    }
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A cheap estimate of a request's prompt tokens from its body size (about four bytes a
/// token for English JSON), used to reserve before the real count is known.
pub fn estimate_prompt_tokens(body_len: usize) -> u64 {
    (body_len as u64).div_ceil(4).max(1)
}

#[cfg(test)]
mod serde_oracle;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(body: &str, model: Option<&str>, force: bool) -> String {
        let ins = inspect(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        rewrite(
            body.as_bytes(),
            &ins,
            Rewrite {
                model,
                force_include_usage: force,
            },
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reads_fields() {
        let ins = inspect(
            br#" {"messages":[{"role":"user","content":"hi \"model\""}],"model":"gpt-4o","stream":true,"max_tokens":7}"#,
        )
        .unwrap();
        assert_eq!(ins.model, "gpt-4o");
        assert!(ins.stream);
        assert!(!ins.include_usage);
        assert_eq!(ins.max_tokens, Some(7));
    }

    #[test]
    fn rewrite_after_announces_the_length_it_writes() {
        let cases: [(&str, Option<&str>, bool); 6] = [
            (r#"{"model":"a","stream":true}"#, Some("gpt-4o-mini"), false),
            (r#"{"model":"a","stream":true}"#, Some("q\"u\u{7}é\n"), true),
            (r#"{"stream_options":{"x":1},"model":"a"}"#, Some("b"), true),
            (
                r#"{"model":"a","stream_options":{"include_usage":false}}"#,
                None,
                true,
            ),
            (r#" {"messages":[],"model":"a"}"#, Some("a"), false),
            (
                r#"{"model":"\u0061"}"#,
                Some("much-longer-model-name"),
                false,
            ),
        ];
        for (body, model, force) in cases {
            let ins = inspect(body.as_bytes()).unwrap();
            let edits = Rewrite {
                model,
                force_include_usage: force,
            };
            let mut out = b"head|".to_vec();
            let mut announced = None;
            rewrite_after(body.as_bytes(), &ins, edits, &mut out, |o, len| {
                announced = Some(len);
                o.extend_from_slice(b"|");
            });
            assert_eq!(announced, Some(out.len() - 6), "{body}");
            assert_eq!(&out[6..], apply(body, model, force).as_bytes(), "{body}");
        }
    }

    #[test]
    fn rewrites_model_only_in_place() {
        let body = r#"{"model":"mock-fast","messages":[{"role":"user","content":"model"}],"x":{"model":"keep"}}"#;
        assert_eq!(
            apply(body, Some("gpt-4o-mini"), false),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"model"}],"x":{"model":"keep"}}"#
        );
        assert_eq!(apply(body, Some("mock-fast"), false), body);
        assert_eq!(
            apply(body, Some("we\"ird"), false).find(r#""we\"ird""#),
            Some(9)
        );
    }

    #[test]
    fn injects_include_usage() {
        let body = r#"{"model":"m","stream":true}"#;
        let out = apply(body, Some("up"), true);
        assert_eq!(
            out,
            r#"{"stream_options":{"include_usage":true},"model":"up","stream":true}"#
        );
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let v: serde_json::Value = serde_json::from_str(&apply(body, None, true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        let body = r#"{"model":"m","stream":true,"stream_options":null}"#;
        let v: serde_json::Value = serde_json::from_str(&apply(body, None, true)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(apply(body, None, true), body);
    }

    #[test]
    fn refuses_bad_bodies() {
        for bad in [
            &b"[]"[..],
            b"not json",
            b"{}",
            br#"{"model":1}"#,
            br#"{"model":""}"#,
            br#"{"model":"a","model":"b"}"#,
            br#"{"model":"a","stream":"yes"}"#,
            br#"{"model":"a","stream_options":3}"#,
            b"\xff\xfe",
            br#"{"model":"a""#,
        ] {
            let e = inspect(bad).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::InvalidRequest,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// Any JSON object with a string model rewrites to valid JSON where only `model` (and
        /// stream_options) changed.
        #[test]
        fn rewrite_keeps_everything_else(
            model in "[a-zA-Z0-9\"\\\\/ é-]{1,20}",
            upstream in "[a-zA-Z0-9\"\\\\/ é-]{1,20}",
            extra in prop::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..5),
            stream in any::<bool>(),
        ) {
            let mut obj = serde_json::Map::new();
            for (k, v) in &extra { obj.insert(k.clone(), (*v).into()); }
            obj.insert("model".into(), model.clone().into());
            obj.insert("stream".into(), stream.into());
            let body = serde_json::to_vec(&obj).unwrap();
            let ins = inspect(&body).unwrap();
            prop_assert_eq!(&ins.model, &model);
            let mut out = Vec::new();
            rewrite(&body, &ins, Rewrite { model: Some(&upstream), force_include_usage: stream }, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(v["model"].as_str().unwrap(), upstream.as_str());
            for (k, val) in &extra {
                if k != "model" && k != "stream" { prop_assert_eq!(v[k].as_i64().unwrap(), i64::from(*val)); }
            }
            if stream { prop_assert_eq!(v["stream_options"]["include_usage"].as_bool(), Some(true)); }
        }

        #[test]
        fn inspect_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = inspect(&body);
        }
    }
}
