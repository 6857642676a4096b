#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs every Python
# dependency the demo, the tests and the benchmark need. Sourced by the other scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$VENV/.deps-ok" ] || [ "$ROOT/scripts/requirements-dev.txt" -nt "$VENV/.deps-ok" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/scripts/requirements-dev.txt"
  touch "$VENV/.deps-ok"
fi
export PATH="$VENV/bin:$PATH"
