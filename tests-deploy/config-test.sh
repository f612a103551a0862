#!/usr/bin/env bash
# Static checks of the deployment files; no herald binary needed, a few seconds:
#   shell syntax of every script, docker-compose.yml validity (with the official and the local
#   image variables), the Prometheus config and rules (promtool, inside herald-base:local when it
#   exists, since the compose paths are container paths), and tests-deploy/nginx-test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
fail=0
ok()  { printf 'ok   %s\n' "$*"; }
bad() { printf 'FAIL %s\n' "$*"; fail=1; }
run() { local what="$1"; shift; if out="$("$@" 2>&1)"; then ok "$what"; else bad "$what"; printf '%s\n' "$out" | tail -n 20; fi; }

for f in deploy/*.sh nginx/*.sh tests-deploy/*.sh; do run "bash -n $f" bash -n "$f"; done
if command -v shellcheck >/dev/null; then
  run "shellcheck (errors only)" shellcheck -S error deploy/*.sh nginx/*.sh tests-deploy/*.sh
fi
run "python syntax of tests-deploy/cluster_check.py" python3 -c 'import ast,sys; ast.parse(open(sys.argv[1]).read())' tests-deploy/cluster_check.py

if command -v docker-compose >/dev/null; then
  run "docker-compose config (official images)" env -u HERALD_IMAGE -u REDIS_IMAGE -u NGINX_IMAGE -u PROMETHEUS_IMAGE docker-compose -f docker-compose.yml config -q
  run "docker-compose config (local images)" bash -c 'eval "$(deploy/images.sh env)"; docker-compose -f docker-compose.yml config -q'
  svcs="$(docker-compose -f docker-compose.yml config --services | wc -l)"
  imgs="$(env -u HERALD_IMAGE -u REDIS_IMAGE -u NGINX_IMAGE -u PROMETHEUS_IMAGE docker-compose -f docker-compose.yml config | grep -c '^    image:')"
  [[ $imgs == "$svcs" ]] && ok "every service names an image ($imgs/$svcs)" || bad "every service names an image ($imgs/$svcs)"
fi

if command -v promtool >/dev/null; then
  run "promtool check rules deploy/herald-rules.yml" promtool check rules deploy/herald-rules.yml
fi
if docker image inspect herald-base:local >/dev/null 2>&1; then
  run "promtool check config deploy/prometheus.yml (in herald-base:local)" \
    docker run --rm -v "$ROOT/deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" \
      -v "$ROOT/deploy/herald-rules.yml:/etc/prometheus/herald-rules.yml:ro" \
      herald-base:local promtool check config /etc/prometheus/prometheus.yml
else
  echo "skip promtool check config: herald-base:local not built (deploy/images.sh base)"
fi

if out="$(tests-deploy/nginx-test.sh 2>&1)"; then ok "tests-deploy/nginx-test.sh"; else bad "tests-deploy/nginx-test.sh"; printf '%s\n' "$out"; fi

[[ $fail == 0 ]] && echo "config-test: all passed" || { echo "config-test: FAILED"; exit 1; }
