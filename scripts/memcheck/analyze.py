"""Reads valgrind memcheck XML reports and lists the errors in ferroloop's frames.

    python scripts/memcheck/analyze.py REPORT.xml [REPORT.xml ...]

An error counts as ferroloop's when any frame of its stack is in ferroloop's native module
(``_ferroloop*.so``): an invalid read or write, a use of an uninitialised value, a definite
leak. CPython's own reports (no ferroloop frame) are counted apart and not failed on: the
interpreter run with PYTHONMALLOC=malloc still has a few (small ints, the GC's traversal of
objects it owns), the same without ferroloop loaded. Exit status 1 if ferroloop has any.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter


def frames(error: ET.Element) -> list[tuple[str, str, str]]:
    out = []
    stack = error.find("stack")
    for f in stack.findall("frame") if stack is not None else []:
        obj = (f.findtext("obj") or "").rsplit("/", 1)[-1]
        fn = f.findtext("fn") or "?"
        where = f"{f.findtext('file') or ''}:{f.findtext('line') or ''}"
        out.append((obj, fn, where))
    return out


def main(paths: list[str]) -> int:
    ours: list[tuple[str, list[tuple[str, str, str]]]] = []
    others: Counter[str] = Counter()
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:  # a run cut short leaves an unterminated file
            print(f"{path}: unreadable report ({exc})", file=sys.stderr)
            return 2
        for error in root.iter("error"):
            kind = error.findtext("kind") or "?"
            stack = frames(error)
            if any(obj.startswith("_ferroloop") for obj, _, _ in stack):
                ours.append((kind, stack))
            else:
                others[kind] += 1
    print(f"errors outside ferroloop (CPython's own): {sum(others.values())} {dict(others)}")
    print(f"errors in ferroloop's frames: {len(ours)}")
    for kind, stack in ours:
        print(f"\n{kind}")
        for obj, fn, where in stack[:12]:
            print(f"    {obj}: {fn} {where}")
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
