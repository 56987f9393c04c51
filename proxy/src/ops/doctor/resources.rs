//! Checks of the process's resources: the io_uring driver, open files, locked memory (and
//! the kernel version it depends on).

use std::fmt::Write as _;

use sluice_core::config::Driver;

use super::{Check, MEMLOCK_PER_WORKER, RECOMMENDED_NOFILE};

pub(super) fn check_io_uring(
    detected: bool,
    disabled_sysctl: Option<u64>,
    seccomp: Option<u64>,
    forced_legacy: bool,
    driver: Driver,
) -> Check {
    const NAME: &str = "io_uring";
    if detected {
        let mut detail = String::from("available");
        if let Some(v) = disabled_sysctl {
            let _ = write!(detail, " (kernel.io_uring_disabled = {v})");
        }
        detail.push_str(match driver {
            Driver::Epoll => "; the config forces epoll (server.driver = \"epoll\")",
            _ => "; workers run io_uring",
        });
        return Check::ok(NAME, detail);
    }
    let (reason, fix) = if forced_legacy {
        (
            "MONOIO_FORCE_LEGACY_DRIVER is set in the environment".to_string(),
            "unset MONOIO_FORCE_LEGACY_DRIVER".to_string(),
        )
    } else if disabled_sysctl == Some(2) {
        (
            "disabled by the kernel (kernel.io_uring_disabled = 2)".to_string(),
            "sysctl -w kernel.io_uring_disabled=0".to_string(),
        )
    } else if disabled_sysctl == Some(1) {
        (
            "restricted to the group in kernel.io_uring_group (kernel.io_uring_disabled = 1) \
             and this process is not in it"
                .to_string(),
            "sysctl -w kernel.io_uring_disabled=0\n\
             # or: sysctl -w kernel.io_uring_group=<gid of the sluice user's group>"
                .to_string(),
        )
    } else if seccomp == Some(2) {
        (
            "blocked by a seccomp filter (Seccomp: 2 in /proc/self/status): container \
             runtimes' default profiles (Docker, containerd, Podman) refuse io_uring_setup"
                .to_string(),
            "docker run --security-opt seccomp=unconfined ...   # or a profile that allows \
             io_uring_setup, io_uring_enter, io_uring_register\n\
             # Kubernetes: securityContext.seccompProfile.type: Unconfined (or Localhost with that profile)"
                .to_string(),
        )
    } else {
        (
            "not usable: the kernel is older than 5.6 or lacks an operation Sluice uses, or a \
             security module (seccomp in a container, SELinux) refuses it"
                .to_string(),
            "uname -r   # io_uring needs Linux 5.6+; 5.19+ recommended".to_string(),
        )
    };
    match driver {
        Driver::IoUring => Check::fail(
            NAME,
            format!("{reason}; the config requires io_uring (server.driver = \"io_uring\")"),
            Some(format!(
                "{fix}\n# or set server.driver = \"auto\" to fall back to epoll"
            )),
        ),
        Driver::Epoll => Check::ok(NAME, format!("{reason}; not needed: the config uses epoll")),
        Driver::Auto => Check::warn(
            NAME,
            format!(
                "{reason}; workers fall back to epoll (works, with more syscalls per request \
                 and a higher p99 under load)"
            ),
            Some(fix),
        ),
    }
}

/// Descriptors `workers` workers need at most: a client and an upstream connection for each
/// allowed connection, plus listeners, log files and slack.
pub(super) fn required_fds(workers: usize, per_worker: u64) -> u64 {
    let workers = u64::try_from(workers).unwrap_or(u64::MAX);
    workers
        .saturating_mul(per_worker)
        .saturating_mul(2)
        .saturating_add(1024)
}

