#!/usr/bin/env bash
# Performance regression check before a change lands: this tree's edge against a base commit's
# edge (default: the previous commit), same loadtest binary, same machine, alternating base/new,
# REPEATS rounds of a fan-out + idle + connect trio. Prints each metric's median for both and
# the new/base ratio, and flags a ratio worse than THRESHOLD (default 1.10, i.e. 10 %).
#
# usage: bench/regress.sh [BASE_REV]          (default HEAD~1)
#   bench/regress.sh                           # this tree vs the previous commit, 30 s runs
#   DURATION=5s REPEATS=1 bench/regress.sh     # a quick look
#   BASE_BIN=/tmp/herald-old bench/regress.sh  # against a binary you built
#
# environment:
#   REPEATS=3  DURATION=30s  THRESHOLD=1.10
#   FANOUT_ARGS="--connections 1000 --rate 40"   (deliveries/s = connections x rate)
#   IDLE_CONNECTIONS=5000                        CONNECT_RATE=500 (new WebSocket clients/s)
#   (connect holds every socket it opens: CONNECT_RATE x DURATION must stay under the box's
#   descriptor limit, ~19k here, or every connect run fails and is left out)
#   NEW_BIN (default target/release/herald, built), BASE_BIN (default: BASE_REV built once into
#   bench/.run/regress/herald-<sha>, from a detached worktree with its own target directory:
#   the first build of a base is a full release build, minutes on 2 cores)
#   SERVER_CPUS / LOADTEST_CPUS as for run.sh (edge + Redis on 0, loadtest on the last CPU)
#
# Each run starts a fresh Redis and edge (bench/herald-bench.toml), samples the edge with
# --server-pid, and stops both. Metrics: fan-out deliveries/s, p99 and edge CPU per delivery;
# idle edge KiB per connection (RSS growth over the edge's RSS before the clients came);
# connect p99 and edge CPU per connection. Results: bench/.run/regress/<stamp>/*.json.
# A run whose loadtest saturated its cores, lost a message or failed a connection is reported
# and left out of the medians.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BASE_REV="${1:-HEAD~1}"
REPEATS="${REPEATS:-3}"
DURATION="${DURATION:-30s}"
THRESHOLD="${THRESHOLD:-1.10}"
FANOUT_ARGS="${FANOUT_ARGS:---connections 1000 --rate 40}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-5000}"
CONNECT_RATE="${CONNECT_RATE:-500}"
default_pinning
export SERVER_CPUS
WORK="$RUN_DIR/regress"
OUT="$WORK/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

(cd "$REPO_DIR" && cargo build -q --release -p herald-edge -p herald-loadtest) || die "this tree does not build"
NEW_BIN="${NEW_BIN:-$REPO_DIR/target/release/herald}"
LOADTEST="$REPO_DIR/target/release/herald-loadtest"

if [[ -z ${BASE_BIN:-} ]]; then
    sha="$(cd "$REPO_DIR" && git rev-parse --verify "$BASE_REV^{commit}")" || die "no commit $BASE_REV"
    BASE_BIN="$WORK/herald-${sha:0:12}"
    if [[ ! -x $BASE_BIN ]]; then
        src="$WORK/src"
        log "building the base edge at ${sha:0:12} (release, own target dir: $WORK/target)"
        (cd "$REPO_DIR" && git worktree remove --force "$src" 2>/dev/null || true)
        (cd "$REPO_DIR" && git worktree add --detach "$src" "$sha" >/dev/null)
        (cd "$src" && CARGO_TARGET_DIR="$WORK/target" cargo build -q --release -p herald-edge)
        cp "$WORK/target/release/herald" "$BASE_BIN"
        (cd "$REPO_DIR" && git worktree remove --force "$src")
    fi
fi
log "base: $BASE_BIN"
log "new:  $NEW_BIN"

EDGE_PID="" REDIS_PID=""
stop_servers() {
    [[ -n $EDGE_PID ]] && { kill "$EDGE_PID" 2>/dev/null || true; wait "$EDGE_PID" 2>/dev/null || true; }
    [[ -n $REDIS_PID ]] && { kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; }
    EDGE_PID="" REDIS_PID=""
}
trap stop_servers EXIT

