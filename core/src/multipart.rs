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
    match FieldScan::new(boundary, name).scan(body)? {
        Scanned::Found(field) => Ok(Some(field)),
        Scanned::Absent => Ok(None),
        // The body is whole: a part that never ends is a framing error.
        Scanned::Need => Err(framing()),
    }
}

fn framing() -> GatewayError {
    invalid("the multipart/form-data body is not framed by its boundary")
}

/// What [`FieldScan::scan`] found in the bytes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanned {
    /// Not yet: feed more bytes.
    Need,
    /// The field, whole: its value ends at `value.end`, so everything the caller must hold
    /// before it can decide is `body[..value.end]`.
    Found(Field),
    /// The closing delimiter came first: the form has no such field.
    Absent,
}

/// Where the scan is, between calls.
#[derive(Clone, Copy, Debug)]
enum At {
    /// Before the first delimiter (a preamble may come first).
    Preamble,
    /// Just after a delimiter: `--` (the end) or padding and CRLF, then a part's headers.
    Delimiter(usize),
    /// Inside a part's headers, which start here.
    Headers(usize),
    /// Inside a part's value, which starts here; `true` when it is the wanted field.
    Value(usize, bool),
}

/// Finds one form field in a body that arrives in pieces, without holding more than the
/// caller does: the caller appends what arrives to one buffer (the bytes it must forward
/// anyway) and calls [`FieldScan::scan`] with the whole buffer after each piece. Each call
/// looks only at what is new (a search resumes where the last one stopped, less a
/// delimiter's length), so a large file part before the field costs one pass, and any split
/// — one byte at a time included — gives the same answer as the whole body.
#[derive(Clone, Debug)]
pub struct FieldScan {
    /// `\r\n--boundary`: what ends a part's value.
    delim: Vec<u8>,
    name: String,
    at: At,
    /// Where the next search for the state's pattern starts.
    from: usize,
}

impl FieldScan {
    /// A scan for the field `name` of a form framed by `boundary`.
    pub fn new(boundary: &str, name: &str) -> Self {
        FieldScan {
            delim: format!("\r\n--{boundary}").into_bytes(),
            name: name.to_owned(),
            at: At::Preamble,
            from: 0,
        }
    }

    /// Scans `body`, the bytes received so far (earlier calls saw a prefix of it). A 400 when
    /// what arrived cannot be a form framed by the boundary.
    pub fn scan(&mut self, body: &[u8]) -> Result<Scanned, GatewayError> {
        loop {
            match self.at {
                At::Preamble => {
                    let dash = &self.delim[2..];
                    let Some(i) = search(&mut self.from, body, 0, dash) else {
                        return Ok(Scanned::Need);
                    };
                    let at = i + dash.len();
                    self.enter(At::Delimiter(at));
                }
                At::Delimiter(at) => {
                    let Some(two) = body.get(at..at + 2) else {
                        return Ok(Scanned::Need);
                    };
                    if two == b"--" {
                        return Ok(Scanned::Absent);
                    }
                    let pad = body[at..]
                        .iter()
                        .take_while(|b| **b == b' ' || **b == b'\t')
                        .count();
                    match body.get(at + pad..at + pad + 2) {
                        Some(b"\r\n") => self.enter(At::Headers(at + pad + 2)),
                        Some(_) => return Err(framing()),
                        None if body.len() - at > MAX_BOUNDARY => return Err(framing()),
                        None => return Ok(Scanned::Need),
                    }
                }
                At::Headers(at) => {
                    let Some(end) = search(&mut self.from, body, at, b"\r\n\r\n") else {
                        return Ok(Scanned::Need);
                    };
                    let wanted = part_name(&body[at..end]).as_deref() == Some(&self.name);
                    self.enter(At::Value(end + 4, wanted));
                }
                At::Value(at, wanted) => {
                    let Some(end) = search(&mut self.from, body, at, &self.delim) else {
                        return Ok(Scanned::Need);
                    };
                    if wanted {
                        let text = std::str::from_utf8(&body[at..end])
                            .ok()
                            .filter(|t| t.len() <= MAX_MODEL)
                            .map(str::to_owned);
                        return Ok(Scanned::Found(Field {
                            value: at..end,
                            text,
                        }));
                    }
                    self.enter(At::Delimiter(end + self.delim.len()));
                }
            }
        }
    }

