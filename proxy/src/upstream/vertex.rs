//! Google Vertex AI access tokens, minted from a service-account key off the data plane.
//!
//! One thread per distinct key (`sluice-vertex-token`) signs a JWT assertion (RS256, with
//! rustls' ring provider: the key's PKCS#8 RSA key through `any_supported_type`, so no
//! second crypto library), exchanges it at the key's `token_uri` for an access token
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) with the process's blocking HTTP
//! client (system roots, `SSL_CERT_FILE`, the `*_PROXY` variables),
//! and stores it in a [`TokenCell`]. It refreshes before expiry ([`refresh_after`]) and,
//! when that fails, logs and counts it (`sluice_vertex_token_failures_total`) and tries
//! again with backoff while the old token lasts.
//!
//! The data plane only loads the current token from the cell (an `ArcSwapOption`, no lock)
//! in [`access_token`]; with none, or an expired one, the request gets a 503 that says why.
//!
//! Cells outlive config generations: a reload that keeps the same key reuses its cell (and
//! token). The thread holds a `Weak` and ends once no generation uses its cell.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::Signer;
use rustls::SignatureScheme;
use sluice_core::config::{Config, Provider, ServiceAccountKey};
use sluice_core::error::{bounded, ErrorKind, GatewayError};

/// The OAuth scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The JWT-bearer grant (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME_S: u64 = 3600;
/// One token request may take this long.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token-endpoint answer read.
const MAX_TOKEN_BODY: u64 = 64 * 1024;
/// How long start-up and reloads wait for a new key's first token.
const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(10);
/// Longest wait between failed attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An access token and when it stops being valid (no `Debug`: it is a credential).
pub struct Token {
    value: String,
    expires_at: Instant,
}

/// The current access token of one service-account key, shared by every worker (no `Debug`:
/// it holds the key and the token).
pub struct TokenCell {
    /// What identifies the key (email, token URI, private key): equal keys share a cell.
    identity: (String, String, String),
    current: ArcSwapOption<Token>,
    /// Why the last refresh failed, for the 503 (no secret in it).
    last_error: ArcSwapOption<String>,
}

/// The cells of every key in use (touched only when a generation is built).
static CELLS: Mutex<Vec<Weak<TokenCell>>> = Mutex::new(Vec::new());

/// One entry per provider of `config`: the token cell of each `vertex` provider (an existing
/// one when its key is already in use, else a new one with its refresh thread, whose first
/// attempt is awaited up to 10 s). Runs at start and on reload, never on a worker.
pub fn cells_for(config: &Config) -> Vec<Option<Arc<TokenCell>>> {
    let mut started = Vec::new();
    let cells = config
        .providers
        .iter()
        .map(|p| {
            let auth = p.vertex.as_ref()?;
            let (cell, first) = cell_for(p, &auth.key);
            started.extend(first);
            Some(cell)
        })
        .collect();
    for first in started {
        let _ = first.recv_timeout(FIRST_TOKEN_WAIT);
    }
    cells
}

