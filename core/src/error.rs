//! The error contract: every error a client sees is an OpenAI-style JSON body with the right
//! status.
//!
//! One enum of kinds, grouped by whom to blame, and one exhaustive `match` from kind to status,
//! so no new kind ships without a status.

use std::fmt;

/// Who is at fault, which decides 4xx versus 5xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Client,
    /// The gateway itself (overload, draining).
    Gateway,
    /// The upstream provider failed or misbehaved.
    Upstream,
}

/// Every kind of error the gateway answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request: bad JSON, bad framing, a field we cannot accept.
    InvalidRequest,
    /// A framing trick that could smuggle a request; the connection is closed after the answer.
    RequestSmuggling,
    /// No key, or a key we do not know.
    Unauthorized,
    /// The key may not use this model.
    Forbidden,
    /// Unknown path.
    RouteNotFound,
    /// Unknown model.
    ModelNotFound,
    /// Known path, wrong method.
    MethodNotAllowed,
    /// The client was too slow to send its request.
    RequestTimeout,
    /// The body is over the configured limit.
    PayloadTooLarge,
    /// The header block is over the configured limit.
    HeadersTooLarge,
    /// The request line (its target) is longer than the gateway parses (RFC 9112 §3).
    UriTooLong,
    /// A transfer coding we do not implement.
    NotImplemented,
    /// A rate, token or concurrency limit.
    RateLimited,
    /// A budget is spent.
    BudgetExceeded,
    /// The gateway cannot take more work (connection limit, draining).
    Overloaded,
    /// The upstream could not be reached or broke the protocol.
    UpstreamUnreachable,
    /// Every candidate upstream is unavailable (breakers open, none configured).
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// A bug or an impossible state inside the gateway.
    Internal,
}

impl ErrorKind {
    /// The HTTP status this kind is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::RequestSmuggling => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::RouteNotFound | ErrorKind::ModelNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::UriTooLong => 414,
            ErrorKind::Internal => 500,
            ErrorKind::NotImplemented => 501,
            ErrorKind::UpstreamUnreachable => 502,
            ErrorKind::UpstreamUnavailable | ErrorKind::Overloaded => 503,
            ErrorKind::UpstreamTimeout => 504,
        }
    }

    /// OpenAI's `error.type` for this kind.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::RequestSmuggling
            | ErrorKind::RouteNotFound
            | ErrorKind::ModelNotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UriTooLong
            | ErrorKind::NotImplemented => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => "rate_limit_error",
            ErrorKind::Overloaded
            | ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamUnavailable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::Internal => "api_error",
        }
    }

    /// OpenAI's machine-readable `error.code` for this kind.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::RequestSmuggling => "bad_framing",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::Forbidden => "model_not_allowed",
            ErrorKind::RouteNotFound => "unknown_url",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::UpstreamUnreachable => "upstream_error",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Internal => "internal_error",
        }
    }

    /// Whom to blame.
    pub fn side(self) -> Side {
        match self {
            ErrorKind::Overloaded | ErrorKind::Internal => Side::Gateway,
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamUnavailable
            | ErrorKind::UpstreamTimeout => Side::Upstream,
            ErrorKind::InvalidRequest
            | ErrorKind::RequestSmuggling
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::RouteNotFound
            | ErrorKind::ModelNotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UriTooLong
            | ErrorKind::NotImplemented
            | ErrorKind::RateLimited
            | ErrorKind::BudgetExceeded => Side::Client,
        }
    }

    /// Whether the connection must be closed after answering (the framing can no longer be
    /// trusted, or the client is misbehaving).
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::RequestSmuggling
                | ErrorKind::RequestTimeout
                | ErrorKind::HeadersTooLarge
                | ErrorKind::UriTooLong
                | ErrorKind::PayloadTooLarge
                | ErrorKind::NotImplemented
        )
    }
}

/// Longest piece of anything a client sent that an error message quotes back.
pub const MAX_ECHO: usize = 256;

/// `text`, cut to at most [`MAX_ECHO`] bytes (on a character boundary) with `…` when cut.
pub fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ECHO {
        return text.into();
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// An error to answer a client with: a kind and a human message that never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    /// What went wrong, which fixes the status.
    pub kind: ErrorKind,
    /// A message for humans.
    pub message: String,
    /// The request field at fault, OpenAI's `error.param`.
    pub param: Option<&'static str>,
    /// Seconds the client should wait, sent as `Retry-After`.
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            param: None,
            retry_after_s: None,
        }
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// Asks the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The OpenAI-style JSON body: `{"error":{"message":…,"type":…,"param":…,"code":…}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": self.param,
                "code": self.kind.code(),
            }
        });
        // Serialising a `Value` of strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The same error as one SSE `error` event followed by `data: [DONE]`, for a stream that
    /// fails after its first byte.
    pub fn to_sse(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.message.len());
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        out
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.code(),
            self.status(),
            self.message
        )
    }
}

impl std::error::Error for GatewayError {}

/// The reason phrase for a status we send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 18] = [
        ErrorKind::InvalidRequest,
        ErrorKind::RequestSmuggling,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::RouteNotFound,
        ErrorKind::ModelNotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::RequestTimeout,
        ErrorKind::PayloadTooLarge,
        ErrorKind::HeadersTooLarge,
        ErrorKind::NotImplemented,
        ErrorKind::RateLimited,
        ErrorKind::BudgetExceeded,
        ErrorKind::Overloaded,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::UpstreamUnavailable,
        ErrorKind::UpstreamTimeout,
        ErrorKind::Internal,
    ];

    #[test]
    fn every_kind_renders_openai_shape() {
        for kind in ALL {
            let err = GatewayError::new(kind, "boom \"quoted\"").with_param("model");
            let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
            assert_eq!(v["error"]["message"], "boom \"quoted\"");
            assert_eq!(v["error"]["type"], kind.openai_type());
            assert_eq!(v["error"]["code"], kind.code());
            assert_eq!(v["error"]["param"], "model");
            assert!((400..600).contains(&kind.status()));
            assert!(!reason_phrase(kind.status()).is_empty());
        }
    }

    #[test]
    fn sides_follow_status() {
        assert_eq!(ErrorKind::PayloadTooLarge.side(), Side::Client);
        assert_eq!(ErrorKind::UpstreamTimeout.side(), Side::Upstream);
        assert_eq!(ErrorKind::Overloaded.side(), Side::Gateway);
        assert_eq!(ErrorKind::Internal.side(), Side::Gateway);
    }

    #[test]
    fn sse_error_ends_with_done() {
        let sse = GatewayError::new(ErrorKind::UpstreamUnreachable, "cut").to_sse();
        let text = String::from_utf8(sse).unwrap();
        assert!(text.starts_with("event: error\ndata: {"));
        assert!(text.ends_with("\n\ndata: [DONE]\n\n"));
    }
}
