"""The conversation state table (core/conversation_states.py): every row driven through the core one by one, every
pair not in it refused, and the states endpoints go through on a few whole paths (pure core, fake clock)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from core_harness import A_ADDR, B_ADDR, Harness, carry, route_both_ways

from aiobroker.core.broker import BrokerCore
from aiobroker.core.catalog import END_DIALOG, ERROR
from aiobroker.core.conversation import Endpoint
from aiobroker.core.conversation_states import STARTS, TRANSITIONS, Event, ForbiddenTransition, State, next_state
from aiobroker.errors import BrokerError, InternalError

#: the table as the docs state it (docs/semantics.md, "Conversations"), written out here on purpose: a row changed
#: in the code, added or removed, fails ``test_the_table_is_the_documented_one`` instead of being echoed
EXPECTED = """
SO SEND_FIRST       CO
SO END_REMOTE       DI
CO END_REMOTE       DI
DI END_REMOTE       DI
ER END_REMOTE       ER
SO ERROR_REMOTE     ER
CO ERROR_REMOTE     ER
DI ERROR_REMOTE     ER
ER ERROR_REMOTE     ER
SO FAIL             ER
CO FAIL             ER
DI FAIL             ER
SO REFUSE           ER
CO REFUSE           ER
DI REFUSE           ER
ER REFUSE           ER
SO REFUSE_FIRST     CD
CO REFUSE_FIRST     CD
ER REFUSE_FIRST     CD
SO LIFETIME_EXPIRED ER
CO LIFETIME_EXPIRED ER
DI LIFETIME_EXPIRED ER
SO END_LOCAL        CD
CO END_LOCAL        CD
DI END_LOCAL        CD
ER END_LOCAL        CD
SO CLEANUP          CD
CO CLEANUP          CD
DI CLEANUP          CD
ER CLEANUP          CD
"""


def expected_rows() -> dict[tuple[str, str], str]:
    rows = [line.split() for line in EXPECTED.strip().splitlines()]
    table = {(state, event): to for state, event, to in rows}
    assert len(table) == len(rows), "a row written twice"
    return table


def test_the_table_is_the_documented_one() -> None:
    assert {(s.value, e.name): to.value for (s, e), to in TRANSITIONS.items()} == expected_rows()
    assert {e.name: s.value for e, s in STARTS.items()} == {"BEGIN": "SO", "RECEIVE_FIRST": "CO"}
    assert [s.value for s in State] == ["SO", "CO", "DI", "ER", "CD"]


def test_nothing_leaves_closed_and_only_sending_states_may_send() -> None:
    assert not [row for row in TRANSITIONS if row[0] is State.CLOSED], "CD is the end: no row leaves it"
    assert {s for s in State if s.can_send} == {State.STARTED_OUTBOUND, State.CONVERSING}


def counted_endpoint(state: State) -> tuple[BrokerCore, Endpoint]:
    """A core holding one endpoint in ``state``, counted as ``load`` counts a stored one."""
    core = BrokerCore(broker_instance="node-a")
    ep = Endpoint(
        handle="h1",
        conversation_id="c1",
        is_initiator=True,
        service="s",
        far_service="t",
        contract="DEFAULT",
        group_id="g1",
        expires_at=1e9,
        state=state,
    )
    core.endpoints[ep.handle] = ep
    core.conversations.watch(ep)
    return core, ep


@pytest.mark.parametrize(
    ("state", "event", "to"),
    [(s, e, to) for (s, e), to in expected_rows().items()],
    ids=[f"{s}-{e}-{to}" for (s, e), to in expected_rows().items()],
)
def test_each_row_changes_the_state_and_its_count(state: str, event: str, to: str) -> None:
    core, ep = counted_endpoint(State(state))
    core.conversations.transition(ep, Event[event])
    assert ep.state is State(to)
    assert core.statistics()["conversations_by_state"] == {to: 1}, "the per-state count follows the change"


FORBIDDEN = [(s, e) for s in State for e in Event if (s.value, e.name) not in expected_rows()]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=[f"{s.value}-{e.name}" for s, e in FORBIDDEN])
def test_a_change_not_in_the_table_raises_and_changes_nothing(state: State, event: Event) -> None:
    core, ep = counted_endpoint(state)
    with pytest.raises(ForbiddenTransition) as info:
        core.conversations.transition(ep, event)
    assert ep.state is state
    assert core.statistics()["conversations_by_state"] == {state.value: 1}
    assert (info.value.handle, info.value.state, info.value.event) == ("h1", state, event)


def test_the_forbidden_change_names_state_event_and_what_the_table_allows() -> None:
    with pytest.raises(ForbiddenTransition) as info:
        next_state("h1", State.CLOSED, Event.END_LOCAL)
    err = info.value
    assert isinstance(err, InternalError) and isinstance(err, BrokerError) and err.code == "internal_error"
    assert str(err) == (
        "conversation endpoint h1: no change of state from CD (closed) on event END_LOCAL (the state table has"
        " END_LOCAL only as SO -> CD, CO -> CD, DI -> CD, ER -> CD); this is a bug in aiobroker: please report it"
        " with the node's log"
    )
    assert "on event LIFETIME_EXPIRED (the state table has LIFETIME_EXPIRED only as SO -> ER, CO -> ER, DI -> ER)" in (
        str(ForbiddenTransition("h1", State.ERROR, Event.LIFETIME_EXPIRED))
    )


# --- whole paths: the states each endpoint goes through ---------------------------------------------------------


class Journal:
    """Every change of state of a core, per endpoint: ``"SO -SEND_FIRST-> CO -END_LOCAL-> CD"``."""

    def __init__(self, core: BrokerCore) -> None:
        self.paths: dict[str, str] = {}
        change = core.conversations.transition

        def watched(ep: Endpoint, event: Event) -> None:
            before = ep.state
            change(ep, event)
            self.paths[ep.handle] = self.paths.get(ep.handle, before.value) + f" -{event.name}-> {ep.state.value}"

        core.conversations.transition = watched  # type: ignore[method-assign]

    def __getitem__(self, handle: str) -> str:
        return self.paths[handle]


@pytest.fixture
def local() -> Iterator[tuple[Harness, Journal, str]]:
    h = Harness()
    handle = h.pair()
    yield h, Journal(h.core), handle


def target_of(h: Harness, handle: str) -> str:
    target = h.core.endpoints[handle].far_handle
    assert target is not None
    return target


def test_a_conversation_ended_by_the_target_then_the_initiator(local: tuple[Harness, Journal, str]) -> None:
    h, journal, handle = local
    assert h.core.endpoints[handle].state is State.STARTED_OUTBOUND
    h.send(handle, b"request")
    h.send(handle, b"second")  # no change: sending again is not an event of the table
    target = target_of(h, handle)
    assert h.core.endpoints[target].state is State.CONVERSING, "made in CO by the first message"
    h.core.end(target, h.now)
    h.core.end(handle, h.now)
    h.flush()
    assert journal[handle] == "SO -SEND_FIRST-> CO -END_REMOTE-> DI -END_LOCAL-> CD"
    assert journal[target] == "CO -END_LOCAL-> CD"
    assert h.core.endpoints == {}


def test_a_lifetime_that_runs_out_puts_both_sides_in_error_until_each_ends() -> None:
    h = Harness()
    h.service("init", "qi", [])
    h.service("target", "qt")
    journal = Journal(h.core)
    handle = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now, lifetime=60).handle
    h.send(handle, b"hello")
    target = target_of(h, handle)
    h.advance(61)
    h.advance(61)  # nothing more: the lifetime fires once
    h.core.end(target, h.now)  # in error, it sends no EndDialog
    h.core.end(handle, h.now)
    h.flush()
    assert journal[handle] == "SO -SEND_FIRST-> CO -LIFETIME_EXPIRED-> ER -END_LOCAL-> CD"
    assert journal[target] == "CO -LIFETIME_EXPIRED-> ER -END_LOCAL-> CD"


def test_a_message_failing_validation_fails_both_sides_and_cleanup_closes_one() -> None:
    h = Harness()
    h.core.create_object("message_type", {"name": "J", "validation": "json"})
    h.core.create_object("contract", {"name": "C", "messages": {"J": "any"}})
    h.service("init", "qi", [])
    h.service("target", "qt", ["C"])
    journal = Journal(h.core)
    handle = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    h.send(handle, b"{}", message_type="J")
    target = target_of(h, handle)
    h.send(handle, b"{nope", message_type="J")
    h.core.end(target, h.now, cleanup=True)
    h.flush()
    assert journal[handle] == "SO -SEND_FIRST-> CO -FAIL-> ER"
    assert journal[target] == "CO -FAIL-> ER -CLEANUP-> CD"


def test_between_nodes_a_refused_first_message_closes_the_target_quietly_and_errors_the_initiator() -> None:
    a, b = Harness(), Harness()
    for h in (a, b):
        h.core.create_object("contract", {"name": "C", "messages": {"DEFAULT": "any"}})
    a.service("svcA", "qa", [])
    b.service("svcB", "qb", ["DEFAULT"])  # not C: the first message is refused
    route_both_ways(a, b, "svcA", "svcB")
    ja, jb = Journal(a.core), Journal(b.core)
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="C", now=a.now).handle
    a.send(handle, b"x")
    carry(a, b, B_ADDR)
    carry(b, a, A_ADDR)
    (target,) = jb.paths
    assert jb[target] == "CO -REFUSE_FIRST-> CD", "made in CO by the message, closed by its refusal"
    assert ja[handle] == "SO -SEND_FIRST-> CO -ERROR_REMOTE-> ER"
    assert [t for _, _, t, _ in a.drain("qa")] == [ERROR]


def test_between_nodes_end_dialog_disconnects_the_far_side() -> None:
    a, b = Harness(), Harness()
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    ja, jb = Journal(a.core), Journal(b.core)
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.send(handle, b"x")
    carry(a, b, B_ADDR)
    target = b.core.by_conversation[(a.core.endpoints[handle].conversation_id, False)]
    b.core.end(target, b.now)
    b.flush()
    carry(b, a, A_ADDR)
    assert [t for _, _, t, _ in a.drain("qa")] == [END_DIALOG]
    a.core.end(handle, a.now)
    a.flush()
    assert ja[handle] == "SO -SEND_FIRST-> CO -END_REMOTE-> DI -END_LOCAL-> CD"
    assert jb[target] == "CO -END_LOCAL-> CD"


def test_between_nodes_a_bad_later_message_is_refused_and_end_dialog_leaves_an_error_as_it_is() -> None:
    a, b = Harness(), Harness()
    for h in (a, b):
        h.core.create_object("message_type", {"name": "J", "validation": "json"})
        h.core.create_object("contract", {"name": "C", "messages": {"J": "any"}})
    a.service("svcA", "qa", [])
    b.service("svcB", "qb", ["C"])
    route_both_ways(a, b, "svcA", "svcB")
    ja, jb = Journal(a.core), Journal(b.core)
    first = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="C", now=a.now, lifetime=60).handle
    second = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="C", now=a.now).handle
    for handle in (first, second):
        a.send(handle, b"{}", message_type="J")
    a.send(second, b"{nope", message_type="J")  # checked at the receiving side only
    carry(a, b, B_ADDR)
    carry(b, a, A_ADDR)
    a.advance(61)  # the first's lifetime runs out at a; b's clock has not got there
    targets = {h: b.core.by_conversation[(a.core.endpoints[h].conversation_id, False)] for h in (first, second)}
    b.core.end(targets[first], b.now)
    b.flush()
    carry(b, a, A_ADDR)
    assert jb[targets[second]] == "CO -REFUSE-> ER", "the application has seen the conversation: it gets the Error"
    assert ja[second] == "SO -SEND_FIRST-> CO -ERROR_REMOTE-> ER"
    assert ja[first] == "SO -SEND_FIRST-> CO -LIFETIME_EXPIRED-> ER -END_REMOTE-> ER"
    assert jb[targets[first]] == "CO -END_LOCAL-> CD"


def test_status_counts_follow_a_path(local: tuple[Harness, Journal, str]) -> None:
    h, _, handle = local
    by_state: list[Any] = [h.core.statistics()["conversations_by_state"]]
    h.send(handle, b"x")
    by_state.append(h.core.statistics()["conversations_by_state"])
    h.core.end(target_of(h, handle), h.now)
    h.flush()
    by_state.append(h.core.statistics()["conversations_by_state"])
    assert by_state == [{"SO": 1}, {"CO": 2}, {"DI": 1}]
