#!/usr/bin/env python3
"""Help classify failures: which failing tests touch asyncio's private API?

    python tests/conformance/run_conformance.py --loop ferroloop --json /tmp/ferro.json
    python tests/conformance/suggest_private.py /tmp/ferro.json [--all]

For every failing test (not already classified by private_tests.txt) this reads the test's
source (plus the ``self.helper()`` methods it calls, one level deep, and its decorators) and
reports private names it uses (``loop._ready``, ``transport._ssl_protocol``,
``mock.patch('asyncio.base_events.socket')``...) next to the failure message.  Tests whose
traceback names a private attribute (``has no attribute '_x'``) are marked STRONG.

The output is a *suggestion*: read the test before adding a line to private_tests.txt (a
test that uses a private name in its cleanup may still fail earlier for a real reason; add
``~ regex`` to the line so only the private-API failure mode is counted as private).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_conformance import ID_PREFIX, PASS, PRIVATE, SKIP, PrivateList  # noqa: E402

PRIVATE_ATTR = re.compile(r"\.(_[a-z][A-Za-z0-9_]*)\b")
PATCH_TARGET = re.compile(
    r"""(?:patch(?:\.object)?)\(\s*['"](asyncio\.[\w.]+)['"]|@(patch_socket)\b"""
)
NO_ATTR = re.compile(r"has no attribute '(_[a-z]\w*)'")
SELF_CALL = re.compile(r"self\.(\w+)\(")


def _source(obj) -> str:
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return ""


def test_source(test_id: str) -> tuple[str, set[str]]:
    """Source of the test method + one level of self.helper() methods; helper names."""
    mod_name, cls_name, meth = test_id.rsplit(".", 2)
    try:
        mod = importlib.import_module(mod_name)
        cls = getattr(mod, cls_name)
        fn = getattr(cls, meth)
    except Exception:
        return "", set()
    src = _source(fn)
    helpers = set()
    for name in sorted(set(SELF_CALL.findall(src))):
        attr = getattr(cls, name, None)
        if attr is None or not callable(attr) or name.startswith("assert"):
            continue
        # Only helpers defined by the asyncio test-suite itself (not unittest's methods).
        if (getattr(attr, "__module__", "") or "").startswith("test.test_asyncio"):
            helpers.add(name)
            src += "\n" + _source(attr)
    return src, helpers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="--json output of run_conformance.py")
    ap.add_argument("--all", action="store_true", help="also show failures with no private use")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.results).read_text())
    private = PrivateList(PRIVATE)

    # Group selector variants (Select/Poll/EPoll, watcher flavours) into one pattern.
    groups: dict[str, list[tuple[str, dict]]] = collections.defaultdict(list)
    for _mod, md in doc["modules"].items():
        for tid, t in md["tests"].items():
            if t["outcome"] in PASS or t["outcome"] in SKIP:
                continue
            if private.classify(tid, t) is not None:
                continue
            key = re.sub(r"\.(EPoll|Poll|Select|Kqueue)EventLoopTests\.", ".*EventLoopTests.", tid)
            key = re.sub(
                r"\.Subprocess(Fast|Safe|Pidfd|Threaded|MultiLoop)WatcherTests\.",
                ".Subprocess*WatcherTests.",
                key,
            )
            groups[key].append((tid, t))

    for key in sorted(groups):
        tid, t = groups[key][0]
        src, helpers = test_source(tid)
        attrs = sorted(
            {a for a in PRIVATE_ATTR.findall(src) if a not in helpers and not a.startswith("__")}
            - {"_" + h for h in helpers}
        )
        # self._foo helpers defined on the test class are not asyncio internals
        mod_name, cls_name, _ = tid.rsplit(".", 2)
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
            attrs = [
                a
                for a in attrs
                if not (
                    hasattr(cls, a)
                    and getattr(getattr(cls, a), "__module__", "").startswith("test.")
                )
            ]
        except Exception:
            pass
        patches = sorted({a or b for a, b in PATCH_TARGET.findall(src)})
        text = t.get("msg", "") + "\n" + t.get("tb", "")
        missing = sorted(set(NO_ATTR.findall(text)))
        if not (attrs or patches or missing) and not args.all:
            continue
        strength = "STRONG" if missing else ("patches" if patches else "uses")
        n = len(groups[key])
        print(f"{key[len(ID_PREFIX) :]}  (x{n})  [{t['outcome']}] {t.get('msg', '')[:140]}")
        print(f"    {strength}: attrs={attrs} patches={patches} missing={missing}")
        rx = "|".join(re.escape(a) for a in (missing or attrs))
        line = key[len(ID_PREFIX) :] + (f" ~ {rx}" if rx else "")
        print(f"    suggestion: {line}  # ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
