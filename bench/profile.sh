#!/usr/bin/env bash
# CPU profile of one Herald edge under fan-out: clients -> 1 edge -> Redis (HERALD_DIRECT=0: via nginx)
# (bench/herald-cluster.sh, servers on CPU 0), the loadtest on CPU 1, and `perf record`
# (software cpu-clock event: works inside VMs without hardware counters) on the edge while
# the loadtest runs. Writes into OUT (default docs/profiles/):
#   edge-fanout.folded.gz   folded stacks (inferno-collapse-perf)
#   edge-fanout-summary.txt inclusive CPU share per category (bench/profile_summary.py)
#   edge-fanout.svg         flame graph (inferno-flamegraph), when inferno is installed
#   edge-fanout-top.txt     top symbols by self time, and by DSO
#   edge-fanout-run.txt     the loadtest's report of the profiled run
#
# usage: bench/profile.sh [herald-loadtest fanout flags]   (default: 1000 subscribers, 100 msg/s = 100k deliveries/s)
# needs: perf (Debian linux-perf); cargo install inferno (for the .folded and .svg)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-$REPO_DIR/docs/profiles}"
SECS="${SECS:-10}"
export SERVER_CPUS="${SERVER_CPUS-0}" HERALD_CLUSTER_EDGES=1 HERALD_DIRECT="${HERALD_DIRECT-1}"
LOADTEST_CPUS="${LOADTEST_CPUS-1}"
LOADTEST="${LOADTEST:-$REPO_DIR/target/release/herald-loadtest}"
PATH="$HOME/.cargo/bin:$PATH"
mkdir -p "$OUT" "$RUN_DIR/profile"
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--connections 1000 --rate 100)

eval "$("$BENCH_DIR/herald-cluster.sh" up | grep -E '^HERALD_')"
trap '"$BENCH_DIR/herald-cluster.sh" down >/dev/null 2>&1 || true' EXIT
edge="${HERALD_EDGE_PIDS%% *}"
pids=(); for p in $HERALD_PIDS; do pids+=(--server-pid "$p"); done
log "edge pid $edge; loadtest: fanout ${args[*]} --duration $((SECS + 4))s"
taskset -c "$LOADTEST_CPUS" "$LOADTEST" fanout --url "$HERALD_URLS" "${pids[@]}" "${args[@]}" \
    --duration "$((SECS + 4))s" --quiet >"$OUT/edge-fanout-run.txt" 2>&1 &
lt=$!
sleep 3 # connected and publishing
DATA="$RUN_DIR/profile/perf.data"
perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$edge" -o "$DATA" -- sleep "$SECS" \
    2>"$RUN_DIR/profile/perf-record.log"
wait "$lt" || true
report() { # report SORT LINES
    perf report -i "$DATA" --stdio --no-children -g none --sort "$1" 2>/dev/null >"$RUN_DIR/profile/report.txt" || true
    grep -v -e '^#' -e '^$' "$RUN_DIR/profile/report.txt" | sed -E 's/ +- +- *$//' | head -"$2" || true
}
{
    echo "# perf record -e cpu-clock -F 499 --call-graph dwarf -p <edge> -- sleep $SECS"
    echo "# while: herald-loadtest fanout ${args[*]} (see edge-fanout-run.txt)"
    echo "## by DSO (self time)"
    report dso 10
    echo "## top symbols (self time)"
    report dso,symbol 60
} >"$OUT/edge-fanout-top.txt"
if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$DATA" 2>/dev/null | inferno-collapse-perf | gzip -9 >"$OUT/edge-fanout.folded.gz"
    # frames narrower than 0.5 px are left out: keeps the SVG small
    zcat "$OUT/edge-fanout.folded.gz" | inferno-flamegraph --minwidth 0.5 \
        --title "herald edge under fan-out: ${args[*]}" >"$OUT/edge-fanout.svg"
    python3 "$BENCH_DIR/profile_summary.py" "$OUT/edge-fanout.folded.gz" >"$OUT/edge-fanout-summary.txt"
fi
log "wrote $OUT/edge-fanout-{top.txt,run.txt,summary.txt,folded.gz,svg}"
