#!/usr/bin/env bash
# The same end-to-end checks as deploy/compose-test.sh, against the native cluster of
# deploy/cluster.sh (redis-server, three target/release/herald edges, nginx, prometheus as plain
# processes on loopback). Runs in its own state dir and on free ports, so it does not disturb a
# developer's `deploy/cluster.sh up`; stops everything at the end (logs stay in .run/native-test/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HERALD_CLUSTER_DIR="${HERALD_CLUSTER_DIR:-$ROOT/.run/native-test}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export HERALD_CLUSTER_PORT="${HERALD_CLUSTER_PORT:-$(free_port)}"
export HERALD_CLUSTER_PROMETHEUS_PORT="${HERALD_CLUSTER_PROMETHEUS_PORT:-$(free_port)}"
export HERALD_CLUSTER_API_KEY="${HERALD_CLUSTER_API_KEY:-native-test-key}"
# nginx's per-address rate limits: the defaults of nginx/render.sh except new WebSocket/SSE
# connections, 50/s burst 100 instead of 20/s burst 40 -- TEST-ONLY: the checks open ~50 sockets
# within a second from one address (a real client opens one or two). cluster_check.py is told the
# same values and checks that a burst beyond them gets 429 from nginx.
NGINX_OPEN="${HERALD_TEST_NGINX_OPEN:-50/100}" NGINX_REQ="${HERALD_TEST_NGINX_REQ:-100/200}"
export HERALD_CLUSTER_NGINX_LIMITS="--limit-open $NGINX_OPEN --limit-req $NGINX_REQ"
PY="$("$ROOT/tests-deploy/python.sh")"
C="$ROOT/deploy/cluster.sh"

trap '"$C" down >/dev/null 2>&1 || true' EXIT
"$C" down >/dev/null 2>&1 || true
"$C" up
source "$HERALD_CLUSTER_DIR/cluster.env"
"$PY" "$ROOT/tests-deploy/cluster_check.py" \
  --url "$HERALD_CLUSTER_URL" --prometheus "$HERALD_CLUSTER_PROMETHEUS_URL" \
  --api-key "$HERALD_CLUSTER_API_KEY" --rules "$ROOT/deploy/herald-rules.yml" --rules "$ROOT/deploy/grafana/herald-dashboard.json" \
  --stop-cmd "$C stop {node}" --start-cmd "$C start {node}" --drain-victim edge3 \
  --kill-cmd "$C kill {node}" --kill-victim edge1 --auth dev \
  --nginx-limits "open=$NGINX_OPEN,req=$NGINX_REQ" \
  2>&1 | tee "$HERALD_CLUSTER_DIR/cluster_check.log"
rc=${PIPESTATUS[0]}
# Redis asks for the password cluster.sh generated; it is kept out of every command line.
noauth="$(env -u REDISCLI_AUTH redis-cli -p "$HERALD_CLUSTER_REDIS_PORT" ping 2>&1 || true)"
if grep -q NOAUTH <<<"$noauth"; then echo "ok   redis refuses a client without the password ($noauth)"
else echo "FAIL redis answered a client without the password: $noauth"; rc=1; fi
policy="$(REDISCLI_AUTH="$HERALD_CLUSTER_REDIS_PASSWORD" redis-cli -p "$HERALD_CLUSTER_REDIS_PORT" config get maxmemory-policy | tail -n1)"
if [[ $policy == volatile-lru ]]; then echo "ok   redis maxmemory-policy $policy"; else echo "FAIL redis maxmemory-policy '$policy'"; rc=1; fi
# (the password reaches the checker through the environment, not its own command line)
if ! PW="$HERALD_CLUSTER_REDIS_PASSWORD" python3 - "$HERALD_CLUSTER_DIR/logs" <<'PYCHECK'
import glob, os, sys
pw = os.environ["PW"].encode()
hits = [f for f in glob.glob(sys.argv[1] + "/*") if pw in open(f, "rb").read()]
for f in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        if pw in open(f, "rb").read():
            hits.append(f)
    except OSError:
        pass
print("\n".join(hits))
sys.exit(1 if hits else 0)
PYCHECK
then
  echo "FAIL the Redis password shows in a log or a command line"; rc=1
else echo "ok   the Redis password is in no log and no command line"; fi
"$C" status || true
exit "$rc"
