//! `sluice doctor`: checks the host Sluice runs on and says what is fine and what to change,
//! with the exact command.
//!
//! Every check reads only what an unprivileged process can read (`/proc`, `/sys`, resource
//! limits) and changes nothing. Each check is a pure function of the values read, so the
//! verdicts are unit-tested without a particular host; [`run`] gathers the values and calls
//! them. A `Fail` means Sluice cannot run as configured; a `Warn` costs throughput or p99.
//! The persistent form of every fix is in `tuning/` (see `tuning/README.md`). The checks live
//! by subject: the process's resources, the network stack, the CPUs.

use std::fmt::Write as _;

use sluice_core::config::{Config, Driver, Workers};

mod cpu;
mod network;
mod resources;

use cpu::{check_clocksource, check_governor, check_thp, check_workers};
use network::{
    check_listen_port, check_migrate_req, check_netdev_backlog, check_port_range, check_somaxconn,
    check_tw_reuse,
};
pub use resources::parse_kernel_version;
use resources::{check_io_uring, check_memlock, check_nofile, required_fds};

/// Open-files limit the tuning guide recommends (and `tuning/sluice.service` sets).
pub const RECOMMENDED_NOFILE: u64 = 1_048_576;
/// The listen backlog Sluice asks for; the kernel caps it at `net.core.somaxconn`.
pub const MIN_SOMAXCONN: u64 = 4096;
/// Ephemeral ports for upstream connections: the kernel default (32768-60999) is about 28k.
pub const MIN_PORT_RANGE: u64 = 28_000;
/// Packets queued per CPU between the NIC and the stack before drops.
pub const RECOMMENDED_NETDEV_BACKLOG: u64 = 16_384;
/// Locked memory one worker's io_uring needs on kernels before 5.12 (4096 SQ entries of 64 B,
/// 8192 CQ entries of 16 B, the index array, rounded up).
pub const MEMLOCK_PER_WORKER: u64 = 512 * 1024;
/// Connections per worker when there is no config (the config's default).
const DEFAULT_CONNECTIONS_PER_WORKER: u64 = 16_384;

/// Names of the checks every run reports, in order (a `listen port` check is added when the
/// config listens on a privileged port).
pub const CHECK_NAMES: [&str; 12] = [
    "io_uring",
    "open files",
    "memlock",
    "somaxconn",
    "local port range",
    "tcp_tw_reuse",
    "netdev_max_backlog",
    "tcp_migrate_req",
    "workers",
    "clock source",
    "transparent hugepages",
    "cpu governor",
];

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Fine as it is.
    Ok,
    /// Works, but costs throughput or tail latency; the fix says what to change.
    Warn,
    /// Sluice cannot run as configured.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "[ ok ]",
            Status::Warn => "[warn]",
            Status::Fail => "[FAIL]",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short stable name (see [`CHECK_NAMES`]).
    pub name: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found, and why it matters.
    pub detail: String,
    /// The exact command(s) to fix it, one per line; `None` when fine.
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix,
        }
    }
}

