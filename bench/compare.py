#!/usr/bin/env python3
"""Side-by-side table of a bench/run.sh results folder: median (min-max) per target and the
Herald / nchan ratio of the medians.

usage: bench/compare.py bench/.run/results/<tag> [--json]
"""
import json
import pathlib
import re
import statistics
import sys

METRICS = [
    # (label, path in the report, higher is better?)
    ("deliveries/s", ("results", "messages", "deliveries_per_sec"), True),
    ("p50 ms", ("results", "messages", "latency", "p50_ms"), False),
    ("p99 ms", ("results", "messages", "latency", "p99_ms"), False),
    ("p99.9 ms", ("results", "messages", "latency", "p999_ms"), False),
    ("max ms", ("results", "messages", "latency", "max_ms"), False),
    ("lost", ("results", "messages", "seq", "lost"), False),
    ("duplicates", ("results", "messages", "seq", "duplicates"), False),
    ("reordered", ("results", "messages", "seq", "reordered"), False),
    ("established", ("results", "connections", "established"), True),
    ("connect p99 ms", ("results", "connections", "connect_latency", "p99_ms"), False),
    ("achieved conn/s", ("results", "extra", "achieved_per_sec"), True),
    ("server KiB/conn", ("results", "extra", "server_rss_kib_per_conn"), False),
    ("server cpu cores", ("servers_cpu",), False),
    ("loadtest cpu %", ("tool", "cpu_percent_of_available"), False),
]


def get(report, path):
    if path == ("servers_cpu",):
        servers = report.get("servers") or []
        return sum(s["cpu_cores"] for s in servers) if servers else None
    v = report
    for key in path:
        if not isinstance(v, dict) or key not in v:
            return None
        v = v[key]
    return v if isinstance(v, (int, float)) else None


def load(folder):
    groups = {}
    for f in sorted(pathlib.Path(folder).glob("*.json")):
        try:
            report = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        m = re.match(r"(.+?)-(herald|nchan)(?:-r([\d.]+))?-(\d+)\.json$", f.name)
        if not m:
            continue
        step = m.group(3) or ""
        groups.setdefault(step, {}).setdefault(m.group(2), []).append(report)
    return groups


def fmt(vals):
    if not vals:
        return "-"
    med = statistics.median(vals)
    return f"{med:,.2f} ({min(vals):,.2f}-{max(vals):,.2f})" if len(vals) > 1 else f"{med:,.2f}"


def main():
    folder = sys.argv[1]
    groups = load(folder)
    summary = []
    for step in sorted(groups, key=lambda s: float(s) if s else 0):
        by_target = groups[step]
        print(f"\n== {pathlib.Path(folder).name}{' rate ' + step if step else ''} ==")
        print(f"{'metric':<18} {'herald':>30} {'nchan':>30} {'herald/nchan':>13}")
        for label, path, _ in METRICS:
            cols, meds = [], {}
            for t in ("herald", "nchan"):
                vals = [v for v in (get(r, path) for r in by_target.get(t, [])) if v is not None]
                cols.append(fmt(vals))
                if vals:
                    meds[t] = statistics.median(vals)
            if cols == ["-", "-"]:
                continue
            ratio = "-"
            if "herald" in meds and meds.get("nchan"):
                ratio = f"{meds['herald'] / meds['nchan']:.2f}x"
            print(f"{label:<18} {cols[0]:>30} {cols[1]:>30} {ratio:>13}")
            summary.append({"step": step, "metric": label, "median": meds})
        invalid = [t for t, rs in by_target.items() for r in rs if not r.get("valid", True)]
        if invalid:
            print(f"INVALID runs (loadtest saturated): {invalid}")
    if "--json" in sys.argv:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
