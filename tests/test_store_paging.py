"""The paging part of the store contract (``Store.pages``): a start that reads each queue's first rows only and
counts the rest, and pages read back while batches are written. Against each store that pages, in a fresh place
(a data directory, or a fresh database on the session's real PostgreSQL: tests/postgres.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aiobroker.core.records import ERROR, ROW_ID, InStore, MessageRow, WriteBatch, message_row
from aiobroker.store import SqliteStore, Store


def row(id: int, location: str, *, state: int = 0, body: bytes = b"0123456789", trace: str | None = None) -> MessageRow:
    return message_row(id, location, f"h{id % 3}", id, "order", body, 1_700_000_000.5, state, trace)


@pytest.fixture(params=["sqlite", "postgresql"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "data")
    dsn = request.getfixturevalue("pg_dsn")
    from aiobroker.store.postgresql import PostgresStore

    return lambda: PostgresStore(dsn)


def write(make: Callable[[], Store], rows: list[MessageRow]) -> None:
    store = make()
    store.open()
    try:
        queues = {("queue", name): {"name": name} for name in ("a", "b")}  # the store pages the queues it knows
        store.write(WriteBatch(meta={"k": 1}, objects=queues, messages={r[ROW_ID]: r for r in rows}))
    finally:
        store.close()


def test_a_paged_open_reads_each_queues_first_rows_and_counts_the_rest(make: Callable[[], Store]) -> None:
    rows = []
    for i in range(1, 201):  # three locations interleaved, as a node's ids are
        location = ("q:a", "q:b", "tx")[i % 3]
        rows.append(row(i, location, state=1 if location == "q:b" and i < 30 else 0, trace="t" if i == 5 else None))
    rows.append(row(500, "q:gone"))  # a queue dropped under a crash: read whole, for the node to drop it
    # an Error far past q:a's window: read at start whatever the window (a receive hands it out first), never paged
    rows.append(message_row(600, "q:a", "h0", 600, ERROR, b"0123456789", 1_700_000_000.5, 0))
    write(make, rows)
    store = make()
    assert store.pages
    try:
        snap = store.open_paged(10)
        assert snap.meta == {"k": 1}
        got = {r[ROW_ID] for r in snap.messages}
        a = [r for r in rows if r[1] == "q:a"]
        b_ready = [r for r in rows if r[1] == "q:b" and r[7] == 0]
        b_retained = [r for r in rows if r[1] == "q:b" and r[7] == 1]
        tx = [r for r in rows if r[1] == "tx"]
        urgent = [r for r in a if r[4] == ERROR]
        a = [r for r in a if r[4] != ERROR]
        want = {r[ROW_ID] for r in a[:10] + b_ready[:10] + b_retained + tx + urgent} | {500}
        assert got == want, "the first 10 ready rows of each queue, every retained and tx row, the unknown one"
        assert [r[ROW_ID] for r in snap.messages] == sorted(got), "by id"
        assert next(r for r in snap.messages if r[ROW_ID] == 5) == rows[4], "rows as written, trace and all"
        assert next(r for r in snap.messages if r[ROW_ID] == 1) == rows[0]
        assert snap.stored == {
            "q:a": (len(a) - 10, 10 * (len(a) - 10), a[9][ROW_ID], 600),  # up to the location's last id (the Error)
            "q:b": (len(b_ready) - 10, 10 * (len(b_ready) - 10), b_ready[9][ROW_ID], b_ready[-1][ROW_ID]),
        }

        # the rest, page by page, while the node writes (another thread, another batch)
        after, upto = snap.stored["q:a"][2], snap.stored["q:a"][3]
        page = store.read_rows("q:a", after, upto, 25)
        assert page == a[10:35]
        done = threading.Event()

        def writer() -> None:
            store.write(WriteBatch(messages={r[ROW_ID]: None for r in a[35:40]} | {1000: row(1000, "q:a")}))
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(10)
        assert done.is_set()
        page = store.read_rows("q:a", page[-1][ROW_ID], upto, 1000)
        assert page == a[40:], "deleted rows are gone, ids past upto not read"
        assert store.read_rows("q:a", upto, upto, 10) == []
        assert store.read_rows("q:nothing", 0, 10_000, 10) == []
    finally:
        store.close()


def test_a_paged_open_of_a_store_holding_no_more_than_the_window_leaves_nothing(make: Callable[[], Store]) -> None:
    write(make, [row(i, "q:a") for i in range(1, 6)])
    store = make()
    try:
        snap = store.open_paged(5)
        assert len(snap.messages) == 5 and snap.stored == {}
    finally:
        store.close()


def test_bodies_are_read_back_by_id_many_at_once_and_an_id_not_held_is_left_out(make: Callable[[], Store]) -> None:
    # what the node reads when DELAYED conversations move on (core/tx_bodies.py): bodies of transmission-queue rows,
    # by id, more of them than one statement takes
    rows = [row(i, "tx", body=b"body-%d" % i) for i in range(1, 1201)]
    write(make, rows)
    store = make()
    try:
        store.open_paged(10)
        wanted = [*range(1200, 0, -2), 99_999]
        assert store.read_bodies(wanted) == {i: b"body-%d" % i for i in range(2, 1201, 2)}
        assert store.read_bodies([]) == {}
    finally:
        store.close()


def test_bodies_of_any_bytes_come_back_exactly(make: Callable[[], Store]) -> None:
    # SQLite reads a chunk's bodies as one value (sqlite_pages._bodies_at_once): NUL bytes, bytes that are not
    # UTF-8, an empty body and bodies of different sizes must come back byte for byte, each under its own id
    bodies = {1: b"", 2: b"\x00\x00", 3: bytes(range(256)), 4: b"\xff\xfe\x80", 5: b"plain", 6: b"\x00" * 5000, 7: b""}
    write(make, [row(i, "tx", body=body) for i, body in bodies.items()])
    store = make()
    try:
        store.open_paged(10, tx_bodies=False)
        assert store.read_bodies([7, 6, 5, 4, 3, 2, 1, 404]) == bodies
    finally:
        store.close()


def test_sqlite_reads_bodies_a_row_at_a_time_when_together_they_pass_its_length_limit(tmp_path: Path) -> None:
    import sqlite3

    from aiobroker.store.sqlite_pages import read_bodies

    bodies = {i: bytes([i]) * 600 for i in range(1, 6)}  # 3,000 bytes together, 600 each
    write(lambda: SqliteStore(tmp_path / "data"), [row(i, "tx", body=body) for i, body in bodies.items()])
    conn = sqlite3.connect(SqliteStore(tmp_path / "data").db_path)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
        with pytest.raises(sqlite3.DataError):  # the one-value read cannot take them: the fallback is what is tested
            conn.execute("SELECT CAST(group_concat(body, '') AS BLOB) FROM messages").fetchall()
        assert read_bodies(conn, [5, 4, 3, 2, 1]) == bodies
    finally:
        conn.close()


def test_a_paged_open_without_the_transmission_queues_bodies_gives_their_sizes(make: Callable[[], Store]) -> None:
    # how a node opens its store (core/tx_bodies.py): the transmission queue's rows without their bodies, each an
    # InStore of its size; a queue's rows and everything else as ever
    rows = [row(i, "tx", body=b"x" * i, trace="t" if i == 3 else None) for i in range(1, 6)] + [row(6, "q:a")]
    write(make, rows)
    store = make()
    try:
        snap = store.open_paged(10, tx_bodies=False)
        tx = [r for r in snap.messages if r[1] == "tx"]
        assert [type(r[5]) for r in tx] == [InStore] * 5 and [len(r[5]) for r in tx] == [1, 2, 3, 4, 5]
        assert [r[:5] + r[6:] for r in tx] == [r[:5] + r[6:] for r in rows[:5]], "all else as stored, trace too"
        assert [r for r in snap.messages if r[1] == "q:a"] == rows[5:]
        assert store.read_bodies([3, 5]) == {3: b"xxx", 5: b"xxxxx"}
    finally:
        store.close()


def test_a_page_is_read_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    # the node reads pages in a thread of its own while its writer writes: with SQLite's write-ahead log a read sees
    # the last committed state at once, never waiting for a transaction in progress, nor seeing half of it
    import sqlite3
    import time

    store = SqliteStore(tmp_path / "data")
    store.open()
    try:
        store.write(WriteBatch(objects={("queue", "a"): {"name": "a"}}, messages={i: row(i, "q:a") for i in range(1, 11)}))
        writer = sqlite3.connect(store.db_path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM messages WHERE id <= 5")
        writer.execute("INSERT INTO messages (id, location, handle, seq, message_type, body, enqueued_at, state)"
                       " VALUES (11, 'q:a', 'h', 11, 'order', x'00', 0, 0)")
        began = time.monotonic()
        page = store.read_rows("q:a", 0, 11, 100)
        assert time.monotonic() - began < 1.0, "the read did not wait for the write"
        assert [r[ROW_ID] for r in page] == list(range(1, 11)), "the committed state: none of the write in progress"
        writer.execute("COMMIT")
        writer.close()
        assert [r[ROW_ID] for r in store.read_rows("q:a", 0, 11, 100)] == [6, 7, 8, 9, 10, 11]
    finally:
        store.close()
