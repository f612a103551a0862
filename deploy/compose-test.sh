#!/usr/bin/env bash
# CI check of docker-compose.yml on a machine that cannot pull images:
#   1. deploy/images.sh makes herald-base:local (cached) and herald-edge:local (host cargo build);
#   2. the same docker-compose.yml comes up with the image variables pointing at them;
#   3. tests-deploy/cluster_check.py checks, through nginx on :8080 only: WebSocket, SSE and
#      long-poll; fan-out across edges; cookie stickiness and least_conn spread; /metrics hidden and
#      /api guarded; Prometheus sees the three edges up; SIGTERM of an edge (1012, resume, restart)
#      and `docker kill` of another (clients move to live edges and resume with nothing lost);
#      last, nginx's per-address rate limits (a burst gets 429, another address -- a curl inside
#      edge3's container -- is still served); and Redis: a client without the password is refused,
#      maxmemory and the volatile-lru policy are set;
#   4. tear down (containers, network, volumes), keeping the logs in .run/compose-test/.
#
# Environment: HERALD_COMPOSE_PROJECT [heraldci], HERALD_HTTP_PORT [8080],
# HERALD_PROMETHEUS_PORT [9090], HERALD_NOFILE [131072, or the daemon's limit if lower], HERALD_SKIP_CARGO=1 (use the existing target/release/herald),
# HERALD_KEEP_UP=1 (leave the cluster running after the checks; `docker-compose -p heraldci down -v`),
# HERALD_COMPOSE_REDIS=cluster (the same checks with deploy/docker-compose.redis-cluster.yml on
# top: the edges on a six-node Redis Cluster; then checks that they use its sharded pub/sub).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROJECT="${HERALD_COMPOSE_PROJECT:-heraldci}"
export HERALD_HTTP_PORT="${HERALD_HTTP_PORT:-8080}"
export HERALD_PROMETHEUS_PORT="${HERALD_PROMETHEUS_PORT:-9090}"
export HERALD_API_KEY="${HERALD_API_KEY:-compose-test-key}"
OUT="$ROOT/.run/compose-test"
TIMEOUT="${HERALD_COMPOSE_TIMEOUT:-180}"

say() { printf '[compose-test] %s\n' "$*" >&2; }
FILES=(-f "$ROOT/docker-compose.yml")
REDIS_SERVICES="redis"
if [[ "${HERALD_COMPOSE_REDIS:-single}" == cluster ]]; then
  FILES+=(-f "$ROOT/deploy/docker-compose.redis-cluster.yml")
  REDIS_SERVICES="redis-node1 redis-node2 redis-node3 redis-node4 redis-node5 redis-node6"
  OUT="$OUT-redis-cluster"
fi
dc() { docker-compose -p "$PROJECT" "${FILES[@]}" "$@"; }

mkdir -p "$OUT"
"$ROOT/deploy/images.sh" >/dev/null
eval "$("$ROOT/deploy/images.sh" env)"
PY="$("$ROOT/tests-deploy/python.sh")"
# nginx: the committed nginx/nginx.conf's rendering (nginx/render.sh) with one TEST-ONLY change:
# new WebSocket/SSE connections per address 50/s burst 100 instead of 20/s burst 40, since the
# checks open ~50 sockets within a second from one address. cluster_check.py is told the values
# and checks that a burst beyond them gets 429 from nginx.
NGINX_OPEN="${HERALD_TEST_NGINX_OPEN:-50/100}" NGINX_REQ="${HERALD_TEST_NGINX_REQ:-100/200}"
"$ROOT/nginx/render.sh" --limit-open "$NGINX_OPEN" --limit-req "$NGINX_REQ" \
  edge1=edge1:8080 edge2=edge2:8080 edge3=edge3:8080 >"$OUT/nginx.conf"
export HERALD_NGINX_CONFIG="$OUT/nginx.conf"

teardown() {
  local rc=$?
  dc ps >"$OUT/ps.txt" 2>&1 || true
  dc logs --no-color --timestamps >"$OUT/compose.log" 2>&1 || true
  if [[ "${HERALD_KEEP_UP:-0}" == 1 ]]; then
    say "left running (HERALD_KEEP_UP=1): docker-compose -p $PROJECT down -v"
  else
    dc down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  say "logs: $OUT/compose.log"
  if [[ $rc == 0 ]]; then say "PASSED"; else say "FAILED (exit $rc)"; fi
}
trap teardown EXIT

# The compose file asks for nofile=131072 (HERALD_NOFILE). A Docker daemon that itself runs
# with a lower hard limit cannot grant that and the containers fail to start: use its limit.
if [[ -z "${HERALD_NOFILE:-}" ]] && ! docker run --rm --ulimit nofile=131072:131072 "$REDIS_IMAGE" true >/dev/null 2>&1; then
  export HERALD_NOFILE="$(docker run --rm "$REDIS_IMAGE" sh -c 'ulimit -Hn')"
  say "this Docker daemon cannot grant nofile=131072; HERALD_NOFILE=$HERALD_NOFILE"