# start_servers BIN: a fresh Redis and edge; sets EDGE_URL, EDGE_PID.
start_servers() {
    local bin="$1" port mport
    RUN_DIR="$WORK" start_redis regress-redis 2>/dev/null
    port=$(free_port); mport=$(free_port)
    (pin "${SERVER_CPUS:-}" "$bin" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
        --node-id regress --config "$REPO_DIR/bench/herald-bench.toml" \
        --redis-url "redis://127.0.0.1:$REDIS_PORT") >"$OUT/edge.log" 2>&1 &
    EDGE_PID=$!
    EDGE_URL="http://127.0.0.1:$port"
    wait_for "edge" 30 curl -sf "$EDGE_URL/healthz"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# measure SIDE ROUND SCENARIO ARGS...: one run; the JSON gets the edge's RSS before the clients.
measure() {
    local side="$1" round="$2" scenario="$3"; shift 3
    local bin file="$OUT/$scenario-$side-$round.json"
    bin=$([[ $side == base ]] && echo "$BASE_BIN" || echo "$NEW_BIN")
    start_servers "$bin"
    local before; before=$(rss_kib "$EDGE_PID")
    if ! (pin "${LOADTEST_CPUS:-}" "$LOADTEST" "$scenario" --target herald --url "$EDGE_URL" \
        --server-pid "$EDGE_PID" --json --quiet "$@") >"$file.tmp" 2>"$file.log"; then
        log "FAIL $scenario $side round $round: $(tail -1 "$file.log")"
        rm -f "$file.tmp"; stop_servers; return
    fi
    python3 - "$file.tmp" "$before" >"$file" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); r["edge_rss_before_kib"] = int(sys.argv[2]); json.dump(r, sys.stdout)
PY
    rm -f "$file.tmp"
    stop_servers
    log "done $scenario $side round $round"
}

for round in $(seq 1 "$REPEATS"); do
    for side in base new; do
        # shellcheck disable=SC2086
        measure "$side" "$round" fanout $FANOUT_ARGS --duration "$DURATION" --drain 5s
        measure "$side" "$round" idle --connections "$IDLE_CONNECTIONS" --ramp 5s --duration 5s
        measure "$side" "$round" connect --rate "$CONNECT_RATE" --duration "$DURATION"
    done
done

python3 - "$OUT" "$THRESHOLD" <<'PY'
import glob, json, os, statistics, sys
out, threshold = sys.argv[1], float(sys.argv[2])
# metric name -> (scenario, function of a report, True when higher is better)
def edge(r): return r["servers"][0]
metrics = {
    "fanout deliveries/s": ("fanout", lambda r: r["results"]["messages"]["deliveries_per_sec"], True),
    "fanout p99 ms": ("fanout", lambda r: r["results"]["messages"]["latency"]["p99_ms"], False),
    "fanout edge CPU us/delivery": ("fanout", lambda r: 1e6 * edge(r)["cpu_cores"] / max(r["results"]["messages"]["deliveries_per_sec"], 1), False),
    "idle edge KiB/connection": ("idle", lambda r: (edge(r)["rss_mib"] * 1024 - r["edge_rss_before_kib"]) / max(r["results"]["connections"]["established"], 1), False),
    "connect p99 ms": ("connect", lambda r: r["results"]["connections"]["connect_latency"]["p99_ms"], False),
    "connect edge CPU us/connection": ("connect", lambda r: 1e6 * edge(r)["cpu_cores"] / float(r["params"]["rate"]), False),
}
def usable(r):
    c = r["results"]["connections"]
    m = r["results"].get("messages")
    lost = m and (m["seq"]["lost"] or m["seq"]["duplicates"] or m["seq"]["reordered"])
    return r.get("valid", True) and not lost and c["established"] == c["attempted"] and not c["errors"]
reports = {}
skipped = []
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    scenario, side, _ = os.path.basename(path)[:-5].rsplit("-", 2)
    r = json.load(open(path))
    if usable(r):
        reports.setdefault((scenario, side), []).append(r)
    else:
        skipped.append(os.path.basename(path))
print(f"\n{'metric':32} {'base (median)':>14} {'new (median)':>14} {'new/base':>9}")
worse = []
for name, (scenario, f, higher_better) in metrics.items():
    vals = {side: [f(r) for r in reports.get((scenario, side), [])] for side in ("base", "new")}
    if not vals["base"] or not vals["new"]:
        print(f"{name:32} {'-':>14} {'-':>14} {'n/a':>9}")
        continue
    b, n = statistics.median(vals["base"]), statistics.median(vals["new"])
    ratio = n / b if b else float("inf")
    bad = (ratio < 1 / threshold) if higher_better else (ratio > threshold)
    print(f"{name:32} {b:14.2f} {n:14.2f} {ratio:9.3f}{'  WORSE' if bad else ''}")
    if bad:
        worse.append(name)
if skipped:
    print(f"\nleft out (invalid, lossy or failed connections): {', '.join(skipped)}")
print(f"\nresults: {out}")
print("worse than the threshold: " + (", ".join(worse) if worse else "none"))
PY
