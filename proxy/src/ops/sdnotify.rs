//! A tiny systemd client: readiness and watchdog notifications (`sd_notify(3)`) over the
//! `NOTIFY_SOCKET` datagram socket, and socket activation (`sd_listen_fds(3)`).
//!
//! Everything here is a no-op outside systemd: [`notify`] returns `Ok(false)` when
//! `NOTIFY_SOCKET` is unset, [`watchdog_interval`] returns `None` without `WATCHDOG_USEC`,
//! and [`listen_fds`] returns no listener without `LISTEN_FDS`.
//!
//! The start-up sequence under `Type=notify` (see `tuning/sluice.service`):
//!
//! ```text
//! bind (or take listen_fds) ─► start workers ─► every worker accepting ─► ready()
//!   └─ watchdog thread: every watchdog_interval(): watchdog() while the workers are healthy
//! SIGHUP ─► reloading() ─► reload ─► ready()          SIGTERM ─► stopping() ─► drain ─► exit
//! ```

use std::ffi::OsStr;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The first descriptor systemd hands over under socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to the service manager.
///
/// Returns `Ok(false)` when not running under systemd (`NOTIFY_SOCKET` unset or empty),
/// `Ok(true)` once the datagram was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket at `socket`: a path, or an abstract socket
/// name when it starts with `@`.
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = socket_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

/// Parses a `NOTIFY_SOCKET` value into a socket address.
fn socket_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET must be an absolute path or start with '@'",
        )),
    }
}

/// `READY=1`: start-up finished (send it once every worker listens) or a reload finished.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `RELOADING=1` with the `MONOTONIC_USEC` timestamp systemd asks for; send [`ready`] when
/// the reload is done (whether the new config was taken or refused).
pub fn reloading() -> io::Result<bool> {
    notify(&reloading_message(monotonic_usec()))
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// `STOPPING=1`: shutdown (the drain) has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`] while healthy.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// `STATUS=...`: a one-line status shown by `systemctl status`.
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&status_message(msg))
}

fn status_message(msg: &str) -> String {
    let one_line: String = msg
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

/// `EXTEND_TIMEOUT_USEC=...`: asks for more time to start or stop (e.g. a long drain).
pub fn extend_timeout(by: Duration) -> io::Result<bool> {
    notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
}

/// How often to send [`watchdog`]: half of `WATCHDOG_USEC`, as systemd recommends, when the
/// watchdog is on and meant for this process (`WATCHDOG_PID` unset or ours); else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Socket activation: takes the TCP listening sockets systemd handed in (`LISTEN_PID` equal
/// to our pid, `LISTEN_FDS` = count, descriptors from 3 on). Descriptors that are not
/// listening TCP sockets are closed and skipped with a warning. The listeners are returned
/// non-blocking and close-on-exec. Empty when not socket-activated.
///
/// Call it once, early: the descriptors are owned by the returned listeners afterwards.
pub fn listen_fds() -> Vec<TcpListener> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let count = listen_fds_count(pid.as_deref(), fds.as_deref(), std::process::id());
    take_listeners(LISTEN_FDS_START, count)
}

/// How many descriptors were handed to us, from `LISTEN_PID` and `LISTEN_FDS`.
fn listen_fds_count(pid: Option<&str>, fds: Option<&str>, my_pid: u32) -> usize {
    let for_us = pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == my_pid);
    if !for_us {
        return 0;
    }
    fds.and_then(|n| n.trim().parse::<usize>().ok())
        // Sanity bound: systemd passes at most a few hundred.
        .map_or(0, |n| n.min(4096))
}

/// Takes ownership of descriptors `first .. first + count` and keeps the TCP listeners.
///
/// The caller hands these descriptors over: they were given to this process for it to own
/// (socket activation) and nothing else in the process uses them.
fn take_listeners(first: RawFd, count: usize) -> Vec<TcpListener> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let Some(fd) = RawFd::try_from(i).ok().and_then(|i| first.checked_add(i)) else {
            break;
        };
        // SAFETY: fcntl(F_GETFD) only queries the descriptor table; on an fd that is not
        // open it fails with EBADF and touches nothing.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            tracing::warn!(fd, "socket activation: descriptor is not open; skipped");
            continue;
        }
        // SAFETY: the descriptor is open (checked above) and was handed to this process to
        // own: systemd passes LISTEN_FDS descriptors from 3 on for LISTEN_PID (our pid, checked
        // by the caller), and nothing else in Sluice opens or uses them. `listen_fds` is meant
        // to be called once, so ownership is taken exactly once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: F_SETFD on a descriptor we now own; sets close-on-exec like sd_listen_fds.
        let _ = unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        match is_tcp_listener(&owned) {
            Ok(true) => {
                let listener = TcpListener::from(owned);
                if let Err(e) = listener.set_nonblocking(true) {
                    tracing::warn!(fd, error = %e, "socket activation: cannot set non-blocking; skipped");
                    continue;
                }
                out.push(listener);
            }
            Ok(false) => {
                tracing::warn!(fd, "socket activation: not a listening TCP socket; closed")
            }
            Err(e) => tracing::warn!(fd, error = %e, "socket activation: cannot inspect; closed"),
        }
    }
    out
}

