"""An ETL job: PostgreSQL -> CPU-heavy transform in worker processes -> Redis and PostgreSQL.

* Extract: rows of a source table, read in batches through a server-side cursor (asyncpg) in
  one REPEATABLE READ transaction (a consistent snapshot).
* Transform: each batch goes to a ProcessPoolExecutor through ``loop.run_in_executor``; the
  transform is pure-Python CPU work (tokenizing, a rolling hash over every character), so it
  runs in other processes while the loop keeps extracting and loading.
* Load: in bulk into Redis (one pipeline per batch: a hash per row plus a set of ids) and back
  into PostgreSQL (COPY into a staging table, then one INSERT ... ON CONFLICT DO UPDATE).
  Both are idempotent upserts: running the job twice loads nothing twice.
* A plain-text progress bar on stderr, and a final check that PostgreSQL and Redis hold
  exactly one copy of every source row, with the same content.

The stages are tasks connected by bounded queues, so at most a few batches are in memory.

Connection URLs: --pg-url / --redis-url, else FERROLOOP_PG_URL / FERROLOOP_REDIS_URL from the
environment or from the env file scripts/services.sh writes (start the servers with
``scripts/services.sh install && scripts/services.sh start``).

Run:  python examples/apps/etl.py                  (asyncio's loop)
      python -m ferroloop examples/apps/etl.py     (ferroloop)
      python -m ferroloop examples/apps/etl.py --rows 20000 --batch 1000 --workers 2 --reset

stdout is the same on every loop; on a second run only the "new rows" numbers change (to 0).

Needs asyncpg and redis (pip install -r scripts/requirements-integration.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

# Where scripts/services.sh writes the servers' URLs.
DEFAULT_ENV_FILE = os.path.join(
    os.environ.get("FERROLOOP_SERVICES_DIR", "/tmp/ferroloop-services"), "services.env"
)


# ----------------------------------------------------------------------------- transform
# Runs in worker processes: top-level functions, plain data in and out.


def transform_row(row: tuple[int, str, str]) -> tuple[int, str, int, int, str]:
    """(id, name, text) -> (id, NAME, word count, rolling hash, digest). Pure-Python CPU work."""
    row_id, name, text = row
    words = text.split()
    rolling = 0
    for _ in range(10):  # several passes, to make the work CPU-heavy (~1 ms a row)
        for ch in text:
            rolling = (rolling * 31 + ord(ch)) % 1_000_000_007
    normalized = " ".join(sorted(set(words)))
    digest = hashlib.sha256(f"{row_id}|{name}|{normalized}|{rolling}".encode()).hexdigest()
    return row_id, name.upper(), len(words), rolling, digest


def transform_batch(rows: list[tuple[int, str, str]]) -> list[tuple[int, str, int, int, str]]:
    return [transform_row(row) for row in rows]


# ----------------------------------------------------------------------------- plumbing


def service_urls(args: argparse.Namespace) -> tuple[str, str]:
    found = {}
    env_file = Path(os.environ.get("FERROLOOP_SERVICES_ENV", DEFAULT_ENV_FILE))
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                found[key.strip()] = value.strip()
    found.update({k: v for k, v in os.environ.items() if k.startswith("FERROLOOP_") and v})
    pg = args.pg_url or found.get("FERROLOOP_PG_URL")
    rd = args.redis_url or found.get("FERROLOOP_REDIS_URL")
    if not pg or not rd:
        sys.exit(
            "no PostgreSQL / Redis URL: pass --pg-url and --redis-url, or run "
            "scripts/services.sh install && scripts/services.sh start"
        )
    return pg, rd


class Progress:
    """A plain-text progress bar on stderr (one line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.done = total, width, 0
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.start = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] "
            f"{self.done}/{self.total} rows {fraction:4.0%} {rate:,.0f} rows/s"
        )
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
            if self.done >= self.total:
                print(file=sys.stderr)
        elif int(fraction * 10) > self.last_decile:
            self.last_decile = int(fraction * 10)
            print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the job


