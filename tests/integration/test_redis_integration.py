"""redis-py's asyncio client against a real Redis server (``scripts/services.sh start``).

Commands and data types, pipelines (transactional and not), optimistic locking with WATCH,
pub/sub (channels and patterns), blocking pops with timeouts, Lua scripts, SCAN iteration, a
bounded connection pool shared by concurrent tasks. Keys are prefixed per loop and removed
before and after each test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _support import import_or_skip

redis_asyncio = import_or_skip("redis.asyncio")


async def clear(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
    if keys:
        await client.delete(*keys)


def test_commands_pipelines_scripts(run: Any, redis_url: str, loop_name: str) -> None:
    prefix = f"it:{loop_name}:cmd:"

    async def scenario() -> dict[str, Any]:
        client = redis_asyncio.from_url(redis_url, decode_responses=True)
        try:
            await clear(client, prefix)
            assert await client.ping() is True
            await client.set(f"{prefix}greeting", "hello", ex=60)
            await client.incrby(f"{prefix}counter", 5)
            await client.hset(f"{prefix}hash", mapping={"a": "1", "b": "2"})
            await client.rpush(f"{prefix}list", *[str(i) for i in range(10)])
            await client.zadd(f"{prefix}zset", {"x": 3, "y": 1, "z": 2})
            basics = {
                "greeting": await client.get(f"{prefix}greeting"),
                "ttl_set": 0 < await client.ttl(f"{prefix}greeting") <= 60,
                "counter": await client.get(f"{prefix}counter"),
                "hash": await client.hgetall(f"{prefix}hash"),
                "list": await client.lrange(f"{prefix}list", 2, 4),
                "zset": await client.zrange(f"{prefix}zset", 0, -1, withscores=True),
            }

            # A non-transactional pipeline of 2,000 commands in one round trip.
            async with client.pipeline(transaction=False) as pipe:
                for i in range(1000):
                    pipe.set(f"{prefix}k{i}", i)
                    pipe.incr(f"{prefix}sum", i)
                replies = await pipe.execute()
            # MULTI/EXEC.
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(f"{prefix}tx").incr(f"{prefix}tx").get(f"{prefix}tx")
                transaction = await pipe.execute()

            # WATCH: a concurrent change makes the transaction retry.
            attempts = 0

            async def add_one() -> None:
                nonlocal attempts
                async with client.pipeline(transaction=True) as pipe:
                    while True:
                        attempts += 1
                        try:
                            await pipe.watch(f"{prefix}watched")
                            value = int(await pipe.get(f"{prefix}watched") or 0)
                            if attempts == 1:  # someone else writes between GET and EXEC
                                await client.set(f"{prefix}watched", 100)
                            pipe.multi()
                            pipe.set(f"{prefix}watched", value + 1)
                            await pipe.execute()
                            return
                        except redis_asyncio.WatchError:
                            continue

            await add_one()
            watched = await client.get(f"{prefix}watched")

            script = client.register_script(
                "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) return v * 2"
            )
            scripted = [await script(keys=[f"{prefix}lua"], args=[3]) for _ in range(3)]

            scanned = sorted([k async for k in client.scan_iter(match=f"{prefix}k1*", count=100)])
            values = await client.mget([f"{prefix}k{i}" for i in (0, 500, 999)])
            return {
                **basics,
                "pipeline": (len(replies), replies[:4], await client.get(f"{prefix}sum")),
                "transaction": transaction,
                "watch": (watched, attempts),
                "scripted": scripted,
                "scanned": len(scanned),
                "values": values,
            }
        finally:
            await clear(client, prefix)
            await client.aclose()

    result = run(scenario)
    assert result["greeting"] == "hello" and result["ttl_set"] is True
    assert result["hash"] == {"a": "1", "b": "2"}
    assert [tuple(pair) for pair in result["zset"]] == [("y", 1.0), ("z", 2.0), ("x", 3.0)]
    assert result["pipeline"] == (2000, [True, 0, True, 1], str(sum(range(1000))))
    assert result["transaction"] == [1, 2, "2"]
    assert result["watch"] == ("101", 2)
    assert result["scripted"] == [6, 12, 18]
    assert result["scanned"] == 111  # k1, k10-k19, k100-k199
    assert result["values"] == ["0", "500", "999"]


def test_pubsub(run: Any, redis_url: str, loop_name: str) -> None:
    channel = f"it:{loop_name}:news"

    async def scenario() -> dict[str, Any]:
        publisher = redis_asyncio.from_url(redis_url, decode_responses=True)
        subscriber = redis_asyncio.from_url(redis_url, decode_responses=True)
        try:
            pubsub = subscriber.pubsub()
            await pubsub.subscribe(channel)
            await pubsub.psubscribe(f"it:{loop_name}:pattern:*")
            # Wait for both subscription confirmations.
            confirmations = []
            while len(confirmations) < 2:
                msg = await pubsub.get_message(timeout=5)
                if msg is not None:
                    confirmations.append(msg["type"])

            received: list[tuple[str, str, str]] = []

            async def listen() -> None:
                async for msg in pubsub.listen():
                    if msg["type"] in ("message", "pmessage"):
                        received.append((msg["type"], msg["channel"], msg["data"]))
                        if msg["data"] == "stop":
                            return

            listener = asyncio.create_task(listen())
            counts = []
            for i in range(20):
                counts.append(await publisher.publish(channel, f"item {i}"))
            for i in range(5):
                await publisher.publish(f"it:{loop_name}:pattern:{i}", f"p{i}")
            await publisher.publish(channel, "stop")
            await asyncio.wait_for(listener, 10)

            # A blocking pop that times out, then one that a concurrent push wakes up.
            queue = f"it:{loop_name}:queue"
            await publisher.delete(queue)
            empty = await subscriber.blpop([queue], timeout=0.2)
            waiter = asyncio.create_task(subscriber.blpop([queue], timeout=5))
            await asyncio.sleep(0.05)
            await publisher.rpush(queue, "job")
            woken = await waiter
            await pubsub.unsubscribe()
            await pubsub.punsubscribe()
            await pubsub.aclose()
        finally:
            await publisher.aclose()
            await subscriber.aclose()
        prefix = f"it:{loop_name}:"
        return {
            "confirmations": sorted(confirmations),
            "subscribers": set(counts),
            "received": [(t, c.removeprefix(prefix), d) for t, c, d in received],
            "blpop": (empty, [woken[0].removeprefix(prefix), woken[1]]),
        }

    result = run(scenario)
    assert result["confirmations"] == ["psubscribe", "subscribe"]
    assert result["subscribers"] == {1}
    assert result["received"] == [
        *[("message", "news", f"item {i}") for i in range(20)],
        *[("pmessage", f"pattern:{i}", f"p{i}") for i in range(5)],
        ("message", "news", "stop"),
    ]
    assert result["blpop"] == (None, ["queue", "job"])


def test_connection_pool(run: Any, redis_url: str, loop_name: str) -> None:
    prefix = f"it:{loop_name}:pool:"

    async def scenario() -> dict[str, Any]:
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=4, timeout=10, decode_responses=True
        )
        client = redis_asyncio.Redis(connection_pool=pool)
        try:
            await clear(client, prefix)

            async def worker(i: int) -> int:
                for j in range(20):
                    await client.hincrby(f"{prefix}h", f"w{i}", j)
                return int(await client.hget(f"{prefix}h", f"w{i}"))

            totals = await asyncio.gather(*(worker(i) for i in range(40)))
            created = len(pool._connections) if hasattr(pool, "_connections") else 4
            big = "x" * 5_000_000
            await client.set(f"{prefix}big", big)
            big_back = await client.get(f"{prefix}big")
            return {
                "totals": totals,
                "at_most_4": created <= 4,
                "big": len(big_back) == len(big),
            }
        finally:
            await clear(client, prefix)
            await client.aclose()
            await pool.aclose()

    result = run(scenario)
    assert result == {"totals": [190] * 40, "at_most_4": True, "big": True}


def test_unix_socket(run: Any, redis_unix_url: str, loop_name: str) -> None:
    prefix = f"it:{loop_name}:unix:"

    async def scenario() -> list[Any]:
        client = redis_asyncio.from_url(redis_unix_url, decode_responses=True)
        try:
            await clear(client, prefix)
            async with client.pipeline(transaction=True) as pipe:
                for i in range(500):
                    pipe.rpush(f"{prefix}list", i)
                pushed = await pipe.execute()
            await client.set(f"{prefix}big", "y" * 3_000_000)
            big = await client.get(f"{prefix}big")
            pubsub = client.pubsub()
            await pubsub.subscribe(f"{prefix}chan")
            await pubsub.get_message(timeout=5)  # the subscription confirmation
            await client.publish(f"{prefix}chan", "over the unix socket")
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            await pubsub.aclose()
            return [pushed[-1], len(big), message["data"]]
        finally:
            await clear(client, prefix)
            await client.aclose()

    assert run(scenario) == [500, 3_000_000, "over the unix socket"]
