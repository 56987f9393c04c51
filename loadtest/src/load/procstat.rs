//! CPU time and resident memory of other processes, read from `/proc`.
//!
//! `--pid PID` attaches a [`Sampler`] to a run: it reads each process's CPU
//! time (`utime + stime` from `/proc/PID/stat`) and resident set (`VmRSS` from
//! `/proc/PID/status`) before the run, every [`SAMPLE_INTERVAL`] during it
//! (keeping the peak RSS) and after it. The report divides the CPU spent during
//! the run by the requests completed, which is what a gateway costs per request.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a running [`Sampler`] reads `/proc`.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

const MIB: f64 = 1024.0 * 1024.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time consumed so far, in microseconds.
    pub cpu_us: u64,
    /// Of which in user space (`utime`), in microseconds.
    pub user_us: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

/// Reads the CPU time and RSS of `pid` now.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let (user_us, cpu_us) = parse_stat_cpu_us(&stat, clock_ticks_per_sec())?;
    Ok(ProcSample {
        cpu_us,
        user_us,
        rss_bytes: parse_status_rss_bytes(&status)?,
    })
}

/// Clock ticks per second used by `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `(utime, utime + stime)` from the text of `/proc/PID/stat`, in microseconds.
///
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted from the last `)`: `utime` and `stime` are fields 14 and 15.
fn parse_stat_cpu_us(stat: &str, ticks_per_sec: u64) -> io::Result<(u64, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
    let rest = stat.rsplit_once(')').ok_or_else(bad)?.1;
    // `rest` starts at field 3 (state), so utime (14) is at index 11.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let mut next =
        || -> io::Result<u64> { fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad) };
    let (utime, stime) = (next()?, next()?);
    let us = |ticks: u64| ticks.saturating_mul(1_000_000) / ticks_per_sec;
    Ok((us(utime), us(utime + stime)))
}

/// `VmRSS` from the text of `/proc/PID/status`, in bytes (0 for kernel threads).
fn parse_status_rss_bytes(status: &str) -> io::Result<u64> {
    let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) else {
        return Ok(0);
    };
    let kib: u64 = line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed VmRSS"))?;
    Ok(kib * 1024)
}

/// Busy and total clock ticks of one core (from `/proc/stat`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreTicks {
    /// Ticks not idle and not waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

impl CoreTicks {
    /// `busy / total` (0 when no tick passed).
    pub fn busy_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.busy as f64 / self.total as f64
        }
    }
}

/// Every core's ticks so far, core 0 first.
pub fn core_ticks() -> io::Result<Vec<CoreTicks>> {
    Ok(parse_proc_stat(&std::fs::read_to_string("/proc/stat")?))
}

/// The `cpuN` lines of `/proc/stat`: `user nice system idle iowait irq softirq steal`
/// (guest time is already inside user and nice, so it is not added again).
fn parse_proc_stat(text: &str) -> Vec<CoreTicks> {
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_ascii_whitespace()
                .skip(1)
                .take(8)
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            let total: u64 = f.iter().sum();
            let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
            CoreTicks {
                busy: total.saturating_sub(idle),
                total,
            }
        })
        .collect()
}

/// The ticks each core spent between two readings.
pub fn ticks_between(before: &[CoreTicks], after: &[CoreTicks]) -> Vec<CoreTicks> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| CoreTicks {
            busy: a.busy.saturating_sub(b.busy),
            total: a.total.saturating_sub(b.total),
        })
        .collect()
}

/// Adds a later run's ticks into `acc` (merged rounds).
pub fn add_core_ticks(acc: &mut Vec<CoreTicks>, later: &[CoreTicks]) {
    if acc.is_empty() {
        acc.extend_from_slice(later);
        return;
    }
    for (a, l) in acc.iter_mut().zip(later) {
        a.busy += l.busy;
        a.total += l.total;
    }
}

/// What one sampled process spent during a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PidReport {
    /// The process id.
    pub pid: u32,
    /// CPU time (user + system) consumed during the run, in microseconds.
    pub cpu_us: u64,
    /// Of which in user space; the rest (`cpu_us - user_us`) is the kernel's.
    #[serde(default)]
    pub user_us: u64,
    /// Requests completed during the run (the denominator below).
    pub requests: u64,
    /// `cpu_us / requests`.
    pub cpu_us_per_request: f64,
    /// RSS before the run, in MiB.
    pub rss_idle_mib: f64,
    /// Highest RSS seen during the run, in MiB.
    pub rss_peak_mib: f64,
    /// RSS right after the run, in MiB.
    pub rss_after_mib: f64,
}

impl PidReport {
    /// Folds a later run's report for the same pid into this one: CPU and
    /// requests add up, the peak is the highest, idle stays the first and
    /// after becomes the last.
    pub fn merge(&mut self, later: &PidReport) {
        self.cpu_us += later.cpu_us;
        self.user_us += later.user_us;
        self.requests += later.requests;
        self.cpu_us_per_request = per_request(self.cpu_us, self.requests);
        self.rss_peak_mib = self.rss_peak_mib.max(later.rss_peak_mib);
        self.rss_after_mib = later.rss_after_mib;
    }
}

