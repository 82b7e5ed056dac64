"""The SQLite store's write path against raw ``sqlite3`` doing the same rows: microseconds per message row.

A steady stream, shaped as a node's: every batch inserts ``--rows`` new message rows (``--size`` bytes of body,
the columns a node stores) and deletes the rows the batch before inserted (received and committed meanwhile), so
every row is inserted once and deleted once, and the figure is per row for both. ``--scatter`` deletes every
other id instead (half from the batch before, half from the one before that), so no two deleted ids are adjacent.

Contenders, each on a fresh database in a temporary directory, interleaved round by round (``--rounds``, the
order rotating), medians reported:

``store``
    ``SqliteStore.write`` with a prebuilt ``WriteBatch`` (building the batch is the core's work, not the store's).
``raw-executemany``
    one ``executemany`` of a single-row INSERT, one of a single-row DELETE: the plain way.
``raw-multi-N``
    the deletes first, as one ``DELETE ... WHERE id BETWEEN ? AND ?`` (``IN (...)`` of 100 ids when scattered),
    then multi-row ``INSERT ... VALUES (...),(...)`` of N rows a statement (``--chunks``): the raw code knows the
    stream's shape, so it does the least it can.

The raw floor is the fastest raw contender; the ratio is the store's figure over it. All use the same tables and
pragmas as the store (WAL, synchronous NORMAL, secure_delete FAST, 8 MiB cache) and one transaction a batch, and
all checkpoint alike: the store in its checkpointer thread, as in a node, and the raw contenders in one of the
same (``aiobroker/store/checkpointer.py``), nudged by the same rule (the log grew past 16 MiB). The primary
figure is the writing thread's CPU time (steadier than wall time on a shared machine; checkpoints are not in it);
wall time is printed beside it.

    .venv/bin/python benchmarks/bench_store.py                   # 1,000 rows of 128 B a batch, 5 rounds (~30 s)
    .venv/bin/python benchmarks/bench_store.py --scatter --rounds 3
    .venv/bin/python benchmarks/bench_store.py --rows 64 --batches 1000   # small batches, as at 5,000 msg/s
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import median, print_table, write_results

from aiobroker.core.records import MessageRow, WriteBatch
from aiobroker.store import SqliteStore
from aiobroker.store.checkpointer import Checkpointer
from aiobroker.store.sqlite_schema import SCHEMA

#: the WAL size past which a raw contender nudges its checkpointer (as the store does: sqlite.py)
RAW_CHECKPOINT_BYTES = 16 * 1024 * 1024
COLUMNS = "(id, location, handle, seq, message_type, body, enqueued_at, state)"

#: one batch of the stream: the rows to insert, the ids to delete (in commit order)
Batch = tuple[list[MessageRow], list[int]]


def stream(rows_per_batch: int, batches: int, size: int, scatter: bool) -> list[Batch]:
    """The whole stream, built before anything is timed."""
    body = os.urandom(size)
    handle = "5f0c7a52-8d3e-4b7a-9a3e-1f2b3c4d5e6f"
    now = time.time()
    out: list[Batch] = []
    for k in range(batches):
        first = k * rows_per_batch + 1
        rows: list[MessageRow] = [
            (i, "q:bench_in", handle, i, "DEFAULT", body, now, 0) for i in range(first, first + rows_per_batch)
        ]
        if not scatter:
            deletes = list(range(first - rows_per_batch, first)) if k >= 1 else []
        else:  # the odd ids of the batch before, the even ids of the one before that: no two adjacent
            before = range(first - rows_per_batch, first) if k >= 1 else range(0)
            older = range(first - 2 * rows_per_batch, first - rows_per_batch) if k >= 2 else range(0)
            deletes = sorted([i for i in before if i % 2] + [i for i in older if not i % 2])
        out.append((rows, deletes))
    return out


# --- the contenders --------------------------------------------------------------------------------------------


class StoreContender:
    def __init__(self, directory: Path) -> None:
        self.store = SqliteStore(directory)
        self.store.open()

    def prepare(self, batch: Batch) -> Any:
        rows, deletes = batch
        messages: dict[int, MessageRow | None] = {row[0]: row for row in rows}
        messages.update(dict.fromkeys(deletes))
        return WriteBatch(messages=messages)

    def write(self, prepared: Any) -> None:
        self.store.write(prepared)

    def after(self) -> None:
        pass

    def close(self) -> None:
        self.store.close()


class RawContender:
    """Raw ``sqlite3``: the store's tables and pragmas, one transaction a batch, no store around it."""

    def __init__(self, directory: Path, chunk: int | None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "raw.sqlite3"
        self.conn = conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        for pragma in ("synchronous = NORMAL", "secure_delete = FAST", "cache_size = -8192", "wal_autocheckpoint = 0"):
            conn.execute(f"PRAGMA {pragma}")
        for sql in SCHEMA:
            conn.execute(sql)
        self.checkpointer = Checkpointer(self.path)
        self.checkpointer.start()
        self.nudged = 0
        self.chunk = chunk
        self.one = f"INSERT OR REPLACE INTO messages {COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        if chunk:
            self.many = f"INSERT OR REPLACE INTO messages {COLUMNS} VALUES " + ", ".join(
                ["(?, ?, ?, ?, ?, ?, ?, ?)"] * chunk
            )
            self.in100 = f"DELETE FROM messages WHERE id IN ({', '.join('?' * 100)})"

    def prepare(self, batch: Batch) -> Any:
        return batch

    def write(self, prepared: Any) -> None:
        rows, deletes = prepared
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        if self.chunk is None:
            conn.executemany(self.one, rows)
            conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in deletes])
        else:
            if deletes and deletes[-1] - deletes[0] == len(deletes) - 1:  # sorted, unique: one run
                conn.execute("DELETE FROM messages WHERE id BETWEEN ? AND ?", (deletes[0], deletes[-1]))
            elif deletes:
                n = len(deletes) - len(deletes) % 100
                conn.executemany(self.in100, [deletes[i : i + 100] for i in range(0, n, 100)])
                conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in deletes[n:]])
            # after the deletes, so the inserts reuse the pages they free (measured faster than the other order)
            chunk = self.chunk
            full = len(rows) - len(rows) % chunk
            flat = list(itertools.chain.from_iterable(rows))
            width = 8 * chunk
            conn.executemany(self.many, [flat[i : i + width] for i in range(0, 8 * full, width)])
            if full != len(rows):
                conn.executemany(self.one, rows[full:])
        conn.execute("COMMIT")

    def after(self) -> None:
        """Nudge the checkpointer as the store does (``SqliteStore.write``), untimed."""
        try:
            wal = os.path.getsize(str(self.path) + "-wal")
        except OSError:
            return
        self.nudged = min(self.nudged, wal)
        if wal > RAW_CHECKPOINT_BYTES and wal > self.nudged:
            self.nudged = wal
            self.checkpointer.nudge()

    def close(self) -> None:
        self.checkpointer.stop()
        self.conn.close()