    fn enter(&mut self, at: At) {
        self.at = at;
        self.from = 0;
    }
}

/// Where `pattern` first occurs in `body[start..]` (as an index into `body`), looking only from
/// `*from`, where the last search of the same pattern gave up; moved on when there is none.
fn search(from: &mut usize, body: &[u8], start: usize, pattern: &[u8]) -> Option<usize> {
    let begin = (*from).max(start);
    let found = body
        .get(begin..)
        .and_then(|rest| memmem::find(rest, pattern))
        .map(|i| begin + i);
    if found.is_none() {
        // A match may straddle what arrives next: keep its possible start.
        *from = body.len().saturating_sub(pattern.len() - 1).max(begin);
    }
    found
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

    /// Feeds `body` to a scan in pieces of `step` bytes (the buffer grows as a proxy's
    /// would); the first answer that is not `Need`, and how many bytes it took.
    fn scan_in_steps(body: &[u8], name: &str, step: usize) -> (Result<Scanned, u16>, usize) {
        let mut scan = FieldScan::new("XyZ", name);
        let mut seen = 0;
        while seen < body.len() {
            seen = (seen + step).min(body.len());
            match scan.scan(&body[..seen]) {
                Ok(Scanned::Need) => {}
                other => return (other.map_err(|e| e.status()), seen),
            }
        }
        (Ok(Scanned::Need), seen)
    }

    #[test]
    fn any_split_finds_what_the_whole_body_does() {
        let file: Vec<u8> = b"RIFF--XyZ\r\n\r\n\r\n--Xy\r\n--XZ"
            .iter()
            .copied()
            .chain((0..3000u32).map(|i| (i % 251) as u8))
            .chain(*b"\r\n--X")
            .collect();
        let after = form(&[
            ("file", Some("a.wav"), &file),
            ("model", None, b"whisper-1"),
            ("language", None, b"en"),
        ]);
        let first = form(&[("model", None, b"m"), ("file", Some("a.wav"), &file)]);
        let absent = form(&[("file", Some("a.wav"), &file), ("language", None, b"en")]);
        for (body, want) in [
            (&after, Some("whisper-1")),
            (&first, Some("m")),
            (&absent, None),
        ] {
            let whole = find_field(body, "XyZ", "model").unwrap();
            assert_eq!(whole.as_ref().and_then(|f| f.text.as_deref()), want);
            for step in [1, 2, 3, 7, 64, 1000, body.len()] {
                let (got, used) = scan_in_steps(body, "model", step);
                match &whole {
                    Some(f) => {
                        assert_eq!(got, Ok(Scanned::Found(f.clone())), "step {step}");
                        // Found as soon as the delimiter after the value is in, not later.
                        let needed = f.value.end + "\r\n--XyZ".len();
                        assert!(used >= needed && used < needed + step, "step {step}");
                    }
                    None => assert_eq!(got, Ok(Scanned::Absent), "step {step}"),
                }
            }
        }
        // A preamble before the first delimiter, one byte at a time.
        let mut pre = b"ignored preamble\r\n".to_vec();
        pre.extend_from_slice(&after);
        let (got, _) = scan_in_steps(&pre, "model", 1);
        assert!(matches!(got, Ok(Scanned::Found(f)) if f.text.as_deref() == Some("whisper-1")));
    }

    #[test]
    fn a_broken_delimiter_line_is_a_400_in_any_split() {
        let body = b"--XyZ\r\ncontent-disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZjunk\r\n";
        for step in [1, 5, body.len()] {
            assert_eq!(scan_in_steps(body, "model", step).0, Err(400));
        }
        // Not framed yet is not an error while bytes may still come.
        let (got, _) = scan_in_steps(b"--XyZ\r\ncontent-disposition: form", "model", 1);
        assert_eq!(got, Ok(Scanned::Need));
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
