//! `sluice doctor`: checks the host Sluice runs on and says what is fine and what to change,
//! with the exact command.
//!
//! Every check reads only what an unprivileged process can read (`/proc`, `/sys`, resource
//! limits) and changes nothing. Each check is a pure function of the values read, so the
//! verdicts are unit-tested without a particular host; [`run`] gathers the values and calls
//! them. A `Fail` means Sluice cannot run as configured; a `Warn` costs throughput or p99.
//! The persistent form of every fix is in `tuning/` (see `tuning/README.md`).

use std::fmt::Write as _;

use sluice_core::config::{Config, Driver, Workers};

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
// The checks, as pure functions of what was read
// ---------------------------------------------------------------------------------------------

fn check_io_uring(
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
fn required_fds(workers: usize, per_worker: u64) -> u64 {
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

fn check_nofile(limits: Option<(u64, u64)>, nr_open: Option<u64>, required: u64) -> Check {
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

fn check_memlock(
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

fn check_somaxconn(value: Option<u64>) -> Check {
    const NAME: &str = "somaxconn";
    match value {
        None => Check::warn(NAME, "cannot read /proc/sys/net/core/somaxconn", None),
        Some(v) if v >= MIN_SOMAXCONN => Check::ok(
            NAME,
            format!("net.core.somaxconn = {v} (Sluice's accept backlog is {MIN_SOMAXCONN})"),
        ),
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.core.somaxconn = {v} caps each listener's accept backlog below \
                 {MIN_SOMAXCONN}: connection bursts are dropped (SYN retries cost a second)"
            ),
            Some("sysctl -w net.core.somaxconn=65535".to_string()),
        ),
    }
}

/// `(low, high)` from `ip_local_port_range` ("32768\t60999").
fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    let lo = it.next()?.parse().ok()?;
    let hi = it.next()?.parse().ok()?;
    Some((lo, hi))
}

fn check_port_range(text: Option<&str>) -> Check {
    const NAME: &str = "local port range";
    let Some((lo, hi)) = text.and_then(parse_port_range) else {
        return Check::warn(
            NAME,
            "cannot read /proc/sys/net/ipv4/ip_local_port_range",
            None,
        );
    };
    let width = hi.saturating_sub(lo).saturating_add(1);
    let detail = format!("net.ipv4.ip_local_port_range = {lo}-{hi} ({width} ephemeral ports)");
    if width >= MIN_PORT_RANGE {
        Check::ok(NAME, detail)
    } else {
        Check::warn(
            NAME,
            format!(
                "{detail}: fewer than {MIN_PORT_RANGE}; upstream connects fail with \
                 EADDRNOTAVAIL under connection churn"
            ),
            Some("sysctl -w net.ipv4.ip_local_port_range=\"10240 65535\"".to_string()),
        )
    }
}

fn check_tw_reuse(value: Option<u64>) -> Check {
    const NAME: &str = "tcp_tw_reuse";
    let fix = Some("sysctl -w net.ipv4.tcp_tw_reuse=1".to_string());
    match value {
        None => Check::warn(NAME, "cannot read /proc/sys/net/ipv4/tcp_tw_reuse", None),
        Some(1) => Check::ok(
            NAME,
            "net.ipv4.tcp_tw_reuse = 1: new upstream connections may reuse ports in TIME_WAIT",
        ),
        Some(2) => Check::warn(
            NAME,
            "net.ipv4.tcp_tw_reuse = 2 (loopback only, the default): upstream connections to \
             providers cannot reuse ports in TIME_WAIT, so churn can exhaust the port range",
            fix,
        ),
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.ipv4.tcp_tw_reuse = {v}: ports in TIME_WAIT are not reused for upstream \
                 connections"
            ),
            fix,
        ),
    }
}

fn check_migrate_req(value: Option<u64>, kernel: Option<(u32, u32)>) -> Check {
    const NAME: &str = "tcp_migrate_req";
    match value {
        Some(v) if v != 0 => Check::ok(
            NAME,
            format!(
                "net.ipv4.tcp_migrate_req = {v}: connections queued on a closing listener move \
                 to the new process during a zero-downtime restart"
            ),
        ),
        Some(_) => Check::warn(
            NAME,
            "net.ipv4.tcp_migrate_req = 0: during a zero-downtime restart, connections still \
             queued on the old process's listeners are reset when it stops",
            Some("sysctl -w net.ipv4.tcp_migrate_req=1".to_string()),
        ),
        None if kernel.is_some_and(|k| k < (5, 14)) => Check::warn(
            NAME,
            "kernel older than 5.14 has no net.ipv4.tcp_migrate_req: a zero-downtime restart \
             resets connections queued on the old process's listeners",
            None,
        ),
        None => Check::warn(NAME, "cannot read /proc/sys/net/ipv4/tcp_migrate_req", None),
    }
}

