"""How the core makes endpoints: the positional constructor the hot paths use (``Endpoint.new``) makes what the
keyword one makes, and the far identity "public" of a plain conversation from a peer is one shared object that no
endpoint changes for another."""

from __future__ import annotations

import gc

import pytest
from core_harness import B_ADDR, NO_BYTE_LIMIT, Harness, carry, route_both_ways

from aiobroker.core.conversation import Endpoint, State, _Rare


def everything(ep: Endpoint) -> tuple[object, ...]:
    return (ep.handle, ep.to_state(), ep.describe(), repr(ep))


@pytest.mark.parametrize(
    "far_identity, secured, far_handle", [(None, None, "far-1"), ("public", False, None), ("alice", True, None)]
)
def test_the_positional_constructor_makes_what_the_keyword_one_makes(
    far_identity: str | None, secured: bool | None, far_handle: str | None
) -> None:
    keywords = Endpoint(
        handle="h-1", conversation_id="c-1", is_initiator=False, service="svc", far_service="far", contract="DEFAULT",
        group_id="h-1", expires_at=12.5, far_handle=far_handle, far_broker_instance="node-b",
        state=State.CONVERSING, encryption=bool(secured), secured=secured, far_identity=far_identity,
    )
    positional = Endpoint.new(
        "h-1", "c-1", False, "svc", "far", "DEFAULT", "h-1", 12.5, far_handle, "node-b", State.CONVERSING,
        bool(secured), secured, far_identity,
    )
    assert everything(positional) == everything(keywords)
    for ep in (keywords, positional):  # every rare field still reads and writes as before
        ep.timer_at, ep.session_key = 99.0, b"k" * 32
        assert (ep.timer_at, ep.session_key, ep.far_identity, ep.error) == (99.0, b"k" * 32, far_identity, None)
    assert everything(positional) == everything(keywords)


def peer_pair() -> tuple[Harness, Harness]:
    a, b = Harness(), Harness()
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    return a, b


def rare_objects() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is _Rare)


def test_plain_conversations_from_a_peer_are_public_without_an_object_each() -> None:
    a, b = peer_pair()
    for _ in range(200):
        a.send(a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle, b"x")
    a.flush()
    before = rare_objects()
    b.core.accept(a.core.outgoing(B_ADDR, 1000, NO_BYTE_LIMIT), b.now)
    b.flush()
    targets = [ep for ep in b.core.endpoints.values() if not ep.is_initiator]
    assert len(targets) == 200
    assert rare_objects() - before == 0, "each plain conversation from a peer made an object for its far identity"
    # what status, the store and a restart read is unchanged
    assert {ep.describe()["far_identity"] for ep in targets} == {"public"}
    assert {tuple(b.store.endpoints[ep.handle][12:]) for ep in targets} == {
        (None, False, None, None, False, None, None, "public")
    }
    restarted = b.restart()
    assert {restarted.core.endpoints[ep.handle].far_identity for ep in targets} == {"public"}


def test_a_field_set_on_one_public_conversation_is_its_own() -> None:
    a, b = peer_pair()
    for _ in range(3):
        a.send(a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle, b"x")
    carry(a, b, B_ADDR)
    b.flush()
    first, second, third = (ep for ep in b.core.endpoints.values() if not ep.is_initiator)
    b.core.begin_timer(first.handle, 60, b.now)
    first.far_identity = None  # None where the shared object says "public": this endpoint's alone too
    b.flush()
    assert (first.timer_at, first.far_identity) == (b.now + 60, None)
    for ep in (second, third):
        assert (ep.timer_at, ep.far_identity) == (None, "public")
        assert b.store.endpoints[ep.handle][12] is None and b.store.endpoints[ep.handle][19] == "public"
    assert b.store.endpoints[first.handle][12] == b.now + 60 and b.store.endpoints[first.handle][19] is None
