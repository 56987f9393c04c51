//! `report.md`: the run, the targets with their marks, every system side by side, the
//! idle-connections phase, every run with its errors, and notes on reading it.

use std::fmt::Write as _;

use super::input::{CompareFile, Pct, Run, Stream, Sys, SYSTEMS};
use super::measure::{rps_median, stream_pct, summary};
use super::targets::{fmt_f, Check};

fn mark(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "✅ pass",
        Some(false) => "❌ fail",
        None => "n/a",
    }
}

/// One row of the side-by-side table: a value per system, in [`SYSTEMS`] order.
struct Row {
    label: String,
    vals: [Option<f64>; 5],
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

fn headline_phase(run: &Run) -> (String, Option<&CompareFile>) {
    match run.top_rate() {
        Some((rate, f)) => (format!("{rate:.0} req/s"), f),
        None => ("closed loop".into(), run.closed.as_ref()),
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
        format!("closed loop {conns} conns, median of rounds (req/s)"),
        0,
        move |sys| rps_median(closed, sys),
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
    let (phase, f) = headline_phase(run);
    rows.push(Row::new(
        format!("CPU µs / request ({phase}, median)"),
        1,
        |sys| run.cpu_median(f, sys).map(|c| c.total),
    ));
    rows.push(Row::new(
        format!("… of which kernel ({phase})"),
        1,
        |sys| run.cpu_median(f, sys).map(|c| c.kernel),
    ));
    rows.push(Row::new(
        "CPU µs / request (closed loop, median)",
        1,
        |sys| run.cpu_median(closed, sys).map(|c| c.total),
    ));
    rows.push(Row::new("RSS idle (MiB)", 1, |sys| run.rss_mib(sys).idle));
    rows.push(Row::new("RSS after request phases (MiB)", 1, |sys| {
        run.rss_mib(sys).mid
    }));
    rows.push(Row::new("RSS peak at 2048 streams (MiB)", 1, |sys| {
        run.peak_at_streams(sys, 2048)
    }));
    rows.push(Row::new("RSS peak (MiB)", 1, |sys| run.rss_mib(sys).peak));
    rows.push(Row::new("RSS after (MiB)", 1, |sys| run.rss_mib(sys).after));
    rows.push(Row::new("RSS with idle conns held (MiB)", 1, |sys| {
        run.idle_conns(sys).map(|c| c.while_held)
    }));
    rows.push(Row::new("RSS per idle conn (KiB)", 2, |sys| {
        run.idle_conns(sys).and_then(|c| c.per_conn_kib)
    }));
    rows
}

fn checks_table(s: &mut String, checks: &[Check]) {
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
        "\n{passed} passed, {failed} failed, {} n/a.\n",
        checks.len() - passed - failed
    );
}

fn header(s: &mut String, run: &Run) {
    let m = &run.meta;
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
    let _ = writeln!(
        s,
        "Systems: `sluice` runs without keys, ledger or access log; `sluice_full` requires a \
         key (one key with rpm/tpm/budget limits far above the load), keeps the SQLite usage \
         ledger, writes the JSON access log to a file and serves metrics: what users run.\n"
    );
}

/// The whole report.md.
pub(crate) fn report(run: &Run, targets: &[Check], budget: &[Check]) -> String {
    let m = &run.meta;
    let mut s = String::new();
    header(&mut s, run);
    let rounds: Vec<String> = m.rounds.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        s,
        "## Targets (issue 15: against nginx, and what the features cost)\n"
    );
    let _ = writeln!(
        s,
        "Medians over the interleaved rounds ({}): each figure is computed per round, added \
         latency against direct's round of the same index.\n",
        if rounds.is_empty() {
            "rounds not recorded".to_string()
        } else {
            format!("rounds per phase: {}", rounds.join(", "))
        }
    );
    checks_table(&mut s, targets);
    let _ = writeln!(s, "## Design budget (absolute, DESIGN.md; merged rounds)\n");
    checks_table(&mut s, budget);

