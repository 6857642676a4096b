#!/usr/bin/env bash
# Real libraries' own test suites, on asyncio's loop and on ferroloop:
#   asyncpg (its tests/, against services.sh's PostgreSQL), redis-py's asyncio client (its
#   tests/test_asyncio, against services.sh's Redis) and anyio (its tests/, asyncio backend,
#   no server).
#
#   scripts/compat.sh [--suite asyncpg,redis,anyio] [--loop asyncio,ferroloop] [--no-check]
#   scripts/compat.sh --suite asyncpg-clusters   # opt-in, ~6 minutes: asyncpg's suite on the
#       temporary clusters its own harness creates (as its authors run it), where its TLS,
#       pg_hba, adversity-proxy and hot-standby tests run too (the default run skips them)
#
# Uses the ferroloop build in python/ (run `maturin develop` first to test changed sources;
# it is built only when missing).
#
# 1. builds ferroloop into .venv if it is not built yet (maturin develop);
# 2. creates .venv-compat and installs the pinned libraries and what their suites import
#    (scripts/compat/requirements.txt); ferroloop is importable there through a .pth file
#    pointing at python/, so the suites test the same build as .venv's `maturin develop`;
# 3. downloads the same versions' sdists from PyPI (scripts/compat/sdists.txt, sha256-pinned;
#    all ship their whole test suites) and unpacks them into .venv-compat/suites/, without
#    the library's top-level source package, so the tests import the installed library (a
#    src/ layout, anyio's, is not importable from there and stays: anyio's
#    test_sourceless_install builds and installs it);
# 4. starts PostgreSQL and Redis with scripts/services.sh when they are not running (and
#    stops them afterwards; anyio's suite needs neither);
# 5. runs scripts/compat/run_compat.py: each suite on each loop, with ferroloop swapped in
#    through the event loop policy and every running loop recorded per test (a test that ran
#    another loop fails the run); prints N passed, N failed, N skipped per loop and the tests
#    that pass on asyncio but not on ferroloop, and checks tests/compat/floors.json.
#
# Why a separate venv: redis-py's suite needs pytest-asyncio, which would load into (and
# change) the project's own pytest run in .venv; and the libraries are pinned to the exact
# versions whose tests run here, where .venv's integration requirements take ranges.
#
# FERROLOOP_SKIP_COMPAT=1 skips the whole step.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

if [ "${FERROLOOP_SKIP_COMPAT:-0}" = "1" ]; then
  echo "compat: skipped (FERROLOOP_SKIP_COMPAT=1)"
  exit 0
fi

COMPAT_VENV="${FERROLOOP_COMPAT_VENV:-$ROOT/.venv-compat}"
export FERROLOOP_COMPAT_VENV="$COMPAT_VENV"
REQS="$ROOT/scripts/compat/requirements.txt"
SDISTS="$ROOT/scripts/compat/sdists.txt"

# 1. ferroloop built for .venv's interpreter
ext_suffix="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
if [ ! -f "$ROOT/python/ferroloop/_ferroloop$ext_suffix" ]; then
  echo "compat: building ferroloop (maturin develop)"
  maturin develop -q
fi

# 2. the compat venv, on the same interpreter as .venv
if [ ! -x "$COMPAT_VENV/bin/python" ]; then
  "$VENV/bin/python" -m venv "$COMPAT_VENV"
fi
if [ ! -f "$COMPAT_VENV/.deps-ok" ] || [ "$REQS" -nt "$COMPAT_VENV/.deps-ok" ]; then
  echo "compat: installing scripts/compat/requirements.txt into $COMPAT_VENV"
  "$COMPAT_VENV/bin/python" -m pip install -q --upgrade pip
  "$COMPAT_VENV/bin/python" -m pip install -q -r "$REQS"
  touch "$COMPAT_VENV/.deps-ok"
fi
site="$("$COMPAT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/python" >"$site/ferroloop.pth"

# 3. the test suites, from the sdists
if [ ! -f "$COMPAT_VENV/.suites-ok" ] || [ "$SDISTS" -nt "$COMPAT_VENV/.suites-ok" ]; then
  echo "compat: downloading the sdists in scripts/compat/sdists.txt"
  rm -rf "$COMPAT_VENV/sdists" "$COMPAT_VENV/suites"
  mkdir -p "$COMPAT_VENV/sdists" "$COMPAT_VENV/suites"
  "$COMPAT_VENV/bin/python" -m pip download -q --no-deps --no-binary :all: --require-hashes \
    -r "$SDISTS" -d "$COMPAT_VENV/sdists"
  for sdist in "$COMPAT_VENV"/sdists/*.tar.gz; do
    tar -xzf "$sdist" -C "$COMPAT_VENV/suites"
    dir="$COMPAT_VENV/suites/$(basename "$sdist" .tar.gz)"
    pkg="$(basename "$dir" | sed 's/-[^-]*$//')"
    [ -d "$dir/tests" ] || {
      echo "compat: $(basename "$sdist") has no tests/ directory" >&2
      exit 1
    }
    # The tests must import the installed library, not the sdist's uncompiled source.
    rm -rf "${dir:?}/$pkg"
  done
  touch "$COMPAT_VENV/.suites-ok"
fi

# 4. the servers
if ! scripts/services.sh status >/dev/null 2>&1; then
  scripts/services.sh install
  scripts/services.sh start
  trap 'scripts/services.sh stop >/dev/null 2>&1 || true' EXIT
fi

# 5. run and check
"$COMPAT_VENV/bin/python" scripts/compat/run_compat.py "$@"
