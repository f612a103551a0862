#!/usr/bin/env bash
# The one command that runs Herald's tests: unit and server tests (with a real redis-server),
# the native cluster behind real nginx, the browser demo in headless Chromium, Centrifugo's
# Python SDK against 1 and 3 edges, the compose cluster on one Redis and on a Redis Cluster
# (when Docker is there), and a smoke run of every loadtest scenario.
#
# Needs: redis-server, nginx, prometheus (promtool), chromium + chromedriver, python3 with the
# packages in tests-browser/requirements.txt, tests-deploy/requirements.txt and
# tests-centrifugo/requirements.txt. `.ci/run` installs all of them on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

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
