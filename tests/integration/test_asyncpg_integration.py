"""asyncpg against a real PostgreSQL server.

The server comes from ``scripts/services.sh start`` (password authentication with SCRAM over
TCP on 127.0.0.1). Each loop works in its own schema (``it_asyncio`` / ``it_ferroloop``),
dropped and made anew by each test, so the two runs see the same data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import io
import json
import ssl
import uuid
from typing import Any

from _support import import_or_skip

asyncpg = import_or_skip("asyncpg")


async def fresh_schema(conn: Any, name: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}")


def test_queries_types_copy_cursor(run: Any, pg_url: str, loop_name: str) -> None:
    schema = f"it_{loop_name}"

    async def scenario() -> dict[str, Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            await fresh_schema(conn, schema)
            await conn.execute(
                f"""CREATE TABLE {schema}.things (
                    id int PRIMARY KEY, name text NOT NULL, price numeric(10, 2),
                    tags text[], meta jsonb, at timestamptz, key uuid, blob bytea,
                    span interval)"""
            )
            at = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
            rows = [
                (
                    i,
                    f"thing {i}",
                    decimal.Decimal(i) / 4,
                    [f"t{i % 3}", "all"],
                    json.dumps({"i": i, "even": i % 2 == 0}),
                    at + dt.timedelta(minutes=i),
                    uuid.UUID(int=i),
                    bytes([i % 256]) * 3,
                    dt.timedelta(seconds=i),
                )
                for i in range(1000)
            ]
            columns = ["id", "name", "price", "tags", "meta", "at", "key", "blob", "span"]
            placeholders = ", ".join(f"${n}" for n in range(1, 10))
            await conn.executemany(
                f"INSERT INTO {schema}.things VALUES ({placeholders})", rows[:500]
            )
            # COPY ... FROM STDIN, in binary.
            await conn.copy_records_to_table(
                "things", schema_name=schema, records=rows[500:], columns=columns
            )
            count, total = await conn.fetchrow(f"SELECT count(*), sum(price) FROM {schema}.things")
            row = await conn.fetchrow(f"SELECT * FROM {schema}.things WHERE id = $1", 42)
            round_trip = tuple(row[c] for c in columns) == rows[42]
            stmt = await conn.prepare(f"SELECT name FROM {schema}.things WHERE id = $1")
            names = [await stmt.fetchval(i) for i in (1, 2, 3)]
            by_tag = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.things WHERE $1 = ANY(tags)", "t1"
            )
            evens = await conn.fetchval(
                f"SELECT count(*) FROM {schema}.things WHERE meta @> $1", '{"even": true}'
            )

            # A server-side cursor, read in prefetch batches inside a transaction.
            seen = 0
            checksum = 0
            async with conn.transaction():
                cursor = conn.cursor(f"SELECT id FROM {schema}.things ORDER BY id", prefetch=64)
                async for record in cursor:
                    seen += 1
                    checksum += record["id"]

            # Transactions: a failing block rolls back; a savepoint keeps the outer work.
            try:
                async with conn.transaction():
                    await conn.execute(f"DELETE FROM {schema}.things WHERE id < 100")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            async with conn.transaction():
                await conn.execute(f"UPDATE {schema}.things SET name = 'kept' WHERE id = 0")
                try:
                    async with conn.transaction():  # SAVEPOINT
                        await conn.execute(
                            f"INSERT INTO {schema}.things (id, name) VALUES (0, 'x')"
                        )
                except asyncpg.UniqueViolationError as exc:
                    violation = exc.constraint_name
            after = await conn.fetchrow(
                f"SELECT count(*) AS n, (SELECT name FROM {schema}.things WHERE id = 0) AS name "
                f"FROM {schema}.things"
            )

            # COPY ... TO STDOUT.
            out = io.BytesIO()
            await conn.copy_from_query(
                f"SELECT id, name FROM {schema}.things WHERE id < 5 ORDER BY id",
                output=out,
                format="csv",
            )
            # A large result: 200,000 rows in one fetch.
            big = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
            try:
                await conn.execute("SELEC 1")
                syntax = "accepted"
            except asyncpg.PostgresSyntaxError as exc:
                syntax = exc.sqlstate
            return {
                "count": count,
                "total": str(total),
                "round_trip": round_trip,
                "names": names,
                "by_tag": by_tag,
                "evens": evens,
                "cursor": (seen, checksum),
                "violation": violation,
                "after": dict(after),
                "copy_out": out.getvalue().decode().splitlines(),
                "big": (len(big), big[-1][0], big[-1][1]),
                "syntax": syntax,
            }
        finally:
            await conn.close()

    result = run(scenario)
    assert result["count"] == 1000
    assert result["total"] == str(sum(decimal.Decimal(i) / 4 for i in range(1000)))
    assert result["round_trip"] is True
    assert result["names"] == ["thing 1", "thing 2", "thing 3"]
    assert result["by_tag"] == 333 and result["evens"] == 500
    assert result["cursor"] == (1000, sum(range(1000)))
    assert result["violation"] == "things_pkey"
    assert result["after"] == {"n": 1000, "name": "kept"}
    assert result["copy_out"] == ["0,kept", "1,thing 1", "2,thing 2", "3,thing 3", "4,thing 4"]
    assert result["big"][:2] == (200000, 200000)
    assert result["syntax"] == "42601"


def test_pool_listen_notify_cancel(run: Any, pg_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with asyncpg.create_pool(pg_url, min_size=2, max_size=5) as pool:
            pids: set[int] = set()

            async def work(i: int) -> int:
                async with pool.acquire() as conn:
                    pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                    await conn.execute("SELECT pg_sleep(0.01)")
                    return await conn.fetchval("SELECT $1::int * 2", i)

            doubled = await asyncio.gather(*(work(i) for i in range(60)))

            # LISTEN / NOTIFY: notifications arrive as callbacks on the listening connection.
            received: asyncio.Queue[str] = asyncio.Queue()
            async with pool.acquire() as listener:

                def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                    received.put_nowait(payload)

                await listener.add_listener("it_channel", on_notify)
                async with pool.acquire() as sender:
                    for i in range(10):
                        await sender.execute("SELECT pg_notify('it_channel', $1)", f"msg{i}")
                payloads = [await asyncio.wait_for(received.get(), 5) for _ in range(10)]
                await listener.remove_listener("it_channel", on_notify)

            # A query that outlives its timeout is cancelled on the server; the connection
            # stays usable.
            async with pool.acquire() as conn:
                try:
                    await conn.execute("SELECT pg_sleep(10)", timeout=0.2)
                    cancelled = "finished"
                except TimeoutError:
                    cancelled = "timeout"
                after_cancel = await conn.fetchval("SELECT 41 + 1")
                # And through task cancellation.
                task = asyncio.create_task(conn.execute("SELECT pg_sleep(10)"))
                await asyncio.sleep(0.1)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    cancelled += "+cancelled"
                after_task_cancel = await conn.fetchval("SELECT 'still here'")
        return {
            "doubled": doubled,
            "pool_connections": len(pids) <= 5,
            "payloads": payloads,
            "cancelled": cancelled,
            "after": (after_cancel, after_task_cancel),
        }

    result = run(scenario)
    assert result["doubled"] == [2 * i for i in range(60)]
    assert result["pool_connections"] is True
    assert result["payloads"] == [f"msg{i}" for i in range(10)]
    assert result["cancelled"] == "timeout+cancelled"
    assert result["after"] == (42, "still here")


def test_unix_socket(run: Any, pg_unix_url: str) -> None:
    async def scenario() -> list[Any]:
        conn = await asyncpg.connect(pg_unix_url)
        try:
            peer = conn._transport.get_extra_info("sockname")
            rows = await conn.fetch("SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g")
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE t (v int)")
                await conn.copy_records_to_table("t", records=[(i,) for i in range(20000)])
                total = await conn.fetchval("SELECT sum(v) FROM t")
            return [isinstance(peer, str), len(rows), rows[-1][0], total]
        finally:
            await conn.close()

    assert run(scenario) == [True, 50000, 50000, sum(range(20000))]


def test_tls_connection(run: Any, pg_url: str, pg_ssl_ca: str) -> None:
    # asyncpg asks the server for TLS, then upgrades the socket with loop.start_tls().
    context = ssl.create_default_context(cafile=pg_ssl_ca)
    blob = bytes(range(256)) * 1000

    async def scenario() -> list[Any]:
        conn = await asyncpg.connect(pg_url, ssl=context)
        try:
            encrypted = await conn.fetchval(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            rows = await conn.fetch(
                "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 2000) AS g"
            )
            echoed = await conn.fetchval("SELECT $1::bytea", blob)
            return [encrypted, len(rows), sum(r["g"] for r in rows), echoed == blob]
        finally:
            await conn.close()

    assert run(scenario) == [True, 2000, sum(range(1, 2001)), True]
