#!/usr/bin/env python3
"""Side-by-side table of a bench/run.sh results folder: median (min-max) per target (herald,
nchan, sockudo: the ones present) and the Herald / peer ratio of the medians for each peer.

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
    ("same-edge p99 ms", ("results", "messages", "same_edge", "p99_ms"), False),
    ("cross-edge p99 ms", ("results", "messages", "cross_edge", "p99_ms"), False),
    ("held open", ("results", "extra", "held_open"), True),
    ("server KiB/conn", ("results", "extra", "server_rss_kib_per_conn"), False),
    ("edge KiB/conn", ("edge_kib",), False),
    ("kernel slab B/conn", ("results", "extra", "kernel_slab_bytes_per_conn"), False),
    ("kernel tcp B/conn", ("results", "extra", "kernel_tcp_mem_bytes_per_conn"), False),
    ("disconnected", ("results", "extra", "storm", "disconnected"), False),
    ("never reconnected", ("results", "extra", "storm", "never_reconnected"), False),
    ("not recovered", ("results", "extra", "storm", "not_recovered"), False),
    ("reconnected 99% s", ("results", "extra", "storm", "time_to_reconnect", "p99_secs"), False),
    ("reconnected 100% s", ("results", "extra", "storm", "time_to_reconnect", "p100_secs"), False),
    ("resumed 95% s", ("results", "extra", "storm", "time_to_resume", "p95_secs"), False),
    ("resumed 99% s", ("results", "extra", "storm", "time_to_resume", "p99_secs"), False),
    ("resumed 100% s", ("results", "extra", "storm", "time_to_resume", "p100_secs"), False),
    ("server cpu cores", ("servers_cpu",), False),
    ("edge cpu cores", ("edge_cpu",), False),
    ("loadtest cpu %", ("tool", "cpu_percent_of_available"), False),
]


# The process that terminates the clients' connections: Herald's edges, nchan's nginx worker,
# sockudo's nodes.
EDGE_COMM = {"herald": "herald", "nchan": "nginx", "sockudo": "sockudo"}
TARGETS = ("herald", "nchan", "sockudo")


def edge_pids(report):
    """pids of the edge processes of a report (idle reports name each process)."""
    procs = report.get("results", {}).get("extra", {}).get("server_rss_by_process") or []
    want = EDGE_COMM.get(report.get("params", {}).get("target"), "")
    return {p["pid"] for p in procs if want and p.get("comm", "").startswith(want)}


def get(report, path):
    if path == ("servers_cpu",):
        servers = report.get("servers") or []
        return sum(s["cpu_cores"] for s in servers) if servers else None
    if path == ("edge_kib",):
        procs = report.get("results", {}).get("extra", {}).get("server_rss_by_process") or []
        want = EDGE_COMM.get(report.get("params", {}).get("target"), "")
        vals = [p["kib_per_conn"] for p in procs if p.get("comm", "").startswith(want) and p.get("kib_per_conn") is not None]
        return sum(vals) if vals else None
    if path == ("edge_cpu",):
        pids = edge_pids(report)
        vals = [s["cpu_cores"] for s in report.get("servers") or [] if s["pid"] in pids]
        return sum(vals) if vals else None
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
        m = re.match(r"(.+?)-(herald|nchan|sockudo)(?:-r([\d.]+))?-(\d+)\.json$", f.name)
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
    present = [t for t in TARGETS if any(t in g for g in groups.values())]
    # Two-way folders keep their old columns: herald, nchan, herald/nchan.
    targets = present if "sockudo" in present else ["herald", "nchan"]
    peers = [t for t in targets if t != "herald"]
    summary = []
    for step in sorted(groups, key=lambda s: float(s) if s else 0):
        by_target = groups[step]
        print(f"\n== {pathlib.Path(folder).name}{' rate ' + step if step else ''} ==")
        head = "".join(f" {t:>30}" for t in targets) + "".join(f" {'herald/' + p:>15}" for p in peers)
        print(f"{'metric':<18}{head}")
        for label, path, _ in METRICS:
            cols, meds = [], {}
            for t in targets:
                vals = [v for v in (get(r, path) for r in by_target.get(t, [])) if v is not None]
                cols.append(fmt(vals))
                if vals:
                    meds[t] = statistics.median(vals)
            if all(c == "-" for c in cols):
                continue
            ratios = []
            for p in peers:
                ok = "herald" in meds and meds.get(p)
                ratios.append(f"{meds['herald'] / meds[p]:.2f}x" if ok else "-")
            line = "".join(f" {c:>30}" for c in cols) + "".join(f" {r:>15}" for r in ratios)
            print(f"{label:<18}{line}")
            summary.append({"step": step, "metric": label, "median": meds})
        invalid = [t for t, rs in by_target.items() for r in rs if not r.get("valid", True)]
        if invalid:
            print(f"INVALID runs (loadtest saturated): {invalid}")
    if "--json" in sys.argv:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
