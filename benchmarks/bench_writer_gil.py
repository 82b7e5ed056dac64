"""The SQLite writer thread and the event loop sharing the interpreter's lock: endpoint records rewritten in the
thread beside a busy loop (one-row statements against the store's multi-row ones), and DELAYED bodies read on the
loop beside a busy writer (a row a body against the store's one row a chunk).

Why: a node writes its store in a thread, and ``sqlite3`` lets go of the interpreter's lock (the GIL) for every
step of a statement. ``executemany`` of a one-row statement steps once a record, so the writer must take the lock
back once a record; while the event loop is busy (a release of 100,000 DELAYED conversations rewrites as many
endpoint records) each of those waits lasts until the loop lets go of the lock, at its next poll or after the
interpreter's switch interval (5 ms). A multi-row statement steps once per 100 records.

Contenders, each on a fresh database, interleaved round by round (``--rounds``):

``one-row``
    raw ``sqlite3``: one ``executemany`` of the one-row upsert the store used before, per batch;
``store``
    ``SqliteStore.write`` with a ``WriteBatch`` of the same records (multi-row upserts).

Each writes ``--records`` records ``--passes`` times (the first pass inserts, the rest rewrite, as a release does)
in batches of ``--batch``, in a thread, while the main thread is idle (``idle``) or runs Python without pause
(``busy``: the worst an event loop can be). Figures: the writing thread's CPU and the wall time, microseconds a
record; the ratio is one-row over store.

Then the other way round (``--bodies``, default 10,000): the main thread reads bodies of 128 B by id in chunks of
500, as a node reads DELAYED bodies back on its event loop (``node/pages.py``), while a thread writes endpoint
records without pause (multi-row, as the store does) or nothing; a row a body (``SELECT id, body ... IN``) against
``SqliteStore.read_bodies``. Figures: the main thread's CPU and wall time, microseconds a body.

    .venv/bin/python benchmarks/bench_writer_gil.py               # 5,000 records x 2, 10,000 bodies (~1 min)
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import median, print_table, write_results

from aiobroker.core.records import WriteBatch
from aiobroker.store import SqliteStore
from aiobroker.store.sqlite_schema import SCHEMA
from aiobroker.wire.codec import packb

ONE_ROW = "INSERT INTO endpoints VALUES (?, ?) ON CONFLICT (handle) DO UPDATE SET data = excluded.data"


def records(count: int, generation: int) -> dict[str, Any]:
    """An endpoint record's usual shape and size (~120 B packed), ``generation`` telling passes apart."""
    return {f"{i:032x}": {"state": "CONVERSING", "far_service": f"svc-{i % 1000:04d}", "seq": generation,
                          "far_broker_instance": "b" * 36, "lifetime": 86400.0} for i in range(count)}


def one_row(directory: Path) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for sql in SCHEMA:
        conn.execute(sql)

    def write(batch: dict[str, Any]) -> None:
        params = [(handle, packb(value)) for handle, value in batch.items()]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(ONE_ROW, params)
        conn.execute("COMMIT")

    return write, conn.close


def store(directory: Path) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    s = SqliteStore(directory / "data")
    s.open()
    return (lambda batch: s.write(WriteBatch(endpoints=batch))), s.close


CONTENDERS = {"one-row": one_row, "store": store}
#: the readers: a row a body (True), the store's read (False)
READERS = {"row a body": True, "store": False}


def run_one(make: Any, batches: list[dict[str, Any]], busy: bool, root: Path) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(dir=root))
    write, close = make(directory)
    stop = threading.Event()
    out: dict[str, float] = {}

    def spin() -> None:  # the busy loop: Python bytecode without a pause, as a loop releasing 100s of conversations
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    def writer() -> None:
        cpu0, t0 = time.thread_time(), time.perf_counter()
        for batch in batches:
            write(batch)
        out["cpu"], out["wall"] = time.thread_time() - cpu0, time.perf_counter() - t0

    spinner = threading.Thread(target=spin) if busy else None
    try:
        if spinner is not None:
            spinner.start()
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
    finally:
        stop.set()
        if spinner is not None:
            spinner.join()
        close()
        shutil.rmtree(directory, ignore_errors=True)
    n = sum(len(b) for b in batches)
    return {"cpu_us": out["cpu"] / n * 1e6, "wall_us": out["wall"] / n * 1e6}


