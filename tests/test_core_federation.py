"""Exactly once and in order between two nodes' cores, envelopes handed across by hand (no sockets)."""

from __future__ import annotations

import pytest
from core_harness import A_ADDR, B_ADDR, NO_BYTE_LIMIT, Harness, carry, route_both_ways

from aiobroker.core.catalog import END_DIALOG, ERROR
from aiobroker.core.conversation import State
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.core.effects import Report
from aiobroker.core.records import ROW_LOCATION
from aiobroker.core.transmission import ENVELOPE_OVERHEAD



def pair(**options: object) -> tuple[Harness, Harness, str]:
    """Node a (service svcA) and node b (service svcB, accepts DEFAULT), routes both ways, one dialog a -> b."""
    a, b = Harness(**options), Harness(**options)  # type: ignore[arg-type]
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.flush()
    return a, b, handle


def bodies(h: Harness, queue: str) -> list[bytes]:
    return [x[3] for x in h.drain(queue)]


def test_messages_cross_once_in_order_and_acknowledged_ones_leave_the_sender() -> None:
    a, b, handle = pair()
    a.send(handle, *[b"%d" % i for i in range(10)])
    assert a.core.statistics()["transmission"]["messages"] == 10
    _, acks = carry(a, b, B_ADDR)
    assert [ack[3] for ack in acks] == [10], "one cumulative ack for the run"
    assert bodies(b, "qb") == [b"%d" % i for i in range(10)]
    assert a.core.statistics()["transmission"]["messages"] == 0
    assert all(row[ROW_LOCATION] != "tx" for row in a.store.messages.values()), "acknowledged rows leave the store"
    assert a.core.endpoints[handle].far_broker_instance == b.core.broker_instance, "sticky after the first ack"


def test_duplicates_are_acknowledged_and_dropped() -> None:
    a, b, handle = pair()
    a.send(handle, b"1", b"2", b"3")
    envelopes = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    b.core.accept(envelopes, b.now)
    b.flush()
    acks, _ = b.core.accept(envelopes, b.now)  # the same again: a resend after a lost ack
    b.flush()
    assert acks[0][3] == 3
    assert bodies(b, "qb") == [b"1", b"2", b"3"]


def test_a_links_frame_stays_within_its_byte_budget_and_the_rest_follows_in_order() -> None:
    a, b, handle = pair()
    body = 10_000
    a.send(handle, *[bytes([i]) * body for i in range(7)])
    a.core.send(handle, [["DEFAULT", b"x" * 50_000]], a.now)  # alone over the budget
    a.flush()
    budget = 3 * (body + ENVELOPE_OVERHEAD)
    frames, more = [], []
    for _ in range(10):  # bounded: 4 frames are expected
        a.core.tx.ready_links.clear()
        envelopes = a.core.outgoing(B_ADDR, 100, budget)
        if not envelopes:
            break
        frames.append([e[3] for e in envelopes])
        more.append(B_ADDR in a.core.tx.ready_links)
    assert frames == [[0, 1, 2], [3, 4, 5], [6], [7]], "three fit; the one over the budget goes alone"
    assert more == [True, True, True, False], "the link is woken again while the budget left some behind"


