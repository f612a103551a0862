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
  2>&1 | tee "$HERALD_CLUSTER_DIR/cluster_check.log"
rc=${PIPESTATUS[0]}
"$C" status || true
exit "$rc"