def read_one(per_row: bool, writing: bool, count: int, root: Path) -> dict[str, float]:
    """Bodies read on the main thread, a row a body or through the store, beside a writing thread or none."""
    import random

    from aiobroker.core.records import message_row
    from aiobroker.store.sqlite_pages import read_bodies

    directory = Path(tempfile.mkdtemp(dir=root))
    s = SqliteStore(directory / "data")
    s.open()
    s.write(WriteBatch(messages={i: message_row(i, "tx", "h", i, "m", random.randbytes(128), 0.0, 0)
                                 for i in range(1, 4 * count + 1)}))
    ids = list(range(1, 4 * count + 1, 4))
    conn = sqlite3.connect(s.db_path, isolation_level=None, check_same_thread=False)
    stop = threading.Event()

    def writer() -> None:
        generation = 0
        while not stop.is_set():
            generation += 1
            s.write(WriteBatch(endpoints=records(1000, generation)))

    thread = threading.Thread(target=writer) if writing else None
    try:
        if thread is not None:
            thread.start()
        cpu0, t0 = time.thread_time(), time.perf_counter()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            if per_row:
                dict(conn.execute(f"SELECT id, body FROM messages WHERE id IN ({', '.join('?' * len(chunk))})",
                                  chunk).fetchall())
            else:
                read_bodies(conn, chunk)
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - t0
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        conn.close()
        s.close()
        shutil.rmtree(directory, ignore_errors=True)
    return {"cpu_us": cpu / len(ids) * 1e6, "wall_us": wall / len(ids) * 1e6}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=5_000, help="endpoint records (default 5,000)")
    p.add_argument("--passes", type=int, default=2, help="writes of every record: one insert, then rewrites")
    p.add_argument("--batch", type=int, default=1000, help="records a batch (default 1,000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each contender once a round (default 3)")
    p.add_argument("--bodies", type=int, default=10_000, help="bodies read (default 10,000; 0: no reads)")
    args = p.parse_args(argv)
    batches = []
    for generation in range(args.passes):
        recs = list(records(args.records, generation).items())
        batches += [dict(recs[i : i + args.batch]) for i in range(0, len(recs), args.batch)]
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    root = Path(tempfile.mkdtemp(prefix="aiobroker-bench-gil-"))
    try:
        for r in range(args.rounds):
            for loop in ("idle", "busy"):
                for name, make in CONTENDERS.items():
                    result = run_one(make, batches, loop == "busy", root)
                    figures.setdefault((loop, name), []).append(result)
                    print(f"  round {r + 1}/{args.rounds} {loop:4} {name:8} CPU {result['cpu_us']:7.2f} us,"
                          f" wall {result['wall_us']:8.2f} us a record", file=sys.stderr, flush=True)
            for writing in ((False, True) if args.bodies else ()):
                for name, per_row in READERS.items():
                    result = read_one(per_row, writing, args.bodies, root)
                    figures.setdefault(("writing" if writing else "idle", name), []).append(result)
                    print(f"  round {r + 1}/{args.rounds} reads, writer {'writing' if writing else 'idle':7}"
                          f" {name:10} CPU {result['cpu_us']:6.2f} us, wall {result['wall_us']:6.2f} us a body",
                          file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows, summary = [], {}
    for loop in ("idle", "busy"):
        med = {name: {k: median([f[k] for f in figures[loop, name]]) for k in ("cpu_us", "wall_us")}
               for name in CONTENDERS}
        summary[loop] = med
        for name in CONTENDERS:
            rows.append([loop, name, f"{med[name]['cpu_us']:.2f}", f"{med[name]['wall_us']:.2f}"])
        rows.append([loop, "one-row / store", f"{med['one-row']['cpu_us'] / med['store']['cpu_us']:.1f}x",
                     f"{med['one-row']['wall_us'] / med['store']['wall_us']:.1f}x"])
    print(f"endpoint records: {args.records:,} x {args.passes} passes, batches of {args.batch:,},"
          f" medians of {args.rounds} rounds")
    print_table(["main thread", "writer", "CPU us/record", "wall us/record"], rows)
    if args.bodies:
        rows = []
        for writer in ("idle", "writing"):
            med = {name: {k: median([f[k] for f in figures[writer, name]]) for k in ("cpu_us", "wall_us")}
                   for name in READERS}
            summary[f"reads, writer {writer}"] = med
            for name in READERS:
                rows.append([writer, name, f"{med[name]['cpu_us']:.2f}", f"{med[name]['wall_us']:.2f}"])
            rows.append([writer, "row a body / store", f"{med['row a body']['cpu_us'] / med['store']['cpu_us']:.1f}x",
                         f"{med['row a body']['wall_us'] / med['store']['wall_us']:.1f}x"])
        print(f"\nbodies read on the main thread: {args.bodies:,} of 128 B in chunks of 500, medians of {args.rounds}")
        print_table(["writer thread", "reader", "CPU us/body", "wall us/body"], rows)
    path = write_results("writer-gil", {"args": vars(args), "summary": summary})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
