//! Amazon Bedrock's Converse API on the mock: `POST /model/{modelId}/converse` answers a
//! Converse response, `…/converse-stream` the binary AWS event stream
//! (`application/vnd.amazon.eventstream`, frames written by AWS's own `aws-smithy-eventstream`
//! encoder, CRCs and all). Every call must carry a valid SigV4 `Authorization` for the test
//! credentials [`ACCESS_KEY_ID`] / [`SECRET_ACCESS_KEY`] (service `bedrock`): the mock
//! recomputes it over the request it received with the `aws-sigv4` crate and refuses a
//! mismatch with 403, as Bedrock does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

use super::http::{push_u64, Head};
use super::shapes::{push_piece, Answer};

/// The access key id the mock accepts.
pub const ACCESS_KEY_ID: &str = "AKIDMOCKBEDROCK0001";
/// The secret access key the mock checks signatures with.
pub const SECRET_ACCESS_KEY: &str = "mock/bedrock+secret/key/0123456789abcdef";

/// `(model id, streaming)` of a Bedrock path `/model/{modelId}/converse(-stream)`; the id
/// percent-decoded.
pub(crate) fn bedrock_model(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/model/")?;
    let (model, op) = rest.rsplit_once('/')?;
    let stream = match op {
        "converse" => false,
        "converse-stream" => true,
        _ => return None,
    };
    (!model.is_empty()).then(|| (percent_decode(model), stream))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(head: &Head<'_, 'a>, name: &str) -> Option<&'a str> {
    head.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// 403 unless the request carries a SigV4 signature of the test credentials over exactly
/// this method, path, signed headers and body.
pub(crate) fn refusal(head: &Head<'_, '_>, body: &[u8]) -> Option<(u16, String)> {
    let deny = |m: &str| Some((403, format!("mock bedrock: {m}")));
    let Some(auth) = header(head, "authorization") else {
        return deny("missing Authorization header (SigV4)");
    };
    let Some(fields) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return deny("the Authorization header is not AWS4-HMAC-SHA256");
    };
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    let (Some(credential), Some(signed)) = (field("Credential"), field("SignedHeaders")) else {
        return deny("the Authorization header lacks Credential or SignedHeaders");
    };
    let mut scope = credential.split('/');
    let (Some(key_id), Some(_date), Some(region), Some(service)) =
        (scope.next(), scope.next(), scope.next(), scope.next())
    else {
        return deny("malformed credential scope");
    };
    if key_id != ACCESS_KEY_ID {
        return deny(
            "The security token included in the request is invalid (unknown access key id)",
        );
    }
    if service != "bedrock" {
        return deny("the credential scope's service must be `bedrock`");
    }
    let Some(now) = header(head, "x-amz-date").and_then(parse_amz_date) else {
        return deny("missing or malformed x-amz-date header");
    };
    let mut headers = Vec::new();
    for name in signed.split(';') {
        match header(head, name) {
            Some(v) => headers.push((name, v)),
            None => return deny("a signed header is missing"),
        }
    }
    let token = header(head, "x-amz-security-token").map(str::to_owned);
    let expected = signature(region, now, head.path, &headers, body, token);
    if expected.as_deref() == Some(auth) {
        None
    } else {
        deny("The request signature we calculated does not match the signature you provided")
    }
}

/// The `Authorization` value the test credentials give this request.
fn signature(
    region: &str,
    now: SystemTime,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    token: Option<String>,
) -> Option<String> {
    let identity = Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, token, None, "mock").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("bedrock")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        "POST",
        path,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (instructions, _) = sign(request, &params).ok()?.into_parts();
    let found = instructions
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_owned());
    found
}

/// `20261206T141145Z` as a time.
fn parse_amz_date(v: &str) -> Option<SystemTime> {
    let b = v.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The usage object of an answer.
fn usage(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(b"{\"inputTokens\":");
    push_u64(out, a.prompt_tokens);
    out.extend_from_slice(b",\"outputTokens\":");
    push_u64(out, u64::from(a.chunks));
    out.extend_from_slice(b",\"totalTokens\":");
    push_u64(out, a.prompt_tokens + u64::from(a.chunks));
    out.push(b'}');
}

/// A Converse response with the whole text.
pub(crate) fn converse(out: &mut Vec<u8>, a: &Answer) {
    out.extend_from_slice(
        b"{\"output\":{\"message\":{\"role\":\"assistant\",\"content\":[{\"text\":\"",
    );
    for _ in 0..a.chunks {
        push_piece(out, a.chunk_size);
    }
    out.extend_from_slice(b"\"}]}},\"stopReason\":\"end_turn\",\"usage\":");
    usage(out, a);
    out.extend_from_slice(b",\"metrics\":{\"latencyMs\":1}}");
}

/// One event-stream frame of event `kind` with a JSON payload.
fn frame(kind: &'static str, payload: Vec<u8>) -> Vec<u8> {
    let message = Message::new(payload)
        .add_header(Header::new(":event-type", HeaderValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ));
    let mut out = Vec::new();
    // Writing to a Vec cannot run out of room; an error would only be a too-large frame.
    let _ = aws_smithy_eventstream::frame::write_message_to(&message, &mut out);
    out
}

/// `messageStart` and the text block's start.
pub(crate) fn prelude() -> Vec<u8> {
    frame(
        "messageStart",
        br#"{"p":"abcd","role":"assistant"}"#.to_vec(),
    )
}

/// One text delta of `size` bytes.
pub(crate) fn content(size: usize) -> Vec<u8> {
    let mut p = b"{\"contentBlockIndex\":0,\"delta\":{\"text\":\"".to_vec();
    push_piece(&mut p, size);
    p.extend_from_slice(b"\"},\"p\":\"abcdefgh\"}");
    frame("contentBlockDelta", p)
}

/// `contentBlockStop`, `messageStop` and `metadata` with the usage.
pub(crate) fn finish(a: &Answer) -> Vec<u8> {
    let mut out = frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":0,"p":"ab"}"#.to_vec(),
    );
    out.extend(frame(
        "messageStop",
        br#"{"stopReason":"end_turn","p":"abc"}"#.to_vec(),
    ));
    let mut meta = b"{\"usage\":".to_vec();
    usage(&mut meta, a);
    meta.extend_from_slice(b",\"metrics\":{\"latencyMs\":1},\"p\":\"abcdef\"}");
    out.extend(frame("metadata", meta));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_dates() {
        assert_eq!(
            bedrock_model("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"),
            Some(("anthropic.claude-3-haiku-20240307-v1:0".to_owned(), true))
        );
        assert_eq!(
            bedrock_model("/model/x/converse"),
            Some(("x".to_owned(), false))
        );
        assert_eq!(bedrock_model("/model/x/invoke"), None);
        let t = parse_amz_date("20261206T141145Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_796_566_305
        );
        assert_eq!(parse_amz_date("2026-12-06"), None);
    }

    #[test]
    fn frames_read_back_with_the_aws_decoder() {
        let bytes = content(4);
        let msg = aws_smithy_eventstream::frame::read_message_from(&bytes[..]).unwrap();
        assert_eq!(
            msg.payload().as_ref(),
            br#"{"contentBlockIndex":0,"delta":{"text":"tok "},"p":"abcdefgh"}"#
        );
    }
}
