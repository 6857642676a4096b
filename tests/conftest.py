"""Shared fixtures: every scenario runs on asyncio's own loop and on ferroloop.

asyncio's loop defines the expected behaviour; a test that passes on asyncio and fails on
ferroloop is a ferroloop bug. Tests of ferroloop-only features use ``ferroloop_loop``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ferroloop


def pytest_report_header() -> str:
    return f"ferroloop {ferroloop.__version__} from {Path(ferroloop.__file__).parent}"


def pytest_configure(config: pytest.Config) -> None:
    # Started in the background by a non-interactive shell (`cmd &`), the run begins with SIGINT
    # ignored, and so would every child it spawns: the Ctrl-C tests (on both loops) would hang.
    # Python's usual handler here makes the children start with the default disposition again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # scripts/clean-room.sh sets this: the suite must test the installed wheel, never a
    # source tree that happens to be importable.
    if os.environ.get("FERROLOOP_EXPECT_INSTALLED") == "1":
        where = Path(ferroloop.__file__).resolve().parent
        site = Path(sysconfig.get_paths()["purelib"]).resolve()
        if where.parent != site:
            raise pytest.UsageError(f"ferroloop imported from {where}, not from {site}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # FERROLOOP_TIMEOUT_SCALE stretches every per-test timeout (the marks' and the ini's) for
    # runs many times slower than usual: scripts/memcheck.sh runs the suite under valgrind.
    scale = float(os.environ.get("FERROLOOP_TIMEOUT_SCALE", "1") or 1)
    if scale == 1:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        seconds = float(mark.args[0]) if mark is not None and mark.args else default
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(seconds * scale), append=False)


LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return LOOP_FACTORIES[loop_name]


@pytest.fixture
def loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> Iterator[asyncio.AbstractEventLoop]:
    lp = loop_factory()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            if not lp.is_running():
                lp.run_until_complete(lp.shutdown_asyncgens())
            lp.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def ferroloop_loop() -> Iterator[ferroloop.Loop]:
    lp = ferroloop.new_event_loop()
    try:
        yield lp
    finally:
        if not lp.is_closed():
            lp.close()


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A self-signed certificate for 'localhost' / 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)