async def prepare(pg: asyncpg.Connection, ns: str, rows: int, reset: bool) -> None:
    if reset:
        await pg.execute(f"DROP TABLE IF EXISTS {ns}_source, {ns}_target")
    await pg.execute(
        f"""CREATE TABLE IF NOT EXISTS {ns}_source (
                id integer PRIMARY KEY, name text NOT NULL, body text NOT NULL);
            CREATE TABLE IF NOT EXISTS {ns}_target (
                id integer PRIMARY KEY, name text NOT NULL, words integer NOT NULL,
                rolling bigint NOT NULL, digest text NOT NULL,
                loaded_at timestamptz NOT NULL DEFAULT now())"""
    )
    # Deterministic source data, made by the server itself.
    await pg.execute(
        f"""INSERT INTO {ns}_source
            SELECT g, 'customer ' || g,
                   (SELECT string_agg(md5((g * k)::text), ' ') FROM generate_series(1, 12) k)
            FROM generate_series(1, $1) g
            ON CONFLICT (id) DO NOTHING""",
        rows,
    )


async def extract(pg: asyncpg.Connection, ns: str, batch: int, out: asyncio.Queue) -> int:
    count = 0
    async with pg.transaction(isolation="repeatable_read", readonly=True):
        cursor = await pg.cursor(f"SELECT id, name, body FROM {ns}_source ORDER BY id")
        while rows := await cursor.fetch(batch):
            await out.put([tuple(r) for r in rows])
            count += len(rows)
    return count


async def transform(pool: ProcessPoolExecutor, inp: asyncio.Queue, out: asyncio.Queue) -> None:
    loop = asyncio.get_running_loop()
    while (rows := await inp.get()) is not None:
        await out.put(await loop.run_in_executor(pool, transform_batch, rows))


async def load(
    pg: asyncpg.Connection,
    rd: aioredis.Redis,
    ns: str,
    inp: asyncio.Queue,
    progress: Progress,
) -> dict[str, int]:
    stats = {"pg_new": 0, "pg_updated": 0, "redis_new": 0}
    await pg.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {ns}_staging (LIKE {ns}_target INCLUDING DEFAULTS)"
    )
    while (rows := await inp.get()) is not None:
        # Redis: one round trip per batch.
        async with rd.pipeline(transaction=False) as pipe:
            for row_id, name, words, rolling, digest in rows:
                pipe.hset(
                    f"{ns}:row:{row_id}",
                    mapping={"name": name, "words": words, "rolling": rolling, "digest": digest},
                )
            pipe.sadd(f"{ns}:ids", *[row[0] for row in rows])
            replies = await pipe.execute()
        stats["redis_new"] += replies[-1]
        # PostgreSQL: COPY into staging, then one upsert; xmax = 0 marks freshly inserted rows.
        async with pg.transaction():
            await pg.execute(f"TRUNCATE {ns}_staging")
            await pg.copy_records_to_table(
                f"{ns}_staging",
                records=rows,
                columns=["id", "name", "words", "rolling", "digest"],
            )
            inserted = await pg.fetch(
                f"""INSERT INTO {ns}_target (id, name, words, rolling, digest)
                    SELECT id, name, words, rolling, digest FROM {ns}_staging
                    ON CONFLICT (id) DO UPDATE SET
                        name = EXCLUDED.name, words = EXCLUDED.words,
                        rolling = EXCLUDED.rolling, digest = EXCLUDED.digest, loaded_at = now()
                    RETURNING (xmax = 0) AS new"""
            )
        new = sum(1 for r in inserted if r["new"])
        stats["pg_new"] += new
        stats["pg_updated"] += len(inserted) - new
        progress.advance(len(rows))
    return stats


