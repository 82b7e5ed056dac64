"""The PostgreSQL store's tables, its fence, and how a batch becomes SQL: one transaction, few round trips.

The tables mirror the SQLite store's (``sqlite_schema.py``), in a PostgreSQL schema of their own (``aiobroker`` by
default), plus ``owner``: one row saying which node owns the store (its ``epoch``, raised by every node that takes
the store over), where clients reach it, and when it last said it was alive (``heartbeat``).

A batch is one transaction that starts with the **fence**, ``fence(epoch, batch)``: it locks the owner row (so a
node taking over waits for the batch to finish, and a batch waits for a take-over to finish), refuses the whole
transaction with SQLSTATE ``AB001`` if another node has raised the epoch since this one took the store, and
records the batch's number, so that a node that lost its connection during COMMIT can tell whether that batch was
written. Then deletes (one ``DELETE ... = ANY(array)``), the keyed tables' puts and deletes, and the message rows:
rows new to the store (ids above any it holds) by ``COPY`` when there are many, by one ``INSERT ... SELECT FROM
unnest(arrays)`` when there are few; rows written before (a message whose state changed) by the same ``unnest``
with ``ON CONFLICT``. ``benchmarks/bench_pg_drivers.py`` measured the shapes (and psycopg against asyncpg).
"""

from __future__ import annotations

import re
from typing import Any, Final

from ..core.records import MessageRow, WriteBatch
from ..errors import ConfigError
from ..wire.codec import packb

#: The schema this code writes (in ``meta``, key ``schema_version``, as in the SQLite store).
SCHEMA_VERSION: Final = 1
SCHEMA_KEY: Final = "schema_version"
#: SQLSTATE the fence raises: a class of our own ("AB"), so it cannot be mistaken for PostgreSQL's.
FENCED_SQLSTATE: Final = "AB001"
#: The advisory lock's first key (the second is the schema's name, hashed): "aiob" as a 32-bit integer, so the
#: lock is told apart from any other application's in ``pg_locks``.
LOCK_CLASS: Final = 0x61696F62
#: New message rows written by ``COPY`` rather than ``INSERT ... unnest`` from this many on (measured, 128 B rows,
#: µs a row, bench_pg_drivers.py: 100 rows 11.7 by COPY against 14.0 by unnest, 10 rows about the same; COPY
#: cannot run in a pipeline, so it costs a round trip of its own).
COPY_ROWS: Final = 32

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
MESSAGE_COLUMNS: Final = ("id", "location", "handle", "seq", "message_type", "body", "enqueued_at", "state", "trace")
_TYPES: Final = ("bigint", "text", "text", "bigint", "text", "bytea", "float8", "int", "text")


def check_schema_name(name: str) -> str:
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ConfigError(
            f"[store] schema {name!r} is not a plain PostgreSQL name: use lower-case letters, digits and _ (at most"
            " 63, not starting with a digit), e.g. schema = \"aiobroker\""
        )
    return name


