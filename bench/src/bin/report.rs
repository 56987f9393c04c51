//! `sluice-bench-report`: turns the `sluice-load` JSON files of one
//! `bench/compare.sh` run into `report.md`, `report.json` and `latency.svg`.
//!
//! ```text
//! sluice-bench-report --raw target/bench/raw --out target/bench
//! ```
//!
//! `--raw` holds `meta.json` (written by `compare.sh`: layout, pids, RSS
//! readings and the names of the other files) and the JSON reports of
//! `sluice-load compare` and `sluice-load streams`. A missing file or system
//! (say nginx could not be installed) leaves its numbers `null` and its
//! checks `n/a`; it is not an error.
//!
//! Added latency is computed here as `system − direct` per percentile from
//! the merged rounds of each `compare` report (the same subtraction
//! `sluice-load` prints). The latency spectrum is drawn from the six points
//! the reports carry (min, p50, p90, p99, p99.9, max), not from a full
//! histogram.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::{json, Map, Value};

type Res<T> = Result<T, Box<dyn Error>>;

// ---------------------------------------------------------------------------
// Input: the subset of sluice-load's JSON this report reads (see the schema in
// loadtest/src/load/mod.rs). Everything defaults, so a newer generator with
// more fields, or an older one with fewer, still parses.

/// `{count, min, mean, p50, p90, p99, p999, max}` in µs.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
struct Pct {
    count: u64,
    min: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct Errors {
    total: u64,
    connect: u64,
    timeout: u64,
    io: u64,
    protocol: u64,
    status: BTreeMap<String, u64>,
    stalled: u64,
    lost: u64,
}

impl Errors {
    fn describe(&self) -> String {
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
struct Stream {
    streams: u64,
    ttft_us: Pct,
    gap_us: Pct,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct PidRep {
    pid: u32,
    cpu_us: u64,
    requests: u64,
    rss_peak_mib: f64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct Summary {
    requests: u64,
    ok: u64,
    achieved_rps: f64,
    latency_us: Pct,
    errors: Errors,
    stream: Option<Stream>,
    pids: Vec<PidRep>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Target {
    name: String,
    summary: Summary,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CompareFile {
    rounds: u32,
    round_duration_s: f64,
    targets: Vec<Target>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamsStep {
    count: u64,
    clean: bool,
    summary: Summary,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamsFile {
    steps: Vec<StreamsStep>,
    max_clean_streams: Option<u64>,
}

/// `meta.json`, written by `bench/compare.sh`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Meta {
    mode: String,
    date: String,
    git: String,
    driver: String,
    nginx_version: Option<String>,
    cores: u32,
    layout: BTreeMap<String, String>,
    sluice_workers: u32,
    nginx_workers: u32,
    sluice_pid: Option<u32>,
    nginx_pids: Vec<u32>,
    c1: Option<String>,
    rates: Vec<RatePhase>,
    closed: Option<ClosedPhase>,
    stream: Option<StreamPhase>,
    sweep: Option<SweepPhase>,
    /// `system -> {idle, peak, after}` in KiB, read from /proc by the script.
    rss_kib: BTreeMap<String, RssKib>,
    /// 1-minute load average at the start and the end of the suite.
    loadavg: Vec<f64>,
    build_s: Option<f64>,
    suite_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RatePhase {
    rate: f64,
    file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ClosedPhase {
    conns: u64,
    file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamPhase {
    file: String,
    chunks: u64,
    gap_ms: u64,
    concurrency: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SweepPhase {
    counts: Vec<u64>,
    gap_ms: u64,
    chunks: u64,
    files: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
struct RssKib {
    idle: Option<f64>,
    mid: Option<f64>,
    peak: Option<f64>,
    after: Option<f64>,
}

// ---------------------------------------------------------------------------
// Systems.

/// The four systems: JSON key, name in `sluice-load compare`, label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    Direct,
    Xcore,
    Nginx,
    Sluice,
}

const SYSTEMS: [Sys; 4] = [Sys::Direct, Sys::Xcore, Sys::Nginx, Sys::Sluice];

impl Sys {
    fn key(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Xcore => "direct_xcore",
            Sys::Nginx => "nginx",
            Sys::Sluice => "sluice",
        }
    }
    fn compare_name(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Xcore => "direct-xcore",
            Sys::Nginx => "nginx",
            Sys::Sluice => "gateway",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::Xcore => "direct-xcore",
            Sys::Nginx => "nginx",
            Sys::Sluice => "sluice",
        }
    }
    fn color(self) -> RGBColor {
        match self {
            Sys::Direct => RGBColor(20, 20, 20),
            Sys::Xcore => RGBColor(150, 150, 150),
            Sys::Nginx => RGBColor(0, 150, 60),
            Sys::Sluice => RGBColor(30, 90, 220),
        }
    }
}

/// Everything read from the run directory.
struct Run {
    meta: Meta,
    c1: Option<CompareFile>,
    rates: Vec<(f64, Option<CompareFile>)>,
    closed: Option<CompareFile>,
    stream: Option<CompareFile>,
    sweep: BTreeMap<String, StreamsFile>,
}

impl CompareFile {
    fn get(&self, sys: Sys) -> Option<&Summary> {
        self.targets
            .iter()
            .find(|t| t.name == sys.compare_name())
            .map(|t| &t.summary)
    }
}

fn summary(file: Option<&CompareFile>, sys: Sys) -> Option<&Summary> {
    file.and_then(|f| f.get(sys))
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Res<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot parse {}: {e}", path.display()).into())
}

/// Reads an optional phase file; a missing or broken file is reported on
/// stderr and left out.
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
    fn load(dir: &Path) -> Res<Run> {
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

    /// The pids whose CPU is charged to `sys`.
    fn pids(&self, sys: Sys) -> Vec<u32> {
        match sys {
            Sys::Sluice => self.meta.sluice_pid.into_iter().collect(),
            Sys::Nginx => self.meta.nginx_pids.clone(),
            _ => Vec::new(),
        }
    }

    /// CPU µs per completed request of `sys`'s processes during its own
    /// rounds of one comparison (all its pids summed).
    fn cpu_per_request(&self, file: Option<&CompareFile>, sys: Sys) -> Option<f64> {
        let pids = self.pids(sys);
        let s = summary(file, sys)?;
        let mine: Vec<&PidRep> = s.pids.iter().filter(|p| pids.contains(&p.pid)).collect();
        let requests = mine.iter().map(|p| p.requests).max()?;
        (requests > 0).then(|| mine.iter().map(|p| p.cpu_us).sum::<u64>() as f64 / requests as f64)
    }

    /// Peak RSS (MiB) of `sys`'s processes seen by the samplers in any phase
    /// (summed over processes per phase, highest phase).
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

    fn rss_mib(&self, sys: Sys) -> RssMib {
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

    fn sweep_for(&self, sys: Sys) -> Option<&StreamsFile> {
        self.sweep.get(sys.key())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RssMib {
    idle: Option<f64>,
    /// After the request/response phases, before the stream sweep.
    mid: Option<f64>,
    peak: Option<f64>,
    after: Option<f64>,
}

fn added(a: u64, b: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
}

/// `system − direct` of one percentile, when both ran.
fn added_at(file: Option<&CompareFile>, sys: Sys, pick: impl Fn(&Summary) -> u64) -> Option<i64> {
    let s = summary(file, sys)?;
    let d = summary(file, Sys::Direct)?;
    (s.ok > 0 && d.ok > 0).then(|| added(pick(s), pick(d)))
}

fn stream_pct(s: &Summary, pick: impl Fn(&Stream) -> Pct) -> Option<Pct> {
    s.stream.as_ref().map(pick)
}

fn stream_added(
    file: Option<&CompareFile>,
    sys: Sys,
    pick: impl Fn(&Stream) -> Pct,
    q: impl Fn(&Pct) -> u64,
) -> Option<i64> {
    let s = stream_pct(summary(file, sys)?, &pick)?;
    let d = stream_pct(summary(file, Sys::Direct)?, &pick)?;
    (s.count > 0 && d.count > 0).then(|| added(q(&s), q(&d)))
}

// ---------------------------------------------------------------------------
// report.json

fn num(v: Option<f64>) -> Value {
    v.filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!((v * 100.0).round() / 100.0))
}

fn int(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |v| json!(v))
}

fn pct_json(p: Option<&Pct>) -> Value {
    p.map_or(Value::Null, |p| {
        json!({"count": p.count, "min": p.min, "p50": p.p50, "p90": p.p90,
               "p99": p.p99, "p999": p.p999, "max": p.max})
    })
}

fn system_json(run: &Run, sys: Sys) -> Value {
    let c1 = run.c1.as_ref();
    let closed = run.closed.as_ref();
    let stream = run.stream.as_ref();
    let mut o = Map::new();
    let ran = [c1, closed, stream]
        .into_iter()
        .chain(run.rates.iter().map(|(_, f)| f.as_ref()))
        .any(|f| summary(f, sys).is_some());
    o.insert("measured".into(), json!(ran));
    o.insert(
        "latency_us_c1".into(),
        pct_json(summary(c1, sys).map(|s| &s.latency_us)),
    );
    o.insert(
        "added_p50_us_c1".into(),
        int(added_at(c1, sys, |s| s.latency_us.p50)),
    );
    o.insert(
        "added_p99_us_c1".into(),
        int(added_at(c1, sys, |s| s.latency_us.p99)),
    );
    o.insert(
        "added_p999_us_c1".into(),
        int(added_at(c1, sys, |s| s.latency_us.p999)),
    );
    o.insert(
        "errors_c1".into(),
        summary(c1, sys).map_or(Value::Null, |s| json!(s.errors.total)),
    );
    o.insert(
        "closed_loop_conns".into(),
        run.meta
            .closed
            .as_ref()
            .map_or(Value::Null, |c| json!(c.conns)),
    );
    o.insert(
        "closed_loop_rps".into(),
        num(summary(closed, sys).map(|s| s.achieved_rps)),
    );
    o.insert(
        "closed_loop_latency_us".into(),
        pct_json(summary(closed, sys).map(|s| &s.latency_us)),
    );
    o.insert(
        "closed_loop_errors".into(),
        summary(closed, sys).map_or(Value::Null, |s| json!(s.errors.total)),
    );
    let rates: Vec<Value> = run
        .rates
        .iter()
        .map(|(rate, f)| {
            let f = f.as_ref();
            let s = summary(f, sys);
            json!({
                "rate": rate,
                "achieved_rps": num(s.map(|s| s.achieved_rps)),
                "latency_us": pct_json(s.map(|s| &s.latency_us)),
                "added_p50_us": int(added_at(f, sys, |s| s.latency_us.p50)),
                "added_p99_us": int(added_at(f, sys, |s| s.latency_us.p99)),
                "added_p999_us": int(added_at(f, sys, |s| s.latency_us.p999)),
                "errors": s.map_or(Value::Null, |s| json!(s.errors.total)),
                "cpu_us_per_request": num(run.cpu_per_request(f, sys)),
            })
        })
        .collect();
    o.insert("fixed_rate".into(), Value::Array(rates));
    let st = summary(stream, sys);
    o.insert(
        "stream_ttft_us".into(),
        pct_json(st.and_then(|s| stream_pct(s, |x| x.ttft_us)).as_ref()),
    );
    o.insert(
        "stream_gap_us".into(),
        pct_json(st.and_then(|s| stream_pct(s, |x| x.gap_us)).as_ref()),
    );
    o.insert(
        "stream_added_ttft_p50_us".into(),
        int(stream_added(stream, sys, |x| x.ttft_us, |p| p.p50)),
    );
    o.insert(
        "stream_added_ttft_p99_us".into(),
        int(stream_added(stream, sys, |x| x.ttft_us, |p| p.p99)),
    );
    o.insert(
        "stream_added_gap_p50_us".into(),
        int(stream_added(stream, sys, |x| x.gap_us, |p| p.p50)),
    );
    o.insert(
        "stream_added_gap_p99_us".into(),
        int(stream_added(stream, sys, |x| x.gap_us, |p| p.p99)),
    );
    o.insert(
        "stream_streams".into(),
        st.and_then(|s| s.stream.as_ref())
            .map_or(Value::Null, |x| json!(x.streams)),
    );
    o.insert(
        "stream_errors".into(),
        st.map_or(Value::Null, |s| {
            json!({"total": s.errors.total, "stalled": s.errors.stalled, "lost": s.errors.lost})
        }),
    );
    let sweep = run.sweep_for(sys);
    o.insert(
        "streams_sustained".into(),
        sweep.map_or(Value::Null, |f| json!(f.max_clean_streams.unwrap_or(0))),
    );
    o.insert(
        "streams_sweep".into(),
        sweep.map_or(Value::Null, |f| {
            Value::Array(
                f.steps
                    .iter()
                    .map(|s| {
                        json!({"count": s.count, "clean": s.clean,
                               "errors": s.summary.errors.total,
                               "stalled": s.summary.errors.stalled,
                               "lost": s.summary.errors.lost})
                    })
                    .collect(),
            )
        }),
    );
    let rss = run.rss_mib(sys);
    o.insert("rss_idle_mib".into(), num(rss.idle));
    o.insert("rss_after_requests_mib".into(), num(rss.mid));
    o.insert("rss_peak_mib".into(), num(rss.peak));
    o.insert("rss_after_mib".into(), num(rss.after));
    let mut cpu = Map::new();
    cpu.insert("c1".into(), num(run.cpu_per_request(c1, sys)));
    for (rate, f) in &run.rates {
        cpu.insert(
            format!("rate_{rate:.0}"),
            num(run.cpu_per_request(f.as_ref(), sys)),
        );
    }
    if let Some(c) = &run.meta.closed {
        cpu.insert(
            format!("closed_{}", c.conns),
            num(run.cpu_per_request(closed, sys)),
        );
    }
    cpu.insert("stream".into(), num(run.cpu_per_request(stream, sys)));
    let any = cpu.values().any(|v| !v.is_null());
    o.insert("cpu_us_per_request".into(), num(headline_cpu(run, sys)));
    o.insert(
        "cpu_us_per_request_by_phase".into(),
        if any { Value::Object(cpu) } else { Value::Null },
    );
    Value::Object(o)
}

/// The CPU number the target is checked against: the highest fixed rate
/// (busy but not saturated), else the closed loop.
fn headline_cpu(run: &Run, sys: Sys) -> Option<f64> {
    run.rates
        .iter()
        .rev()
        .find_map(|(_, f)| run.cpu_per_request(f.as_ref(), sys))
        .or_else(|| run.cpu_per_request(run.closed.as_ref(), sys))
}

fn headline_cpu_phase(run: &Run) -> String {
    match run.rates.last() {
        Some((rate, _)) => format!("{rate:.0} req/s"),
        None => "closed loop".into(),
    }
}

// ---------------------------------------------------------------------------
// Checks (the targets of the performance budget) and report.md

/// A fixed rate counts as carried when at least this share of it was achieved
/// (the same share `sluice-load frontier` uses).
const MIN_ACHIEVED_SHARE: f64 = 0.9;

struct Check {
    what: String,
    got: String,
    limit: String,
    pass: Option<bool>,
}

fn fmt_i(v: Option<i64>) -> String {
    v.map_or("–".into(), |v| format!("{v}"))
}

fn fmt_f(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn mark(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "✅ pass",
        Some(false) => "❌ fail",
        None => "n/a",
    }
}

fn checks(run: &Run) -> Vec<Check> {
    let mut out = Vec::new();
    let c1 = run.c1.as_ref();
    let p99 = added_at(c1, Sys::Sluice, |s| s.latency_us.p99);
    out.push(Check {
        what: "added p99 at concurrency 1".into(),
        got: format!("{} µs", fmt_i(p99)),
        limit: "≤ 50 µs".into(),
        pass: p99.map(|v| v <= 50),
    });
    for (rate, f) in &run.rates {
        let f = f.as_ref();
        let p50 = added_at(f, Sys::Sluice, |s| s.latency_us.p50);
        out.push(Check {
            what: format!("added p50 at {rate:.0} req/s"),
            got: format!("{} µs", fmt_i(p50)),
            limit: "≤ 30 µs".into(),
            pass: p50.map(|v| v <= 30),
        });
        let mine = added_at(f, Sys::Sluice, |s| s.latency_us.p99);
        let xcore = added_at(f, Sys::Xcore, |s| s.latency_us.p99);
        let nginx = added_at(f, Sys::Nginx, |s| s.latency_us.p99);
        let refs: Vec<i64> = [xcore, nginx].into_iter().flatten().collect();
        out.push(Check {
            what: format!("added p99 at {rate:.0} req/s vs direct-xcore's and nginx's"),
            got: format!(
                "{} µs (direct-xcore {} µs, nginx {} µs)",
                fmt_i(mine),
                fmt_i(xcore),
                fmt_i(nginx)
            ),
            limit: "≤ both".into(),
            pass: mine
                .filter(|_| !refs.is_empty())
                .map(|m| refs.iter().all(|r| m <= *r)),
        });
        let s = summary(f, Sys::Sluice);
        out.push(Check {
            what: format!("errors and achieved rate at {rate:.0} req/s"),
            got: s.map_or("–".into(), |s| {
                format!("{} errors, {:.0} req/s", s.errors.total, s.achieved_rps)
            }),
            limit: format!("0, ≥ {:.0} req/s", rate * MIN_ACHIEVED_SHARE),
            pass: s.map(|s| s.errors.total == 0 && s.achieved_rps >= rate * MIN_ACHIEVED_SHARE),
        });
    }
    let cpu = headline_cpu(run, Sys::Sluice);
    out.push(Check {
        what: format!("CPU per proxied request (at {})", headline_cpu_phase(run)),
        got: format!(
            "{} µs (nginx {} µs)",
            fmt_f(cpu, 1),
            fmt_f(headline_cpu(run, Sys::Nginx), 1)
        ),
        limit: "≤ 15 µs".into(),
        pass: cpu.map(|v| v <= 15.0),
    });
    let closed = run.closed.as_ref();
    let conns = run.meta.closed.as_ref().map_or(0, |c| c.conns);
    let mine = summary(closed, Sys::Sluice).map(|s| s.achieved_rps);
    let nginx = summary(closed, Sys::Nginx).map(|s| s.achieved_rps);
    out.push(Check {
        what: format!("closed-loop throughput at {conns} connections"),
        got: format!("{} req/s (nginx {} req/s)", fmt_f(mine, 0), fmt_f(nginx, 0)),
        limit: "≥ nginx".into(),
        pass: mine.zip(nginx).map(|(m, n)| m >= n),
    });
    let stream = run.stream.as_ref();
    let ttft = stream_added(stream, Sys::Sluice, |x| x.ttft_us, |p| p.p99);
    out.push(Check {
        what: "streaming: added TTFT p99".into(),
        got: format!("{} µs", fmt_i(ttft)),
        limit: "≤ 100 µs".into(),
        pass: ttft.map(|v| v <= 100),
    });
    let gap = stream_added(stream, Sys::Sluice, |x| x.gap_us, |p| p.p99);
    out.push(Check {
        what: "streaming: added gap p99".into(),
        got: format!("{} µs", fmt_i(gap)),
        limit: "≤ 50 µs".into(),
        pass: gap.map(|v| v <= 50),
    });
    let sw = run.sweep_for(Sys::Sluice);
    let max_clean = sw.map(|f| f.max_clean_streams.unwrap_or(0));
    let tried = sw.and_then(|f| f.steps.iter().map(|s| s.count).max());
    // "Clean" is about gaps and losses; show how long the first token took there.
    let ttft_ms = sw
        .zip(max_clean)
        .and_then(|(f, n)| f.steps.iter().find(|s| s.count == n))
        .and_then(|s| s.summary.stream.as_ref())
        .map(|x| x.ttft_us.p99 as f64 / 1000.0);
    out.push(Check {
        what: "concurrent streams carried clean".into(),
        got: format!(
            "{}{} (nginx {}, direct {}; largest tried {})",
            max_clean.map_or("–".into(), |v| v.to_string()),
            ttft_ms.map_or(String::new(), |t| format!(", TTFT p99 there {t:.0} ms")),
            run.sweep_for(Sys::Nginx).map_or("–".into(), |f| f
                .max_clean_streams
                .unwrap_or(0)
                .to_string()),
            run.sweep_for(Sys::Direct).map_or("–".into(), |f| f
                .max_clean_streams
                .unwrap_or(0)
                .to_string()),
            tried.map_or("–".into(), |v| v.to_string()),
        ),
        limit: "≥ 2048".into(),
        pass: max_clean.map(|v| v >= 2048),
    });
    let rss = run.rss_mib(Sys::Sluice);
    out.push(Check {
        what: "idle RSS".into(),
        got: format!(
            "{} MiB (nginx {} MiB)",
            fmt_f(rss.idle, 1),
            fmt_f(run.rss_mib(Sys::Nginx).idle, 1)
        ),
        limit: "≤ 16 MiB".into(),
        pass: rss.idle.map(|v| v <= 16.0),
    });
    let growth = rss.idle.zip(rss.after).map(|(i, a)| (a - i) / i * 100.0);
    out.push(Check {
        what: "RSS after load vs before".into(),
        got: format!(
            "{} → {} MiB ({}%)",
            fmt_f(rss.idle, 1),
            fmt_f(rss.after, 1),
            growth.map_or("–".into(), |g| format!("{g:+.1}"))
        ),
        limit: "within 10 %".into(),
        pass: growth.map(|g| g.abs() <= 10.0),
    });
    out
}

/// One row of the side-by-side table: a value per system.
struct Row {
    label: String,
    vals: [Option<f64>; 4],
    digits: usize,
}

impl Row {
    fn new(label: impl Into<String>, digits: usize, f: impl Fn(Sys) -> Option<f64>) -> Row {
        Row {
            label: label.into(),
            vals: SYSTEMS.map(&f),
            digits,
        }
    }
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b != 0.0 => format!("{:.2}×", v / b),
        _ => "–".into(),
    }
}

fn delta(v: Option<f64>, base: Option<f64>, digits: usize) -> String {
    match (v, base) {
        (Some(v), Some(b)) => format!("{:+.digits$}", v - b),
        _ => "–".into(),
    }
}

fn side_by_side(run: &Run) -> Vec<Row> {
    fn lat(file: Option<&CompareFile>, q: fn(&Pct) -> u64) -> impl Fn(Sys) -> Option<f64> + '_ {
        move |sys: Sys| summary(file, sys).map(|s| q(&s.latency_us) as f64)
    }
    let mut rows = Vec::new();
    let c1 = run.c1.as_ref();
    rows.push(Row::new("c=1 latency p50 (µs)", 0, lat(c1, |p| p.p50)));
    rows.push(Row::new("c=1 latency p99 (µs)", 0, lat(c1, |p| p.p99)));
    rows.push(Row::new("c=1 latency p99.9 (µs)", 0, lat(c1, |p| p.p999)));
    for (rate, f) in &run.rates {
        let f = f.as_ref();
        rows.push(Row::new(
            format!("{rate:.0}/s achieved (req/s)"),
            0,
            move |sys| summary(f, sys).map(|s| s.achieved_rps),
        ));
        rows.push(Row::new(
            format!("{rate:.0}/s latency p50 (µs)"),
            0,
            lat(f, |p| p.p50),
        ));
        rows.push(Row::new(
            format!("{rate:.0}/s latency p99 (µs)"),
            0,
            lat(f, |p| p.p99),
        ));
        rows.push(Row::new(
            format!("{rate:.0}/s latency p99.9 (µs)"),
            0,
            lat(f, |p| p.p999),
        ));
    }
    let closed = run.closed.as_ref();
    let conns = run.meta.closed.as_ref().map_or(0, |c| c.conns);
    rows.push(Row::new(
        format!("closed loop {conns} conns (req/s)"),
        0,
        move |sys| summary(closed, sys).map(|s| s.achieved_rps),
    ));
    rows.push(Row::new(
        format!("closed loop {conns} conns p99 (µs)"),
        0,
        lat(closed, |p| p.p99),
    ));
    let stream = run.stream.as_ref();
    let sp = |pick: fn(&Stream) -> Pct, q: fn(&Pct) -> u64| {
        move |sys: Sys| {
            summary(stream, sys)
                .and_then(|s| stream_pct(s, pick))
                .filter(|p| p.count > 0)
                .map(|p| q(&p) as f64)
        }
    };
    rows.push(Row::new(
        "stream TTFT p50 (µs)",
        0,
        sp(|x| x.ttft_us, |p| p.p50),
    ));
    rows.push(Row::new(
        "stream TTFT p99 (µs)",
        0,
        sp(|x| x.ttft_us, |p| p.p99),
    ));
    rows.push(Row::new(
        "stream gap p50 (µs)",
        0,
        sp(|x| x.gap_us, |p| p.p50),
    ));
    rows.push(Row::new(
        "stream gap p99 (µs)",
        0,
        sp(|x| x.gap_us, |p| p.p99),
    ));
    rows.push(Row::new("concurrent streams clean", 0, |sys| {
        run.sweep_for(sys)
            .map(|f| f.max_clean_streams.unwrap_or(0) as f64)
    }));
    rows.push(Row::new(
        format!("CPU µs / request ({})", headline_cpu_phase(run)),
        1,
        |sys| headline_cpu(run, sys),
    ));
    rows.push(Row::new("RSS idle (MiB)", 1, |sys| run.rss_mib(sys).idle));
    rows.push(Row::new("RSS after request phases (MiB)", 1, |sys| {
        run.rss_mib(sys).mid
    }));
    rows.push(Row::new("RSS peak (MiB)", 1, |sys| run.rss_mib(sys).peak));
    rows.push(Row::new("RSS after (MiB)", 1, |sys| run.rss_mib(sys).after));
    rows
}

fn markdown(run: &Run, checks: &[Check]) -> String {
    let m = &run.meta;
    let mut s = String::new();
    let mode = if m.mode.is_empty() { "full" } else { &m.mode };
    let _ = writeln!(s, "# Sluice vs nginx: `bench/compare.sh` ({mode})\n");
    let _ = writeln!(
        s,
        "{} · commit `{}` · {} cores · Sluice driver `{}` · Sluice {} worker(s), nginx {} · \
         build {} s, suite {} s\n",
        m.date,
        m.git,
        m.cores,
        if m.driver.is_empty() { "?" } else { &m.driver },
        m.sluice_workers,
        m.nginx_version
            .as_deref()
            .map_or("not run".to_string(), |v| format!(
                "{v} ({} worker(s))",
                m.nginx_workers
            )),
        fmt_f(m.build_s, 0),
        fmt_f(m.suite_s, 0),
    );
    if let [start, end, ..] = m.loadavg[..] {
        let busy = start >= 0.5 * f64::from(m.cores.max(1));
        let _ = writeln!(
            s,
            "{}Load average (1 min) of the machine: {start:.2} at the start, {end:.2} at the end \
             (the suite itself adds about 1-2).{}\n",
            if busy { "⚠️ " } else { "" },
            if busy {
                " Other work was running: tails, throughput and CPU per request are inflated; \
                 rerun on a quiet machine before trusting the absolute numbers."
            } else {
                ""
            }
        );
    }
    if !m.layout.is_empty() {
        let layout: Vec<String> = m
            .layout
            .iter()
            .map(|(k, v)| format!("{k} → core {v}"))
            .collect();
        let _ = writeln!(s, "Pinning: {}.\n", layout.join(", "));
    }
    let _ = writeln!(s, "## Targets (Sluice)\n");
    let _ = writeln!(s, "| target | measured | limit | |\n|---|---|---|---|");
    for c in checks {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.what,
            c.got,
            c.limit,
            mark(c.pass)
        );
    }
    let passed = checks.iter().filter(|c| c.pass == Some(true)).count();
    let failed = checks.iter().filter(|c| c.pass == Some(false)).count();
    let _ = writeln!(
        s,
        "\n{passed} passed, {failed} failed, {} n/a. Added = system − direct at the same \
         percentile, from the merged interleaved rounds.\n",
        checks.len() - passed - failed
    );

    let _ = writeln!(s, "## Side by side\n");
    let _ = writeln!(
        s,
        "| metric | direct | direct-xcore | nginx | nginx − direct | nginx ÷ direct | \
         sluice | sluice − direct | sluice ÷ direct |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in side_by_side(run) {
        let [d, x, n, sl] = r.vals;
        let f = |v| fmt_f(v, r.digits);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            f(d),
            f(x),
            f(n),
            delta(n, d, r.digits),
            ratio(n, d),
            f(sl),
            delta(sl, d, r.digits),
            ratio(sl, d),
        );
    }
    let _ = writeln!(
        s,
        "\nDirect systems run no proxy, so they have no CPU or RSS of their own here (–)."
    );

    let _ = writeln!(s, "\n## Runs and errors\n");
    let _ = writeln!(
        s,
        "| phase | system | requests | ok | req/s | errors |\n|---|---|--:|--:|--:|---|"
    );
    let mut phases: Vec<(String, Option<&CompareFile>)> = vec![("c=1".into(), run.c1.as_ref())];
    for (rate, f) in &run.rates {
        phases.push((format!("{rate:.0} req/s"), f.as_ref()));
    }
    phases.push((
        format!("closed {} conns", conns_of(run)),
        run.closed.as_ref(),
    ));
    if let Some(st) = &m.stream {
        phases.push((
            format!(
                "stream {}×{} ms, c={}",
                st.chunks, st.gap_ms, st.concurrency
            ),
            run.stream.as_ref(),
        ));
    }
    for (name, f) in &phases {
        let Some(f) = f else {
            let _ = writeln!(s, "| {name} | – | – | – | – | not run |");
            continue;
        };
        for sys in SYSTEMS {
            if let Some(x) = f.get(sys) {
                let _ = writeln!(
                    s,
                    "| {name} ({}×{:.1}s) | {} | {} | {} | {:.0} | {} |",
                    f.rounds,
                    f.round_duration_s,
                    sys.label(),
                    x.requests,
                    x.ok,
                    x.achieved_rps,
                    x.errors.describe()
                );
            }
        }
    }
    if let Some(sw) = &m.sweep {
        let _ = writeln!(
            s,
            "\nStream sweep ({} chunks at {} ms, closed loop per count {:?}; clean = no error, \
             no chunk gap over 10× the pacing, no lost chunk):\n",
            sw.chunks, sw.gap_ms, sw.counts
        );
        let _ = writeln!(
            s,
            "| system | count | clean | ok | TTFT p99 (µs) | gap p99 (µs) | errors |\n\
             |---|--:|---|--:|--:|--:|---|"
        );
        for sys in SYSTEMS {
            let Some(f) = run.sweep_for(sys) else {
                continue;
            };
            for st in &f.steps {
                let x = st.summary.stream.clone().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    sys.label(),
                    st.count,
                    if st.clean { "yes" } else { "no" },
                    st.summary.ok,
                    x.ttft_us.p99,
                    x.gap_us.p99,
                    st.summary.errors.describe()
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Notes\n");
    let _ = writeln!(
        s,
        "- `latency.svg` draws each system's latency spectrum at concurrency 1 and at the first \
         fixed rate. sluice-load's JSON holds only min, p50, p90, p99, p99.9 and max, so each \
         line joins those six points (max is placed at the nines of its sample count, capped at \
         99.99); the shape between points is not measured."
    );
    let _ = writeln!(
        s,
        "- CPU per request is the CPU time (user + system, from /proc) the proxy's processes \
         spent during their own rounds divided by the requests completed in them; nginx sums \
         master and workers. /proc counts CPU in clock ticks (10 ms), so short quick runs \
         carry about ±1 µs per request of rounding. The stream phase's figure in report.json \
         is per stream, not per chunk. RSS idle is read after start-up and one request per route, peak \
         is VmHWM (or the samplers' peak, whichever is higher; nginx sums its processes), after \
         is read a few seconds after the last run."
    );
    let _ = writeln!(
        s,
        "- The machine is shared and noisy; differences of a few µs between runs are within \
         noise. Compare systems inside one report, not across reports."
    );
    s
}

fn conns_of(run: &Run) -> u64 {
    run.meta.closed.as_ref().map_or(0, |c| c.conns)
}

// ---------------------------------------------------------------------------
// latency.svg

/// `-log10(1 - q)`: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

const X_MAX: f64 = 4.0;

fn spectrum(p: &Pct) -> Vec<(f64, f64)> {
    let max_x = if p.count > 1 {
        (p.count as f64).log10().min(X_MAX)
    } else {
        X_MAX
    };
    let mut pts = vec![
        (0.0, p.min),
        (nines(0.5), p.p50),
        (1.0, p.p90),
        (2.0, p.p99),
        (3.0, p.p999),
    ];
    pts.retain(|(x, _)| *x < max_x);
    pts.push((max_x, p.max));
    pts.into_iter().map(|(x, y)| (x, y.max(1) as f64)).collect()
}

fn draw_svg(run: &Run, path: &Path) -> Res<()> {
    let mut panels: Vec<(String, Option<&CompareFile>)> =
        vec![("concurrency 1, closed loop".into(), run.c1.as_ref())];
    if let Some((rate, f)) = run.rates.first() {
        panels.push((format!("{rate:.0} req/s, open loop"), f.as_ref()));
    }
    let width = 620 * panels.len() as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len()));
    for ((title, file), area) in panels.iter().zip(areas.iter()) {
        let series: Vec<(Sys, Vec<(f64, f64)>)> = SYSTEMS
            .iter()
            .filter_map(|&sys| {
                summary(*file, sys)
                    .filter(|s| s.latency_us.count > 0)
                    .map(|s| (sys, spectrum(&s.latency_us)))
            })
            .collect();
        let ys = series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1));
        let lo = ys.clone().fold(f64::INFINITY, f64::min);
        let hi = ys.fold(0.0, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            ((lo / 1.3).max(1.0), hi * 1.3)
        } else {
            (1.0, 1000.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("latency spectrum: {title}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..X_MAX, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        let fmt_x = |x: &f64| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                let mut t = format!("{p:.4}");
                while t.ends_with('0') {
                    t.pop();
                }
                t.trim_end_matches('.').to_string()
            }
        };
        let fmt_y = |y: &f64| format!("{y:.0}");
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .x_desc("percentile (log nines; points: min, p50, p90, p99, p99.9, max)")
            .y_desc("latency (µs)")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| e.to_string())?;
        for (sys, pts) in &series {
            let color = sys.color();
            let style = ShapeStyle::from(&color).stroke_width(2);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(|e| e.to_string())?
                .label(sys.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

// ---------------------------------------------------------------------------

fn parse_args() -> Res<(PathBuf, PathBuf)> {
    let mut raw = None;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--raw" => raw = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: sluice-bench-report --raw DIR --out DIR");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    match (raw, out) {
        (Some(r), Some(o)) => Ok((r, o)),
        _ => Err("usage: sluice-bench-report --raw DIR --out DIR".into()),
    }
}

fn run() -> Res<()> {
    let (raw, out) = parse_args()?;
    let run = Run::load(&raw)?;
    std::fs::create_dir_all(&out)?;
    let checks = checks(&run);

    let mut top = Map::new();
    for sys in SYSTEMS {
        top.insert(sys.key().into(), system_json(&run, sys));
    }
    let m = &run.meta;
    top.insert(
        "targets".into(),
        Value::Array(
            checks
                .iter()
                .map(|c| json!({"target": c.what, "measured": c.got, "limit": c.limit, "pass": c.pass}))
                .collect(),
        ),
    );
    top.insert(
        "meta".into(),
        json!({
            "mode": m.mode, "date": m.date, "git": m.git, "cores": m.cores,
            "loadavg_start_end": m.loadavg,
            "driver": m.driver, "nginx_version": m.nginx_version,
            "layout": m.layout, "sluice_workers": m.sluice_workers,
            "nginx_workers": m.nginx_workers, "build_s": m.build_s, "suite_s": m.suite_s,
            "stream": m.stream.as_ref().map(|s| json!({"chunks": s.chunks, "gap_ms": s.gap_ms, "concurrency": s.concurrency})),
            "sweep": m.sweep.as_ref().map(|s| json!({"counts": s.counts, "chunks": s.chunks, "gap_ms": s.gap_ms})),
            "spectrum_points": "min,p50,p90,p99,p999,max",
        }),
    );
    let json_path = out.join("report.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&Value::Object(top))? + "\n",
    )?;
    let md_path = out.join("report.md");
    std::fs::write(&md_path, markdown(&run, &checks))?;
    let svg_path = out.join("latency.svg");
    draw_svg(&run, &svg_path)?;
    println!(
        "wrote {}, {}, {}",
        md_path.display(),
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}