fi

dc down -v --remove-orphans >/dev/null 2>&1 || true
say "docker-compose -p $PROJECT up -d --no-build"
dc up -d --no-build

# docker-compose v1 has no --wait: poll each container's health.
say "waiting for $REDIS_SERVICES, edge1..3 and nginx to be healthy (timeout ${TIMEOUT}s)"
deadline=$((SECONDS + TIMEOUT))
while :; do
  states=""; all=1
  for svc in $REDIS_SERVICES edge1 edge2 edge3 nginx; do
    id="$(dc ps -q "$svc" 2>/dev/null || true)"
    st="$( [[ -n $id ]] && docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)"
    states+="$svc=$st "
    [[ $st == healthy ]] || all=0
  done
  [[ $all == 1 ]] && break
  if ((SECONDS >= deadline)); then say "not healthy after ${TIMEOUT}s: $states"; dc ps >&2; dc logs --tail 30 >&2; exit 1; fi
  sleep 1
done
say "healthy: $states"
until curl -fs -o /dev/null "http://127.0.0.1:$HERALD_HTTP_PORT/healthz"; do
  ((SECONDS < deadline)) || { say "nginx does not answer on :$HERALD_HTTP_PORT"; exit 1; }
  sleep 0.5
done

DC="docker-compose -p $PROJECT ${FILES[*]}"
"$PY" "$ROOT/tests-deploy/cluster_check.py" \
  --url "http://127.0.0.1:$HERALD_HTTP_PORT" \
  --prometheus "http://127.0.0.1:$HERALD_PROMETHEUS_PORT" \
  --api-key "$HERALD_API_KEY" --rules "$ROOT/deploy/herald-rules.yml" --rules "$ROOT/deploy/grafana/herald-dashboard.json" \
  --stop-cmd "$DC stop -t 30 {node}" --start-cmd "$DC start {node}" --drain-victim edge1 \
  --kill-cmd "$DC kill {node}" --kill-victim edge2 --auth dev \
  --nginx-limits "open=$NGINX_OPEN,req=$NGINX_REQ" \
  --other-client-cmd "$DC exec -T edge3 curl -s -o /dev/null -m 10 -w %{http_code} http://nginx:8080{path}" \
  2>&1 | tee "$OUT/cluster_check.log"
rc=${PIPESTATUS[0]}

# Redis: requirepass and maxmemory from docker-compose.yml (on every node of a cluster).
for svc in $REDIS_SERVICES; do
  noauth="$(dc exec -T "$svc" sh -c 'unset REDISCLI_AUTH; redis-cli ping' 2>&1 || true)"
  if grep -q NOAUTH <<<"$noauth"; then say "ok   $svc refuses a client without the password ($noauth)"
  else say "FAIL $svc answered a client without the password: $noauth"; rc=1; fi
  mem="$(dc exec -T "$svc" redis-cli --no-auth-warning config get maxmemory-policy 2>&1 | tr -d '\r' | tr '\n' ' ')"
  if grep -q 'maxmemory-policy volatile-lru' <<<"$mem"; then say "ok   $svc (with the password): $mem"
  else say "FAIL $svc maxmemory-policy: $mem"; rc=1; fi
done
if [[ "${HERALD_COMPOSE_REDIS:-single}" == cluster ]]; then
  # The edges really are on the cluster: its sharded pub/sub carries their probe topics (one per
  # master per running edge: the checks leave the killed one down), and the single Redis
  # carries nothing of theirs.
  edges=0
  for svc in edge1 edge2 edge3; do
    id="$(dc ps -q "$svc" 2>/dev/null || true)"
    [[ -n $id && "$(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null)" == true ]] && edges=$((edges + 1))
  done
  shard=0
  for svc in $REDIS_SERVICES; do
    n="$(dc exec -T "$svc" redis-cli --no-auth-warning pubsub shardchannels 'herald:probe:*' 2>/dev/null | tr -d '\r' | grep -c . || true)"
    shard=$((shard + n))
  done
  plain="$(dc exec -T redis redis-cli --no-auth-warning pubsub channels 'herald:*' 2>/dev/null | tr -d '\r' | grep -c . || true)"
  if ((edges >= 2 && shard >= 3 * edges && plain == 0)); then say "ok   the edges use the Redis Cluster's sharded pub/sub ($shard probe shard channels for $edges running edges; $plain on the single redis)"
  else say "FAIL sharded pub/sub: $shard probe shard channels on the cluster (want 3 per running edge: $edges), $plain channels on the single redis (want 0)"; rc=1; fi
  state="$(dc exec -T redis-node1 redis-cli --no-auth-warning cluster info 2>&1 | tr -d '\r' | grep cluster_state || true)"
  if [[ $state == cluster_state:ok ]]; then say "ok   $state"; else say "FAIL redis cluster: $state"; rc=1; fi
fi
exit "$rc"
