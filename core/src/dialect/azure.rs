//! Azure OpenAI: the OpenAI body (passthrough) sent to a deployment path with an `api-version`,
//! authenticated with `api-key` (see [`super::auth_headers`]). Answers, errors and streams are
//! OpenAI's shape, so they pass through too.

use super::{percent_encode, RequestOptions};

/// The generally available `api-version` used when the provider config sets none.
pub(crate) const DEFAULT_API_VERSION: &str = "2024-10-21";

/// `/openai/deployments/{deployment}/chat/completions?api-version={v}`; the deployment is the
/// upstream model unless set.
pub(crate) fn path(opts: &RequestOptions<'_>) -> String {
    let deployment = opts.azure_deployment.unwrap_or(opts.upstream_model);
    let version = opts.azure_api_version.unwrap_or(DEFAULT_API_VERSION);
    format!(
        "/openai/deployments/{}/chat/completions?api-version={}",
        percent_encode(deployment, false),
        percent_encode(version, false)
    )
}
