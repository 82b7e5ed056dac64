"""Receive: conversation-group locks, leases, rollback, poison messages, retention, restart (pure core)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from core_harness import Harness

from aiobroker.core.catalog import QueueDef
from aiobroker.core.queues import MessageQueue
from aiobroker.core.records import ROW_BODY, ROW_LOCATION, ROW_SEQ, ROW_STATE, message_row
from aiobroker.errors import LeaseExpired, QueueDisabled


def test_a_locked_group_is_not_handed_to_a_second_receiver() -> None:
    h = Harness()
    a = h.pair()
    b = h.pair()
    h.send(a, b"a1", b"a2")
    h.send(b, b"b1")
    first = h.receive("qt", owner="r1")
    second = h.receive("qt", owner="r2")
    assert first is not None and second is not None
    assert [r[ROW_BODY] for r in first.messages] == [b"a1", b"a2"]
    assert [r[ROW_BODY] for r in second.messages] == [b"b1"], "the second receiver gets the other group"
    h.send(a, b"a3")
    assert h.receive("qt", owner="r2") is None, "group a is locked by r1 even though it has a new message"
    h.core.commit(first.id, "r1")
    third = h.receive("qt", owner="r2")
    assert third is not None and [r[ROW_BODY] for r in third.messages] == [b"a3"]


def test_max_messages_splits_a_group_and_order_holds() -> None:
    h = Harness()
    a = h.pair()
    h.send(a, *[b"%d" % i for i in range(10)])
    seen = []
    while (lease := h.receive("qt", n=3)) is not None:
        seen.extend(r[ROW_SEQ] for r in lease.messages)
        h.core.commit(lease.id, h.owner)
    assert seen == list(range(10))


def test_rollback_puts_messages_back_at_the_front_in_order() -> None:
    h = Harness()
    a = h.pair()
    b = h.pair()
    h.send(a, b"a1", b"a2", b"a3")
    h.send(b, b"b1")
    lease = h.receive("qt", n=2)
    assert lease is not None
    h.core.rollback(lease.id, h.owner)
    again = h.receive("qt", n=10)
    assert again is not None and [r[ROW_BODY] for r in again.messages] == [b"a1", b"a2", b"a3"]


def test_commit_of_an_unknown_or_foreign_lease_is_refused_clearly() -> None:
    h = Harness()
    a = h.pair()
    h.send(a, b"x")
    lease = h.receive("qt", owner="r1")
    assert lease is not None
    with pytest.raises(LeaseExpired, match="belongs to another connection"):
        h.core.commit(lease.id, "someone else")
    h.core.commit(lease.id, "r1")
    with pytest.raises(LeaseExpired, match="already committed"):
        h.core.commit(lease.id, "r1")


def test_an_expired_lease_returns_its_messages() -> None:
    h = Harness(receive_lease=30)
    a = h.pair()
    h.send(a, b"x")
    lease = h.receive("qt")
    assert lease is not None
    assert h.advance(29) == []
    expired = h.advance(2)
    assert [e.id for e in expired] == [lease.id]
    again = h.receive("qt")
    assert again is not None and [r[ROW_BODY] for r in again.messages] == [b"x"]
    with pytest.raises(LeaseExpired):
        h.core.commit(lease.id, h.owner)


def test_a_receiver_that_goes_away_gives_its_messages_back() -> None:
    h = Harness()
    a = h.pair()
    b = h.pair()
    h.send(a, b"a")
    h.send(b, b"b")
    assert h.receive("qt", owner="gone") is not None
    assert h.receive("qt", owner="gone") is not None
    assert h.core.release_owner("gone") == 2
    assert sorted(x[3] for x in h.drain("qt")) == [b"a", b"b"]


def test_five_rollbacks_disable_the_queue_and_nothing_is_lost() -> None:
    h = Harness(poison_rollbacks=5)
    a = h.pair()
    h.send(a, b"poison")
    for _ in range(5):
        lease = h.receive("qt")
        assert lease is not None
        h.core.rollback(lease.id, h.owner)
    h.flush()
    with pytest.raises(QueueDisabled, match="poison message: conversation group .* rolled back 5 times"):
        h.receive("qt")
    assert h.store.objects[("queue", "qt")]["status"] is False, "the disabled status is stored"
    h.core.alter_queue("qt", {"status": True})
    assert [x[3] for x in h.drain("qt")] == [b"poison"]


def test_a_commit_resets_the_rollback_count() -> None:
    h = Harness(poison_rollbacks=2)
    a = h.pair()
    h.send(a, b"1", b"2")
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.rollback(lease.id, h.owner)
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.commit(lease.id, h.owner)
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.rollback(lease.id, h.owner)
    assert h.receive("qt") is not None, "one rollback after a commit is not two in a row"


def test_poison_handling_off_keeps_the_queue_on() -> None:
    h = Harness(poison_rollbacks=1)
    h.core.create_object("queue", {"name": "qt", "poison_message_handling": False})
    h.service("target", "qt")
    h.service("init", "qi", [])
    a = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now).handle
    h.send(a, b"x")
    for _ in range(3):
        lease = h.receive("qt")
        assert lease is not None
        h.core.rollback(lease.id, h.owner)


def test_retention_keeps_received_messages_until_the_conversation_ends() -> None:
    h = Harness()
    h.core.create_object("queue", {"name": "qt", "retention": True})
    h.service("target", "qt")
    h.service("init", "qi", [])
    a = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now).handle
    h.send(a, b"kept")
    (target, _, _, _), = h.drain("qt")
    assert h.drain("qt") == [], "retained messages are not received twice"
    assert [r[ROW_STATE] for r in h.store.messages.values()] == [1]
    h.core.end(target, h.now)
    h.flush()
    assert [r for r in h.store.messages.values() if r[ROW_LOCATION] == "q:qt"] == [], "ended: retained rows go"


def test_restart_restores_queues_conversations_and_order() -> None:
    h = Harness()
    a = h.pair()
    h.send(a, b"1", b"2", b"3")
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.commit(lease.id, h.owner)
    h.flush()
    locked = h.receive("qt", n=1)  # held at the crash: leases are not stored, so it comes back
    assert locked is not None
    h2 = h.restart()
    assert [x[3] for x in h2.drain("qt")] == [b"2", b"3"]
    ep = h2.core.endpoints[a]
    assert ep.send_seq == 3, "sequence numbers continue after a restart"
    h2.send(a, b"4")
    assert [(x[1], x[3]) for x in h2.drain("qt")] == [(3, b"4")]


def test_uncommitted_work_is_not_in_the_store() -> None:
    h = Harness()
    a = h.pair()
    h.core.send(a, [["DEFAULT", b"never stored"]], h.now)
    h2 = h.restart()  # the crash came before the batch was written
    assert h2.drain("qt") == []


def test_a_receive_batch_stays_within_its_byte_budget_and_always_takes_one() -> None:
    from aiobroker.core.queues import ROW_OVERHEAD

    h = Harness(max_batch_bytes=3 * (1000 + ROW_OVERHEAD))
    a = h.pair()
    h.send(a, *[b"x" * 1000] * 10)
    sizes = []
    while (lease := h.receive("qt", n=100)) is not None:
        sizes.append(len(lease.messages))
        h.core.commit(lease.id, h.owner)
    assert sizes == [3, 3, 3, 1]
    h.send(a, b"y" * 10_000)  # larger than the whole budget: still handed out, alone
    lease = h.receive("qt", n=100)
    assert lease is not None and len(lease.messages) == 1


def test_taking_a_hundred_thousand_one_message_groups_leaves_nothing_behind() -> None:
    """The storm's receiving side: one group per conversation, each taken once, in arrival order."""
    queue = MessageQueue(QueueDef(name="q"))
    for i in range(100_000):
        queue.push(message_row(i, "q", f"h{i}", 0, "DEFAULT", b"m", 0.0, 0), f"g{i}", urgent=False)
    taken = [queue.take(10, 1 << 20) for _ in range(100_000)]
    assert [t[0].id for t in taken if t is not None] == [f"g{i}" for i in range(100_000)], "in arrival order"
    assert not queue.ready and queue.take(10, 1 << 20) is None
    # a plain dict would walk the slots of the keys taken from its front on every take (quadratic)
    assert isinstance(queue.ready, OrderedDict), "the ready set pops its front in O(1)"


