"""The SQLite store's paged reads: a start that reads each queue's first rows only, and pages of a queue's rows
read back while batches are written.

Why no index on ``location``: every message is inserted once and deleted once, and an index would be written on
both, on the write path the node's throughput rests on. A queue's rows are found by walking the table from an id
on, in id order (the rowid b-tree), keeping those of the queue: a queue holding most of a backlog (the case that
pages) is read at the table's own speed, and one whose rows are sparse among others' costs the others' rows
walked over (measured, 10,000,000 rows of 128 B: a page of 10,000 rows of a queue holding 98% of them in 11 ms).

What a start reads (:func:`read_paged`): one walk of the whole table that counts each location's rows, their bytes
and last id, without building a row in Python (SQLite's ``FILTER`` aggregates: 2.3 s for 10,000,000 rows of 128 B
with a queue and the transmission queue, each further queue adding per row); then every transmission-queue row,
every retained row, and each queue's first ``window`` ready rows, by id.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

from ..core.records import URGENT_TYPES, MessageRow, StoredRun, row_without_body

#: the transmission queue's location (``core/ledger.py``); every row of it is read at start
TX: Final = "tx"
_COLUMNS: Final = "id, location, handle, seq, message_type, body, enqueued_at, state, trace"
#: the same with the body's size in place of the body
_COLUMNS_SIZED: Final = "id, location, handle, seq, message_type, length(body), enqueued_at, state, trace"
#: Error and DialogTimer (``records.URGENT_TYPES``): kept in memory like retained rows, never in a page
_URGENT: Final = tuple(sorted(URGENT_TYPES))
_IS_URGENT: Final = f"message_type IN ({', '.join('?' * len(_URGENT))})"


def rows_of(cursor: Any) -> list[MessageRow]:
    """Result rows as message rows: eight fields without trace context, nine with (``core/records.py``)."""
    return [row if row[8] is not None else row[:8] for row in cursor.fetchall()]


def read_paged(
    conn: sqlite3.Connection, window: int, queues: list[str], tx_bodies: bool = True
) -> tuple[list[MessageRow], dict[str, StoredRun]]:
    """The rows a paged start reads (ordered by id), and what each queue left in the store. ``queues``: the
    queues' names; rows of any other location (a queue dropped under a crash) are read whole, for the node to
    drop them and say so. The transmission queue's rows come with their bodies, or (``tx_bodies`` False) with
    their sizes in their place (``records.row_without_body``)."""
    locations = [TX, *(f"q:{name}" for name in queues)]
    counts, others, kept_rows = _count(conn, locations)
    out: list[MessageRow] = []
    if kept_rows:  # received messages a queue keeps (retention), Error and DialogTimer: all, wherever they are
        out += rows_of(conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE (state <> 0 OR {_IS_URGENT}) AND location <> ? ORDER BY id",
            (*_URGENT, TX),
        ))
    kept: dict[str, list[int]] = {}
    for row in out:
        if row[1] != TX:
            held = kept.setdefault(row[1], [0, 0])
            held[0] += 1
            held[1] += len(row[5])
    stored: dict[str, StoredRun] = {}
    for location, (count, size, last) in zip(locations, counts, strict=True):
        if not count:
            continue
        if location == TX:
            if tx_bodies:
                out += rows_of(conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE location = ? ORDER BY id", (TX,)))
            else:
                sql = f"SELECT {_COLUMNS_SIZED} FROM messages WHERE location = ? ORDER BY id"
                out += [row_without_body(row) for row in conn.execute(sql, (TX,))]
            continue
        # by id from the start: a queue holding much of the table finds its window in its first pages
        ready = rows_of(conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE location = ? AND state = 0 AND NOT {_IS_URGENT} ORDER BY id"
            " LIMIT ?",
            (location, *_URGENT, window),
        ))
        out += ready
        n_kept, size_kept = kept.get(location, (0, 0))
        left = count - n_kept - len(ready)
        if left > 0:
            size -= size_kept + sum(len(row[5]) for row in ready)
            stored[location] = (left, size, ready[-1][0], last)
    if others:
        marks = ", ".join("?" * len(locations))
        out += rows_of(conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE location NOT IN ({marks}) AND state = 0 AND NOT {_IS_URGENT}",
            (*locations, *_URGENT),
        ))
    out.sort()  # by id: the first field, unique
    return out, stored


def _count(conn: sqlite3.Connection, locations: list[str]) -> tuple[list[tuple[int, int, int]], int, int]:
    """Per location: (rows, bodies' bytes, last id); then the rows of no location named, and the rows kept in memory
    wherever they are (retained, or Error and DialogTimer: read whole, outside the transmission queue). One pass, no row built in Python: each aggregate costs per row, so these are the fewest
    that say what the start needs (measured, 10,000,000 rows of 128 B, two locations: 2.3 s; with the first id and
    the retained rows per location too, 3.1 s)."""
    parts = []
    for i in range(1, len(locations) + 1):
        at = f"location = ?{i}"
        parts.append(
            f"count(*) FILTER (WHERE {at}), sum(length(body)) FILTER (WHERE {at}), max(id) FILTER (WHERE {at})"
        )
    named = ", ".join(f"?{i}" for i in range(1, len(locations) + 1))
    n = len(locations)
    urgent = ", ".join(f"?{n + 1 + i}" for i in range(len(_URGENT)))
    parts.append(
        f"count(*) FILTER (WHERE location NOT IN ({named})),"
        f" count(*) FILTER (WHERE state <> 0 OR message_type IN ({urgent}))"
    )
    (found,) = conn.execute(f"SELECT {', '.join(parts)} FROM messages", (*locations, *_URGENT)).fetchall()
    values = [int(v or 0) for v in found]
    counts = [(values[i], values[i + 1], values[i + 2]) for i in range(0, 3 * len(locations), 3)]
    return counts, values[-2], values[-1]


#: ids per ``SELECT ... IN``: under SQLite's default limit of host parameters (32,766), and a statement's worth
_BODIES_AT_ONCE: Final = 500


def read_bodies(conn: sqlite3.Connection, ids: list[int]) -> dict[int, bytes]:
    """The bodies of the rows with these ids, by id (the rowid: one b-tree search each); an id with no row is left
    out.

    Each chunk comes back as one row of three values (:func:`_bodies_at_once`), not a row a body: ``sqlite3`` lets go
    of the interpreter's lock at every step of a statement, and while the store's writer or checkpointer thread
    waits for it, every row read hands the lock over and waits to take it back. Measured
    (``benchmarks/bench_writer_gil.py``), 10,000 bodies of 128 B in chunks of 500 beside a thread writing endpoint
    records: 3.13 us of wall time a body a row at a time, 1.15 in one row; with the thread idle 0.68 against 0.89
    (splitting the ids and lengths), and a release reads while its writes are being written. Bodies too big to go
    together (past SQLite's length limit) are read a row at a time."""
    out: dict[int, bytes] = {}
    for start in range(0, len(ids), _BODIES_AT_ONCE):
        chunk = ids[start : start + _BODIES_AT_ONCE]
        marks = ", ".join("?" * len(chunk))
        try:
            out.update(_bodies_at_once(conn, marks, chunk))
        except sqlite3.DataError:  # "string or blob too big": together they pass SQLite's length limit
            out.update(conn.execute(f"SELECT id, body FROM messages WHERE id IN ({marks})", chunk).fetchall())
    return out


def _bodies_at_once(conn: sqlite3.Connection, marks: str, chunk: list[int]) -> dict[int, bytes]:
    """The chunk's ids, their bodies' lengths, and the bodies end to end, as one row: ``group_concat`` takes a
    blob's bytes as they are (the database is UTF-8, so no conversion) and the three aggregates of one statement
    see the rows in the same order."""
    ((ids, lengths, joined),) = conn.execute(
        f"SELECT group_concat(id), group_concat(ifnull(length(body), 0)), CAST(group_concat(body, '') AS BLOB) FROM messages"
        f" WHERE id IN ({marks})",
        chunk,
    ).fetchall()
    if ids is None:  # no row
        return {}
    out: dict[int, bytes] = {}
    at = 0
    for key, length in zip(map(int, ids.split(",")), map(int, lengths.split(",")), strict=True):
        out[key] = joined[at : at + length]
        at += length
    return out


def read_rows(conn: sqlite3.Connection, location: str, after_id: int, upto_id: int, limit: int) -> list[MessageRow]:
    """Up to ``limit`` ready rows of ``location`` with ids in ``(after_id, upto_id]``, by id, Error and DialogTimer
    left out (they are in memory)."""
    return rows_of(conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE id > ? AND id <= ? AND location = ? AND state = 0 AND NOT {_IS_URGENT}"
        " ORDER BY id LIMIT ?",
        (after_id, upto_id, location, *_URGENT, limit),
    ))
