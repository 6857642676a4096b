#!/usr/bin/env bash
# Runs the pytest suite (integration excepted) under valgrind memcheck and fails on any error
# in ferroloop's frames: invalid reads/writes, uses of uninitialised values, definite leaks.
#
#   scripts/memcheck.sh [pytest args...]      e.g. scripts/memcheck.sh tests/test_timers.py
#
# Debug build (symbols, no inlining surprises), PYTHONMALLOC=malloc so that every Python
# allocation goes through valgrind's malloc, suppressions for PyO3's one-time allocations at
# import (scripts/memcheck/python.supp). Each Python process of the run (tests start
# subprocesses) writes its own XML report; scripts/memcheck/analyze.py reads them all.
# valgrind comes from Debian's packages (installed here if missing). The whole suite takes
# a long time under valgrind (README, "Tests"): it is a command of its own, not part of CI.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
if ! command -v valgrind >/dev/null; then
  apt-get install -y -q valgrind
fi
maturin develop -q
OUT="${FERROLOOP_MEMCHECK_DIR:-$ROOT/target/memcheck}"
rm -rf "$OUT"
mkdir -p "$OUT"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(tests --ignore=tests/integration)
fi
# Under valgrind everything runs 20-50x slower: every test's timeout is stretched (conftest.py),
# and tracebacks are printed natively (pytest's own rendering parses source with the AST, which
# CPython 3.11.7 got wrong once under valgrind: "AST constructor recursion depth mismatch").
export FERROLOOP_TIMEOUT_SCALE="${FERROLOOP_TIMEOUT_SCALE:-30}"
start=$(date +%s)
set +e
PYTHONMALLOC=malloc valgrind --tool=memcheck --quiet --num-callers=40 \
  --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
  --suppressions="$ROOT/scripts/memcheck/python.supp" \
  --trace-children=yes --trace-children-skip='*/bin/true,*/openssl,*/sh,*/bash,*/cat,*/sleep' \
  --xml=yes --xml-file="$OUT/vg.%p.xml" \
  python -m pytest -q -p no:cacheprovider --tb=native "${args[@]}"
status=$?
set -e
echo "memcheck: pytest exited with $status after $(( $(date +%s) - start )) s"
python scripts/memcheck/analyze.py "$OUT"/vg.*.xml
