//! Azure OpenAI: the OpenAI body (passthrough) sent to a deployment path with an `api-version`,
//! authenticated with `api-key` (see [`super::auth_headers`]). Answers, errors and streams are
//! OpenAI's shape, so they pass through too.

use super::{percent_encode, RequestOptions};

/// The generally available `api-version` used when the provider config sets none.
pub(crate) const DEFAULT_API_VERSION: &str = "2024-10-21";

/// `/openai/deployments/{deployment}/chat/completions?api-version={v}`; the deployment is the
/// upstream model unless set.
pub(crate) fn path(opts: &RequestOptions<'_>) -> String {
    operation_path(opts, "/chat/completions")
}

/// `/openai/deployments/{deployment}{operation}?api-version={v}` for an operation that Azure
/// serves as OpenAI does (`/images/generations`, `/audio/transcriptions`, `/audio/speech`:
/// bodies and answers pass through); the deployment is the upstream model unless set.
/// `/moderations` is not a deployment operation: `/openai/moderations?api-version={v}`, the
/// path the official `AzureOpenAI` client calls, with the model in the body.
pub fn operation_path(opts: &RequestOptions<'_>, operation: &str) -> String {
    let deployment = opts.azure_deployment.unwrap_or(opts.upstream_model);
    let version = percent_encode(opts.azure_api_version.unwrap_or(DEFAULT_API_VERSION), false);
    if operation == "/moderations" {
        return format!("/openai/moderations?api-version={version}");
    }
    format!(
        "/openai/deployments/{}{operation}?api-version={version}",
        percent_encode(deployment, false),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_go_to_deployment_paths_with_the_api_version() {
        let opts = RequestOptions {
            azure_api_version: Some("2025-04-01-preview"),
            ..RequestOptions::new("tts prod")
        };
        assert_eq!(
            operation_path(&opts, "/audio/speech"),
            "/openai/deployments/tts%20prod/audio/speech?api-version=2025-04-01-preview"
        );
        assert_eq!(
            operation_path(&RequestOptions::new("m"), "/moderations"),
            "/openai/moderations?api-version=2024-10-21"
        );
        assert_eq!(
            path(&RequestOptions::new("gpt")),
            "/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
        );
    }
}
