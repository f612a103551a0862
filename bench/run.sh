#!/usr/bin/env bash
# Runs one loadtest scenario against Herald, nginx+nchan and (when asked) sockudo on this
# machine, in one run, REPEATS times each (interleaved), then prints a side-by-side table
# (median, min-max, Herald / peer ratios). Results: bench/.run/results/<tag>/*.json.
#
# usage: bench/run.sh SCENARIO [herald-loadtest flags...]
#   bench/run.sh fanout --connections 1000 --rate 100 --duration 20s
#   STEPS="50 100 200 400" bench/run.sh fanout --connections 1000 --duration 10s  # --rate per step
#   bench/run.sh idle --connections 10000 --ramp 10s --duration 10s --transport sse
#
# environment:
#   REPEATS=3            runs per target (median with min-max is reported)
#   TARGETS="herald nchan"   add sockudo for the three-way runs (TARGETS="herald nchan sockudo";
#                        needs bench/sockudo/install.sh's cached binary)
#   SOCKUDO_NODES=1      sockudo nodes: 1 = local adapter; 3 = Redis adapter behind nginx
#                        (SOCKUDO_DIRECT=1: clients to the nodes' own URLs), see bench/lib.sh
#   SERVER_CPUS=0        taskset CPU list for the servers (default: 0 on a 2+ core box)
#   LOADTEST_CPUS=1      taskset CPU list for the loadtest (default: the last CPU)
#   HERALD_URLS="http://127.0.0.1:8080 ..."   use an already running Herald (nothing started);
#   HERALD_PIDS="..."    its pids, sampled for CPU and RSS
#   HERALD_CLUSTER_CMD=deploy/cluster.sh      start/stop Herald with `CMD up` / `CMD down`;
#                        `CMD up` must print HERALD_URLS=... and HERALD_PIDS=... lines; the
#                        loadtest carries no token, so such a cluster must accept anonymous
#                        clients (bench/herald-cluster.sh runs deploy/cluster.sh with
#                        HERALD_CLUSTER_AUTH=off)
#   otherwise one edge from target/release/herald is started, with a Redis of its own
#   (HERALD_REDIS=0: in-process broker).
#   HERALD_BIN, LOADTEST  binaries (default target/release/herald, target/release/herald-loadtest)
#   FRESH=1              restart the servers before every run (idle: per-connection memory)
#   BEFORE_EACH='cmd'    shell command run (from the repo root) before every run, e.g.
#                        'bench/herald-cluster.sh restore' to restart an edge a storm killed
#   URL_ORDER="1 2 1 3"  pass each target's URLs in this order (1-based, repeats allowed): the
#                        storm puts half the clients on the first URL's node, which it kills
#   PUBLISH_URL_INDEX=2  --publish-url = the target's URL number 2 (before URL_ORDER)
#   every loadtest run sees BENCH_TARGET=<target> and BENCH_RUN_DIR in its environment, so a
#   --kill-cmd can name the target's node (bench/kill-node.sh)
#   TAG=name             results folder name (default: scenario-timestamp)
#   STEPS="r1 r2 ..."    run the scenario once per --rate value; STOP_AT_LIMIT=1 (default) stops
#                        stepping a target after the first step whose median p99 > LIMIT_MS (50)
#                        or that lost messages (that step is kept: it shows where the limit is)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ $# -ge 1 ]] || { sed -n '2,35p' "$0"; exit 2; }
SCENARIO="$1"; shift
REPEATS="${REPEATS:-3}"
TARGETS="${TARGETS:-herald nchan}"
default_pinning
export SERVER_CPUS LOADTEST_CPUS # HERALD_CLUSTER_CMD (bench/herald-cluster.sh) pins with them
TAG="${TAG:-$SCENARIO-$(date +%Y%m%d-%H%M%S)}"
OUT="$RUN_DIR/results/$TAG"
mkdir -p "$OUT"
LOADTEST="${LOADTEST:-$REPO_DIR/target/release/herald-loadtest}"
HERALD_BIN="${HERALD_BIN:-$REPO_DIR/target/release/herald}"
export HERALD_BIN

