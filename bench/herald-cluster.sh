#!/usr/bin/env bash
# Herald's benchmark topology: nginx (1 worker) -> K edges -> 1 Redis, as native processes on
# loopback, started with deploy/cluster.sh (state in bench/.run/cluster/) and then adjusted for
# benchmarking: nginx gets 1 worker, no access log and worker_connections 200000; no Prometheus;
# no API key (the loadtest publishes through nginx's /api/publish from loopback); no identity
# (HERALD_CLUSTER_AUTH=off: no HMAC secret, anonymous clients, every channel open), since the
# loadtest's clients carry no token; and bench/herald-bench.toml, which lifts the per-address
# rate limits that thousands of loadtest sockets from one address would hit; for the same reason
# nginx is rendered without its per-address limits (--no-limits) and Redis has no maxmemory --
# what is measured is what it always was.
# For bench/run.sh: HERALD_CLUSTER_CMD=bench/herald-cluster.sh
#
#   bench/herald-cluster.sh up      start; prints HERALD_URLS=<nginx url> and
#                                   HERALD_PIDS=<edge pids> <nginx worker pid> <redis pid>
#                                   (plus HERALD_EDGE_PIDS=..., HERALD_EDGE_URLS=...)
#   bench/herald-cluster.sh down    stop everything it started
#   bench/herald-cluster.sh env     the same lines as `up` prints, for a running cluster
#   bench/herald-cluster.sh restore start the edges that are not running (a storm killed one)
#   kill one edge: kill -9 $(cat bench/.run/cluster/pids/edge1.pid)
#
# environment:
#   HERALD_CLUSTER_EDGES=3  number of edges (K)
#   SERVER_CPUS=0           taskset CPU list for every server process (edges, nginx, Redis)
#   EDGE_CPUS, INFRA_CPUS   split pinning: edges on EDGE_CPUS, nginx + Redis on INFRA_CPUS
#                           (each defaults to SERVER_CPUS; empty = not pinned)
#   HERALD_BIN              edge binary (default target/release/herald)
#   HERALD_DIRECT=1         HERALD_URLS lists the edges themselves, not nginx (rooms: the loadtest
#                           tells same-edge from cross-edge deliveries by the URL a client used)
# The pinning is applied when each process starts (taskset at exec), so an edge's tokio
# runtime sizes itself to the CPUs it may use (one worker thread per allowed CPU).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CL_DIR="$RUN_DIR/cluster"
EDGE_CPUS="${EDGE_CPUS-${SERVER_CPUS:-}}"
INFRA_CPUS="${INFRA_CPUS-${SERVER_CPUS:-}}"
REAL_BIN="$(realpath "${HERALD_BIN:-$REPO_DIR/target/release/herald}")"

export HERALD_CLUSTER_DIR="$CL_DIR" HERALD_CLUSTER_PROMETHEUS=0 HERALD_CLUSTER_API_KEY="" HERALD_CLUSTER_AUTH=off \
    HERALD_CLUSTER_NGINX_LIMITS="--no-limits" HERALD_CLUSTER_REDIS_MAXMEMORY="${HERALD_CLUSTER_REDIS_MAXMEMORY:-0}" \
    HERALD_CLUSTER_CONFIG="${HERALD_CLUSTER_CONFIG:-$REPO_DIR/bench/herald-bench.toml}" \
    HERALD_CLUSTER_GRACE="${HERALD_CLUSTER_GRACE:-5}" RUST_LOG="${RUST_LOG:-warn}"

emit() {
    source "$CL_DIR/cluster.env"
    local master worker edges="" n
    for n in $HERALD_CLUSTER_EDGE_NAMES; do edges+="$(cat "$CL_DIR/pids/$n.pid") "; done
    master=$(cat "$CL_DIR/pids/nginx.pid")
    worker=$(pgrep -P "$master" | head -1)
    if [[ ${HERALD_DIRECT:-0} == 1 ]]; then
        echo "HERALD_URLS=\"$HERALD_CLUSTER_EDGE_URLS\""
    else
        echo "HERALD_URLS=$HERALD_CLUSTER_URL"
    fi
    echo "HERALD_PIDS=\"${edges}${worker} $(cat "$CL_DIR/pids/redis.pid")\""
    echo "HERALD_EDGE_PIDS=\"${edges% }\""
    echo "HERALD_EDGE_URLS=\"$HERALD_CLUSTER_EDGE_URLS\""
}