@pytest.mark.parametrize("far_side_had_them", [False, True], ids=["lost-on-the-way", "stored-but-ack-lost"])
def test_an_error_ending_a_conversation_with_messages_in_flight_reaches_the_far_side(far_side_had_them: bool) -> None:
    # end(error=...) drops what is not yet acknowledged, so the Error's sequence number may lie past a gap the
    # sender will never fill: the far side delivers an Error past a gap, and both ends let the conversation go.
    a, b, handle = pair()
    a.send(handle, b"0")
    carry(a, b, B_ADDR)
    a.send(handle, b"1", b"2")
    in_flight = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    assert [e[3] for e in in_flight] == [1, 2]
    if far_side_had_them:
        b.core.accept(in_flight, b.now)  # stored; the acknowledgement is lost on its way back
        b.flush()
    a.core.end(handle, a.now, error=(5, "giving up"))
    a.flush()
    a.core.tx.links[B_ADDR].new_epoch()  # the acknowledgement time-out: what is unacknowledged goes again
    sent, acks = carry(a, b, B_ADDR)
    assert [(e[3], e[9]) for e in sent] == [(3, ERROR)], "the two in flight were dropped; the Error follows them"
    assert acks[0][3] == 4
    got = b.drain("qb")
    assert got[0][2] == ERROR, "an Error is handed out ahead of the rest of its conversation"
    assert sorted((seq, t) for _, seq, t, _ in got) == [(0, "DEFAULT")] + (
        [(1, "DEFAULT"), (2, "DEFAULT")] if far_side_had_them else []
    ) + [(3, ERROR)]
    assert parse_error_body(got[0][3]) == (5, "giving up")
    far = b.core.endpoints[got[0][0]]
    assert far.state is State.ERROR
    assert a.core.tx.message_count == 0 and not a.core.tx.links[B_ADDR].sent, "nothing left to resend"
    assert carry(a, b, B_ADDR)[0] == []


@pytest.mark.parametrize("had_left", [False, True], ids=["never-left", "left-then-route-dropped"])
def test_ending_with_delayed_messages_dropped_tells_the_far_side_with_an_error(had_left: bool) -> None:
    a, b, handle = pair()
    a.send(handle, b"0")
    carry(a, b, B_ADDR)  # the far side knows the conversation
    a.send(handle, b"1", b"2")
    if had_left:
        assert len(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)) == 2  # sent, and lost on the way
    a.core.drop_object("route", "to-b", a.now)  # no route now: the two wait, DELAYED
    a.flush()
    assert a.core.end(handle, a.now) == 2, "end() says how many it dropped"
    a.flush()
    a.core.create_object("route", {"name": "to-b", "service_name": "svcB", "address": B_ADDR}, a.now)
    a.flush()
    sent, acks = carry(a, b, B_ADDR)
    assert [(e[3], e[9]) for e in sent] == [(3, ERROR)], "an Error, not an EndDialog, after what was dropped"
    assert acks[0][3] == 4
    got = b.drain("qb")
    assert sorted((seq, t) for _, seq, t, _ in got) == [(0, "DEFAULT"), (3, ERROR)]
    code, description = parse_error_body(got[0][3])
    assert code == BrokerErrorCode.DELAYED_MESSAGES_DROPPED and "2 of its message(s)" in description
    assert "'svcB'" in description
    assert b.core.endpoints[got[0][0]].state is State.ERROR
    assert a.core.tx.message_count == 0, "acknowledged: nothing left to send"


def test_a_gap_is_not_delivered_past_and_a_resend_fills_it() -> None:
    a, b, handle = pair()
    a.send(handle, *[b"%d" % i for i in range(6)])
    _, acks = carry(a, b, B_ADDR, drop={2})
    assert acks[0][3] == 2
    assert bodies(b, "qb") == [b"0", b"1"], "nothing after the gap"
    a.core.tx.links[B_ADDR].new_epoch()  # the acknowledgement time-out: everything unacknowledged goes again
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"2", b"3", b"4", b"5"]


def test_only_stored_messages_leave_for_a_peer() -> None:
    a, b, handle = pair()
    a.core.send(handle, [["DEFAULT", b"not yet stored"]], a.now)
    assert a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT) == [], "a crash now must not have let a peer see sequence number 0"
    a.flush()
    assert len(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)) == 1


def test_the_receiver_remembers_what_it_stored_across_a_restart() -> None:
    a, b, handle = pair()
    a.send(handle, b"1", b"2")
    envelopes = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    b.core.accept(envelopes, b.now)
    b.flush()  # stored, but the ack never reached a
    b2 = b.restart()
    acks, _ = b2.core.accept(envelopes, b2.now)  # a resends after its time-out
    b2.flush()
    assert acks[0][3] == 2
    assert bodies(b2, "qb") == [b"1", b"2"], "each exactly once across the restart"


