#!/usr/bin/env bash
# The one command that runs Herald's tests: unit and server tests (with a real redis-server),
# the native cluster behind real nginx, the browser demo in headless Chromium, Centrifugo's
# Python SDK against 1 and 3 edges, the compose cluster on one Redis and on a Redis Cluster
# (when Docker is there), and a smoke run of every loadtest scenario.
#
# Needs: redis-server, nginx, prometheus (promtool), chromium + chromedriver, python3 with the
# packages in tests-browser/requirements.txt, tests-deploy/requirements.txt and
# tests-centrifugo/requirements.txt. The preflight below installs whatever is missing when run as
# root with apt-get, or stops at once naming the command; `.ci/run` installs them first too.
set -euo pipefail
cd "$(dirname "$0")/.."

# Preflight: what the stages need, checked before anything runs. Missing pieces are installed
# when this runs as root with apt-get (as on a fresh Debian machine); otherwise the script stops
# at once and names the command to run.
preflight() {
  local apt=() cmd pkg
  for pair in redis-server:redis-server nginx:nginx promtool:prometheus chromium:chromium \
              chromedriver:chromium-driver curl:curl openssl:openssl; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || apt+=("$pkg")
  done
  [[ -e /usr/lib/nginx/modules/ngx_nchan_module.so || -e /usr/share/nginx/modules/ngx_nchan_module.so ]] ||
    apt+=(libnginx-mod-nchan)
  if command -v docker >/dev/null 2>&1 && ! command -v debootstrap >/dev/null 2>&1; then apt+=(debootstrap); fi
  python3 -m pip --version >/dev/null 2>&1 || apt+=(python3-pip)
  local reqs=(-r tests-browser/requirements.txt -r tests-deploy/requirements.txt -r tests-centrifugo/requirements.txt pytest)
  local py_ok=1
  python3 -c 'import pytest, pytest_asyncio, selenium, websockets, jwt, centrifuge' >/dev/null 2>&1 || py_ok=0
  if ((${#apt[@]} == 0 && py_ok)); then return 0; fi
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[test.sh] installing what is missing: ${apt[*]:-} $( ((py_ok)) || echo 'python test packages')"
    if ((${#apt[@]})); then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
      # Debian may start the system redis/nginx on install; the tests use their own ports.
      (service nginx stop; service redis-server stop) >/dev/null 2>&1 || true
    fi
    ((py_ok)) || python3 -m pip install -q "${reqs[@]}" ||
      python3 -m pip install -q --break-system-packages "${reqs[@]}"
    return 0
  fi
  echo "[test.sh] missing; run as root:" >&2
  ((${#apt[@]})) && echo "  apt-get install -y ${apt[*]}" >&2
  ((py_ok)) || echo "  python3 -m pip install ${reqs[*]}" >&2
  exit 2
}
preflight

stage() { printf '\n=== %s ===\n' "$*"; }
failed=()
passed=0
run() {
  local name=$1; shift
  stage "$name"
  if "$@"; then echo "--- $name: ok"; passed=$((passed + 1)); else echo "--- $name: FAILED"; failed+=("$name"); fi
}

stage "build"
cargo build --workspace --all-targets
cargo build --release -p herald-edge -p herald-loadtest

run "cargo tests" cargo test --workspace --no-fail-fast
if [[ -x tests-deploy/native-test.sh ]]; then run "native cluster (nginx + 3 edges + redis + prometheus)" tests-deploy/native-test.sh; fi
if [[ -f tests-browser/test_demo.py ]]; then run "browser demo (headless chromium)" python3 -m pytest -q tests-browser; fi
if [[ -f tests-centrifugo/test_sdk.py ]]; then run "centrifugo SDK (centrifuge-python vs 1 edge and 3 edges + redis)" python3 -m pytest -q -c tests-centrifugo/pytest.ini tests-centrifugo; fi
if [[ -f tests-deploy/test_security_doc.py ]]; then run "docs/SECURITY.md examples sign real tokens" python3 -m pytest -q tests-deploy/test_security_doc.py; fi
if [[ -x bench/smoke.sh ]]; then run "loadtest smoke" bench/smoke.sh; fi
if [[ "${HERALD_SKIP_COMPOSE:-0}" != 1 && -x deploy/compose-test.sh ]] && docker info >/dev/null 2>&1; then
  run "docker compose cluster" deploy/compose-test.sh
  run "docker compose cluster on a Redis Cluster" env HERALD_COMPOSE_REDIS=cluster HERALD_SKIP_CARGO=1 deploy/compose-test.sh
fi

stage "summary"
echo "stages: $passed passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
  printf 'failed stages: %s\n' "${failed[*]}"
  exit 1
fi
echo "all stages passed"
