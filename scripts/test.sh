#!/usr/bin/env bash
# Builds ferroloop into .venv and runs every test:
#   1. lints: cargo fmt --check, cargo clippy -D warnings, ruff check / format --check
#   2. pytest: every scenario on asyncio's loop and on ferroloop, plus the example programs;
#      then the same suite (without integration) on CPython 3.12 and 3.13 where installed
#      (scripts/test-more-pythons.sh), and on 3.14 and 3.15 in a Debian sid chroot where root
#      (scripts/test-new-pythons.sh)
#   3. integration: real PostgreSQL and Redis servers (installed and started by
#      scripts/services.sh), aiohttp, uvicorn, asyncpg, SQLAlchemy, redis-py, httpx, Sanic, Dask
#      on both loops (tests/integration, part of the pytest run)
#   4. libraries' own test suites: asyncpg's and redis-py's (asyncio client), against the same
#      servers, and anyio's (asyncio backend) on both loops (scripts/compat.sh, checked
#      against tests/compat/floors.json)
#   5. conformance: CPython's own test_asyncio modules with ferroloop swapped in, checked
#      against the per-module floors in tests/conformance/floors.json
# Set FERROLOOP_SKIP_SERVICES=1 to run without installing/starting the servers (their tests
# are then skipped, and so is step 4), FERROLOOP_SKIP_MORE_PYTHONS=1 to stay on 3.11,
# FERROLOOP_SKIP_COMPAT=1 to skip step 4 and FERROLOOP_SKIP_CONFORMANCE=1 to skip step 5 while
# iterating locally.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

echo "== lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
ruff check .
ruff format --check .

echo "== build (debug)"
maturin develop -q

echo "== integration dependencies and services"
python -m pip install -q -r scripts/requirements-integration.txt
if [ "${FERROLOOP_SKIP_SERVICES:-0}" != "1" ]; then
  scripts/services.sh install
  scripts/services.sh start
  trap 'scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
  export FERROLOOP_REQUIRE_SERVICES=1
fi

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider

if [ "${FERROLOOP_SKIP_MORE_PYTHONS:-0}" != "1" ]; then
  scripts/test-more-pythons.sh
fi

if [ "${FERROLOOP_SKIP_COMPAT:-0}" = "1" ]; then
  echo "== libraries' own test suites: skipped (FERROLOOP_SKIP_COMPAT=1)"
elif [ "${FERROLOOP_SKIP_SERVICES:-0}" = "1" ]; then
  echo "== libraries' own test suites: skipped (they need the servers; FERROLOOP_SKIP_SERVICES=1)"
else
  echo "== libraries' own test suites (asyncpg, redis-py, anyio) on asyncio and ferroloop"
  scripts/compat.sh
fi

if [ "${FERROLOOP_SKIP_CONFORMANCE:-0}" != "1" ] && [ -f tests/conformance/run_conformance.py ]; then
  echo "== CPython test_asyncio conformance (ferroloop swapped in)"
  python tests/conformance/run_conformance.py --loop ferroloop --check -j 3 --budget 900
fi
