"""loop.getaddrinfo / loop.getnameinfo agree with the socket module.

Only numeric hosts, "localhost" (from /etc/hosts) and service names (from /etc/services) are
looked up: nothing here needs a DNS server. Every scenario runs on asyncio's loop and on
ferroloop; the socket module itself is the reference for both.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from net_support import NET_MARKS, collect_garbage, frozen_heap, run  # noqa: F401

pytestmark = NET_MARKS


def _outcome(func, *args, **kwargs):
    """("ok", result) or ("error", exception type, exception args)."""
    try:
        return ("ok", func(*args, **kwargs))
    except Exception as exc:
        return ("error", type(exc), exc.args)


async def _aoutcome(coro):
    try:
        return ("ok", await coro)
    except Exception as exc:
        return ("error", type(exc), exc.args)


S = socket
GETADDRINFO_CASES = [
    # IPv4 literals, with and without a port, numeric and named services
    ("127.0.0.1", 80, {}),
    ("127.0.0.1", None, {}),
    ("127.0.0.1", 0, {}),
    ("127.0.0.1", "8080", {}),
    ("127.0.0.1", "http", {}),
    ("127.0.0.1", b"http", {}),
    (b"127.0.0.1", 80, {}),
    ("127.0.0.1", "domain", {"type": S.SOCK_DGRAM}),
    # IPv6 literals
    ("::1", 443, {}),
    ("::1", None, {}),
    ("::1", "https", {"type": S.SOCK_STREAM}),
    ("::ffff:127.0.0.1", 80, {}),
    ("::", 0, {"family": S.AF_INET6}),
    # filters
    ("127.0.0.1", 80, {"family": S.AF_INET}),
    ("127.0.0.1", 80, {"type": S.SOCK_STREAM}),
    ("127.0.0.1", 53, {"type": S.SOCK_DGRAM}),
    ("127.0.0.1", 80, {"proto": S.IPPROTO_TCP}),
    ("127.0.0.1", 80, {"proto": S.IPPROTO_UDP}),
    (
        "127.0.0.1",
        80,
        {
            "family": S.AF_INET,
            "type": S.SOCK_STREAM,
            "proto": S.IPPROTO_TCP,
            "flags": S.AI_NUMERICHOST,
        },
    ),
    ("127.0.0.1", "80", {"flags": S.AI_NUMERICSERV}),
    ("127.0.0.1", 80, {"flags": S.AI_CANONNAME}),
    ("::1", 80, {"family": S.AF_INET6, "flags": S.AI_NUMERICHOST | S.AI_CANONNAME}),
    # no host: wildcard with AI_PASSIVE, loopback without
    (None, 8080, {"flags": S.AI_PASSIVE}),
    (None, 8080, {"flags": S.AI_PASSIVE, "family": S.AF_INET}),
    (None, 8080, {"flags": S.AI_PASSIVE, "family": S.AF_INET6, "type": S.SOCK_STREAM}),
    (None, 0, {}),
    (None, "http", {"type": S.SOCK_STREAM}),
    # "localhost" (from /etc/hosts)
    ("localhost", 80, {}),
    ("localhost", None, {"type": S.SOCK_STREAM}),
    ("localhost", "http", {"family": S.AF_INET}),
    ("localhost", 80, {"type": S.SOCK_STREAM, "flags": S.AI_CANONNAME}),
    ("localhost", 0, {"family": S.AF_INET, "type": S.SOCK_DGRAM, "proto": S.IPPROTO_UDP}),
]

GETADDRINFO_ERRORS = [
    (None, None, {}),  # EAI_NONAME
    ("127.0.0.1", "no-such-service-xyz", {}),  # EAI_SERVICE
    ("localhost", 80, {"flags": S.AI_NUMERICHOST}),  # a name where a number is required
    ("256.1.1.1", 80, {"flags": S.AI_NUMERICHOST}),
    ("127.0.0.1", "http", {"flags": S.AI_NUMERICSERV}),
    ("127.0.0.1", 80, {"family": 12345}),  # EAI_FAMILY
    ("127.0.0.1", 80, {"type": 12345}),  # EAI_SOCKTYPE
    ("127.0.0.1", 80, {"type": S.SOCK_STREAM, "proto": S.IPPROTO_UDP}),
    ("::1", 80, {"family": S.AF_INET}),  # EAI_ADDRFAMILY
    ("127.0.0.1", 80, {"family": S.AF_INET6}),
    ("127.0.0.1", 80, {"flags": -1}),  # EAI_BADFLAGS
    ("127.0.0.1", -1, {}),
    ("127.0.0.1", 1.5, {}),  # OSError('Int or String expected')
]


def _case_id(case) -> str:
    host, port, kwargs = case
    flags = ",".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{host!r}-{port!r}-{flags}"


@pytest.mark.parametrize("case", GETADDRINFO_CASES, ids=_case_id)
def test_getaddrinfo_matches_socket_module(loop, case):
    host, port, kwargs = case
    expected = socket.getaddrinfo(host, port, **kwargs)
    got = run(loop, loop.getaddrinfo(host, port, **kwargs))
    assert type(got) is list
    assert got == expected
    for got_entry, expected_entry in zip(got, expected, strict=True):
        assert type(got_entry) is tuple
        # Same enum types as the socket module (AddressFamily, SocketKind), not bare ints.
        assert [type(x) for x in got_entry] == [type(x) for x in expected_entry]


@pytest.mark.parametrize("case", GETADDRINFO_ERRORS, ids=_case_id)
def test_getaddrinfo_errors_match_socket_module(loop, case):
    host, port, kwargs = case
    expected = _outcome(socket.getaddrinfo, host, port, **kwargs)
    assert expected[0] == "error"
    got = run(loop, _aoutcome(loop.getaddrinfo(host, port, **kwargs)))
    assert got == expected


def test_getaddrinfo_positional_host_and_port_keyword_filters(loop):
    # family/type/proto/flags are keyword-only on the loop
    with pytest.raises(TypeError):
        run(loop, loop.getaddrinfo("127.0.0.1", 80, socket.AF_INET))


def test_getaddrinfo_runs_concurrently(loop):
    hosts = ["127.0.0.1", "::1", "localhost", None] * 5

    async def main():
        return await asyncio.gather(*(loop.getaddrinfo(h, 80) for h in hosts))

    results = run(loop, main())
    assert results == [socket.getaddrinfo(h, 80) for h in hosts]


def test_getaddrinfo_error_is_gaierror_subclass_of_oserror(loop):
    with pytest.raises(socket.gaierror) as info:
        run(loop, loop.getaddrinfo("localhost", 80, flags=socket.AI_NUMERICHOST))
    assert isinstance(info.value, OSError)
    assert info.value.errno == socket.EAI_NONAME


GETNAMEINFO_CASES = [
    (("127.0.0.1", 80), S.NI_NUMERICHOST | S.NI_NUMERICSERV),
    (("127.0.0.1", 80), S.NI_NUMERICHOST),
    (("127.0.0.1", 53), S.NI_NUMERICHOST | S.NI_DGRAM),
    (("127.0.0.1", 80), 0),  # reverse lookup answered by /etc/hosts
    (("127.0.0.1", 80), S.NI_NAMEREQD),
    (("127.0.0.1", 0), S.NI_NUMERICHOST | S.NI_NUMERICSERV),
    (("::1", 443), S.NI_NUMERICHOST),
    (("::1", 443, 0, 0), S.NI_NUMERICHOST | S.NI_NUMERICSERV),
]

GETNAMEINFO_ERRORS = [
    (("127.0.0.1",), 0),  # TypeError: illegal sockaddr argument
    (("127.0.0.1", 80, 0, 0), 0),  # OSError: IPv4 sockaddr must be 2 tuple
    ("127.0.0.1", 0),  # TypeError: argument 1 must be a tuple
    (("localhost", 80), S.NI_NUMERICHOST),  # gaierror: the address must be numeric
    (("127.0.0.1", 80), 12345),  # gaierror: bad flags
    (("127.0.0.1", 80), "x"),  # TypeError
]


@pytest.mark.parametrize("case", GETNAMEINFO_CASES, ids=repr)
def test_getnameinfo_matches_socket_module(loop, case):
    sockaddr, flags = case
    expected = socket.getnameinfo(sockaddr, flags)
    got = run(loop, loop.getnameinfo(sockaddr, flags))
    assert got == expected
    assert type(got) is tuple


def test_getnameinfo_default_flags(loop):
    assert run(loop, loop.getnameinfo(("127.0.0.1", 80))) == socket.getnameinfo(
        ("127.0.0.1", 80), 0
    )


@pytest.mark.parametrize("case", GETNAMEINFO_ERRORS, ids=repr)
def test_getnameinfo_errors_match_socket_module(loop, case):
    sockaddr, flags = case
    expected = _outcome(socket.getnameinfo, sockaddr, flags)
    assert expected[0] == "error"
    got = run(loop, _aoutcome(loop.getnameinfo(sockaddr, flags)))
    assert got == expected


def test_getaddrinfo_result_feeds_a_connection(loop):
    """The loop's answer is directly usable: create a socket from it and connect."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]

        async def main():
            infos = await loop.getaddrinfo(
                "localhost", port, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
            family, type_, proto, _, addr = infos[0]
            with socket.socket(family, type_, proto) as client:
                client.setblocking(False)
                await loop.sock_connect(client, addr)
                return client.getpeername()

        assert run(loop, main()) == ("127.0.0.1", port)
