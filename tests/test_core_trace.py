"""W3C trace context on the pure core: carried in the row, stored, kept across a restart, carried in envelopes
between two cores (plain, forwarded, and sealed inside dialog security), refused when malformed."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import B_ADDR, NO_BYTE_LIMIT, Harness, carry, route_both_ways
from test_core_security import begin, nodes, pems  # noqa: F401  (pems: the module-scoped certificate fixture)

from aiobroker.core.records import row_trace
from aiobroker.errors import InvalidArgument
from aiobroker.wire.codec import packb

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE = PARENT + " rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
OTHER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def traces(h: Harness, queue: str) -> list[tuple[bytes, str | None]]:
    """(body, trace context) of everything ready in ``queue``, received and committed."""
    out = []
    while (lease := h.receive(queue)) is not None:
        out.extend((row[5], row_trace(row)) for row in lease.messages)
        h.core.commit(lease.id, h.owner)
        h.flush()
    return out


def test_a_message_s_trace_context_is_stored_with_it_and_survives_a_restart() -> None:
    h = Harness()
    handle = h.pair()
    h.core.send(handle, [["DEFAULT", b"1", TRACE], ["DEFAULT", b"2"], ["DEFAULT", b"3", None], ["DEFAULT", b"4", OTHER]], h.now)
    h.flush()
    h.core.send(handle, [["DEFAULT", b"5"]], h.now)  # a batch without: rows with None, as before
    h.flush()
    stored = sorted(h.store.messages.values())
    assert [row_trace(row) for row in stored] == [TRACE, None, None, OTHER, None]
    assert [len(row) for row in stored] == [9, 8, 8, 9, 8], "a row without trace context keeps its eight fields"
    again = h.restart()
    assert traces(again, "qt") == [(b"1", TRACE), (b"2", None), (b"3", None), (b"4", OTHER), (b"5", None)]


@pytest.mark.parametrize(
    ("trace", "words"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "expected 00-<32 lowercase hex"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "not all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "not all zeros"),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "lowercase hex"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "expected 00-"),
        (PARENT + " " + "k=v," * 70, "over the 256 this broker carries"),
        (PARENT + " k=\x01", "printable ASCII"),
        (PARENT + "x", "is not a W3C traceparent"),
        (42, "is a string"),
    ],
)
def test_a_malformed_trace_context_is_refused_saying_the_format_and_nothing_is_sent(trace: Any, words: str) -> None:
    h = Harness()
    handle = h.pair()
    with pytest.raises(InvalidArgument, match=words):
        h.core.send(handle, [["DEFAULT", b"ok", TRACE], ["DEFAULT", b"bad", trace]], h.now)
    h.flush()
    assert h.core.endpoints[handle].send_seq == 0
    assert traces(h, "qt") == []


def two_nodes() -> tuple[Harness, Harness, str]:
    a, b = Harness(), Harness()
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.flush()
    return a, b, handle


def test_trace_context_crosses_to_another_node_as_the_15th_field_and_only_when_there_is_one() -> None:
    a, b, handle = two_nodes()
    a.core.send(handle, [["DEFAULT", b"traced", TRACE], ["DEFAULT", b"plain"]], a.now)
    a.flush()
    a = a.restart()  # waiting in the transmission queue across a restart of the sender
    sent, acks = carry(a, b, B_ADDR)
    assert [len(e) for e in sent] == [15, 14], "an envelope without trace context keeps the shape older nodes know"
    assert sent[0][14] == TRACE and acks[0][3] == 2
    b = b.restart()
    assert traces(b, "qb") == [(b"traced", TRACE), (b"plain", None)]


def test_an_envelope_of_an_older_node_without_the_field_is_accepted() -> None:
    a, b, handle = two_nodes()
    a.core.send(handle, [["DEFAULT", b"old"]], a.now)
    a.flush()
    envelopes = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    assert len(envelopes[0]) == 14
    acks, _ = b.core.accept(envelopes, b.now)
    b.flush()
    assert acks[0][3] == 1 and traces(b, "qb") == [(b"old", None)]


def test_a_malformed_trace_field_from_a_peer_is_reported_and_dropped_unacknowledged() -> None:
    a, b, handle = two_nodes()
    a.core.send(handle, [["DEFAULT", b"1", TRACE], ["DEFAULT", b"2", TRACE]], a.now)
    a.flush()
    envelopes = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)
    envelopes[1][14] = "00-junk"
    acks, _ = b.core.accept(envelopes, b.now)
    b.flush()
    assert acks[0][3] == 1, "the well-formed one is taken, the other is not acknowledged"
    assert traces(b, "qb") == [(b"1", TRACE)]
    assert any("malformed envelope" in r for r in b.reports())


def test_a_forwarding_core_passes_the_trace_context_on_unchanged() -> None:
    a, b, handle = two_nodes()
    f = Harness(forwarding=True)
    f.core.create_object("route", {"name": "to-b", "service_name": "svcB", "address": B_ADDR}, f.now)
    f.flush()
    a.core.send(handle, [["DEFAULT", b"via f", TRACE]], a.now)
    a.flush()
    envelopes = a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)  # a's route says B_ADDR; f stands there
    _, forwards = f.core.accept(envelopes, f.now)
    (forwarded,) = forwards[B_ADDR]
    assert forwarded[14] == TRACE and forwarded[12] == 1
    b.core.accept([forwarded], b.now)
    b.flush()
    assert traces(b, "qb") == [(b"via f", TRACE)]


# ------------------------------------------------------------------------------------------- dialog security


def test_on_a_secured_conversation_the_trace_context_travels_sealed_and_arrives(pems: Any) -> None:  # noqa: F811
    a, b = nodes(pems)
    handle = begin(a, encryption=True)
    a.core.send(handle, [["DEFAULT", b"secret", TRACE], ["DEFAULT", b"untraced"]], a.now)
    a.flush()
    sent, acks = carry(a, b, B_ADDR)
    wire = b"".join(packb(e) for e in sent)
    assert PARENT.encode() not in wire and b"rojo" not in wire, "the trace context travelled in the clear"
    assert sent[0][14] is True and len(sent[1]) == 14, "a forwarder sees only that there is one"
    assert acks[0][3] == 2
    assert traces(b, "qb") == [(b"secret", TRACE), (b"untraced", None)]


def _tamper_and_carry(pems: Any, tamper: Any) -> tuple[Harness, Harness, list[str]]:  # noqa: F811
    a, b = nodes(pems)
    handle = begin(a, encryption=True)
    a.core.send(handle, [["DEFAULT", b"first"]], a.now)
    a.flush()
    carry(a, b, B_ADDR)
    a.core.send(handle, [["DEFAULT", b"secret", TRACE]], a.now)
    a.flush()
    _, acks = carry(a, b, B_ADDR, tamper=tamper)
    return a, b, [*map(str, acks), *b.reports()]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda envs: envs[0].pop(), id="context stripped"),
        pytest.param(lambda envs: envs[0].__setitem__(14, OTHER), id="context replaced in the clear"),
        pytest.param(lambda envs: envs[0].__setitem__(10, envs[0][10][:-1] + bytes([envs[0][10][-1] ^ 1])), id="bit flipped"),
    ],
)
def test_a_forwarder_cannot_strip_replace_or_alter_a_sealed_trace_context(pems: Any, tamper: Any) -> None:  # noqa: F811
    a, b, said = _tamper_and_carry(pems, tamper)
    assert traces(b, "qb") == [(b"first", None)], "the tampered message was delivered"
    assert any("failed dialog security" in s for s in said), said
    a.core.tx.links[B_ADDR].new_epoch()  # the acknowledgement time-out: it goes again, untouched
    carry(a, b, B_ADDR)
    assert traces(b, "qb") == [(b"secret", TRACE)]
