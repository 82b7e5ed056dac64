"""The stores: what is written comes back, whole batches or nothing, and every failure says where and what to do.

Real files in ``tmp_path``, real processes for the lock, permission and crash tests; no mocks, no sleeps.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aiobroker.errors import StoreError
from aiobroker.core.records import ROW_BODY, ROW_ID, MessageRow, Snapshot, WriteBatch, message_row
from aiobroker.store import MemoryStore, SqliteStore, Store, open_store
from aiobroker.store.sqlite import SCHEMA_VERSION
from aiobroker.wire.codec import packb, unpackb

REPO = Path(__file__).resolve().parents[1]


def row(
    id: int, *, location: str = "q:orders", handle: str = "h1", body: bytes = b"body", state: int = 0
) -> MessageRow:
    return message_row(id, location, handle, id, "order", body, 1_700_000_000.25, state)


def read_back(data_dir: Path) -> Snapshot:
    """Open, read everything, close: what a restarted node would find."""
    store = SqliteStore(data_dir)
    try:
        return store.open()
    finally:
        store.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(data_dir)
    store.open()
    yield store
    store.close()


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# --- what is written comes back -----------------------------------------------------------------------------

VALUES: dict[str, Any] = {
    "str": "héllo wörld ✓",
    "empty str": "",
    "int": 42,
    "big int": 2**64 - 1,
    "negative int": -(2**63),
    "float": 3.141592653589793,
    "bytes": b"\x00\xff binary",
    "true": True,
    "false": False,
    "list": [1, "two", b"three", None, [4.5]],
    "dict": {"nested": {"deeper": [None, True, {"k": b"v"}]}, "n": 0},
}


def test_a_new_store_is_empty(store: SqliteStore) -> None:
    assert read_back_while_closed(store) == Snapshot()


def read_back_while_closed(store: SqliteStore) -> Snapshot:
    store.close()
    return read_back(store.data_dir)


def test_every_kind_of_value_survives_a_restart(store: SqliteStore) -> None:
    batch = WriteBatch()
    batch.meta.update(VALUES)
    for kind in ("message_type", "contract", "queue", "service"):
        for key, value in VALUES.items():
            batch.objects[(kind, key)] = value
    batch.endpoints.update({f"handle-{key}": value for key, value in VALUES.items()})
    rows = [
        row(1),
        row(2, body=b""),
        row(3, body=bytes(range(256)) * 4096, location="tx", handle="ĥandle", state=1),
    ]
    batch.messages.update({r[ROW_ID]: r for r in rows})
    store.write(batch)

    snapshot = read_back_while_closed(store)

    assert snapshot.meta == VALUES
    assert sorted(snapshot.objects) == sorted((k, n, v) for (k, n), v in batch.objects.items())
    assert dict(snapshot.endpoints) == batch.endpoints
    assert snapshot.messages == rows
    assert all(type(m) is tuple and type(m[ROW_BODY]) is bytes for m in snapshot.messages), "rows come back as the plain tuples the core makes"


def test_values_are_replaced_and_deleted_across_batches(store: SqliteStore) -> None:
    store.write(
        WriteBatch(
            meta={"a": 1, "b": 1},
            objects={("queue", "q1"): {"v": 1}, ("queue", "q2"): {"v": 1}},
            endpoints={"h1": "open", "h2": "open"},
            messages={1: row(1), 2: row(2)},
        )
    )
    store.write(
        WriteBatch(
            meta={"a": 2, "b": None},
            objects={("queue", "q1"): {"v": 2}, ("queue", "q2"): None},
            endpoints={"h1": "closed", "h2": None},
            messages={1: row(1, state=1), 2: None, 99: None},  # 99 was never written: deleting it is harmless
        )
    )
    snapshot = read_back_while_closed(store)
    assert snapshot.meta == {"a": 2}
    assert snapshot.objects == [("queue", "q1", {"v": 2})]
    assert snapshot.endpoints == [("h1", "closed")]
    assert snapshot.messages == [row(1, state=1)]


def test_put_then_delete_in_one_batch_leaves_nothing(store: SqliteStore) -> None:
    batch = WriteBatch()
    batch.messages[7] = row(7)
    batch.objects[("queue", "q")] = {"v": 1}
    batch.messages[7] = None  # stored, then received and committed, before the batch was written
    batch.objects[("queue", "q")] = None
    store.write(batch)
    snapshot = read_back_while_closed(store)
    assert snapshot.messages == [] and snapshot.objects == []


def test_delete_then_put_in_one_batch_leaves_the_new_value(store: SqliteStore) -> None:
    store.write(WriteBatch(objects={("queue", "q"): {"v": 1}}, messages={7: row(7)}))
    batch = WriteBatch()
    batch.objects[("queue", "q")] = None  # dropped ...
    batch.messages[7] = None
    batch.objects[("queue", "q")] = {"v": 2}  # ... and created again
    batch.messages[7] = row(7, state=1)
    store.write(batch)
    snapshot = read_back_while_closed(store)
    assert snapshot.objects == [("queue", "q", {"v": 2})]
    assert snapshot.messages == [row(7, state=1)]


def test_messages_come_back_ordered_by_id(store: SqliteStore) -> None:
    ids = [50, 3, 1000, 7, 2, 999, 1]
    for chunk in (ids[:3], ids[3:5], ids[5:]):
        store.write(WriteBatch(messages={i: row(i) for i in chunk}))
    assert [m[ROW_ID] for m in read_back_while_closed(store).messages] == sorted(ids)


def test_the_store_keeps_its_schema_version_to_itself(store: SqliteStore) -> None:
    with pytest.raises(StoreError, match="reserved"):
        store.write(WriteBatch(meta={"schema_version": 99}))
    assert read_back_while_closed(store).meta == {}


def test_open_and_write_may_run_on_different_threads(store: SqliteStore) -> None:
    errors: list[Exception] = []

    def writer() -> None:
        try:
            store.write(WriteBatch(messages={1: row(1)}))
        except Exception as exc:  # reported below, on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert errors == []
    assert read_back_while_closed(store).messages == [row(1)]


def test_both_durabilities_work(tmp_path: Path) -> None:
    for durability in ("normal", "full"):
        store = SqliteStore(tmp_path / durability, durability)
        store.open()
        store.write(WriteBatch(meta={"d": durability}))
        info = store.describe()
        store.close()
        assert info["durability"] == durability
        assert read_back(tmp_path / durability).meta == {"d": durability}


def test_describe_names_the_file_and_its_size(store: SqliteStore, data_dir: Path) -> None:
    info = store.describe()
    assert info["store"] == "sqlite" and info["durable"] is True
    assert info["path"] == str(data_dir / "aiobroker.sqlite3")
    assert info["size"] == (data_dir / "aiobroker.sqlite3").stat().st_size > 0


def test_close_is_safe_twice_and_a_closed_store_refuses_writes(store: SqliteStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="not open"):
        store.write(WriteBatch(meta={"a": 1}))


# --- a failed batch applies nothing -------------------------------------------------------------------------


def test_a_value_that_cannot_be_stored_fails_the_whole_batch(store: SqliteStore) -> None:
    batch = WriteBatch(meta={"ok": 1}, endpoints={"h": object()}, messages={1: row(1)})
    with pytest.raises(StoreError, match="cannot store"):
        store.write(batch)
    store.write(WriteBatch(meta={"after": 1}))  # the store is still usable
    snapshot = read_back_while_closed(store)
    assert snapshot.meta == {"after": 1} and snapshot.messages == []


def test_disk_full_fails_the_whole_batch(store: SqliteStore, data_dir: Path) -> None:
    store.write(WriteBatch(meta={"k": 1}))
    # A real "disk full" without filling the disk: SQLite reports SQLITE_FULL when the file would grow past
    # max_page_count, exactly as it does on ENOSPC. (White-box: the pragma needs the store's connection.)
    conn = store._conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = WriteBatch(meta={"k": 2}, messages={i: row(i, body=b"x" * 20_000) for i in range(50)})
    with pytest.raises(StoreError, match="disk full") as info:
        store.write(big)
    assert str(data_dir) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    conn.execute("PRAGMA max_page_count = 1073741823")
    store.write(WriteBatch(meta={"k": 3}))
    snapshot = read_back_while_closed(store)
    assert snapshot.meta == {"k": 3} and snapshot.messages == []


# --- one node per data directory ----------------------------------------------------------------------------


def test_a_second_store_on_the_same_data_dir_is_refused_until_the_first_closes(data_dir: Path) -> None:
    first = SqliteStore(data_dir)
    first.open()
    second = SqliteStore(data_dir)
    try:
        assert (data_dir / "aiobroker.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(StoreError, match="in use by another aiobroker node") as info:
            second.open()
        assert str(data_dir) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
        first.write(WriteBatch(meta={"still": "mine"}))  # the refused store did not disturb the first
    finally:
        first.close()
    try:
        assert second.open().meta == {"still": "mine"}
    finally:
        second.close()


# --- failures that name the path ----------------------------------------------------------------------------


def test_a_corrupt_database_is_refused_and_named(data_dir: Path) -> None:
    data_dir.mkdir()
    db = data_dir / "aiobroker.sqlite3"
    db.write_bytes(b"this is not a database, just some garbage bytes\n" * 200)
    store = SqliteStore(data_dir)
    with pytest.raises(StoreError, match="corrupt") as info:
        store.open()
    assert str(data_dir) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    db.unlink()  # moved aside: the failed open released the lock, so the directory is usable again
    assert read_back(data_dir) == Snapshot()


def test_a_foreign_sqlite_database_is_refused(data_dir: Path) -> None:
    data_dir.mkdir()
    with closing(sqlite3.connect(data_dir / "aiobroker.sqlite3")) as conn:
        conn.execute("CREATE TABLE something_else (x)")
        conn.commit()
    with pytest.raises(StoreError, match="not an aiobroker store"):
        read_back(data_dir)


def test_a_store_from_a_newer_aiobroker_is_refused(store: SqliteStore, data_dir: Path) -> None:
    store.close()
    with closing(sqlite3.connect(data_dir / "aiobroker.sqlite3")) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (packb(SCHEMA_VERSION + 1),))
        conn.commit()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        read_back(data_dir)


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 rojo=00f067aa0ba902b7"

#: A store as aiobroker wrote it at schema version 1 (before trace context), table by table, as that code made it.
SCHEMA_1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)",
    "CREATE TABLE objects (kind TEXT, name TEXT, data BLOB, PRIMARY KEY (kind, name))",
    "CREATE TABLE endpoints (handle TEXT PRIMARY KEY, data BLOB)",
    "CREATE TABLE messages (id INTEGER PRIMARY KEY, location TEXT, handle TEXT, seq INTEGER,"
    " message_type TEXT, body BLOB, enqueued_at REAL, state INTEGER)",
)


def test_a_message_s_trace_context_survives_a_restart(store: SqliteStore) -> None:
    store.write(WriteBatch(messages={1: message_row(1, "tx", "h", 0, "t", b"b", 5.0, 0, TRACE), 2: row(2)}))
    messages = read_back_while_closed(store).messages
    assert messages == [message_row(1, "tx", "h", 0, "t", b"b", 5.0, 0, TRACE), row(2)]
    assert [len(m) for m in messages] == [9, 8], "read back as the core makes them: eight fields without"
    store.open()
    traced = message_row(3, "q:orders", "h", 1, "t", b"c", 6.0, 1, TRACE)
    store.write(WriteBatch(messages={1: None, 3: traced, 4: row(4), 2: message_row(2, "tx", "h", 2, "t", b"d", 7.0)}))
    assert read_back_while_closed(store).messages == [message_row(2, "tx", "h", 2, "t", b"d", 7.0), traced, row(4)]


def test_a_schema_1_store_is_migrated_when_opened_and_keeps_its_messages(data_dir: Path) -> None:
    data_dir.mkdir()
    with closing(sqlite3.connect(data_dir / "aiobroker.sqlite3")) as conn:
        for sql in SCHEMA_1:
            conn.execute(sql)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (packb(1),))
        conn.execute("INSERT INTO endpoints VALUES ('h1', ?)", (packb({"state": "old"}),))
        conn.execute("INSERT INTO messages VALUES (7, 'q:orders', 'h1', 0, 'order', X'6f6c64', 1.5, 0)")
        conn.commit()
    store = SqliteStore(data_dir)
    try:
        snap = store.open()
        assert snap.messages == [(7, "q:orders", "h1", 0, "order", b"old", 1.5, 0)]
        assert snap.endpoints == [("h1", {"state": "old"})]
        store.write(WriteBatch(messages={8: message_row(8, "q:orders", "h1", 1, "order", b"new", 2.0, 0, TRACE)}))
    finally:
        store.close()
    assert [m[-1] for m in read_back(data_dir).messages] == [0, TRACE]
    with closing(sqlite3.connect(data_dir / "aiobroker.sqlite3")) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert unpackb(version) == SCHEMA_VERSION == 2


def test_a_data_dir_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    data_dir = tmp_path / "file" / "data"
    with pytest.raises(StoreError, match="not a directory") as info:
        SqliteStore(data_dir).open()
    assert str(data_dir) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_a_data_dir_that_is_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="not a directory"):
        SqliteStore(tmp_path / "file").open()


NOT_WRITABLE_SCRIPT = """
import os, pwd, sys
from pathlib import Path
from aiobroker.errors import StoreError
from aiobroker.store import SqliteStore
# Everything is imported before the privileges go: the interpreter's own files may not be readable by nobody.
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
store = SqliteStore(Path(sys.argv[1]))
try:
    store.open()
