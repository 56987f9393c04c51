#!/usr/bin/env python3
"""bench/shared-report.py RAW OUT: the report of bench/shared-compare.sh.

Reads the sluice-load JSON reports, the Redis INFO and metrics snapshots and meta.json in
RAW; writes OUT/report.md and OUT/report.json. Medians over rounds are taken per round
first (a gateway's percentile minus direct's in the same round), then across rounds; the
spread is the rounds' max - min. Standard library only.
"""

import json
import os
import statistics
import sys

GATEWAYS = [("full", "gateway"), ("shared", "shared")]  # report name, sluice-load target name


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def stat(values):
    """{median, min, max, spread, rounds} of a list (None when empty)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "spread": max(values) - min(values),
        "rounds": values,
    }


def target(report, name):
    for t in (report or {}).get("targets", []):
        if t["name"] == name:
            return t
    return None


def cpu_per_request(summary, pid):
    for p in summary.get("pids", []):
        if p["pid"] == pid and p["requests"] > 0:
            user = p.get("user_us", 0) / p["requests"]
            total = p["cpu_us"] / p["requests"]
            return total, user, total - user
    return None


def interleaved(report, pids):
    """Per gateway: added latency, rate, errors and CPU per request over the rounds."""
    direct = target(report, "direct")
    if direct is None:
        return None
    out = {"direct": {
        "achieved_rps": stat([r["achieved_rps"] for r in direct["rounds"]]),
        "latency_p50_us": stat([r["latency_us"]["p50"] for r in direct["rounds"]]),
        "latency_p99_us": stat([r["latency_us"]["p99"] for r in direct["rounds"]]),
        "errors": sum(r["errors"]["total"] for r in direct["rounds"]),
    }}
    # Each core's busy share, median over every run of the phase: how loaded the machine was.
    runs = [r for t in report["targets"] for r in t["rounds"] if r.get("core_busy")]
    out["core_busy"] = [statistics.median(r["core_busy"][i] for r in runs)
                        for i in range(min((len(r["core_busy"]) for r in runs), default=0))]
    for name, tname in GATEWAYS:
        t = target(report, tname)
        if t is None:
            continue
        pairs = list(zip(t["rounds"], direct["rounds"]))
        cpu = [cpu_per_request(r, pids[name]) for r in t["rounds"]]
        cpu = [c for c in cpu if c is not None]
        out[name] = {
            "added_p50_us": stat([r["latency_us"]["p50"] - d["latency_us"]["p50"] for r, d in pairs]),
            "added_p99_us": stat([r["latency_us"]["p99"] - d["latency_us"]["p99"] for r, d in pairs]),
            "latency_p50_us": stat([r["latency_us"]["p50"] for r in t["rounds"]]),
            "latency_p99_us": stat([r["latency_us"]["p99"] for r in t["rounds"]]),
            "achieved_rps": stat([r["achieved_rps"] for r in t["rounds"]]),
            "requests": sum(r["requests"] for r in t["rounds"]),
            "errors": sum(r["errors"]["total"] for r in t["rounds"]),
            "cpu_us_per_request": stat([c[0] for c in cpu]),
            "cpu_user_us_per_request": stat([c[1] for c in cpu]),
            "cpu_kernel_us_per_request": stat([c[2] for c in cpu]),
        }
    return out


def info(raw, name):
    """A Redis INFO snapshot as {field: number} (cmdstat_X: its calls)."""
    fields = {}
    for line in read_text(os.path.join(raw, name + ".redis.txt")).splitlines():
        if ":" not in line or line.startswith("#"):
            continue
        k, v = line.split(":", 1)
        if k.startswith("cmdstat_"):
            v = v.split(",")[0].removeprefix("calls=")
        try:
            fields[k] = float(v)
        except ValueError:
            pass
    return fields


def metrics(raw, name):
    """The shared gateway's metrics snapshot, summed over labels."""
    out = {}
    for line in read_text(os.path.join(raw, name + ".metrics.txt")).splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        metric = parts[0].split("{")[0]
        try:
            out[metric] = out.get(metric, 0.0) + float(parts[1])
        except ValueError:
            pass
    return out


def snap_time(raw, name):
    try:
        return float(read_text(os.path.join(raw, name + ".time")).strip())
    except ValueError:
        return None


REDIS_FIELDS = {
    "reads": "total_reads_processed",
    "commands": "total_commands_processed",
    "evalsha": "cmdstat_evalsha",
}


