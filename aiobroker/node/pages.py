"""Reading messages back from the store, for the core: a page of a queue's (``core/paging.py``), and the bodies
of DELAYED messages whose conversation moves on (``core/tx_bodies.py``).

The core asks (:class:`~aiobroker.core.effects.PageWanted`, at most one per queue at a time;
:class:`~aiobroker.core.effects.BodiesWanted`). A page is read in a worker thread, beside the writer's (the store
reads the last committed state without waiting for a write), so the event loop serves on meanwhile; bodies are read
so too, except from a store whose reads are cheap enough for the event loop (``Store.inline_reads``: see
:meth:`StoreReads._bodies` for why). What was read goes to the core, and the queue's waiting receivers are served
with a page, the links woken for bodies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ..core.broker import BrokerCore
from ..core.effects import BodiesWanted, PageWanted
from ..errors import StoreError
from ..store.base import Store

log = logging.getLogger("aiobroker.node")

#: bodies read on the event loop at a time, from a store whose reads are cheap there (~0.6 ms from SQLite)
INLINE_BODIES = 1000
#: a failed read of bodies is tried again after this, doubling up to the cap, for as long as it fails
BODIES_RETRY_FIRST = 1.0
BODIES_RETRY_CAP = 30.0


async def read_page(
    store: Store, core: BrokerCore, page: PageWanted, after_core: Callable[[], None], serve: Callable[[str], None]
) -> None:
    """Read ``page`` and hand it to the core; then ``after_core()`` (what it changed is stored: messages of ended
    conversations it found go from the store) and ``serve(queue)`` if any message is ready now. A read that fails is
    logged; the queue's next receive asks again."""
    try:
        rows = await anyio.to_thread.run_sync(
            store.read_rows, "q:" + page.queue, page.after_id, page.upto_id, page.limit
        )
    except StoreError as exc:
        log.error(
            "queue %r: cannot read its messages back from the store (%s); the next receive tries again",
            page.queue, exc.message, extra={"queue": page.queue},
        )
        core.page_failed(page)
        return
    ready = core.paged_in(page, rows)
    after_core()
    if ready:
        serve(page.queue)


class StoreReads:
    """What the core asks to read back: a page (:func:`read_page`, a task each) or bodies (:class:`BodiesWanted`),
    one read of bodies at a time: the requests that come while one runs (a resolution storm's answers, one request
    each) are read together next and handed to the core together.
    A read of bodies that fails is logged and tried again, doubling the wait, while any of its conversations still
    waits: their messages stay stored meanwhile."""

    def __init__(
        self,
        store: Store,
        core: BrokerCore,
        after_core: Callable[[], None],
        serve: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.core = core
        self.after_core = after_core
        self.serve = serve
        self.clock = clock
        self._pending: list[BodiesWanted] = []
        self._running = False

    def want(self, wanted: PageWanted | BodiesWanted, tg: anyio.abc.TaskGroup) -> None:
        if isinstance(wanted, PageWanted):
            tg.start_soon(read_page, self.store, self.core, wanted, self.after_core, self.serve)
            return
        self._pending.append(wanted)
        if not self._running:
            self._running = True
            tg.start_soon(self._read_bodies, name="read DELAYED bodies back")

    async def _read_bodies(self) -> None:
        retry = BODIES_RETRY_FIRST
        try:
            while self._pending:
                requests, self._pending = self._pending, []
                # joined without a Python step per message (a storm's release reads 100,000 back)
                request = requests[0] if len(requests) == 1 else BodiesWanted(
                    list(chain.from_iterable(r.handles for r in requests)),
                    list(chain.from_iterable(r.ids for r in requests)),
                )
                try:
                    bodies = await self._bodies(request.ids)
                except (StoreError, NotImplementedError) as exc:
                    reading = self.core.tx.reading
                    if any(handle in reading for handle in request.handles):
                        log.error(
                            "cannot read back the bodies of %d DELAYED message(s) whose conversations have a route"
                            " now (%s); trying again in %g s. They stay in the store; check that it is reachable"
                            " and readable", len(request.ids), getattr(exc, "message", exc), retry,
                        )
                        self._pending.insert(0, request)
                        await anyio.sleep(retry)
                        retry = min(BODIES_RETRY_CAP, retry * 2)
                    continue
                retry = BODIES_RETRY_FIRST
                self.core.bodies_read(request, bodies, self.clock())
                self.after_core()
        finally:
            self._running = False

    async def _bodies(self, ids: list[int]) -> dict[int, bytes]:
        """Read ``ids``' bodies: on the event loop, a slice at a time, from a store whose reads are cheap there
        (``Store.inline_reads``: SQLite's file), else in a worker thread. Inline, measured twice in the storm:
        when the store stepped a row at a time, a read in a thread waited for the interpreter's lock at every row
        while the loop was busy (the release held back until the answers were over, 1.4-2.0 s after the last);
        since it reads a chunk in one step (``sqlite_pages.read_bodies``), a thread let the answers come faster
        but the last message arrive later (1.32-1.44 s after the gate against 1.23-1.27 inline): the bodies a
        release needs are better read at once than after the next answers."""
        if not self.store.inline_reads:
            return await anyio.to_thread.run_sync(self.store.read_bodies, ids)
        if len(ids) <= INLINE_BODIES:
            return self.store.read_bodies(ids)
        bodies: dict[int, bytes] = {}
        for start in range(0, len(ids), INLINE_BODIES):
            if start:
                await anyio.lowlevel.checkpoint()  # what else is ready runs between slices
            bodies.update(self.store.read_bodies(ids[start : start + INLINE_BODIES]))
        return bodies
