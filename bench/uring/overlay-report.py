#!/usr/bin/env python3
"""Medians and per-round ratios (ring / classic) of bench/uring/overlay.sh's output."""
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
jobs = list(dict.fromkeys(r["job"] for r in rows))
print("| job | ring IOPS | classic IOPS | ratio of medians | per-round ratios (min–median–max) | ring p99 µs | classic p99 µs |")
print("|---|---:|---:|---:|---:|---:|---:|")
for j in jobs:
    v = {t: {int(r["round"]): r for r in rows if r["job"] == j and r["transport"] == t} for t in ("ring", "classic")}
    med = {t: statistics.median(float(r["iops"]) for r in v[t].values()) for t in v}
    p99 = {t: statistics.median(float(r["p99us"]) for r in v[t].values()) for t in v}
    ratios = sorted(float(v["ring"][k]["iops"]) / float(v["classic"][k]["iops"]) for k in v["ring"] if k in v["classic"])
    print(f"| {j} | {med['ring']:.0f} | {med['classic']:.0f} | {med['ring'] / med['classic']:.2f}x | "
          f"{ratios[0]:.2f}–{statistics.median(ratios):.2f}–{ratios[-1]:.2f} | {p99['ring']:.0f} | {p99['classic']:.0f} |")
