#!/usr/bin/env bash
# The runs behind docs/BENCHMARKS.md, each one a bench/run.sh call (Herald: nginx (1 worker) ->
# 3 edges -> Redis from bench/herald-cluster.sh; nchan: nginx (1 worker) + nchan -> Redis).
# Servers on CPU 0, the loadtest on CPU 1 (override with SERVER_CPUS / LOADTEST_CPUS).
#
#   bench/suite.sh [PART...]     parts: fanout-ws fanout-sse fanout-longpoll rooms idle-10k
#                                idle-50k connect storm-kill storm-term   (default: all)
# Results: bench/.run/results/<part>/ ; the table of each part is also in <part>/table.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_CLUSTER_CMD=bench/herald-cluster.sh REPEATS="${REPEATS:-3}"
export SERVER_CPUS="${SERVER_CPUS-0}" LOADTEST_CPUS="${LOADTEST_CPUS-1}"
R=bench/.run/results

part() { # part NAME [ENV=VALUE...] -- run.sh ARGS...
    local name="$1"; shift
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    echo "=== $name: ${envs[*]} bench/run.sh $*" >&2
    env TAG="$name" "${envs[@]}" bench/run.sh "$@" | tee "$R/$name.table.txt"
}

run_part() {
    case "$1" in
    fanout-ws)
        part fanout-ws STEPS="50 100 200 400 800" -- fanout --connections 1000 --duration 8s --drain 5s ;;
    fanout-sse)
        part fanout-sse STEPS="50 100 200 400 800" -- fanout --transport sse --connections 1000 --duration 8s --drain 5s ;;
    fanout-longpoll)
        part fanout-longpoll STEPS="25 50 100 200 400" -- fanout --transport longpoll --connections 1000 --duration 8s --drain 5s ;;
    rooms)
        # direct to the edges: the loadtest tells same-edge from cross-edge by the URL used
        part rooms-k3 HERALD_DIRECT=1 -- rooms --connections 1000 --room-size 10 --rate 2 --duration 8s --drain 5s
        part rooms-k1 HERALD_DIRECT=1 HERALD_CLUSTER_EDGES=1 TARGETS=herald -- rooms --connections 1000 --room-size 10 --rate 2 --duration 8s --drain 5s ;;
    idle-10k)
        part idle-ws-10k -- idle --connections 10000 --ramp 10s --duration 10s --source-ips 4
        part idle-sse-10k -- idle --transport sse --connections 10000 --ramp 10s --duration 10s --source-ips 4 ;;
    idle-50k)
        part idle-ws-50k -- idle --connections 50000 --ramp 25s --duration 10s --source-ips 8 --connect-timeout 30s
        part idle-sse-50k -- idle --transport sse --connections 50000 --ramp 25s --duration 10s --source-ips 8 --connect-timeout 30s ;;
    connect)
        part connect STEPS="500 1000 2000 4000" STOP_AT_LIMIT=0 -- connect --duration 5s --source-ips 4 ;;
    storm-kill)
        part storm-kill TARGETS=herald BEFORE_EACH="bench/herald-cluster.sh restore" -- storm --connections 30000 \
            --ramp 20s --source-ips 8 --rate 20 --channels 100 --duration 20s --kill-after 5s --drain 10s \
            --connect-timeout 30s --kill-cmd 'kill -KILL $(cat bench/.run/cluster/pids/edge1.pid)' ;;
    storm-term)
        part storm-term TARGETS=herald BEFORE_EACH="bench/herald-cluster.sh restore" -- storm --connections 30000 \
            --ramp 20s --source-ips 8 --rate 20 --channels 100 --duration 20s --kill-after 5s --drain 10s \
            --connect-timeout 30s --kill-cmd 'kill -TERM $(cat bench/.run/cluster/pids/edge1.pid)' ;;
    *) echo "unknown part $1" >&2; exit 2 ;;
    esac
}

mkdir -p "$R"
for p in "${@:-fanout-ws fanout-sse fanout-longpoll rooms idle-10k idle-50k connect storm-kill storm-term}"; do
    for q in $p; do run_part "$q"; done
done