def run_one(name: str, make: Callable[[Path], Any], batches: list[Batch], warmup: int, root: Path) -> dict[str, float]:
    """One contender over the whole stream on a fresh database: per row, CPU and wall time of the timed batches."""
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    contender = make(directory)
    try:
        prepared = [contender.prepare(b) for b in batches]
        cpu = wall = 0.0
        rows = 0
        for k, p in enumerate(prepared):
            c0, w0 = time.thread_time(), time.perf_counter()
            contender.write(p)
            c1, w1 = time.thread_time(), time.perf_counter()
            if k >= warmup:
                cpu += c1 - c0
                wall += w1 - w0
                rows += len(batches[k][0])
            contender.after()
    finally:
        contender.close()
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu_us_per_row": cpu / rows * 1e6, "wall_us_per_row": wall / rows * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--rows", type=int, default=1000, help="rows inserted per batch (default 1,000)")
    p.add_argument("--size", type=int, default=128, help="body bytes per row (default 128)")
    p.add_argument("--batches", type=int, default=100, help="timed batches per run (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batches at the start of each run (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each running every contender once (default 5)")
    p.add_argument("--chunks", default="100,500", help="raw-multi contenders' rows per INSERT (default 100,500)")
    p.add_argument("--scatter", action="store_true", help="delete every other id: no contiguous runs")
    p.add_argument("--only", help="comma list of contenders to run (default: all)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="stop after the round that passes this")
    args = p.parse_args(argv)
    if min(args.rows, args.size, args.batches, args.rounds) < 1 or args.warmup < 0:
        p.error("--rows, --size, --batches and --rounds must be positive, --warmup not negative")
    if args.rows * (args.batches + args.warmup) > 5_000_000:
        p.error("at most 5,000,000 rows a run: lower --rows or --batches")

    contenders: dict[str, Callable[[Path], Any]] = {
        "store": StoreContender,
        "raw-executemany": lambda d: RawContender(d, None),
    }
    for n in (int(c) for c in args.chunks.split(",") if c.strip()):
        if not 1 <= n <= 32766 // 8:
            p.error(f"--chunks: {n} rows of 8 columns exceed SQLite's default 32,766 variables")
        contenders[f"raw-multi-{n}"] = lambda d, n=n: RawContender(d, n)
    if args.only:
        wanted = [c.strip() for c in args.only.split(",")]
        unknown = [c for c in wanted if c not in contenders]
        if unknown:
            p.error(f"unknown contender {unknown[0]!r}; choose from {', '.join(contenders)}")
        contenders = {c: contenders[c] for c in wanted}

    print(
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}; {args.rows:,} rows of {args.size} B a"
        f" batch, {args.batches} timed (+{args.warmup} warm-up) batches a run, deletes"
        f" {'scattered' if args.scatter else 'contiguous'}",
        flush=True,
    )
    batches = stream(args.rows, args.batches + args.warmup, args.size, args.scatter)
    names = list(contenders)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                result = run_one(name, contenders[name], batches, args.warmup, Path(tmp))
                runs[name].append(result)
                print(
                    f"    .. round {r + 1}/{args.rounds} {name}: {result['cpu_us_per_row']:.3f} us/row CPU,"
                    f" {result['wall_us_per_row']:.3f} wall",
                    file=sys.stderr,
                    flush=True,
                )
            if time.monotonic() - start > args.max_seconds and r + 1 < args.rounds:
                print(f"stopping after {r + 1} rounds: --max-seconds {args.max_seconds:g} passed", flush=True)
                break

    cpu = {n: median([x["cpu_us_per_row"] for x in runs[n]]) for n in names}
    wall = {n: median([x["wall_us_per_row"] for x in runs[n]]) for n in names}
    raw = [n for n in names if n.startswith("raw")]
    floor = min(raw, key=lambda n: cpu[n]) if raw else None
    table = []
    for n in names:
        ratio = f"{cpu[n] / cpu[floor]:.2f}x" if floor else "-"
        table.append([n, f"{cpu[n]:.3f}", f"{wall[n]:.3f}", ratio, "floor" if n == floor else ""])
    print()
    print_table(["contender", "cpu us/row (insert+delete)", "wall us/row", "/ raw floor (cpu)", ""], table)
    path = write_results(
        "store",
        {
            "settings": vars(args),
            "sqlite": sqlite3.sqlite_version,
            "runs": runs,
            "median_cpu_us_per_row": cpu,
            "median_wall_us_per_row": wall,
            "floor": floor,
        },
    )
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
