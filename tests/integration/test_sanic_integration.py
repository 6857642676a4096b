"""Sanic on asyncio's loop and on ferroloop.

In-process: ``app.create_server(return_asyncio_server=True)`` inside the loop under test, with
httpx and the websockets client as clients. As a program: Sanic's own runner
(``app.run(single_process=True)``) started with ``python -m ferroloop``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _support import free_port, import_or_skip

import_or_skip("sanic")
httpx = import_or_skip("httpx")
import_or_skip("websockets")

from _apps import pattern, sha256  # noqa: E402
from _sanic_app import make_app  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

HERE = Path(__file__).resolve().parent
_names = itertools.count()


async def _conversation(port: int, loop_name: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        index = (await client.get("/", params={"a": "1"})).json()
        assert index["loop"].startswith(loop_name)
        seen = (await client.get("/")).headers["X-Seen"]

        async def body() -> AsyncIterator[bytes]:
            for i in range(16):
                yield pattern(64_000, seed=i)

        upload = (await client.post("/upload", content=body())).json()
        big = pattern(4_000_000, seed=1)
        sized = (await client.post("/upload", content=big)).json()
        lines = []
        async with client.stream("GET", "/stream", params={"count": 12}) as resp:
            async for line in resp.aiter_lines():
                lines.append(line)
        concurrent = await asyncio.gather(
            *(client.get("/", params={"i": str(i)}) for i in range(30))
        )
    async with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws_loop = await ws.recv()
        echoes = []
        for word in ("abc", "level", "sanic"):
            await ws.send(word)
            echoes.append(await ws.recv())
        await ws.send("bye")
        try:
            await ws.recv()
            close_code = None
        except Exception as exc:  # websockets.ConnectionClosedOK
            close_code = exc.rcvd.code if getattr(exc, "rcvd", None) else repr(exc)
    sent = b"".join(pattern(64_000, seed=i) for i in range(16))
    return {
        "args": index["args"],
        "middleware": seen,
        "upload": (upload["size"], upload["sha256"] == sha256(sent)),
        "sized": (sized["size"], sized["sha256"] == sha256(big)),
        "lines": lines,
        "concurrent": [r.json()["args"]["i"] for r in concurrent],
        "ws_loop": ws_loop.startswith(loop_name),
        "ws": (echoes, close_code),
    }


def test_sanic_create_server(run: Any, loop_name: str) -> None:
    async def scenario() -> dict[str, Any]:
        app = make_app(f"ferroloop_it_{loop_name}_{next(_names)}")
        port = free_port()
        server = await app.create_server(host="127.0.0.1", port=port, return_asyncio_server=True)
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        try:
            await asyncio.sleep(0.05)
            result = await _conversation(port, loop_name)
            result["ticking"] = app.ctx.ticks > 0
        finally:
            await server.before_stop()
            await server.close()
            await server.wait_closed()
            await server.after_stop()
        return result

    result = run(scenario)
    assert result["args"] == {"a": "1"}
    assert result["middleware"] == "True"
    assert result["upload"] == (16 * 64_000, True)
    assert result["sized"] == (4_000_000, True)
    assert result["lines"] == [f"line {i}" for i in range(12)]
    assert result["concurrent"] == [str(i) for i in range(30)]
    assert result["ws_loop"] is True
    assert result["ws"] == (["cba", "level", "cinas"], 1000)
    assert result["ticking"] is True


LAUNCHERS = {"asyncio": [], "ferroloop": ["-m", "ferroloop"]}


def test_sanic_run_single_process(run: Any, loop_name: str) -> None:
    port = free_port()
    cmd = [sys.executable, *LAUNCHERS[loop_name], str(HERE / "_sanic_app.py"), "--port", str(port)]
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:

        async def scenario() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=5) as client:
                for _ in range(300):
                    try:
                        await client.get(f"http://127.0.0.1:{port}/")
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None:
                            raise RuntimeError("sanic exited") from None
                        await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("sanic did not start")
            return await _conversation(port, loop_name)

        result = run(scenario)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert result["ws"] == (["cba", "level", "cinas"], 1000), output
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