    let _ = writeln!(s, "## Side by side\n");
    let _ = writeln!(
        s,
        "| metric | direct | direct-xcore | nginx | nginx − direct | nginx ÷ direct | \
         sluice | sluice − direct | sluice ÷ direct | sluice_full | sluice_full ÷ sluice |"
    );
    let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in side_by_side(run) {
        let [d, x, n, sl, full] = r.vals;
        let f = |v| fmt_f(v, r.digits);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            f(d),
            f(x),
            f(n),
            delta(n, d, r.digits),
            ratio(n, d),
            f(sl),
            delta(sl, d, r.digits),
            ratio(sl, d),
            f(full),
            ratio(full, sl),
        );
    }
    let _ = writeln!(
        s,
        "\nDirect systems run no proxy, so they have no CPU or RSS of their own here (–)."
    );
    idle_conns(&mut s, run);
    runs(&mut s, run);
    notes(&mut s);
    s
}

fn idle_conns(s: &mut String, run: &Run) {
    let Some(phase) = &run.meta.idle_conns else {
        return;
    };
    let _ = writeln!(
        s,
        "\n## Idle keep-alive connections\n\n{} connections opened one after another to one \
         gateway at a time, one request each (answer read whole), then held silent; RSS read \
         before (nothing connected), while held, and 3 s after they closed.\n",
        phase.connections
    );
    let _ = writeln!(
        s,
        "| system | held | RSS before (MiB) | held (MiB) | after close (MiB) | KiB per conn | \
         after vs before |\n|---|--:|--:|--:|--:|--:|--:|"
    );
    for sys in [Sys::Sluice, Sys::Full, Sys::Nginx] {
        let Some(c) = run.idle_conns(sys) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            sys.label(),
            c.held,
            c.before,
            c.while_held,
            c.after,
            fmt_f(c.per_conn_kib, 2),
            c.after_growth_pct()
                .map_or("–".into(), |g| format!("{g:+.1} %"))
        );
    }
}

fn runs(s: &mut String, run: &Run) {
    let m = &run.meta;
    let _ = writeln!(s, "\n## Runs and errors\n");
    let _ = writeln!(
        s,
        "| phase | system | requests | ok | req/s | errors |\n|---|---|--:|--:|--:|---|"
    );
    let mut phases: Vec<(String, Option<&CompareFile>)> = vec![("c=1".into(), run.c1.as_ref())];
    for (rate, f) in &run.rates {
        phases.push((format!("{rate:.0} req/s"), f.as_ref()));
    }
    let conns = m.closed.as_ref().map_or(0, |c| c.conns);
    phases.push((format!("closed {conns} conns"), run.closed.as_ref()));
    if let Some(st) = &m.stream {
        let load = if st.rate > 0 {
            format!("{}/s", st.rate)
        } else {
            format!("c={}", st.concurrency)
        };
        phases.push((
            format!("stream {}×{} ms, {load}", st.chunks, st.gap_ms),
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
            "| system | count | clean | ok | TTFT p99 (µs) | gap p99 (µs) | peak RSS (MiB) | \
             errors |\n|---|--:|---|--:|--:|--:|--:|---|"
        );
        for sys in SYSTEMS {
            let Some(f) = run.sweep_for(sys) else {
                continue;
            };
            for st in &f.steps {
                let x = st.summary.stream.clone().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    sys.label(),
                    st.count,
                    if st.clean { "yes" } else { "no" },
                    st.summary.ok,
                    x.ttft_us.p99,
                    x.gap_us.p99,
                    fmt_f(run.peak_at_streams(sys, st.count), 1),
                    st.summary.errors.describe()
                );
            }
        }
    }
}

fn notes(s: &mut String) {
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
        "- CPU per request is the CPU time (from /proc/PID/stat: user, and system = kernel) the \
         proxy's processes spent during their own rounds divided by the requests completed in \
         them; nginx sums master and workers, sluice_full includes its ledger and log threads. \
         /proc counts CPU in clock ticks (10 ms), so short quick runs carry about ±1 µs per \
         request of rounding. The stream phase's figure in report.json is per stream, not per \
         chunk. RSS idle is read after start-up and one request per route, peak is VmHWM (or \
         the samplers' peak, whichever is higher; nginx sums its processes), after is read a few \
         seconds after the last run."
    );
    let _ = writeln!(
        s,
        "- Core busy shares come from /proc/stat around each run (everything but idle and \
         iowait), so they include whatever else ran on the machine."
    );
    let _ = writeln!(
        s,
        "- The machine is shared and noisy; differences of a few µs between runs are within \
         noise. Compare systems inside one report, not across reports."
    );
}
