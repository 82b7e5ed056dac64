"""The PostgreSQL store: a node's durable copy in a PostgreSQL database, so that it outlives the node's machine.

Why PostgreSQL: people already run it replicated and trust it (streaming replication, synchronous standbys,
Patroni, every cloud's managed service), so aiobroker keeps its state there rather than growing a replication of
its own. Why psycopg 3 (``benchmarks/bench_pg_drivers.py``, 2026-12-05): the store interface blocks (the node
calls it from its writer thread), and psycopg has a blocking API, where asyncpg would need an event loop of its
own in that thread; psycopg's pipeline mode sends a small batch's statements and its COMMIT in one round trip, and
its COPY wrote 1,000-row batches at 3.4 µs a row (asyncpg 3.7, asyncpg's unnest 7.3); and it is libpq, so a DSN
means what it means to every other PostgreSQL tool (multi-host DSNs with ``target_session_attrs``, ``.pgpass``,
``PGHOST`` and friends, TLS settings).

**One owner, fenced.** A node owns the store by holding a session advisory lock on a connection of its own (the
*lock connection*), and by an **epoch** in the ``owner`` row that it raised when it took the lock. Every batch
starts with the fence (``postgresql_schema.py``), which refuses the batch if the epoch has moved on. So a node
that lost the lock (its connection cut, or it was paused long enough for a standby to take over) cannot write
another batch, ever: it gets :class:`~aiobroker.store.base.StoreFenced` and steps down.

A second node on the same database finds the lock taken: :meth:`PostgresStore.open` raises
:class:`~aiobroker.store.base.StoreInUse` naming the owner's address, and the node waits as a standby, trying
again. The lock is freed when the owner's connection ends (its process killed: the kernel closes the socket at
once). A process that is paused, or a machine that vanished with its connection open, keeps the lock until
PostgreSQL notices; so the owner also **beats a heart** (``owner.heartbeat``, every ``heartbeat`` seconds, on the
lock connection), and a standby that finds the heartbeat older than ``takeover_after`` seconds ends the owner's
lock session (``pg_terminate_backend``: the standby's role must be the owner's, or have ``pg_signal_backend``)
and takes the lock (``postgresql_owner.py``).

**The database failing over.** When a connection breaks (the primary died and a replica was promoted, as Patroni
or a cloud service does), the store connects again through the DSN for up to ``reconnect_for`` seconds (with
several hosts and ``target_session_attrs=read-write``, libpq finds the new primary), takes its lock again, and
finds out whether the batch it was writing when the connection broke was committed (the fence records every
batch's number in the ``owner`` row): if so it is done, if not it is written again. So a batch is applied exactly
once across a fail-over. If the new primary lacks batches this node was told were committed (an asynchronous
replica was promoted), the store says so and the node stops rather than go on from a state that lost messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import psycopg

from ..core.records import MessageRow, Snapshot, WriteBatch
from ..errors import ConfigError, ProtocolError, StoreError
from ..wire.codec import unpackb
from .base import Store, StoreFenced, StoreInUse
from .postgresql_owner import DatabaseLock
from .postgresql_pages import read_bodies, read_paged, read_rows
from .postgresql_schema import (
    COPY_ROWS,
    FENCED_SQLSTATE,
    SCHEMA_KEY,
    Sql,
    as_columns,
    keyed,
    row_from_db,
    split_messages,
)

log = logging.getLogger("aiobroker.store")

#: seconds between the owner's heartbeats
HEARTBEAT: Final = 1.0
#: a standby takes the store from an owner whose heartbeat is this many seconds old (paused, or cut off)
TAKEOVER_AFTER: Final = 10.0
#: how long a node tries to reach the database again after its connection broke (a fail-over to a replica takes
#: seconds), before it gives up and stops
RECONNECT_FOR: Final = 30.0
#: what the store's connections call themselves in ``pg_stat_activity``
APPLICATION: Final = "aiobroker"


class Unreachable(StoreError):
    """The database cannot be reached (a wrong DSN, a server down, a fail-over under way)."""


class PostgresStore(Store):
    """A node's state in one PostgreSQL schema (``aiobroker`` unless told otherwise) of the database ``dsn``."""

    name = "postgresql"
    pages = True
    durable = True
    inline_rows = 0  # a round trip to a server costs more than handing the batch to the writer thread

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "aiobroker",
        heartbeat: float = HEARTBEAT,
        takeover_after: float = TAKEOVER_AFTER,
        reconnect_for: float = RECONNECT_FOR,
    ) -> None:
        if takeover_after <= 2 * heartbeat:
            raise ConfigError(
                f"[store] takeover_after ({takeover_after}s) must be more than twice heartbeat ({heartbeat}s), or a"
                " standby could take the store from an owner that is alive"
            )
        self.dsn = dsn
        self.sql = Sql(schema)
        self.reconnect_for = reconnect_for
        self.owner = DatabaseLock(self.sql, self.where, self._connect, heartbeat, takeover_after, reconnect_for)
        self._conn: psycopg.Connection[Any] | None = None
        #: the connection pages are read on (``read_rows``, in a thread of its own while the writer writes), made on
        #: the first page
        self._reader: psycopg.Connection[Any] | None = None
        self._reading = threading.Lock()
        #: each queue's rows read at start (``open_paged``); None: every row
        self._window: int | None = None
        #: a paged open reads the transmission queue's bodies (``open_paged``)
        self._tx_bodies = True
        self._batch_no = 0
        self._max_id = 0
        #: the database was reached at least once: later failures to reach it are a fail-over to wait out
        self._reached = False

    # --------------------------------------------------------------------------------------------- naming

    @property
    def where(self) -> str:
        """The database as an operator would name it: ``PostgreSQL host:port/dbname (schema aiobroker)``, every
        host of a multi-host DSN, never the password."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            return f"PostgreSQL (schema {self.sql.schema})"
        hosts = str(info.get("host") or "localhost").split(",")
        ports = str(info.get("port") or "5432").split(",")
        ports += [ports[-1]] * (len(hosts) - len(ports))
        servers = ",".join(f"{h}:{p}" for h, p in zip(hosts, ports, strict=False))
        return f"PostgreSQL {servers}/{info.get('dbname') or info.get('user') or ''} (schema {self.sql.schema})"

    @property
    def location(self) -> str:
        return self.where

    def _connect(self, purpose: str) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name=f"{APPLICATION} {purpose}")
        except psycopg.Error as exc:
            raise Unreachable(
                f"cannot connect to {self.where}: {_first_line(exc)}; check the DSN ([store] dsn or --store) and that"
                " the server runs and accepts this user"
            ) from exc
        self._reached = True
        return conn

    # --------------------------------------------------------------------------------------------- open

    def open_paged(self, window: int, tx_bodies: bool = True) -> Snapshot:
        self._window = window
        self._tx_bodies = tx_bodies
        return self.open()

    def read_rows(self, location: str, after_id: int, upto_id: int, limit: int) -> list[MessageRow]:
        with self._reading:
            try:
                return read_rows(self._reader_connection(), self.sql.schema, location, after_id, upto_id, limit)
            except psycopg.Error as exc:
                raise self._read_failed(exc) from exc

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        with self._reading:
            try:
                return read_bodies(self._reader_connection(), self.sql.schema, ids)
            except psycopg.Error as exc:
                raise self._read_failed(exc) from exc

    def _reader_connection(self) -> psycopg.Connection[Any]:
        """The connection reads run on beside the writer's (made on first use; under ``_reading``)."""
        if self._reader is None:
            if self._conn is None:
                raise StoreError(f"the store in {self.where} is not open")
            self._reader = self._connect("reader")
        return self._reader

    def _read_failed(self, exc: psycopg.Error) -> StoreError:
        reader, self._reader = self._reader, None  # a new connection next time: this one may be broken
        if reader is not None:
            reader.close()
        return StoreError(f"cannot read messages from {self.where}: {_first_line(exc)}")

    def open(self) -> Snapshot:
        reached_before = self._reached
        try:
            try:
                self._batch_no = self.owner.take()
            except Unreachable as exc:
                if not reached_before:
                    raise
                # reached before (a node waiting for the store): the database failing over, to be waited out
                raise StoreInUse(f"{exc.message}; trying again") from exc
            self._conn = self._connect("writer")
            snapshot = self._read(self._conn)
        except StoreInUse:
            raise  # waiting (a standby): the lock connection stays, to ask again without connecting again
        except StoreError:
            self.close()
            raise
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot open the store in {self.where}: {_first_line(exc)}") from exc
        log.info("took the store %s (epoch %d)", self.where, self.owner.epoch)
        self.owner.start()
        return snapshot

    def _read(self, conn: psycopg.Connection[Any]) -> Snapshot:
        sql = self.sql
        snap = Snapshot()
        try:
            for key, value in conn.execute(sql.get_meta):
                if key != SCHEMA_KEY:
                    snap.meta[key] = unpackb(bytes(value))
            snap.objects = [(kind, name, unpackb(bytes(data))) for kind, name, data in conn.execute(sql.get_objects)]
            snap.endpoints = [(handle, unpackb(bytes(data))) for handle, data in conn.execute(sql.get_endpoints)]
        except ProtocolError as exc:
            raise StoreError(f"{self.where} holds a value that does not decode ({exc}); it was not written by"
                             " aiobroker, or is damaged: restore it from a backup") from exc
        if self._window is not None:
            queues = [name for kind, name, _ in snap.objects if kind == "queue"]
            snap.messages, snap.stored, self._max_id = read_paged(conn, sql.schema, self._window, queues, self._tx_bodies)
            return snap
        with conn.cursor(binary=True) as cur:
            cur.execute(sql.get_messages)
            snap.messages = [row_from_db(record) for record in cur]
        self._max_id = snap.messages[-1][0] if snap.messages else int(conn.execute(sql.max_id).fetchone()[0])  # type: ignore[index]
        return snap

    # --------------------------------------------------------------------------------------------- ownership

    def watch(self, lost: Callable[[str], None]) -> None:
        self.owner.watch(lost)

    def announce(self, url: str) -> None:
        self.owner.announce(url)

    # --------------------------------------------------------------------------------------------- write

    def write(self, batch: WriteBatch) -> None:
        if self.owner.lost is not None:
            raise StoreFenced(f"{self.owner.lost}: this node writes nothing more to {self.where}")
        if self._conn is None:
            raise StoreError(f"the store in {self.where} is not open")
        if SCHEMA_KEY in batch.meta:
            raise StoreError(f"meta key {SCHEMA_KEY!r} is reserved for the store itself")
        try:
            tables = keyed(batch, self.sql)
        except ProtocolError as exc:
            raise StoreError(f"cannot store the batch: {exc}") from exc
        deleted, new, old = split_messages(batch.messages, self._max_id)
        self._batch_no += 1
        try:
            self._write(deleted, tables, old, new)
        except BaseException:
            self._batch_no -= 1  # not written: the next batch takes its number (the fence records the last one)
            raise
        if new:
            self._max_id = max(self._max_id, max(row[0] for row in new))

    def _write(
        self,
        deleted: list[int],
        tables: list[tuple[str, list[tuple[Any, ...]]]],
        old: list[MessageRow],
        new: list[MessageRow],
    ) -> None:
        """Apply the batch, connecting again and finding out what became of it if the connection breaks."""
        assert self._conn is not None
        deadline: float | None = None
        while True:
            try:
                self._apply(self._conn, deleted, tables, old, new)
                break
            except psycopg.Error as exc:
                if exc.sqlstate == FENCED_SQLSTATE:
                    self.owner.lose(_first_line(exc))
                    raise StoreFenced(f"{self.owner.lost}: this node writes nothing more to {self.where}") from exc
                if not self._conn.broken and not self._conn.closed:
                    raise StoreError(f"cannot write a batch to {self.where}: {_first_line(exc)}") from exc
                if deadline is None:
                    deadline = time.monotonic() + self.reconnect_for
                    log.warning("lost the connection to %s while writing a batch (%s); connecting again for up to"
                                " %.0fs (a fail-over?)", self.where, _first_line(exc), self.reconnect_for)
                if self._written_after_reconnect(deadline):
                    break

    def _written_after_reconnect(self, deadline: float) -> bool:
        """Connect again (until ``deadline``) and say whether the batch being written was committed before the
        connection broke (its number is the last the fence recorded) or must be written again."""
        while True:
            try:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._connect("writer")
                last, epoch = self._conn.execute(self.sql.batch_no).fetchone()  # type: ignore[misc]
                break
            except (psycopg.Error, StoreError) as exc:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"lost the connection to {self.where} and could not connect again within"
                        f" {self.reconnect_for:.0f}s ({_first_line(exc)}); the last batch may or may not be written:"
                        " the node stops, and a restart reads back what the database has"
                    ) from exc
                time.sleep(0.25)
        if epoch != self.owner.epoch:
            self.owner.lose("another node took the store over while this one was reconnecting")
            raise StoreFenced(f"{self.owner.lost}: this node writes nothing more to {self.where}")
        if last < self._batch_no - 1:
            raise StoreError(
                f"{self.where} is missing {self._batch_no - 1 - last} batch(es) this node was told were committed"
                " (was an asynchronous replica promoted? make the replica synchronous: docs/stores.md); the node"
                " stops rather than go on from a state that lost acknowledged messages"
            )
        log.info("connected to %s again; the interrupted batch %s", self.where,
                 "was committed" if last == self._batch_no else "was not, and is written again")
        return bool(last == self._batch_no)

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        deleted: list[int],
        tables: list[tuple[str, list[tuple[Any, ...]]]],
        old: list[MessageRow],
        new: list[MessageRow],
    ) -> None:
        """One transaction: the fence, then the batch; new rows by COPY when there are many (two round trips),
        else everything and the COMMIT in one pipeline (one round trip)."""
        if len(new) >= COPY_ROWS:
            with conn.transaction():
                with conn.pipeline():
                    self._statements(conn, deleted, tables, old, [])
                with conn.cursor().copy(self.sql.copy_messages) as copy:
                    for row in new:
                        copy.write_row(row if len(row) == 9 else (*row, None))
        else:
            with conn.pipeline(), conn.transaction():
                self._statements(conn, deleted, tables, old, new)

    def _statements(
        self,
        conn: psycopg.Connection[Any],
        deleted: list[int],
        tables: list[tuple[str, list[tuple[Any, ...]]]],
        old: list[MessageRow],
        new: list[MessageRow],
    ) -> None:
        cur = conn.cursor()
        sql = self.sql
        cur.execute(sql.fence, (self.owner.epoch, self._batch_no))
        if deleted:
            cur.execute(sql.delete_messages, (deleted,))
        for statement, params in tables:
            cur.executemany(statement, params)
        if old:
            cur.execute(sql.upsert_messages, as_columns(old))
        if new:
            cur.execute(sql.insert_messages, as_columns(new))

    # --------------------------------------------------------------------------------------------- close

    def close(self) -> None:
        self.owner.close()
        with self._reading:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def describe(self) -> dict[str, Any]:
        return {
            "store": self.name,
            "durable": True,
            "database": self.where,
            "epoch": self.owner.epoch,
            "owner": self.owner.lost is None and self._conn is not None,
        }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


__all__ = ["PostgresStore"]
