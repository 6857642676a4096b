#!/usr/bin/env bash
# Runs the pytest suite (every scenario on asyncio's loop and on ferroloop; the integration
# tests, whose frameworks are installed for 3.11 only, excluded) and the CPython test_asyncio
# conformance check (floors in tests/conformance/floors-3.X.json) on each other CPython this
# machine has among 3.12 and 3.13: `python3.X` on PATH or pyenv's ~/.pyenv/versions/3.X.*;
# then 3.14 and 3.15 in a Debian sid chroot (scripts/test-new-pythons.sh, root only).
# Each gets its own .venv-3.X and Cargo target directory. A version that is not installed is
# reported and skipped: 3.11 is what the README requires; these add coverage where they exist.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

source "$ROOT/scripts/pythons.sh"

for minor in 3.12 3.13; do
  py="$(find_python "$minor")"
  if [ -z "$py" ]; then
    echo "== python $minor: not installed here, skipped"
    continue
  fi
  venv="$ROOT/.venv-$minor"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q -r scripts/requirements-more-pythons.txt
  echo "== build (debug) for $("$venv/bin/python" -V)"
  VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$ROOT/target/py$minor" \
    "$venv/bin/maturin" develop -q
  echo "== pytest on python $minor"
  "$venv/bin/python" -m pytest tests -q -p no:cacheprovider --ignore=tests/integration
  # The ways to start a program that need no framework, asyncio.run(loop_factory=) (3.12+)
  # among them, as real programs stopped by Ctrl-C and SIGTERM (the frameworks are 3.11's).
  FERROLOOP_REQUIRE_SERVICES=0 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/integration/test_ways_to_run.py -k test_program_entry_point
  if [ "${FERROLOOP_SKIP_CONFORMANCE:-0}" != "1" ] && [ -f "tests/conformance/floors-$minor.json" ]; then
    echo "== CPython $minor test_asyncio conformance (ferroloop swapped in)"
    "$venv/bin/python" tests/conformance/run_conformance.py --loop ferroloop --check -j 3 \
      --budget 600
  fi
done

# CPython 3.14 and 3.15: Debian unstable's interpreters in a cached chroot (needs root; says so
# and skips elsewhere). FERROLOOP_SKIP_NEW_PYTHONS=1 skips them.
if [ "${FERROLOOP_SKIP_NEW_PYTHONS:-0}" != "1" ]; then
  "$ROOT/scripts/test-new-pythons.sh"
fi
