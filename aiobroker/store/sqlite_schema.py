"""The SQLite store's tables, and how a batch becomes SQL: one transaction, a statement per kind of change.

The write path is the store's hot path: every message stored is inserted once and deleted once. So a batch
(:class:`~aiobroker.core.records.WriteBatch`, coalesced: each key at most once) becomes one ``executemany`` per
table and kind of change (:func:`statements`), the message rows bind as they are (tuples in column order), and
deletes go by ``id IN (...)`` in chunks. ``sqlite.py`` opens the database, runs these in :func:`transaction`, and
translates what fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from ..core.records import WriteBatch
from ..errors import ProtocolError, StoreError
from ..wire.codec import packb

#: Meta key the store keeps for itself; hidden from the snapshot and refused in a batch.
SCHEMA_KEY: Final = "schema_version"

TABLES: Final = ("meta", "objects", "endpoints", "messages")
SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB)",
    "CREATE TABLE objects (kind TEXT, name TEXT, data BLOB, PRIMARY KEY (kind, name))",
    "CREATE TABLE endpoints (handle TEXT PRIMARY KEY, data BLOB)",
    # id is an alias of the rowid: ids grow in arrival order, so inserts append to the right edge of the tree.
    (
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, location TEXT, handle TEXT, seq INTEGER,"
        " message_type TEXT, body BLOB, enqueued_at REAL, state INTEGER, trace TEXT)"
    ),
)

#: What brings a store of schema version ``v`` to ``v + 1``, by ``v``: run in the transaction that opens it.
#: Version 1 had no ``trace`` column; its rows read back with None there (no trace context), as they were sent.
MIGRATIONS: Final = {
    1: ("ALTER TABLE messages ADD COLUMN trace TEXT",),
}

# Column order of MessageRow, so a row (a tuple) binds as is and a result row builds one (``sqlite.py`` drops the
# ninth field of those read back without trace context, as the core made them).
SELECT_MESSAGES: Final = (
    "SELECT id, location, handle, seq, message_type, body, enqueued_at, state, trace FROM messages ORDER BY id"
)
_PUT_MESSAGE: Final = (
    "INSERT OR REPLACE INTO messages (id, location, handle, seq, message_type, body, enqueued_at, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PUT_TRACED_MESSAGE: Final = "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_DELETE_MESSAGE: Final = "DELETE FROM messages WHERE id = ?"
_DELETE_CHUNK: Final = 100
_DELETE_MESSAGES_CHUNK: Final = f"DELETE FROM messages WHERE id IN ({', '.join('?' * _DELETE_CHUNK)})"
_PUT_OBJECT: Final = "INSERT OR REPLACE INTO objects VALUES (?, ?, ?)"
_DELETE_OBJECT: Final = "DELETE FROM objects WHERE kind = ? AND name = ?"
_PUT_ENDPOINT: Final = "INSERT OR REPLACE INTO endpoints VALUES (?, ?)"
_DELETE_ENDPOINT: Final = "DELETE FROM endpoints WHERE handle = ?"
PUT_META: Final = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
_DELETE_META: Final = "DELETE FROM meta WHERE key = ?"


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error, so a batch is applied whole or not at all.

    IMMEDIATE takes the write lock at BEGIN, so a conflict (only possible with an outside program) shows up
    before any work is done rather than at COMMIT.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself after some errors (disk full, I/O error); then there is nothing left to do.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one to report; closing the connection rolls back anyway
        raise


def statements(batch: WriteBatch) -> list[tuple[str, Any]]:
    """``(sql, parameters)`` for every non-empty part of the batch, deletes and puts apart.

    A coalesced batch holds each key once, so the order of the statements does not matter.
    """
    if SCHEMA_KEY in batch.meta:
        raise StoreError(f"meta key {SCHEMA_KEY!r} is reserved for the store itself")
    out: list[tuple[str, Any]] = []
    try:
        _split(out, PUT_META, _DELETE_META, list(batch.meta.items()), 1)
        _split(out, _PUT_OBJECT, _DELETE_OBJECT, [(k, n, v) for (k, n), v in batch.objects.items()], 2)
        _split(out, _PUT_ENDPOINT, _DELETE_ENDPOINT, list(batch.endpoints.items()), 1)
    except ProtocolError as exc:
        # packb met something that is not plain data: a bug in the caller, reported as the store's refusal.
        raise StoreError(f"cannot store the batch: {exc}") from exc
    messages = batch.messages
    if messages:
        # The hot path. Rows are plain tuples in column order already (an exact tuple binds much faster than a
        # tuple subclass, which sqlite3 reads item by item). A row without trace context has eight fields and
        # binds to the eight columns before ``trace``, which stays NULL; one with it has nine (records.py).
        puts = [row for row in messages.values() if row is not None and len(row) == 8]
        if puts:
            out.append((_PUT_MESSAGE, puts))
        if len(puts) != len(messages):  # rows with trace context, and deletes
            traced = [row for row in messages.values() if row is not None and len(row) != 8]
            if traced:
                out.append((_PUT_TRACED_MESSAGE, traced))
            if len(puts) + len(traced) != len(messages):
                _delete_messages(out, [key for key, row in messages.items() if row is None])
    return out


def _delete_messages(out: list[tuple[str, Any]], ids: list[int]) -> None:
    """Delete by ``id IN (...)`` in chunks, the remainder one by one.

    Every message stored is deleted once, so this is as hot as the insert. Measured: one ``DELETE ... IN`` of
    100 ids costs about half as much per row as 100 single-row deletes (fewer statement steps and resets).
    """
    full = len(ids) - len(ids) % _DELETE_CHUNK
    if full:
        out.append((_DELETE_MESSAGES_CHUNK, [ids[i : i + _DELETE_CHUNK] for i in range(0, full, _DELETE_CHUNK)]))
    if full != len(ids):
        out.append((_DELETE_MESSAGE, [(key,) for key in ids[full:]]))


def _split(out: list[tuple[str, Any]], put: str, delete: str, items: list[tuple[Any, ...]], nkey: int) -> None:
    """Append the puts (key columns plus the encoded value) and deletes (key columns) of one keyed table."""
    puts = [(*item[:nkey], packb(item[nkey])) for item in items if item[nkey] is not None]
    deletes = [item[:nkey] for item in items if item[nkey] is None]
    if puts:
        out.append((put, puts))
    if deletes:
        out.append((delete, deletes))
