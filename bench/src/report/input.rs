//! Reading a run directory: `meta.json` (written by `bench/compare.sh`) and the
//! `sluice-load` JSON reports it names. Only the subset of sluice-load's JSON this report
//! reads (see the schema in loadtest/src/load/mod.rs); everything defaults, so a newer
//! generator with more fields, or an older one with fewer, still parses.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::style::RGBColor;
use serde::Deserialize;

use super::Res;

/// `{count, min, mean, p50, p90, p99, p999, max}` in µs.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub(crate) struct Pct {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Errors {
    pub total: u64,
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub protocol: u64,
    pub status: BTreeMap<String, u64>,
    pub stalled: u64,
    pub lost: u64,
}

impl Errors {
    pub fn describe(&self) -> String {
        if self.total == 0 && self.stalled == 0 && self.lost == 0 {
            return "0".into();
        }
        let mut parts = vec![format!("{} total", self.total)];
        for (name, n) in [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("io", self.io),
            ("protocol", self.protocol),
            ("stalled", self.stalled),
            ("lost", self.lost),
        ] {
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        for (code, n) in &self.status {
            parts.push(format!("{n}× {code}"));
        }
        parts.join(", ")
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Stream {
    pub streams: u64,
    pub ttft_us: Pct,
    pub gap_us: Pct,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct PidRep {
    pub pid: u32,
    pub cpu_us: u64,
    /// User-space part of `cpu_us` (0 from generators older than the split).
    pub user_us: u64,
    pub requests: u64,
    pub rss_peak_mib: f64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub achieved_rps: f64,
    pub latency_us: Pct,
    pub errors: Errors,
    pub stream: Option<Stream>,
    pub pids: Vec<PidRep>,
    /// Each core's busy share during the run, core 0 first.
    pub core_busy: Vec<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Target {
    pub name: String,
    pub summary: Summary,
    /// The same target round by round (empty from older generators).
    pub rounds: Vec<Summary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CompareFile {
    pub rounds: u32,
    pub round_duration_s: f64,
    pub targets: Vec<Target>,
}

impl CompareFile {
    pub fn target(&self, sys: Sys) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == sys.compare_name())
    }

    pub fn get(&self, sys: Sys) -> Option<&Summary> {
        self.target(sys).map(|t| &t.summary)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StreamsStep {
    pub count: u64,
    pub clean: bool,
    pub summary: Summary,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StreamsFile {
    pub steps: Vec<StreamsStep>,
    pub max_clean_streams: Option<u64>,
}

/// `meta.json`, written by `bench/compare.sh`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Meta {
    pub mode: String,
    pub date: String,
    pub git: String,
    pub driver: String,
    pub nginx_version: Option<String>,
    pub cores: u32,
    pub layout: BTreeMap<String, String>,
    pub sluice_workers: u32,
    pub nginx_workers: u32,
    pub sluice_pid: Option<u32>,
    pub sluice_full_pid: Option<u32>,
    pub sluice_full: Option<FullMeta>,
    pub nginx_pids: Vec<u32>,
    pub c1: Option<String>,
    pub rates: Vec<RatePhase>,
    pub closed: Option<ClosedPhase>,
    pub stream: Option<StreamPhase>,
    pub sweep: Option<SweepPhase>,
    /// Rounds per phase (`c1`, `rate`, `closed`, `stream`).
    pub rounds: BTreeMap<String, u32>,
    pub idle_conns: Option<IdleConns>,
    /// `system -> {idle, mid, peak, after}` in KiB, read from /proc by the script.
    pub rss_kib: BTreeMap<String, RssKib>,
    /// 1-minute load average at the start and the end of the suite.
    pub loadavg: Vec<f64>,
    pub build_s: Option<f64>,
    pub suite_s: Option<f64>,
}

/// What `compare.sh` saw of sluice_full's features at the end.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct FullMeta {
    pub access_log_lines: u64,
    pub store_dir_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RatePhase {
    pub rate: f64,
    pub file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ClosedPhase {
    pub conns: u64,
    pub file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StreamPhase {
    pub file: String,
    pub chunks: u64,
    pub gap_ms: u64,
    /// Streams started per second (open loop); 0 in reports of the closed-loop phase.
    pub rate: u64,
    /// Streams in flight (closed loop), in reports written before the phase was open loop.
    pub concurrency: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SweepPhase {
    pub counts: Vec<u64>,
    pub gap_ms: u64,
    pub chunks: u64,
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub(crate) struct RssKib {
    pub idle: Option<f64>,
    pub mid: Option<f64>,
    pub peak: Option<f64>,
    pub after: Option<f64>,
}

/// The idle-connections phase: connections asked for, and per system what the script read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct IdleConns {
    pub connections: u64,
    pub systems: BTreeMap<String, IdleSys>,
}

/// One system's idle-connections reading: connections held, and RSS (KiB) before they
/// opened, while held, and a few seconds after they closed.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct IdleSys {
    pub held: u64,
    pub before_kib: f64,
    pub held_kib: f64,
    pub after_kib: f64,
}

/// The systems: JSON key, name in `sluice-load compare`, label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sys {
    Direct,
    Xcore,
    Nginx,
    Sluice,
    Full,
}

pub(crate) const SYSTEMS: [Sys; 5] = [Sys::Direct, Sys::Xcore, Sys::Nginx, Sys::Sluice, Sys::Full];

impl Sys {
    pub fn key(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Xcore => "direct_xcore",
            Sys::Nginx => "nginx",
            Sys::Sluice => "sluice",
            Sys::Full => "sluice_full",
        }
    }

    pub fn compare_name(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Xcore => "direct-xcore",
            Sys::Nginx => "nginx",
            Sys::Sluice => "gateway",
            Sys::Full => "sluice_full",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Sys::Xcore => "direct-xcore",
            other => other.key(),
        }
    }

    pub fn color(self) -> RGBColor {
        match self {
            Sys::Direct => RGBColor(20, 20, 20),
            Sys::Xcore => RGBColor(150, 150, 150),
            Sys::Nginx => RGBColor(0, 150, 60),
            Sys::Sluice => RGBColor(30, 90, 220),
            Sys::Full => RGBColor(220, 110, 20),
        }
    }
}

/// Everything read from the run directory.
pub(crate) struct Run {
    pub meta: Meta,
    pub c1: Option<CompareFile>,
    pub rates: Vec<(f64, Option<CompareFile>)>,
    pub closed: Option<CompareFile>,
    pub stream: Option<CompareFile>,
    pub sweep: BTreeMap<String, StreamsFile>,
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Res<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()).into())
}

/// Reads an optional phase file; a missing or broken file is reported on stderr and left
/// out.
fn optional<T: for<'de> Deserialize<'de>>(dir: &Path, name: Option<&str>) -> Option<T> {
    let name = name.filter(|n| !n.is_empty())?;
    let path = dir.join(name);
    if !path.exists() {
        eprintln!("sluice-bench-report: {} missing, left out", path.display());
        return None;
    }
    match load_json(&path) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("sluice-bench-report: {e}; left out");
            None
        }
    }
}

impl Run {
    pub fn load(dir: &Path) -> Res<Run> {
        let meta: Meta = load_json(&dir.join("meta.json"))?;
        let c1 = optional(dir, meta.c1.as_deref());
        let rates = meta
            .rates
            .iter()
            .map(|r| (r.rate, optional(dir, Some(&r.file))))
            .collect();
        let closed = optional(dir, meta.closed.as_ref().map(|c| c.file.as_str()));
        let stream = optional(dir, meta.stream.as_ref().map(|s| s.file.as_str()));
        let mut sweep = BTreeMap::new();
        if let Some(sw) = &meta.sweep {
            for (sys, file) in &sw.files {
                if let Some(f) = optional(dir, Some(file)) {
                    sweep.insert(sys.clone(), f);
                }
            }
        }
        Ok(Run {
            meta,
            c1,
            rates,
            closed,
            stream,
            sweep,
        })
    }
}
