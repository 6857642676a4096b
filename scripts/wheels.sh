#!/usr/bin/env bash
# Builds ferroloop's release artefacts into dist/ (or $1): one manylinux wheel per supported
# CPython (3.11 to 3.15) on x86_64, and the sdist.
#
#   scripts/wheels.sh [OUT_DIR]
#
# Tag: manylinux2014 (manylinux_2_17, glibc 2.17). It is the oldest glibc that current Rust's
# standard library supports, so the wheels install on every glibc distribution of the last
# decade (RHEL/CentOS 7+, Debian 8+, Ubuntu 14.04+), the same baseline uvloop's wheels use;
# nothing ferroloop calls needs a newer glibc (epoll, eventfd, accept4, pidfd_open through
# syscall(2)). This machine's glibc is 2.36, so the link goes through zig (`maturin --zig`,
# zig from the registry's ziglang package), which links against 2.17's symbol versions; maturin
# then checks the wheel's manylinux compliance (its auditwheel pass) and fails on a violation.
# maturin needs no interpreter for a version this machine lacks (3.14, 3.15 here): it carries
# the sysconfig data of each CPython release. No free-threaded (cp314t) wheel: the module
# declares that it needs the GIL (README, "Supported Pythons"). No musllinux wheel yet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
VENV="$ROOT/.venv-release"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ ! -f "$VENV/.deps-ok" ] || [ scripts/requirements-release.txt -nt "$VENV/.deps-ok" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r scripts/requirements-release.txt
  touch "$VENV/.deps-ok"
fi
export PATH="$VENV/bin:$PATH"
version="$(python -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')"
rm -f "$OUT"/ferroloop-"$version"[-.]*
interpreters=()
for minor in 3.11 3.12 3.13 3.14 3.15; do
  interpreters+=(-i "python$minor")
done
echo "== wheels: ferroloop $version, manylinux2014 x86_64, CPython 3.11-3.15"
CARGO_TARGET_DIR="$ROOT/target/wheels" maturin build --release --zig --compatibility manylinux2014 \
  --target x86_64-unknown-linux-gnu "${interpreters[@]}" -o "$OUT"
echo "== sdist"
maturin sdist -o "$OUT"

# What a package index and an installer read: one wheel per version with the expected tag,
# the stubs and the license inside, the version from Cargo.toml.
python - "$OUT" "$version" <<'PY'
import sys, zipfile
from pathlib import Path

out, version = Path(sys.argv[1]), sys.argv[2]
problems = []
for minor in ("11", "12", "13", "14", "15"):
    name = f"ferroloop-{version}-cp3{minor}-cp3{minor}-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    wheel = out / name
    if not wheel.exists():
        problems.append(f"missing {name}")
        continue
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"ferroloop-{version}.dist-info"
    for needed in ("ferroloop/py.typed", "ferroloop/_ferroloop.pyi", "ferroloop/__init__.py",
                   f"ferroloop/_ferroloop.cpython-3{minor}-x86_64-linux-gnu.so",
                   f"{info}/licenses/LICENSE", f"{info}/METADATA"):
        if needed not in names:
            problems.append(f"{name}: no {needed}")
    stray = [n for n in names if n.endswith(".so") and f"cpython-3{minor}-" not in n]
    if stray:
        problems.append(f"{name}: another version's module {stray}")
if not (out / f"ferroloop-{version}.tar.gz").exists():
    problems.append("missing the sdist")
for p in problems:
    print("wheels:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ls -l "$OUT"/ferroloop-"$version"[-.]*
