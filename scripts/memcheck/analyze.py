"""Reads valgrind memcheck XML reports and lists the errors in ferroloop's frames.

    python scripts/memcheck/analyze.py REPORT.xml [REPORT.xml ...]

An error counts as ferroloop's when the code it happened in is ferroloop's: the innermost
frame that is not an allocator or the Rust standard library (for a leak: the code that
allocated) is in ferroloop's native module (``_ferroloop*.so``). An error inside CPython
reached from a callback ferroloop called (ferroloop frames further down the stack) is
CPython's: the interpreter run with PYTHONMALLOC=malloc has those with or without ferroloop
(uninitialised-value reports about small ints and frames). CPython's are counted apart and
not failed on. Exit status 1 if ferroloop has any.
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


# Frames that only carry an allocation or a call through: the allocator, the Rust standard
# library and PyO3's FFI shims (inlined CPython macros) are skipped to find whose code it is.
_PASS_THROUGH = ("alloc", "core::", "std::", "<alloc", "<core", "<std", "__rust", "box_new")


def responsible(stack: list[tuple[str, str, str]]) -> str:
    """The object file of the innermost frame whose code is responsible for the error."""
    for obj, fn, where in stack:
        if obj.startswith(("vgpreload", "libc.so", "ld-linux")):
            continue
        if obj.startswith("_ferroloop") and (
            fn.startswith(_PASS_THROUGH) or "library/" in where or "/.cargo/" in where
        ):
            continue
        return obj
    return ""


def main(paths: list[str]) -> int:
    ours: list[tuple[str, list[tuple[str, str, str]]]] = []
    others: Counter[str] = Counter()
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            # A process killed before valgrind finished (a test's subprocess, a timeout)
            # leaves an unterminated report: read the complete <error> elements it has.
            with open(path, errors="replace") as f:
                text = f.read()
            cut = text.rfind("</error>")
            if cut < 0:
                print(f"{path}: no complete error in a cut-short report", file=sys.stderr)
                continue
            start = text.find("<error>")
            root = ET.fromstring("<r>" + text[start : cut + len("</error>")] + "</r>")
            print(f"{path}: report cut short, its complete errors read", file=sys.stderr)
        for error in root.iter("error"):
            kind = error.findtext("kind") or "?"
            stack = frames(error)
            if responsible(stack).startswith("_ferroloop"):
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
