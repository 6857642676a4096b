"""uvicorn serving Starlette and FastAPI applications on asyncio's loop and on ferroloop.

In-process: ``uvicorn.Server(uvicorn.Config(app, loop="none", ...)).serve()`` runs inside the
loop under test (``asyncio.Runner(loop_factory=...)``), with both HTTP implementations (h11 and
httptools), websockets, TLS, lifespan events, streaming, background tasks and a sync endpoint
(run in a worker thread by anyio). Requests come from httpx and the websockets client, on the
same loop.

As a command: ``python -m uvicorn --loop ferroloop:new_event_loop`` (uvicorn's own option
for a custom loop factory) and ``python -m ferroloop -m uvicorn --loop none``, each checked to
really serve on ferroloop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _support import import_or_skip

uvicorn = import_or_skip("uvicorn")
httpx = import_or_skip("httpx")
import_or_skip("starlette")
import_or_skip("websockets")

from _apps import make_starlette_app, pattern, sha256, tls_files  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@asynccontextmanager
async def serve_uvicorn(app: Any, **config: Any) -> AsyncIterator[tuple[int, Any]]:
    """Run uvicorn.Server.serve() as a task of the running loop; yield (port, server)."""
    cfg = uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", log_level="warning", **config)
    server = uvicorn.Server(cfg)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield port, server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _starlette_conversation(
    base: str, client: Any, loop_name: str, ws_base: str, ssl_ctx: Any = None
) -> dict[str, Any]:
    index = (await client.get(f"{base}/", params={"q": "1"})).json()
    assert index["loop"].startswith(loop_name)
    assert index["events"] == [f"startup on {index['loop']}"]  # the lifespan ran on that loop
    body = pattern(2 * 1024 * 1024, seed=5)
    echo = (await client.post(f"{base}/echo", content=body)).json()

    async def chunked_upload() -> AsyncIterator[bytes]:
        for i in range(20):
            yield pattern(30_000, seed=i)

    chunked = (await client.post(f"{base}/echo", content=chunked_upload())).json()
    lines = []
    async with client.stream("GET", f"{base}/chunks", params={"count": 25}) as resp:
        async for line in resp.aiter_lines():
            lines.append(line)
    blocking = (await client.get(f"{base}/blocking")).text
    await client.get(f"{base}/background")
    background = (await client.get(f"{base}/background-count")).json()
    concurrent = await asyncio.gather(
        *(client.get(f"{base}/", params={"i": str(i)}) for i in range(30))
    )

    async with ws_connect(f"{ws_base}/ws", ssl=ssl_ctx, max_size=None) as ws:
        hello = await ws.recv()
        await ws.send("stressed")
        reversed_text = await ws.recv()
        await ws.send(pattern(1_000_000))
        digest = await ws.recv()
        await ws.send("close-me")
        try:
            await ws.recv()
            close_code = None
        except Exception as exc:  # websockets.ConnectionClosedOK
            close_code = exc.rcvd.code if getattr(exc, "rcvd", None) else repr(exc)
    return {
        "query": index["query"],
        "http_version": index["http_version"],
        "echo": echo == {"size": len(body), "sha256": sha256(body), "loop": index["loop"]},
        "chunked_upload": chunked["size"],
        "lines": lines,
        "blocking": blocking,
        "background": background,
        "concurrent": [r.json()["query"]["i"] for r in concurrent],
        "ws_hello_loop": json.loads(hello)["loop"].startswith(loop_name),
        "ws": [reversed_text, digest == sha256(pattern(1_000_000)).encode(), close_code],
    }


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_starlette_on_uvicorn(run: Any, loop_name: str, http: str) -> None:
    if http == "httptools":
        import_or_skip("httptools")

    async def scenario() -> dict[str, Any]:
        app = make_starlette_app()
        async with serve_uvicorn(app, http=http, ws="websockets-sansio", lifespan="on") as (
            port,
            _,
        ):
            base = f"http://127.0.0.1:{port}"
            limits = httpx.Limits(max_connections=5)
            async with httpx.AsyncClient(limits=limits, timeout=10) as client:
                result = await _starlette_conversation(
                    base, client, loop_name, f"ws://127.0.0.1:{port}"
                )
        result["lifespan"] = [e.split(" on ")[0] for e in app.state.record["events"]]
        return result

    result = run(scenario)
    assert result["lifespan"] == ["startup", "shutdown"]
    assert result["echo"] is True
    assert result["chunked_upload"] == 20 * 30_000
    assert result["lines"] == [f"chunk {i}" for i in range(25)]
    assert result["blocking"] == "thread=True"
    assert result["background"] == {"background": 1}
    assert result["concurrent"] == [str(i) for i in range(30)]
    assert result["ws_hello_loop"] is True
    assert result["ws"] == ["desserts", True, 4002]


def test_uvicorn_tls(run: Any, loop_name: str) -> None:
    import ssl

    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca = tls_files(tmp)
        client_ctx = ssl.create_default_context(cafile=ca)

        async def scenario() -> dict[str, Any]:
            app = make_starlette_app()
            async with serve_uvicorn(
                app, ssl_certfile=cert, ssl_keyfile=key, ws="websockets-sansio"
            ) as (
                port,
                _,
            ):
                base = f"https://127.0.0.1:{port}"
                async with httpx.AsyncClient(verify=client_ctx, timeout=10) as client:
                    result = await _starlette_conversation(
                        base, client, loop_name, f"wss://127.0.0.1:{port}", client_ctx
                    )
                # Without the CA the certificate is refused.
                async with httpx.AsyncClient(timeout=10) as untrusting:
                    try:
                        await untrusting.get(base)
                        result["untrusted"] = "accepted"
                    except httpx.ConnectError as exc:
                        result["untrusted"] = "CERTIFICATE_VERIFY_FAILED" in str(exc)
            return result

        result = run(scenario)
    assert result["echo"] is True and result["ws"][1] is True
    assert result["untrusted"] is True


def test_fastapi_on_uvicorn(run: Any, loop_name: str) -> None:
    import_or_skip("fastapi")
    from _fastapi_app import make_fastapi_app

    async def scenario() -> list[Any]:
        async with serve_uvicorn(make_fastapi_app(), http="httptools") as (port, _):
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                assert (await client.get("/loop")).json()["loop"].startswith(loop_name)
                out: list[Any] = []
                puts = await asyncio.gather(
                    *(
                        client.put(
                            f"/items/{i}",
                            json={"name": f"item{i}", "price": i * 1.5, "tags": ["t"] * (i % 3)},
                        )
                        for i in range(12)
                    )
                )
                out.append([r.status_code for r in puts])
                out.append((await client.get("/items", params={"limit": 3})).json())
                out.append((await client.get("/items/7")).json())  # sync route, in a thread
                missing = await client.get("/items/99")
                out.append((missing.status_code, missing.json()))
                invalid = await client.put("/items/1", json={"name": "x", "price": "free"})
                out.append((invalid.status_code, invalid.json()["detail"][0]["loc"]))
        return out

    result = run(scenario)
    assert result[0] == [200] * 12
    assert result[1][0] == {"id": 0, "name": "item0", "price": 0.0, "tags": []}
    assert len(result[1]) == 3
    assert result[2] == {"id": 7, "name": "item7", "price": 10.5, "tags": ["t"]}
    assert result[3] == (404, {"detail": "no such item"})
    assert result[4] == (422, ["body", "price"])


def _launch(cmd: list[str]) -> subprocess.Popen:
    """Start a uvicorn command line from the repository root, output captured."""
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _interrupt(proc: subprocess.Popen, timeout: float) -> str:
    """Ctrl-C, as a user stops uvicorn; killed if it does not exit in time. Its output."""
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


# The command lines a user would type; {loop} is filled in per loop.
LAUNCHERS = {
    # uvicorn's --loop takes a "module:callable" loop factory.
    "uvicorn-loop-option": {
        "asyncio": ["-m", "uvicorn", "--loop", "asyncio"],
        "ferroloop": ["-m", "uvicorn", "--loop", "ferroloop:new_event_loop"],
    },
    # --loop none: uvicorn leaves the choice to asyncio's policy, which python -m ferroloop sets.
    "python-m-ferroloop": {
        "asyncio": ["-m", "uvicorn", "--loop", "none"],
        "ferroloop": ["-m", "ferroloop", "-m", "uvicorn", "--loop", "none"],
    },
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_uvicorn_command_line(run: Any, loop_name: str, launcher: str) -> None:
    from _support import free_port

    port = free_port()
    cmd = [
        sys.executable,
        *LAUNCHERS[launcher][loop_name],
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
        "_apps:starlette_app",
    ]
    proc = _launch(cmd)
    try:

        async def scenario() -> dict[str, Any]:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=5) as client:
                for _ in range(200):
                    try:
                        index = (await client.get(f"{base}/")).json()
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None:
                            raise RuntimeError("uvicorn exited") from None
                        await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("uvicorn did not start")
                echo = (await client.post(f"{base}/echo", content=b"x" * 100_000)).json()
            return {"server_loop": index["loop"], "events": index["events"], "echo": echo["size"]}

        result = run(scenario, compare=False)
    finally:
        output = _interrupt(proc, timeout=15)
    assert result["server_loop"].startswith(loop_name), (result, output)
    assert result["events"] == [f"startup on {result['server_loop']}"]
    assert result["echo"] == 100_000
    assert proc.returncode == 0, output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


def test_uvicorn_workers_serve_without_delayed_ack(run: Any, loop_name: str) -> None:
    """``uvicorn --workers 2``: the master makes the listening socket as ``socket.socket()``
    (proto 0) and hands it to the workers. asyncio sets TCP_NODELAY only when
    ``proto == IPPROTO_TCP``, so its connections keep Nagle's algorithm (each small response
    waits for the peer's delayed ACK); ferroloop, as uvloop, sets it on every TCP socket (a
    deliberate difference, README). Checked from inside the workers, on the connection that
    asks."""
    from _support import free_port

    port = free_port()
    loop_option = "ferroloop:new_event_loop" if loop_name == "ferroloop" else "asyncio"
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--loop",
        loop_option,
        "--workers",
        "2",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "_apps:starlette_app",
    ]
    proc = _launch(cmd)
    try:

        async def scenario() -> list[dict[str, Any]]:
            base = f"http://127.0.0.1:{port}"
            answers = []
            for _ in range(400):
                try:
                    # A new connection per request, so that both workers get some.
                    async with httpx.AsyncClient(timeout=5) as client:
                        answers.append((await client.get(f"{base}/nodelay")).json())
                    if len(answers) >= 20 and len({a["pid"] for a in answers}) == 2:
                        break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise RuntimeError("uvicorn exited") from None
                    await asyncio.sleep(0.05)
            return answers

        answers = run(scenario, compare=False)
    finally:
        output = _interrupt(proc, timeout=20)
    assert answers, output
    assert all(a["loop"].startswith(loop_name) for a in answers), (answers, output)
    flags = {flag != 0 for a in answers for flag in a["nodelay"]}
    # ferroloop: TCP_NODELAY on every connection; asyncio: on none of them (proto 0).
    assert flags == {loop_name == "ferroloop"}, (answers, output)
    assert "Traceback" not in output, output
