//! What a run measured: merged histograms and counters ([`RunReport`]), its
//! serializable summary ([`RunSummary`]) and the human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hist::{fmt_us, Hist, Percentiles, Table};
use super::procstat::{self, PidReport};
use super::{Load, RunSpec};

/// Failed or degraded requests by kind. A request counts once among
/// `connect`, `timeout`, `io`, `protocol` and `status`; a streamed 2xx
/// response may in addition count as `stalled` and/or `lost`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Every count below added up.
    pub total: u64,
    /// The TCP connection could not be opened.
    pub connect: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// The connection was reset or closed mid-response (not streaming).
    pub io: u64,
    /// The response broke HTTP/1.1 or SSE framing or a size limit.
    pub protocol: u64,
    /// Non-2xx responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Streams with a content gap above the stall bound.
    pub stalled: u64,
    /// Streams missing chunks or their end marker.
    pub lost: u64,
}

impl ErrorCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        self.protocol += other.protocol;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
        self.stalled += other.stalled;
        self.lost += other.lost;
        self.retotal();
    }

    /// Recomputes `total` from the kinds.
    pub fn retotal(&mut self) {
        self.total = self.connect
            + self.timeout
            + self.io
            + self.protocol
            + self.status.values().sum::<u64>()
            + self.stalled
            + self.lost;
    }

    /// `kind=count` pairs of the nonzero kinds, e.g. `timeout=3 503=2`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (name, n) in [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("io", self.io),
            ("protocol", self.protocol),
        ] {
            if n > 0 {
                let _ = write!(out, "{name}={n} ");
            }
        }
        for (code, n) in &self.status {
            let _ = write!(out, "{code}={n} ");
        }
        for (name, n) in [("stalled", self.stalled), ("lost", self.lost)] {
            if n > 0 {
                let _ = write!(out, "{name}={n} ");
            }
        }
        if out.is_empty() {
            "none".to_owned()
        } else {
            out.trim_end().to_owned()
        }
    }
}

/// One worker thread's measurements, merged into a [`RunReport`].
#[derive(Debug)]
pub(crate) struct ThreadReport {
    pub elapsed: Duration,
    pub requests: u64,
    pub ok: u64,
    pub errors: ErrorCounts,
    pub latency: Hist,
    pub ttfb: Hist,
    pub sched_lag: Hist,
    pub ttft: Hist,
    pub gaps: Hist,
    pub streams: u64,
    pub events: u64,
    pub content_events: u64,
}

impl ThreadReport {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            elapsed: Duration::ZERO,
            requests: 0,
            ok: 0,
            errors: ErrorCounts::default(),
            latency: Hist::new()?,
            ttfb: Hist::new()?,
            sched_lag: Hist::new()?,
            ttft: Hist::new()?,
            gaps: Hist::new()?,
            streams: 0,
            events: 0,
            content_events: 0,
        })
    }
}

/// The merged result of a run (or, for `compare`, of several rounds).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The target URL.
    pub url: String,
    /// The offered load.
    pub load: Load,
    /// Worker threads.
    pub threads: usize,
    /// Whether streaming accounting was on.
    pub streaming: bool,
    /// Wall time from start until the last worker finished (summed over merged rounds).
    pub elapsed: Duration,
    /// Requests that finished, whatever the outcome.
    pub requests: u64,
    /// Requests that completed with a 2xx response.
    pub ok: u64,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Latency of ok requests.
    pub latency: Hist,
    /// Time to the response head.
    pub ttfb: Hist,
    /// Open loop: how late each request was sent against its schedule.
    pub sched_lag: Hist,
    /// Time to the first content event (streaming).
    pub ttft: Hist,
    /// Gaps between successive content events (streaming).
    pub gaps: Hist,
    /// Streamed 2xx responses.
    pub streams: u64,
    /// SSE events received.
    pub events: u64,
    /// SSE events that carried content.
    pub content_events: u64,
    /// CPU and RSS of the sampled processes.
    pub pids: Vec<PidReport>,
    /// Each core's busy and total clock ticks during the run (`/proc/stat`).
    pub core_ticks: Vec<procstat::CoreTicks>,
}

impl RunReport {
    /// An empty report for `spec`.
    pub fn new(spec: &RunSpec) -> io::Result<Self> {
        Ok(Self {
            url: spec.url.clone(),
            load: spec.load,
            threads: spec.threads,
            streaming: spec.stream.is_some(),
            elapsed: Duration::ZERO,
            requests: 0,
            ok: 0,
            errors: ErrorCounts::default(),
            latency: Hist::new()?,
            ttfb: Hist::new()?,
            sched_lag: Hist::new()?,
            ttft: Hist::new()?,
            gaps: Hist::new()?,
            streams: 0,
            events: 0,
            content_events: 0,
            pids: Vec::new(),
            core_ticks: Vec::new(),
        })
    }

    pub(crate) fn absorb_thread(&mut self, t: ThreadReport) {
        self.elapsed = self.elapsed.max(t.elapsed);
        self.requests += t.requests;
        self.ok += t.ok;
        self.errors.add(&t.errors);
        self.latency.add(&t.latency);
        self.ttfb.add(&t.ttfb);
        self.sched_lag.add(&t.sched_lag);
        self.ttft.add(&t.ttft);
        self.gaps.add(&t.gaps);
        self.streams += t.streams;
        self.events += t.events;
        self.content_events += t.content_events;
    }

