//! `report.json`: one object per system (`direct`, `direct_xcore`, `nginx`, `sluice`,
//! `sluice_full`, all with the same fields), plus `targets`, `design_budget` and `meta`.

use serde_json::{json, Map, Value};

use super::input::{Pct, Run, Sys, SYSTEMS};
use super::measure::{
    added_at, added_median, rps_median, stream_added, stream_added_median, stream_pct, summary, Cpu,
};
use super::targets::Check;

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

fn cpu_json(c: Option<Cpu>) -> Value {
    c.map_or(Value::Null, |c| {
        json!({"total": num(Some(c.total)), "user": num(Some(c.user)),
               "kernel": num(Some(c.kernel))})
    })
}

fn checks_json(checks: &[Check]) -> Value {
    Value::Array(
        checks
            .iter()
            .map(|c| json!({"target": c.what, "measured": c.got, "limit": c.limit, "pass": c.pass}))
            .collect(),
    )
}

/// The whole report.json.
pub(crate) fn report(run: &Run, targets: &[Check], budget: &[Check]) -> Value {
    let mut top = Map::new();
    for sys in SYSTEMS {
        top.insert(sys.key().into(), system(run, sys));
    }
    top.insert("targets".into(), checks_json(targets));
    top.insert("design_budget".into(), checks_json(budget));
    let m = &run.meta;
    top.insert(
        "meta".into(),
        json!({
            "mode": m.mode, "date": m.date, "git": m.git, "cores": m.cores,
            "loadavg_start_end": m.loadavg,
            "driver": m.driver, "nginx_version": m.nginx_version,
            "layout": m.layout, "sluice_workers": m.sluice_workers,
            "nginx_workers": m.nginx_workers, "build_s": m.build_s, "suite_s": m.suite_s,
            "rounds": m.rounds,
            "stream": m.stream.as_ref().map(|s| json!({"chunks": s.chunks, "gap_ms": s.gap_ms, "rate": s.rate, "concurrency": s.concurrency})),
            "sweep": m.sweep.as_ref().map(|s| json!({"counts": s.counts, "chunks": s.chunks, "gap_ms": s.gap_ms})),
            "idle_conns": m.idle_conns.as_ref().map(|p| p.connections),
            "sluice_full": m.sluice_full.as_ref().map(|f| json!({"access_log_lines": f.access_log_lines, "store_dir_bytes": f.store_dir_bytes})),
            "spectrum_points": "min,p50,p90,p99,p999,max",
        }),
    );
    Value::Object(top)
}

fn system(run: &Run, sys: Sys) -> Value {
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
    for (name, q) in [
        ("p50", (|p| p.p50) as fn(&Pct) -> u64),
        ("p99", |p| p.p99),
        ("p999", |p| p.p999),
    ] {
        o.insert(
            format!("added_{name}_us_c1"),
            int(added_at(c1, sys, |s| q(&s.latency_us))),
        );
    }
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
    let busy = run.core_busy(closed, sys);
    o.insert(
        "closed_loop_core_busy".into(),
        if busy.is_empty() {
            Value::Null
        } else {
            Value::Array(busy.iter().map(|b| num(Some(*b))).collect())
        },
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
    for (name, ttft, q) in [
        ("ttft_p50", true, (|p| p.p50) as fn(&Pct) -> u64),
        ("ttft_p99", true, |p| p.p99),
        ("gap_p50", false, |p| p.p50),
        ("gap_p99", false, |p| p.p99),
    ] {
        let pick = move |x: &super::input::Stream| if ttft { x.ttft_us } else { x.gap_us };
        o.insert(
            format!("stream_added_{name}_us"),
            int(stream_added(stream, sys, pick, q)),
        );
    }
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
    o.insert(
        "rss_peak_mib_2048_streams".into(),
        num(run.peak_at_streams(sys, 2048)),
    );
    let rss = run.rss_mib(sys);
    o.insert("rss_idle_mib".into(), num(rss.idle));
    o.insert("rss_after_requests_mib".into(), num(rss.mid));
    o.insert("rss_peak_mib".into(), num(rss.peak));
    o.insert("rss_after_mib".into(), num(rss.after));
    let conns = run.idle_conns(sys);
    o.insert("idle_conns_held".into(), json!(conns.map(|c| c.held)));
    o.insert("rss_before_conns_mib".into(), num(conns.map(|c| c.before)));
    o.insert(
        "rss_idle_conns_10k_mib".into(),
        num(conns.map(|c| c.while_held)),
    );
    o.insert("rss_after_conns_mib".into(), num(conns.map(|c| c.after)));
    o.insert(
        "kib_per_idle_conn".into(),
        num(conns.and_then(|c| c.per_conn_kib)),
    );
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
    let headline = run
        .top_rate()
        .and_then(|(_, f)| run.cpu_per_request(f, sys))
        .or_else(|| run.cpu_per_request(closed, sys));
    o.insert("cpu_us_per_request".into(), num(headline));
    o.insert(
        "cpu_us_per_request_by_phase".into(),
        if any { Value::Object(cpu) } else { Value::Null },
    );
    o.insert("medians".into(), medians(run, sys));
    Value::Object(o)
}

/// The figures the targets are checked on: medians over the interleaved rounds.
fn medians(run: &Run, sys: Sys) -> Value {
    let c1 = run.c1.as_ref();
    let closed = run.closed.as_ref();
    let stream = run.stream.as_ref();
    let mut m = Map::new();
    m.insert("closed_loop_rps".into(), num(rps_median(closed, sys)));
    m.insert(
        "added_p50_us_c1".into(),
        num(added_median(c1, sys, |p| p.p50)),
    );
    m.insert(
        "added_p99_us_c1".into(),
        num(added_median(c1, sys, |p| p.p99)),
    );
    m.insert(
        "stream_added_ttft_p99_us".into(),
        num(stream_added_median(stream, sys, |x| x.ttft_us, |p| p.p99)),
    );
    m.insert(
        "stream_added_gap_p99_us".into(),
        num(stream_added_median(stream, sys, |x| x.gap_us, |p| p.p99)),
    );
    let mut cpu = Map::new();
    for (rate, f) in &run.rates {
        cpu.insert(
            format!("rate_{rate:.0}"),
            cpu_json(run.cpu_median(f.as_ref(), sys)),
        );
    }
    cpu.insert("closed".into(), cpu_json(run.cpu_median(closed, sys)));
    m.insert("cpu_us_per_request".into(), Value::Object(cpu));
    Value::Object(m)
}
