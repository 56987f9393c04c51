//! The OpenTelemetry SDK environment variables, for operators whose collectors are set up
//! by them (Kubernetes operators, the OpenTelemetry Operator's injection, `.env` files):
//!
//! | variable | what it sets | when the file also sets it |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the traces URL, as given | `tracing.otlp_endpoint` wins |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | a base URL; `/v1/traces` is appended | `tracing.otlp_endpoint` wins |
//! | `OTEL_EXPORTER_OTLP_HEADERS` (and `_TRACES_HEADERS`) | `k=v,k2=v2` sent with each export | (no file setting) |
//! | `OTEL_SERVICE_NAME` | `service.name` | `tracing.service_name` wins |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `k=v,k2=v2` resource attributes | `service.name` as above |
//!
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (and `_TRACES_PROTOCOL`) may only say `http/protobuf`, the
//! one protocol Sluice speaks: `grpc` or `http/json` refuse to start rather than send
//! protobuf to a port that expects something else.
//!
//! Values in the two lists are percent-decoded as the specification says. Header values are
//! kept as [`Secret`]s: they usually hold a collector's API key.

use super::{ConfigError, RawTracing, Secret, SecretSource};

/// What the environment adds to `[tracing]` beyond the file's settings.
pub(super) struct OtelEnv {
    /// Headers of each export request.
    pub headers: Vec<(String, Secret)>,
    /// Resource attributes (without `service.name`, which goes to the service name).
    pub resource_attributes: Vec<(String, String)>,
}

/// Fills `raw`'s unset endpoint and service name from the environment and returns the
/// headers and resource attributes it names.
pub(super) fn apply(raw: &mut RawTracing, env: &dyn SecretSource) -> Result<OtelEnv, ConfigError> {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = env.var(var).filter(|p| p.trim() != "http/protobuf") {
            return Err(ConfigError(format!(
                "invalid environment `{var}`: `{}` is not supported; Sluice exports OTLP as http/protobuf",
                crate::error::bounded(&p)
            )));
        }
    }
    if raw.otlp_endpoint.is_none() {
        raw.otlp_endpoint = env.var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
            env.var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        });
    }
    let headers = env
        .var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .or_else(|| env.var("OTEL_EXPORTER_OTLP_HEADERS"))
        .map(|h| pairs("OTEL_EXPORTER_OTLP_HEADERS", &h, false))
        .transpose()?
        .unwrap_or_default();
    for (name, _) in &headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(ConfigError(format!(
                "invalid environment `OTEL_EXPORTER_OTLP_HEADERS`: `{}` is not a header name",
                crate::error::bounded(name)
            )));
        }
    }
    let mut resource_attributes = env
        .var("OTEL_RESOURCE_ATTRIBUTES")
        .map(|r| pairs("OTEL_RESOURCE_ATTRIBUTES", &r, true))
        .transpose()?
        .unwrap_or_default();
    let service_from_resource = resource_attributes
        .iter()
        .position(|(k, _)| k == "service.name")
        .map(|i| resource_attributes.remove(i).1);
    if raw.service_name.is_none() {
        raw.service_name = env.var("OTEL_SERVICE_NAME").or(service_from_resource);
    }
    Ok(OtelEnv {
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), Secret::new(v)))
            .collect(),
        resource_attributes,
    })
}

/// `k=v,k2=v2` with percent-decoded keys and values. Values of `show`-less lists (headers)
/// never appear in an error.
fn pairs(var: &str, text: &str, show: bool) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            let what = if show {
                format!("`{}`", crate::error::bounded(item))
            } else {
                "an entry".to_string()
            };
            ConfigError(format!(
                "invalid environment `{var}`: {what} is not `key=value` (percent-encoded)"
            ))
        };
        let (k, v) = item.split_once('=').ok_or_else(bad)?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s.trim())
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        let k = decode(k).map_err(|_| bad())?;
        let v = decode(v).map_err(|_| bad())?;
        if k.is_empty() {
            return Err(bad());
        }
        out.push((k, v));
    }
    Ok(out)
}
