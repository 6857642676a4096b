"""``python -m ferroloop script.py [args]``: run an unmodified asyncio program on ferroloop.

Also ``python -m ferroloop -m package.module [args]`` and ``python -m ferroloop -c CODE``.
The program's own ``asyncio.run(...)``, ``asyncio.new_event_loop()`` and friends get ferroloop
loops because ferroloop's event loop policy is installed before the program starts.

``python -m ferroloop ps PID`` and ``python -m ferroloop pstree PID`` print the tasks of a
running process that opted in (``FERROLOOP_INSPECT=1`` or ``ferroloop.enable_inspect()``); see
``_inspect_cli.py``. A script named ``ps`` or ``pstree`` runs as ``./ps``.

``--warn-blocking 50ms`` (before the program) turns the blocking watchdog on for every loop
the program creates (it sets ``FERROLOOP_WARN_BLOCKING``).
"""

from __future__ import annotations

import os
import runpy
import sys

from . import _install, _watchdog

USAGE = (
    "usage: python -m ferroloop [--warn-blocking DURATION] (script.py | -m module | -c code)"
    " [args ...]\n"
    "       python -m ferroloop (ps | pstree) PID [--json] [--timeout SECONDS]\n"
    "  --warn-blocking 50ms   report a callback or task step that blocks the loop longer\n"
    "                         (the stack is taken while it blocks; see the README)\n"
    "  --version              print ferroloop's and Python's versions"
)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"ferroloop {__version__} (Python {sys.version.split()[0]})")
        return 0
    if args[0] in ("ps", "pstree"):
        from ._inspect_cli import main as inspect_main

        return inspect_main(args)
    while args and args[0].startswith("--warn-blocking"):
        flag = args.pop(0)
        if "=" in flag:
            value = flag.split("=", 1)[1]
        elif args:
            value = args.pop(0)
        else:
            print(USAGE, file=sys.stderr)
            return 2
        try:
            _watchdog.parse_duration(value)
        except (TypeError, ValueError) as exc:
            print(f"python -m ferroloop: --warn-blocking: {exc}", file=sys.stderr)
            return 2
        # Every loop the program creates reads it (Loop.__init__), children included.
        os.environ["FERROLOOP_WARN_BLOCKING"] = value
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] not in ("-m", "-c"):
        if args[0].startswith("-"):
            print(f"python -m ferroloop: unknown option {args[0]!r}\n{USAGE}", file=sys.stderr)
            return 2
        if not os.path.exists(args[0]):
            # As the interpreter says it for `python missing.py`, with its exit status.
            path = os.path.abspath(args[0])
            print(
                f"python -m ferroloop: can't open file {path!r}: "
                "[Errno 2] No such file or directory",
                file=sys.stderr,
            )
            return 2
    _install()
    if args[0] == "-m":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = args[1:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = ["-c", *args[2:]]
        sys.path.insert(0, "")
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        script = args[0]
        sys.argv = args
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