fn check_netdev_backlog(value: Option<u64>) -> Check {
    const NAME: &str = "netdev_max_backlog";
    match value {
        None => Check::warn(
            NAME,
            "cannot read /proc/sys/net/core/netdev_max_backlog",
            None,
        ),
        Some(v) if v >= RECOMMENDED_NETDEV_BACKLOG => {
            Check::ok(NAME, format!("net.core.netdev_max_backlog = {v}"))
        }
        Some(v) => Check::warn(
            NAME,
            format!(
                "net.core.netdev_max_backlog = {v}: bursts past {v} queued packets per CPU are \
                 dropped before TCP sees them (recommended {RECOMMENDED_NETDEV_BACKLOG})"
            ),
            Some(format!(
                "sysctl -w net.core.netdev_max_backlog={RECOMMENDED_NETDEV_BACKLOG}"
            )),
        ),
    }
}

fn check_workers(cores: usize, workers: Workers, pinned: bool, isolated: Option<&str>) -> Check {
    const NAME: &str = "workers";
    let isolated = isolated
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("; isolated CPUs: {s}"))
        .unwrap_or_default();
    let pin = if pinned { "pinned" } else { "not pinned" };
    match workers {
        Workers::Auto => Check::ok(
            NAME,
            format!("auto: {cores} workers on {cores} usable CPUs, {pin}{isolated}"),
        ),
        Workers::Count(n) if n <= cores => Check::ok(
            NAME,
            format!(
                "{n} workers on {cores} usable CPUs, {pin}{}{isolated}",
                if n < cores {
                    format!(" ({} left for interrupts and other work)", cores - n)
                } else {
                    String::new()
                }
            ),
        ),
        Workers::Count(n) => Check::warn(
            NAME,
            format!(
                "{n} workers on {cores} usable CPUs, {pin}: workers share cores and wait on each \
                 other, which shows up directly in p99{isolated}"
            ),
            Some(format!(
                "set `workers = \"auto\"` (or at most {cores}) under [server] in the config"
            )),
        ),
    }
}

fn check_clocksource(current: Option<&str>, available: Option<&str>) -> Check {
    const NAME: &str = "clock source";
    let Some(current) = current else {
        return Check::ok(NAME, "not exposed (no /sys/devices/system/clocksource)");
    };
    match current {
        "tsc" | "kvm-clock" | "hyperv_clocksource_tsc_page" | "arch_sys_counter" => Check::ok(
            NAME,
            format!("{current}: timestamps are read in user space (vDSO), a few ns each"),
        ),
        "hpet" | "acpi_pm" | "jiffies" | "pit" => {
            let tsc = available.is_some_and(|a| a.split_whitespace().any(|s| s == "tsc"));
            let fix = if tsc {
                "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource\n\
                 # persistent: add clocksource=tsc tsc=reliable to the kernel command line"
            } else {
                "# TSC not offered: check `grep -o 'constant_tsc\\|nonstop_tsc' /proc/cpuinfo`, \
                 then add clocksource=tsc tsc=reliable to the kernel command line"
            };
            Check::warn(
                NAME,
                format!(
                    "{current}: every clock read is a slow hardware access or syscall \
                     (microseconds), and Sluice reads the clock several times per request"
                ),
                Some(fix.to_string()),
            )
        }
        other => Check::ok(NAME, format!("{other} (not a known slow source)")),
    }
}

/// The bracketed choice in a sysfs setting such as `always [madvise] never`.
fn selected(setting: &str) -> &str {
    setting
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(setting)
}

fn check_thp(enabled: Option<&str>, defrag: Option<&str>) -> Check {
    const NAME: &str = "transparent hugepages";
    let Some(enabled) = enabled.map(selected) else {
        return Check::ok(NAME, "not exposed");
    };
    let defrag = defrag.map(selected).unwrap_or("unknown");
    let note = match (enabled, defrag) {
        (_, "always") => {
            "; defrag = always can stall an allocation in direct compaction (a p99 spike); \
             madvise or defer is safer"
        }
        ("always", _) => "; fine for Sluice (little heap), watch khugepaged CPU on busy hosts",
        _ => "",
    };
    Check::ok(
        NAME,
        format!("enabled = {enabled}, defrag = {defrag} (informational){note}"),
    )
}

