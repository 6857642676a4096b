#!/usr/bin/env bash
# The main job: builds ferroloop (release) into .venv, runs real asyncio programs from
# examples/ unmodified on ferroloop (python -m ferroloop), then a short side-by-side benchmark
# of asyncio, uvloop, rloop and ferroloop.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"

echo "== building ferroloop (release)"
maturin develop -q --release

for ex in gather_and_tasks waiting_and_timeouts taskgroup_timeouts blocking_work pipeline; do
  echo
  echo "== python -m ferroloop examples/$ex.py"
  FERROLOOP_EXAMPLE_CHECK=1 python -m ferroloop "examples/$ex.py"
done

echo
echo "== benchmark (quick): asyncio vs uvloop vs rloop vs ferroloop, rounds interleaved"
python bench/bench_core.py --quick --loops asyncio,uvloop,rloop,ferroloop
echo
echo "== network benchmark (quick): echo and HTTP servers under the native load generator"
python bench/bench_net.py --quick --loops asyncio,uvloop,rloop,ferroloop
echo
echo "== TLS benchmark (quick): 1 KiB echo over TLS, server and clients on the loop under test"
python bench/bench_io.py --quick --rows tls_echo --loops asyncio,uvloop,rloop,ferroloop
