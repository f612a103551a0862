#!/usr/bin/env bash
# The compose topology as plain processes on loopback: redis-server, N herald edges (edge1..edgeN),
# nginx rendered from nginx/nginx.conf.template, and Prometheus scraping every edge.
# All state and logs live under .run/cluster/ (gitignored).
#
#   deploy/cluster.sh up [--build]     start what is not running; wait until every edge's /readyz
#                                      is 200 and nginx answers (--build: cargo build first)
#   deploy/cluster.sh status           every process, its pid, port and health (exit 1 if any is unhealthy)
#   deploy/cluster.sh down             stop everything (SIGTERM, then SIGKILL after the grace)
#   deploy/cluster.sh logs [-f] [NAME] last lines of every log (or one; -f follows)
#   deploy/cluster.sh env              the cluster's ports and URLs as shell assignments
#                                      (`source <(deploy/cluster.sh env)`; also in .run/cluster/cluster.env)
#   deploy/cluster.sh stop NAME        graceful stop of one process (SIGTERM; an edge drains)
#   deploy/cluster.sh kill NAME        SIGKILL one process (failure drills)
#   deploy/cluster.sh start NAME       start one stopped process again and wait until it is ready
#   deploy/cluster.sh restart NAME     stop + start
#   deploy/cluster.sh rolling-restart  restart the edges one at a time, each drained then ready
#   deploy/cluster.sh clean            down, then delete .run/cluster
# NAME is redis, edge1..edgeN, nginx or prometheus.
#
# Environment (defaults in brackets; unset ports are chosen free at `up` and kept in cluster.env
# while the cluster runs):
#   HERALD_CLUSTER_PORT [8080]             nginx, the cluster's public port
#   HERALD_CLUSTER_EDGES [3]               number of edges
#   HERALD_CLUSTER_EDGE_PORTS ["" = free]  e.g. "18081 18082 18083"
#   HERALD_CLUSTER_METRICS_PORTS [free]    e.g. "19091 19092 19093"
#   HERALD_CLUSTER_REDIS_PORT [free]
#   HERALD_CLUSTER_REDIS_PASSWORD [random] Redis `requirepass` (generated at `up`, kept in cluster.env,
#                                          mode 600; "" = none). Redis reads it from a mode-600 config
#                                          file, the edges from HERALD_REDIS_URL in their environment:
#                                          never on a command line. redis-cli: REDISCLI_AUTH=<password>
#   HERALD_CLUSTER_REDIS_MAXMEMORY [256mb] Redis `maxmemory`, policy volatile-lru (deploy/README.md)
#   HERALD_CLUSTER_NGINX_LIMITS [""]       extra nginx/render.sh options for the rate limits, e.g.
#                                          "--limit-open 100/200" or "--no-limits" (benchmarks);
#                                          empty: the defaults of nginx/render.sh (deploy/README.md)
#   HERALD_CLUSTER_PROMETHEUS_PORT [9090]  HERALD_CLUSTER_PROMETHEUS=0 to run without Prometheus
#   HERALD_CLUSTER_API_KEY [local-dev-key] the edges' --api-key ("" for none)
#   HERALD_CLUSTER_AUTH [dev]              identity (docs/SECURITY.md):
#       dev  every edge gets the HMAC secret HERALD_CLUSTER_JWT_SECRET (through the environment,
#            never on the command line) and, unless HERALD_CLUSTER_CONFIG says otherwise,
#            deploy/herald.toml, which turns on the DEVELOPMENT-ONLY token endpoint
#            GET /dev/token?user=<id> the demo page uses. Clients need a token.
#       off  no key and no default config: anonymous clients, every channel open (the behaviour
#            before identity; benchmarks and load tests, whose clients carry no token)
#   HERALD_CLUSTER_JWT_SECRET [random]     the edges' HMAC secret with HERALD_CLUSTER_AUTH=dev
#                                          (generated at `up`, kept in cluster.env, mode 600)
#   HERALD_CLUSTER_CONFIG [deploy/herald.toml with auth dev, none with off]
#                                          TOML file passed to every edge as --config
#   HERALD_CLUSTER_GRACE [5]               edges' --shutdown-grace, seconds
#   HERALD_CLUSTER_LOG_FORMAT [text]       HERALD_CLUSTER_TIMEOUT [60] seconds to wait for readiness
#   HERALD_CLUSTER_DIR [.run/cluster]      HERALD_BIN [target/release/herald]   RUST_LOG [info]
#   HERALD_CLUSTER_KEEP_FAILED=1           leave a cluster whose `up` failed running, for inspection
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${HERALD_CLUSTER_DIR:-$ROOT/.run/cluster}"
HERALD_BIN="${HERALD_BIN:-$ROOT/target/release/herald}"
TIMEOUT="${HERALD_CLUSTER_TIMEOUT:-60}"
GRACE="${HERALD_CLUSTER_GRACE:-5}"
LOG_FORMAT="${HERALD_CLUSTER_LOG_FORMAT:-text}"
WITH_PROM="${HERALD_CLUSTER_PROMETHEUS:-1}"

