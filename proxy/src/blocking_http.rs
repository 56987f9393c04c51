//! The one blocking HTTP client of the process, `ureq` over rustls (ring) — for the jobs
//! that run on their own threads, never on a data-plane worker: the OTLP exporter, budget
//! alert webhooks, Vertex AI token minting and the CLI's calls to the admin API.
//!
//! Roots are the system's (`rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, so a private CA is trusted by pointing `SSL_CERT_FILE` at it), or
//! webpki's (Mozilla's) when the system has none. `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`
//! and `NO_PROXY` are honoured as curl honours them. A non-2xx status is a response, not an
//! error: callers read it.

use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// An agent whose every call ends within `timeout` (connect, send and read together).
pub fn agent(timeout: Duration) -> ureq::Agent {
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        roots.push(Certificate::from_der(cert.as_ref()).to_owned());
    }
    let root_certs = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::from(roots)
    };
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .tls_config(TlsConfig::builder().root_certs(root_certs).build())
        .build()
        .into()
}
