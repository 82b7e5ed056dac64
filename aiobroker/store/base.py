"""The store interface: what a node needs to survive a restart.

The node's state lives in memory (the core); the store is its durable copy. The node hands the store one
:class:`WriteBatch` at a time, from one writer (a thread, or the event loop for a small batch: ``inline_rows``), and
the store applies it as **one transaction**; at start the
node reads everything back with :meth:`Store.open`. A message is acknowledged to its sender only after the batch
that holds it has been written (group commit: many messages, many conversations, one transaction).

The records a store reads and writes (:class:`~aiobroker.core.records.WriteBatch`,
:class:`~aiobroker.core.records.Snapshot`, the message row) are data the core shares; they live in
:mod:`aiobroker.core.records`, which says what a batch's values may be.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ..core.records import MessageRow, Snapshot, WriteBatch
from ..errors import StoreError


class StoreInUse(StoreError):
    """Another node has the store open (its data directory is locked, or it holds the database's lock): it may be
    free again soon, unlike a store that is damaged or unreadable. A node with ``[node] store_wait`` waits for it,
    as a standby.

    ``owner`` is the address the holder announced to clients (:meth:`Store.announce`), when the store knows it: a
    standby tells clients to go there."""

    def __init__(self, message: str, owner: str | None = None) -> None:
        super().__init__(message)
        self.owner = owner


class StoreFenced(StoreError):
    """Another node has taken this store over (this one was paused, or cut off from the database, for long enough
    that a standby took the lock): this node must not write again. Nothing of the refused batch is applied; the
    node steps down."""


class Store(ABC):
    """A node's durable state. Every method blocks; the node calls them from one thread at a time."""

    #: short name used in logs and ``status``: ``"sqlite"``, ``"memory"``
    name: str = "store"
    #: whether what is written survives the process (False for the memory store)
    durable: bool = False
    #: a batch of at most this many rows is written in the caller, on the event loop, rather than handed to the
    #: writer thread: when a write costs less than the two thread switches that would carry it (a small
    #: transaction that does not fsync), the hop is the slow part. 0: every batch goes to the thread.
    inline_rows: int = 0
    #: whether :meth:`read_bodies` is cheap enough to call on the event loop, a slice of ids at a time (a local file:
    #: SQLite); else the node reads in a worker thread (a database over the network)
    inline_reads: bool = False

    #: whether the store can leave a queue's rows in itself and hand them back in pages (:meth:`open` with a
    #: ``window``, :meth:`read_rows`): then the node keeps only each queue's first rows in memory, bodies and all,
    #: and reads the rest as receivers drain it. A store that cannot (False) is read back whole at start.
    pages: bool = False

    @property
    def location(self) -> str | None:
        """Where the store keeps the state, as an operator would find it (a directory, a database), for the node's
        log lines; None for a store that keeps nothing."""
        return None

    @abstractmethod
    def open(self) -> Snapshot:
        """Open (creating if needed) and read everything back. Raises :class:`~aiobroker.errors.StoreError` with
        a message naming the path and what to do when the store is corrupt, locked by another node, or not
        writable."""

    def open_paged(self, window: int, tx_bodies: bool = True) -> Snapshot:
        """Open as :meth:`open` does, but read back of each queue (a location ``q:NAME``) only its first
        ``window`` ready rows (state 0, by id) besides all its retained ones (state 1) and all its Error and
        DialogTimer messages (``records.URGENT_TYPES``: a receive hands them out first, so they are always in
        memory), and every row of the transmission queue, with its body, or without it (``tx_bodies`` False: an
        ``InStore`` of its size in its place, ``records.row_without_body``; the node reads them with
        :meth:`read_bodies` as they move on); say in ``Snapshot.stored`` what was left, per location.
        Only for a store that ``pages``."""
        raise NotImplementedError(f"the {self.name} store does not page")

    def read_rows(self, location: str, after_id: int, upto_id: int, limit: int) -> list[MessageRow]:
        """Up to ``limit`` ready rows (state 0) of ``location`` with ids in ``(after_id, upto_id]``, by id, Error
        and DialogTimer left out (they are in memory). Called
        from a thread of its own while batches are written: it must not wait for a write to finish, nor see one
        half done. Only for a store that ``pages``."""
        raise NotImplementedError(f"the {self.name} store does not page")

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        """The bodies of the rows with these ids, by id (an id the store does not hold is left out): the bodies of
        DELAYED messages, which the node leaves in a store that pages until their conversation moves on. Called as
        :meth:`read_rows` is. Only for a store that ``pages``."""
        raise NotImplementedError(f"the {self.name} store does not page")

    @abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Apply ``batch`` as one transaction; when this returns, the batch is as durable as the store promises.
        Raises :class:`~aiobroker.errors.StoreError` (e.g. disk full); then nothing of the batch is applied."""

    @abstractmethod
    def close(self) -> None:
        """Release files and locks. Safe to call twice."""

    def announce(self, url: str) -> None:
        """Record where clients reach the node that owns the store (``tcp://host:port``), once it listens, so that a
        node waiting for the store can send clients there. A store that cannot be shared need not keep it."""
        return None

    def watch(self, lost: Callable[[str], None]) -> None:
        """Call ``lost(reason)``, once, from any thread, if the store finds that this node no longer owns it (the
        database's lock was lost, another node took over). A store that cannot lose its owner never calls it; one
        that can also refuses every later batch with :class:`StoreFenced`."""
        return None

    def abandon(self) -> None:
        """Close after a start that failed before anything was written: undo what :meth:`open` created (a new
        database, a new data directory), so that a failed start leaves the store as it found it. A store that
        existed before is closed untouched."""
        self.close()

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows about the store (path, durability, size)."""
        return {"store": self.name, "durable": self.durable}