fn limit_text(v: u64) -> String {
    if v == rlimit::INFINITY {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

pub(super) fn check_nofile(
    limits: Option<(u64, u64)>,
    nr_open: Option<u64>,
    required: u64,
) -> Check {
    const NAME: &str = "open files";
    let Some((soft, hard)) = limits else {
        return Check::warn(NAME, "cannot read RLIMIT_NOFILE", None);
    };
    // Sluice raises its soft limit to the hard limit at start-up; the hard limit counts.
    let usable = match nr_open {
        Some(n) => hard.min(n),
        None => hard,
    };
    let mut detail = format!(
        "soft {}, hard {} (Sluice raises soft to hard at start-up); {required} needed at the connection limit (client + upstream per connection)",
        limit_text(soft),
        limit_text(hard)
    );
    if usable >= required.max(RECOMMENDED_NOFILE) {
        return Check::ok(NAME, detail);
    }
    let mut fix = format!(
        "ulimit -Hn {RECOMMENDED_NOFILE} && ulimit -n {RECOMMENDED_NOFILE}   # as root, in the shell that starts sluice\n\
         # under systemd: LimitNOFILE={RECOMMENDED_NOFILE} (tuning/sluice.service)\n\
         # for login sessions: cp tuning/limits.d/90-sluice.conf /etc/security/limits.d/"
    );
    if nr_open.is_some_and(|n| n < RECOMMENDED_NOFILE) {
        fix = format!("sysctl -w fs.nr_open={RECOMMENDED_NOFILE}\n{fix}");
    }
    if usable < 4096 {
        let _ = write!(detail, "; too low to serve");
        return Check::fail(NAME, detail, Some(fix));
    }
    if usable < required {
        let _ = write!(
            detail,
            "; past {usable} connections accept fails with EMFILE (recommended {RECOMMENDED_NOFILE})"
        );
    } else {
        let _ = write!(detail, "; recommended {RECOMMENDED_NOFILE}");
    }
    Check::warn(NAME, detail, Some(fix))
}

/// `major.minor` from a kernel release such as `6.18.44-fc-v669`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub(super) fn check_memlock(
    release: Option<&str>,
    kernel: Option<(u32, u32)>,
    limits: Option<(u64, u64)>,
    workers: usize,
    uses_uring: bool,
) -> Check {
    const NAME: &str = "memlock";
    let Some((soft, hard)) = limits else {
        return Check::warn(NAME, "cannot read RLIMIT_MEMLOCK", None);
    };
    let limits = format!("soft {}, hard {}", limit_text(soft), limit_text(hard));
    let release = release.unwrap_or("unknown");
    match kernel {
        Some(k) if k >= (5, 12) => Check::ok(
            NAME,
            format!(
                "{limits}; does not matter on kernel {release}: since 5.12 io_uring memory is \
                 charged to the memory cgroup, not RLIMIT_MEMLOCK"
            ),
        ),
        _ if !uses_uring => Check::ok(NAME, format!("{limits}; not used: the config runs epoll")),
        _ => {
            let workers = u64::try_from(workers).unwrap_or(u64::MAX);
            let need = workers.saturating_mul(MEMLOCK_PER_WORKER);
            let detail = format!(
                "{limits}; on kernel {release} (before 5.12) each worker's io_uring locks about \
                 {} KiB, {} KiB for {workers} workers",
                MEMLOCK_PER_WORKER / 1024,
                need / 1024
            );
            if soft >= need {
                Check::ok(NAME, detail)
            } else {
                Check::warn(
                    NAME,
                    format!("{detail}: ring set-up fails and workers fall back to epoll"),
                    Some(
                        "ulimit -l unlimited   # as root, in the shell that starts sluice\n\
                         # under systemd: LimitMEMLOCK=infinity (tuning/sluice.service)"
                            .to_string(),
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::doctor::Status;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_version("5.12"), Some((5, 12)));
        assert_eq!(parse_kernel_version("linux"), None);
    }

    #[test]
    fn io_uring_verdicts() {
        assert_eq!(
            check_io_uring(true, Some(0), Some(0), false, Driver::Auto).status,
            Status::Ok
        );
        let seccomp = check_io_uring(false, Some(0), Some(2), false, Driver::Auto);
        assert_eq!(seccomp.status, Status::Warn);
        assert!(seccomp.detail.contains("seccomp"));
        assert!(seccomp
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("seccomp=unconfined"));
        let disabled = check_io_uring(false, Some(2), Some(0), false, Driver::IoUring);
        assert_eq!(disabled.status, Status::Fail);
        assert!(disabled
            .fix
            .as_deref()
            .unwrap_or("")
            .starts_with("sysctl -w kernel.io_uring_disabled=0"));
        assert_eq!(
            check_io_uring(false, None, None, false, Driver::Epoll).status,
            Status::Ok
        );
    }

    #[test]
    fn nofile_verdicts() {
        let need = required_fds(2, 16_384);
        assert_eq!(need, 66_560);
        let ok = check_nofile(Some((1024, 1_048_576)), Some(1_048_576), need);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        let low = check_nofile(Some((20_000, 20_000)), Some(1_048_576), need);
        assert_eq!(low.status, Status::Warn);
        assert!(low.detail.contains("EMFILE"));
        assert!(low
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("ulimit -n 1048576"));
        let tiny = check_nofile(Some((1024, 1024)), Some(1024), need);
        assert_eq!(tiny.status, Status::Fail);
        assert!(tiny
            .fix
            .as_deref()
            .unwrap_or("")
            .starts_with("sysctl -w fs.nr_open=1048576"));
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let new = check_memlock(Some("6.1.0"), Some((6, 1)), Some((65_536, 65_536)), 8, true);
        assert_eq!(new.status, Status::Ok);
        assert!(new.detail.contains("does not matter"));
        let old = check_memlock(Some("5.4.0"), Some((5, 4)), Some((65_536, 65_536)), 8, true);
        assert_eq!(old.status, Status::Warn);
        assert!(old
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("LimitMEMLOCK=infinity"));
        let unlimited = check_memlock(
            Some("5.4.0"),
            Some((5, 4)),
            Some((rlimit::INFINITY, rlimit::INFINITY)),
            8,
            true,
        );
        assert_eq!(unlimited.status, Status::Ok);
        assert!(unlimited.detail.contains("unlimited"));
    }
}
