#!/usr/bin/env bash
# Prints a python3 that can import the packages in tests-deploy/requirements.txt, making a venv
# under .run/venv (from PyPI) when the system python cannot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.run/venv"
if python3 -c 'import websockets, sys; sys.exit(int(websockets.__version__.split(".")[0]) < 15)' 2>/dev/null; then
  command -v python3; exit 0
fi
if ! "$VENV/bin/python" -c 'import websockets' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q -r "$ROOT/tests-deploy/requirements.txt" >&2
fi
echo "$VENV/bin/python"
