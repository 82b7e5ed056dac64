"""Paging in the core (core/paging.py): a queue keeps its window in memory and leaves the rest in the store, reads it
back in order as receivers drain it, after a restart too, and drops what belongs to conversations that ended while
it was in the store only. The store is the harness's dict store, which pages as SQLite does (core_harness.py)."""

from __future__ import annotations

from core_harness import Harness

from aiobroker.core.budget import ROW_MEMORY
from aiobroker.core.effects import PageWanted
from aiobroker.core.records import ERROR, ROW_BODY, ROW_LOCATION

WINDOW = 10


def paging() -> Harness:
    return Harness(page_window=WINDOW)


def fill(h: Harness, handles: list[str], per_conversation: int, runs: int = 3) -> dict[str, list[bytes]]:
    """Send numbered bodies on each conversation, in runs interleaved between the conversations."""
    sent: dict[str, list[bytes]] = {handle: [] for handle in handles}
    n = 0
    for _ in range(runs):
        for handle in handles:
            bodies = [b"m%05d" % (n + k) for k in range(per_conversation // runs)]
            n += len(bodies)
            h.send(handle, *bodies)
            sent[handle] += bodies
    return sent


def in_order(h: Harness, received: list[tuple[str, int, str, bytes]]) -> dict[str, list[bytes]]:
    """The bodies received per initiator handle (the far side's handle is the receiver's), in the order received."""
    far = {ep.handle: ep.far_handle for ep in h.core.endpoints.values()}
    got: dict[str, list[bytes]] = {}
    for handle, _seq, _type, body in received:
        got.setdefault(str(far[handle]), []).append(body)
    return got


def stored_rows(h: Harness, queue: str) -> int:
    return sum(1 for row in h.store.messages.values() if row[ROW_LOCATION] == "q:" + queue)


def test_a_queue_keeps_its_window_in_memory_and_the_rest_in_the_store_only() -> None:
    h = paging()
    handles = [h.pair() for _ in range(2)]
    sent = fill(h, handles, 30)
    q = h.core.queues["qt"]
    assert q.waiting == 60, "every message is counted in the queue"
    assert q.in_store == 50 and q.waiting - q.in_store == WINDOW, "the window in memory, the rest in the store only"
    assert sum(len(g) for g in q.groups.values()) == WINDOW
    assert stored_rows(h, "qt") == 60
    budget = h.core.budget
    assert budget.in_store == 50 and budget.in_store_bytes == 50 * 6
    assert budget.held == WINDOW * (6 + ROW_MEMORY), "the memory held is the window's only"
    assert budget.in_queue("qt") == (60, 360), "the queue's bounds count them all"

    got = in_order(h, h.drain("qt"))
    assert got == sent, "every message once, in order per conversation"
    assert q.waiting == q.in_store == 0 and stored_rows(h, "qt") == 0
    assert budget.held == 0 and budget.in_store == 0 and budget.in_queue("qt") == (0, 0)


def test_a_page_is_asked_for_once_the_window_is_half_drained_and_never_twice_at_once() -> None:
    h = paging()
    handle = h.pair()
    fill(h, [handle], 30, runs=1)
    q = h.core.queues["qt"]
    lease = h.receive("qt", n=4)
    assert lease is not None and len(lease.messages) == 4
    assert h.effects(PageWanted) == [], "6 left in memory: more than half the window"
    h.core.commit(lease.id, h.owner)
    h.flush()
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.rollback(lease.id, h.owner)
    assert h.receive("qt", n=1) is not None, "the rolled-back one again"
    pages = h.effects(PageWanted)
    assert len(pages) == 1, "5 left: half the window; one page asked for, not one per receive"
    assert pages[0] == PageWanted("qt", q.stored_after, q.stored_upto, WINDOW // 2)
    h.core.paged_in(pages[0], h.store.read_rows("q:qt", pages[0].after_id, pages[0].upto_id, pages[0].limit))
    assert q.in_store == 15 and q.waiting - q.in_store == 5 + 5, "5 read back, beside the 5 waiting in memory"


def test_a_restart_reads_the_window_only_and_counts_the_rest() -> None:
    h = paging()
    handles = [h.pair() for _ in range(2)]
    sent = fill(h, handles, 30)
    h2 = h.restart()
    q = h2.core.queues["qt"]
    assert q.waiting == 60 and q.in_store == 50, "the window read back, the rest counted"
    assert h2.core.budget.in_store == 50 and h2.core.budget.held == WINDOW * (6 + ROW_MEMORY)
    more = fill(h2, handles, 6, runs=1)
    assert q.in_store == 62, "what comes after (6 on each) goes behind the store's, in the store"
    got = in_order(h2, h2.drain("qt"))
    assert got == {k: sent[k] + more[k] for k in handles}, "everything once, in order, new after old"
    assert h2.core.ledger.next_message_id > max(h.store.messages, default=0), "no id used twice"


def test_the_messages_of_a_conversation_ended_while_they_were_in_the_store_go_when_read_back() -> None:
    h = paging()
    keep, end = h.pair(), h.pair()
    sent = fill(h, [keep, end], 30)
    target = h.core.endpoints[keep].far_handle
    ended = h.core.endpoints[end].far_handle
    assert target is not None and ended is not None
    h.core.end(ended, h.now)  # the receiving side ends it: its messages will never be received
    h.flush()
    q = h.core.queues["qt"]
    assert not any(r for g in q.groups.values() for dq in (g.urgent or (), g.normal) for r in dq if r[2] == ended)
    got = in_order(h, h.drain("qt"))
    assert got == {keep: sent[keep]}, "the ended conversation's messages are not handed out"
    assert q.waiting == 0 and q.in_store == 0
    assert stored_rows(h, "qt") == 0, "and they are gone from the store"
    assert h.core.budget.in_queue("qt") == (0, 0) and h.core.budget.in_store == 0


def test_a_receiver_finding_every_group_in_memory_locked_gets_a_page_of_the_others() -> None:
    h = paging()
    first, second = h.pair(), h.pair()
    fill(h, [first], 10, runs=1)  # the whole window: one conversation group
    fill(h, [second], 5, runs=1)  # in the store only
    other = object()
    lease = h.receive("qt", n=3, owner=other)
    assert lease is not None and len(lease.messages) == 3
    assert h.effects(PageWanted) == [], "7 left in memory"
    assert h.receive("qt") is None, "the only group in memory is locked"
    (page,) = h.effects(PageWanted)
    h.core.paged_in(page, h.store.read_rows("q:qt", page.after_id, page.upto_id, page.limit))
    lease2 = h.receive("qt")
    assert lease2 is not None
    assert [r[ROW_BODY] for r in lease2.messages] == [b"m%05d" % k for k in range(5)], "the other group's messages"


def test_a_store_that_does_not_page_keeps_every_message_in_memory() -> None:
    h = Harness(page_window=WINDOW, persist=False)
    handle = h.pair()
    fill(h, [handle], 30, runs=1)
    q = h.core.queues["qt"]
    assert q.window is None and q.in_store == 0 and q.waiting == 30


def test_a_page_that_could_not_be_read_is_asked_for_again_by_the_next_receive() -> None:
    h = paging()
    handle = h.pair()
    fill(h, [handle], 30, runs=1)
    while (lease := h.receive("qt")) is not None:
        h.core.commit(lease.id, h.owner)
        h.flush()
    (page,) = h.effects(PageWanted)
    h.core.page_failed(page)  # the store could not be read (the shell logged why)
    assert h.effects(PageWanted) == []
    assert h.receive("qt") is None
    assert h.effects(PageWanted) == [page], "asked again, for the same messages"


def test_at_half_the_memory_budget_every_new_message_waits_in_the_store() -> None:
    # a window far from full, but the node holds half its budget: what comes next is not held, so that many queues'
    # windows cannot take the node to its budget (and to refusing sends) while the store could keep the messages
    h = Harness(page_window=1000, max_memory=20 * (6 + ROW_MEMORY))
    handles = [h.pair() for _ in range(2)]
    sent = fill(h, handles, 30)
    q = h.core.queues["qt"]
    budget = h.core.budget
    assert budget.page_above == 10 * (6 + ROW_MEMORY)
    assert q.waiting == 60 and q.waiting - q.in_store < 20, "held no further than half the budget (a run's worth)"
    assert budget.held < budget.max_memory and not budget.over, "so sends are never refused for it"
    assert in_order(h, h.drain("qt")) == sent


def test_a_receive_across_groups_drains_a_paged_queue_in_order() -> None:
    h = paging()
    handles = [h.pair() for _ in range(4)]
    sent = fill(h, handles, 12)
    q = h.core.queues["qt"]
    assert q.in_store == 48 - WINDOW
    far = {ep.handle: ep.far_handle for ep in h.core.endpoints.values()}
    got: dict[str, list[bytes]] = {}
    for _ in range(100):  # bounded: 48 messages, at least one a round once paged in
        lease = h.core.receive("qt", 1000, h.owner, h.now, max_groups=4)
        if lease is None:
            if not h.serve_pages():
                break
            continue
        for row in lease.messages:
            got.setdefault(str(far[row[2]]), []).append(row[ROW_BODY])
        h.core.commit(lease.id, h.owner)
        h.flush()
    assert got == sent, "every message once, in order per conversation, across groups and pages"
    assert q.waiting == q.in_store == 0


def test_an_error_comes_ahead_of_its_conversations_messages_in_the_store_at_once_and_after_a_restart() -> None:
    # SEMANTICS: Error and DialogTimer come ahead of the other messages of their conversation. A queue that pages
    # never leaves them in the store only, so one that comes while the queue's window is full, or that waited in the
    # store through a restart, is handed out before the messages of its conversation still in the store.
    for restart in (False, True):
        h = paging()
        handle = h.pair()
        fill(h, [handle], 30, runs=1)  # 10 in memory, 20 in the store only
        target = h.core.endpoints[handle].far_handle
        assert target is not None
        h.core.end(handle, h.now, error=(7, "stop"))  # the initiator fails it: an Error to the target's queue
        h.flush()
        if restart:
            h = h.restart()
        got = [(r[2], r[3]) for r in (h.drain("qt"))]
        types = [t for t, _ in got]
        assert ERROR in types, got
        assert types.index(ERROR) == 0, f"the Error first (restart={restart}): {types[:3]}"
