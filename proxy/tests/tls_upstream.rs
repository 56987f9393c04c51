//! Upstreams over TLS: a provider behind a private CA, trusted through `ca_file`, and refused
//! without it. The provider here is a small rustls server on 127.0.0.1 with a certificate for
//! `localhost`, made in the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_core::http1::{parse_request_head, BodyFraming, HeadLimits};

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// A TLS "provider" answering every chat request with a fixed completion, keep-alive.
fn tls_provider(config: Arc<rustls::ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = Vec::new();
                let limits = HeadLimits {
                    max_header_bytes: 64 * 1024,
                    max_body_bytes: 1 << 20,
                };
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Ok(Some((head, len))) = parse_request_head(&buf, &limits) else {
                        continue;
                    };
                    let BodyFraming::Length(body_len) = head.body else {
                        return;
                    };
                    if buf.len() < len + body_len as usize {
                        continue;
                    }
                    assert_eq!(
                        head.header_str("host"),
                        Some(
                            format!("localhost:{}", tls.sock.local_addr().unwrap().port()).as_str()
                        )
                    );
                    buf.drain(..len + body_len as usize);
                    let body = r#"{"id":"x","object":"chat.completion","model":"tls-model","choices":[{"index":0,"message":{"role":"assistant","content":"secure"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn tls_config(port: u16, ca_file: Option<&std::path::Path>) -> String {
    let ca = ca_file
        .map(|p| format!("ca_file = \"{}\"", p.display()))
        .unwrap_or_default();
    format!(
        r#"auth = "none"
[server]
listen = "127.0.0.1:0"
workers = 1

[admin]
listen = "127.0.0.1:0"

[[providers]]
name = "secure"
base_url = "https://localhost:{port}/v1"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"
{ca}

[[models]]
name = "tls-model"
deployments = [{{ provider = "secure", model = "tls-model" }}]
"#
    )
}

fn tls_upstream_with_private_ca(driver: &str) {
    let pki = pki();
    let port = tls_provider(pki.server.clone());
    let ca_path =
        std::env::temp_dir().join(format!("sluice-ca-{}-{driver}.pem", std::process::id()));
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    // The CA file parses as a certificate, as the gateway will read it.
    assert_eq!(CertificateDer::pem_file_iter(&ca_path).unwrap().count(), 1);

    let gw = Gateway::start(&tls_config(port, Some(&ca_path)), driver);
    let mut c = gw.connect();
    for _ in 0..3 {
        let r = c.post("/v1/chat/completions", &chat("tls-model", false), "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "secure");
    }
    let log = gw.access_lines(3);
    assert_eq!(log[0]["output_tokens"], 1);
    assert_eq!(
        log[2]["upstream_reused"], true,
        "TLS connections are pooled too"
    );

    // Without the CA the certificate is not trusted: 502, and the error says why.
    let gw = Gateway::start(&tls_config(port, None), driver);
    let r = gw
        .connect()
        .post("/v1/chat/completions", &chat("tls-model", false), "");
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TLS"),
        "{}",
        r.text()
    );
    let _ = std::fs::remove_file(&ca_path);
}

both_drivers!(tls_upstream_with_private_ca);
