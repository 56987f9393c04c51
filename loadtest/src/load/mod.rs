//! `sluice-load`: an open-loop HTTP/1.1 load generator with HDR histograms.
//!
//! Everything builds on one call, [`run`]: a [`RunSpec`] in, a [`RunReport`]
//! out. The subcommands are loops around it: [`compare`](compare::compare)
//! interleaves short runs against several targets, [`frontier`](sweep::frontier)
//! sweeps rates and [`streams`](sweep::streams) sweeps concurrent streams.
//!
//! ```text
//!  run(spec) ─┬─ thread 0: monoio runtime ─ scheduler ─┬─ task ─ Conn (keep-alive pool)
//!             │                                         └─ task ─ Conn ...
//!             ├─ thread N-1: ...
//!             ├─ procstat sampler (--pid)
//!             └─ progress bar (stderr) ──► merge per-thread histograms ─► RunReport
//! ```
//!
//! # Measurement
//!
//! * **Open loop** ([`Load::Rate`]): each of the `threads` workers sends
//!   `rate / threads` requests per second; request `i` is *scheduled* at
//!   `start + i / rate` and launched as its own task on a connection from a
//!   keep-alive pool (a new one is opened when none is idle, up to
//!   `max_conns`; beyond that requests queue). Latency is completion minus
//!   the **scheduled** time, so a server that stalls is charged for every
//!   request that should have been sent meanwhile (no coordinated omission).
//!   monoio's timer has millisecond ticks, so a small thread per worker
//!   (`ticker`) sleeps with OS precision and wakes the scheduler at each due
//!   time; the remaining send lag (tens of µs) is part of the latency and is
//!   also reported on its own (`sched_lag_us`).
//! * **Closed loop** ([`Load::Concurrency`]): `concurrency` tasks, each with
//!   its own connection, send back to back; latency is completion minus send.
//! * Times to first byte (the response head) and to first token are measured
//!   from the same reference as latency. Gaps are between successive SSE
//!   events that carry content (see [`sse`]).
//!
//! Each request ends in exactly one of: ok (2xx, complete), `status` (non-2xx
//! by code), `connect`, `timeout`, `io` (reset or closed mid-response),
//! `protocol` (malformed HTTP or SSE). A streamed 2xx response can in
//! addition be `stalled` (a content gap above the stall bound) and `lost`
//! (fewer content events than expected, or no end marker, or cut short).
//! Only ok requests enter the latency histograms.
//!
//! # JSON report (`--json FILE`)
//!
//! All durations are integers in microseconds; percentiles are objects
//! `{count, min, mean, p50, p90, p99, p999, max}` ([`Percentiles`]); added
//! latencies are signed `{p50, p90, p99, p999, max}` ([`AddedPercentiles`]).
//!
//! `run` writes one [`RunSummary`]:
//!
//! ```text
//! { "url": str, "mode": "open"|"closed", "rate": f64|null, "concurrency": int|null,
//!   "threads": int, "elapsed_s": f64, "requests": int, "ok": int, "achieved_rps": f64,
//!   "latency_us": Percentiles, "ttfb_us": Percentiles, "sched_lag_us": Percentiles|null,
//!   "errors": { "total": int, "connect": int, "timeout": int, "io": int, "protocol": int,
//!               "status": { "<code>": int, ... }, "stalled": int, "lost": int },
//!   "stream": null | { "streams": int, "events": int, "content_events": int,
//!                      "events_per_s": f64, "ttft_us": Percentiles, "gap_us": Percentiles,
//!                      "stalled": int, "lost": int },
//!   "pids": [ { "pid": int, "cpu_us": int, "user_us": int, "requests": int,
//!               "cpu_us_per_request": f64,
//!               "rss_idle_mib": f64, "rss_peak_mib": f64, "rss_after_mib": f64 } ],
//!   "core_busy": [f64] }
//! ```
//!
//! `core_busy` is each core's busy share (0 to 1) during the run, core 0 first.
//!
//! ```text
//! ```
//!
//! `compare` writes `{ "rounds": int, "round_duration_s": f64, "targets": [
//! { "name": str, "baseline": bool, "summary": RunSummary, "rounds": [RunSummary],
//! "added": [ { "baseline": str,
//! "latency_us": AddedPercentiles, "ttfb_us": AddedPercentiles,
//! "ttft_us": AddedPercentiles|null, "gap_us": AddedPercentiles|null } ] } ] }`
//! ([`compare::CompareReport`]); each target's summary merges all its rounds, and
//! `rounds` holds them one by one.
//!
//! `idle` writes `{ "url": str, "connections": int, "held": int, "failed": int,
//! "first_error": str|null, "open_s": f64, "hold_s": f64, "signalled": bool }`
//! ([`idle::IdleReport`]).
//!
//! `frontier` writes `{ "bounds_ms": [f64], "targets": [ { "name": str, "url": str,
//! "steps": [ { "rate": f64, "summary": RunSummary } ], "sustained": [ { "p99_bound_ms": f64,
//! "max_rate": f64|null } ] } ] }` ([`sweep::FrontierReport`]).
//!
//! `streams` writes `{ "expect_chunks": int|null, "stall_ms": int, "steps": [ { "count": int,
//! "clean": bool, "events_per_s": f64, "summary": RunSummary } ], "max_clean_streams":
//! int|null }` ([`sweep::StreamsReport`]).

