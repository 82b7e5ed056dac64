"""The transmission queue keeps a conversation's lone unacknowledged row without a list of its own (a DELAYED storm
holds 100,000 conversations of one message each); every way in and out gives the same rows, counts and order as a
list would."""

from __future__ import annotations

from typing import cast

from aiobroker.core.records import MessageRow, message_row
from aiobroker.core.transmission import TransmissionQueue

A = "tcp://10.0.0.2:4022"


def row(seq: int, handle: str = "h") -> MessageRow:
    return message_row(100 + seq, "tx", handle, seq, "DEFAULT", b"m%d" % seq, 0.0, 0)


def test_a_lone_row_and_a_run_of_rows_read_alike() -> None:
    tx = TransmissionQueue()
    tx.add_many("h", [row(0)], "svc")
    assert tx.rows["h"] == row(0), "one row is kept as itself"
    assert tx.rows_of("h") == [row(0)] and tx.count("h") == 1 and "h" in tx
    tx.add_many("h", [row(1), row(2)], "svc")
    assert tx.rows_of("h") == [row(0), row(1), row(2)] and tx.count("h") == 3 and tx.message_count == 3
    assert tx.rows_of("none") == [] and tx.count("none") == 0


def test_acknowledgements_take_a_prefix_and_leave_a_lone_row_or_nothing() -> None:
    tx = TransmissionQueue()
    tx.add_many("h", [row(0), row(1), row(2)], "svc")
    assert tx.acknowledge("h", 2, "svc") == [row(0), row(1)]
    assert tx.rows["h"] == row(2) and tx.rows_of("h") == [row(2)]
    assert tx.acknowledge("h", 2, "svc") == [], "a lone row not yet acknowledged stays"
    assert tx.acknowledge("h", 3, "svc") == [row(2)]
    assert "h" not in tx and tx.message_count == 0


def test_a_link_sends_a_lone_row_once_per_epoch_and_again_after_a_new_one() -> None:
    tx = TransmissionQueue()
    tx.add_many("h", [row(0)], "svc")
    tx.attach("h", A, "svc")
    assert tx.take_unsent(A, 10, 10**9, 1 << 30) == [("h", row(0))]
    assert tx.take_unsent(A, 10, 10**9, 1 << 30) == []
    tx.add_many("h", [row(1)], "svc")
    tx.attach("h", A, "svc")
    assert tx.take_unsent(A, 10, 10**9, 1 << 30) == [("h", row(1))], "only the new one"
    tx.links[A].new_epoch()
    assert tx.take_unsent(A, 10, 10**9, 1 << 30) == [("h", row(0)), ("h", row(1))]
    assert tx.statistics()["links"][0]["unacknowledged"] == 2
    assert tx.drop("h", "svc") == [row(0), row(1)] and tx.message_count == 0


def test_a_delayed_lone_row_counts_once_and_rows_loaded_as_lists_are_rows() -> None:
    tx = TransmissionQueue()
    tx.add_many("h", [row(0)], "svc")
    tx.delay("h", "svc")
    assert tx.delayed_total == 1 and tx.delayed_count == {"svc": 1}
    tx.undelay("h", "svc")
    assert tx.delayed_total == 0
    loaded = TransmissionQueue()
    loaded.load(cast(MessageRow, list(row(0))))  # a store may hand a row back as a list
    assert loaded.rows_of("h") == [row(0)] and loaded.count("h") == 1
    loaded.load(row(1))
    assert loaded.rows_of("h") == [row(0), row(1)]


def _queue_with_three_on_a_link() -> TransmissionQueue:
    """Lone rows on "a" and "c", a run of three on "b", all routed to A and sent; "c" went back to DELAYED since."""
    tx = TransmissionQueue()
    tx.add_many("a", [row(0, "a")], "svc")
    tx.add_many("b", [row(0, "b"), row(1, "b"), row(2, "b")], "svc")
    tx.add_many("c", [row(0, "c")], "svc")
    for handle in ("a", "b", "c"):
        tx.attach(handle, A, "svc")
    assert len(tx.take_unsent(A, 10, 10**9, 1 << 30)) == 5
    tx.links[A].waiting_since = 1.0
    tx.delay("c", "svc")  # its route was dropped after it was sent
    return tx


def test_a_frame_of_acknowledgements_frees_what_one_by_one_would() -> None:
    """``acknowledge_all`` (a frame's acknowledgements in one call, lone rows without a call each) leaves the rows,
    counts, DELAYED counts and the link's in-flight records exactly as ``acknowledge`` one at a time does."""
    acks = [("a", 1, "svc"), ("b", 2, "svc"), ("c", 1, "svc"), ("a", 1, "svc"), ("none", 5, "svc"), ("b", 1, "svc")]
    one_by_one = _queue_with_three_on_a_link()
    freed_one = [r for handle, seq, service in acks for r in one_by_one.acknowledge(handle, seq, service)]
    at_once = _queue_with_three_on_a_link()
    assert at_once.acknowledge_all(acks) == freed_one == [row(0, "a"), row(0, "b"), row(1, "b"), row(0, "c")]
    for tx in (one_by_one, at_once):
        assert tx.rows == {"b": row(2, "b")} and tx.message_count == 1
        assert tx.delayed_total == 0 and tx.delayed_count == {}, "c's acknowledged row no longer counts as DELAYED"
        assert tx.links[A].sent == {"b": 1} and tx.links[A].waiting_since == 1.0, "b still has one in flight"
    assert at_once.acknowledge_all([("b", 3, "svc")]) == [row(2, "b")]
    assert at_once.links[A].sent == {} and at_once.links[A].waiting_since is None, "nothing in flight: no time-out"


def test_a_service_taken_out_of_delayed_at_once_leaves_what_one_by_one_would() -> None:
    """``undelay_all`` (a resolver's answer: every conversation DELAYED on the service at once) gives the handles in
    order and leaves the DELAYED sets, counts and ``to_strip`` as ``undelay`` for each does; other services keep
    theirs."""

    def delayed_queue() -> TransmissionQueue:
        tx = TransmissionQueue()
        tx.strips = True
        for handle, n, service in (("a", 1, "svc"), ("b", 3, "svc"), ("c", 1, "other"), ("d", 2, "svc")):
            tx.add_many(handle, [row(seq, handle) for seq in range(n)], service)
            tx.delay(handle, service)
        return tx

    one_by_one, at_once = delayed_queue(), delayed_queue()
    handles = list(one_by_one.delayed["svc"])
    for handle in handles:
        one_by_one.undelay(handle, "svc")
    assert at_once.undelay_all("svc") == handles == ["a", "b", "d"]
    for tx in (one_by_one, at_once):
        assert tx.delayed == {"other": {"c": None}} and tx.delayed_count == {"other": 1} and tx.delayed_total == 1
        assert list(tx.to_strip) == ["c"] and tx.message_count == 7
    assert at_once.undelay_all("svc") == [] and at_once.delayed_total == 1
