"""The PostgreSQL store's paged reads: a start that reads each queue's first rows only, and pages of a queue's
rows read back while batches are written (``Store.pages``; ``core/paging.py`` says why).

As with SQLite (``sqlite_pages.py``) there is no index on ``location``, which every insert and delete would write:
a location's rows are found by walking the primary key from an id on. The counts at start are one hash aggregate
over the table, whatever the number of queues.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from ..core.records import URGENT_TYPES, MessageRow, StoredRun, row_without_body
from .postgresql_schema import MESSAGE_COLUMNS, row_from_db

_COLUMNS: Final = ", ".join(MESSAGE_COLUMNS)
#: the same with the body's size in place of the body
_COLUMNS_SIZED: Final = ", ".join("octet_length(body)" if c == "body" else c for c in MESSAGE_COLUMNS)
TX: Final = "tx"
#: Error and DialogTimer (``records.URGENT_TYPES``): kept in memory like retained rows, never in a page
_URGENT: Final = sorted(URGENT_TYPES)
_KEPT: Final = "(state <> 0 OR message_type = ANY(%s))"


def _rows(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> list[MessageRow]:
    with conn.cursor(binary=True) as cur:
        cur.execute(sql, params)
        return [row_from_db(record) for record in cur]


def read_paged(
    conn: psycopg.Connection[Any], schema: str, window: int, queues: list[str], tx_bodies: bool = True
) -> tuple[list[MessageRow], dict[str, StoredRun], int]:
    """The rows a paged start reads (by id), what each queue left in the store, and the largest id stored. The
    transmission queue's rows come with their bodies, or (``tx_bodies`` False) with their sizes in their place
    (``records.row_without_body``)."""
    table = f"{schema}.messages"
    counts = conn.execute(
        f"SELECT location, count(*), sum(octet_length(body)), min(id), max(id), count(*) FILTER (WHERE {_KEPT})"
        f" FROM {table} GROUP BY location",
        (_URGENT,),
    ).fetchall()
    known = {TX, *(f"q:{name}" for name in queues)}
    out: list[MessageRow] = []
    stored: dict[str, StoredRun] = {}
    last_id = 0
    for location, count, size, first, last, in_memory in counts:
        last_id = max(last_id, int(last))
        if location == TX and not tx_bodies:
            sql = f"SELECT {_COLUMNS_SIZED} FROM {table} WHERE id >= %s AND location = %s ORDER BY id"
            out += [row_without_body(record) for record in conn.execute(sql, (first, location))]
            continue
        if location not in known or location == TX:
            out += _rows(conn, f"SELECT {_COLUMNS} FROM {table} WHERE id >= %s AND location = %s ORDER BY id", (first, location))
            continue
        kept: list[MessageRow] = []
        if in_memory:  # retained, Error and DialogTimer: all of them
            kept = _rows(
                conn,
                f"SELECT {_COLUMNS} FROM {table} WHERE id >= %s AND location = %s AND {_KEPT} ORDER BY id",
                (first, location, _URGENT),
            )
        ready = _rows(
            conn,
            f"SELECT {_COLUMNS} FROM {table} WHERE id >= %s AND location = %s AND NOT {_KEPT} ORDER BY id LIMIT %s",
            (first, location, _URGENT, window),
        )
        out += kept
        out += ready
        left = int(count) - len(kept) - len(ready)
        if left > 0:
            size = int(size) - sum(len(row[5]) for row in kept) - sum(len(row[5]) for row in ready)
            stored[location] = (left, size, ready[-1][0], int(last))
    out.sort()
    return out, stored, last_id


def read_bodies(conn: psycopg.Connection[Any], schema: str, ids: list[int]) -> dict[int, bytes]:
    """The bodies of the rows with these ids, by id (one index scan for them all)."""
    with conn.cursor(binary=True) as cur:
        cur.execute(f"SELECT id, body FROM {schema}.messages WHERE id = ANY(%s)", (ids,))
        return {int(i): bytes(body) for i, body in cur}


def read_rows(
    conn: psycopg.Connection[Any], schema: str, location: str, after_id: int, upto_id: int, limit: int
) -> list[MessageRow]:
    """Up to ``limit`` ready rows of ``location`` with ids in ``(after_id, upto_id]``, by id, Error and DialogTimer
    left out (they are in memory)."""
    return _rows(
        conn,
        f"SELECT {_COLUMNS} FROM {schema}.messages WHERE id > %s AND id <= %s AND location = %s AND NOT {_KEPT}"
        " ORDER BY id LIMIT %s",
        (after_id, upto_id, location, _URGENT, limit),
    )