def test_the_sender_resends_after_its_own_restart() -> None:
    a, b, handle = pair()
    a.send(handle, b"1", b"2")
    a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)  # sent, then a crashed before any ack
    a2 = a.restart()
    carry(a2, b, B_ADDR)
    assert bodies(b, "qb") == [b"1", b"2"]
    assert a2.core.statistics()["transmission"]["messages"] == 0


def test_replies_travel_back_and_end_dialog_closes_both_sides() -> None:
    a, b, handle = pair()
    a.send(handle, b"request")
    carry(a, b, B_ADDR)
    (target, _, _, _), = b.drain("qb")
    b.send(target, b"reply")
    b.core.end(target, b.now)
    b.flush()
    carry(b, a, A_ADDR)
    got = a.drain("qa")
    assert [(t, body) for _, _, t, body in got] == [("DEFAULT", b"reply"), (END_DIALOG, b"")]
    assert a.core.endpoints[handle].state is State.DISCONNECTED_INBOUND
    assert b.core.endpoints[target].state is State.CLOSED, "kept closed to recognise retransmissions"


def test_a_retransmitted_first_message_does_not_begin_the_conversation_twice() -> None:
    a, b, handle = pair()
    a.send(handle, b"only once")
    first = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    b.core.accept(first, b.now)
    b.flush()
    (target, _, _, _), = b.drain("qb")
    b.core.end(target, b.now)
    b.flush()
    acks, _ = b.core.accept(first, b.now)  # the ack was lost; a resends message 0
    b.flush()
    assert acks[0][3] == 1
    assert b.drain("qb") == [], "the closed endpoint swallows it; no second conversation"
    assert len([e for e in b.core.endpoints.values() if e.conversation_id == b.core.endpoints[target].conversation_id]) == 1


def test_a_closed_remote_endpoint_is_retired_after_closed_retention() -> None:
    a, b, handle = pair(closed_retention=60.0)
    a.send(handle, b"x")
    carry(a, b, B_ADDR)
    (target, _, _, _), = b.drain("qb")
    b.core.end(target, b.now)
    b.flush()
    carry(b, a, A_ADDR)  # its EndDialog acknowledged
    assert target in b.core.endpoints
    b.advance(59)
    assert target in b.core.endpoints
    b.advance(2)
    assert target not in b.core.endpoints and target not in b.store.endpoints


def test_a_message_failing_the_receivers_validation_sends_an_error_back() -> None:
    a, b, handle = pair()
    for h in (a, b):
        h.core.create_object("message_type", {"name": "J", "validation": "json"})
        h.core.create_object("contract", {"name": "C", "messages": {"J": "any"}})
        h.flush()
    b.core.create_object("service", {"name": "svcJ", "queue": "qb", "contracts": ["C"]})
    a.core.create_object("route", {"name": "to-j", "service_name": "svcJ", "address": B_ADDR}, a.now)
    a.flush()
    b.flush()
    dialog = a.core.begin_dialog(from_service="svcA", to_service="svcJ", contract="C", now=a.now).handle
    a.send(dialog, b"{not json", message_type="J")
    carry(a, b, B_ADDR)
    assert b.drain("qb") == []
    carry(b, a, A_ADDR)
    (_, _, mtype, body), = a.drain("qa")
    assert mtype == ERROR
    code, description = parse_error_body(body)
    assert code == BrokerErrorCode.VALIDATION_FAILED and "validation 'json' failed" in description


def test_a_target_that_does_not_accept_the_contract_refuses_the_first_message() -> None:
    a, b, handle = pair()
    for h in (a, b):
        h.core.create_object("message_type", {"name": "T"})
        h.core.create_object("contract", {"name": "C2", "messages": {"T": "any"}})
        h.flush()
    dialog = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="C2", now=a.now).handle
    a.send(dialog, b"x", message_type="T")
    carry(a, b, B_ADDR)
    carry(b, a, A_ADDR)
    (_, _, mtype, body), = a.drain("qa")
    assert mtype == ERROR and parse_error_body(body)[0] == BrokerErrorCode.CONTRACT_NOT_ACCEPTED



