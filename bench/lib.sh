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
