//! A real PostgreSQL server for tests: `initdb` into a temporary directory, `pg_ctl start` on
//! a loopback port, stopped by its PID when dropped.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<v>/bin`);
//! `scripts/test.sh` installs it. A missing PostgreSQL is a test failure, never a skip.
//! `initdb` refuses to run as root: as root, the data directory belongs to the `postgres`
//! user and every server command runs through `runuser -u postgres`.
//!
//! [`shared_url`] hands out a database on the server `scripts/test.sh` started for the whole
//! run (`SLUICE_TEST_PG_URL`), or `None` when there is none, so the caller starts its own.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the newest installed version.
pub fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             `apt-get install postgresql` (scripts/test.sh does)"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `bin/<tool> args…`, as the `postgres` user when we are root.
fn pg_command(tool: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One PostgreSQL server in a temporary directory. Trust authentication on loopback, user
/// `sluice`, database `sluice`.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    pid: Option<i32>,
    extra_opts: String,
}

impl PgServer {
    /// Initialises and starts a server; `name` keeps directories of parallel tests apart.
    pub fn start(name: &str) -> PgServer {
        PgServer::start_with(name, &[], "")
    }

    /// A server with TLS on: `cert` and `key` (PEM) as its certificate and key.
    pub fn start_tls(name: &str, cert: &str, key: &str) -> PgServer {
        PgServer::start_with(
            name,
            &[("server.crt", cert), ("server.key", key)],
            "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key",
        )
    }

    /// [`start`](Self::start) with `files` written into the data directory (mode 0600, owned
    /// by the server's user) and `opts` added to the server's options.
    pub fn start_with(name: &str, files: &[(&str, &str)], opts: &str) -> PgServer {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let pw = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8_lossy(&pw.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
        }
        let status = pg_command(&bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "sluice", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        for (file, contents) in files {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("data").join(file);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if is_root() {
                let pw = Command::new("id")
                    .args(["-u", "postgres"])
                    .output()
                    .unwrap();
                let uid: u32 = String::from_utf8_lossy(&pw.stdout).trim().parse().unwrap();
                std::os::unix::fs::chown(&path, Some(uid), None).unwrap();
            }
        }
        let mut server = PgServer {
            dir,
            bin,
            port: free_port(),
            pid: None,
            extra_opts: opts.to_string(),
        };
        server.resume();
        server.create_db("sluice");
        server
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.pid.is_none(), "already running");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 {}",
            self.port,
            self.dir.display(),
            self.extra_opts
        );
        let out = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        self.pid = Some(pidfile.lines().next().unwrap().trim().parse().unwrap());
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits until it is gone.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        // SAFETY: kill with a PID we started and a valid signal number has no memory effects.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A URL for database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://sluice@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) {
        create_db(&self.url("postgres"), db);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates database `db` through the maintenance database at `admin_url`.
pub fn create_db(admin_url: &str, db: &str) {
    let mut c = postgres::Client::connect(admin_url, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .unwrap();
}

/// Drops database `db` (disconnecting whoever still uses it).
pub fn drop_db(admin_url: &str, db: &str) {
    if let Ok(mut c) = postgres::Client::connect(admin_url, postgres::NoTls) {
        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
    }
}

/// The server `scripts/test.sh` started for the whole run: the URL of its maintenance
/// database, from `SLUICE_TEST_PG_URL`.
pub fn shared_admin_url() -> Option<String> {
    std::env::var("SLUICE_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").unwrap() + 2 => {
            let tail = url[i + 1..].find('?').map_or("", |q| &url[i + 1 + q..]);
            format!("{}/{db}{tail}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

/// A fresh database for one test: on the run's shared server when there is one, else on a
/// server of its own (kept in the returned guard).
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
    _own: Option<PgServer>,
}

impl PgDatabase {
    /// A new empty database named after `case`.
    pub fn new(case: &str) -> PgDatabase {
        let name = format!("t_{}_{case}", std::process::id()).to_ascii_lowercase();
        let (admin_url, own) = match shared_admin_url() {
            Some(u) => (u, None),
            None => {
                let s = PgServer::start(case);
                (s.url("postgres"), Some(s))
            }
        };
        create_db(&admin_url, &name);
        PgDatabase {
            url: with_db(&admin_url, &name),
            admin_url,
            name,
            _own: own,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        drop_db(&self.admin_url, &self.name);
    }
}
