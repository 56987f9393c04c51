//! Google Vertex AI shapes: the OAuth token endpoint and the publisher paths.
//!
//! - `POST /token` (form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=…`):
//!   the assertion's RS256 signature is verified with the public half of the test key
//!   (`tests/fixtures/vertex/test-sa.pub.der`, built in), its `aud` must be a `…/token` URL and
//!   its `exp` in the future; a good one gets a fresh access token living `expires_in` seconds
//!   (the query's `?expires_in=N`, default 3600), a bad one `400 invalid_grant` as Google
//!   answers.
//! - `POST /v1/projects/{p}/locations/{r}/publishers/google/models/{m}:generateContent` and
//!   `:streamGenerateContent?alt=sse`: Gemini's answers.
//! - `POST …/publishers/anthropic/models/{m}:rawPredict` and `:streamRawPredict`: Messages
//!   answers (the body names no model; it must carry `anthropic_version`).
//!
//! The model paths need `Authorization: Bearer` with a token this process issued and that has
//! not expired (401 otherwise).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

use super::http::Head;
use super::request::Endpoint;

/// The public half of the test-only service-account key (PKCS#1 DER).
const TEST_PUBLIC_KEY: &[u8] = include_bytes!("../../../tests/fixtures/vertex/test-sa.pub.der");

/// Tokens kept at most (the oldest expired ones go first).
const MAX_TOKENS: usize = 4096;

/// Issued tokens and when they expire, shared by every mock in the process.
static ISSUED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// What a Vertex AI model path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModelPath<'a> {
    pub(crate) model: &'a str,
    pub(crate) anthropic: bool,
    pub(crate) stream: bool,
}

/// The endpoint of a Vertex AI path, if it is one.
pub(crate) fn route(path: &str) -> Option<Endpoint> {
    if path == "/token" {
        return Some(Endpoint::VertexToken);
    }
    let m = model_path(path)?;
    Some(match (m.anthropic, m.stream) {
        (false, false) => Endpoint::GeminiGenerate,
        (false, true) => Endpoint::GeminiStream,
        (true, _) => Endpoint::Messages,
    })
}

/// `/v1/projects/{p}/locations/{r}/publishers/{google|anthropic}/models/{m}:{method}`.
pub(crate) fn model_path(path: &str) -> Option<ModelPath<'_>> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let (_project, rest) = rest.split_once("/locations/")?;
    let (_region, rest) = rest.split_once("/publishers/")?;
    let (publisher, rest) = rest.split_once("/models/")?;
    let (model, method) = rest.rsplit_once(':')?;
    let (anthropic, stream) = match (publisher, method) {
        ("google", "generateContent") => (false, false),
        ("google", "streamGenerateContent") => (false, true),
        ("anthropic", "rawPredict") => (true, false),
        ("anthropic", "streamRawPredict") => (true, true),
        _ => return None,
    };
    (!model.is_empty()).then_some(ModelPath {
        model,
        anthropic,
        stream,
    })
}

/// 401 for a model path without a valid bearer token; 400 for an Anthropic body without
/// `anthropic_version` or with a `model`.
pub(crate) fn refusal(head: &Head<'_, '_>, body: &[u8]) -> Option<(u16, String)> {
    let path = head.path.split('?').next().unwrap_or(head.path);
    let m = model_path(path)?;
    let bearer = head
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer.is_some_and(|t| {
        let issued = ISSUED.lock().unwrap_or_else(|p| p.into_inner());
        issued
            .as_ref()
            .and_then(|map| map.get(t))
            .is_some_and(|expiry| *expiry > Instant::now())
    });
    if !valid {
        return Some((
            401,
            "mock vertex: missing, unknown or expired access token".into(),
        ));
    }
    if m.anthropic {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if v.get("anthropic_version").and_then(|a| a.as_str()) != Some("vertex-2023-10-16")
            || v.get("model").is_some()
        {
            return Some((
                400,
                "mock vertex: an Anthropic body needs anthropic_version vertex-2023-10-16 and no model".into(),
            ));
        }
    }
    None
}

/// The token endpoint's answer to `body` (status, JSON).
pub(crate) fn token_answer(head: &Head<'_, '_>, body: &[u8]) -> (u16, String) {
    let refuse = |why: &str| {
        (
            400,
            serde_json::json!({"error": "invalid_grant", "error_description": why}).to_string(),
        )
    };
    let form = std::str::from_utf8(body).unwrap_or("");
    let field = |name: &str| {
        form.split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    if field("grant_type") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return (
            400,
            serde_json::json!({"error": "unsupported_grant_type"}).to_string(),
        );
    }
    let Some(assertion) = field("assertion") else {
        return refuse("no assertion");
    };
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse("the assertion is not a JWT");
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let (Some(header_json), Some(claims_json), Some(signature)) =
        (decode(header), decode(claims), decode(signature))
    else {
        return refuse("the assertion is not base64url");
    };
    let header_v: serde_json::Value = serde_json::from_slice(&header_json).unwrap_or_default();
    if header_v.get("alg").and_then(|a| a.as_str()) != Some("RS256") {
        return refuse("the assertion is not RS256");
    }
    let signed = &assertion[..header.len() + 1 + claims.len()];
    let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, TEST_PUBLIC_KEY);
    if key.verify(signed.as_bytes(), &signature).is_err() {
        return refuse("Invalid JWT Signature.");
    }
    let claims: serde_json::Value = serde_json::from_slice(&claims_json).unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let exp = claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
    let aud_ok = claims
        .get("aud")
        .and_then(|a| a.as_str())
        .is_some_and(|a| a.split('?').next().is_some_and(|a| a.ends_with("/token")));
    let scope_ok = claims
        .get("scope")
        .and_then(|s| s.as_str())
        .is_some_and(|s| s.contains("https://www.googleapis.com/auth/cloud-platform"));
    if exp <= now || !aud_ok || !scope_ok || claims.get("iss").is_none() {
        return refuse("the assertion's exp, aud, scope or iss is wrong");
    }
    let query = head.path.split_once('?').map_or("", |(_, q)| q);
    let expires_in = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("expires_in="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(3600)
        .clamp(1, 3600);
    let token = format!(
        "ya29.mock-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let mut issued = ISSUED.lock().unwrap_or_else(|p| p.into_inner());
    let map = issued.get_or_insert_with(HashMap::new);
    let now_i = Instant::now();
    if map.len() >= MAX_TOKENS {
        map.retain(|_, expiry| *expiry > now_i);
    }
    if map.len() < MAX_TOKENS {
        map.insert(token.clone(), now_i + Duration::from_secs(expires_in));
    }
    (
        200,
        serde_json::json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vertex_paths_route_to_the_publishers_shapes() {
        let p = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-x@1:streamRawPredict";
        assert_eq!(route(p), Some(Endpoint::Messages));
        assert_eq!(model_path(p).map(|m| m.model), Some("claude-x@1"));
        let g = "/v1/projects/p/locations/global/publishers/google/models/gemini-2.0-flash:streamGenerateContent";
        assert_eq!(route(g), Some(Endpoint::GeminiStream));
        assert_eq!(
            route("/v1/projects/p/locations/r/publishers/meta/models/x:rawPredict"),
            None
        );
        assert_eq!(route("/token"), Some(Endpoint::VertexToken));
    }
}
