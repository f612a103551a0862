#!/usr/bin/env python3
"""Draws p99 latency against deliveries per second for Herald and nchan from bench/run.sh
results (every *.json under the given folders), one point per run, medians joined by a line.
Runs that lost messages are marked with a red x, runs the loadtest marked invalid (it
saturated its core) with a black square.

usage: bench/plot.py OUT.png FOLDER[=LABEL[|NCHAN_LABEL]] [FOLDER...] [--title TITLE]
  bench/plot.py docs/fanout-ws.png bench/.run/results/fanout-ws="nginx -> 3 edges|run 1"
LABEL names the Herald series of that folder, NCHAN_LABEL (default LABEL) the nchan one.
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

COLORS = {"herald": ["tab:blue", "tab:green", "tab:purple"], "nchan": ["tab:orange", "tab:red", "tab:brown"]}


def points(folder):
    pts = {}
    for f in pathlib.Path(folder).glob("*.json"):
        m = re.match(r"(.+?)-(herald|nchan)(?:-r([\d.]+))?-(\d+)\.json$", f.name)
        if not m:
            continue
        try:
            r = json.loads(f.read_text())
            msg = r["results"]["messages"]
        except (json.JSONDecodeError, KeyError, OSError, TypeError):
            continue
        step = float(m.group(3)) if m.group(3) else 0.0
        pts.setdefault(m.group(2), {}).setdefault(step, []).append(
            (msg["deliveries_per_sec"], max(msg["latency"]["p99_ms"], 0.01), msg["seq"]["lost"],
             r.get("valid", True))
        )
    return pts


def main():
    args = sys.argv[1:]
    title = "Fan-out: p99 latency vs deliveries/s (same machine, same run)"
    if "--title" in args:
        i = args.index("--title")
        title = args[i + 1]
        del args[i:i + 2]
    if len(args) < 2:
        sys.exit(__doc__)
    out, folders = args[0], args[1:]
    fig, ax = plt.subplots(figsize=(8, 5))
    used = {"herald": 0, "nchan": 0}
    for spec in folders:
        folder, _, labels = spec.partition("=")
        hlabel, _, nlabel = labels.partition("|")
        for target, steps in sorted(points(folder).items()):
            color = COLORS[target][used[target] % 3]
            used[target] += 1
            label = hlabel if target == "herald" else (nlabel or hlabel)
            name = f"{target} ({label})" if label else target
            xs = [p[0] for s in steps.values() for p in s]
            ys = [p[1] for s in steps.values() for p in s]
            ax.scatter(xs, ys, color=color, alpha=0.35, s=18)
            med = sorted(
                (statistics.median(p[0] for p in s), statistics.median(p[1] for p in s))
                for s in steps.values()
            )
            ax.plot([m[0] for m in med], [m[1] for m in med], "-o", color=color, label=name)
            lossy = [p for s in steps.values() for p in s if p[2] > 0]
            if lossy:
                ax.scatter([p[0] for p in lossy], [p[1] for p in lossy], marker="x", color="red", s=60,
                           label=f"{name}: loss > 0")
            invalid = [p for s in steps.values() for p in s if not p[3]]
            if invalid:
                ax.scatter([p[0] for p in invalid], [p[1] for p in invalid], marker="s", s=60,
                           facecolors="none", edgecolors="black", label=f"{name}: loadtest saturated")
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="p99 = 50 ms")
    ax.set_xlabel("deliveries per second (offered: subscribers x publish rate)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()