use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub mod cli;
pub mod client;
pub mod compare;
pub mod hist;
pub mod idle;
pub mod procstat;
mod report;
pub mod sse;
pub mod sweep;
mod ticker;
mod worker;

pub use client::Endpoint;
pub use hist::{AddedPercentiles, Hist, Percentiles};
pub use procstat::PidReport;
pub use report::{ErrorCounts, RunReport, RunSummary, StreamSummary};

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop: this many requests per second in total, on a fixed schedule.
    Rate(f64),
    /// Closed loop: this many requests in flight at all times.
    Concurrency(usize),
}

/// Streaming accounting, enabled for `--stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// A content gap longer than this marks the stream stalled.
    pub stall: Duration,
    /// Content events each stream must carry; fewer means chunks were lost.
    pub expect_chunks: Option<u32>,
}

impl StreamSpec {
    /// The stall bound the CLI derives: `stall_ms` if given, else 10 × the
    /// expected gap if given, else 1 s.
    pub fn new(
        stall_ms: Option<u64>,
        expect_gap_ms: Option<u64>,
        expect_chunks: Option<u32>,
    ) -> Self {
        let ms = stall_ms
            .or(expect_gap_ms.map(|g| g.saturating_mul(10)))
            .unwrap_or(1_000);
        Self {
            stall: Duration::from_millis(ms),
            expect_chunks,
        }
    }
}

/// Everything one [`run`] needs. Build with [`RunSpec::new`], then adjust
/// the public fields.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The target, resolved once.
    pub endpoint: Endpoint,
    /// The URL as given, for reports.
    pub url: String,
    /// Open or closed loop.
    pub load: Load,
    /// Stop scheduling after this long (at least one of this and `requests`).
    pub duration: Option<Duration>,
    /// Stop after this many requests in total.
    pub requests: Option<u64>,
    /// The request body; empty sends `GET`.
    pub body: Bytes,
    /// Extra request headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Streaming accounting (`None`: bodies are read and discarded).
    pub stream: Option<StreamSpec>,
    /// Worker threads, each with its own runtime.
    pub threads: usize,
    /// Cores to pin worker `i` to (`pin_cores[i % len]`); empty: no pinning.
    pub pin_cores: Vec<usize>,
    /// Connections per worker thread at most (open loop).
    pub max_conns: usize,
    /// Per-request timeout, from the actual send.
    pub timeout: Duration,
    /// Processes to sample for CPU and RSS.
    pub pids: Vec<u32>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl RunSpec {
    /// A spec for `url` with the defaults of the CLI: 10 s, the default chat
    /// body for `mock-fast`, 1 thread, 1024 connections, 30 s timeout.
    pub fn new(url: &str, load: Load) -> io::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::parse(url)?,
            url: url.to_owned(),
            load,
            duration: Some(Duration::from_secs(10)),
            requests: None,
            body: default_body("mock-fast", false),
            headers: Vec::new(),
            stream: None,
            threads: 1,
            pin_cores: Vec::new(),
            max_conns: 1024,
            timeout: Duration::from_secs(30),
            pids: Vec::new(),
            progress: false,
        })
    }

    /// The same spec aimed at another URL.
    pub fn retarget(&self, url: &str) -> io::Result<Self> {
        Ok(Self {
            endpoint: Endpoint::parse(url)?,
            url: url.to_owned(),
            ..self.clone()
        })
    }

    fn validate(&self) -> io::Result<()> {
        let bad = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m.to_owned()));
        match self.load {
            Load::Rate(r) if !(r.is_finite() && r > 0.0) => return bad("rate must be positive"),
            Load::Concurrency(0) => return bad("concurrency must be at least 1"),
            _ => {}
        }
        if self.duration.is_none() && self.requests.is_none() {
            return bad("a run needs a duration or a request count");
        }
        if self.threads == 0 || self.max_conns == 0 {
            return bad("threads and max-conns must be at least 1");
        }
        Ok(())
    }
}

