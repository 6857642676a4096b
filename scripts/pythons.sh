#!/usr/bin/env bash
# Sourced by the scripts that run on several CPythons: find_python 3.X prints the path of an
# interpreter of that version (pyenv's ~/.pyenv/versions/3.X.*, then python3.X on PATH), or
# nothing when this machine has none; wheel_for DIST 3.X prints that version's manylinux
# wheel in DIST (made by scripts/wheels.sh), or nothing.
find_python() {
  local minor="$1" candidate
  for candidate in "$HOME"/.pyenv/versions/"$minor".*/bin/"python$minor" "python$minor"; do
    # pyenv puts shims on PATH that exist but fail for versions not selected: try each.
    if "$candidate" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$minor'.split('.')))" \
      >/dev/null 2>&1; then
      command -v "$candidate"
      return
    fi
  done
}

wheel_for() {
  local tag="cp${2/./}"
  ls "$1"/ferroloop-*-"$tag"-"$tag"-manylinux*.whl 2>/dev/null | head -1 || true
}
