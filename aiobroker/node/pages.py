"""Reading a page of a queue's messages back from the store, for the core (``core/paging.py``).

The core asks (:class:`~aiobroker.core.effects.PageWanted`, at most one per queue at a time); the read runs in a
worker thread, beside the writer's (the store reads the last committed state without waiting for a write), so
the event loop serves on meanwhile; the page goes to the core, and the queue's waiting receivers are served with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio.to_thread

from ..core.broker import BrokerCore
from ..core.effects import PageWanted
from ..errors import StoreError
from ..store.base import Store

log = logging.getLogger("aiobroker.node")


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