say()  { printf '[cluster] %s\n' "$*" >&2; }
UP_IN_PROGRESS=0
die() {
  say "error: $*"
  # A failed `up` stops what it started (logs stay) unless asked to keep it for inspection.
  if [[ $UP_IN_PROGRESS == 1 && "${HERALD_CLUSTER_KEEP_FAILED:-0}" != 1 ]]; then
    UP_IN_PROGRESS=0
    say "stopping the partial cluster (HERALD_CLUSTER_KEEP_FAILED=1 keeps it)"
    cmd_down || true
  fi
  exit 1
}

# ---------------------------------------------------------------- process bookkeeping

pidfile() { echo "$RUN/pids/$1.pid"; }

# A process is alive if it exists and is not a zombie (an init that does not reap orphans, as in
# some containers, leaves dead daemons as zombies that still answer kill -0).
alive() {
  local st
  st="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}

# The executable a process of this NAME must be (guards against a recycled pid).
exe_of() {
  case "$1" in
    redis) echo redis-server ;;
    nginx) echo nginx ;;
    prometheus) echo prometheus ;;
    edge*) basename "$HERALD_BIN" ;;
  esac
}

# Each process is started in its own session, so its process group id is its pid. When the
# leader is gone, SIGKILL what is left of its group that is still ours (nginx workers outlive a
# SIGKILLed master and keep the port).
reap_group() {  # PGID NAME
  local p exe
  exe="$(exe_of "$2")"
  for p in $(pgrep -g "$1" 2>/dev/null || true); do
    alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "$exe" && kill -KILL "$p" 2>/dev/null || true
  done
}

