#!/usr/bin/env bash
# The clean-room test of the release artefacts in DIST (default dist/, made by
# scripts/wheels.sh): for each supported CPython this machine can run, a fresh venv with no Rust
# on PATH gets ferroloop from its wheel only, then the pytest suite (integration excepted) and
# the conformance floors run against the installed package from a copy of tests/ outside the
# checkout (scripts/clean-room-one.sh). 3.11-3.13 on the host (pyenv or PATH), 3.14 and 3.15
# in the Debian sid chroot of scripts/test-new-pythons.sh (root only). Then the sdist: built
# and installed by pip in a fresh venv with Rust present, and a few test modules run.
#
#   scripts/clean-room.sh [DIST]
#
# FERROLOOP_SKIP_CONFORMANCE=1 runs pytest only; FERROLOOP_SKIP_NEW_PYTHONS=1 skips the chroot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/pythons.sh
DIST="$(cd "${1:-$ROOT/dist}" && pwd)"
case "$DIST/" in
  "$ROOT"/*) ;;
  *) echo "clean-room: DIST must be inside the checkout (the chroot sees only the checkout)" >&2; exit 1 ;;
esac
status=0
results=()
for minor in 3.11 3.12 3.13; do
  py="$(find_python "$minor")"
  if [ -z "$py" ]; then
    echo "== clean room $minor: not installed here, skipped"
    results+=("$minor: not installed, skipped")
    continue
  fi
  wheel="$(wheel_for "$DIST" "$minor")"
  if [ -z "$wheel" ]; then
    echo "== clean room $minor: no wheel for it in $DIST (scripts/wheels.sh)" >&2
    status=1
    results+=("$minor: no wheel")
    continue
  fi
  if scripts/clean-room-one.sh "$py" "$wheel"; then
    results+=("$minor: ok")
  else
    status=1
    results+=("$minor: FAILED")
  fi
done
if [ "${FERROLOOP_SKIP_NEW_PYTHONS:-0}" != "1" ]; then
  if scripts/test-new-pythons.sh --clean-room "$DIST"; then
    results+=("3.14, 3.15 (chroot, where root): ok")
  else
    status=1
    results+=("3.14, 3.15 (chroot): FAILED")
  fi
fi
sdist="$(ls "$DIST"/ferroloop-*.tar.gz 2>/dev/null | head -1 || true)"
py="$(find_python 3.11)"
if [ -z "$sdist" ]; then
  echo "== sdist: none in $DIST (scripts/wheels.sh)" >&2
  status=1
  results+=("sdist: missing")
elif scripts/clean-room-one.sh "${py:-python3}" "$sdist" --quick; then
  results+=("sdist: ok")
else
  status=1
  results+=("sdist: FAILED")
fi
echo "== clean room summary"
printf '   %s\n' "${results[@]}"
exit $status
