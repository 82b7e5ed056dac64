"""The conversation rules of SEMANTICS.md, on the pure core with a fake clock (no sockets, no files)."""

from __future__ import annotations

import pytest
from core_harness import Harness

from aiobroker.core.catalog import DIALOG_TIMER, END_DIALOG, ERROR
from aiobroker.core.conversation import State
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.core.records import ROW_BODY, ROW_HANDLE
from aiobroker.errors import (
    ContractViolation,
    ConversationError,
    InvalidArgument,
    MessageTooLarge,
    UnknownObject,
)


def bodies(items: list[tuple[str, int, str, bytes]]) -> list[bytes]:
    return [b for _, _, _, b in items]


def test_messages_arrive_once_in_order_with_sequence_numbers() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, *[b"m%d" % i for i in range(50)])
    h.send(handle, b"m50")
    got = h.drain("qt")
    assert bodies(got) == [b"m%d" % i for i in range(51)]
    assert [seq for _, seq, _, _ in got] == list(range(51))
    assert h.drain("qt") == []  # committed: never again


def test_messages_are_invisible_until_their_batch_is_stored() -> None:
    h = Harness()
    handle = h.pair()
    h.core.send(handle, [["DEFAULT", b"x"]], h.now)
    assert h.receive("qt") is None, "a message must not be receivable before it is durable"
    h.flush()
    lease = h.receive("qt")
    assert lease is not None and [r[ROW_BODY] for r in lease.messages] == [b"x"]


def test_reply_reaches_the_initiator_on_its_own_queue() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"request")
    (target_handle, _, _, _), = h.drain("qt")
    assert target_handle != handle
    h.send(target_handle, b"reply")
    assert h.drain("qi") == [(handle, 0, "DEFAULT", b"reply")]


def test_contract_rules_are_checked_at_send_and_nothing_is_sent() -> None:
    h = Harness()
    for name in ("Req", "Resp"):
        h.core.create_object("message_type", {"name": name})
    h.core.create_object("contract", {"name": "C", "messages": {"Req": "initiator", "Resp": "target"}})
    h.service("init", "qi", [])
    h.service("target", "qt", ["C"])
    handle = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    with pytest.raises(ContractViolation, match="does not let the initiator send message type 'Resp'"):
        h.core.send(handle, [["Req", b"ok"], ["Resp", b"not allowed"]], h.now)
    with pytest.raises(UnknownObject, match="'Nope' does not exist"):
        h.core.send(handle, [["Nope", b""]], h.now)
    with pytest.raises(InvalidArgument, match="system message type"):
        h.core.send(handle, [[END_DIALOG, b""]], h.now)
    h.flush()
    assert h.drain("qt") == [], "a batch with one bad message sends none of it"
    h.send(handle, b"fine", message_type="Req")
    assert bodies(h.drain("qt")) == [b"fine"]


def test_oversized_message_is_refused_with_the_limit() -> None:
    h = Harness(max_message_size=10)
    handle = h.pair()
    with pytest.raises(MessageTooLarge, match="11 bytes is over the node's max_message_size of 10"):
        h.core.send(handle, [["DEFAULT", b"x" * 11]], h.now)