    /// Folds a later run against the same target into this report
    /// (histograms and counts add, elapsed times add, pid reports merge).
    pub fn merge(&mut self, later: &RunReport) {
        self.elapsed += later.elapsed;
        self.requests += later.requests;
        self.ok += later.ok;
        self.errors.add(&later.errors);
        self.latency.add(&later.latency);
        self.ttfb.add(&later.ttfb);
        self.sched_lag.add(&later.sched_lag);
        self.ttft.add(&later.ttft);
        self.gaps.add(&later.gaps);
        self.streams += later.streams;
        self.events += later.events;
        self.content_events += later.content_events;
        procstat::merge_reports(&mut self.pids, &later.pids);
        procstat::add_core_ticks(&mut self.core_ticks, &later.core_ticks);
    }

    /// Successful requests per second of wall time.
    pub fn achieved_rps(&self) -> f64 {
        per_sec(self.ok, self.elapsed)
    }

    /// The serializable summary.
    pub fn summary(&self) -> RunSummary {
        let (mode, rate, concurrency) = match self.load {
            Load::Rate(r) => ("open", Some(r), None),
            Load::Concurrency(c) => ("closed", None, Some(c)),
        };
        RunSummary {
            url: self.url.clone(),
            mode: mode.to_owned(),
            rate,
            concurrency,
            threads: self.threads,
            elapsed_s: self.elapsed.as_secs_f64(),
            requests: self.requests,
            ok: self.ok,
            achieved_rps: self.achieved_rps(),
            latency_us: self.latency.percentiles(),
            ttfb_us: self.ttfb.percentiles(),
            sched_lag_us: rate.map(|_| self.sched_lag.percentiles()),
            errors: self.errors.clone(),
            stream: self.streaming.then(|| StreamSummary {
                streams: self.streams,
                events: self.events,
                content_events: self.content_events,
                events_per_s: per_sec(self.events, self.elapsed),
                ttft_us: self.ttft.percentiles(),
                gap_us: self.gaps.percentiles(),
                stalled: self.errors.stalled,
                lost: self.errors.lost,
            }),
            pids: self.pids.clone(),
            core_busy: self
                .core_ticks
                .iter()
                .map(procstat::CoreTicks::busy_share)
                .collect(),
        }
    }

    /// The human report: a header line, a percentile table, errors, pids.
    pub fn render(&self) -> String {
        let s = self.summary();
        let mut out = String::new();
        let load = match self.load {
            Load::Rate(r) => format!("open loop at {r:.0}/s"),
            Load::Concurrency(c) => format!("closed loop, concurrency {c}"),
        };
        let _ = writeln!(
            out,
            "{}  {load}, {} thread(s): {} requests, {} ok in {:.2}s = {:.0} req/s",
            self.url, self.threads, self.requests, self.ok, s.elapsed_s, s.achieved_rps
        );
        let mut t = Table::percentile_header();
        t.percentile_row("latency", &s.latency_us);
        t.percentile_row("ttfb", &s.ttfb_us);
        if let Some(lag) = &s.sched_lag_us {
            t.percentile_row("send lag", lag);
        }
        if let Some(st) = &s.stream {
            t.percentile_row("ttft", &st.ttft_us);
            t.percentile_row("chunk gap", &st.gap_us);
        }
        out.push_str(&t.render());
        if let Some(st) = &s.stream {
            let _ = writeln!(
                out,
                "streams: {}  events: {} ({} with content)  {:.0} events/s",
                st.streams, st.events, st.content_events, st.events_per_s
            );
        }
        let _ = writeln!(out, "errors: {}", self.errors.describe());
        out.push_str(&render_pids(&self.pids));
        out
    }
}

/// The pid table (`--pid`), empty when nothing was sampled.
pub(crate) fn render_pids(pids: &[PidReport]) -> String {
    if pids.is_empty() {
        return String::new();
    }
    let mut t = Table::new(&["pid", "cpu", "cpu/req", "rss idle", "rss peak", "rss after"]);
    for p in pids {
        t.row(vec![
            p.pid.to_string(),
            fmt_us(p.cpu_us),
            format!("{:.1}µs", p.cpu_us_per_request),
            format!("{:.1}MiB", p.rss_idle_mib),
            format!("{:.1}MiB", p.rss_peak_mib),
            format!("{:.1}MiB", p.rss_after_mib),
        ]);
    }
    t.render()
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The JSON form of a [`RunReport`]; see the module docs for the schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The target URL.
    pub url: String,
    /// `"open"` or `"closed"`.
    pub mode: String,
    /// Offered rate (open loop).
    pub rate: Option<f64>,
    /// Concurrency (closed loop).
    pub concurrency: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Wall time in seconds.
    pub elapsed_s: f64,
    /// Requests finished, whatever the outcome.
    pub requests: u64,
    /// Requests with a complete 2xx response.
    pub ok: u64,
    /// `ok / elapsed_s`.
    pub achieved_rps: f64,
    /// Latency of ok requests.
    pub latency_us: Percentiles,
    /// Time to the response head.
    pub ttfb_us: Percentiles,
    /// Open loop: send time minus scheduled time.
    pub sched_lag_us: Option<Percentiles>,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Stream metrics when streaming.
    pub stream: Option<StreamSummary>,
    /// Sampled processes.
    pub pids: Vec<PidReport>,
    /// Busy share (0 to 1) of each core of the machine during the run, core 0 first
    /// (from `/proc/stat`: everything but idle and iowait).
    #[serde(default)]
    pub core_busy: Vec<f64>,
}

/// Stream metrics of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// Streamed 2xx responses.
    pub streams: u64,
    /// SSE events (frames) received.
    pub events: u64,
    /// SSE events carrying content.
    pub content_events: u64,
    /// Events per second of wall time.
    pub events_per_s: f64,
    /// Time to first content event.
    pub ttft_us: Percentiles,
    /// Gaps between successive content events.
    pub gap_us: Percentiles,
    /// Streams that stalled.
    pub stalled: u64,
    /// Streams that lost chunks.
    pub lost: u64,
}
