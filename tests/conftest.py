"""Shared fixtures: every scenario runs on asyncio's own loop and on ferroloop.

asyncio's loop defines the expected behaviour; a test that passes on asyncio and fails on
ferroloop is a ferroloop bug. Tests of ferroloop-only features use ``ferroloop_loop``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

import ferroloop

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