/// A realistic ~1 KB OpenAI chat completion request: a system and a user
/// message, `max_tokens`, `temperature`, and `"stream": true` when asked.
pub fn default_body(model: &str, stream: bool) -> Bytes {
    let body = serde_json::json!({
        "model": model,
        "messages": [
            {
                "role": "system",
                "content": "You are a concise, careful assistant for an engineering team. \
                    Answer in plain English, cite the relevant function or file when you refer \
                    to code, prefer short paragraphs over lists, and say so plainly when you do \
                    not know. Never invent APIs, flags or version numbers."
            },
            {
                "role": "user",
                "content": "Our service sits behind a reverse proxy and we see p99 latency jump \
                    from 4 ms to 40 ms whenever traffic passes about 3,000 requests per second, \
                    while p50 barely moves. CPU on the proxy is around 35% and there are no \
                    errors in its logs. The upstream keeps connections alive for 60 seconds and \
                    the proxy pool is capped at 256 connections per worker. What are the three \
                    most likely causes, in order, and what single measurement would tell each \
                    of them apart? Please keep the answer under 200 words."
            }
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "stream": stream,
        "user": "sluice-load"
    });
    Bytes::from(body.to_string())
}

/// Runs one load test to completion and reports it. Blocks the calling
/// thread; spawns `spec.threads` workers (plus a sampler with `--pid`).
pub fn run(spec: &RunSpec) -> io::Result<RunReport> {
    spec.validate()?;
    let request = spec.endpoint.request_bytes(&spec.headers, &spec.body);
    let threads = spec.threads;
    let spec = Arc::new(spec.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<worker::Counters>> = (0..threads).map(|_| Arc::default()).collect();
    let sampler = procstat::Sampler::start(&spec.pids)?;
    let ticks_before = procstat::core_ticks().unwrap_or_default();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for (index, counters) in counters.iter().enumerate() {
        let ctx = worker::ThreadCtx {
            spec: Arc::clone(&spec),
            request: request.clone(),
            index,
            counters: Arc::clone(counters),
            stop: Arc::clone(&stop),
        };
        match std::thread::Builder::new()
            .name(format!("sluice-load-{index}"))
            .spawn(move || worker::run_thread(ctx))
        {
            Ok(h) => handles.push(h),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let bar = progress_bar(&spec);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(bar) = &bar {
            let done: u64 = counters
                .iter()
                .map(|c| c.done.load(Ordering::Relaxed))
                .sum();
            let errors: u64 = counters
                .iter()
                .map(|c| c.errors.load(Ordering::Relaxed))
                .sum();
            let secs = start.elapsed().as_secs_f64().max(1e-3);
            match (spec.requests, spec.duration) {
                (Some(_), _) => bar.set_position(done),
                (None, Some(_)) => bar.set_position(start.elapsed().as_millis() as u64),
                (None, None) => {}
            }
            bar.set_message(format!(
                "{done} done, {errors} errors, {:.0}/s",
                done as f64 / secs
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut report = RunReport::new(&spec)?;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => report.absorb_thread(t),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(io::Error::other("a load worker thread panicked"));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    report.pids = sampler.finish(report.ok);
    let ticks_after = procstat::core_ticks().unwrap_or_default();
    report.core_ticks = procstat::ticks_between(&ticks_before, &ticks_after);
    Ok(report)
}

fn progress_bar(spec: &RunSpec) -> Option<ProgressBar> {
    if !spec.progress || !io::stderr().is_terminal() {
        return None;
    }
    let (len, template) = match (spec.requests, spec.duration) {
        (Some(n), _) => (n, "{spinner} {prefix} [{bar:30}] {pos}/{len} {msg}"),
        (None, Some(d)) => (
            d.as_millis() as u64,
            "{spinner} {prefix} [{bar:30}] {elapsed}/{duration} {msg}",
        ),
        (None, None) => return None,
    };
    let style = ProgressStyle::with_template(template)
        .ok()?
        .progress_chars("=> ");
    let bar =
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(spec.url.clone());
    Some(bar)
}