@pytest.mark.parametrize(
    ("validation", "good", "bad", "reason"),
    [
        ("empty", b"", b"x", "requires an empty body"),
        ("json", b'{"a": [1, 2]}', b"{nope", "validation 'json' failed"),
        ("xml", b"<a><b/></a>", b"<a><b></a>", "not well-formed"),
        ("xml", b"<a/>", b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>', "DTDs) are not allowed"),
        ("msgpack", b"\x92\x01\x02", b"\xc1", "validation 'msgpack' failed"),
    ],
)
def test_validation_failure_errors_the_senders_conversation(
    validation: str, good: bytes, bad: bytes, reason: str
) -> None:
    h = Harness()
    h.core.create_object("message_type", {"name": "T", "validation": validation})
    h.core.create_object("contract", {"name": "C", "messages": {"T": "any"}})
    h.service("init", "qi", [])
    h.service("target", "qt", ["C"])
    ok = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    h.send(ok, good, message_type="T")
    assert bodies(h.drain("qt")) == [good]

    bad_handle = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    h.send(bad_handle, bad, b"after", message_type="T")
    assert h.drain("qt") == [], "neither the bad message nor anything after it is queued"
    (handle, seq, mtype, body), = h.drain("qi")
    assert (handle, seq, mtype) == (bad_handle, -1, ERROR)
    code, description = parse_error_body(body)
    assert code == BrokerErrorCode.VALIDATION_FAILED and reason in description
    assert h.core.endpoints[bad_handle].state is State.ERROR
    with pytest.raises(ConversationError, match="in error"):
        h.core.send(bad_handle, [["T", good]], h.now)


def test_target_that_does_not_accept_the_contract_errors_the_initiator() -> None:
    h = Harness()
    h.core.create_object("message_type", {"name": "T"})
    h.core.create_object("contract", {"name": "C", "messages": {"T": "any"}})
    h.service("init", "qi", [])
    h.service("target", "qt", ["DEFAULT"])
    handle = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    h.send(handle, b"x", message_type="T")
    assert h.drain("qt") == []
    (_, _, mtype, body), = h.drain("qi")
    assert mtype == ERROR
    assert parse_error_body(body) == (
        BrokerErrorCode.CONTRACT_NOT_ACCEPTED,
        "service 'target' does not accept contract 'C'",
    )


def test_end_sends_end_dialog_after_queued_messages_and_far_side_may_not_send() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"1", b"2")
    h.core.end(handle, h.now)
    h.flush()
    got = h.drain("qt")
    assert [(seq, t) for _, seq, t, _ in got] == [(0, "DEFAULT"), (1, "DEFAULT"), (2, END_DIALOG)]
    target = got[0][0]
    assert h.core.endpoints[target].state is State.DISCONNECTED_INBOUND
    with pytest.raises(ConversationError, match="the far side has ended it; call end"):
        h.core.send(target, [["DEFAULT", b"late"]], h.now)
    h.core.end(target, h.now)
    h.flush()
    assert h.core.endpoints == {}, "both sides ended: nothing is left"
    assert h.store.endpoints == {} and h.store.messages == {}
    with pytest.raises(ConversationError, match="has ended on this side"):
        h.core.send(handle, [["DEFAULT", b"x"]], h.now)


def test_end_with_error_tells_the_far_side_code_and_description() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"request")
    (target, _, _, _), = h.drain("qt")
    h.core.end(target, h.now, error=(42, "out of stock"))
    h.flush()
    (_, _, mtype, body), = h.drain("qi")
    assert mtype == ERROR and parse_error_body(body) == (42, "out of stock")
    assert h.core.endpoints[handle].state is State.ERROR
    with pytest.raises(InvalidArgument, match="code > 0"):
        h.core.end(handle, h.now, error=(-1, "the broker's codes are negative"))


def test_ending_a_conversation_removes_its_unreceived_messages() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"1", b"2")
    lease = h.receive("qt", n=1)
    assert lease is not None
    target = lease.messages[0][ROW_HANDLE]
    h.core.commit(lease.id, h.owner)
    h.core.end(target, h.now)
    h.flush()
    assert h.drain("qt") == [], "the second message belonged to a conversation that ended on this side"
    assert all(row[ROW_HANDLE] != target for row in h.store.messages.values())