def test_an_ended_endpoint_s_messages_leave_its_own_group_only() -> None:
    queue = MessageQueue(QueueDef(name="q"))
    for i, (handle, group) in enumerate([("h1", "g1"), ("h2", "g1"), ("h3", "g2"), ("h1", "g1")]):
        queue.push(message_row(i, "q", handle, i, "DEFAULT", b"m%d" % i, 0.0, 0), group, urgent=False)
    removed = queue.remove_handle("h1", "g1")
    assert [r[ROW_BODY] for r in removed] == [b"m0", b"m3"]
    assert [r[ROW_BODY] for r in queue.groups["g1"].normal] == [b"m1"] and len(queue.groups["g2"]) == 1
    assert queue.waiting == 2 and queue.remove_handle("h9", "g9") == []


def test_a_waiting_group_without_error_or_timer_holds_no_deque_for_them() -> None:
    """Most groups never see an Error or a DialogTimer: the deque for them is made by the first (an empty deque
    is a 600-byte block; 100,000 one-message conversations waiting held 60 MB of them)."""
    import tracemalloc

    queue = MessageQueue(QueueDef(name="q"))
    rows = [((i, "q:q", f"h{i}", 0, "T", b"", 0.0, 0), f"g{i}") for i in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for row, group_id in rows:
            queue.push_many([row], group_id, False)
        per_group = (tracemalloc.get_traced_memory()[0] - before) / len(rows)
    finally:
        tracemalloc.stop()
    assert per_group < 1200, f"{per_group:.0f} bytes per waiting one-message group"
    queue.push_many([(1000, "q:q", "h0", 1, "T", b"", 0.0, 0)], "g0", True)  # an urgent one: its deque now
    taken = queue.take(10, 1 << 20)
    assert taken is not None and [row[0] for row in taken[1]] == [1000, 0], "the urgent one first"
