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
# usage: bench/profile.sh [herald-loadtest flags]   (default: 1000 subscribers, 100 msg/s = 100k deliveries/s)
#   SCENARIO=connect bench/profile.sh --rate 1000 --source-ips 4   the connect scenario instead
#   (files edge-connect-*; the default args then are --rate 1000 --source-ips 4); the top file
#   also lists the inclusive share of the frames that matter per connection (redis, hyper, ...)
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
SCENARIO="${SCENARIO:-fanout}"
args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
    case "$SCENARIO" in
        fanout) args=(--connections 1000 --rate 100) ;;
        *) args=(--rate 1000 --source-ips 4) ;;
    esac
fi
NAME="edge-$SCENARIO"

eval "$("$BENCH_DIR/herald-cluster.sh" up | grep -E '^HERALD_')"
trap '"$BENCH_DIR/herald-cluster.sh" down >/dev/null 2>&1 || true' EXIT
edge="${HERALD_EDGE_PIDS%% *}"
pids=(); for p in $HERALD_PIDS; do pids+=(--server-pid "$p"); done
log "edge pid $edge; loadtest: $SCENARIO ${args[*]} --duration $((SECS + 4))s"
taskset -c "$LOADTEST_CPUS" "$LOADTEST" "$SCENARIO" --url "$HERALD_URLS" "${pids[@]}" "${args[@]}" \
    --duration "$((SECS + 4))s" --quiet >"$OUT/$NAME-run.txt" 2>&1 &
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
    echo "# while: herald-loadtest $SCENARIO ${args[*]} (see $NAME-run.txt)"
    echo "## by DSO (self time)"
    report dso 10
    echo "## top symbols (self time)"
    report dso,symbol 60
    echo "## inclusive share of selected frames (children included)"
    perf report -i "$DATA" --stdio --children -g none --sort symbol --percent-limit 0.5 2>/dev/null |
        grep -E 'redis::|hyper::proto|tungstenite::handshake|Connection::subscribe|Connection::open|hub::Hub::|presence|identity::|axum::routing|tokio::net::tcp::listener|sys_accept|__sys_connect|tcp_v4_connect|do_sys_poll|sendto|__x64_sys_(write|sendto|recvfrom|read|epoll_wait|accept4|close)' |
        sed -E 's/[[:space:]]+$//; s/  +/ /g' | cut -c1-200 | head -40 || true
} >"$OUT/$NAME-top.txt"
if command -v inferno-collapse-perf >/dev/null; then
    perf script -i "$DATA" 2>/dev/null | inferno-collapse-perf | gzip -9 >"$OUT/$NAME.folded.gz"
    # frames narrower than 0.5 px are left out: keeps the SVG small
    zcat "$OUT/$NAME.folded.gz" | inferno-flamegraph --minwidth 0.5 \
        --title "herald edge under $SCENARIO: ${args[*]}" >"$OUT/$NAME.svg"
    python3 "$BENCH_DIR/profile_summary.py" "$OUT/$NAME.folded.gz" >"$OUT/$NAME-summary.txt"
fi
log "wrote $OUT/$NAME-{top.txt,run.txt,summary.txt,folded.gz,svg}"
