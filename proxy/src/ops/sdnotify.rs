//! The systemd side of the process: readiness and watchdog notifications (`sd_notify(3)`)
//! over the `NOTIFY_SOCKET` datagram socket, and socket activation (`sd_listen_fds(3)`), on
//! the `sd-notify` crate (the protocol and the environment variables are its job; owning the
//! handed-over descriptors as listeners is ours).
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

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub use sd_notify::NotifyState;

/// The first descriptor systemd hands over under socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Sends `states` to the service manager (the protocol is the `sd-notify` crate's).
///
/// Returns `Ok(false)` when not running under systemd (`NOTIFY_SOCKET` unset or empty),
/// `Ok(true)` once the datagram was sent.
pub fn notify(states: &[NotifyState]) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => sd_notify::notify(states).map(|()| true),
        _ => Ok(false),
    }
}

/// `READY=1`: start-up finished (send it once every worker listens) or a reload finished.
pub fn ready() -> io::Result<bool> {
    notify(&[NotifyState::Ready])
}

/// `READY=1` with a `STATUS=` line.
pub fn ready_with_status(msg: &str) -> io::Result<bool> {
    let msg = one_line(msg);
    notify(&[NotifyState::Ready, NotifyState::Status(&msg)])
}

/// `RELOADING=1` with the `MONOTONIC_USEC` timestamp systemd asks for; send [`ready`] when
/// the reload is done (whether the new config was taken or refused).
pub fn reloading() -> io::Result<bool> {
    notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?])
}

/// `STOPPING=1`: shutdown (the drain) has begun.
pub fn stopping() -> io::Result<bool> {
    notify(&[NotifyState::Stopping])
}

/// `WATCHDOG=1`: the keep-alive ping; send it every [`watchdog_interval`] while healthy.
pub fn watchdog() -> io::Result<bool> {
    notify(&[NotifyState::Watchdog])
}

/// `STATUS=...`: a one-line status shown by `systemctl status`.
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&[NotifyState::Status(&one_line(msg))])
}

fn one_line(msg: &str) -> String {
    msg.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// `EXTEND_TIMEOUT_USEC=...`: asks for more time to start or stop (e.g. a long drain).
pub fn extend_timeout(by: Duration) -> io::Result<bool> {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    notify(&[NotifyState::ExtendTimeoutUsec(usec)])
}

/// How often to send [`watchdog`]: half of `WATCHDOG_USEC`, as systemd recommends, when the
/// watchdog is on and meant for this process (`WATCHDOG_PID` unset or ours); else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// Socket activation: takes the TCP listening sockets systemd handed in (`LISTEN_PID` equal
/// to our pid, `LISTEN_FDS` = count, descriptors from 3 on, as `sd-notify` reads them).
/// Descriptors that are not listening TCP sockets are closed and skipped with a warning. The
/// listeners are returned non-blocking and close-on-exec. Empty when not socket-activated.
///
/// Call it once, early: the descriptors are owned by the returned listeners afterwards.
pub fn listen_fds() -> Vec<TcpListener> {
    match sd_notify::listen_fds() {
        // Sanity bound: systemd passes at most a few hundred.
        Ok(fds) => {
            let count = fds.len().min(4096);
            take_listeners(LISTEN_FDS_START, count)
        }
        Err(e) => {
            tracing::warn!(error = %e, "socket activation: bad LISTEN_PID or LISTEN_FDS; ignored");
            Vec::new()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixDatagram;
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

    #[test]
    fn outside_systemd_nothing_is_sent() {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!ready().unwrap());
        }
        assert_eq!(one_line("a\nb\rc"), "a b c");
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
        assert!(status("child\nline").unwrap());
        assert!(ready_with_status("serving").unwrap());
        assert!(watchdog().unwrap());
        assert!(stopping().unwrap());
        assert!(extend_timeout(Duration::from_secs(2)).unwrap());
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
        assert_eq!(recv(&rx), "READY=1\n");
        let reloading = recv(&rx);
        let usec = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|r| r.strip_suffix('\n'))
            .and_then(|n| n.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{reloading}");
        assert_eq!(recv(&rx), "STATUS=child line\n");
        assert_eq!(recv(&rx), "READY=1\nSTATUS=serving\n");
        assert_eq!(recv(&rx), "WATCHDOG=1\n");
        assert_eq!(recv(&rx), "STOPPING=1\n");
        assert_eq!(recv(&rx), "EXTEND_TIMEOUT_USEC=2000000\n");
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "accepted");
        let _ = std::fs::remove_file(&sock_path);
    }
}
