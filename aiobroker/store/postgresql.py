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
and takes the lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, Final

import psycopg

from ..core.records import MessageRow, Snapshot, WriteBatch
from ..errors import ConfigError, ProtocolError, StoreError
from ..wire.codec import packb, unpackb
from .base import Store, StoreFenced, StoreInUse
from .postgresql_schema import (
    COPY_ROWS,
    FENCED_SQLSTATE,
    MESSAGE_COLUMNS,
    SCHEMA_KEY,
    SCHEMA_VERSION,
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
#: what the store's connections call themselves in ``pg_stat_activity``
APPLICATION: Final = "aiobroker"


class PostgresStore(Store):
    """A node's state in one PostgreSQL schema (``aiobroker`` unless told otherwise) of the database ``dsn``."""

    name = "postgresql"
    durable = True
    inline_rows = 0  # a round trip to a server costs more than handing the batch to the writer thread

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "aiobroker",
        heartbeat: float = HEARTBEAT,
        takeover_after: float = TAKEOVER_AFTER,
    ) -> None:
        if takeover_after <= 2 * heartbeat:
            raise ConfigError(
                f"[store] takeover_after ({takeover_after}s) must be more than twice heartbeat ({heartbeat}s), or a"
                " standby could take the store from an owner that is alive"
            )
        self.dsn = dsn
        self.sql = Sql(schema)
        self.heartbeat = heartbeat
        self.takeover_after = takeover_after
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._epoch = 0
        self._batch_no = 0
        self._max_id = 0
        self._fenced: str | None = None
        self._lost: Callable[[str], None] | None = None
        self._stop_beating = threading.Event()
        self._beating: threading.Thread | None = None
        self._closed = False

    # --------------------------------------------------------------------------------------------- naming

    @property
    def where(self) -> str:
        """The database as an operator would name it: ``host:port/dbname, schema aiobroker`` (no password)."""
        try:
            info = psycopg.conninfo.conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            return f"schema {self.sql.schema}"
        host = info.get("host") or "localhost"
        port = info.get("port") or "5432"
        return f"PostgreSQL {host}:{port}/{info.get('dbname') or info.get('user') or ''} (schema {self.sql.schema})"

    @property
    def location(self) -> str:
        return self.where

    def _connect(self, purpose: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.dsn, autocommit=True, application_name=f"{APPLICATION} {purpose}")
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to {self.where}: {_first_line(exc)}; check the DSN ([store] dsn or --store) and that"
                " the server runs and accepts this user"
            ) from exc

    # --------------------------------------------------------------------------------------------- open

    def open(self) -> Snapshot:
        self._closed = False
        if self._lock_conn is None or self._lock_conn.closed:
            self._lock_conn = self._connect("lock")
        lock = self._lock_conn
        try:
            self._create_schema(lock)
            if not lock.execute(self.sql.try_lock).fetchone()[0]:  # type: ignore[index]
                self._take_from_stale_owner(lock)
            epoch, batch_no = lock.execute(self.sql.take, (os.getpid(), socket.gethostname())).fetchone()  # type: ignore[misc]
            self._epoch, self._batch_no = int(epoch), int(batch_no)
            self._conn = self._connect("writer")
            snapshot = self._read(self._conn)
        except StoreError:
            self.close()
            raise
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot open the store in {self.where}: {_first_line(exc)}") from exc
        self._fenced = None
        log.info("took the store %s (epoch %d)", self.where, self._epoch)
        self._stop_beating.clear()
        self._beating = threading.Thread(target=self._beat, name="aiobroker-store-heartbeat", daemon=True)
        self._beating.start()
        return snapshot

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute(self.sql.create_lock)
            for statement in self.sql.create:
                conn.execute(statement)
            found = conn.execute(f"SELECT value FROM {self.sql.schema}.meta WHERE key = %s", (SCHEMA_KEY,)).fetchone()
            if found is None:
                conn.execute(self.sql.put_meta, (SCHEMA_KEY, packb(SCHEMA_VERSION)))
            elif (version := unpackb(bytes(found[0]))) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.where} was written by a newer aiobroker (store schema {version}, this one reads up to"
                    f" {SCHEMA_VERSION}); upgrade aiobroker on this node"
                )

    def _take_from_stale_owner(self, lock: psycopg.Connection[Any]) -> None:
        """The lock is held: wait (raise StoreInUse), unless the holder stopped beating ``takeover_after`` ago."""
        epoch, url, pid, host, age, _ = lock.execute(self.sql.owner).fetchone()  # type: ignore[misc]
        who = f"the node at {url}" if url else f"pid {pid} on {host}" if pid else "another node"
        if age is None or float(age) < self.takeover_after:
            raise StoreInUse(
                f"the store in {self.where} is owned by {who} (epoch {epoch}"
                + (f", alive {float(age):.1f}s ago)" if age is not None else ")"),
                owner=url,
            )
        holders = [row[0] for row in lock.execute(self.sql.lock_holder).fetchall()]
        log.warning(
            "the owner of %s (%s, epoch %s) has not beaten its heart for %.1fs (takeover_after %.1fs): ending its"
            " lock session (PostgreSQL backend %s) and taking the store over",
            self.where, who, epoch, float(age), self.takeover_after, ", ".join(map(str, holders)) or "none",
        )
        for backend in holders:
            lock.execute("SELECT pg_terminate_backend(%s, 5000)", (backend,))
        if not lock.execute(self.sql.try_lock).fetchone()[0]:  # type: ignore[index]
            raise StoreInUse(f"the store in {self.where} is owned by {who}; its lock was not released yet", owner=url)

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
        with conn.cursor(binary=True) as cur:
            cur.execute(sql.get_messages)
            snap.messages = [row_from_db(record) for record in cur]
        self._max_id = snap.messages[-1][0] if snap.messages else int(conn.execute(sql.max_id).fetchone()[0])  # type: ignore[index]
        return snap

    # --------------------------------------------------------------------------------------------- ownership

    def _beat(self) -> None:
        """The heartbeat thread: say every ``heartbeat`` seconds that this node still owns the store; when it does
        not (another node raised the epoch) or cannot say (the lock connection is gone), tell the node, once."""
        lock = self._lock_conn
        while not self._stop_beating.wait(self.heartbeat):
            try:
                assert lock is not None
                owned = lock.execute(self.sql.heartbeat, (self._epoch,)).rowcount == 1
            except psycopg.Error as exc:
                if self._stop_beating.is_set():
                    return
                self._lose(f"lost the connection that holds the store's lock ({_first_line(exc)}); another node may"
                           " take the store over")
                return
            if not owned:
                self._lose("another node took the store over (its epoch is newer than this node's)")
                return

    def _lose(self, reason: str) -> None:
        if self._fenced is None:
            self._fenced = reason
            if self._lost is not None:
                self._lost(reason)

    def watch(self, lost: Callable[[str], None]) -> None:
        self._lost = lost
        if self._fenced is not None:
            lost(self._fenced)

    def announce(self, url: str) -> None:
        if self._lock_conn is not None and self._fenced is None:
            try:
                self._lock_conn.execute(self.sql.announce, (url, self._epoch))
            except psycopg.Error as exc:
                log.warning("could not record this node's address in %s: %s", self.where, _first_line(exc))

    # --------------------------------------------------------------------------------------------- write

    def write(self, batch: WriteBatch) -> None:
        if self._fenced is not None:
            raise StoreFenced(f"{self._fenced}: this node writes nothing more to {self.where}")
        conn = self._conn
        if conn is None or self._closed:
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
            if len(new) >= COPY_ROWS:
                with conn.transaction():
                    with conn.pipeline():
                        self._statements(conn, deleted, tables, old, [])
                    with conn.cursor().copy(self.sql.copy_messages) as copy:
                        for row in new:
                            copy.write_row(row if len(row) == 9 else (*row, None))
            else:
                with conn.pipeline(), conn.transaction():  # one round trip: the statements and the COMMIT
                    self._statements(conn, deleted, tables, old, new)
        except psycopg.Error as exc:
            if exc.sqlstate == FENCED_SQLSTATE:
                self._lose(_first_line(exc))
                raise StoreFenced(f"{self._fenced}: this node writes nothing more to {self.where}") from exc
            raise StoreError(f"cannot write a batch to {self.where}: {_first_line(exc)}") from exc
        if new:
            self._max_id = max(self._max_id, max(row[0] for row in new))

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
        cur.execute(sql.fence, (self._epoch, self._batch_no))
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
        self._closed = True
        self._stop_beating.set()
        beating, self._beating = self._beating, None
        if beating is not None and beating is not threading.current_thread():
            beating.join(timeout=self.heartbeat + 5)
        for attr in ("_conn", "_lock_conn"):
            conn = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                try:
                    conn.close()  # the lock connection's end frees the advisory lock
                except psycopg.Error:
                    pass

    def describe(self) -> dict[str, Any]:
        return {
            "store": self.name,
            "durable": True,
            "database": self.where,
            "epoch": self._epoch,
            "owner": self._fenced is None and self._conn is not None,
        }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


__all__ = ["MESSAGE_COLUMNS", "PostgresStore"]
