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
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from aiobroker.errors import ConfigError, StoreError
from aiobroker.core.records import MessageRow, Snapshot, WriteBatch, message_row
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

def read_back_while_closed(store: SqliteStore) -> Snapshot:
    store.close()
    return read_back(store.data_dir)


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


# --- a failed batch applies nothing -------------------------------------------------------------------------


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
from aiobroker.errors import ConfigError, StoreError
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
    with pytest.raises(ConfigError, match="'sqlite', 'memory', 'postgresql'"):
        open_store("postgres", tmp_path)
    with pytest.raises(ConfigError, match="'normal', 'full'"):
        open_store("sqlite", tmp_path, "paranoid")
    with pytest.raises(ConfigError, match="'normal', 'full'"):
        open_store("memory", tmp_path, "paranoid")
