"""Group commit: the one task that makes the core's changes durable, then lets their effects be seen.

Every request handler changes the core at once and registers what must wait for durability (its reply) with
:meth:`StoreWriter.after_commit`. The writer loop takes everything gathered so far as one batch (``core.seal()``),
writes it in a worker thread (the event loop keeps serving meanwhile, and what arrives during the write gathers
into the next batch), then publishes the batch's messages to their queues and runs its callbacks, in that order.
A batch no larger than the store's ``inline_rows`` is written on the event loop instead: a transaction of a few
rows that does not fsync costs less than the thread hop that would carry it, and at a moderate rate nearly every
batch is that small. The loop stands still for the write (~0.1 ms); what arrives meanwhile waits in the socket
buffers and gathers into the next batch all the same. The loop yields after every batch, so work that a batch's
callbacks make cannot hold the event loop from one inline write to the next.
Batches are written and published strictly one after another, so replies and deliveries keep the order their
requests had.

A store that keeps nothing (``durable`` false: the memory store) has nothing to wait for, so :meth:`kick` commits
at once, in the caller: the messages of the requests just handled are in their queues, waiting receives served and
replies queued before the caller returns, instead of a loop iteration later in the writer task, which had to be
woken for every request (a task switch and an event each, at thousands of requests a second).

A failed write leaves memory ahead of disk with no way back; the writer then raises, and the node stops rather
than acknowledge anything further (a restart reloads the last consistent state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..core.broker import BrokerCore, Pending
from ..store.base import Store
from .counters import Counters

log = logging.getLogger("aiobroker.store")


class StoreWriter:
    def __init__(
        self,
        core: BrokerCore,
        store: Store,
        on_published: Callable[[set[str]], None],
        on_durable: Callable[[], None] | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.core = core
        self.store = store
        self.on_published = on_published
        #: called after a write when links have messages that may now leave (see ``core.durable_upto``)
        self.on_durable = on_durable
        self._callbacks: list[Callable[[], None]] = []
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._committing = False
        self.batches = 0
        self.inline_batches = 0  #: of ``batches``, those written on the event loop (``Store.inline_rows``)
        self.rows_written = 0
        self.write_seconds = 0.0
        self.largest_batch = 0
        #: each write's latency and rows, for ``/metrics``
        self.counters = counters or Counters()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything changed so far is durable (and published)."""
        self._callbacks.append(callback)
        self._wake.set()

    def kick(self) -> None:
        """Changes were made (and maybe callbacks registered): write them soon. With a store that keeps nothing,
        now: every path that changes the core calls this once it is done (``Node.after_core`` and the like)."""
        if not self.store.durable and not self._committing:
            if self._has_work():
                self._commit_now()
            return
        self._wake.set()
        core = self.core
        if (core.tx.ready_links and core.durable_upto >= core.ledger.next_message_id - 1
                and not core.conversations.secured_count and self.on_durable is not None):
            # Every message there is, is stored: what a link would send need not wait for this write (a release of
            # DELAYED messages writes endpoint records, 100,000 in a storm, and made the links wait for them).
            # A link that finds a row not yet stored takes none of it and is woken again after the write. Not
            # while any conversation is secured: a session key must be stored before the first message sealed
            # with it leaves (a node restarted without it would make another, which the far side cannot open).
            self.on_durable()

    def _has_work(self) -> bool:
        # links with messages to send count too: they are woken after a write (even an empty one, with a store
        # that keeps nothing), once what they would send is durable
        return self._has_writes() or bool(self.core.tx.ready_links)

    def _has_writes(self) -> bool:
        """Something to store or publish (not just links to wake)."""
        core = self.core
        return bool(self._callbacks or core.pending or core.changes or core.dirty)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._has_work():
                await self.commit_once()
                # A batch written inline did not yield: let the readers run before the next one (what they bring
                # joins it), so that work made by callbacks cannot hold the event loop batch after batch.
                await anyio.lowlevel.checkpoint()

    async def commit_once(self) -> None:
        if not self.store.durable:
            self._commit_now()
            return
        batch, pending = self.core.seal()
        sealed_upto = self.core.sealed_upto
        callbacks = self._callbacks
        self._callbacks = []
        if batch:
            started = time.perf_counter()
            if len(batch) <= self.store.inline_rows:
                self.store.write(batch)
                self.inline_batches += 1
            else:
                await anyio.to_thread.run_sync(self.store.write, batch, limiter=self._limiter)
            took = time.perf_counter() - started
            self.write_seconds += took
            self.counters.store_write_seconds.observe(took)
            self.counters.store_batch_rows.observe(len(batch))
            self.batches += 1
            self.rows_written += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        self._published(sealed_upto, pending, callbacks)

    def _commit_now(self) -> None:
        """A store that keeps nothing: seal and publish in the caller (no write, so no wait and no thread)."""
        self._committing = True  # a callback that kicks again must not publish a later batch before this one
        try:
            _batch, pending = self.core.seal()
            callbacks = self._callbacks
            self._callbacks = []
            self._published(self.core.sealed_upto, pending, callbacks)
        finally:
            self._committing = False

    def _published(self, sealed_upto: int, pending: list[Pending], callbacks: list[Callable[[], None]]) -> None:
        self.core.durable_upto = sealed_upto
        touched = self.core.publish(pending) if pending else set()
        for callback in callbacks:
            callback()
        if touched:
            self.on_published(touched)
        if self.core.tx.ready_links and self.on_durable is not None:
            self.on_durable()

    async def drain(self) -> None:
        """Write everything gathered so far (at start, before the node listens, and at shutdown). Links waiting
        to be woken do not count: no link runs then (the start wakes them itself once it can), and counting them
        would loop here for good, since nothing can take them off the list."""
        while self._has_writes():
            await self.commit_once()

    def statistics(self) -> dict[str, float | int]:
        return {
            "batches": self.batches,
            "inline_batches": self.inline_batches,
            "rows_written": self.rows_written,
            "largest_batch": self.largest_batch,
            "write_seconds": round(self.write_seconds, 3),
        }
