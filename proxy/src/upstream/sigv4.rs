//! SigV4 signatures of Bedrock requests (service `bedrock`), with the `aws-sigv4` crate.
//!
//! Called once per attempt, after the body is translated and just before it is sent, so the
//! signature covers the exact bytes upstream receives; active health checks sign their `GET`
//! the same way. The signed headers are `host`,
//! `content-type` (when sent) and `x-amz-date` (and `x-amz-security-token` for temporary credentials).
//! Nothing from the credentials reaches a log or an error message.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use sluice_core::config::AwsAuth;
use sluice_core::error::{ErrorKind, GatewayError};

/// The service name in Bedrock's signing scope.
pub const SERVICE: &str = "bedrock";

/// The headers that sign a `method` request (`POST`, or the health check's `GET`) of `body`
/// to `path` (path and query, as sent) on `host` (the `Host` header's value) at `now`, with
/// `content_type` signed when the request sends one: `authorization`, `x-amz-date`, and
/// `x-amz-security-token` when the credentials have a session token.
pub(crate) fn signature_headers(
    aws: &AwsAuth,
    method: &str,
    host: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(&'static str, String)>, GatewayError> {
    let failed = |what: &str| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("the bedrock request could not be signed ({what})"),
        )
    };
    let identity = Credentials::new(
        aws.access_key_id.expose(),
        aws.secret_access_key.expose(),
        aws.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "sluice-config",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&aws.region)
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| failed("signing parameters"))?
        .into();
    let headers = std::iter::once(("host", host)).chain(content_type.map(|c| ("content-type", c)));
    let request = SignableRequest::new(method, path, headers, SignableBody::Bytes(body))
        .map_err(|_| failed("request path"))?;
    let (instructions, _) = sign(request, &params)
        .map_err(|_| failed("signature"))?
        .into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}