def redis_traffic(raw):
    """Redis traffic between snapshots, less what the snapshots cost themselves."""
    c1, c3 = info(raw, "calibrate1"), info(raw, "calibrate3")
    per_snap = {k: (c3.get(f, 0) - c1.get(f, 0)) / 2 for k, f in REDIS_FIELDS.items()}

    def delta(a, b):
        ia, ib = info(raw, a), info(raw, b)
        if not ia or not ib:
            return None
        ma, mb = metrics(raw, a), metrics(raw, b)
        d = {k: ib.get(f, 0) - ia.get(f, 0) - per_snap[k] for k, f in REDIS_FIELDS.items()}
        d["gateway_round_trips"] = (mb.get("sluice_shared_round_trips_total", 0)
                                    - ma.get("sluice_shared_round_trips_total", 0))
        ta, tb = snap_time(raw, a), snap_time(raw, b)
        d["seconds"] = (tb - ta) if ta and tb else None
        return d

    out = {"snapshot_cost": per_snap}
    idle = delta("idle0", "idle1")
    if idle and idle["seconds"]:
        out["idle_per_s"] = {k: v / idle["seconds"] for k, v in idle.items() if k != "seconds"}
    meta = load_json(os.path.join(raw, "meta.json")) or {}
    for name, before, run, rate in [("rate_high", "idle1", "redis%d" % meta.get("rate", 5000),
                                     meta.get("rate")),
                                    ("rate_outage", "redis%d" % meta.get("rate", 5000), "up",
                                     meta.get("outage_rate"))]:
        d = delta(before, run)
        summary = load_json(os.path.join(raw, run + ".json"))
        if d is None or summary is None or summary["requests"] == 0:
            continue
        n = summary["requests"]
        out[name] = {
            "rate": rate,
            "requests": n,
            "seconds": d["seconds"],
            "per_1000_requests": {k: v * 1000 / n for k, v in d.items() if k != "seconds"},
            "per_s": {k: v / d["seconds"] for k, v in d.items() if k != "seconds"}
            if d["seconds"] else None,
        }
    return out


def readyz_limits(raw, name):
    doc = load_json(os.path.join(raw, name + ".readyz.json")) or {}
    shared = doc.get("shared") or {}
    return shared.get("limits")


def run_row(raw, name, pid):
    s = load_json(os.path.join(raw, name + ".json"))
    if s is None:
        return None
    cpu = cpu_per_request(s, pid)
    return {
        "requests": s["requests"],
        "ok": s["ok"],
        "errors": s["errors"]["total"],
        "errors_by_kind": s["errors"],
        "achieved_rps": s["achieved_rps"],
        "p50_us": s["latency_us"]["p50"],
        "p99_us": s["latency_us"]["p99"],
        "p999_us": s["latency_us"]["p999"],
        "max_us": s["latency_us"]["max"],
        "cpu_us_per_request": cpu[0] if cpu else None,
        # The load generator's own lateness and the cores' busy share: how loaded the machine was.
        "send_lag_p99_us": (s.get("sched_lag_us") or {}).get("p99"),
        "core_busy": s.get("core_busy", []),
    }


def outage(raw, meta):
    if not meta.get("own_redis"):
        return {"skipped": "not our Redis (--redis-url)"}
    pid = meta["shared_pid"]
    out = dict(meta.get("outage", {}))
    # (run, snapshot before, snapshot after)
    for name, before, after in [("up", "redis%d" % meta["rate"], "up"),
                                ("down", "down0", "down1"),
                                ("recovered", "recovered0", "recovered1"),
                                ("transition", "recovered1", "transition")]:
        row = run_row(raw, name, pid)
        if row is None:
            continue
        mb, ma = metrics(raw, before), metrics(raw, after)
        row["limits_before"] = readyz_limits(raw, before)
        row["limits_after"] = readyz_limits(raw, after)
        row["available_after"] = ma.get("sluice_shared_available")
        row["unavailable_total_after"] = ma.get("sluice_shared_unavailable_total")
        row["new_outages"] = (ma.get("sluice_shared_unavailable_total", 0)
                              - mb.get("sluice_shared_unavailable_total", 0))
        row["timeouts"] = (ma.get("sluice_shared_timeouts_total", 0)
                           - mb.get("sluice_shared_timeouts_total", 0))
        out[name] = row
    return out


# --------------------------------------------------------------------------- markdown

def us(v):
    return "–" if v is None else "%.0f" % v


def fmt_stat(s, f=us):
    return "–" if s is None else f(s["median"])


def spread(s, f=us):
    return "–" if s is None else f(s["spread"])


