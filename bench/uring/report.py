#!/usr/bin/env python3
"""Medians, min-max and ratios to classic of bench/uring/run.sh's results (a TSV file or standard input)."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin, delimiter="\t"))
values = defaultdict(lambda: defaultdict(list))
for r in rows:
    for key in ("ops_per_s", "mean_us", "p99_us", "MiB_per_s"):
        if r[key]:
            values[(r["workload"], r["variant"])][key].append(float(r[key]))
rounds = len({r["round"] for r in rows})
workloads = list(dict.fromkeys(r["workload"] for r in rows))
variants = list(dict.fromkeys(r["variant"] for r in rows))
per_round = defaultdict(dict)
for r in rows:
    if r["ops_per_s"]:
        per_round[(r["workload"], r["round"])][r["variant"]] = float(r["ops_per_s"])
print(f"{rounds} rounds; median (min-max); ratio = median / classic's median; paired = median of the per-round "
      "ops/s ratios (each variant against classic in the same round)")
print()
print("| workload | transport | ops/s | mean latency (us) | p99 (us) | ops/s ratio | latency ratio | paired ops/s ratio (min-max) |")
print("|---|---|---|---|---|---|---|---|")
for w in workloads:
    base = values[(w, "classic")]
    for v in variants:
        d = values[(w, v)]
        def cell(key, fmt="{:.0f}"):
            xs = d.get(key)
            if not xs:
                return ""
            return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"
        ratio = lambda key: (f"{statistics.median(d[key]) / statistics.median(base[key]):.2f}"
                             if d.get(key) and base.get(key) else "")
        paired = [x[v] / x["classic"] for (wk, _), x in per_round.items() if wk == w and v in x and "classic" in x]
        pcell = f"{statistics.median(paired):.2f} ({min(paired):.2f}-{max(paired):.2f})" if paired else ""
        print(f"| {w} | {v} | {cell('ops_per_s')} | {cell('mean_us', '{:.1f}')} | {cell('p99_us', '{:.0f}')} "
              f"| {ratio('ops_per_s')} | {ratio('mean_us')} | {pcell} |")
