"""A web service whose handlers call blocking libraries through run_in_executor.

An aiohttp service with user accounts:

* POST /register and POST /login hash the password with hashlib.scrypt (deliberately slow,
  ~25 ms of CPU per call) in the loop's default thread pool: ``loop.run_in_executor(None, ...)``;
* every database access is a blocking sqlite3 query, run in a one-thread executor that owns the
  sqlite3 connection (sqlite3 connections belong to the thread that made them);
* GET /users/{name} reads an account; GET /stats counts accounts and logins.

While a client registers and logs in 16 users at once, a heartbeat task measures how late the
event loop wakes it up: since the blocking calls run in other threads, the loop stays
responsive (the largest delay is printed on stderr; with scrypt called inline it would be the
sum of many 25 ms calls).

Run the demo (server + client in one process; stdout is the same on every run and loop):
      python examples/apps/blocking_service.py
      python -m ferroloop examples/apps/blocking_service.py
Or serve until Ctrl-C, and try it with curl:
      python -m ferroloop examples/apps/blocking_service.py --serve 8080
      curl -X POST localhost:8080/register -d '{"user": "ada", "password": "secret"}'

Needs aiohttp (pip install -r scripts/requirements-integration.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web

SCRYPT = {"n": 2**13, "r": 8, "p": 1, "dklen": 32}  # ~25 ms of CPU per call


def hash_password(password: str, salt: bytes) -> bytes:
    """Blocking and CPU-heavy: runs in a worker thread (OpenSSL releases the GIL)."""
    return hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)


class Database:
    """A blocking sqlite3 database used only from its own single worker thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self.local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        if not hasattr(self.local, "conn"):
            conn = sqlite3.connect(self.path)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, salt BLOB, hash BLOB, "
                "logins INTEGER NOT NULL DEFAULT 0)"
            )
            self.local.conn = conn
        return self.local.conn

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = self._conn()
        with conn:  # a transaction per call
            return conn.execute(sql, params).fetchall()

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._query, sql, params)

    def _close(self) -> None:
        if hasattr(self.local, "conn"):
            self.local.conn.close()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self._close)
        self.executor.shutdown()


DB = web.AppKey("db", Database)


async def register(request: web.Request) -> web.Response:
    body = await request.json()
    user, password = body["user"], body["password"]
    salt = hashlib.sha256(user.encode()).digest()[:16]  # per-user salt (deterministic demo)
    loop = asyncio.get_running_loop()
    digest = await loop.run_in_executor(None, hash_password, password, salt)
    try:
        await request.app[DB].query(
            "INSERT INTO users (name, salt, hash) VALUES (?, ?, ?)", user, salt, digest
        )
    except sqlite3.IntegrityError:
        return web.json_response({"error": f"{user} exists"}, status=409)
    return web.json_response({"registered": user}, status=201)


async def login(request: web.Request) -> web.Response:
    body = await request.json()
    rows = await request.app[DB].query("SELECT salt, hash FROM users WHERE name = ?", body["user"])
    if not rows:
        return web.json_response({"error": "unknown user"}, status=404)
    salt, expected = rows[0]
    loop = asyncio.get_running_loop()
    digest = await loop.run_in_executor(None, hash_password, body["password"], salt)
    if not hmac.compare_digest(digest, expected):
        return web.json_response({"error": "wrong password"}, status=401)
    await request.app[DB].query("UPDATE users SET logins = logins + 1 WHERE name = ?", body["user"])
    return web.json_response({"welcome": body["user"]})


async def user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    rows = await request.app[DB].query("SELECT name, logins FROM users WHERE name = ?", name)
    if not rows:
        return web.json_response({"error": "unknown user"}, status=404)
    return web.json_response({"user": rows[0][0], "logins": rows[0][1]})


async def stats(request: web.Request) -> web.Response:
    rows = await request.app[DB].query("SELECT count(*), coalesce(sum(logins), 0) FROM users")
    return web.json_response({"users": rows[0][0], "logins": rows[0][1]})


def make_app(db_path: str) -> web.Application:
    app = web.Application()
    app[DB] = Database(db_path)

    async def close_db(app: web.Application) -> None:
        await app[DB].close()

    app.on_cleanup.append(close_db)
    app.router.add_post("/register", register)
    app.router.add_post("/login", login)
    app.router.add_get("/users/{name}", user)
    app.router.add_get("/stats", stats)
    return app


class Heartbeat:
    """Wakes up every 5 ms and records how late the loop woke it."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.beats = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)
            self.max_lag = max(self.max_lag, loop.time() - start - 0.005)
            self.beats += 1


async def demo() -> None:
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        runner = web.AppRunner(make_app(os.path.join(tmp, "users.db")), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        heartbeat = Heartbeat()
        beating = asyncio.create_task(heartbeat.run())
        users = [f"user{i:02d}" for i in range(16)]
        try:
            async with aiohttp.ClientSession(base) as session:

                async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
                    async with session.request(method, path, **kwargs) as resp:
                        return resp.status, await resp.json()

                start = time.perf_counter()
                registered = await asyncio.gather(
                    *(
                        call("POST", "/register", json={"user": u, "password": u[::-1]})
                        for u in users
                    )
                )
                again = await call("POST", "/register", json={"user": "user00", "password": "x"})
                logins = await asyncio.gather(
                    *(call("POST", "/login", json={"user": u, "password": u[::-1]}) for u in users),
                    *(
                        call("POST", "/login", json={"user": u, "password": "wrong"})
                        for u in users[:6]
                    ),
                    call("POST", "/login", json={"user": "nobody", "password": "x"}),
                )
                elapsed = time.perf_counter() - start
                profile = await call("GET", "/users/user07")
                totals = await call("GET", "/stats")
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
            await runner.cleanup()

    statuses: dict[int, int] = {}
    for status, _ in logins:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"registered: {sum(1 for status, _ in registered if status == 201)} users")
    print(f"registering user00 again: {again[0]} {again[1]['error']}")
    print(
        f"logins: {statuses.get(200, 0)} ok, {statuses.get(401, 0)} wrong password, "
        f"{statuses.get(404, 0)} unknown user"
    )
    print(f"GET /users/user07: {profile[1]}")
    print(f"GET /stats: {totals[1]}")
    print(f"event loop kept running during the blocking calls: {heartbeat.beats > 0}")
    calls = len(registered) + len(logins)  # + the second user00 - the unknown user
    print(
        f"{calls} scrypt calls in {elapsed:.2f} s; heartbeat: {heartbeat.beats} beats, "
        f"largest delay {heartbeat.max_lag * 1000:.1f} ms "
        f"(scrypt inline would block the loop ~25 ms per call)",
        file=sys.stderr,
    )


def serve(port: int) -> None:
    db_path = os.path.join(tempfile.gettempdir(), "blocking_service_users.db")
    print(
        f"serving on http://127.0.0.1:{port} (accounts in {db_path}); Ctrl-C stops", file=sys.stderr
    )
    web.run_app(
        make_app(db_path), host="127.0.0.1", port=port, print=None, loop=asyncio.new_event_loop()
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve on PORT until Ctrl-C")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        asyncio.run(demo())
