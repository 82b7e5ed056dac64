"""psycopg 3 against asyncpg on the PostgreSQL store's batch shape: which driver the store is built on, and why.

A batch is one transaction: check the owner's epoch (the fence), delete the rows consumers committed, insert the
rows producers sent. The node's writer calls the store from a thread (the store interface blocks), so the question
is what a batch costs end to end from that thread, round trips included:

* ``psycopg-pipeline``: psycopg 3's sync API in pipeline mode: the fence, one ``DELETE ... = ANY(array)``, one
  ``INSERT ... SELECT FROM unnest(arrays)`` and the COMMIT sent together, one round trip.
* ``psycopg-copy``: the same, the inserts by binary ``COPY`` (which cannot run in a pipeline: two round trips).
* ``asyncpg``: asyncpg on its own event loop in the calling thread, each statement awaited in turn (asyncpg has no
  pipeline across statements): fence, delete, insert by unnest, commit.
* ``asyncpg-copy``: the inserts by ``copy_records_to_table``.

Run: ``python benchmarks/bench_pg_drivers.py`` (starts its own PostgreSQL through tests/postgres.py; needs the
``postgresql`` extra and Debian's postgresql package). Prints µs per message for batches of 1, 10 and 100 rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
from postgres import PostgresServer  # noqa: E402

SCHEMA = """
CREATE TABLE owner (id int PRIMARY KEY, epoch bigint);
INSERT INTO owner VALUES (1, 1);
CREATE TABLE messages (id bigint PRIMARY KEY, location text, handle text, seq bigint, message_type text,
    body bytea, enqueued_at double precision, state int, trace text);
"""
FENCE = "SELECT epoch FROM owner WHERE id = 1 AND epoch = %s FOR SHARE"
DELETE = "DELETE FROM messages WHERE id = ANY(%s::bigint[])"
INSERT = (
    "INSERT INTO messages SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::text[],"
    " %s::bytea[], %s::float8[], %s::int[], %s::text[])"
)
COLUMNS = ["id", "location", "handle", "seq", "message_type", "body", "enqueued_at", "state", "trace"]


def rows_for(start: int, n: int, size: int) -> list[tuple]:  # type: ignore[type-arg]
    body = b"x" * size
    return [(i, "q:work", "h-1", i, "t", body, time.time(), 0, None) for i in range(start, start + n)]


def columns(rows: list[tuple]) -> list[list]:  # type: ignore[type-arg]
    return [list(c) for c in zip(*rows, strict=True)]


def bench_psycopg(dsn: str, batch: int, batches: int, size: int, copy: bool, binary: bool = False) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE messages")
        nid = 1
        previous: list[int] = []
        started = time.perf_counter()
        for _ in range(batches):
            rows = rows_for(nid, batch, size)
            nid += batch
            if copy:
                with conn.transaction():
                    cur = conn.cursor()
                    cur.execute(FENCE, (1,))
                    if previous:
                        cur.execute(DELETE, (previous,))
                    with cur.copy(f"COPY messages ({', '.join(COLUMNS)}) FROM STDIN") as cp:
                        for row in rows:
                            cp.write_row(row)
            else:
                with conn.pipeline(), conn.transaction():
                    cur = conn.cursor()
                    cur.execute(FENCE, (1,))
                    if previous:
                        cur.execute(DELETE, (previous,))
                    cur.execute(INSERT, columns(rows), binary=binary)
            previous = [r[0] for r in rows]
        return (time.perf_counter() - started) / (batch * batches) * 1e6


def bench_asyncpg(dsn: str, batch: int, batches: int, size: int, copy: bool) -> float:
    async def run() -> float:
        conn = await asyncpg.connect(dsn.split("?")[0])
        try:
            await conn.execute("TRUNCATE messages")
            fence = FENCE.replace("%s", "$1")
            delete = DELETE.replace("%s", "$1")
            insert = INSERT
            for i in range(1, 10):
                insert = insert.replace("%s", f"${i}", 1)
            nid = 1
            previous: list[int] = []
            started = time.perf_counter()
            for _ in range(batches):
                rows = rows_for(nid, batch, size)
                nid += batch
                async with conn.transaction():
                    await conn.fetchval(fence, 1)
                    if previous:
                        await conn.execute(delete, previous)
                    if copy:
                        await conn.copy_records_to_table("messages", records=rows, columns=COLUMNS)
                    else:
                        await conn.execute(insert, *columns(rows))
                previous = [r[0] for r in rows]
            return (time.perf_counter() - started) / (batch * batches) * 1e6
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()  # the writer thread's own loop, as a store built on asyncpg would need
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000, help="rows per measurement")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root / "pg").init()
    server.start("fsync=on", "full_page_writes=on", "synchronous_commit=on")
    try:
        dsn = server.new_database()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)
        drivers: dict[str, Callable[[int, int], float]] = {
            "psycopg-pipeline": lambda b, n: bench_psycopg(dsn, b, n, args.size, copy=False),
            "psycopg-binary": lambda b, n: bench_psycopg(dsn, b, n, args.size, copy=False, binary=True),
            "psycopg-copy": lambda b, n: bench_psycopg(dsn, b, n, args.size, copy=True),
            "asyncpg": lambda b, n: bench_asyncpg(dsn, b, n, args.size, copy=False),
            "asyncpg-copy": lambda b, n: bench_asyncpg(dsn, b, n, args.size, copy=True),
        }
        print(f"µs per message, {args.size} B rows, insert + delete + fence per batch, median of {args.rounds}"
              f" interleaved rounds (synchronous_commit=on, fsync=on)")
        print(f"{'batch':>6} " + " ".join(f"{name:>17}" for name in drivers))
        for batch in (1, 10, 100, 1000):
            n = max(20, args.messages // batch // (10 if batch == 1 else 1))
            results: dict[str, list[float]] = {name: [] for name in drivers}
            for _ in range(args.rounds):
                for name, fn in drivers.items():
                    results[name].append(fn(batch, n))
            print(f"{batch:>6} " + " ".join(f"{statistics.median(results[name]):>17.2f}" for name in drivers),
                  flush=True)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
