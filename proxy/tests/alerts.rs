//! Budget alerts through the real binary: a key with a small budget (and its team) crosses
//! 50, 80 and 100 % of it, and a real HTTP receiver on 127.0.0.1 gets exactly one POST per
//! threshold crossed, with the key's id, name and team, the threshold, spend and budget, the
//! configured headers (an `env:` secret among them) and never the key. The first delivery is
//! answered 503 and retried. A restart between 50 % and 80 % does not send 50 % again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use access::*;
use common::*;
use serde_json::{json, Value};

/// A webhook receiver: records each request's head and JSON body, answers 503 to the first
/// `fail_first` requests and 204 to the rest.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, a, s) = (got.clone(), answered.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                serve(conn, &g, &a, fail_first);
            }
        });
        Receiver {
            addr,
            got,
            answered,
            stop,
            thread: Some(thread),
        }
    }

    /// The bodies recorded with status 2xx answered, once `n` are there (or after 10 s).
    fn delivered(&self, n: usize) -> Vec<(String, Value)> {
        wait_for(Duration::from_secs(10), || {
            let got = self.got.lock().unwrap();
            (got.len() >= n).then(|| got.clone())
        })
        .unwrap_or_else(|| self.got.lock().unwrap().clone())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one keep-alive connection until it closes.
fn serve(
    conn: TcpStream,
    got: &Mutex<Vec<(String, Value)>>,
    answered: &AtomicUsize,
    fail_first: usize,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let n = answered.fetch_add(1, Ordering::AcqRel);
        let status = if n < fail_first {
            "503 Service Unavailable"
        } else {
            got.lock()
                .unwrap()
                .push((head, serde_json::from_slice(&body).unwrap()));
            "204 No Content"
        };
        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// 400 bytes of body: 100 prompt tokens at $2.50/M and 100 completion tokens (the mock's
/// `x-mock-chunks`) at $10/M cost 1250 micro-USD; `max_tokens: 1` reserves only 260, so the
/// last request before the budget's edge can reach 100 %.
fn spend_1250(gw: &Gw, key: &str) -> u16 {
    let body = chat_body("mock-fast", false, Some(1), 400);
    gw.chat_as(key, &body, "x-mock-chunks: 100\r\n").status
}

#[test]
fn budget_thresholds_post_to_the_webhook_once_each() {
    let mock = mock();
    let hook = Receiver::start(1);
    let dir = temp_dir("alerts");
    let extra = format!(
        "[alerts]\nwebhook_url = \"http://{}/hooks/budget?token=t0ps3cret\"\ntimeout_ms = 2000\nheaders = {{ authorization = \"env:SLUICE_TEST_HOOK_TOKEN\", x-source = \"sluice\" }}\n",
        hook.addr
    );
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 2, &extra);
    let env = [("SLUICE_TEST_HOOK_TOKEN", "Bearer hook-secret")];
    let mut gw = start_with(&cfg, "epoll", true, &env);
    let (status, _) = gw.admin(
        "POST",
        "/admin/teams",
        Some(json!({"name": "ops", "budget_usd": 0.02})),
    );
    assert_eq!(status, 201);
    let (id, key) = gw.create_key(json!({"name": "small", "team": "ops", "budget_usd": 0.01}));

    // 4 requests: 5000 of 10000 micro-USD, the key's 50 %.
    for _ in 0..4 {
        assert_eq!(spend_1250(&gw, &key), 200);
    }
    let first = hook.delivered(1);
    assert_eq!(first.len(), 1, "{first:?}");
    let (head, alert) = &first[0];
    assert!(
        head.starts_with("POST /hooks/budget?token=t0ps3cret HTTP/1.1"),
        "{head}"
    );
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    assert_eq!(
        header("authorization").as_deref(),
        Some("Bearer hook-secret")
    );
    assert_eq!(header("x-source").as_deref(), Some("sluice"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(alert["event"], "budget_threshold");
    assert_eq!(alert["scope"], "key");
    assert_eq!(alert["key_id"], id.as_str());
    assert_eq!(alert["key_name"], "small");
    assert_eq!(alert["team"], "ops");
    assert_eq!(alert["threshold_percent"], 50);
    assert_eq!(alert["spend_micros"], 5000);
    assert_eq!(alert["budget_micros"], 10_000);
    assert_eq!(alert["budget_usd"], "0.010000");
    assert_eq!(alert["period"], "monthly");
    // The first delivery was refused (503) and retried.
    assert_eq!(hook.answered.load(Ordering::Acquire), 2);

    // A restart rebuilds 5000 spent from the store: 50 % counts as sent.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(10)).unwrap().success());
    let gw = start_with(&cfg, "epoll", true, &env);
    // 3 more: 8750, the key's 80 %.
    for _ in 0..3 {
        assert_eq!(spend_1250(&gw, &key), 200);
    }
    // The 8th: 10000, the key's 100 % and the team's 50 %; then the key is refused (once
    // the 8th is settled: with two workers the next request can arrive first).
    assert_eq!(spend_1250(&gw, &key), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, view) = gw.admin("GET", &format!("/admin/keys/{id}"), None);
        if view["spend_usd"].as_f64().unwrap_or(0.0) >= 0.01 - 1e-9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 8th request never settled: {view}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = gw.chat_as(&key, &chat_body("mock-fast", false, Some(1), 400), "");
    assert_eq!(r.status, 429, "{}", r.text());
    let all = hook.delivered(4);
    std::thread::sleep(Duration::from_millis(300));
    let all_now = hook.got.lock().unwrap().clone();
    assert_eq!(all.len(), all_now.len(), "no more posts: {all_now:?}");
    let mut seen: Vec<(String, u64, u64)> = all
        .iter()
        .map(|(_, a)| {
            (
                a["scope"].as_str().unwrap().to_string(),
                a["threshold_percent"].as_u64().unwrap(),
                a["spend_micros"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("key".to_string(), 50, 5000),
            ("key".to_string(), 80, 8750),
            ("key".to_string(), 100, 10_000),
            ("team".to_string(), 50, 10_000),
        ]
    );
    for (head, a) in &all {
        let text = format!("{head}{a}");
        assert!(!text.contains(&key), "the key itself was sent");
        assert!(!text.contains("sk-sluice"), "{text}");
    }
    // A log line per alert, and the counter.
    let logged = gw
        .lines()
        .iter()
        .filter(|l| l.contains("budget threshold crossed"))
        .count();
    assert_eq!(
        logged, 3,
        "the key's 80 and 100 %, the team's 50 % since the restart"
    );
    assert!(gw
        .lines()
        .iter()
        .all(|l| !l.contains("t0ps3cret") && !l.contains("hook-secret")));
    let m = gw.metrics();
    assert_eq!(
        sample(
            &m,
            "sluice_budget_alerts_total{scope=\"key\",threshold=\"100\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "sluice_budget_alert_failures_total"), 0.0);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_webhook_that_never_answers_is_logged_and_counted_and_requests_go_on() {
    let mock = mock();
    // A port nobody listens on.
    let (_held, dead) = refused_port();
    let dir = temp_dir("alerts-dead");
    let extra = format!("[alerts]\nwebhook_url = \"http://{dead}/hook\"\ntimeout_ms = 200\n");
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 1, &extra);
    let gw = start(&cfg, "epoll");
    let (_, key) = gw.create_key(json!({"name": "k", "budget_usd": 0.002}));
    // 1250 of 2000: 50 %; the webhook fails (4 tries over about 3.5 s) while requests go on.
    assert_eq!(spend_1250(&gw, &key), 200);
    let r = gw.chat_as(&key, &chat_body("mock-fast", false, Some(1), 40), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let failed = wait_for(Duration::from_secs(15), || {
        let v = sample(&gw.metrics(), "sluice_budget_alert_failures_total");
        (v >= 1.0).then_some(v)
    });
    assert_eq!(failed, Some(1.0));
    assert!(gw
        .lines()
        .iter()
        .any(|l| l.contains("budget alert webhook failed after retries")));
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate authority (PEM) and a TLS server config for `localhost` it signed.
fn private_ca_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
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
    (ca_cert.pem(), Arc::new(server))
}

/// The webhook thread uses the process's HTTP client: an https receiver whose certificate a
/// private CA signed is trusted through `SSL_CERT_FILE` (webpki's roots alone refuse it).
#[test]
fn a_webhook_over_https_trusts_ssl_cert_file() {
    let (ca_pem, server) = private_ca_server();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let into = got.clone();
    std::thread::spawn(move || {
        // Bounded: the gateway's four tries at most, then the thread ends with the test.
        for conn in listener.incoming().take(4) {
            let Ok(conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let Ok(tls) = rustls::ServerConnection::new(server.clone()) else {
                continue;
            };
            let mut stream = rustls::StreamOwned::new(tls, conn);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        into.lock().unwrap().push(text);
                        let _ = stream.write_all(
                            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        let _ = stream.flush();
                        break;
                    }
                }
            }
        }
    });
    let dir = temp_dir("alerts-https");
    let ca_path = dir.join("ca.pem");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&ca_path, ca_pem).unwrap();
    let mock = mock();
    let extra =
        format!("[alerts]\nwebhook_url = \"https://localhost:{port}/hook\"\ntimeout_ms = 2000\n");
    let cfg = store_config(mock.addr(), &dir.join("s.db"), 1, &extra);
    let env = [("SSL_CERT_FILE", ca_path.to_str().unwrap())];
    let gw = start_with(&cfg, "epoll", true, &env);
    let (_, key) = gw.create_key(json!({"name": "k", "budget_usd": 0.002}));
    // 1250 of 2000: 50 %.
    assert_eq!(spend_1250(&gw, &key), 200);
    let delivered = wait_for(Duration::from_secs(15), || {
        got.lock().unwrap().first().cloned()
    });
    let request = delivered.expect("the alert over https");
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    let body: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["threshold_percent"], 50, "{body}");
    assert!(!gw
        .lines()
        .iter()
        .any(|l| l.contains("budget alert webhook failed")));
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