up() {
    mkdir -p "$CL_DIR/bin"
    # An edge "binary" that pins itself at exec. Named `herald` so that deploy/cluster.sh
    # recognises the process (it matches the binary's basename in /proc/PID/cmdline).
    if [[ -n $EDGE_CPUS ]]; then
        printf '#!/bin/sh\nexec taskset -c %s %s "$@"\n' "$EDGE_CPUS" "$REAL_BIN" >"$CL_DIR/bin/herald"
    else
        printf '#!/bin/sh\nexec %s "$@"\n' "$REAL_BIN" >"$CL_DIR/bin/herald"
    fi
    chmod +x "$CL_DIR/bin/herald"
    ulimit -n "$(ulimit -Hn)"
    local port; port=$(free_port)
    local pin_cmd=()
    [[ -n $INFRA_CPUS ]] && pin_cmd=(taskset -c "$INFRA_CPUS")
    # deploy/cluster.sh can report a process that is still exec'ing as "exited while starting"
    # (it reads /proc/PID/cmdline right after spawning) on a busy machine: one retry.
    local try
    for try in 1 2; do
        HERALD_BIN="$CL_DIR/bin/herald" HERALD_CLUSTER_PORT="$port" \
            "${pin_cmd[@]}" "$REPO_DIR/deploy/cluster.sh" up >"$CL_DIR/up.log" 2>&1 && break
        cat "$CL_DIR/up.log" >&2
        kill_strays
        [[ $try == 1 ]] || die "deploy/cluster.sh up failed"
        log "deploy/cluster.sh up failed; retrying once"
        port=$(free_port)
    done
    # Bench settings for nginx: one worker, no access log, room for 2 sockets per client.
    local conf="$CL_DIR/nginx/nginx.conf"
    sed -i -e 's/^worker_processes .*/worker_processes 1;/' \
        -e 's/^worker_rlimit_nofile .*/worker_rlimit_nofile 400000;/' \
        -e 's/worker_connections [0-9]*;/worker_connections 200000;/' \
        -e 's#^\( *\)access_log .*;#\1access_log off;#' "$conf"
    grep -q 'listen .*backlog' "$conf" || sed -i -E 's/^( *listen [0-9.:]+)( .*)?;/\1 backlog=65535\2;/' "$conf"
    nginx -q -p "$CL_DIR/nginx/" -c "$conf" -e "$CL_DIR/logs/nginx.log" \
        -g "pid $CL_DIR/nginx/nginx.pid;" -s reload
    # Wait until the old workers are gone and exactly one new worker runs.
    local master i; master=$(cat "$CL_DIR/pids/nginx.pid")
    for ((i = 0; i < 100; i++)); do
        [[ $(pgrep -P "$master" | wc -l) == 1 ]] && grep -q . <(curl -sf "http://127.0.0.1:$port/healthz") && break
        sleep 0.1
    done
    [[ $(pgrep -P "$master" | wc -l) == 1 ]] || die "nginx did not settle on one worker"
    log "herald cluster up on :$port (edges pinned to '${EDGE_CPUS:-none}', nginx+redis to '${INFRA_CPUS:-none}')"
    emit
}

# Processes still listening on this cluster's ports that deploy/cluster.sh lost track of (its
# pid file was removed by the race above): found by port, stopped.
kill_strays() {
    [[ -f $CL_DIR/cluster.env ]] || return 0
    local ports p pid
    ports=$(grep -v PROMETHEUS "$CL_DIR/cluster.env" | grep -oE '_PORT=[0-9]+' | cut -d= -f2 | sort -u)
    for p in $ports; do
        for pid in $(ss -Htlnp "sport = :$p" 2>/dev/null | grep -oE 'pid=[0-9]+' | cut -d= -f2 | sort -u); do
            log "stopping stray pid $pid on port $p"; kill "$pid" 2>/dev/null || true
        done
    done
}

# Start every edge that is not running (after a storm killed one), pinned as at `up`.
restore() {
    source "$CL_DIR/cluster.env"
    ulimit -n "$(ulimit -Hn)"
    local n started=0
    for n in $HERALD_CLUSTER_EDGE_NAMES; do
        if ! HERALD_BIN="$CL_DIR/bin/herald" "$REPO_DIR/deploy/cluster.sh" status 2>/dev/null | grep -q "^$n .*running"; then
            local url="HERALD_CLUSTER_${n^^}_URL" try
            for try in 1 2 3; do
                HERALD_BIN="$CL_DIR/bin/herald" "$REPO_DIR/deploy/cluster.sh" start "$n" >&2 || true
                # deploy/cluster.sh may lose the pid of a process still exec'ing: check for real
                if curl -sf -m 2 "${!url}/readyz" >/dev/null && [[ -s $CL_DIR/pids/$n.pid ]]; then break; fi
                log "$n did not come back cleanly (try $try); stopping what listens on its port"
                local port="HERALD_CLUSTER_${n^^}_PORT" pid
                for pid in $(ss -Htlnp "sport = :${!port}" | grep -oE 'pid=[0-9]+' | cut -d= -f2 | sort -u); do
                    kill "$pid" 2>/dev/null || true
                done
                sleep 1
            done
            started=1
        fi
    done
    # nginx keeps a failed edge out of rotation for fail_timeout (5 s): wait until it is back,
    # or the next run's clients would all land on the other edges.
    [[ $started == 0 ]] || sleep 6
}

case "${1:-}" in
    up) up ;;
    restore) restore ;;
    down) "$REPO_DIR/deploy/cluster.sh" down; sleep 0.5; kill_strays ;;
    env) emit ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
esac
