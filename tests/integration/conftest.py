"""Real applications on ferroloop: every scenario runs on asyncio's loop and on ferroloop.

Each test is parametrized over ``loop_name`` (``asyncio``, ``ferroloop``; from tests/conftest.py)
and runs its scenario with ``asyncio.Runner(loop_factory=...)`` through the ``run`` fixture,
which

* checks that the running loop really is the one asked for (its class's module starts with
  ``asyncio`` / ``ferroloop``),
* bounds the scenario's time,
* records every call of the loop's exception handler (an asyncio program's "Task exception was
  never retrieved", "Unclosed ...", errors in callbacks) and fails the test if there is one,
* compares the scenario's result with the result the same test got on asyncio's loop (asyncio
  runs first; asyncio's loop defines the expected behaviour).

PostgreSQL and Redis come from ``scripts/services.sh start``, which writes their URLs to
``$FERROLOOP_SERVICES_ENV`` (default ``$FERROLOOP_SERVICES_DIR/services.env``, that is
``/tmp/ferroloop-services/services.env``); the same
variables (``FERROLOOP_PG_URL``, ``FERROLOOP_REDIS_URL``) may also be set in the environment.
Without them the tests that need a server are skipped, saying so. With
``FERROLOOP_REQUIRE_SERVICES=1`` (CI) a missing server or package is a failure instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from _support import LOOP_FACTORIES, SCENARIO_TIMEOUT, service_url

T = TypeVar("T")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """postgresql://user:password@127.0.0.1:port/db of the test server."""
    return service_url("FERROLOOP_PG_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def pg_ssl_ca() -> str:
    """The test server's self-signed TLS certificate (it also accepts TLS connections)."""
    return service_url("FERROLOOP_PG_SSL_CA", "PostgreSQL's TLS certificate")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """redis://127.0.0.1:port/0 of the test server."""
    return service_url("FERROLOOP_REDIS_URL", "Redis")


@pytest.fixture(scope="session")
def pg_unix_url() -> str:
    """postgresql://user@/db?host=SOCKET_DIR&port=PORT: the test server over its Unix socket."""
    return service_url("FERROLOOP_PG_UNIX_URL", "PostgreSQL's Unix socket")


@pytest.fixture(scope="session")
def redis_unix_url() -> str:
    """unix:///path/redis.sock?db=0: the test server over its Unix socket."""
    return service_url("FERROLOOP_REDIS_UNIX_URL", "Redis's Unix socket")


_results: dict[tuple[Any, ...], Any] = {}


def _scenario_key(request: pytest.FixtureRequest) -> tuple[Any, ...]:
    callspec = getattr(request.node, "callspec", None)
    params = dict(callspec.params) if callspec is not None else {}
    params.pop("loop_name", None)
    return (request.node.path, request.node.originalname, tuple(sorted(params.items(), key=str)))


@pytest.fixture
def run(loop_name: str, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run(scenario, *args)``: run ``await scenario(*args)`` on a new loop of ``loop_name``.

    Returns the scenario's result, after checking it equals what the same test got on asyncio.
    Pass ``compare=False`` for results that legitimately differ between loops.
    """

    def runner(
        scenario: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float = SCENARIO_TIMEOUT,
        compare: bool = True,
    ) -> T:
        problems: list[str] = []

        async def main() -> T:
            loop = asyncio.get_running_loop()
            module = type(loop).__module__
            assert module.startswith(loop_name), (
                f"scenario runs on {type(loop).__module__}.{type(loop).__qualname__}, "
                f"expected a {loop_name} loop"
            )

            def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                problems.append(
                    f"{context.get('message')}: {context.get('exception')!r} "
                    f"{context.get('future', context.get('handle', ''))!r}"
                )
                lp.default_exception_handler(context)

            loop.set_exception_handler(handler)
            async with asyncio.timeout(timeout):
                return await scenario(*args)

        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_name]) as asyncio_runner:
            result = asyncio_runner.run(main())
        assert not problems, f"the loop's exception handler was called on {loop_name}: {problems}"
        if compare:
            key = _scenario_key(request)
            if loop_name == "asyncio":
                _results[key] = result
            elif key in _results:
                assert result == _results[key], (
                    f"{loop_name} result differs from asyncio's:\n"
                    f"asyncio:   {_results[key]!r}\n{loop_name}: {result!r}"
                )
        return result

    return runner
