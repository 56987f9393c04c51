//! Sweeps built on [`run`]: `frontier` (the highest rate a target sustains
//! under a p99 bound) and `streams` (the most concurrent streams carried
//! with no stalled or lost chunk).

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hist::{fmt_us, Table};
use super::{run, Load, RunSpec, RunSummary, StreamSpec};

/// The p99 bounds a frontier reports by default, in milliseconds.
pub const DEFAULT_BOUNDS_MS: [f64; 3] = [1.0, 5.0, 10.0];

/// A step sustains its rate when it achieved at least this share of it.
pub const MIN_ACHIEVED_SHARE: f64 = 0.9;

/// A rate sweep over one or more targets.
#[derive(Debug, Clone)]
pub struct FrontierSpec {
    /// The load shape (its URL, load and duration are replaced per step).
    pub base: RunSpec,
    /// `(name, url)` of each target; each rate visits them in turn.
    pub targets: Vec<(String, String)>,
    /// Offered rates, ascending.
    pub rates: Vec<f64>,
    /// Length of each step.
    pub step_duration: Duration,
    /// p99 bounds in milliseconds.
    pub bounds_ms: Vec<f64>,
}

/// One rate of a frontier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierStep {
    /// The offered rate.
    pub rate: f64,
    /// What the step measured.
    pub summary: RunSummary,
}

/// The highest rate sustained under one bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sustained {
    /// The p99 bound in milliseconds.
    pub p99_bound_ms: f64,
    /// The highest offered rate with p99 under the bound, no errors, and at
    /// least [`MIN_ACHIEVED_SHARE`] of the rate achieved; `null` if none.
    pub max_rate: Option<f64>,
}

/// One target's frontier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierTarget {
    /// The target's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// Each rate run, ascending (stops after the loosest bound fails).
    pub steps: Vec<FrontierStep>,
    /// The frontier per bound.
    pub sustained: Vec<Sustained>,
}

/// The `frontier` JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierReport {
    /// The p99 bounds in milliseconds.
    pub bounds_ms: Vec<f64>,
    /// One entry per target.
    pub targets: Vec<FrontierTarget>,
}

fn sustains(s: &RunSummary, rate: f64, bound_ms: f64) -> bool {
    s.errors.total == 0
        && s.ok > 0
        && s.achieved_rps >= rate * MIN_ACHIEVED_SHARE
        && (s.latency_us.p99 as f64) < bound_ms * 1_000.0
}

/// Runs the rate sweep. A target is dropped from higher rates once a step
/// fails the loosest bound. `on_step(rate, target)` is called before each run.
pub fn frontier(
    spec: &FrontierSpec,
    mut on_step: impl FnMut(f64, &str),
) -> io::Result<FrontierReport> {
    let loosest = spec.bounds_ms.iter().copied().fold(0.0, f64::max);
    let mut targets: Vec<FrontierTarget> = spec
        .targets
        .iter()
        .map(|(name, url)| FrontierTarget {
            name: name.clone(),
            url: url.clone(),
            steps: Vec::new(),
            sustained: Vec::new(),
        })
        .collect();
    let mut alive = vec![true; targets.len()];
    for &rate in &spec.rates {
        for (i, t) in targets.iter_mut().enumerate() {
            if !alive[i] {
                continue;
            }
            on_step(rate, &t.name);
            let mut s = spec.base.retarget(&t.url)?;
            s.load = Load::Rate(rate);
            s.duration = Some(spec.step_duration);
            s.requests = None;
            s.progress = false;
            let summary = run(&s)?.summary();
            alive[i] = sustains(&summary, rate, loosest);
            t.steps.push(FrontierStep { rate, summary });
        }
    }
    for t in &mut targets {
        t.sustained = spec
            .bounds_ms
            .iter()
            .map(|&b| Sustained {
                p99_bound_ms: b,
                max_rate: t
                    .steps
                    .iter()
                    .filter(|st| sustains(&st.summary, st.rate, b))
                    .map(|st| st.rate)
                    .reduce(f64::max),
            })
            .collect();
    }
    Ok(FrontierReport {
        bounds_ms: spec.bounds_ms.clone(),
        targets,
    })
}

