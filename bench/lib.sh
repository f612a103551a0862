# Shared helpers of the bench scripts (sourced, not run).
# Servers run as plain processes on free loopback ports; their pids, logs and configs live
# under $RUN_DIR (default bench/.run/).

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
RUN_DIR="${RUN_DIR:-$BENCH_DIR/.run}"

log() { echo "[bench] $*" >&2; }
die() { echo "[bench] error: $*" >&2; exit 1; }

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_for() {
    local what="$1" secs="$2"; shift 2
    local i
    for ((i = 0; i < secs * 10; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up within ${secs}s"
}

# The nchan module shipped by Debian's libnginx-mod-nchan.
nchan_module() {
    local m
    for m in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
        [[ -f $m ]] && { echo "$m"; return; }
    done
    die "ngx_nchan_module.so not found: apt-get install -y nginx libnginx-mod-nchan"
}

# pin CPULIST COMMAND...: execs COMMAND pinned with taskset when CPULIST is set and taskset
# exists. It execs, so `pin ... &` leaves $! as the server's own pid.
pin() {
    local cpus="$1"; shift
    if [[ -n $cpus ]] && command -v taskset >/dev/null; then
        exec taskset -c "$cpus" "$@"
    else
        exec "$@"
    fi
}

# default_pinning: on a machine with 2+ cores, servers on CPUs 0..n-2 and the loadtest on the
# last one, unless SERVER_CPUS / LOADTEST_CPUS are set (empty = no pinning).
default_pinning() {
    local ncpu
    ncpu=$(nproc)
    if [[ $ncpu -ge 2 ]]; then
        SERVER_CPUS="${SERVER_CPUS-0-$((ncpu - 2))}"
        LOADTEST_CPUS="${LOADTEST_CPUS-$((ncpu - 1))}"
    fi
}

# start_redis NAME: starts redis-server on a free port; sets REDIS_PORT, REDIS_PID.
start_redis() {
    local name="$1" dir="$RUN_DIR/$1"
    command -v redis-server >/dev/null || die "redis-server missing: apt-get install -y redis-server"
    mkdir -p "$dir"
    REDIS_PORT=$(free_port)
    pin "${SERVER_CPUS:-}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log" --maxclients 10000 &
    REDIS_PID=$!
    echo "$REDIS_PID" >"$dir/redis.pid"
    wait_for "redis ($name)" 10 redis-cli -p "$REDIS_PORT" ping
    log "redis ($name) pid $REDIS_PID on 127.0.0.1:$REDIS_PORT"
}

# start_nchan: starts redis + nginx/nchan (1 worker); sets NCHAN_URL, NCHAN_PIDS.
start_nchan() {
    local dir="$RUN_DIR/nchan"
    command -v nginx >/dev/null || die "nginx missing: apt-get install -y nginx libnginx-mod-nchan"
    mkdir -p "$dir/tmp"
    start_redis nchan-redis
    local port; port=$(free_port)
    sed -e "s#@MODULE@#$(nchan_module)#" -e "s#@RUN@#$dir#g" -e "s#@PORT@#$port#" \
        -e "s#@REDIS_PORT@#$REDIS_PORT#" "$BENCH_DIR/nchan/nginx.conf" >"$dir/nginx.conf"
    pin "${SERVER_CPUS:-}" nginx -c "$dir/nginx.conf" -p "$dir" 2>>"$dir/nginx-error.log" &
    echo $! >"$dir/nginx-master.pid"
    NCHAN_URL="http://127.0.0.1:$port"
    wait_for "nginx/nchan" 10 curl -sf "$NCHAN_URL/nchan_status"
    local worker; worker=$(pgrep -P "$(cat "$dir/nginx-master.pid")" | head -1)
    NCHAN_PIDS="$worker $REDIS_PID"
    log "nginx/nchan on $NCHAN_URL (worker pid $worker)"
}

stop_nchan() {
    local dir="$RUN_DIR/nchan"
    [[ -f $dir/nginx-master.pid ]] && kill "$(cat "$dir/nginx-master.pid")" 2>/dev/null
    [[ -f $RUN_DIR/nchan-redis/redis.pid ]] && kill "$(cat "$RUN_DIR/nchan-redis/redis.pid")" 2>/dev/null
    rm -f "$dir/nginx-master.pid" "$RUN_DIR/nchan-redis/redis.pid"
}

# The cached sockudo binary (bench/sockudo/install.sh), or nothing.
sockudo_bin() { "$BENCH_DIR/sockudo/install.sh" 2>/dev/null; }

# start_sockudo_node NAME PORT [VAR=VALUE...]: one sockudo process with bench/sockudo/sockudo.env,
# pinned like the other servers, in $RUN_DIR/sockudo/NAME; prints its pid.
start_sockudo_node() {
    local name="$1" port="$2" bin dir="$RUN_DIR/sockudo/$1"; shift 2
    bin=$(sockudo_bin) || die "no sockudo binary: bench/sockudo/install.sh --build"
    mkdir -p "$dir"
    (
        cd "$dir" # sockudo looks for config/config.json under its cwd: there is none here
        set -a; source "$BENCH_DIR/sockudo/sockudo.env"; set +a
        export HOST=127.0.0.1 PORT="$port" INSTANCE_PROCESS_ID="bench-$name" "$@"
        pin "${SERVER_CPUS:-}" "$bin"
    ) >"$dir/sockudo.log" 2>&1 &
    echo $! >"$dir/pid"
    wait_for "sockudo $name" 30 curl -sf "http://127.0.0.1:$port/up"
    cat "$dir/pid"
}

# start_sockudo: sockudo with its local adapter, one node (SOCKUDO_NODES=1, the default), or
# SOCKUDO_NODES=N nodes with the Redis adapter behind nginx (1 worker, bench/sockudo/nginx.conf);
# SOCKUDO_DIRECT=1 gives the nodes' own URLs instead of nginx's. Sets SOCKUDO_URLS, SOCKUDO_PIDS
# (nodes, then nginx worker and redis) and SOCKUDO_NODE_URLS.
start_sockudo() {
    local n="${SOCKUDO_NODES:-1}" dir="$RUN_DIR/sockudo" i port pid
    mkdir -p "$dir"
    SOCKUDO_PIDS="" SOCKUDO_NODE_URLS=""
    if [[ $n == 1 ]]; then
        port=$(free_port)
        pid=$(start_sockudo_node node1 "$port")
        SOCKUDO_URLS="http://127.0.0.1:$port" SOCKUDO_NODE_URLS=$SOCKUDO_URLS SOCKUDO_PIDS=$pid
        log "sockudo (local adapter) pid $pid on $SOCKUDO_URLS"
        return
    fi
    command -v nginx >/dev/null || die "nginx missing: apt-get install -y nginx"
    start_redis sockudo-redis
    local nodes=""
    for ((i = 1; i <= n; i++)); do
        port=$(free_port)
        # a clustered sockudo refuses a node-local cache (idempotency, Ably compatibility)
        pid=$(start_sockudo_node "node$i" "$port" ADAPTER_DRIVER=redis CACHE_DRIVER=redis \
            DATABASE_REDIS_HOST=127.0.0.1 DATABASE_REDIS_PORT="$REDIS_PORT")
        SOCKUDO_PIDS+="$pid " SOCKUDO_NODE_URLS+="http://127.0.0.1:$port "
        nodes+="server 127.0.0.1:$port;"
    done
    mkdir -p "$dir/nginx/tmp"
    port=$(free_port)
    sed -e "s#@RUN@#$dir/nginx#g" -e "s#@PORT@#$port#" -e "s#@NODES@#$nodes#" \
        "$BENCH_DIR/sockudo/nginx.conf" >"$dir/nginx/nginx.conf"
    pin "${SERVER_CPUS:-}" nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" 2>>"$dir/nginx/nginx-error.log" &
    echo $! >"$dir/nginx-master.pid"
    wait_for "nginx (sockudo)" 10 curl -sf "http://127.0.0.1:$port/up"
    local worker; worker=$(pgrep -P "$(cat "$dir/nginx-master.pid")" | head -1)
    SOCKUDO_NODE_URLS=${SOCKUDO_NODE_URLS% }
    if [[ ${SOCKUDO_DIRECT:-0} == 1 ]]; then
        SOCKUDO_URLS=$SOCKUDO_NODE_URLS
        SOCKUDO_PIDS+="$REDIS_PID"
    else
        SOCKUDO_URLS="http://127.0.0.1:$port"
        SOCKUDO_PIDS+="$worker $REDIS_PID"
    fi
    log "sockudo: $n nodes (redis adapter) behind nginx on http://127.0.0.1:$port; clients to $SOCKUDO_URLS"
}

# stop_sockudo: SIGTERM to everything start_sockudo started, then waits (5 s at most, then
# SIGKILL) for the nodes to exit, so a FRESH=1 restart does not overlap a draining node.
stop_sockudo() {
    local dir="$RUN_DIR/sockudo" f pids=() p i
    [[ -f $dir/nginx-master.pid ]] && kill "$(cat "$dir/nginx-master.pid")" 2>/dev/null
    for f in "$dir"/node*/pid; do [[ -f $f ]] && pids+=("$(cat "$f")"); done
    [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null
    [[ -f $RUN_DIR/sockudo-redis/redis.pid ]] && kill "$(cat "$RUN_DIR/sockudo-redis/redis.pid")" 2>/dev/null
    local alive
    for ((i = 0; i < 50; i++)); do
        alive=0
        for p in "${pids[@]}"; do
            [[ -d /proc/$p && $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]] && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    [[ $i == 50 ]] && kill -KILL "${pids[@]}" 2>/dev/null
    rm -f "$dir/nginx-master.pid" "$dir"/node*/pid "$RUN_DIR/sockudo-redis/redis.pid"
    return 0
}
