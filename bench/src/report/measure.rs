//! The figures the report is made of, derived from a [`Run`]: per-system CPU per request
//! (and its user/kernel split), added latency, medians over interleaved rounds, RSS
//! readings, the idle-connections phase.
//!
//! Medians: `sluice-load compare` runs the systems in interleaved rounds (direct,
//! direct-xcore, sluice, sluice_full, nginx, then again) and reports each round. A figure
//! "over rounds" is computed per round, then the median of the rounds is taken; added
//! latency pairs each round of a system with direct's round of the same index, which ran
//! seconds apart. Files from older generators carry no rounds: their merged summary counts
//! as one round.

use super::input::{CompareFile, Pct, PidRep, Run, Stream, StreamsFile, Summary, Sys};

pub(crate) fn summary(file: Option<&CompareFile>, sys: Sys) -> Option<&Summary> {
    file.and_then(|f| f.get(sys))
}

/// `sys`'s rounds in one comparison (its merged summary when there are none).
pub(crate) fn rounds(file: Option<&CompareFile>, sys: Sys) -> Vec<&Summary> {
    let Some(t) = file.and_then(|f| f.target(sys)) else {
        return Vec::new();
    };
    if t.rounds.is_empty() {
        vec![&t.summary]
    } else {
        t.rounds.iter().collect()
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn signed(a: u64, b: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
}

/// `system − direct` of one percentile from the merged rounds, when both ran.
pub(crate) fn added_at(
    file: Option<&CompareFile>,
    sys: Sys,
    pick: impl Fn(&Summary) -> u64,
) -> Option<i64> {
    let s = summary(file, sys)?;
    let d = summary(file, Sys::Direct)?;
    (s.ok > 0 && d.ok > 0).then(|| signed(pick(s), pick(d)))
}

/// The median over rounds of `system − direct` (same round) of one latency percentile.
pub(crate) fn added_median(
    file: Option<&CompareFile>,
    sys: Sys,
    pick: impl Fn(&Pct) -> u64,
) -> Option<f64> {
    let direct = rounds(file, Sys::Direct);
    median(
        rounds(file, sys)
            .iter()
            .zip(&direct)
            .filter(|(s, d)| s.ok > 0 && d.ok > 0)
            .map(|(s, d)| signed(pick(&s.latency_us), pick(&d.latency_us)) as f64)
            .collect(),
    )
}

pub(crate) fn stream_pct(s: &Summary, pick: impl Fn(&Stream) -> Pct) -> Option<Pct> {
    s.stream.as_ref().map(pick).filter(|p| p.count > 0)
}

/// `system − direct` of a stream percentile from the merged rounds.
pub(crate) fn stream_added(
    file: Option<&CompareFile>,
    sys: Sys,
    pick: impl Fn(&Stream) -> Pct,
    q: impl Fn(&Pct) -> u64,
) -> Option<i64> {
    let s = stream_pct(summary(file, sys)?, &pick)?;
    let d = stream_pct(summary(file, Sys::Direct)?, &pick)?;
    Some(signed(q(&s), q(&d)))
}

/// The median over rounds of `system − direct` of a stream percentile.
pub(crate) fn stream_added_median(
    file: Option<&CompareFile>,
    sys: Sys,
    pick: impl Fn(&Stream) -> Pct,
    q: impl Fn(&Pct) -> u64,
) -> Option<f64> {
    let direct = rounds(file, Sys::Direct);
    median(
        rounds(file, sys)
            .iter()
            .zip(&direct)
            .filter_map(|(s, d)| Some((stream_pct(s, &pick)?, stream_pct(d, &pick)?)))
            .map(|(s, d)| signed(q(&s), q(&d)) as f64)
            .collect(),
    )
}

/// Median over rounds of the achieved req/s.
pub(crate) fn rps_median(file: Option<&CompareFile>, sys: Sys) -> Option<f64> {
    median(rounds(file, sys).iter().map(|s| s.achieved_rps).collect())
}

/// CPU per request, split: total, user, kernel (µs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    pub total: f64,
    pub user: f64,
    pub kernel: f64,
}

impl Run {
    /// The pids whose CPU and memory are charged to `sys`.
    pub fn pids(&self, sys: Sys) -> Vec<u32> {
        match sys {
            Sys::Sluice => self.meta.sluice_pid.into_iter().collect(),
            Sys::Full => self.meta.sluice_full_pid.into_iter().collect(),
            Sys::Nginx => self.meta.nginx_pids.clone(),
            Sys::Direct | Sys::Xcore => Vec::new(),
        }
    }

    fn cpu_of(&self, s: &Summary, sys: Sys) -> Option<Cpu> {
        let pids = self.pids(sys);
        let mine: Vec<&PidRep> = s.pids.iter().filter(|p| pids.contains(&p.pid)).collect();
        let requests = mine.iter().map(|p| p.requests).max()?;
        if requests == 0 {
            return None;
        }
        let per = |v: u64| v as f64 / requests as f64;
        let total = per(mine.iter().map(|p| p.cpu_us).sum());
        let user = per(mine.iter().map(|p| p.user_us).sum());
        Some(Cpu {
            total,
            user,
            kernel: total - user,
        })
    }

    /// CPU per completed request of `sys`'s processes during its own rounds of one
    /// comparison (all rounds merged, all its pids summed).
    pub fn cpu_per_request(&self, file: Option<&CompareFile>, sys: Sys) -> Option<f64> {
        self.cpu_of(summary(file, sys)?, sys).map(|c| c.total)
    }

    /// The median over rounds of CPU per request, with the user/kernel split of the merged
    /// rounds scaled to it.
    pub fn cpu_median(&self, file: Option<&CompareFile>, sys: Sys) -> Option<Cpu> {
        let total = median(
            rounds(file, sys)
                .iter()
                .filter_map(|s| self.cpu_of(s, sys))
                .map(|c| c.total)
                .collect(),
        )?;
        let merged = self.cpu_of(summary(file, sys)?, sys)?;
        let user_share = if merged.total > 0.0 {
            merged.user / merged.total
        } else {
            0.0
        };
        Some(Cpu {
            total,
            user: total * user_share,
            kernel: total * (1.0 - user_share),
        })
    }

    /// The fixed rate the CPU target is checked at: the highest (busy, not saturated).
    pub fn top_rate(&self) -> Option<(f64, Option<&CompareFile>)> {
        self.rates.last().map(|(r, f)| (*r, f.as_ref()))
    }

    /// Median busy share of each core over `sys`'s rounds of one comparison.
    pub fn core_busy(&self, file: Option<&CompareFile>, sys: Sys) -> Vec<f64> {
        let rs = rounds(file, sys);
        let n = rs.iter().map(|s| s.core_busy.len()).max().unwrap_or(0);
        (0..n)
            .filter_map(|i| {
                median(
                    rs.iter()
                        .filter_map(|s| s.core_busy.get(i).copied())
                        .collect(),
                )
            })
            .collect()
    }

    /// The core a role runs on, from the layout in meta.json.
    pub fn core_of(&self, role: &str) -> Option<usize> {
        self.meta.layout.get(role).and_then(|c| c.parse().ok())
    }

    pub fn sweep_for(&self, sys: Sys) -> Option<&StreamsFile> {
        self.sweep.get(sys.key())
    }

    /// Peak RSS (MiB) of `sys`'s processes during the sweep step of `count` streams.
    pub fn peak_at_streams(&self, sys: Sys, count: u64) -> Option<f64> {
        let pids = self.pids(sys);
        let step = self
            .sweep_for(sys)?
            .steps
            .iter()
            .find(|s| s.count == count)?;
        let v: f64 = step
            .summary
            .pids
            .iter()
            .filter(|p| pids.contains(&p.pid))
            .map(|p| p.rss_peak_mib)
            .sum();
        (v > 0.0).then_some(v)
    }

    /// Peak RSS (MiB) of `sys`'s processes seen by the samplers in any phase (summed over
    /// processes per phase, highest phase).
    fn sampled_peak_mib(&self, sys: Sys) -> Option<f64> {
        let pids = self.pids(sys);
        let mut files: Vec<&CompareFile> = self.c1.iter().collect();
        files.extend(self.rates.iter().filter_map(|(_, f)| f.as_ref()));
        files.extend(self.closed.iter());
        files.extend(self.stream.iter());
        let mut summaries: Vec<&Summary> = files
            .iter()
            .flat_map(|f| f.targets.iter().map(|t| &t.summary))
            .collect();
        summaries.extend(
            self.sweep
                .values()
                .flat_map(|f| f.steps.iter().map(|s| &s.summary)),
        );
        summaries
            .iter()
            .map(|s| {
                s.pids
                    .iter()
                    .filter(|p| pids.contains(&p.pid))
                    .map(|p| p.rss_peak_mib)
                    .sum::<f64>()
            })
            .filter(|v| *v > 0.0)
            .reduce(f64::max)
    }

    pub fn rss_mib(&self, sys: Sys) -> RssMib {
        let kib = self
            .meta
            .rss_kib
            .get(sys.key())
            .copied()
            .unwrap_or_default();
        let mib = |v: Option<f64>| v.filter(|v| *v > 0.0).map(|v| v / 1024.0);
        let peak = match (mib(kib.peak), self.sampled_peak_mib(sys)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        RssMib {
            idle: mib(kib.idle),
            mid: mib(kib.mid),
            peak,
            after: mib(kib.after),
        }
    }

    /// The idle-connections phase of `sys`, when it ran.
    pub fn idle_conns(&self, sys: Sys) -> Option<IdleConnsMib> {
        let phase = self.meta.idle_conns.as_ref()?;
        let s = phase.systems.get(sys.key())?;
        let per_conn_kib = (s.held > 0).then(|| (s.held_kib - s.before_kib) / s.held as f64);
        Some(IdleConnsMib {
            asked: phase.connections,
            held: s.held,
            before: s.before_kib / 1024.0,
            while_held: s.held_kib / 1024.0,
            after: s.after_kib / 1024.0,
            per_conn_kib,
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RssMib {
    pub idle: Option<f64>,
    /// After the request/response phases, before the stream sweep.
    pub mid: Option<f64>,
    pub peak: Option<f64>,
    pub after: Option<f64>,
}

/// RSS (MiB) around the idle-connections phase, and the growth per held connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleConnsMib {
    pub asked: u64,
    pub held: u64,
    pub before: f64,
    pub while_held: f64,
    pub after: f64,
    pub per_conn_kib: Option<f64>,
}

impl IdleConnsMib {
    /// `after` against `before`, in percent.
    pub fn after_growth_pct(&self) -> Option<f64> {
        (self.before > 0.0).then(|| (self.after - self.before) / self.before * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN, 5.0]), Some(5.0));
    }
}
