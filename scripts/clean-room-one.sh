#!/usr/bin/env bash
# One clean-room run (called by scripts/clean-room.sh, on the host or inside the 3.14/3.15
# chroot): a fresh venv for PYTHON with no Rust on PATH, ferroloop installed from its wheel in
# DIST only, then the pytest suite (integration excepted) and the conformance floors run
# against the installed package from a copy of tests/ and examples/ outside the checkout, so
# that nothing can import the source tree (tests/conftest.py checks where ferroloop came from).
#
#   scripts/clean-room-one.sh PYTHON ARTEFACT [--quick]
#
# ARTEFACT is a wheel (no Rust may be on PATH) or the sdist (built by pip with the caller's
# Rust). --quick: a few test modules instead of the suite, and no conformance run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(command -v "$1")" # resolved before PATH is narrowed below
ARTEFACT="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
QUICK="${3:-}"
case "$ARTEFACT" in
  *.whl)
    PATH="/usr/local/bin:/usr/bin:/bin"
    if command -v cargo >/dev/null 2>&1 || command -v rustc >/dev/null 2>&1; then
      echo "clean-room: Rust is on PATH ($(command -v cargo rustc | tr '\n' ' ')); the room is not clean" >&2
      exit 1
    fi
    install=(--no-index "$ARTEFACT")
    what="$(basename "$ARTEFACT"), no Rust on PATH"
    ;;
  *.tar.gz)
    command -v cargo >/dev/null 2>&1 || { echo "clean-room: the sdist needs Rust (cargo) on PATH" >&2; exit 1; }
    install=("$ARTEFACT")
    what="$(basename "$ARTEFACT") built by pip with $(cargo --version)"
    ;;
  *) echo "clean-room: $ARTEFACT is neither a wheel nor an sdist" >&2; exit 1 ;;
esac
if [ ! -f "$ARTEFACT" ]; then
  echo "clean-room: $ARTEFACT does not exist (scripts/wheels.sh builds it)" >&2
  exit 1
fi
minor="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
room="$(mktemp -d "${TMPDIR:-/tmp}/ferroloop-clean-room.XXXXXX")"
trap 'rm -rf "$room"' EXIT
"$PY" -m venv "$room/venv"
export VIRTUAL_ENV="$room/venv"
export PATH="$room/venv/bin:$PATH"
python -m pip install -q --disable-pip-version-check "${install[@]}"
# The suite's own needs (not maturin: nothing is built here).
grep -v '^maturin' "$ROOT/scripts/requirements-more-pythons.txt" >"$room/requirements.txt"
python -m pip install -q --disable-pip-version-check -r "$room/requirements.txt"
mkdir -p "$room/work"
cp -r "$ROOT/tests" "$ROOT/examples" "$room/work/"
find "$room/work" -name __pycache__ -prune -exec rm -rf {} +
cd "$room/work"
echo "== clean room: $(python -V), $what"
python -c 'import ferroloop, sys; print("   ferroloop", ferroloop.__version__, "from", ferroloop.__file__)'
export FERROLOOP_EXPECT_INSTALLED=1
if [ "$QUICK" = "--quick" ]; then
  python -m pytest -q -p no:cacheprovider tests/test_entrypoints.py tests/test_callbacks.py \
    tests/test_net_tcp.py tests/test_examples.py
  exit 0
fi
status=0
python -m pytest tests -q -p no:cacheprovider --ignore=tests/integration || status=1
floors="tests/conformance/floors-${minor:0:1}.${minor:1}.json"
if [ "$minor" = 311 ]; then
  floors="tests/conformance/floors.json"
fi
if [ "${FERROLOOP_SKIP_CONFORMANCE:-0}" != "1" ] && [ -f "$floors" ]; then
  echo "== clean room: CPython test_asyncio conformance against the installed wheel"
  python tests/conformance/run_conformance.py --loop ferroloop --check -j 2 --budget 900 || status=1
fi
exit $status
