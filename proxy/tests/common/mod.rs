//! Test harness: the real `sluice` binary in front of the in-process mock provider, and a
//! small blocking HTTP/1.1 client that records when each byte arrived.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::http1::{parse_response_head, BodyFraming, ChunkedDecoder};
pub use sluice_loadtest::mock::{MockConfig, MockServer};

pub mod acked;
pub mod redis;
#[allow(unused_imports)]
pub use redis::Redis;

/// The provider key the gateway is configured with (through the environment).
pub const UPSTREAM_KEY: &str = "sk-upstream-secret-123";

/// The drivers to run each integration test under.
pub fn driver_name(uring: bool) -> &'static str {
    if uring && monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

/// Generates an io_uring and an epoll variant of a test body `fn(&str)`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::$name($crate::common::driver_name(true));
                }
                #[test]
                fn epoll() {
                    super::$name($crate::common::driver_name(false));
                }
            }
        )*
    };
}

/// A port on 127.0.0.1 where connections are refused, held for as long as the returned socket
/// lives: it is bound but not listening. A listener bound and dropped instead frees its port,
/// and a gateway started next (its admin listener on port 0) could be given that very port,
/// so the "dead" upstream would answer.
#[allow(dead_code)]
pub fn refused_port() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// A mock with default behaviour on a free port.
pub fn mock() -> MockServer {
    mock_with(MockConfig::default())
}

/// A mock with `cfg` on a free port.
pub fn mock_with(cfg: MockConfig) -> MockServer {
    MockServer::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..cfg
    })
    .expect("mock starts")
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the admin listener is, when enabled.
    pub admin: Option<SocketAddr>,
    lines: Arc<Mutex<Vec<String>>>,
    config_path: std::path::PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A config for one mock provider at `mock` with models `mock-fast` and `mock-stream`;
/// `server_extra` and `provider_extra` are appended to those sections.
pub fn config(mock: SocketAddr, server_extra: &str, provider_extra: &str) -> String {
    format!(
        r#"auth = "none"

[server]
listen = "127.0.0.1:0"
workers = 1
{server_extra}

[log]
level = "info"

[admin]
listen = "127.0.0.1:0"

[[providers]]
name = "mock"
base_url = "http://{mock}/v1"
api_key = "env:SLUICE_TEST_UPSTREAM_KEY"
{provider_extra}

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]

[[models]]
name = "mock-stream"
deployments = [{{ provider = "mock", model = "mock-stream-model" }}]
"#
    )
}

impl Gateway {
    /// Starts `sluice serve` with `config` under `driver`; returns once it listens.
    pub fn start(config: &str, driver: &str) -> Gateway {
        Gateway::start_with_env(config, driver, &[])
    }

    /// [`Gateway::start`] with `env` set for the process (`SLUICE_ADMIN_TOKEN` is removed
    /// unless `env` sets it).
    pub fn start_with_env(config: &str, driver: &str, env: &[(&str, &str)]) -> Gateway {
        let path = std::env::temp_dir().join(format!(
            "sluice-test-{}-{}.toml",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["serve", "--config"])
            .arg(&path)
            .env("SLUICE_DRIVER", driver)
            .env("SLUICE_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("RUST_LOG", "info")
            .env_remove("SLUICE_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("sluice starts");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if line.contains("admin listener") {
                        let _ = tx.send(("admin", v["admin"].as_str().unwrap().parse().unwrap()));
                    }
                    if line.contains("sluice listening") {
                        let _ = tx.send(("main", v["listen"].as_str().unwrap().parse().unwrap()));
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut admin = None;
        let addr: SocketAddr = loop {
            let (which, addr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("gateway reports its address");
            if which == "main" {
                break addr;
            }
            admin = Some(addr);
        };
        let gw = Gateway {
            child,
            addr,
            admin,
            lines,
            config_path: path,
        };
        // Wait until a worker accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(gw.addr).is_err() {
            assert!(Instant::now() < deadline, "gateway never accepted");
            std::thread::sleep(Duration::from_millis(10));
        }
        gw
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Access-log lines as JSON, waiting up to 2 s for at least `n` of them.
    pub fn access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let found: Vec<serde_json::Value> = self
                .lines()
                .iter()
                .filter(|l| l.contains("\"sluice::access\""))
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file it was started with (rewrite it, then [`Gateway::sighup`]).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// SIGKILL, and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new client connection.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// (time since the request was sent, decoded body bytes) per read.
    pub arrivals: Vec<(Duration, Vec<u8>)>,
    /// The server closed the connection after this response.
    pub closed: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an event stream, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .flat_map(|ev| ev.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect()
    }

    /// The error code of an OpenAI-style error body.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "not an error body: {v}");
        assert!(v["error"]["type"].is_string(), "not an error body: {v}");
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// A blocking HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a POST with a JSON body and extra header lines (each ending in `\r\n`).
    pub fn post(&mut self, path: &str, body: &str, extra: &str) -> Response {
        self.send_raw(post_bytes(path, body, extra).as_bytes());
        self.read_response()
    }

    /// Sends a GET.
    pub fn get(&mut self, path: &str) -> Response {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes());
        self.read_response()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads one response (skipping interim 1xx answers).
    pub fn read_response(&mut self) -> Response {
        let t0 = Instant::now();
        let (head, len) = loop {
            if let Some((head, len)) = parse_response_head(&self.buf, 1 << 20, false).unwrap() {
                if head.status == 100 {
                    self.buf.drain(..len);
                    continue;
                }
                break (head, len);
            }
            assert!(self.fill() > 0, "connection closed before a response head");
        };
        self.buf.drain(..len);
        let mut body = Vec::new();
        let mut arrivals = Vec::new();
        let mut closed = false;
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
                    let mut out = Vec::new();
                    let (used, done) = dec.decode_into(&self.buf, &mut out).unwrap();
                    self.buf.drain(..used);
                    if !out.is_empty() {
                        arrivals.push((t0.elapsed(), out.clone()));
                        body.extend_from_slice(&out);
                    }
                    if done {
                        break;
                    }
                    if self.fill() == 0 {
                        closed = true;
                        break;
                    }
                }
            }
            BodyFraming::UntilClose => {
                body = std::mem::take(&mut self.buf);
                while self.fill() > 0 {
                    body.append(&mut self.buf);
                }
                closed = true;
            }
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
        let closed = closed || head.header("connection") == Some(b"close");
        Response {
            status: head.status,
            headers,
            body,
            arrivals,
            closed,
        }
    }

    /// Whether the server closed the connection (reads EOF within `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let closed = match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        closed
    }
}

/// The bytes of a POST request.
pub fn post_bytes(path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// A chat request body.
pub fn chat(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"Say hello"}}]}}"#
    )
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
