//! Checks of the CPUs: workers against cores and isolation, the clock source, transparent
//! huge pages, the frequency governor.

use sluice_core::config::Workers;

use super::Check;

pub(super) fn check_workers(
    cores: usize,
    workers: Workers,
    pinned: bool,
    isolated: Option<&str>,
) -> Check {
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

pub(super) fn check_clocksource(current: Option<&str>, available: Option<&str>) -> Check {
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

pub(super) fn check_thp(enabled: Option<&str>, defrag: Option<&str>) -> Check {
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

pub(super) fn check_governor(governor: Option<&str>) -> Check {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::doctor::Status;

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
    fn clock_thp_and_governor() {
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
    }
}