build() {
    local missing=()
    [[ -x $LOADTEST ]] || missing+=(-p herald-loadtest)
    [[ $TARGETS != *herald* || -n ${HERALD_URLS:-} || -n ${HERALD_CLUSTER_CMD:-} || -x $HERALD_BIN ]] ||
        missing+=(-p herald-edge)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "building ${missing[*]} (release)"
        (cd "$REPO_DIR" && cargo build --release "${missing[@]}")
    fi
}

HERALD_STARTED=""
start_herald() {
    if [[ -n ${HERALD_URLS:-} ]]; then
        log "using running Herald at $HERALD_URLS"
        return
    fi
    if [[ -n ${HERALD_CLUSTER_CMD:-} ]]; then
        local envlines
        envlines=$(cd "$REPO_DIR" && $HERALD_CLUSTER_CMD up | grep -E '^HERALD_(URLS|PIDS)=')
        eval "$envlines"
        HERALD_STARTED="cmd"
        log "Herald cluster up: $HERALD_URLS"
        return
    fi
    local dir="$RUN_DIR/herald" redis_args=()
    mkdir -p "$dir"
    if [[ ${HERALD_REDIS:-1} == 1 ]]; then
        start_redis herald-redis
        redis_args=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
        HERALD_REDIS_PID=$REDIS_PID
    fi
    local port mport
    port=$(free_port); mport=$(free_port)
    (pin "${SERVER_CPUS:-}" "$HERALD_BIN" --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" \
        --node-id bench-edge-1 --config "$REPO_DIR/bench/herald-bench.toml" "${redis_args[@]}") \
        >"$dir/edge.log" 2>&1 &
    echo $! >"$dir/edge.pid"
    HERALD_URLS="http://127.0.0.1:$port"
    wait_for "herald edge" 20 curl -sf "$HERALD_URLS/healthz"
    HERALD_PIDS="$(cat "$dir/edge.pid") ${HERALD_REDIS_PID:-}"
    HERALD_STARTED="single"
    log "herald edge pid $(cat "$dir/edge.pid") on $HERALD_URLS"
}

stop_all() {
    case "$HERALD_STARTED" in
        cmd) (cd "$REPO_DIR" && $HERALD_CLUSTER_CMD down) || true ;;
        single)
            kill "$(cat "$RUN_DIR/herald/edge.pid")" 2>/dev/null || true
            [[ -f $RUN_DIR/herald-redis/redis.pid ]] && kill "$(cat "$RUN_DIR/herald-redis/redis.pid")" 2>/dev/null || true
            ;;
    esac
    stop_nchan 2>/dev/null || true
    stop_sockudo 2>/dev/null || true
}
trap stop_all EXIT

# FRESH=1: new server processes before every run (idle: a reused process keeps the memory
# the previous run's connections left in its allocator, and the next delta reads ~0).
restart_target() {
    if [[ $1 == herald && -n $HERALD_STARTED ]]; then
        case "$HERALD_STARTED" in
            cmd) (cd "$REPO_DIR" && $HERALD_CLUSTER_CMD down) >/dev/null 2>&1 || true ;;
            single)
                kill "$(cat "$RUN_DIR/herald/edge.pid")" 2>/dev/null || true
                kill "$(cat "$RUN_DIR/herald-redis/redis.pid")" 2>/dev/null || true
                sleep 0.5 ;;
        esac
        HERALD_URLS="" HERALD_STARTED=""
        start_herald
    elif [[ $1 == nchan ]]; then
        stop_nchan 2>/dev/null || true
        sleep 0.5
        start_nchan
    elif [[ $1 == sockudo ]]; then
        stop_sockudo
        sleep 0.5
        start_sockudo
    fi
}

