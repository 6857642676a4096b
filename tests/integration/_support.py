"""Helpers shared by the integration tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ferroloop

ROOT = Path(__file__).resolve().parents[2]
# Where scripts/services.sh writes the servers' URLs (same defaults as the script).
DEFAULT_SERVICES_ENV = os.path.join(
    os.environ.get("FERROLOOP_SERVICES_DIR", "/tmp/ferroloop-services"), "services.env"
)
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}
# Every scenario finishes in a few seconds; this only turns a hang into a failure.
SCENARIO_TIMEOUT = 60.0
START_COMMANDS = "scripts/services.sh install && scripts/services.sh start"


def require_services() -> bool:
    return os.environ.get("FERROLOOP_REQUIRE_SERVICES", "") not in ("", "0")


def services_env() -> dict[str, str]:
    """The services' URLs: the env file written by scripts/services.sh, then the environment."""
    found: dict[str, str] = {}
    path = Path(os.environ.get("FERROLOOP_SERVICES_ENV", DEFAULT_SERVICES_ENV))
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                found[key.strip()] = value.strip()
    for key in (
        "FERROLOOP_PG_URL",
        "FERROLOOP_REDIS_URL",
        "FERROLOOP_PG_UNIX_URL",
        "FERROLOOP_REDIS_UNIX_URL",
        "FERROLOOP_PG_SSL_CA",
    ):
        if os.environ.get(key):
            found[key] = os.environ[key]
    return found


def service_url(key: str, what: str) -> str:
    url = services_env().get(key)
    if not url:
        reason = (
            f"{what} not provided: run `{START_COMMANDS}` (writes "
            f"{os.environ.get('FERROLOOP_SERVICES_ENV', DEFAULT_SERVICES_ENV)}) or set {key}"
        )
        if require_services():
            pytest.fail(reason + " [FERROLOOP_REQUIRE_SERVICES is set]")
        pytest.skip(reason)
    return url


def import_or_skip(name: str) -> Any:
    """Import an integration package; skip (fail in CI) if it is not installed."""
    if require_services():
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(
        name, reason=f"{name} not installed: pip install -r scripts/requirements-integration.txt"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__
