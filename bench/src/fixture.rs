//! What the in-process benches (`alloc-count`, `stream-mem`) run the gateway with: the
//! bundled mock as a child process next to the bench's binary, killed by PID when dropped, and
//! bench/compare.sh's bare gateway config in front of it.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed by PID on drop.
pub struct Kid(pub Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The path of the binary `name` next to this one (where cargo builds them all).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Waits up to 10 s until something accepts on 127.0.0.1:`port`.
pub fn wait_port(port: u16) -> io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("nothing listens on {addr}"),
    ))
}

/// `sluice-mock` on 127.0.0.1:`port` with one worker, once it accepts.
pub fn start_mock(port: u16) -> io::Result<Kid> {
    let bin = sibling("sluice-mock");
    let child = Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot start {} ({e}): build it with cargo build --release -p sluice-loadtest",
                    bin.display()
                ),
            )
        })?;
    let mock = Kid(child);
    wait_port(port)?;
    Ok(mock)
}

/// Writes bench/compare.sh's bare gateway (no keys, no store, no access log, one worker) on
/// `port` in front of the mock on `mock_port` to `dir`/`file`, headed by `by` (who wrote it).
pub fn bare_config(
    dir: &Path,
    file: &str,
    by: &str,
    port: u16,
    mock_port: u16,
) -> io::Result<PathBuf> {
    let text = format!(
        r#"# Written by {by}: the bench's bare gateway (no keys, no store, no access log).
auth = "none"

[server]
listen = "127.0.0.1:{port}"
workers = 1
pin_workers = false
max_connections_per_worker = 16384

[log]
level = "warn"
access_log = false

[admin]
enabled = false

[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"

[[models]]
name = "mock-fast"
deployments = [{{ provider = "mock", model = "mock-model" }}]
"#
    );
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}
