//! The standard Prometheus process metrics, read from `/proc` when `/metrics` is scraped
//! (on the admin thread, never on the data plane): `process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds` and `process_start_time_seconds`, named and typed as the Prometheus
//! client libraries write them, so the usual dashboards and alerts work unchanged.
//!
//! They are written as text (not through the `metrics` facade, whose counters hold whole
//! numbers: CPU seconds are fractional). A value that cannot be read is left out.

use std::fmt::Write as _;

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, unix seconds.
    pub start_time_seconds: Option<f64>,
}

/// Reads the current sample.
pub fn sample() -> Sample {
    // SAFETY: sysconf only reads a system constant; no pointers are involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let mut out = from_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, boot);
    out.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as u64); // the directory's own descriptor
    out.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    out
}

/// `btime` of `/proc/stat`: boot time, unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The fields of `/proc/self/stat` (see proc(5)): after the command name in parentheses
/// (which may hold spaces), utime and stime are fields 14 and 15, starttime 22, vsize 23
/// and rss (in pages) 24.
fn from_stat(stat: &str, ticks_per_s: f64, page_bytes: u64, boot_unix_s: Option<u64>) -> Sample {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Sample::default();
    };
    // `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = field(14)
        .zip(field(15))
        .map(|(u, s)| (u + s) as f64 / ticks_per_s);
    Sample {
        cpu_seconds: cpu,
        resident_bytes: field(24).map(|pages| pages * page_bytes),
        virtual_bytes: field(23),
        start_time_seconds: field(22)
            .zip(boot_unix_s)
            .map(|(t, boot)| boot as f64 + t as f64 / ticks_per_s),
        ..Sample::default()
    }
}

/// Appends the process metrics to a Prometheus text exposition.
pub fn render(out: &mut String) {
    write_sample(&sample(), out);
}

fn write_sample(s: &Sample, out: &mut String) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        }
    };
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds.map(|v| v.to_string()),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes.map(|v| v.to_string()),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s.virtual_bytes.map(|v| v.to_string()),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s.open_fds.map(|v| v.to_string()),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        s.max_fds.map(|v| v.to_string()),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds.map(|v| v.to_string()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 104857600 2560 18446744073709551615";
        let s = from_stat(stat, 100.0, 4096, Some(1_700_000_000));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.resident_bytes, Some(2560 * 4096));
        assert_eq!(s.virtual_bytes, Some(104_857_600));
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(from_stat("garbage", 100.0, 4096, None), Sample::default());
    }

    #[test]
    fn this_process_reads_and_renders() {
        let s = sample();
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.start_time_seconds.unwrap() > 1_600_000_000.0);
        let mut text = String::new();
        write_sample(&s, &mut text);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("\nprocess_open_fds "));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }
}
