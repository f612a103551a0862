#!/usr/bin/env python3
"""Checks that Grafana dashboards and Prometheus rule files only name metrics that exist.

    check_dashboard.py --metrics SCRAPE.txt FILE...
    check_dashboard.py --url http://127.0.0.1:9091/metrics FILE...

SCRAPE.txt is an edge's /metrics exposition (the metrics test writes one after traffic on
every transport over Redis). Each FILE is a dashboard (.json) or a rule file (.yml/.yaml).
For a dashboard it also checks the JSON parses, panel ids are unique, every panel (other than
rows) has at least one query, and every query has a refId. Every metric name in every PromQL
expression must be in the exposition (a histogram's _bucket/_sum/_count included), or be one
Prometheus makes itself (`up`, `scrape_*`), or be recorded by a `record:` rule in one of the
rule files given. Exits 1 and lists what is wrong otherwise.

Run by crates/herald-edge/tests/metrics.rs; by hand against a running edge:

    python3 tests-deploy/check_dashboard.py --url http://127.0.0.1:9091/metrics \
        deploy/grafana/herald-dashboard.json deploy/herald-rules.yml
"""

import argparse
import json
import re
import sys
import urllib.request

# Series Prometheus adds to every target itself.
BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
           "scrape_samples_post_metric_relabeling", "scrape_series_added"}

# PromQL functions, aggregations and keywords: identifiers that are not metric names.
PROMQL_WORDS = set("""
abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min
count_over_time day_of_month day_of_week day_of_year days_in_month delta deriv exp floor
histogram_quantile histogram_count histogram_sum histogram_fraction holt_winters hour idelta
increase irate label_join label_replace last_over_time ln log10 log2 max_over_time
min_over_time minute month predict_linear present_over_time quantile_over_time rate resets
round scalar sgn sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time
timestamp vector year
sum min max avg group stddev stdvar count count_values bottomk topk quantile
by without on ignoring group_left group_right bool and or unless offset inf nan
""".split())

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exposition_names(text):
    """Every series name a scrape of `text` yields."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind in ("histogram", "summary"):
                names.update(name + s for s in HISTOGRAM_SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def metric_names(expr):
    """The metric names a PromQL expression refers to."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "", e)  # Grafana variables
    e = re.sub(r"\{[^{}]*\}", "", e)                      # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                      # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    e = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?[smhdwy]?\b", "", e)  # numbers and durations
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if word.lower() in PROMQL_WORDS:
            continue
        # A function call: a name followed by "(".
        if re.match(r"\s*\(", e[m.end():]):
            continue
        names.add(word)
    return names


def dashboard_exprs(path, problems):
    with open(path) as f:
        dash = json.load(f)
    exprs = []
    seen_ids = set()

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        pid = p.get("id")
        if pid in seen_ids:
            problems.append(f"{path}: duplicate panel id {pid}")
        seen_ids.add(pid)
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{path}: panel {p.get('title')!r} has no query")
        for t in targets:
            if not t.get("refId"):
                problems.append(f"{path}: panel {p.get('title')!r} has a query without refId")
            if t.get("expr"):
                exprs.append((f"panel {p.get('title')!r}", t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            m = re.match(r"label_values\((.*),\s*[A-Za-z_]+\)\s*$", q)
            if m:
                exprs.append((f"variable {v.get('name')!r}", m.group(1)))
    if not exprs:
        problems.append(f"{path}: no PromQL expression found")
    return exprs


def recorded_names(path):
    """Series a rule file records (`record: name`): later expressions may use them."""
    names = set()
    for line in open(path).read().splitlines():
        m = re.match(r"^\s*(?:-\s*)?record:\s*['\"]?([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if m:
            names.add(m.group(1))
    return names


def rule_exprs(path, problems):
    """`expr:` values of a rule file (single line, or a `|`/`>` block)."""
    exprs = []
    lines = open(path).read().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s*)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value in ("|", ">", "|-", ">-"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            value = " ".join(block)
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        exprs.append((f"rule at line {i}", value))
    if not exprs:
        problems.append(f"{path}: no expr found")
    return exprs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics", help="a saved /metrics exposition")
    src.add_argument("--url", help="an edge's /metrics URL to scrape")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.metrics:
        text = open(args.metrics).read()
    else:
        text = urllib.request.urlopen(args.url, timeout=10).read().decode()
    known = exposition_names(text) | BUILTIN
    for path in args.files:
        if not path.endswith(".json"):
            known |= recorded_names(path)
    problems = []
    checked = 0
    for path in args.files:
        if path.endswith(".json"):
            exprs = dashboard_exprs(path, problems)
        else:
            exprs = rule_exprs(path, problems)
        for where, expr in exprs:
            names = metric_names(expr)
            if not names:
                problems.append(f"{path}: {where}: no metric in {expr!r}")
            for name in sorted(names - known):
                problems.append(f"{path}: {where}: unknown metric {name!r} in {expr!r}")
            checked += 1
    if problems:
        print("\n".join(problems))
        return 1
    print(f"ok: {checked} expressions in {len(args.files)} files name only exported metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