impl FrontierReport {
    /// The human report: one row per step, then the frontier per bound.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "target", "rate", "achieved", "p50", "p99", "p99.9", "errors",
        ]);
        for target in &self.targets {
            for st in &target.steps {
                let s = &st.summary;
                t.row(vec![
                    target.name.clone(),
                    format!("{:.0}", st.rate),
                    format!("{:.0}", s.achieved_rps),
                    fmt_us(s.latency_us.p50),
                    fmt_us(s.latency_us.p99),
                    fmt_us(s.latency_us.p999),
                    s.errors.describe(),
                ]);
            }
        }
        let mut out = t.render();
        let mut header = vec!["target".to_owned()];
        header.extend(self.bounds_ms.iter().map(|b| format!("p99<{b}ms")));
        let mut f = Table::new(&header);
        for target in &self.targets {
            let mut row = vec![target.name.clone()];
            row.extend(
                target
                    .sustained
                    .iter()
                    .map(|s| s.max_rate.map_or("-".to_owned(), |r| format!("{r:.0}/s"))),
            );
            f.row(row);
        }
        out.push_str("highest rate sustained (no errors):\n");
        out.push_str(&f.render());
        out
    }
}

/// A sweep of concurrent stream counts against one target.
#[derive(Debug, Clone)]
pub struct StreamsSpec {
    /// The load shape; streaming accounting must be on (`base.stream`).
    pub base: RunSpec,
    /// Concurrent stream counts, ascending.
    pub counts: Vec<usize>,
    /// Length of each step (closed loop: streams restart as they finish).
    pub step_duration: Duration,
}

/// One count of a streams sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamsStep {
    /// Concurrent streams.
    pub count: usize,
    /// No stalled or lost stream and no error.
    pub clean: bool,
    /// SSE events (frames) carried per second.
    pub events_per_s: f64,
    /// What the step measured.
    pub summary: RunSummary,
}

/// The `streams` JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamsReport {
    /// Content events each stream had to carry.
    pub expect_chunks: Option<u32>,
    /// The stall bound in milliseconds.
    pub stall_ms: u64,
    /// One entry per count.
    pub steps: Vec<StreamsStep>,
    /// The most concurrent streams that ran clean, `null` if none.
    pub max_clean_streams: Option<usize>,
}

/// Runs the streams sweep. `on_step(count)` is called before each run.
pub fn streams(spec: &StreamsSpec, mut on_step: impl FnMut(usize)) -> io::Result<StreamsReport> {
    let stream = spec.base.stream.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "streams needs streaming accounting",
        )
    })?;
    let mut steps = Vec::with_capacity(spec.counts.len());
    for &count in &spec.counts {
        on_step(count);
        let mut s = spec.base.clone();
        s.load = Load::Concurrency(count);
        s.duration = Some(spec.step_duration);
        s.requests = None;
        s.progress = false;
        s.max_conns = s.max_conns.max(count);
        let summary = run(&s)?.summary();
        let events_per_s = summary.stream.as_ref().map_or(0.0, |st| st.events_per_s);
        let clean = summary.errors.total == 0 && summary.ok > 0;
        steps.push(StreamsStep {
            count,
            clean,
            events_per_s,
            summary,
        });
    }
    let max_clean_streams = steps.iter().filter(|s| s.clean).map(|s| s.count).max();
    Ok(StreamsReport {
        expect_chunks: stream.expect_chunks,
        stall_ms: stream_ms(stream),
        steps,
        max_clean_streams,
    })
}

fn stream_ms(s: StreamSpec) -> u64 {
    u64::try_from(s.stall.as_millis()).unwrap_or(u64::MAX)
}

impl StreamsReport {
    /// The human report: one row per count.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "streams", "done", "events/s", "ttft p50", "ttft p99", "gap p99", "gap max", "errors",
        ]);
        for st in &self.steps {
            let s = &st.summary;
            let (ttft, gap) = s
                .stream
                .as_ref()
                .map(|x| (x.ttft_us, x.gap_us))
                .unwrap_or_default();
            t.row(vec![
                st.count.to_string(),
                s.ok.to_string(),
                format!("{:.0}", st.events_per_s),
                fmt_us(ttft.p50),
                fmt_us(ttft.p99),
                fmt_us(gap.p99),
                fmt_us(gap.max),
                s.errors.describe(),
            ]);
        }
        let mut out = t.render();
        out.push_str(&match self.max_clean_streams {
            Some(n) => format!(
                "most concurrent streams with no stalled or lost chunk: {n} (stall bound {}ms)\n",
                self.stall_ms
            ),
            None => format!("no count ran clean (stall bound {}ms)\n", self.stall_ms),
        });
        out
    }
}
