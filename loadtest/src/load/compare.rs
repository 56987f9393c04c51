//! `compare`: the same load against several targets, interleaved in short
//! rounds (A, B, C, A, B, C, ...) so that drift of the machine hits every
//! target alike, then the latency each target adds over each baseline.
//!
//! A baseline is a target marked [`CompareTarget::baseline`]: `direct` (the
//! mock itself) and, on small machines, `direct-xcore` (the mock pinned where
//! the gateway runs, so the cross-core hop is in the baseline too). Every
//! target is compared with every baseline other than itself.

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hist::{AddedPercentiles, Table};
use super::report::render_pids;
use super::{run, RunReport, RunSpec, RunSummary};

/// One target of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareTarget {
    /// Short name (`direct`, `gateway`, ...).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Whether other targets are measured against it.
    pub baseline: bool,
    /// Request headers sent to this target only, after the shared ones
    /// (say the `authorization` a gateway with keys requires).
    pub headers: Vec<(String, String)>,
}

/// A comparison: `base` gives the load (its URL and duration are replaced
/// per target and round).
#[derive(Debug, Clone)]
pub struct CompareSpec {
    /// The load shape shared by all targets.
    pub base: RunSpec,
    /// The targets, in the order each round visits them.
    pub targets: Vec<CompareTarget>,
    /// Rounds (each target runs once per round).
    pub rounds: u32,
    /// Length of one target's run in a round.
    pub round_duration: Duration,
}

/// The latency one target adds over one baseline, per percentile (µs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    /// The baseline's name.
    pub baseline: String,
    /// Added end-to-end latency.
    pub latency_us: AddedPercentiles,
    /// Added time to the response head.
    pub ttfb_us: AddedPercentiles,
    /// Added time to first token (streaming).
    pub ttft_us: Option<AddedPercentiles>,
    /// Added gap between content events (streaming).
    pub gap_us: Option<AddedPercentiles>,
}

/// One target's merged rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target's name.
    pub name: String,
    /// Whether it is a baseline.
    pub baseline: bool,
    /// Its measurements, all rounds merged.
    pub summary: RunSummary,
    /// Its measurements round by round, in order (for medians over
    /// interleaved rounds, which drift of the machine moves less than a
    /// merged histogram).
    #[serde(default)]
    pub rounds: Vec<RunSummary>,
    /// What it adds over each baseline.
    pub added: Vec<Added>,
}

/// The `compare` JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Rounds run.
    pub rounds: u32,
    /// Length of each target's run per round, in seconds.
    pub round_duration_s: f64,
    /// One entry per target, in the order given.
    pub targets: Vec<TargetReport>,
}

/// Runs the comparison. `on_round(round, target)` is called before each run
/// (for progress display).
pub fn compare(
    spec: &CompareSpec,
    mut on_round: impl FnMut(u32, &str),
) -> io::Result<CompareReport> {
    if spec.targets.is_empty() || spec.rounds == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "compare needs targets and rounds",
        ));
    }
    let specs = spec
        .targets
        .iter()
        .map(|t| {
            let mut s = spec.base.retarget(&t.url)?;
            s.headers.extend(t.headers.iter().cloned());
            s.duration = Some(spec.round_duration);
            s.requests = None;
            s.progress = false;
            Ok(s)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut merged: Vec<Option<RunReport>> = vec![None; specs.len()];
    let mut per_round: Vec<Vec<RunSummary>> = vec![Vec::new(); specs.len()];
    for round in 0..spec.rounds {
        for (i, s) in specs.iter().enumerate() {
            on_round(round, &spec.targets[i].name);
            let r = run(s)?;
            per_round[i].push(r.summary());
            match &mut merged[i] {
                Some(acc) => acc.merge(&r),
                slot @ None => *slot = Some(r),
            }
        }
    }
    let summaries: Vec<RunSummary> = merged.iter().flatten().map(RunReport::summary).collect();
    let targets = spec
        .targets
        .iter()
        .zip(&summaries)
        .zip(per_round)
        .map(|((t, s), rounds)| TargetReport {
            name: t.name.clone(),
            baseline: t.baseline,
            summary: s.clone(),
            rounds,
            added: spec
                .targets
                .iter()
                .zip(&summaries)
                .filter(|(b, _)| b.baseline && b.name != t.name)
                .map(|(b, base)| added(&b.name, s, base))
                .collect(),
        })
        .collect();
    Ok(CompareReport {
        rounds: spec.rounds,
        round_duration_s: spec.round_duration.as_secs_f64(),
        targets,
    })
}

fn added(baseline: &str, s: &RunSummary, base: &RunSummary) -> Added {
    let pair = s.stream.as_ref().zip(base.stream.as_ref());
    Added {
        baseline: baseline.to_owned(),
        latency_us: s.latency_us.minus(&base.latency_us),
        ttfb_us: s.ttfb_us.minus(&base.ttfb_us),
        ttft_us: pair.map(|(a, b)| a.ttft_us.minus(&b.ttft_us)),
        gap_us: pair.map(|(a, b)| a.gap_us.minus(&b.gap_us)),
    }
}

impl CompareReport {
    /// The human report: per-target percentiles, then added latency.
    pub fn render(&self) -> String {
        let mut t = Table::percentile_header();
        let mut out = format!(
            "{} rounds of {:.2}s per target, interleaved\n",
            self.rounds, self.round_duration_s
        );
        for target in &self.targets {
            let s = &target.summary;
            t.percentile_row(&format!("{} latency", target.name), &s.latency_us);
            if let Some(st) = &s.stream {
                t.percentile_row(&format!("{} ttft", target.name), &st.ttft_us);
                t.percentile_row(&format!("{} gap", target.name), &st.gap_us);
            }
        }
        for target in &self.targets {
            for a in &target.added {
                t.added_row(
                    &format!("{} − {} latency", target.name, a.baseline),
                    &a.latency_us,
                );
                if let Some(ttft) = &a.ttft_us {
                    t.added_row(&format!("{} − {} ttft", target.name, a.baseline), ttft);
                }
                if let Some(gap) = &a.gap_us {
                    t.added_row(&format!("{} − {} gap", target.name, a.baseline), gap);
                }
            }
        }
        out.push_str(&t.render());
        let mut rates = Table::new(&["target", "requests", "ok", "req/s", "errors"]);
        for target in &self.targets {
            let s = &target.summary;
            rates.row(vec![
                target.name.clone(),
                s.requests.to_string(),
                s.ok.to_string(),
                format!("{:.0}", s.achieved_rps),
                s.errors.describe(),
            ]);
        }
        out.push_str(&rates.render());
        for target in &self.targets {
            if !target.summary.pids.is_empty() {
                out.push_str(&format!("pids during {} rounds:\n", target.name));
                out.push_str(&render_pids(&target.summary.pids));
            }
        }
        out
    }
}