except StoreError as exc:
    print(exc)
    sys.exit(3)
store.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to drop to user nobody in a child process")
@pytest.mark.parametrize("sub", ["", "new"], ids=["existing-dir", "dir-to-create"])
def test_a_data_dir_that_is_not_writable_is_refused(sub: str) -> None:
    # Not tmp_path: pytest keeps it under a 0o700 directory that nobody could not even traverse.
    root_owned = Path(tempfile.mkdtemp(prefix="aiobroker-test-"))
    try:
        root_owned.chmod(0o755)
        data_dir = root_owned / sub if sub else root_owned
        result = subprocess.run(
            [sys.executable, "-c", NOT_WRITABLE_SCRIPT, str(data_dir)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 3, result.stderr
        assert "permission denied" in result.stdout and str(data_dir) in result.stdout
        assert list(root_owned.iterdir()) == []
    finally:
        shutil.rmtree(root_owned)


# --- a crash loses nothing that was reported written --------------------------------------------------------

CRASH_SCRIPT = """
import sys, time
from pathlib import Path
from aiobroker.core.records import WriteBatch, message_row
from aiobroker.store import SqliteStore
store = SqliteStore(Path(sys.argv[1]))
store.open()
deadline = time.monotonic() + 30  # bounded, should the parent fail to kill it
n = 0
while n < 100_000 and time.monotonic() < deadline:
    batch = WriteBatch(meta={"batch": n}, endpoints={f"e{n}": {"n": n}})
    for j in range(10):
        batch.messages[n * 10 + j] = message_row(n * 10 + j, "q:crash", f"e{n}", j, "t", b"%d" % n, 0.0, 0)
    if n >= 2:  # rows 1..9 of two batches ago were received: delete them, keep row 0 as a witness
        for j in range(1, 10):
            batch.messages[(n - 2) * 10 + j] = None
    store.write(batch)
    print(n, flush=True)
    n += 1
store.close()
"""


def expected_ids(last: int) -> list[int]:
    """The message ids present after batches 0..last have been written."""
    ids = {n * 10 for n in range(last + 1)}
    ids.update(n * 10 + j for n in range(max(0, last - 1), last + 1) for j in range(10))
    return sorted(ids)


def test_every_batch_reported_written_survives_sigkill(data_dir: Path) -> None:
    reported = -1
    with subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(data_dir)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        while reported < 300:
            line = child.stdout.readline()
            if not line:
                child.wait()
                pytest.fail(f"the writer stopped after batch {reported}: {child.stderr.read()}")
            reported = int(line)
        child.kill()  # SIGKILL, mid-batch most likely: no handler, no atexit, no close
        assert child.wait() == -9

    snapshot = read_back(data_dir)

    last = snapshot.meta["batch"]
    assert last >= reported, "a batch reported written was lost"
    # ... and what is there is exactly batches 0..last: whole batches, nothing of a later one.
    assert [m[ROW_ID] for m in snapshot.messages] == expected_ids(last)
    assert sorted(h for h, _ in snapshot.endpoints) == sorted(f"e{n}" for n in range(last + 1))


# --- the memory store and the factory -----------------------------------------------------------------------


def test_the_memory_store_keeps_nothing() -> None:
    store = MemoryStore()
    assert store.name == "memory" and store.durable is False
    assert store.open() == Snapshot()
    store.write(WriteBatch(meta={"a": 1}, messages={1: row(1)}))
    assert store.open() == Snapshot()
    store.close()
    store.close()
    assert store.describe() == {"store": "memory", "durable": False}


def test_open_store_constructs_without_opening(tmp_path: Path) -> None:
    sqlite_store: Store = open_store("sqlite", tmp_path / "data", "full")
    assert isinstance(sqlite_store, SqliteStore) and sqlite_store.durability == "full"
    assert not (tmp_path / "data").exists()
    assert isinstance(open_store("memory", tmp_path / "unused"), MemoryStore)


def test_open_store_refuses_unknown_kinds_and_durabilities(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'sqlite', 'memory'"):
        open_store("postgres", tmp_path)
    with pytest.raises(ValueError, match="'normal', 'full'"):
        open_store("sqlite", tmp_path, "paranoid")
    with pytest.raises(ValueError, match="'normal', 'full'"):
        open_store("memory", tmp_path, "paranoid")
