"""The SQLite store's tables, and how a batch becomes SQL: one transaction, few statements.

The write path is the store's hot path: every message stored is inserted once and deleted once. So a batch
(:class:`~aiobroker.core.records.WriteBatch`, coalesced: each key at most once) becomes as few statements as its
shape allows (:func:`statements`): message rows go in multi-row ``INSERT`` statements of up to 100 rows, deletes of
adjacent ids as ``DELETE ... BETWEEN``, the other deletes by ``id IN (...)`` in chunks. ``sqlite.py`` opens the
database, runs these in :func:`transaction`, and translates what fails. ``benchmarks/bench_store.py`` measures
the write path against raw ``sqlite3`` doing the same rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
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
#: The columns a row binds to, by its length: a row without trace context has eight fields and binds to the eight
#: columns before ``trace``, which stays NULL; one with it has nine (records.py).
_MESSAGE_COLUMNS: Final = {
    8: "id, location, handle, seq, message_type, body, enqueued_at, state",
    9: "id, location, handle, seq, message_type, body, enqueued_at, state, trace",
}

#: Rows per multi-row INSERT, largest first: a batch goes in statements of 100 rows, the rest in ones of 25, 5, 1.
#: Measured (raw sqlite3, 1,000-row batches of 128 B, the inserts alone): a row costs ~0.74 us to insert in a
#: statement of 50 to 1,000 rows, 0.81 in one of 10, and 1.16 by ``executemany`` of a one-row INSERT, which steps
#: and resets the statement once a row. 100 rows of 9 columns bind 900 variables, under the 999 of SQLite builds
#: before 3.32 (32,766 since), so no build refuses the statement. The few sizes keep the distinct statements few
#: (about 20 in all), so all stay in sqlite3's statement cache (128 by default, so its size does not matter; but
#: without it, a statement of 100 rows takes ~120 us to prepare, as long as inserting 160 rows) while a remainder
#: of up to 99 rows takes at most 3 statements of 25 rows, 4 of 5 and 4 of one. Measured with batches of 64 and
#: 37 rows (bench_store.py, insert and delete): 2.11 and 1.96 us a row with these sizes, within 5% of that with
#: (100, 10, 1) or (100, 32, 8, 1), and 2.69 and 2.34 with the remainder one row at a time (100, 1).
INSERT_SIZES: Final = (100, 25, 5, 1)
#: ``{columns: {rows: sql}}``: the multi-row INSERT OR REPLACE for rows of that many columns.
_PUT_MESSAGES: Final = {
    width: {
        size: f"INSERT OR REPLACE INTO messages ({_MESSAGE_COLUMNS[width]}) VALUES "
        + ", ".join([f"({', '.join('?' * width)})"] * size)
        for size in INSERT_SIZES
    }
    for width in _MESSAGE_COLUMNS
}

#: A run of at least this many adjacent ids is deleted by one ``BETWEEN``; shorter runs go with the scattered ids.
#: Measured, 2,000 runs separated by kept ids, us an id by ``BETWEEN`` against ``IN (...)`` of 100: runs of 1 id
#: 0.58 against 0.38, of 4 ids 0.28 against 0.34, of 8 0.27 against 0.35, of 64 0.25 against 0.39. So a range
#: pays from about 4 ids; 8 rather than 4 makes the search for runs visit about half as many slices when the ids
#: are scattered (``_find_runs``), for a few hundredths of a microsecond an id lost on runs of 4 to 7.
MIN_RUN: Final = 8
_DELETE_RANGE: Final = "DELETE FROM messages WHERE id BETWEEN ? AND ?"
#: Ids per ``DELETE ... IN``, largest first, as INSERT_SIZES. Measured: a deleted id costs ~0.48 us by single-row
#: deletes, ~0.24 in an ``IN`` of 100 (or of 500: no better), ~0.12 in a ``BETWEEN`` over a run of 1,000.
DELETE_SIZES: Final = (100, 10, 1)
#: Fewer rows than the smallest multi-row INSERT, fewer ids than the smallest ``IN`` or range: one-row statements.
_FEW_ROWS: Final = INSERT_SIZES[-2]
_FEW_IDS: Final = min(MIN_RUN, DELETE_SIZES[-2])
_DELETE_MESSAGES: Final = {
    size: f"DELETE FROM messages WHERE id IN ({', '.join('?' * size)})" for size in DELETE_SIZES if size > 1
} | {1: "DELETE FROM messages WHERE id = ?"}
# Keyed puts are upserts, not ``INSERT OR REPLACE``: on these rowid tables with a TEXT key, REPLACE deletes the old
# row and its index entry and inserts both again (under a new rowid), where an upsert finds the key in the index
# and rewrites the row in place. Measured, 100,000 endpoint records rewritten in batches of 1,000 (WAL, normal):
# 2.0 us a record against 12 (in the order they were written) and 3.9 against 13-28 (shuffled); a new key costs
# the same either way. A released DELAYED conversation rewrites its record, so a resolution storm writes 100,000.
_PUT_OBJECT: Final = "INSERT INTO objects VALUES (?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET data = excluded.data"
_DELETE_OBJECT: Final = "DELETE FROM objects WHERE kind = ? AND name = ?"
#: Endpoint records go in multi-row statements, as message rows do (sizes INSERT_SIZES and DELETE_SIZES), and for a
#: second reason besides SQLite's own cost: the writer is a thread, and ``sqlite3`` lets go of the interpreter's lock
#: for every step of a statement, so ``executemany`` of a one-row statement waits to take it back once a row. While
#: the event loop is busy, as in a release, each wait lasts until the loop gives the lock up (at its next poll, or
#: after the 5 ms switch interval). Measured (``benchmarks/bench_writer_gil.py --rounds 3``), records rewritten in
#: batches of 1,000 while the main thread ran Python: one-row upserts 6.1 us of the writer's CPU and 652 us of wall
#: time a record, multi-row ones 1.7 us and 70 us; beside an idle loop 1.8 against 0.9 us.
_PUT_ENDPOINTS: Final = {
    size: "INSERT INTO endpoints VALUES " + ", ".join(["(?, ?)"] * size)
    + " ON CONFLICT (handle) DO UPDATE SET data = excluded.data"
    for size in INSERT_SIZES
}
_DELETE_ENDPOINTS: Final = {
    size: f"DELETE FROM endpoints WHERE handle IN ({', '.join('?' * size)})" for size in DELETE_SIZES if size > 1
} | {1: "DELETE FROM endpoints WHERE handle = ?"}
PUT_META: Final = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
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
    """``(sql, parameters)`` for every non-empty part of the batch, each an ``executemany``; deletes and puts apart.

    A coalesced batch holds each key once, so the order of the statements does not change the result.
    """
    if SCHEMA_KEY in batch.meta:
        raise StoreError(f"meta key {SCHEMA_KEY!r} is reserved for the store itself")
    out: list[tuple[str, Any]] = []
    try:
        _split(out, PUT_META, _DELETE_META, list(batch.meta.items()), 1)
        _split(out, _PUT_OBJECT, _DELETE_OBJECT, [(k, n, v) for (k, n), v in batch.objects.items()], 2)
        _endpoints(out, batch.endpoints)
    except ProtocolError as exc:
        # packb met something that is not plain data: a bug in the caller, reported as the store's refusal.
        raise StoreError(f"cannot store the batch: {exc}") from exc
    messages = batch.messages
    if messages:
        # The hot path. Rows are plain tuples in column order already; their fields are bound as they are, flattened
        # into one list (a C-level chain) and sliced per statement (exact lists, which sqlite3 binds as fast as
        # exact tuples; a tuple subclass it would read item by item, much slower). Measured per batch of 1,000 rows and 1,000
        # deletes: filter 11 us (a comprehension testing ``is not None`` 15), the deletes' comprehension and sort
        # 25 (itertools.compress 37), the flattening 50 and its slices 8.
        rows = list(filter(None, messages.values()))  # a row is a non-empty tuple; None deletes
        if len(rows) != len(messages):
            # Deletes first: a coalesced batch holds each id once, so the order is free, and the inserts reuse the
            # pages the deletes free in the same transaction. Measured, 1,000 rows inserted and 1,000 deleted a
            # batch: 1.19 us a row deleting first, 1.36 inserting first (more pages written to the log).
            _delete_messages(out, sorted([key for key, row in messages.items() if row is None]))
        if 0 < len(rows) < _FEW_ROWS:
            # A few rows, as at a low rate: one-row INSERTs, the rows bound as they are, without the work of
            # flattening and chunking (measured, a batch of one row and one delete: 2.9 us of Python with that
            # work, 2.15 without, 2.0 before multi-row INSERTs).
            plain = [row for row in rows if len(row) == 8]
            if plain:
                out.append((_PUT_MESSAGES[8][1], plain))
            if len(plain) != len(rows):
                out.append((_PUT_MESSAGES[9][1], [row for row in rows if len(row) != 8]))
        elif rows:
            flat = list(chain.from_iterable(rows))
            if len(flat) == 8 * len(rows):  # no row with trace context (rows have eight fields or nine)
                _insert_messages(out, 8, rows, flat)
            else:  # rows with trace context (rare) go to the nine-column INSERT
                plain = [row for row in rows if len(row) == 8]
                traced = [row for row in rows if len(row) != 8]
                if plain:
                    _insert_messages(out, 8, plain, list(chain.from_iterable(plain)))
                _insert_messages(out, 9, traced, list(chain.from_iterable(traced)))
    return out


def _insert_messages(out: list[tuple[str, Any]], width: int, rows: list[Any], flat: list[Any]) -> None:
    """Multi-row INSERTs of ``rows`` (all ``width`` fields; ``flat``: their fields in one list), largest first.

    One ``executemany`` per size in INSERT_SIZES, each parameter set a slice of ``flat``: the statement is looked
    up once and stepped once per chunk. Measured against an ``execute`` per chunk: the same (the work is the
    binding and the b-tree).
    """
    sql = _PUT_MESSAGES[width]
    done = _chunks(out, sql, INSERT_SIZES[:-1], flat, width)
    if done < len(rows):
        out.append((sql[1], rows[done:]))  # the rest one a statement, the rows themselves: exact tuples bind fastest


def _delete_messages(out: list[tuple[str, Any]], ids: list[int]) -> None:
    """Delete ``ids`` (sorted, each once): runs of adjacent ids by ``BETWEEN``, the rest by ``IN`` in chunks.

    Ids are assigned in arrival order and a consumer commits what it received in order, so the deletes of a batch
    are usually one run or a few. Finding them costs little: a slice of sorted unique ids is one run exactly when
    its last id minus its first is its length minus one, so halving until that holds visits a few slices per run.
    """
    if len(ids) < _FEW_IDS:  # a few ids: one-row deletes, as for a few rows
        out.append((_DELETE_MESSAGES[1], [(key,) for key in ids]))
        return
    runs: list[tuple[int, int]] = []
    rest: list[int] = []
    _find_runs(ids, 0, len(ids), runs, rest)
    if runs:
        out.append((_DELETE_RANGE, runs))
    done = 0
    for size in DELETE_SIZES:
        count = (len(rest) - done) // size
        if not count:
            continue
        if size == 1:
            out.append((_DELETE_MESSAGES[1], [(key,) for key in rest[done:]]))
            return
        out.append((_DELETE_MESSAGES[size], [rest[i : i + size] for i in range(done, done + count * size, size)]))
        done += count * size


def _find_runs(ids: list[int], lo: int, hi: int, runs: list[tuple[int, int]], rest: list[int]) -> None:
    """Split ``ids[lo:hi]`` (sorted, unique) into ``runs`` (first, last) of at least MIN_RUN ids, and ``rest``.

    Appends in ascending order, so a run that halving cut in two joins again with the run before it.
    """
    first, last = ids[lo], ids[hi - 1]
    if last - first == hi - 1 - lo:  # one run
        if runs and runs[-1][1] + 1 == first:
            runs[-1] = (runs[-1][0], last)
        elif hi - lo >= MIN_RUN:
            runs.append((first, last))
        else:
            rest.extend(ids[lo:hi])
    elif hi - lo < 2 * MIN_RUN:  # short and not one run: not worth halving for the few ids a range might take
        rest.extend(ids[lo:hi])
    else:
        mid = (lo + hi) // 2
        _find_runs(ids, lo, mid, runs, rest)
        _find_runs(ids, mid, hi, runs, rest)


def _split(out: list[tuple[str, Any]], put: str, delete: str, items: list[tuple[Any, ...]], nkey: int) -> None:
    """Append the puts (key columns plus the encoded value) and deletes (key columns) of one keyed table, one row a
    step: meta and objects change a few keys a batch."""
    puts = [(*item[:nkey], packb(item[nkey])) for item in items if item[nkey] is not None]
    deletes = [item[:nkey] for item in items if item[nkey] is None]
    if puts:
        out.append((put, puts))
    if deletes:
        out.append((delete, deletes))


def _endpoints(out: list[tuple[str, Any]], records: dict[str, Any]) -> None:
    """Append the endpoint records' upserts and deletes in multi-row statements (see _PUT_ENDPOINTS): a release
    rewrites 100,000 records, and the end of as many conversations deletes them."""
    if not records:
        return
    flat: list[Any] = []
    deletes: list[str] = []
    for handle, value in records.items():
        if value is None:
            deletes.append(handle)
        else:
            flat.append(handle)
            flat.append(packb(value))
    _chunks(out, _PUT_ENDPOINTS, INSERT_SIZES, flat, 2)
    _chunks(out, _DELETE_ENDPOINTS, DELETE_SIZES, deletes, 1)


def _chunks(out: list[tuple[str, Any]], sql: dict[int, str], sizes: tuple[int, ...], flat: list[Any], width: int
            ) -> int:
    """``flat`` (rows of ``width`` values, end to end) in statements of ``sizes`` rows, largest first: one
    ``executemany`` per size, each parameter set a slice of ``flat``. Returns how many rows they took (all, when
    the smallest size is 1)."""
    rows = len(flat) // width
    done = 0
    for size in sizes:
        count = (rows - done) // size
        if count:
            step = size * width
            start = done * width
            out.append((sql[size], [flat[i : i + step] for i in range(start, start + count * step, step)]))
            done += count * size
    return done
