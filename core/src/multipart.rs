//! `multipart/form-data` bodies (RFC 7578), read just enough to route them: the audio
//! endpoints carry `model` as a form field next to the file, so the gateway finds that
//! field's value, decides on it, and splices the deployment's model name in its place.
//! Every other byte — the file parts included — is forwarded as it came.

use std::ops::Range;

use memchr::memmem;

use crate::error::bounded;
use crate::error::{ErrorKind, GatewayError};

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Longest `model` value read.
const MAX_MODEL: usize = 256;

fn invalid(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, msg)
}

/// The boundary of a `multipart/form-data` content type, or a 400 naming what is wrong.
pub fn boundary(content_type: Option<&str>) -> Result<&str, GatewayError> {
    let ct = content_type.unwrap_or("");
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(invalid(format!(
            "this endpoint takes a multipart/form-data body, got content-type `{}`",
            bounded(ct)
        )));
    }
    let b = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .unwrap_or("");
    if b.is_empty() || b.len() > MAX_BOUNDARY {
        return Err(invalid(
            "the multipart/form-data content type has no valid boundary",
        ));
    }
    Ok(b)
}

/// A `multipart/form-data` body's routing facts, kept with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Form {
    /// The client's content type (with its boundary), forwarded as it came.
    pub content_type: String,
    /// Where the `model` value is in the body.
    pub model: Range<usize>,
}

/// One form field found in a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Where the value is in the body.
    pub value: Range<usize>,
    /// The value, when it is UTF-8 text.
    pub text: Option<String>,
}

/// Finds the form field `name` in `body` (parts before it are skipped, whatever their size).
/// `Ok(None)` when no part has that name; a 400 when the body is not framed by `boundary`.
pub fn find_field(body: &[u8], boundary: &str, name: &str) -> Result<Option<Field>, GatewayError> {
    let delim = format!("--{boundary}");
    let finder = memmem::Finder::new(delim.as_bytes());
    let next_delim = format!("\r\n--{boundary}");
    let next = memmem::Finder::new(next_delim.as_bytes());
    let framing = || invalid("the multipart/form-data body is not framed by its boundary");
    let first = finder.find(body).ok_or_else(framing)?;
    let mut at = first + delim.len();
    loop {
        // After a delimiter: `--` ends the body, else CRLF and the part's headers.
        if body.get(at..at + 2) == Some(b"--") {
            return Ok(None);
        }
        let start = at
            + body.get(at..).map_or(0, |r| {
                r.iter().take_while(|b| **b == b' ' || **b == b'\t').count()
            });
        if body.get(start..start + 2) != Some(b"\r\n") {
            return Err(framing());
        }
        let headers_at = start + 2;
        let headers_end = memmem::find(&body[headers_at..], b"\r\n\r\n")
            .map(|i| headers_at + i)
            .ok_or_else(framing)?;
        let value_at = headers_end + 4;
        let value_end = next
            .find(&body[value_at..])
            .map(|i| value_at + i)
            .ok_or_else(framing)?;
        let headers = &body[headers_at..headers_end];
        if part_name(headers).as_deref() == Some(name) {
            let value = &body[value_at..value_end];
            let text = std::str::from_utf8(value)
                .ok()
                .filter(|t| t.len() <= MAX_MODEL)
                .map(str::to_owned);
            return Ok(Some(Field {
                value: value_at..value_end,
                text,
            }));
        }
        at = value_end + next_delim.len();
    }
}

/// The `name` parameter of a part's `content-disposition: form-data; name="…"`.
fn part_name(headers: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(headers).ok()?;
    for line in text.split("\r\n") {
        let Some((h, v)) = line.split_once(':') else {
            continue;
        };
        if !h.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for param in v.split(';').skip(1) {
            if let Some((k, val)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("name") {
                    return Some(val.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    None
}

/// `body` with `range` replaced by `value`.
pub fn splice(body: &[u8], range: &Range<usize>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..range.start.min(body.len())]);
    out.extend_from_slice(value);
    out.extend_from_slice(&body[range.end.min(body.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, value) in parts {
            b.extend_from_slice(b"--XyZ\r\ncontent-disposition: form-data; name=\"");
            b.extend_from_slice(name.as_bytes());
            b.push(b'"');
            if let Some(f) = file {
                b.extend_from_slice(
                    format!("; filename=\"{f}\"\r\ncontent-type: audio/wav").as_bytes(),
                );
            }
            b.extend_from_slice(b"\r\n\r\n");
            b.extend_from_slice(value);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary(Some("multipart/form-data; boundary=XyZ")).unwrap(),
            "XyZ"
        );
        assert_eq!(
            boundary(Some("Multipart/Form-Data;boundary=\"a b\"")).unwrap(),
            "a b"
        );
        assert_eq!(
            boundary(Some("application/json")).unwrap_err().status(),
            400
        );
        assert!(boundary(None).is_err());
        assert!(boundary(Some("multipart/form-data")).is_err());
    }

    #[test]
    fn finds_the_model_after_a_file_part_and_splices_it() {
        // The file holds bytes that look like a delimiter without the leading CRLF.
        let file: &[u8] = b"RIFF\0\0--XyZ\xff\xfe";
        let body = form(&[
            ("file", Some("a.wav"), file),
            ("model", None, b"whisper-1"),
            ("language", None, b"en"),
        ]);
        let f = find_field(&body, "XyZ", "model").unwrap().unwrap();
        assert_eq!(f.text.as_deref(), Some("whisper-1"));
        let out = splice(&body, &f.value, b"gpt-4o-transcribe");
        let again = find_field(&out, "XyZ", "model").unwrap().unwrap();
        assert_eq!(again.text.as_deref(), Some("gpt-4o-transcribe"));
        assert_eq!(
            find_field(&out, "XyZ", "language")
                .unwrap()
                .unwrap()
                .text
                .as_deref(),
            Some("en")
        );
        assert!(out.windows(file.len()).any(|w| w == file));
        assert_eq!(find_field(&body, "XyZ", "prompt").unwrap(), None);
    }

    #[test]
    fn bad_framing_is_a_400() {
        for body in [
            &b""[..],
            b"no boundary here",
            b"--XyZ\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nunterminated",
        ] {
            assert_eq!(find_field(body, "XyZ", "model").unwrap_err().status(), 400);
        }
    }
}
