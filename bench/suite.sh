#!/usr/bin/env bash
# The runs behind docs/BENCHMARKS.md, each one a bench/run.sh call (Herald: nginx (1 worker) ->
# 3 edges -> Redis from bench/herald-cluster.sh; nchan: nginx (1 worker) + nchan -> Redis).
# Servers on CPU 0, the loadtest on CPU 1 (override with SERVER_CPUS / LOADTEST_CPUS).
#
#   bench/suite.sh [PART...]     parts: fanout-ws fanout-ws-direct fanout-sse fanout-longpoll rooms
#                                idle-10k idle-19k connect storm-kill storm-term   (default: all)
#                                three-way (Herald / nchan / sockudo, not in the default list:
#                                needs bench/sockudo/install.sh --build first): 3way-fanout-ws 3way-fanout-ws-direct
#                                3way-idle-10k 3way-idle-19k 3way-connect 3way-rooms 3way-storm
#                                (3way-storm: Herald and sockudo only)
# Results: bench/.run/results/<part>/ ; the table of each part is also in <part>/table.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_CLUSTER_CMD=bench/herald-cluster.sh REPEATS="${REPEATS:-3}"
export SERVER_CPUS="${SERVER_CPUS-0}" LOADTEST_CPUS="${LOADTEST_CPUS-1}"
R=bench/.run/results
ulimit -n "$(ulimit -Hn)"

part() { # part NAME [ENV=VALUE...] -- run.sh ARGS...
    local name="$1"; shift
    local envs=()
    while [[ $1 != -- ]]; do envs+=("$1"); shift; done
    shift
    echo "=== $name: ${envs[*]} bench/run.sh $*" >&2
    env TAG="$name" "${envs[@]}" bench/run.sh "$@" | tee "$R/$name.table.txt"
}

# storm NAME SIGNAL: 3 edges (direct, see idle), 19k clients, URLs [e1 e2 e1 e3] so that half
# of them (9.5k) sit on edge1, which is killed 5 s into the measured phase; each client
# reconnects to the next URL in the list (a live edge). Published through edge2.
storm() {
    local name="$1" sig="$2" env
    env=$(HERALD_DIRECT=1 bench/herald-cluster.sh up | grep '^HERALD_')
    eval "$env"
    local e=($HERALD_EDGE_URLS)
    echo "=== $name: 3 edges ${e[*]}, kill -$sig edge1" >&2
    TAG="$name" TARGETS=herald HERALD_CLUSTER_CMD= HERALD_URLS="${e[0]} ${e[1]} ${e[0]} ${e[2]}" \
        HERALD_PIDS="$HERALD_PIDS" BEFORE_EACH="bench/herald-cluster.sh restore" \
        bench/run.sh storm --connections "${STORM_N:-19000}" --ramp "${STORM_RAMP:-15s}" --source-ips 4 --rate 20 --channels 100 \
        --duration 20s --kill-after 5s --drain 10s --connect-timeout 30s --publish-url "${e[1]}" \
        --kill-cmd "kill -$sig \$(cat bench/.run/cluster/pids/edge1.pid)" | tee "$R/$name.table.txt" || true
    bench/herald-cluster.sh down >/dev/null 2>&1 || true
}

# 3way-storm SIGNAL: Herald (3 edges, bench/herald-cluster.sh, direct) and sockudo (3 nodes, Redis
# adapter, direct) in one run, the storm above for each: URLs [n1 n2 n1 n3], node 1 killed 5 s
# in (bench/kill-node.sh picks the target's node 1), published through node 2. nchan is left
# out: here it is one nginx worker, there is no second node to fail over to. Herald resumes
# from its last positions; sockudo's clients (Pusher has no resume) lose what was published
# while they were away, and the loadtest counts it. FRESH=1 gives sockudo three new nodes
# before each run (the killed node restarted), BEFORE_EACH restores Herald's edge1.
storm3() {
    local sig="$1" env
    env=$(HERALD_DIRECT=1 bench/herald-cluster.sh up | grep '^HERALD_')
    eval "$env"
    echo "=== 3way-storm: Herald $HERALD_EDGE_URLS and 3 sockudo nodes, kill -$sig node 1" >&2
    TAG="3way-storm" TARGETS="herald sockudo" HERALD_CLUSTER_CMD= HERALD_URLS="$HERALD_EDGE_URLS" \
        HERALD_PIDS="$HERALD_PIDS" SOCKUDO_NODES=3 SOCKUDO_DIRECT=1 FRESH=1 URL_ORDER="1 2 1 3" PUBLISH_URL_INDEX=2 \
        BEFORE_EACH="bench/herald-cluster.sh restore" \
        bench/run.sh storm --connections "${STORM_N:-19000}" --ramp "${STORM_RAMP:-15s}" --source-ips 4 --rate 20 --channels 100 \
        --duration 20s --kill-after 5s --drain 10s --connect-timeout 30s \
        --kill-cmd "bench/kill-node.sh $sig" | tee "$R/3way-storm.table.txt" || true
    bench/herald-cluster.sh down >/dev/null 2>&1 || true
}