fn is_tcp_listener(fd: &OwnedFd) -> io::Result<bool> {
    use socket2::{Domain, SockRef, Type};
    let sock = SockRef::from(fd);
    let domain = sock.domain()?;
    Ok((domain == Domain::IPV4 || domain == Domain::IPV6)
        && sock.r#type()? == Type::STREAM
        && sock.is_listener()?)
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::process::CommandExt;
    use std::path::PathBuf;
    use std::process::Command;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "sluice-sdnotify-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_to_a_path_socket() {
        let path = temp_path("path");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(recv(&rx), "READY=1");
        notify_to(path.as_os_str(), &status_message("draining\n3 in flight")).unwrap();
        assert_eq!(recv(&rx), "STATUS=draining 3 in flight");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn notify_to_an_abstract_socket() {
        let name = format!("sluice-test-{}-{}", std::process::id(), fastrand::u64(..));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
    }

    #[test]
    fn notify_to_rejects_relative_or_empty() {
        assert!(notify_to(OsStr::new("relative/sock"), "READY=1").is_err());
        assert!(notify_to(OsStr::new(""), "READY=1").is_err());
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
        assert_eq!(
            reloading_message(1_234_567),
            "RELOADING=1\nMONOTONIC_USEC=1234567"
        );
    }

    #[test]
    fn watchdog_interval_is_half_the_period_and_checks_the_pid() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 42), half);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            half
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("43"), 42),
            None
        );
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval_from(None, Some("42"), 42), None);
    }

    #[test]
    fn listen_fds_count_needs_our_pid() {
        assert_eq!(listen_fds_count(Some("7"), Some("2"), 7), 2);
        assert_eq!(listen_fds_count(Some("8"), Some("2"), 7), 0);
        assert_eq!(listen_fds_count(None, Some("2"), 7), 0);
        assert_eq!(listen_fds_count(Some("7"), None, 7), 0);
        assert_eq!(listen_fds_count(Some("7"), Some("x"), 7), 0);
    }

    /// In-process: hand a dup'd listener's descriptor over and take it back as a listener;
    /// a non-listening socket is refused (and closed).
    #[test]
    fn take_listeners_owns_a_handed_over_descriptor() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        let handed = original.try_clone().unwrap().into_raw_fd();
        let taken = take_listeners(handed, 1);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].local_addr().unwrap(), addr);
        // SAFETY (test): F_GETFD only reads the descriptor flags.
        let flags = unsafe { libc::fcntl(taken[0].as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"hi").unwrap();
        taken[0].set_nonblocking(false).unwrap();
        let (mut conn, _) = taken[0].accept().unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");

        let not_listening = UnixDatagram::unbound().unwrap().into_raw_fd();
        assert!(take_listeners(not_listening, 1).is_empty());
    }

    /// The child half of `env_driven_functions_in_a_child_process`: does nothing unless
    /// started by it.
    #[test]
    fn child_reads_systemd_environment() {
        let Ok(expect) = std::env::var("SLUICE_SDNOTIFY_CHILD") else {
            return;
        };
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(1)));
        assert!(ready().unwrap());
        assert!(reloading().unwrap());
        assert!(status("child").unwrap());
        let listeners = listen_fds();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].local_addr().unwrap().to_string(), expect);
        listeners[0].set_nonblocking(false).unwrap();
        let (mut conn, _) = listeners[0].accept().unwrap();
        conn.write_all(b"accepted").unwrap();
    }

    /// Runs this test binary again as a child with `NOTIFY_SOCKET`, `WATCHDOG_*` and
    /// `LISTEN_*` set, a real listener at fd 3 and `LISTEN_PID` its own pid, as systemd does.
    #[test]
    fn env_driven_functions_in_a_child_process() {
        if !std::path::Path::new("/bin/sh").exists() {
            eprintln!("skipped: no /bin/sh");
            return;
        }
        let sock_path = temp_path("child");
        let rx = UnixDatagram::bind(&sock_path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Queued in the backlog before the child starts; the child accepts it.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let fd = listener.as_raw_fd();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"LISTEN_PID=$$ WATCHDOG_PID=$$ exec "$0" "$@""#)
            .arg(&exe)
            .args([
                "--exact",
                "ops::sdnotify::tests::child_reads_systemd_environment",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SLUICE_SDNOTIFY_CHILD", addr.to_string())
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "2000000")
            .env("LISTEN_FDS", "1");
        // SAFETY (test): dup2 and fcntl are async-signal-safe; they put the listener at fd 3 without
        // close-on-exec in the child only, where systemd would put it.
        unsafe {
            cmd.pre_exec(move || {
                if fd == LISTEN_FDS_START {
                    // dup2 onto itself keeps close-on-exec: clear the flag instead.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, LISTEN_FDS_START) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(recv(&rx), "READY=1");
        let reloading = recv(&rx);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        assert_eq!(recv(&rx), "STATUS=child");
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "accepted");
        let _ = std::fs::remove_file(&sock_path);
    }
}