def test_a_link_that_stopped_at_an_unstored_message_is_woken_by_the_write_that_stores_it() -> None:
    a, b, handle = pair()
    a.send(handle, b"stored")
    a.core.tx.ready_links.clear()  # the shell woke the link for it ...
    a.core.send(handle, [["DEFAULT", b"not yet stored"]], a.now)
    a.core.tx.ready_links.clear()  # ... and that wake-up, after the first write, cleared the mark
    assert [e[10] for e in a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)] == [b"stored"]
    assert B_ADDR in a.core.tx.ready_links, "the link must be woken when the second message is stored"
    a.flush()
    assert [e[10] for e in a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)] == [b"not yet stored"]


def test_altering_a_route_moves_unacknowledged_messages_to_the_new_address() -> None:
    a, b, handle = pair()
    a.send(handle, b"1", b"2")
    assert len(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)) == 2  # sent to the old address, never acknowledged
    a.core.alter_route("to-b", {"address": "tcp://b2:1"}, a.now)
    a.flush()
    assert a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT) == []
    assert [e[10] for e in a.core.outgoing("tcp://b2:1", 100, NO_BYTE_LIMIT)] == [b"1", b"2"], "resent, in order, to the new address"
    assert a.store.objects[("route", "to-b")]["address"] == "tcp://b2:1"


def test_a_new_conversations_first_message_is_delivered_in_one_run_with_those_after_it() -> None:
    a, b, handle = pair()
    a.send(handle, b"0", b"1", b"2")
    b.core.accept(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT), b.now)
    assert [len(rows) for _, _, _, rows in b.core.ledger.pending] == [3], "message 0 is not a run of its own"
    b.flush()
    assert bodies(b, "qb") == [b"0", b"1", b"2"]


def test_the_rows_of_one_queue_from_a_peer_share_one_location_string() -> None:
    a, b, _ = pair()
    for _ in range(3):  # three conversations, each a run of its own
        h = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
        a.send(h, b"x")
    b.core.accept(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT), b.now)
    locations = [rows[0][ROW_LOCATION] for _, _, _, rows in b.core.ledger.pending]
    assert locations == ["q:qb"] * 3
    assert all(loc is locations[0] for loc in locations), "one string, hashed once, not one per row"


def test_a_frame_of_new_conversations_is_counted_whole_and_a_bounded_queue_takes_only_what_fits() -> None:
    a, b, _ = pair()
    b.service("svcC", "qc")
    b.core.alter_queue("qc", {"max_messages": 2})
    a.core.create_object("route", {"name": "to-c", "service_name": "svcC", "address": B_ADDR}, a.now)
    for service in ("svcB", "svcC"):
        for _ in range(3):  # a conversation each, one frame for all six
            a.send(a.core.begin_dialog(from_service="svcA", to_service=service, contract="DEFAULT", now=a.now).handle,
                   b"x")
    acks, _ = b.core.accept(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT), b.now)
    assert [ack[3] for ack in acks] == [1] * 5 + [0], "the third message to the full queue is not acknowledged"
    assert b.core.budget.in_queue("qb") == (3, 3) and b.core.budget.in_queue("qc") == (2, 2)
    b.flush()
    assert len(b.drain("qb")) == 3 and len(b.drain("qc")) == 2


def test_malformed_acknowledgements_in_a_frame_are_reported_and_the_good_ones_still_apply() -> None:
    a, b, handle = pair()
    a.send(handle, b"1", b"2")
    acks, _ = b.core.accept(a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT), b.now)
    b.flush()
    a.core.drain_effects()
    bad = [[1, "conversation", True, "2", "b"], "ack", [1, 7, True, 2, "b"], [1, "c", True, 2]]
    foreign = a.core.acknowledged([bad[0], bad[1], *acks, bad[2], bad[3]], a.now)
    assert foreign == [] and a.core.statistics()["transmission"]["messages"] == 0, "the good acknowledgement applied"
    reports = [e.text for e in a.core.drain_effects() if isinstance(e, Report)]
    assert reports == [f"a peer sent a malformed acknowledgement: {x}" for x in map(str, bad)], "each named, in order"