# run_one TARGET REP RATE
run_one() {
    local target="$1" rep="$2" rate="$3" urls pids args=()
    shift 3
    case "$target" in
        herald) urls="$HERALD_URLS"; pids="$HERALD_PIDS" ;;
        nchan) urls="$NCHAN_URL"; pids="$NCHAN_PIDS" ;;
        sockudo) urls="$SOCKUDO_URLS"; pids="$SOCKUDO_PIDS" ;;
        *) die "unknown target $target" ;;
    esac
    local list=($urls) u i
    if [[ -n ${PUBLISH_URL_INDEX:-} ]]; then args+=(--publish-url "${list[PUBLISH_URL_INDEX - 1]}"); fi
    if [[ -n ${URL_ORDER:-} ]]; then
        for i in $URL_ORDER; do
            [[ -n ${list[i - 1]:-} ]] || die "URL_ORDER names URL $i; $target has ${#list[@]}"
            args+=(--url "${list[i - 1]}")
        done
    else
        for u in "${list[@]}"; do args+=(--url "$u"); done
    fi
    for p in $pids; do args+=(--server-pid "$p"); done
    [[ -n $rate ]] && args+=(--rate "$rate")
    local file="$OUT/$SCENARIO-$target${rate:+-r$rate}-$rep.json"
    if [[ -n ${BEFORE_EACH:-} ]]; then (cd "$REPO_DIR" && eval "$BEFORE_EACH") >&2 || log "BEFORE_EACH failed"; fi
    log "run $rep/$REPEATS $SCENARIO $target${rate:+ rate $rate} (load average $(cut -d' ' -f1 /proc/loadavg))"
    echo "$(date +%T) $(basename "$file") loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/loadavg.txt"
    BENCH_TARGET="$target" BENCH_RUN_DIR="$RUN_DIR" run_pinned "${LOADTEST_CPUS:-}" "$LOADTEST" "$SCENARIO" --target "$target" "${args[@]}" "$@" --json --quiet \
        >"$file" 2>"$file.log" || { log "loadtest failed, see $file.log"; return 1; }
}
run_pinned() { # like lib.sh's pin, without exec: the loadtest runs in the foreground
    local cpus="$1"; shift
    if [[ -n $cpus ]] && command -v taskset >/dev/null; then taskset -c "$cpus" "$@"; else "$@"; fi
}

build
[[ $TARGETS == *herald* ]] && start_herald
[[ $TARGETS == *nchan* ]] && start_nchan
if [[ $TARGETS == *sockudo* ]]; then
    sockudo_bin >/dev/null || die "TARGETS has sockudo but there is no binary: bench/sockudo/install.sh --build"
    start_sockudo
fi
{
    echo "scenario=$SCENARIO args=$* repeats=$REPEATS"
    echo "pinned: servers to CPUs '${SERVER_CPUS:-none}', loadtest to CPUs '${LOADTEST_CPUS:-none}' (of $(nproc))"
    echo "herald=${HERALD_URLS:-} nchan=${NCHAN_URL:-} sockudo=${SOCKUDO_URLS:-} (nodes ${SOCKUDO_NODES:-1})"
    echo "herald_bin=$HERALD_BIN loadtest=$LOADTEST commit=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null)"
    echo "cluster=${HERALD_CLUSTER_CMD:-single edge} edges=${HERALD_CLUSTER_EDGES:-3} edge_cpus=${EDGE_CPUS-${SERVER_CPUS:-}} infra_cpus=${INFRA_CPUS-${SERVER_CPUS:-}}"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/setup.txt"

# over_limit TARGET RATE: whether that step's median p99 is over LIMIT_MS or any run lost messages
over_limit() {
    python3 - "$OUT" "$SCENARIO-$1${2:+-r$2}" "${LIMIT_MS:-50}" <<'PY'
import glob, json, statistics, sys
out, stem, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
p99s, lost = [], 0
for f in glob.glob(f"{out}/{stem}-[0-9]*.json"):
    try:
        m = json.load(open(f))["results"]["messages"]
    except Exception:
        continue
    p99s.append(m["latency"]["p99_ms"]); lost += m["seq"]["lost"]
sys.exit(0 if (not p99s or lost or statistics.median(p99s) > limit) else 1)
PY
}

active="$TARGETS"
for rate in ${STEPS:-""}; do
    [[ -n ${active// /} ]] || break
    for ((rep = 1; rep <= REPEATS; rep++)); do
        for target in $active; do
            [[ ${FRESH:-0} == 1 && ! ($rep == 1 && -z $rate) ]] && restart_target "$target"
            run_one "$target" "$rep" "$rate" "$@" || true
        done
    done
    if [[ -n $rate && ${STOP_AT_LIMIT:-1} == 1 ]]; then
        next=""
        for target in $active; do
            if over_limit "$target" "$rate"; then log "$target over the limit at rate $rate: not stepped further"
            else next+="$target "; fi
        done
        active="$next"
    fi
done
python3 "$BENCH_DIR/compare.py" "$OUT"