run_part() {
    case "$1" in
    fanout-ws)
        part fanout-ws STEPS="10 20 30 40 80 120 160" -- fanout --connections 1000 --duration 6s --drain 5s ;;
    fanout-ws-direct)
        # the same, clients straight to one edge (no nginx in Herald's path): run.sh's single edge
        part fanout-ws-direct HERALD_CLUSTER_CMD= STEPS="20 40 80 120 160" -- fanout --connections 1000 --duration 6s --drain 5s ;;
    fanout-sse)
        part fanout-sse STEPS="10 20 40 80 120" -- fanout --transport sse --connections 1000 --duration 6s --drain 5s ;;
    fanout-longpoll)
        part fanout-longpoll STEPS="5 10 20 40 80" -- fanout --transport longpoll --connections 1000 --duration 6s --drain 5s ;;
    rooms)
        # direct to the edges: the loadtest tells same-edge from cross-edge by the URL used
        part rooms-k3 HERALD_DIRECT=1 -- rooms --connections 1000 --room-size 10 --rate 2 --duration 8s --drain 5s
        part rooms-k1 HERALD_DIRECT=1 HERALD_CLUSTER_EDGES=1 TARGETS=herald -- rooms --connections 1000 --room-size 10 --rate 2 --duration 8s --drain 5s ;;
    idle-10k | idle-19k)
        # This box's hard descriptor limit is 20000 per process and cannot be raised (no
        # CAP_SYS_RESOURCE), so: clients straight to ONE edge (through nginx each client costs
        # nginx 2 descriptors: 10k would not fit), and at most ~19k connections per process
        # (loadtest, edge, nchan's nginx worker).
        local n=${1#idle-}; n=${n%k}000
        [[ $n == 19000 ]] && n=19500
        part "idle-ws-${1#idle-}" FRESH=1 HERALD_DIRECT=1 HERALD_CLUSTER_EDGES=1 -- idle --connections $n --ramp 10s --duration 10s --source-ips 4 --connect-timeout 30s
        part "idle-sse-${1#idle-}" FRESH=1 HERALD_DIRECT=1 HERALD_CLUSTER_EDGES=1 -- idle --transport sse --connections $n --ramp 10s --duration 10s --source-ips 4 --connect-timeout 30s ;;
    connect)
        # clients straight to one edge, as nchan's clients reach nchan's nginx
        part connect HERALD_DIRECT=1 HERALD_CLUSTER_EDGES=1 STEPS="500 1000 2000 4000" STOP_AT_LIMIT=0 -- connect --duration 4s --source-ips 4 ;;
    3way-fanout-ws)
        # the prescribed topology: nginx (1 worker) -> 3 Herald edges -> Redis, and nginx ->
        # 3 sockudo nodes (Redis adapter) -> Redis; nchan as always
        part 3way-fanout-ws SOCKUDO_NODES=3 TARGETS="herald nchan sockudo" STEPS="10 20 40 80" STOP_AT_LIMIT=0 -- \
            fanout --connections 1000 --duration 6s --drain 5s ;;
    3way-fanout-ws-direct)
        # every target on one process pinned to CPU 0: Herald's single edge (+ its Redis),
        # nchan's nginx worker (+ Redis), one sockudo node (local adapter, no Redis)
        # every step for every target (STOP_AT_LIMIT=0): on a shared box one noisy step
        # must not end a target's stepping
        part 3way-fanout-ws-direct HERALD_CLUSTER_CMD= TARGETS="herald nchan sockudo" STEPS="20 40 80 120" STOP_AT_LIMIT=0 -- \
            fanout --connections 1000 --duration 6s --drain 5s ;;
    3way-idle-10k | 3way-idle-19k)
        local n=${1#3way-idle-}; n=${n%k}000
        [[ $n == 19000 ]] && n=19500
        part "3way-idle-ws-${1#3way-idle-}" FRESH=1 HERALD_CLUSTER_CMD= TARGETS="herald nchan sockudo" -- \
            idle --connections $n --ramp 10s --duration 10s --source-ips 4 --connect-timeout 30s ;;
    3way-rooms)
        # 3 Herald edges and 3 sockudo nodes (Redis adapter), clients straight to them (same-
        # vs cross-edge latency); nchan is its one nginx worker as always
        part 3way-rooms HERALD_DIRECT=1 SOCKUDO_NODES=3 SOCKUDO_DIRECT=1 TARGETS="herald nchan sockudo" -- \
            rooms --connections 1000 --room-size 10 --rate 2 --duration 8s --drain 5s ;;
    3way-connect)
        part 3way-connect HERALD_CLUSTER_CMD= TARGETS="herald nchan sockudo" STEPS="500 1000 2000 4000" STOP_AT_LIMIT=0 -- \
            connect --duration 4s --source-ips 4 ;;
    3way-storm) storm3 KILL ;;
    storm-kill) storm storm-kill KILL ;;
    storm-term) storm storm-term TERM ;;
    *) echo "unknown part $1" >&2; exit 2 ;;
    esac
}

mkdir -p "$R"
for p in "${@:-fanout-ws fanout-ws-direct fanout-sse fanout-longpoll rooms idle-10k idle-19k connect storm-kill storm-term}"; do
    for q in $p; do run_part "$q"; done
done