def cpu_cell(g):
    if not g or not g.get("cpu_us_per_request"):
        return "–"
    return "%.1f (%.1f / %.1f)" % (g["cpu_us_per_request"]["median"],
                                   g["cpu_user_us_per_request"]["median"],
                                   g["cpu_kernel_us_per_request"]["median"])


def compare_row(label, full, shared, key, f=us):
    a, b = (full or {}).get(key), (shared or {}).get(key)
    if a is None or b is None:
        return "| %s | %s | %s | – | – | – |" % (label, fmt_stat(a, f), fmt_stat(b, f))
    diff = b["median"] - a["median"]
    noise = max(a["spread"], b["spread"])
    verdict = "yes" if abs(diff) <= noise else "**no**"
    return "| %s | %s | %s | %s | %s / %s | %s |" % (
        label, f(a["median"]), f(b["median"]), ("+" if diff >= 0 else "") + f(diff),
        f(a["spread"]), f(b["spread"]), verdict)


def render(report):
    meta = report["meta"]
    lines = [
        "# [shared] on the request path: sluice_full with and without Redis",
        "",
        "%s run, %s, git %s, %d cores (gateways on core %s, mock %s, load %s, Redis %s), "
        "load average %s → %s, Redis %s. %d interleaved rounds of %s s per target; medians "
        "over rounds (per round first: gateway − direct of the same round), spread = max − min "
        "over rounds; \"within noise\": |shared − full| ≤ the larger spread."
        % (meta["mode"], meta["date"], meta["git"], meta["cores"], meta["layout"]["gateways"],
           meta["layout"]["mock"], meta["layout"]["load"], meta["layout"]["redis"],
           meta["loadavg"][0], meta["loadavg"][1], meta.get("redis_version") or "?",
           meta["rounds"], meta["round_duration_s"]),
        "",
        "| measure | full | shared | shared − full | spread full / shared | within noise |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    ph = report["interleaved"]
    c1, rate, closed = ph.get("c1") or {}, ph.get("rate") or {}, ph.get("closed") or {}
    r, n = meta["rate"], meta["closed_conns"]
    two = lambda v: "%.2f" % v  # noqa: E731
    rows = [
        ("c=1: added p50 µs", c1, "added_p50_us", us),
        ("c=1: added p99 µs", c1, "added_p99_us", us),
        ("%d/s: added p50 µs" % r, rate, "added_p50_us", us),
        ("%d/s: added p99 µs" % r, rate, "added_p99_us", us),
        ("%d/s: achieved req/s" % r, rate, "achieved_rps", us),
        ("%d/s: CPU µs/request" % r, rate, "cpu_us_per_request", two),
        ("%d/s: of which user" % r, rate, "cpu_user_us_per_request", two),
        ("%d/s: of which kernel" % r, rate, "cpu_kernel_us_per_request", two),
        ("closed %d: req/s" % n, closed, "achieved_rps", us),
        ("closed %d: CPU µs/request" % n, closed, "cpu_us_per_request", two),
        ("closed %d: of which user" % n, closed, "cpu_user_us_per_request", two),
        ("closed %d: of which kernel" % n, closed, "cpu_kernel_us_per_request", two),
    ]
    for label, phase, key, f in rows:
        lines.append(compare_row(label, phase.get("full"), phase.get("shared"), key, f))
    lines += ["", "Errors (all rounds): " + ", ".join(
        "%s %s %s" % (p, g, (ph.get(k) or {}).get(g, {}).get("errors", "–"))
        for p, k in [("c=1", "c1"), ("%d/s" % r, "rate"), ("closed %d" % n, "closed")]
        for g in ("full", "shared")) + "."]
    busy = "; ".join("%s %s" % (p, " ".join("%.0f%%" % (b * 100) for b in x.get("core_busy", [])))
                     for p, x in [("c=1", c1), ("%d/s" % r, rate), ("closed %d" % n, closed)]
                     if x.get("core_busy"))
    if busy:
        lines.append("Cores busy (core 0 first, median over the runs; 100%% at c=1 and at %d/s "
                     "means other work shared the machine): %s." % (r, busy))
    d = rate.get("direct") or {}
    lines.append("Direct (the mock alone) at %d/s: p50 %s µs, p99 %s µs, %s req/s achieved; "
                 "closed %d: %s req/s." % (
                     r, fmt_stat(d.get("latency_p50_us")), fmt_stat(d.get("latency_p99_us")),
                     fmt_stat(d.get("achieved_rps")), n,
                     fmt_stat((closed.get("direct") or {}).get("achieved_rps"))))

    red = report["redis"]
    lines += ["", "## Redis traffic of the shared gateway", "",
              "Redis's own counters (`INFO`): `total_reads_processed` (socket reads with a "
              "request: one per round trip, a pipeline included), `total_commands_processed` "
              "(every command, those a Lua script runs inside `EVALSHA` included) and "
              "`cmdstat_evalsha` calls; the gateway's `sluice_shared_round_trips_total` "
              "(the lease thread's pipelines and direct fetches only). The snapshots' own "
              "cost (measured before any gateway connected) is taken off.", "",
              "| load | requests | Redis reads | commands | EVALSHA | gateway round trips |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    idle = red.get("idle_per_s")
    if idle:
        lines.append("| idle, per second | – | %.1f/s | %.1f/s | %.1f/s | %.1f/s |" % (
            idle["reads"], idle["commands"], idle["evalsha"], idle["gateway_round_trips"]))
    for key in ("rate_high", "rate_outage"):
        x = red.get(key)
        if not x:
            continue
        p = x["per_1000_requests"]
        lines.append("| %d req/s, per 1,000 requests | %d | %.1f | %.1f | %.1f | %.1f |" % (
            x["rate"], x["requests"], p["reads"], p["commands"], p["evalsha"],
            p["gateway_round_trips"]))
        if x.get("per_s"):
            s = x["per_s"]
            lines.append("| %d req/s, per second | – | %.1f/s | %.1f/s | %.1f/s | %.1f/s |" % (
                x["rate"], s["reads"], s["commands"], s["evalsha"], s["gateway_round_trips"]))

    o = report["outage"]
    lines += ["", "## Redis stopped (shared gateway, `on_unavailable = \"local\"`)", ""]
    if "skipped" in o:
        lines.append("Skipped: " + o["skipped"] + ".")
    else:
        lines += [
            "%d req/s for %d s per run (the transition: %d s, Redis killed with SIGKILL 1 s "
            "in). Redis stopped with SIGTERM and waited for; `/readyz` said `degraded_local` "
            "%s ms after; restarted (empty), `/readyz` said `global` again %s ms after "
            "(after the transition: %s ms)." % (
                meta["outage_rate"], meta["outage_duration_s"], meta["transition_duration_s"],
                o.get("degraded_after_ms", "?"), o.get("global_again_after_ms", "?"),
                o.get("transition_global_again_after_ms", "?")),
            "",
            "| run | limits before → after | requests | errors | req/s | p50 µs | p99 µs | "
            "p99.9 µs | max µs | CPU µs/req | available after | new outages | send lag p99 µs "
            "| cores busy |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| ---: | ---: |"]
        labels = {"up": "Redis up", "down": "Redis stopped", "recovered": "recovered",
                  "transition": "transition (killed 1 s in)"}
        for key in ("up", "down", "recovered", "transition"):
            x = o.get(key)
            if not x:
                lines.append("| %s | run failed | | | | | | | | | | | | |" % labels[key])
                continue
            lines.append("| %s | %s → %s | %d | %d | %.0f | %d | %d | %d | %d | %s | %s | %s | %s "
                         "| %s |" % (
                labels[key], x["limits_before"] or "?", x["limits_after"] or "?",
                x["requests"], x["errors"], x["achieved_rps"], x["p50_us"], x["p99_us"],
                x["p999_us"], x["max_us"],
                "–" if x["cpu_us_per_request"] is None else "%.1f" % x["cpu_us_per_request"],
                us(x["available_after"]), us(x["new_outages"]), us(x["send_lag_p99_us"]),
                " ".join("%.0f%%" % (b * 100) for b in x["core_busy"]) or "–"))
    lines.append("")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: shared-report.py RAW OUT")
    raw, out = sys.argv[1], sys.argv[2]
    meta = load_json(os.path.join(raw, "meta.json"))
    if meta is None:
        sys.exit("no meta.json in " + raw)
    pids = {"full": meta["full_pid"], "shared": meta["shared_pid"]}
    report = {
        "meta": meta,
        "interleaved": {
            "c1": interleaved(load_json(os.path.join(raw, "c1.json")), pids),
            "rate": interleaved(load_json(os.path.join(raw, "rate%d.json" % meta["rate"])), pids),
            "closed": interleaved(
                load_json(os.path.join(raw, "closed%d.json" % meta["closed_conns"])), pids),
        },
        "redis": redis_traffic(raw),
        "outage": outage(raw, meta),
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    text = render(report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
