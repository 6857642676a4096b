#!/usr/bin/env bash
# What a release needs checked that does not fit CI's 20 minutes: build the manylinux wheels
# for CPython 3.11-3.15 and the sdist (scripts/wheels.sh), then test them in clean rooms
# (scripts/clean-room.sh: each wheel in a fresh venv without Rust, pytest suite and conformance
# floors against the installed package; the sdist built by pip with Rust). About 35 minutes
# here (2 cores). Needs root for 3.14/3.15 (chroot); elsewhere those are skipped with a message.
#
#   scripts/release-check.sh [DIST]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIST="${1:-$ROOT/dist}"
started=$SECONDS
"$ROOT/scripts/wheels.sh" "$DIST"
"$ROOT/scripts/clean-room.sh" "$DIST"
echo "== release check passed in $((SECONDS - started)) s"
