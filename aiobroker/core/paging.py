"""Paging: a queue's messages past its window kept in the store only, and read back as receivers drain the queue.

Theory of operation
-------------------
A node on a store that pages (``Store.pages``: SQLite, PostgreSQL) gives each queue a *window* (``Ledger.page_window``): the
most waiting messages it keeps in memory. What is published to a queue beyond it stays in the store only
(``MessageQueue.leave_in_store``: counted in the queue and in the budget's count of that queue, not in the memory
the budget holds), and so does everything published to it after, until the store's are read back: the messages in
memory are always the queue's oldest, so each conversation's stay in order. A start reads each queue's first
window only (``Store.open_paged``) and counts the rest (:func:`count_stored`). ``Error`` and ``DialogTimer`` messages
never stay in the store only (``Delivery.publish`` keeps them; the store reads them all at start and leaves them out
of pages): a receive hands them out ahead of the rest of their conversation, whatever is in the store. Once the node holds half its memory
budget (``budget.PAGE_WATERMARK``) every queue leaves what comes next in the store, however far from its window.

When a receive leaves a queue with half its window or less in memory, or finds nothing ready there while the store
has more (:meth:`MessageQueue.page_wanted`), :func:`want_page` asks the shell for the next page
(:class:`~aiobroker.core.effects.PageWanted`: ids after the last read, up to the last left in the store); the
shell reads it in a thread and hands it to :func:`paged_in`, which pushes each message into its conversation
group as publishing would. A message whose conversation ended while it was in the store (its endpoint gone, or
closed: ending a conversation takes out only the messages in memory, ``MessageQueue.remove_handle``) is dropped
then, from the store too.

Nothing here runs on the hot path: a queue whose receivers keep up never reaches its window, and publishing a run
of messages costs a comparison or two more (``Delivery.publish``).
"""

from __future__ import annotations

from .catalog import URGENT_TYPES
from .conversation_states import State
from .effects import PageWanted, Report
from .ledger import Ledger
from .queues import MessageQueue
from .records import ROW_BODY, ROW_HANDLE, ROW_ID, ROW_TYPE, MessageRow, StoredRun

#: the waiting messages a queue keeps in memory on a store that pages, unless the node says otherwise
#: (``[limits] queue_window``): about 1.3 MiB of rows besides the bodies; enough that receivers taking a thousand
#: at a time never wait for a page while the next one is read (a page is half the window: 5,000 rows of 128 B read
#: from SQLite in about 6 ms)
DEFAULT_WINDOW = 10_000


def want_page(ledger: Ledger, queue: MessageQueue, nothing_ready: bool = False) -> None:
    """Ask for the next page of ``queue`` if it wants one now (see the module's header)."""
    if queue.page_wanted(nothing_ready):
        queue.reading = True
        limit = max(1, (queue.window or DEFAULT_WINDOW) // 2)
        ledger.outbox.append(PageWanted(queue.name, queue.stored_after, queue.stored_upto, limit))


def paged_in(ledger: Ledger, page: PageWanted, rows: list[MessageRow]) -> bool:
    """A page the shell read (``rows``: ready rows of the queue, by id, as :class:`PageWanted` asked): into
    their groups, or dropped with their ended conversation. Returns whether any message is now ready to receive."""
    queue = ledger.queues.get(page.queue)
    if queue is None:  # dropped meanwhile: a queue holding messages cannot be, so these were dropped with it
        return False
    location = "q:" + queue.name
    size = sum(len(row[ROW_BODY]) for row in rows)
    done = len(rows) < page.limit  # every row up to upto_id was read
    queue.read_back(len(rows), size, page.upto_id if done else rows[-1][ROW_ID])
    endpoints = ledger.endpoints
    kept = dropped = 0
    for row in rows:
        ep = endpoints.get(row[ROW_HANDLE])
        if ep is None or ep.state is State.CLOSED:
            ledger.unstore(row[ROW_ID])
            ledger.budget.drop_stored(location, 1, len(row[ROW_BODY]))
            dropped += 1
            continue
        queue.push(row, ep.group_id, row[ROW_TYPE] in URGENT_TYPES)
        kept += len(row[ROW_BODY])
        if len(row) > 8:
            ledger.traced_queues.add(queue.name)
    ledger.budget.page_in(len(rows) - dropped, kept)
    if done and queue.in_store and queue.stored_upto == page.upto_id:
        # Every row the queue counted in the store was asked for, and fewer came back: the count was wrong. Say
        # so, and count what is there (nothing), rather than ask for pages that can never come.
        ledger.outbox.append(Report(
            f"queue {queue.name!r} counted {queue.in_store} message(s) in the store that the store does not hold;"
            " counted as gone"
        ))
        ledger.budget.drop_stored(location, queue.in_store, queue.in_store_bytes)
        queue.read_back(queue.in_store, queue.in_store_bytes, page.upto_id)
    want_page(ledger, queue)
    return len(rows) > dropped


def page_failed(ledger: Ledger, page: PageWanted) -> None:
    """Reading a page failed (the shell logged why): the next receive of the queue asks again."""
    queue = ledger.queues.get(page.queue)
    if queue is not None:
        queue.reading = False


def count_stored(ledger: Ledger, stored: dict[str, StoredRun]) -> None:
    """What a paged start left in the store, per queue: counted, and the first page asked for where the window is
    not full."""
    for location, (count, size, after, upto) in stored.items():
        queue = ledger.queues.get(location[2:]) if location.startswith("q:") else None
        if queue is None or not count:
            continue
        queue.in_store, queue.in_store_bytes = count, size
        queue.stored_after, queue.stored_upto = after, upto
        queue.waiting += count
        ledger.budget.count_stored(location, count, size)
        want_page(ledger, queue)
