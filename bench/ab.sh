#!/usr/bin/env bash
# bench/ab.sh A_TARGET_DIR B_TARGET_DIR [RUNS]: before/after comparison of two builds.
#
# Runs `bench/compare.sh --quick` RUNS times (default 3) for each build, interleaved
# (A, B, A, B, ...) so both see the same machine, then prints one table with the median
# and the spread (min..max) of each figure for A and B. Each target dir must hold release
# binaries built beforehand (`cargo build --release --workspace --bins` in that tree;
# e.g. a `git worktree` of the old commit with its own target/).
#
# Environment: SLUICE_BENCH_NO_NGINX=1 to skip nginx; SLUICE_BENCH_AB_OUT (default
# target/bench-ab) for the runs' reports.
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 64; }
A=$(cd "$1" && pwd)
B=$(cd "$2" && pwd)
RUNS=${3:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${SLUICE_BENCH_AB_OUT:-$ROOT/target/bench-ab}
mkdir -p "$OUT"

for i in $(seq 1 "$RUNS"); do
  for side in A B; do
    dir=$A
    [ "$side" = B ] && dir=$B
    echo "[ab] run $i/$RUNS: $side ($dir)" >&2
    SLUICE_BENCH_NO_BUILD=1 SLUICE_TARGET_DIR="$dir" SLUICE_BENCH_OUT="$OUT/$side-$i" \
      bash "$ROOT/bench/compare.sh" --quick >"$OUT/$side-$i.log" 2>&1 ||
      { echo "[ab] run $side-$i failed; see $OUT/$side-$i.log" >&2; exit 1; }
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
def load(side):
    rs = []
    for i in range(1, runs + 1):
        with open(os.path.join(out, f"{side}-{i}", "report.json")) as f:
            rs.append(json.load(f))
    return rs
def sluice(report):
    systems = report.get("systems", report)
    if isinstance(systems, list):
        for s in systems:
            if s.get("name") == "sluice":
                return s
    return systems.get("sluice", {})
def flat(d, prefix=""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield name, float(v)
        elif isinstance(v, dict):
            yield from flat(v, name + ".")
        elif isinstance(v, list):
            for n, item in enumerate(v):
                if isinstance(item, dict):
                    tag = item.get("rate", item.get("count", n))
                    yield from flat(item, f"{name}.{tag}.")
a = [dict(flat(sluice(r))) for r in load("A")]
b = [dict(flat(sluice(r))) for r in load("B")]
keys = [k for k in a[0] if all(k in x for x in a + b)]
print(f"| sluice, {runs} interleaved runs | A median (min..max) | B median (min..max) | B/A |")
print("| --- | --- | --- | --- |")
for k in keys:
    av = [x[k] for x in a]; bv = [x[k] for x in b]
    am, bm = statistics.median(av), statistics.median(bv)
    ratio = f"{bm / am:.2f}" if am else "-"
    print(f"| {k} | {am:.1f} ({min(av):.1f}..{max(av):.1f}) | {bm:.1f} ({min(bv):.1f}..{max(bv):.1f}) | {ratio} |")
PY