fn check_governor(governor: Option<&str>) -> Check {
    const NAME: &str = "cpu governor";
    match governor {
        None => Check::ok(
            NAME,
            "not exposed (no cpufreq driver: a VM, or the frequency is set by firmware)",
        ),
        Some("performance") => Check::ok(NAME, "performance"),
        Some(g) => Check::warn(
            NAME,
            format!(
                "{g}: cores clock down when idle and take time to ramp up, which adds latency \
                 to the first requests after a quiet spell"
            ),
            Some(
                "cpupower frequency-set -g performance   # Debian package linux-cpupower\n\
                 # or: echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
                    .to_string(),
            ),
        ),
    }
}

/// `CAP_NET_BIND_SERVICE` is capability 10.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;

fn check_listen_port(port: u16, cap_eff: Option<u64>, unprivileged_start: Option<u64>) -> Check {
    const NAME: &str = "listen port";
    if cap_eff.is_some_and(|c| c & CAP_NET_BIND_SERVICE != 0) {
        return Check::ok(
            NAME,
            format!("port {port}: this process has CAP_NET_BIND_SERVICE"),
        );
    }
    if unprivileged_start.is_some_and(|s| u64::from(port) >= s) {
        return Check::ok(
            NAME,
            format!("port {port}: allowed by net.ipv4.ip_unprivileged_port_start"),
        );
    }
    Check::warn(
        NAME,
        format!(
            "port {port} needs CAP_NET_BIND_SERVICE, which this process lacks (the systemd unit \
             grants it; a shell may not)"
        ),
        Some(
            "setcap cap_net_bind_service=+ep /usr/local/bin/sluice\n\
             # under systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE (tuning/sluice.service)"
                .to_string(),
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Reading the host
// ---------------------------------------------------------------------------------------------

/// `SLUICE_DRIVER` overrides the config's driver (as in `server.rs`).
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

    #[test]
    fn migrate_req_verdicts() {
        assert_eq!(check_migrate_req(Some(1), Some((6, 1))).status, Status::Ok);
        let off = check_migrate_req(Some(0), Some((6, 1)));
        assert_eq!(off.status, Status::Warn);
        assert_eq!(
            off.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_migrate_req=1")
        );
        let old = check_migrate_req(None, Some((5, 4)));
        assert_eq!(old.status, Status::Warn);
        assert!(old.detail.contains("5.14"));
    }

    #[test]
    fn sysctl_verdicts() {
        assert_eq!(check_somaxconn(Some(4096)).status, Status::Ok);
        let low = check_somaxconn(Some(128));
        assert_eq!(low.status, Status::Warn);
        assert_eq!(
            low.fix.as_deref(),
            Some("sysctl -w net.core.somaxconn=65535")
        );
        assert_eq!(check_port_range(Some("32768\t60999")).status, Status::Ok);
        assert_eq!(check_port_range(Some("50000 60000")).status, Status::Warn);
        assert_eq!(check_port_range(Some("garbage")).status, Status::Warn);
        assert_eq!(check_tw_reuse(Some(1)).status, Status::Ok);
        assert_eq!(check_tw_reuse(Some(2)).status, Status::Warn);
        assert_eq!(check_netdev_backlog(Some(1000)).status, Status::Warn);
        assert_eq!(check_netdev_backlog(Some(16_384)).status, Status::Ok);
    }

    #[test]
    fn workers_versus_cores() {
        assert_eq!(
            check_workers(4, Workers::Auto, true, None).status,
            Status::Ok
        );
        assert_eq!(
            check_workers(4, Workers::Count(2), true, Some("")).status,
            Status::Ok
        );
        let over = check_workers(2, Workers::Count(8), true, Some("1"));
        assert_eq!(over.status, Status::Warn);
        assert!(over.detail.contains("isolated CPUs: 1"));
    }

    #[test]
    fn clock_thp_governor_and_port() {
        assert_eq!(check_clocksource(Some("tsc"), None).status, Status::Ok);
        let hpet = check_clocksource(Some("hpet"), Some("tsc hpet acpi_pm"));
        assert_eq!(hpet.status, Status::Warn);
        assert!(hpet.fix.as_deref().unwrap_or("").starts_with("echo tsc >"));
        let thp = check_thp(
            Some("always [madvise] never"),
            Some("[always] defer madvise"),
        );
        assert_eq!(thp.status, Status::Ok);
        assert!(thp.detail.contains("enabled = madvise, defrag = always"));
        assert_eq!(check_governor(None).status, Status::Ok);
        assert_eq!(check_governor(Some("powersave")).status, Status::Warn);
        assert_eq!(
            check_listen_port(443, Some(1 << 10), None).status,
            Status::Ok
        );
        assert_eq!(
            check_listen_port(443, Some(0), Some(1024)).status,
            Status::Warn
        );
        assert_eq!(check_listen_port(443, Some(0), Some(0)).status, Status::Ok);
    }

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
