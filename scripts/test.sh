#!/usr/bin/env bash
# Builds ferroloop into .venv and runs every test:
#   1. lints: cargo fmt --check, cargo clippy -D warnings, ruff check / format --check
#   2. pytest: every scenario on asyncio's loop and on ferroloop, plus the example programs
#   3. conformance: CPython's own test_asyncio modules with ferroloop swapped in, checked
#      against the per-module floors in tests/conformance/floors.json
# Set FERROLOOP_SKIP_CONFORMANCE=1 to skip step 3 while iterating locally.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

echo "== lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
ruff check .
ruff format --check . >/dev/null

echo "== build (debug)"
maturin develop -q

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider

if [ "${FERROLOOP_SKIP_CONFORMANCE:-0}" != "1" ] && [ -f tests/conformance/run_conformance.py ]; then
  echo "== CPython test_asyncio conformance (ferroloop swapped in)"
  python tests/conformance/run_conformance.py --loop ferroloop --check -j 2
fi