async def check(pg: asyncpg.Connection, rd: aioredis.Redis, ns: str) -> dict[str, object]:
    source = await pg.fetchval(f"SELECT count(*) FROM {ns}_source")
    target = await pg.fetchval(f"SELECT count(*) FROM {ns}_target")
    missing = await pg.fetchval(
        f"SELECT count(*) FROM {ns}_source s LEFT JOIN {ns}_target t USING (id) WHERE t.id IS NULL"
    )
    pg_digest = await pg.fetchval(
        f"SELECT md5(string_agg(id || ':' || digest, ',' ORDER BY id)) FROM {ns}_target"
    )
    ids = sorted(int(i) for i in await rd.smembers(f"{ns}:ids"))
    async with rd.pipeline(transaction=False) as pipe:
        for row_id in ids:
            pipe.hget(f"{ns}:row:{row_id}", "digest")
        digests = await pipe.execute()
    redis_digest = hashlib.md5(
        ",".join(f"{i}:{d}" for i, d in zip(ids, digests, strict=True)).encode()
    ).hexdigest()
    return {
        "source": source,
        "target": target,
        "missing": missing,
        "redis": len(ids),
        "same_content": pg_digest == redis_digest,
        "checksum": pg_digest[:16],
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2, help="transform processes")
    parser.add_argument("--namespace", default="etl_demo", help="table and key prefix")
    parser.add_argument("--reset", action="store_true", help="drop the tables and keys first")
    parser.add_argument("--pg-url")
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    if not args.namespace.isidentifier():
        parser.error("--namespace must be an identifier")
    pg_url, redis_url = service_urls(args)
    if os.environ.get("FERROLOOP_EXAMPLE_CHECK"):
        print(f"loop: {type(asyncio.get_running_loop()).__module__}", file=sys.stderr)

    ns = args.namespace
    start = time.perf_counter()
    extract_conn = await asyncpg.connect(pg_url)
    load_conn = await asyncpg.connect(pg_url)
    rd = aioredis.from_url(redis_url, decode_responses=True)
    try:
        if args.reset:
            keys = [k async for k in rd.scan_iter(match=f"{ns}:*", count=1000)]
            for i in range(0, len(keys), 1000):
                await rd.delete(*keys[i : i + 1000])
        await prepare(extract_conn, ns, args.rows, args.reset)
        total = await extract_conn.fetchval(f"SELECT count(*) FROM {ns}_source")
        progress = Progress(total)
        raw: asyncio.Queue = asyncio.Queue(maxsize=args.workers * 2)
        transformed: asyncio.Queue = asyncio.Queue(maxsize=args.workers * 2)

        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            loader = asyncio.create_task(load(load_conn, rd, ns, transformed, progress))
            transformers = [
                asyncio.create_task(transform(pool, raw, transformed)) for _ in range(args.workers)
            ]
            extracted = await extract(extract_conn, ns, args.batch, raw)
            for _ in transformers:
                await raw.put(None)
            await asyncio.gather(*transformers)
            await transformed.put(None)
            stats = await loader
        result = await check(extract_conn, rd, ns)
    finally:
        await extract_conn.close()
        await load_conn.close()
        await rd.aclose()
    elapsed = time.perf_counter() - start

    print(f"extracted {extracted} rows from postgres in batches of {args.batch}")
    print(f"transformed in {args.workers} worker processes")
    print(f"postgres: {stats['pg_new']} new rows, {stats['pg_updated']} updated")
    print(f"redis: {stats['redis_new']} new ids")
    ok = (
        result["source"] == result["target"] == result["redis"] == extracted
        and result["missing"] == 0
        and result["same_content"]
    )
    print(
        f"check: source {result['source']}, postgres {result['target']}, redis {result['redis']}, "
        f"missing {result['missing']}, same content in both: {result['same_content']} "
        f"-> {'OK' if ok else 'MISMATCH'}"
    )
    print(f"checksum: {result['checksum']}")
    print(
        f"{extracted} rows in {elapsed:.2f} s ({extracted / elapsed:,.0f} rows/s)", file=sys.stderr
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
