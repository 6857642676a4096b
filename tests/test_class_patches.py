"""Patches of asyncio's loop classes, as test suites make them.

``mock.patch("asyncio.BaseEventLoop.create_connection", slow)`` changes what asyncio's loop runs
(asyncssh's connect-timeout tests rely on it). ferroloop's loop is no ``BaseEventLoop``; its
connection, server, pipe, subprocess, sendfile and name-lookup coroutines look the name up on
asyncio's loop class when called and run the replacement, so the same patch works on both loops
(README, "Deliberate differences", for the methods that do not follow patches).

Every scenario runs on asyncio's loop (the reference) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import socket
from unittest import mock

import pytest

from ferroloop import _net

# Each method that follows patches, with arguments that would fail or block if the real method
# ran (nothing listens on port 9 of 192.0.2.1, a documentation address; None is no protocol
# factory), so only the replacement can answer.
CALLS = {
    "create_connection": ((None, "192.0.2.1", 9), {}),
    "create_server": ((None, "192.0.2.1", 9), {}),
    "connect_accepted_socket": ((None, None), {}),
    "create_datagram_endpoint": ((None,), {"remote_addr": ("192.0.2.1", 9)}),
    "start_tls": ((None, None, None), {}),
    "sendfile": ((None, None), {}),
    "sock_sendfile": ((None, None), {}),
    "connect_read_pipe": ((None, None), {}),
    "connect_write_pipe": ((None, None), {}),
    "subprocess_exec": ((None, "/nonexistent"), {}),
    "subprocess_shell": ((None, "exit 3"), {}),
    "sock_connect": ((None, ("192.0.2.1", 9)), {}),
    "sock_accept": ((None,), {}),
    "create_unix_connection": ((None, "/nonexistent"), {}),
    "create_unix_server": ((None, "/nonexistent/x"), {}),
    "getaddrinfo": (("no-such-host.invalid", 80), {"type": socket.SOCK_STREAM}),
    "getnameinfo": ((("192.0.2.1", 9),), {}),
}


def test_the_list_matches_ferroloop() -> None:
    assert set(CALLS) == set(_net.FOLLOWS_ASYNCIO_PATCHES)


def _owner(name: str) -> type:
    """The asyncio class whose attribute asyncio's Unix loop finds for ``name``."""
    return next(k for k in asyncio.SelectorEventLoop.__mro__ if name in k.__dict__)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_function_patched_on_asyncio_class_gets_the_loop(loop, name: str) -> None:
    args, kwargs = CALLS[name]
    seen = []

    async def replacement(self, *a, **k):
        seen.append((self, a, k))
        return "replaced"

    async def main():
        with mock.patch.object(_owner(name), name, replacement):
            assert await getattr(loop, name)(*args, **kwargs) == "replaced"

    loop.run_until_complete(main())
    assert seen == [(loop, args, kwargs)]


@pytest.mark.parametrize("name", ["create_connection", "sock_connect", "getaddrinfo"])
def test_a_mock_patched_on_asyncio_class_is_called_without_the_loop(loop, name: str) -> None:
    # A mock is no descriptor: attribute access hands it over as it is, without binding.
    args, kwargs = CALLS[name]

    async def main():
        with mock.patch.object(_owner(name), name, new_callable=mock.AsyncMock) as m:
            m.return_value = "mocked"
            assert await getattr(loop, name)(*args, **kwargs) == "mocked"
        m.assert_awaited_once_with(*args, **kwargs)

    loop.run_until_complete(main())


def test_connect_timeout_through_a_slow_patched_create_connection(loop) -> None:
    # asyncssh's test_connect_timeout_exceeded, reduced.
    async def slow(self, *args, **kwargs):
        await asyncio.sleep(10)

    async def main():
        with mock.patch("asyncio.BaseEventLoop.create_connection", slow):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    loop.create_connection(asyncio.Protocol, "192.0.2.1", 22), 0.05
                )

    loop.run_until_complete(main())


def test_after_the_patch_the_real_method_runs_again(loop) -> None:
    async def main():
        with mock.patch.object(asyncio.BaseEventLoop, "getaddrinfo", mock.AsyncMock()):
            pass
        infos = await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        assert infos[0][4] == ("127.0.0.1", 80)

    loop.run_until_complete(main())