# pid of NAME if it is running, else nothing (and a stale pid file is removed).
running_pid() {
  local f pid
  f="$(pidfile "$1")"
  [[ -f $f ]] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  # Just after spawn the pid may still be the subshell before its `exec` (cmdline: bash or
  # setsid): give it a moment rather than declaring the process gone.
  local try
  for try in 1 2 3 4 5 6 7 8 9 10; do
    [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || break
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$(exe_of "$1")"; then
      echo "$pid"; return 0
    fi
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE '^(/usr/bin/)?(bash|setsid)( |$)' || break
    sleep 0.1
  done
  [[ "$pid" =~ ^[0-9]+$ ]] && reap_group "$pid" "$1"
  rm -f "$f"; return 1
}

# spawn NAME CMD...: run detached (own session, so it outlives the caller's process group),
# output appended to logs/NAME.log, pid in pids/NAME.pid.
spawn() {
  local name="$1"; shift
  printf '\n=== %s start: %s\n' "$(date -Is)" "$*" >>"$RUN/logs/$name.log"
  (cd "$RUN" && exec setsid "$@" >>"$RUN/logs/$name.log" 2>&1 </dev/null) &
  echo $! >"$(pidfile "$name")"
}

# stop_procs SIGNAL NAME...: signal them, wait until all are gone (SIGKILL after the deadline).
stop_procs() {
  local sig="$1"; shift
  local names=() pids=() n p
  for n in "$@"; do
    if p="$(running_pid "$n")"; then names+=("$n"); pids+=("$p"); kill "-$sig" "$p" 2>/dev/null || true; fi
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  local deadline=$((SECONDS + GRACE + 10)) alive
  while :; do
    alive=0
    for p in "${pids[@]}"; do alive "$p" && alive=1; done
    [[ $alive == 0 ]] && break
    if ((SECONDS >= deadline)); then
      say "still running after $((GRACE + 10))s: ${names[*]}; SIGKILL"
      for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
      sleep 0.2; break
    fi
    sleep 0.1
  done
  for i in "${!names[@]}"; do reap_group "${pids[$i]}" "${names[$i]}"; rm -f "$(pidfile "${names[$i]}")"; done
  say "stopped (${sig}): ${names[*]}"
}

# ---------------------------------------------------------------- ports and state

pick_free_ports() {  # N -> N distinct free loopback ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

load_env() { [[ -f "$RUN/cluster.env" ]] && source "$RUN/cluster.env"; }

any_running() {
  local n
  for n in redis nginx prometheus $(edge_names); do running_pid "$n" >/dev/null && return 0; done
  return 1
}

edge_names() {
  local n="${HERALD_CLUSTER_N:-${HERALD_CLUSTER_EDGES:-3}}" i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "HERALD_CLUSTER_EDGES must be a positive number"
  for ((i = 1; i <= n; i++)); do echo "edge$i"; done
}

# Decide the ports (or keep those of the running cluster) and write cluster.env.
plan() {
  mkdir -p "$RUN"/{pids,logs,redis,nginx/tmp,prometheus/data}
  if [[ -f "$RUN/cluster.env" ]] && any_running; then
    load_env
    return
  fi
  local n="${HERALD_CLUSTER_EDGES:-3}" free i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "HERALD_CLUSTER_EDGES must be a positive number"
  free=($(pick_free_ports $((2 * n + 1))))
  local edge_ports=(${HERALD_CLUSTER_EDGE_PORTS:-${free[*]:0:n}})
  local metrics_ports=(${HERALD_CLUSTER_METRICS_PORTS:-${free[*]:n:n}})
  local redis_port="${HERALD_CLUSTER_REDIS_PORT:-${free[2*n]}}"
  [[ ${#edge_ports[@]} == "$n" ]] || die "HERALD_CLUSTER_EDGE_PORTS needs $n ports"
  [[ ${#metrics_ports[@]} == "$n" ]] || die "HERALD_CLUSTER_METRICS_PORTS needs $n ports"
  local port="${HERALD_CLUSTER_PORT:-8080}" prom_port="${HERALD_CLUSTER_PROMETHEUS_PORT:-9090}"
  local auth="${HERALD_CLUSTER_AUTH:-dev}" secret="" config
  # URL-safe (it goes into the Redis URL as is).
  local redis_password="${HERALD_CLUSTER_REDIS_PASSWORD-$(python3 -c 'import secrets; print(secrets.token_hex(24))')}"
  [[ "$redis_password" =~ ^[A-Za-z0-9._~-]*$ ]] || die "HERALD_CLUSTER_REDIS_PASSWORD: use only A-Z a-z 0-9 . _ ~ - (it goes into a URL)"
  case "$auth" in
    dev) secret="${HERALD_CLUSTER_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')}"
         config="${HERALD_CLUSTER_CONFIG-$ROOT/deploy/herald.toml}" ;;
    off) config="${HERALD_CLUSTER_CONFIG:-}" ;;
    *) die "HERALD_CLUSTER_AUTH must be dev or off, not '$auth'" ;;
  esac
  [[ -z "$config" ]] || config="$(realpath "$config")" || die "HERALD_CLUSTER_CONFIG: no such file"
  [[ -z "$config" || -f "$config" ]] || die "HERALD_CLUSTER_CONFIG: $config is not a file"
  rm -f "$RUN/cluster.env"; ( umask 077; : >"$RUN/cluster.env" )   # it holds the HMAC secret
  {
    echo "# written by deploy/cluster.sh up on $(date -Is)"
    printf 'HERALD_CLUSTER_DIR=%q\n' "$RUN"
    echo "HERALD_CLUSTER_N=$n"
    echo "HERALD_CLUSTER_PORT=$port"
    echo "HERALD_CLUSTER_URL=http://127.0.0.1:$port"
    echo "HERALD_CLUSTER_WS_URL=ws://127.0.0.1:$port/ws"
    echo "HERALD_CLUSTER_REDIS_PORT=$redis_port"
    # The URL carries the password (cluster.env is mode 600); the edges get it in their environment.
    printf 'HERALD_CLUSTER_REDIS_PASSWORD=%q\n' "$redis_password"
    printf 'HERALD_CLUSTER_REDIS_URL=%q\n' "redis://${redis_password:+:$redis_password@}127.0.0.1:$redis_port"
    printf 'HERALD_CLUSTER_REDIS_MAXMEMORY=%q\n' "${HERALD_CLUSTER_REDIS_MAXMEMORY:-256mb}"
    printf 'HERALD_CLUSTER_NGINX_LIMITS=%q\n' "${HERALD_CLUSTER_NGINX_LIMITS:-}"
    echo "HERALD_CLUSTER_PROMETHEUS_PORT=$prom_port"
    echo "HERALD_CLUSTER_PROMETHEUS_URL=http://127.0.0.1:$prom_port"
    echo "HERALD_CLUSTER_WITH_PROMETHEUS=$WITH_PROM"
    printf 'HERALD_CLUSTER_API_KEY=%q\n' "${HERALD_CLUSTER_API_KEY-local-dev-key}"
    echo "HERALD_CLUSTER_AUTH=$auth"
    printf 'HERALD_CLUSTER_JWT_SECRET=%q\n' "$secret"
    printf 'HERALD_CLUSTER_CONFIG=%q\n' "$config"
    printf 'HERALD_CLUSTER_EDGE_NAMES=%q\n' "$(edge_names | tr '\n' ' ' | sed 's/ $//')"
    local urls="" murls=""
    for ((i = 1; i <= n; i++)); do
      echo "HERALD_CLUSTER_EDGE${i}_PORT=${edge_ports[i-1]}"
      echo "HERALD_CLUSTER_EDGE${i}_METRICS_PORT=${metrics_ports[i-1]}"
      echo "HERALD_CLUSTER_EDGE${i}_URL=http://127.0.0.1:${edge_ports[i-1]}"
      urls+="http://127.0.0.1:${edge_ports[i-1]} "; murls+="http://127.0.0.1:${metrics_ports[i-1]}/metrics "
    done
    printf 'HERALD_CLUSTER_EDGE_URLS=%q\n' "${urls% }"
    printf 'HERALD_CLUSTER_METRICS_URLS=%q\n' "${murls% }"
  } >"$RUN/cluster.env"
  load_env
}

edge_var() { local v="HERALD_CLUSTER_EDGE${1#edge}_$2"; echo "${!v}"; }

http_code() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$@" 2>/dev/null || true; }

# ---------------------------------------------------------------- starting each part

start_redis() {
  running_pid redis >/dev/null && return 0
  port_busy "$HERALD_CLUSTER_REDIS_PORT" && die "redis port $HERALD_CLUSTER_REDIS_PORT is in use"
  # The password goes in through a config file only the owner can read, not the command line
  # (which the start line in the log and `ps` would show).
  rm -f "$RUN/redis/redis.conf"
  ( umask 077
    { echo "# written by deploy/cluster.sh up; see deploy/README.md (Redis)"
      [[ -z "${HERALD_CLUSTER_REDIS_PASSWORD:-}" ]] || echo "requirepass $HERALD_CLUSTER_REDIS_PASSWORD"
      echo "maxmemory $HERALD_CLUSTER_REDIS_MAXMEMORY"
      echo "maxmemory-policy volatile-lru"; } >"$RUN/redis/redis.conf" )
  spawn redis redis-server "$RUN/redis/redis.conf" --bind 127.0.0.1 --port "$HERALD_CLUSTER_REDIS_PORT" \
    --protected-mode yes --dir "$RUN/redis" --save "" --appendonly no --daemonize no --logfile ""
}

redis_ok() {
  [[ "$(REDISCLI_AUTH="${HERALD_CLUSTER_REDIS_PASSWORD:-}" redis-cli --no-auth-warning -h 127.0.0.1 \
        -p "$HERALD_CLUSTER_REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

start_edge() {
  local name="$1" port mport
  running_pid "$name" >/dev/null && return 0
  port="$(edge_var "$name" PORT)"; mport="$(edge_var "$name" METRICS_PORT)"
  port_busy "$port" && die "$name port $port is in use"
  port_busy "$mport" && die "$name metrics port $mport is in use"
  local args=(--listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --node-id "$name"
              --shutdown-grace "$GRACE" --log-format "$LOG_FORMAT")
  [[ -n "$HERALD_CLUSTER_API_KEY" ]] && args+=(--api-key "$HERALD_CLUSTER_API_KEY")
  [[ -n "${HERALD_CLUSTER_CONFIG:-}" ]] && args+=(--config "$HERALD_CLUSTER_CONFIG")
  # Only what is passed explicitly configures the edges: drop any HERALD_* from the caller. The
  # HMAC secret and the Redis URL (it holds the password) go in through the environment (empty
  # secret: no key), so that neither `ps` nor the start line written to the log shows them.
  HERALD_JWT_SECRET="${HERALD_CLUSTER_JWT_SECRET:-}" HERALD_REDIS_URL="$HERALD_CLUSTER_REDIS_URL" \
  spawn "$name" env $(env | grep -o '^HERALD_[A-Z_]*' | grep -v -e '^HERALD_CLUSTER' -e '^HERALD_JWT_SECRET$' -e '^HERALD_REDIS_URL$' | sed 's/^/-u /') \
    RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$HERALD_BIN" "${args[@]}"
}

edge_ready() { [[ "$(http_code "$(edge_var "$1" URL)/readyz")" == 200 ]]; }

render_nginx() {
  local args=() n
  for n in $(edge_names); do args+=("$n=127.0.0.1:$(edge_var "$n" PORT)"); done
  for n in client_body proxy fastcgi uwsgi scgi; do mkdir -p "$RUN/nginx/tmp/$n"; done
  # shellcheck disable=SC2086  # HERALD_CLUSTER_NGINX_LIMITS is a list of options
  "$ROOT/nginx/render.sh" --listen "127.0.0.1:$HERALD_CLUSTER_PORT" ${HERALD_CLUSTER_NGINX_LIMITS:-} \
    --error-log "$RUN/logs/nginx.log" --access-log "$RUN/logs/nginx-access.log" \
    --temp-dir "$RUN/nginx/tmp" "${args[@]}" >"$RUN/nginx/nginx.conf.new"
  mv "$RUN/nginx/nginx.conf.new" "$RUN/nginx/nginx.conf"
}

nginx_args() { echo -p "$RUN/nginx/" -c "$RUN/nginx/nginx.conf" -e "$RUN/logs/nginx.log"; }

start_nginx() {
  running_pid nginx >/dev/null && return 0
  port_busy "$HERALD_CLUSTER_PORT" && die "port $HERALD_CLUSTER_PORT (HERALD_CLUSTER_PORT) is in use"
  render_nginx
  nginx -q -t $(nginx_args) -g "pid $RUN/nginx/nginx.pid;" 2>>"$RUN/logs/nginx.log" \
    || die "nginx -t failed for $RUN/nginx/nginx.conf (see $RUN/logs/nginx.log)"
  spawn nginx nginx $(nginx_args) -g "daemon off; pid $RUN/nginx/nginx.pid;"
}

nginx_ok() { [[ "$(http_code "$HERALD_CLUSTER_URL/healthz")" == 200 ]]; }

write_prometheus_yml() {
  local n
  {
    echo "# written by deploy/cluster.sh: deploy/prometheus.yml with loopback targets"
    echo "global: { scrape_interval: 5s, scrape_timeout: 4s, evaluation_interval: 15s }"
    echo "rule_files: [\"$ROOT/deploy/herald-rules.yml\"]"
    echo "scrape_configs:"
    echo "  - job_name: herald"
    echo "    static_configs:"
    for n in $(edge_names); do
      echo "      - { targets: [\"127.0.0.1:$(edge_var "$n" METRICS_PORT)\"], labels: { node: $n } }"
    done
  } >"$RUN/prometheus/prometheus.yml"
}

start_prometheus() {
  [[ "$HERALD_CLUSTER_WITH_PROMETHEUS" == 1 ]] || return 0
  running_pid prometheus >/dev/null && return 0
  port_busy "$HERALD_CLUSTER_PROMETHEUS_PORT" && die "port $HERALD_CLUSTER_PROMETHEUS_PORT (HERALD_CLUSTER_PROMETHEUS_PORT) is in use"
  write_prometheus_yml
  spawn prometheus prometheus --config.file="$RUN/prometheus/prometheus.yml" \
    --storage.tsdb.path="$RUN/prometheus/data" --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$HERALD_CLUSTER_PROMETHEUS_PORT"
}

prometheus_ok() { [[ "$(http_code "$HERALD_CLUSTER_PROMETHEUS_URL/-/ready")" == 200 ]]; }

# wait_for NAME CHECK...: poll until CHECK succeeds; fail with the log tail if NAME dies or time runs out.
wait_for() {
  local name="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if ! running_pid "$name" >/dev/null; then
      tail -n 30 "$RUN/logs/$name.log" >&2 || true
      die "$name exited while starting (log: $RUN/logs/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$RUN/logs/$name.log" >&2 || true
      die "$name not ready after ${TIMEOUT}s (log: $RUN/logs/$name.log)"
    fi
    sleep 0.2
  done
}

start_one() {
  local name="$1"
  case "$name" in
    redis) start_redis; wait_for redis redis_ok ;;
    edge*) start_edge "$name"; wait_for "$name" edge_ready "$name" ;;
    nginx) start_nginx; wait_for nginx nginx_ok ;;
    prometheus) start_prometheus; [[ "$HERALD_CLUSTER_WITH_PROMETHEUS" == 1 ]] && wait_for prometheus prometheus_ok ;;
  esac
  return 0
}

check_name() {
  local n
  for n in redis nginx prometheus $(edge_names); do [[ "$1" == "$n" ]] && return 0; done
  die "unknown process '$1' (redis, $(edge_names | tr '\n' ' ')nginx, prometheus)"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  if [[ "${1:-}" == --build ]]; then
    say "cargo build --release -p herald-edge"
    (cd "$ROOT" && cargo build --release -p herald-edge)
  fi
  [[ -x "$HERALD_BIN" ]] || die "$HERALD_BIN not found: cargo build --release -p herald-edge (or: deploy/cluster.sh up --build)"
  local tool
  for tool in redis-server redis-cli nginx curl python3 setsid; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install redis-server nginx curl)"
  done
  [[ "$WITH_PROM" != 1 ]] || command -v prometheus >/dev/null \
    || die "prometheus not found (apt-get install prometheus, or HERALD_CLUSTER_PROMETHEUS=0)"
  # Many sockets per process: raise the soft descriptor limit as far as allowed.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local was_running=0
  [[ -f "$RUN/cluster.env" ]] && any_running && was_running=1
  plan
  [[ $was_running == 1 ]] || UP_IN_PROGRESS=1
  start_redis
  wait_for redis redis_ok
  local n
  for n in $(edge_names); do start_edge "$n"; done
  for n in $(edge_names); do wait_for "$n" edge_ready "$n"; done
  start_nginx
  wait_for nginx nginx_ok
  start_prometheus
  [[ "$HERALD_CLUSTER_WITH_PROMETHEUS" != 1 ]] || wait_for prometheus prometheus_ok
  UP_IN_PROGRESS=0
  say "up: $HERALD_CLUSTER_URL (state and logs in $RUN)"
  cmd_status
}

cmd_down() {
  if [[ -f "$RUN/cluster.env" ]]; then load_env; fi
  # Front first, so no new client lands on an edge that is about to go; edges drain together.
  stop_procs TERM nginx prometheus
  stop_procs TERM $(edge_names)
  stop_procs TERM redis
  # Any other pid file left (e.g. an edge from a run with more edges).
  local f
  for f in "$RUN"/pids/*.pid; do [[ -f $f ]] && stop_procs TERM "$(basename "$f" .pid)"; done
  say "down"
}

cmd_status() {
  [[ -f "$RUN/cluster.env" ]] || { echo "no cluster state in $RUN (deploy/cluster.sh up)"; return 1; }
  load_env
  local bad=0 n pid health port
  printf '%-11s %-8s %-7s %-22s %s\n' NAME PID STATE ADDRESS HEALTH
  for n in redis $(edge_names) nginx prometheus; do
    [[ $n == prometheus && "$HERALD_CLUSTER_WITH_PROMETHEUS" != 1 ]] && continue
    case "$n" in
      redis) port="127.0.0.1:$HERALD_CLUSTER_REDIS_PORT"
             if redis_ok; then health="PING ok"; else health="PING failed"; fi ;;
      edge*) port="127.0.0.1:$(edge_var "$n" PORT)"
             health="readyz $(http_code "$(edge_var "$n" URL)/readyz") healthz $(http_code "$(edge_var "$n" URL)/healthz") metrics(:$(edge_var "$n" METRICS_PORT)) $(http_code "http://127.0.0.1:$(edge_var "$n" METRICS_PORT)/metrics")" ;;
      nginx) port="127.0.0.1:$HERALD_CLUSTER_PORT"; health="/healthz via nginx $(http_code "$HERALD_CLUSTER_URL/healthz")" ;;
      prometheus) port="127.0.0.1:$HERALD_CLUSTER_PROMETHEUS_PORT"; health="/-/ready $(http_code "$HERALD_CLUSTER_PROMETHEUS_URL/-/ready")" ;;
    esac
    if pid="$(running_pid "$n")"; then
      printf '%-11s %-8s %-7s %-22s %s\n' "$n" "$pid" running "$port" "$health"
      case "$health" in *"PING ok"*|*"readyz 200"*|*"nginx 200"*|*"ready 200"*) ;; *) bad=1 ;; esac
    else
      printf '%-11s %-8s %-7s %-22s %s\n' "$n" - stopped "$port" -
      bad=1
    fi
  done
  return $bad
}

cmd_logs() {
  local follow=0
  [[ "${1:-}" == -f ]] && { follow=1; shift; }
  [[ -d "$RUN/logs" ]] || die "no logs in $RUN/logs"
  if [[ -n "${1:-}" ]]; then
    if [[ $follow == 1 ]]; then exec tail -n 50 -F "$RUN/logs/$1.log"; fi
    tail -n 100 "$RUN/logs/$1.log"; return
  fi
  if [[ $follow == 1 ]]; then exec tail -n 5 -F "$RUN"/logs/*.log; fi
  local f
  for f in "$RUN"/logs/*.log; do echo "==> $f <=="; tail -n 15 "$f"; echo; done
}

need_state() { [[ -f "$RUN/cluster.env" ]] || die "no cluster state in $RUN (deploy/cluster.sh up)"; load_env; }

cmd="${1:-}"; shift || true
case "$cmd" in
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cmd_logs "$@" ;;
  env) need_state; grep -v '^#' "$RUN/cluster.env" ;;
  stop) need_state; check_name "${1:?stop NAME}"; stop_procs TERM "$1" ;;
  kill) need_state; check_name "${1:?kill NAME}"
        if pid="$(running_pid "$1")"; then
          kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"   # the whole group: nginx workers too
          rm -f "$(pidfile "$1")"; say "killed $1 ($pid)"
        else say "$1 is not running"; fi ;;
  start) need_state; check_name "${1:?start NAME}"; ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; start_one "$1"; say "$1 ready" ;;
  restart) need_state; check_name "${1:?restart NAME}"; stop_procs TERM "$1"; ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
           start_one "$1"; say "$1 ready" ;;
  rolling-restart)
    need_state; ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    for n in $(edge_names); do
      say "rolling restart: $n (SIGTERM, drain up to ${GRACE}s)"
      stop_procs TERM "$n"; start_one "$n"; say "$n ready"
    done ;;
  clean) cmd_down; rm -rf "$RUN"; say "removed $RUN" ;;
  -h|--help|help|"") sed -n '2,52p' "$0" ;;
  *) die "unknown command '$cmd' (up|down|status|logs|env|stop|kill|start|restart|rolling-restart|clean)" ;;
esac