fn cell_for(
    provider: &Provider,
    key: &ServiceAccountKey,
) -> (Arc<TokenCell>, Option<std::sync::mpsc::Receiver<()>>) {
    let identity = (
        key.client_email.clone(),
        key.token_uri.clone(),
        key.private_key.expose().to_string(),
    );
    let mut cells = CELLS.lock().unwrap_or_else(|p| p.into_inner());
    cells.retain(|w| w.strong_count() > 0);
    if let Some(cell) = cells
        .iter()
        .filter_map(Weak::upgrade)
        .find(|c| c.identity == identity)
    {
        return (cell, None);
    }
    let cell = Arc::new(TokenCell {
        identity,
        current: ArcSwapOption::empty(),
        last_error: ArcSwapOption::empty(),
    });
    cells.push(Arc::downgrade(&cell));
    let (tx, rx) = std::sync::mpsc::channel();
    let weak = Arc::downgrade(&cell);
    let key = key.clone();
    let name = provider.name.clone();
    let spawned = std::thread::Builder::new()
        .name("sluice-vertex-token".into())
        .spawn(move || refresh_loop(weak, key, name, tx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the Vertex AI token thread");
        cell.last_error
            .store(Some(Arc::new("the token thread could not start".into())));
    }
    (cell, Some(rx))
}

/// The `authorization` token for one attempt at `provider` (index `index`): `None` for
/// providers that are not `vertex`, a 503 naming the cause when no valid token is at hand.
pub fn access_token(
    cells: &[Option<Arc<TokenCell>>],
    provider: &Provider,
    index: usize,
) -> Result<Option<arc_swap::Guard<Option<Arc<Token>>>>, GatewayError> {
    let Some(cell) = cells.get(index).and_then(Option::as_ref) else {
        return Ok(None);
    };
    let token = cell.current.load();
    if token
        .as_ref()
        .is_some_and(|t| t.expires_at > Instant::now())
    {
        return Ok(Some(token));
    }
    let why = cell
        .last_error
        .load()
        .as_ref()
        .map_or_else(|| "no token yet".to_string(), |e| e.to_string());
    Err(GatewayError::new(
        ErrorKind::UpstreamUnavailable,
        format!(
            "provider `{}`: no valid Vertex AI access token ({})",
            provider.name,
            bounded(&why)
        ),
    ))
}

impl Token {
    /// The bearer value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

/// When to refresh a token that lives `ttl`: five minutes before it expires, or halfway
/// through when it lives less than ten.
pub fn refresh_after(ttl: Duration) -> Duration {
    ttl.saturating_sub((ttl / 2).min(Duration::from_secs(300)))
}

fn refresh_loop(
    cell: Weak<TokenCell>,
    key: ServiceAccountKey,
    provider: String,
    first: std::sync::mpsc::Sender<()>,
) {
    let signer = load_signer(&key);
    let agent = crate::blocking_http::agent(TOKEN_TIMEOUT);
    let mut failures: u32 = 0;
    loop {
        let Some(live) = cell.upgrade() else {
            return;
        };
        let asked_at = Instant::now();
        let result = signer
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|s| mint(&agent, &key, s.as_ref()));
        let wait = match result {
            Ok((value, ttl)) => {
                failures = 0;
                live.current.store(Some(Arc::new(Token {
                    value,
                    expires_at: asked_at + ttl,
                })));
                live.last_error.store(None);
                tracing::debug!(%provider, ttl_s = ttl.as_secs(), "Vertex AI access token refreshed");
                refresh_after(ttl)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics::counter!("sluice_vertex_token_failures_total", "provider" => provider.clone())
                    .increment(1);
                tracing::warn!(%provider, service_account = %key.client_email, error = %e, failures, "cannot refresh the Vertex AI access token");
                live.last_error.store(Some(Arc::new(e)));
                Duration::from_secs(1 << failures.min(5).saturating_sub(1)).min(MAX_BACKOFF)
            }
        };
        let _ = first.send(());
        drop(live);
        std::thread::sleep(wait);
    }
}

/// The RS256 signer of the key's `private_key`; the error says what is wrong, not the key.
fn load_signer(key: &ServiceAccountKey) -> Result<Box<dyn Signer>, String> {
    let der = PrivateKeyDer::from_pem_slice(key.private_key.expose().as_bytes()).map_err(|_| {
        "the service-account key's private_key is not a PEM private key".to_string()
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|_| "the service-account key's private_key cannot be loaded".to_string())?;
    signing
        .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
        .ok_or_else(|| "the service-account key's private_key is not an RSA key".to_string())
}

/// A signed JWT assertion for `key`, issued at `now_unix`.
pub fn assertion(
    key: &ServiceAccountKey,
    signer: &dyn Signer,
    now_unix: u64,
) -> Result<String, String> {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &key.private_key_id {
        header["kid"] = kid.as_str().into();
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "sub": key.client_email,
        "aud": key.token_uri,
        "scope": SCOPE,
        "iat": now_unix,
        "exp": now_unix + ASSERTION_LIFETIME_S,
    });
    let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer
        .sign(jwt.as_bytes())
        .map_err(|e| format!("cannot sign the assertion: {e}"))?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jwt)
}

/// One exchange at the token endpoint: the access token and its lifetime.
fn mint(
    agent: &ureq::Agent,
    key: &ServiceAccountKey,
    signer: &dyn Signer,
) -> Result<(String, Duration), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let jwt = assertion(key, signer, now)?;
    let mut resp = agent
        .post(&key.token_uri)
        .send_form([("grant_type", GRANT_TYPE), ("assertion", jwt.as_str())])
        .map_err(|e| format!("token endpoint unreachable: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_TOKEN_BODY)
        .read_to_string()
        .map_err(|e| format!("token endpoint answer unreadable: {e}"))?;
    parse_token_answer(status, &body)
}

/// Reads a token endpoint's answer: `{"access_token", "expires_in"}` on 200, the OAuth
/// `error` (and its description) otherwise.
pub fn parse_token_answer(status: u16, body: &str) -> Result<(String, Duration), String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if status != 200 {
        let error = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no error code");
        let description = v
            .get("error_description")
            .and_then(|e| e.as_str())
            .unwrap_or("");
        return Err(bounded(&format!(
            "the token endpoint answered {status}: {error} {description}"
        ))
        .trim()
        .to_string());
    }
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("the token endpoint's answer has no usable access_token")?;
    let ttl = v.get("expires_in").and_then(|t| t.as_u64()).unwrap_or(3600);
    Ok((token.to_string(), Duration::from_secs(ttl.max(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(0)),
            Duration::from_secs(0)
        );
    }

    #[test]
    fn token_answers_are_read_and_errors_say_why() {
        let (t, ttl) =
            parse_token_answer(200, r#"{"access_token":"ya29.x","expires_in":120}"#).unwrap();
        assert_eq!((t.as_str(), ttl), ("ya29.x", Duration::from_secs(120)));
        let e = parse_token_answer(
            400,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "the token endpoint answered 400: invalid_grant Invalid JWT Signature."
        );
        assert!(parse_token_answer(200, "{}").is_err());
        assert!(parse_token_answer(200, r#"{"access_token":"a\nb"}"#).is_err());
    }
}