/// True when any check failed (`sluice doctor` then exits 1).
pub fn has_failure(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

/// Runs every check against this host, for `config` (or the defaults: workers and driver
/// auto). `SLUICE_DRIVER` overrides the config's driver, as it does for `sluice serve`.
pub fn run(config: Option<&Config>) -> Vec<Check> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers_setting = config.map_or(Workers::Auto, |c| c.server.workers);
    let workers = match workers_setting {
        Workers::Auto => cores,
        Workers::Count(n) => n,
    };
    let driver = effective_driver(config.map_or(Driver::Auto, |c| c.server.driver));
    let per_worker = config.map_or(DEFAULT_CONNECTIONS_PER_WORKER, |c| {
        u64::try_from(c.server.max_connections_per_worker).unwrap_or(u64::MAX)
    });
    let kernel_release = read_trim("/proc/sys/kernel/osrelease");
    let kernel = kernel_release.as_deref().and_then(parse_kernel_version);
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE).ok();
    let memlock = rlimit::getrlimit(rlimit::Resource::MEMLOCK).ok();
    let status = read_trim("/proc/self/status");
    let seccomp = status
        .as_deref()
        .and_then(|s| status_field(s, "Seccomp:"))
        .and_then(|v| v.parse().ok());

    let mut checks = vec![
        check_io_uring(
            monoio::utils::detect_uring(),
            read_u64("/proc/sys/kernel/io_uring_disabled"),
            seccomp,
            std::env::var("MONOIO_FORCE_LEGACY_DRIVER")
                .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")),
            driver,
        ),
        check_nofile(
            nofile,
            read_u64("/proc/sys/fs/nr_open"),
            required_fds(workers, per_worker),
        ),
        check_memlock(
            kernel_release.as_deref(),
            kernel,
            memlock,
            workers,
            driver != Driver::Epoll,
        ),
        check_somaxconn(read_u64("/proc/sys/net/core/somaxconn")),
        check_port_range(read_trim("/proc/sys/net/ipv4/ip_local_port_range").as_deref()),
        check_tw_reuse(read_u64("/proc/sys/net/ipv4/tcp_tw_reuse")),
        check_netdev_backlog(read_u64("/proc/sys/net/core/netdev_max_backlog")),
        check_migrate_req(read_u64("/proc/sys/net/ipv4/tcp_migrate_req"), kernel),
        check_workers(
            cores,
            workers_setting,
            sluice_core::config::pinning(
                config.is_none_or(|c| c.server.pin_workers),
                core_affinity::get_core_ids().map_or(0, |c| c.len()),
                workers,
            ) == sluice_core::config::Pinning::Pin,
            read_trim("/sys/devices/system/cpu/isolated").as_deref(),
        ),
        check_clocksource(
            read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource")
                .as_deref(),
            read_trim("/sys/devices/system/clocksource/clocksource0/available_clocksource")
                .as_deref(),
        ),
        check_thp(
            read_trim("/sys/kernel/mm/transparent_hugepage/enabled").as_deref(),
            read_trim("/sys/kernel/mm/transparent_hugepage/defrag").as_deref(),
        ),
        check_governor(
            read_trim("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").as_deref(),
        ),
    ];
    if let Some(cfg) = config {
        let port = cfg.server.listen.port();
        if port != 0 && port < 1024 {
            let cap_eff = status
                .as_deref()
                .and_then(|s| status_field(s, "CapEff:"))
                .and_then(|v| u64::from_str_radix(v, 16).ok());
            checks.push(check_listen_port(
                port,
                cap_eff,
                read_u64("/proc/sys/net/ipv4/ip_unprivileged_port_start"),
            ));
        }
    }
    checks
}

/// Renders the checks as the text `sluice doctor` prints: one line per check, its fix
/// indented below, and a summary.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    let (mut ok, mut warn, mut fail) = (0, 0, 0);
    for c in checks {
        match c.status {
            Status::Ok => ok += 1,
            Status::Warn => warn += 1,
            Status::Fail => fail += 1,
        }
        let _ = writeln!(out, "{} {:<22} {}", c.status.label(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            for (i, line) in fix.lines().enumerate() {
                let lead = if i == 0 { "fix:" } else { "    " };
                let _ = writeln!(out, "{:7}{lead} {line}", "");
            }
        }
    }
    let _ = writeln!(out, "\n{ok} ok, {warn} warn, {fail} fail");
    if warn + fail > 0 {
        let _ = writeln!(
            out,
            "persistent settings: tuning/sysctl.d/90-sluice.conf, tuning/limits.d/90-sluice.conf \
             and tuning/sluice.service (see tuning/README.md)"
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading the host
// ---------------------------------------------------------------------------------------------

/// `SLUICE_DRIVER` overrides the config's driver (as in `listen/server/`).
fn effective_driver(cfg: Driver) -> Driver {
    match std::env::var("SLUICE_DRIVER").as_deref() {
        Ok("epoll") | Ok("legacy") => Driver::Epoll,
        Ok("io_uring") | Ok("iouring") => Driver::IoUring,
        Ok("auto") => Driver::Auto,
        _ => cfg,
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_u64(path: &str) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

/// The value of `field` (e.g. `Seccomp:`) in `/proc/self/status`.
fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_every_check_and_render_shows_fixes() {
        let checks = run(None);
        let names: Vec<_> = checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECK_NAMES.to_vec());
        let text = render(&[
            Check::ok("somaxconn", "fine"),
            Check::warn(
                "tcp_tw_reuse",
                "2",
                Some("sysctl -w a=1\n# or b".to_string()),
            ),
            Check::fail("io_uring", "no", None),
        ]);
        assert!(text.contains("[ ok ] somaxconn"));
        assert!(text.contains("       fix: sysctl -w a=1\n            # or b\n"));
        assert!(text.contains("1 ok, 1 warn, 1 fail"));
        assert!(has_failure(&[Check::fail("x", "", None)]));
        assert!(!has_failure(&[Check::warn("x", "", None)]));
    }
}
