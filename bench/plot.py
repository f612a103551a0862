#!/usr/bin/env python3
"""Draws p99 latency against deliveries per second for Herald and nchan from bench/run.sh
results (every *.json under the given folders), one point per run, medians joined by a line.

usage: bench/plot.py OUT.png bench/.run/results/<tag> [more folders...]
needs: pip install matplotlib
"""
import json
import pathlib
import re
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def points(folders):
    pts = {}
    for folder in folders:
        for f in pathlib.Path(folder).glob("*.json"):
            m = re.match(r"(.+?)-(herald|nchan)(?:-r([\d.]+))?-(\d+)\.json$", f.name)
            if not m:
                continue
            try:
                r = json.loads(f.read_text())
                msg = r["results"]["messages"]
            except (json.JSONDecodeError, KeyError, OSError):
                continue
            step = float(m.group(3)) if m.group(3) else 0.0
            pts.setdefault(m.group(2), {}).setdefault(step, []).append(
                (msg["deliveries_per_sec"], msg["latency"]["p99_ms"], msg["seq"]["lost"])
            )
    return pts


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, folders = sys.argv[1], sys.argv[2:]
    pts = points(folders)
    fig, ax = plt.subplots(figsize=(8, 5))
    for target, color in (("herald", "tab:blue"), ("nchan", "tab:orange")):
        steps = pts.get(target, {})
        if not steps:
            continue
        xs = [p[0] for s in steps.values() for p in s]
        ys = [p[1] for s in steps.values() for p in s]
        ax.scatter(xs, ys, color=color, alpha=0.35, s=18)
        med = sorted(
            (statistics.median(p[0] for p in s), statistics.median(p[1] for p in s))
            for s in steps.values()
        )
        ax.plot([m[0] for m in med], [m[1] for m in med], "-o", color=color, label=target)
        lossy = [p for s in steps.values() for p in s if p[2] > 0]
        if lossy:
            ax.scatter([p[0] for p in lossy], [p[1] for p in lossy], marker="x", color="red",
                       label=f"{target}: loss > 0")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="p99 = 50 ms")
    ax.set_xlabel("deliveries per second")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Fan-out: p99 latency vs deliveries/s (same machine, same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
