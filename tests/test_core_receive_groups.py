"""Receive with ``max_groups``: several ready conversation groups under one lease (pure core).

Each conversation of the harness's ``pair()`` is its own group, so N dialogs are N groups, ready in the order their
first message was stored.
"""

from __future__ import annotations

import pytest
from core_harness import Harness

from aiobroker.core.queues import ROW_OVERHEAD
from aiobroker.core.records import ROW_BODY, ROW_HANDLE
from aiobroker.errors import InvalidArgument, QueueDisabled


def bodies(lease: object) -> list[bytes]:
    return [row[ROW_BODY] for row in lease.messages]  # type: ignore[attr-defined]


def dialogs(h: Harness, count: int, per: int = 1) -> list[str]:
    """``count`` dialogs, each sending ``per`` messages b"<i>.<k>", one dialog after the other."""
    handles = [h.pair() for _ in range(count)]
    for i, handle in enumerate(handles):
        h.send(handle, *[b"%d.%d" % (i, k) for k in range(per)])
    return handles


def test_one_receive_takes_several_ready_groups_oldest_first_each_in_order() -> None:
    h = Harness()
    dialogs(h, 4, per=2)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=3)
    assert lease is not None
    assert bodies(lease) == [b"0.0", b"0.1", b"1.0", b"1.1", b"2.0", b"2.1"], "three groups, oldest first, in order"
    rest = h.receive("qt", owner="other")
    assert rest is not None and bodies(rest) == [b"3.0", b"3.1"], "the fourth group is left for another receiver"
    assert h.core.queues["qt"].statistics()["locked"] == 8


def test_the_default_is_one_group() -> None:
    h = Harness()
    dialogs(h, 3)
    lease = h.receive("qt")
    assert lease is not None and bodies(lease) == [b"0.0"]


def test_every_group_of_the_batch_stays_locked_until_its_one_commit() -> None:
    h = Harness()
    handles = dialogs(h, 3)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
    assert lease is not None and bodies(lease) == [b"0.0", b"1.0", b"2.0"]
    for i, handle in enumerate(handles):
        h.send(handle, b"%d.1" % i)
    assert h.receive("qt", owner="other") is None, "no group of the batch goes to another receiver while it is held"
    assert h.core.commit(lease.id, h.owner) == 3
    again = h.core.receive("qt", 100, "other", h.now, max_groups=10)
    assert again is not None and bodies(again) == [b"0.1", b"1.1", b"2.1"]
    h.core.commit(again.id, "other")
    stats = h.core.queues["qt"].statistics()
    assert (stats["waiting"], stats["locked"], stats["groups"], stats["ready_groups"]) == (0, 0, 0, 0)
    h.flush()
    assert h.restart().drain("qt") == [], "the commit removed every group's messages from the store"


def test_max_messages_bounds_the_whole_batch_and_a_split_group_keeps_its_order() -> None:
    h = Harness()
    dialogs(h, 3, per=3)
    lease = h.core.receive("qt", 5, h.owner, h.now, max_groups=10)
    assert lease is not None and bodies(lease) == [b"0.0", b"0.1", b"0.2", b"1.0", b"1.1"]
    other = h.receive("qt", owner="other")
    assert other is not None and bodies(other) == [b"2.0", b"2.1", b"2.2"], "group 1 stays locked, half taken"
    h.core.commit(lease.id, h.owner)
    rest = h.receive("qt", owner="third")
    assert rest is not None and bodies(rest) == [b"1.2"], "the rest of group 1 after the commit, in order"


def test_a_further_group_is_taken_only_if_its_first_message_fits_the_batch_bytes() -> None:
    h = Harness(max_batch_bytes=3 * (1000 + ROW_OVERHEAD))
    handles = [h.pair() for _ in range(3)]
    h.send(handles[0], b"a" * 1000, b"b" * 1000)
    h.send(handles[1], b"c" * 2000)  # does not fit in the one slot left
    h.send(handles[2], b"d" * 10)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
    assert lease is not None and bodies(lease) == [b"a" * 1000, b"b" * 1000]
    h.core.commit(lease.id, h.owner)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
    assert lease is not None and bodies(lease) == [b"c" * 2000, b"d" * 10]


def test_a_rollback_puts_every_group_back_at_the_front_in_the_order_taken() -> None:
    h = Harness()
    dialogs(h, 4, per=2)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=3)
    assert lease is not None
    h.core.rollback(lease.id, h.owner)
    again = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
    assert again is not None
    assert bodies(again) == [b"%d.%d" % (i, k) for i in range(4) for k in range(2)], "groups 0-2 ahead of group 3"


def test_an_expired_lease_or_a_receiver_gone_gives_every_group_back() -> None:
    h = Harness()
    dialogs(h, 3)
    lease = h.core.receive("qt", 100, h.owner, h.now, lease_seconds=5, max_groups=10)
    assert lease is not None
    assert [e.id for e in h.advance(6)] == [lease.id]
    gone = h.core.receive("qt", 100, "gone", h.now, max_groups=10)
    assert gone is not None and bodies(gone) == [b"0.0", b"1.0", b"2.0"], "all three back after the expiry"
    assert h.core.release_owner("gone") == 1
    assert [x[3] for x in h.drain("qt")] == [b"0.0", b"1.0", b"2.0"], "and back again after the receiver went away"


def test_poison_handling_counts_each_group_of_a_rolled_back_batch() -> None:
    h = Harness(poison_rollbacks=2)
    h.pair()
    h.core.alter_queue("qt", {"poison_message_handling": True})
    dialogs(h, 2)
    for _ in range(2):
        lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
        assert lease is not None and len(lease.messages) == 2
        h.core.rollback(lease.id, h.owner)
    with pytest.raises(QueueDisabled, match="poison message: conversation group"):
        h.receive("qt")


def test_a_conversation_ended_while_its_group_was_held_does_not_come_back() -> None:
    h = Harness()
    handles = dialogs(h, 2)
    lease = h.core.receive("qt", 100, h.owner, h.now, max_groups=10)
    assert lease is not None
    far = next(row[ROW_HANDLE] for row in lease.messages if row[ROW_BODY] == b"0.0")
    h.core.end(far, h.now, cleanup=True)
    h.core.rollback(lease.id, h.owner)
    assert [x[3] for x in h.drain("qt")] == [b"1.0"]
    assert len(handles) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_a_bad_max_groups_is_refused_and_takes_nothing(bad: object) -> None:
    h = Harness()
    dialogs(h, 2)
    with pytest.raises(InvalidArgument, match="max_groups must be a whole number >= 1"):
        h.core.receive("qt", 100, h.owner, h.now, max_groups=bad)  # type: ignore[arg-type]
    assert [x[3] for x in h.drain("qt")] == [b"0.0", b"1.0"]
