//! A `redis-server` of our own for the fleet tests: started in a temporary directory on a
//! free port (optionally TLS only), stopped by PID (also when dropped).
//!
//! `redis-server` must be installed (`scripts/test.sh` installs it): a missing server fails.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// TLS only (`--tls-port`), with these PEM files: (certificate, key, CA).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, None)
    }

    pub fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: dir.to_path_buf(),
            tls,
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some((cert, key, ca)) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One `redis-cli` command against it; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sends `SIG<name>` to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