def test_lifetime_runs_out_on_both_sides() -> None:
    h = Harness()
    h.service("init", "qi", [])
    h.service("target", "qt")
    handle = h.core.begin_dialog(
        from_service="init", to_service="target", contract="DEFAULT", now=h.now, lifetime=60
    ).handle
    h.send(handle, b"hello")
    h.advance(59.9)
    assert h.core.endpoints[handle].state is State.CONVERSING
    h.advance(0.2)
    init_msgs = h.drain("qi")
    target_msgs = h.drain("qt")
    assert [t for _, _, t, _ in init_msgs] == [ERROR]
    assert [t for _, _, t, _ in target_msgs] == [ERROR, "DEFAULT"], "an Error comes ahead of the rest"
    assert parse_error_body(init_msgs[0][3])[0] == BrokerErrorCode.LIFETIME_EXPIRED
    with pytest.raises(ConversationError, match="lifetime ran out"):
        h.core.send(handle, [["DEFAULT", b"x"]], h.now)
    # the broker never ends it by itself: each side still ends its own
    assert h.core.endpoints[handle].state is State.ERROR
    h.core.end(handle, h.now)
    h.core.end(target_msgs[1][0], h.now)
    h.flush()
    assert h.core.endpoints == {}


def test_timer_fires_once_and_is_reset_by_a_new_call() -> None:
    h = Harness()
    handle = h.pair()
    h.core.begin_timer(handle, 10, h.now)
    h.advance(5)
    h.core.begin_timer(handle, 10, h.now)  # reset: now due at +15 from start
    h.advance(6)
    assert h.drain("qi") == []
    h.advance(4.5)
    assert [(seq, t) for _, seq, t, _ in h.drain("qi")] == [(-1, DIALOG_TIMER)]
    h.advance(100)
    assert h.drain("qi") == [], "a timer fires once"


def test_error_and_timer_come_ahead_of_other_messages_of_the_group() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"1")
    (target, _, _, _), = h.drain("qt")
    h.send(target, b"a", b"b")
    h.core.begin_timer(handle, 0, h.now)
    h.advance(0)
    assert [t for _, _, t, _ in h.drain("qi")] == [DIALOG_TIMER, "DEFAULT", "DEFAULT"]


def test_unknown_target_service_is_delayed_then_delivered_in_order() -> None:
    h = Harness()
    h.service("init", "qi", [])
    handle = h.core.begin_dialog(from_service="init", to_service="later", contract="DEFAULT", now=h.now).handle
    h.send(handle, b"1", b"2")
    h.send(handle, b"3")
    stats = h.core.statistics()["delayed"]["later"]
    assert stats["messages"] == 3 and "no route" in stats["reason"]
    assert h.core.endpoints[handle].delayed is not None
    h.service("later", "ql")
    assert bodies(h.drain("ql")) == [b"1", b"2", b"3"]
    h.send(handle, b"4")
    assert bodies(h.drain("ql")) == [b"4"]
    assert h.core.statistics()["delayed"] == {}


def test_delayed_messages_survive_a_restart() -> None:
    h = Harness()
    h.service("init", "qi", [])
    handle = h.core.begin_dialog(from_service="init", to_service="later", contract="DEFAULT", now=h.now).handle
    h.send(handle, b"1", b"2")
    h2 = h.restart()
    h2.service("later", "ql")
    assert bodies(h2.drain("ql")) == [b"1", b"2"]


@pytest.mark.parametrize("error", [None, (1, "gave up")])
def test_ending_a_delayed_conversation_takes_its_waiting_messages_out(error: tuple[int, str] | None) -> None:
    h = Harness()
    h.service("init", "qi", [])
    handle = h.core.begin_dialog(from_service="init", to_service="later", contract="DEFAULT", now=h.now).handle
    h.send(handle, b"1", b"2")
    assert h.core.end(handle, h.now, error=error) == 2, "the caller is told how many were dropped"
    h.flush()
    assert h.core.statistics()["delayed"] == {}
    assert h.core.tx.delayed_total == 0
    h.service("later", "ql")
    assert h.drain("ql") == [], "nothing of it ever reached the far side, so nothing goes now"
    assert h.store.messages == {}
