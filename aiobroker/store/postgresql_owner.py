"""Who owns a PostgreSQL store: the advisory lock, the epoch, the heartbeat, and taking over from a stuck owner.

A node owns the store while it holds a session advisory lock on a connection of its own (the *lock connection*)
and the epoch it wrote into the ``owner`` row when it took the lock; every batch checks that epoch (the fence, in
``postgresql_schema.py``). The heartbeat thread says every ``heartbeat`` seconds that the owner is alive; a node
waiting for the store takes it from an owner whose heartbeat is ``takeover_after`` seconds old, by ending that
owner's lock session (``pg_terminate_backend``).

A lock connection that breaks (the database failing over to a replica, a cut connection) is made again, through
the DSN (with several hosts and ``target_session_attrs=read-write`` it reaches whichever server is the primary
now), and the lock taken again: if no other node took the store meanwhile (the epoch is still this node's) the
node carries on; otherwise it has lost the store and is told so, once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..errors import StoreError
from ..wire.codec import packb, unpackb
from .base import StoreInUse
from .postgresql_schema import SCHEMA_KEY, SCHEMA_VERSION, Sql

log = logging.getLogger("aiobroker.store")

#: tries (0.1 s apart) to take the lock after ending a stale owner's session
_LOCK_TRIES = 50

Connect = Callable[[str], "psycopg.Connection[Any]"]


class DatabaseLock:
    """The lock connection and what it holds. ``take`` makes this node the owner (or raises StoreInUse);
    ``lost`` is set, and the ``watch`` callback called, once this node no longer owns the store."""

    def __init__(
        self, sql: Sql, where: str, connect: Connect, heartbeat: float, takeover_after: float, reconnect_for: float
    ) -> None:
        self.sql = sql
        self.where = where
        self._connect = connect
        self.heartbeat = heartbeat
        self.takeover_after = takeover_after
        self.reconnect_for = reconnect_for
        self.epoch = 0
        #: why this node no longer owns the store (None while it does)
        self.lost: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._watcher: Callable[[str], None] | None = None
        self._url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------- taking

    def take(self) -> int:
        """Create the schema if needed, take the lock (or raise StoreInUse naming the owner), raise the epoch.
        Returns the number of the last batch written (by whichever node), so batches go on counting from it."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect("lock")
        conn = self._conn
        self._create_schema(conn)
        if not conn.execute(self.sql.try_lock).fetchone()[0]:  # type: ignore[index]
            self._take_from_stale_owner(conn)
        epoch, batch_no = conn.execute(self.sql.take, (os.getpid(), socket.gethostname())).fetchone()  # type: ignore[misc]
        self.epoch, self.lost = int(epoch), None
        return int(batch_no)

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

    def _take_from_stale_owner(self, conn: psycopg.Connection[Any]) -> None:
        """The lock is held: wait (raise StoreInUse), unless the holder stopped beating ``takeover_after`` ago."""
        epoch, url, pid, host, age, _ = conn.execute(self.sql.owner).fetchone()  # type: ignore[misc]
        who = f"the node at {url}" if url else f"pid {pid} on {host}" if pid else "another node"
        if age is None or float(age) < self.takeover_after:
            alive = f", alive {float(age):.1f}s ago" if age is not None else ""
            raise StoreInUse(f"the store in {self.where} is owned by {who} (epoch {epoch}{alive})", owner=url)
        holders = [row[0] for row in conn.execute(self.sql.lock_holder).fetchall()]
        log.warning(
            "the owner of %s (%s, epoch %s) has not beaten its heart for %.1fs (takeover_after %.1fs): ending its"
            " lock session (PostgreSQL backend %s) and taking the store over",
            self.where, who, epoch, float(age), self.takeover_after, ", ".join(map(str, holders)) or "none",
        )
        for backend in holders:
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
        # the session ends (and its lock goes) a moment after it is told to: ask for the lock a few times
        for _ in range(_LOCK_TRIES):
            if conn.execute(self.sql.try_lock).fetchone()[0]:  # type: ignore[index]
                return
            time.sleep(0.1)
        raise StoreInUse(f"the store in {self.where} is owned by {who}; its lock was not released yet", owner=url)

    # ------------------------------------------------------------------------------------------------- keeping

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="aiobroker-store-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Every ``heartbeat`` seconds: say this node still owns the store. A broken lock connection is made again
        and the lock taken again (a fail-over); a newer epoch, or no lock to be had, means the store is lost."""
        while not self._stop.wait(self.heartbeat):
            try:
                assert self._conn is not None
                owned = self._conn.execute(self.sql.heartbeat, (self.epoch,)).rowcount == 1
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return
                why = self._regain(exc)
                if why is None:
                    continue
                self.lose(why)
                return
            if not owned:
                self.lose("its epoch moved on: another node took it")
                return

    def _regain(self, cause: psycopg.Error) -> str | None:
        """Make the lock connection again and take the lock again: None when this node still owns the store, else
        why not."""
        log.warning(
            "lost the connection that holds the lock on %s (%s); connecting again for up to %.0fs (a fail-over?)",
            self.where, _first_line(cause), self.reconnect_for,
        )
        deadline = time.monotonic() + self.reconnect_for
        while not self._stop.is_set():
            try:
                if self._conn is not None:
                    self._conn.close()
                self._conn = self._connect("lock")
                if not self._conn.execute(self.sql.try_lock).fetchone()[0]:  # type: ignore[index]
                    return "its lock is held by another node now"
                if self._conn.execute(self.sql.heartbeat, (self.epoch,)).rowcount != 1:
                    return "its epoch moved on: another node took it"
                if self._url is not None:
                    self._conn.execute(self.sql.announce, (self._url, self.epoch))
                log.info("took the lock on %s again (epoch %d): still the owner", self.where, self.epoch)
                return None
            except (psycopg.Error, StoreError) as exc:
                if time.monotonic() > deadline:
                    return (f"lost the connection that holds the store's lock and could not make it again within"
                            f" {self.reconnect_for:.0f}s ({_first_line(exc)})")
                self._stop.wait(min(0.5, self.heartbeat))
        return "the store was closed"

    def lose(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            log.error("no longer the owner of %s: %s", self.where, reason)
            if self._watcher is not None:
                self._watcher(reason)

    def watch(self, lost: Callable[[str], None]) -> None:
        self._watcher = lost
        if self.lost is not None:
            lost(self.lost)

    def announce(self, url: str) -> None:
        self._url = url
        if self._conn is not None and self.lost is None:
            try:
                self._conn.execute(self.sql.announce, (url, self.epoch))
            except psycopg.Error as exc:
                log.warning("could not record this node's address in %s: %s", self.where, _first_line(exc))

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.heartbeat + 5)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # the lock connection's end frees the advisory lock
            except psycopg.Error:
                pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