/// Merges per-run pid reports (same pids, later runs last) into `acc`.
pub fn merge_reports(acc: &mut Vec<PidReport>, later: &[PidReport]) {
    for r in later {
        match acc.iter_mut().find(|a| a.pid == r.pid) {
            Some(a) => a.merge(r),
            None => acc.push(r.clone()),
        }
    }
}

fn per_request(cpu_us: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        cpu_us as f64 / requests as f64
    }
}

#[derive(Clone, Copy, Debug)]
struct Track {
    pid: u32,
    before: ProcSample,
    peak_rss: u64,
}

/// Samples a set of processes around a run. Call order: [`Sampler::start`]
/// before the load begins, [`Sampler::finish`] after it ends.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Track>>>,
}

impl Sampler {
    /// Takes the "before" sample of every pid and starts the peak sampler.
    /// Fails if a pid cannot be read, so a typo is reported before the load.
    pub fn start(pids: &[u32]) -> io::Result<Self> {
        let mut tracks = Vec::with_capacity(pids.len());
        for &pid in pids {
            let before =
                sample(pid).map_err(|e| io::Error::new(e.kind(), format!("--pid {pid}: {e}")))?;
            tracks.push(Track {
                pid,
                before,
                peak_rss: before.rss_bytes,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = if tracks.is_empty() {
            None
        } else {
            let stop = Arc::clone(&stop);
            Some(
                std::thread::Builder::new()
                    .name("sluice-load-procstat".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(SAMPLE_INTERVAL);
                            for t in &mut tracks {
                                if let Ok(s) = sample(t.pid) {
                                    t.peak_rss = t.peak_rss.max(s.rss_bytes);
                                }
                            }
                        }
                        tracks
                    })?,
            )
        };
        Ok(Self { stop, thread })
    }

    /// Stops sampling, takes the "after" sample and reports each pid, with
    /// CPU per request computed over `requests`. A process that exited
    /// during the run reports its last known values.
    pub fn finish(mut self, requests: u64) -> Vec<PidReport> {
        self.stop.store(true, Ordering::Relaxed);
        let Some(tracks) = self.thread.take().and_then(|t| t.join().ok()) else {
            return Vec::new();
        };
        tracks
            .into_iter()
            .map(|t| {
                let after = sample(t.pid).unwrap_or(ProcSample {
                    rss_bytes: 0,
                    ..t.before
                });
                let cpu_us = after.cpu_us.saturating_sub(t.before.cpu_us);
                PidReport {
                    pid: t.pid,
                    cpu_us,
                    user_us: after.user_us.saturating_sub(t.before.user_us),
                    requests,
                    cpu_us_per_request: per_request(cpu_us, requests),
                    rss_idle_mib: t.before.rss_bytes as f64 / MIB,
                    rss_peak_mib: t.peak_rss.max(after.rss_bytes) as f64 / MIB,
                    rss_after_mib: after.rss_bytes as f64 / MIB,
                }
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat =
            "42 (my (odd) proc) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 5 1000 10";
        assert_eq!(
            parse_stat_cpu_us(stat, 100).unwrap(),
            (2_500_000, 4_000_000)
        );
        assert!(parse_stat_cpu_us("garbage", 100).is_err());
    }

    #[test]
    fn parses_core_ticks() {
        let stat = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                    cpu0 30 0 10 50 10 0 0 0 0 0\n\
                    cpu1 1 0 1 98 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        let t = parse_proc_stat(stat);
        assert_eq!(t.len(), 2, "the aggregate line is not a core");
        assert_eq!(
            t[0],
            CoreTicks {
                busy: 40,
                total: 100
            }
        );
        let later = [
            CoreTicks {
                busy: 90,
                total: 200,
            },
            t[1],
        ];
        let d = ticks_between(&t, &later);
        assert_eq!(d[0].busy_share(), 0.5);
        assert_eq!(d[1].busy_share(), 0.0);
        assert!(!core_ticks().unwrap().is_empty());
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_rss_bytes(status).unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_status_rss_bytes("Name:\tkthreadd\n").unwrap(), 0);
    }

    #[test]
    fn merge_accumulates() {
        let mut acc = Vec::new();
        let a = PidReport {
            pid: 1,
            cpu_us: 100,
            requests: 10,
            rss_idle_mib: 1.0,
            rss_peak_mib: 3.0,
            rss_after_mib: 2.0,
            ..Default::default()
        };
        let b = PidReport {
            pid: 1,
            cpu_us: 300,
            requests: 10,
            rss_idle_mib: 2.0,
            rss_peak_mib: 5.0,
            rss_after_mib: 4.0,
            ..Default::default()
        };
        merge_reports(&mut acc, &[a]);
        merge_reports(&mut acc, &[b]);
        assert_eq!(acc.len(), 1);
        assert_eq!(acc[0].cpu_us_per_request, 20.0);
        assert_eq!(
            (
                acc[0].rss_idle_mib,
                acc[0].rss_peak_mib,
                acc[0].rss_after_mib
            ),
            (1.0, 5.0, 4.0)
        );
    }
}