class Sql:
    """Every statement, for one schema (validated: it is written into the SQL as it is)."""

    def __init__(self, schema: str) -> None:
        s = check_schema_name(schema)
        self.schema = s
        self.create = (
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value bytea)",
            f"CREATE TABLE IF NOT EXISTS {s}.objects (kind text, name text, data bytea, PRIMARY KEY (kind, name))",
            f"CREATE TABLE IF NOT EXISTS {s}.endpoints (handle text PRIMARY KEY, data bytea)",
            # Ids grow in arrival order: inserts append at the right edge of the primary key's b-tree, and the
            # deletes of delivered messages empty pages at its left edge, which a vacuum then hands back.
            f"CREATE TABLE IF NOT EXISTS {s}.messages (id bigint PRIMARY KEY, location text, handle text,"
            " seq bigint, message_type text, body bytea, enqueued_at float8, state int, trace text)"
            # A queue's rows live minutes at most: vacuum after 1% of the table changed (the default is 20%, which
            # on a table that is mostly inserted and deleted again lets dead rows pile up between vacuums).
            " WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.01)",
            f"CREATE TABLE IF NOT EXISTS {s}.owner (id int PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL,"
            " batch bigint NOT NULL DEFAULT 0, url text, pid int, host text, since timestamptz, heartbeat timestamptz)",
            f"INSERT INTO {s}.owner (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
            f"""CREATE OR REPLACE FUNCTION {s}.fence(expected bigint, batch_no bigint) RETURNS void
                LANGUAGE plpgsql AS $$
                DECLARE
                    owning bigint;
                BEGIN
                    UPDATE {s}.owner SET batch = batch_no WHERE id = 1 RETURNING epoch INTO owning;
                    IF owning IS DISTINCT FROM expected THEN
                        RAISE EXCEPTION 'another aiobroker node took this store over (epoch %, this node has %)',
                            owning, expected USING ERRCODE = '{FENCED_SQLSTATE}';
                    END IF;
                END $$""",
        )
        #: serializes two nodes creating the schema at once (a transaction-scoped advisory lock)
        self.create_lock = f"SELECT pg_advisory_xact_lock({LOCK_CLASS}, hashtext('{s}.create'))"
        self.try_lock = f"SELECT pg_try_advisory_lock({LOCK_CLASS}, hashtext('{s}'))"
        self.lock_holder = (
            f"SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            f" AND l.classid = {LOCK_CLASS} AND l.objid = hashtext('{s}')::oid AND l.objsubid = 2"
        )
        self.owner = (
            f"SELECT epoch, url, pid, host, extract(epoch FROM now() - heartbeat), batch FROM {s}.owner WHERE id = 1"
        )
        self.take = (
            f"UPDATE {s}.owner SET epoch = epoch + 1, url = NULL, pid = %s, host = %s, since = now(),"
            " heartbeat = now() WHERE id = 1 RETURNING epoch, batch"
        )
        self.heartbeat = f"UPDATE {s}.owner SET heartbeat = now() WHERE id = 1 AND epoch = %s"
        self.announce = f"UPDATE {s}.owner SET url = %s WHERE id = 1 AND epoch = %s"
        self.batch_no = f"SELECT batch, epoch FROM {s}.owner WHERE id = 1"
        self.fence = f"SELECT {s}.fence(%s, %s)"
        self.get_meta = f"SELECT key, value FROM {s}.meta"
        self.put_meta = (
            f"INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        )
        self.delete_meta = f"DELETE FROM {s}.meta WHERE key = %s"
        self.get_objects = f"SELECT kind, name, data FROM {s}.objects ORDER BY kind, name"
        self.put_object = (
            f"INSERT INTO {s}.objects VALUES (%s, %s, %s) ON CONFLICT (kind, name) DO UPDATE SET data = EXCLUDED.data"
        )
        self.delete_object = f"DELETE FROM {s}.objects WHERE kind = %s AND name = %s"
        self.get_endpoints = f"SELECT handle, data FROM {s}.endpoints ORDER BY handle"
        self.put_endpoint = (
            f"INSERT INTO {s}.endpoints VALUES (%s, %s) ON CONFLICT (handle) DO UPDATE SET data = EXCLUDED.data"
        )
        self.delete_endpoint = f"DELETE FROM {s}.endpoints WHERE handle = %s"
        columns = ", ".join(MESSAGE_COLUMNS)
        self.get_messages = f"SELECT {columns} FROM {s}.messages ORDER BY id"
        self.max_id = f"SELECT coalesce(max(id), 0) FROM {s}.messages"
        self.delete_messages = f"DELETE FROM {s}.messages WHERE id = ANY(%s::bigint[])"
        unnest = ", ".join(f"%s::{t}[]" for t in _TYPES)
        self.insert_messages = f"INSERT INTO {s}.messages ({columns}) SELECT * FROM unnest({unnest})"
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in MESSAGE_COLUMNS[1:])
        self.upsert_messages = f"{self.insert_messages} ON CONFLICT (id) DO UPDATE SET {updates}"
        self.copy_messages = f"COPY {s}.messages ({columns}) FROM STDIN"


def keyed(batch: WriteBatch, sql: Sql) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The puts and deletes of the meta, objects and endpoints tables, each an ``executemany``."""
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    for put, delete, items in (
        (sql.put_meta, sql.delete_meta, [((k,), v) for k, v in batch.meta.items()]),
        (sql.put_object, sql.delete_object, list(batch.objects.items())),
        (sql.put_endpoint, sql.delete_endpoint, [((h,), v) for h, v in batch.endpoints.items()]),
    ):
        puts = [(*key, packb(value)) for key, value in items if value is not None]
        deletes = [key for key, value in items if value is None]
        if puts:
            out.append((put, puts))
        if deletes:
            out.append((delete, deletes))
    return out


def split_messages(
    messages: dict[int, MessageRow | None], max_id: int
) -> tuple[list[int], list[MessageRow], list[MessageRow]]:
    """``(deleted ids, rows new to the store, rows written before)``: a row is new when its id is above every id
    the store has held (ids grow in arrival order, so nearly every put is new and may be appended by COPY)."""
    deleted = [key for key, row in messages.items() if row is None]
    rows = [row for row in messages.values() if row is not None]
    if not rows or rows[0][0] > max_id and all(row[0] > max_id for row in rows):
        return deleted, rows, []
    return deleted, [r for r in rows if r[0] > max_id], [r for r in rows if r[0] <= max_id]


def as_columns(rows: list[MessageRow]) -> list[list[Any]]:
    """Rows as nine column arrays (for ``unnest``); a row without trace context has None there."""
    full = [row if len(row) == 9 else (*row, None) for row in rows]
    return [list(column) for column in zip(*full, strict=True)]


def row_from_db(record: tuple[Any, ...]) -> MessageRow:
    """A row read back, as the core makes it: eight fields without trace context, nine with."""
    (id_, location, handle, seq, message_type, body, enqueued_at, state, trace) = record
    if trace is None:
        return (id_, location, handle, seq, message_type, bytes(body), enqueued_at, state)
    return (id_, location, handle, seq, message_type, bytes(body), enqueued_at, state, trace)
