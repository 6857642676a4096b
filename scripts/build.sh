#!/usr/bin/env bash
# Builds the native module into .venv (debug by default; pass --release for benchmarks).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
maturin develop -q "$@"
