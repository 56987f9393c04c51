//! TLS termination on the client listener: TLS 1.3 and 1.2 with ALPN `http/1.1`, plain and
//! streaming answers, certificate reload on SIGHUP (a bad new certificate keeps the old one),
//! a plain-HTTP client on the TLS port, and the start-up refusal of a bad certificate. The
//! PKI (a CA and `localhost` leaves) is made here with rcgen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice_core::http1::{parse_response_head, BodyFraming, ChunkedDecoder};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A fresh `localhost` leaf: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn tmpdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-tlss-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_leaf(dir: &Path, (cert, key, _): &(String, String, Vec<u8>)) {
    // Replace atomically, as a certificate manager would.
    for (name, text) in [("cert.pem", cert), ("key.pem", key)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn tls_table(dir: &Path) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn client_config(
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// A blocking HTTPS/1.1 client connection.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> TlsClient {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let conn =
            rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        TlsClient {
            tls,
            buf: Vec::new(),
        }
    }

    fn peer_der(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.tls.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn request(&mut self, bytes: &[u8]) -> Response {
        self.tls.write_all(bytes).unwrap();
        let (head, len) = loop {
            if let Some(x) = parse_response_head(&self.buf, 1 << 20, false).unwrap() {
                break x;
            }
            assert!(self.fill() > 0, "closed before a response head");
        };
        self.buf.drain(..len);
        let mut body = Vec::new();
        match head.body {
            BodyFraming::Empty => {}
            BodyFraming::Length(n) => {
                while (self.buf.len() as u64) < n {
                    assert!(self.fill() > 0, "closed inside a body");
                }
                body = self.buf.drain(..n as usize).collect();
            }
            BodyFraming::Chunked => {
                let mut dec = ChunkedDecoder::new(u64::MAX);
                loop {
                    let (used, done) = dec.decode_into(&self.buf, &mut body).unwrap();
                    self.buf.drain(..used);
                    if done {
                        break;
                    }
                    assert!(self.fill() > 0, "closed inside a chunked body");
                }
            }
            BodyFraming::UntilClose => panic!("unexpected close-delimited body"),
        }
        let headers = head
            .headers()
            .map(|(n, v)| {
                (
                    n.to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        Response {
            status: head.status,
            headers,
            body,
            arrivals: Vec::new(),
            closed: head.header("connection") == Some(b"close"),
        }
    }

    fn get(&mut self, path: &str) -> Response {
        self.request(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
    }

    fn post(&mut self, path: &str, body: &str, extra: &str) -> Response {
        self.request(post_bytes(path, body, extra).as_bytes())
    }
}

/// A transcription request whose `model` comes before a `len`-byte file (so the file is
/// streamed), and the body the upstream should get.
fn upload(len: usize) -> (Vec<u8>, Vec<u8>) {
    let form = |model: &str| {
        let mut b = format!("--B0undary\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--B0undary\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n").into_bytes();
        b.extend((0..len).map(|i| (i % 251) as u8));
        b.extend_from_slice(b"\r\n--B0undary--\r\n");
        b
    };
    let body = form("mock-transcribe");
    let mut req = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary=B0undary\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    (req, form("gpt-4o-transcribe"))
}

fn admin_metrics(gw: &Gateway) -> String {
    let mut c = Client::connect(gw.admin.unwrap());
    c.get("/metrics").text()
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn tls_termination(driver: &str) {
    let dir = tmpdir(driver);
    let ca = ca();
    let first = leaf(&ca);
    write_leaf(&dir, &first);
    let mock = mock();
    let mut cfg = config(mock.addr(), &tls_table(&dir), "");
    cfg.push_str("\n[[models]]\nname = \"mock-transcribe\"\ndeployments = [{ provider = \"mock\", model = \"gpt-4o-transcribe\" }]\n");
    let gw = Gateway::start(&cfg, driver);

    for (version, label) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let cfg = client_config(&ca.pem, version);
        let mut c = TlsClient::connect(gw.addr, &cfg);
        assert_eq!(c.tls.conn.protocol_version(), Some(label));
        assert_eq!(c.tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(c.peer_der(), first.2);
        let r = c.get("/healthz");
        assert_eq!(r.status, 200, "{}", r.text());
        // Keep-alive over TLS: a completion, then a stream, on the same connection.
        let r = c.post("/v1/chat/completions", &chat("mock-fast", false), "");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["choices"][0]["message"]["content"].is_string());
        let r = c.post(
            "/v1/chat/completions",
            &chat("mock-stream", true),
            "x-mock-chunk-delay-ms: 20\r\n",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
        assert!(data.len() > 2, "{data:?}");
        // A large upload is streamed from the TLS session to the upstream, and the
        // connection carries on after it.
        let (req, upstream) = upload(2 << 20);
        let r = c.request(&req);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = mock.last_request().unwrap();
        assert_eq!(
            (seen.body_len, seen.body_fnv),
            (upstream.len(), sluice_loadtest::mock::fnv1a(&upstream))
        );
        assert_eq!(c.get("/healthz").status, 200);
    }

    // A plain-HTTP client on the TLS port is closed; nothing else is disturbed.
    let before = counter(&admin_metrics(&gw), "sluice_tls_handshake_failures_total");
    let mut plain = TcpStream::connect(gw.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    // At most a TLS alert comes back, never an HTTP answer, then the connection ends.
    let mut got = Vec::new();
    let closed = loop {
        let mut b = [0u8; 512];
        match plain.read(&mut b) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    assert!(closed, "plain client not closed");
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    let cfg13 = client_config(&ca.pem, &rustls::version::TLS13);
    let mut kept = TlsClient::connect(gw.addr, &cfg13);
    assert_eq!(kept.get("/healthz").status, 200);
    assert!(eventually(Duration::from_secs(3), || counter(
        &admin_metrics(&gw),
        "sluice_tls_handshake_failures_total"
    ) > before));

    // New certificate + SIGHUP: new connections see it, an open one keeps working.
    let second = leaf(&ca);
    assert_ne!(first.2, second.2);
    write_leaf(&dir, &second);
    gw.sighup();
    assert!(
        eventually(Duration::from_secs(5), || TlsClient::connect(
            gw.addr, &cfg13
        )
        .peer_der()
            == second.2),
        "new connections never saw the new certificate"
    );
    assert_eq!(kept.get("/healthz").status, 200);
    let mut c = TlsClient::connect(gw.addr, &cfg13);
    assert_eq!(c.peer_der(), second.2);
    assert_eq!(
        c.post("/v1/chat/completions", &chat("mock-fast", false), "")
            .status,
        200
    );

    // A broken certificate is refused on reload: the previous one stays in use.
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    gw.sighup();
    assert!(eventually(Duration::from_secs(5), || gw
        .lines()
        .iter()
        .any(|l| l.contains("TLS certificate reload failed"))));
    let mut c = TlsClient::connect(gw.addr, &cfg13);
    assert_eq!(c.peer_der(), second.2);
    assert_eq!(c.get("/healthz").status, 200);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

both_drivers!(tls_termination);

/// A certificate that does not load refuses to start (exit 64), naming the file.
#[test]
fn bad_certificate_refuses_to_start() {
    let dir = tmpdir("bad");
    let ca = ca();
    write_leaf(&dir, &leaf(&ca));
    std::fs::write(dir.join("cert.pem"), "garbage").unwrap();
    let cfg = config("127.0.0.1:9".parse().unwrap(), &tls_table(&dir), "");
    let path = dir.join("sluice.toml");
    std::fs::write(&path, cfg).unwrap();
    for args in [vec!["check-config"], vec!["serve", "--config"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .arg(&path)
            .env("SLUICE_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("cert.pem"), "{args:?}: {err}");
    }
    // A missing key file, too.
    std::fs::remove_file(dir.join("key.pem")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config"])
        .arg(&path)
        .env("SLUICE_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(&dir);
}
