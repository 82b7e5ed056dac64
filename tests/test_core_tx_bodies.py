"""DELAYED messages' bodies in the store only, on a store that pages, read back when they move on (``tx_bodies.py``).

The pure core on the harness's dict store, which pages as SQLite does (``page_window``); the SQLite and PostgreSQL
reads themselves are in test_store_paging.py, and a node process on SQLite in test_dynamic_routing.py.
"""

from __future__ import annotations

from core_harness import NO_BYTE_LIMIT, Harness

from aiobroker.core.budget import ROW_MEMORY
from aiobroker.core.catalog import ERROR
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.core.effects import BodiesWanted
from aiobroker.core.records import ROW_BODY, InStore
from aiobroker.core.tx_bodies import READING
from aiobroker.resolver import RouteAnswer, Target

B = "tcp://10.0.0.2:4022"
WINDOW = 1000


def node(**options: object) -> Harness:
    h = Harness(resolver_name="test", page_window=WINDOW, **options)  # type: ignore[arg-type]
    h.service("init", "qi", [])
    return h


def delayed(h: Harness, service: str, *bodies: bytes) -> str:
    handle = h.core.begin_dialog(from_service="init", to_service=service, contract="DEFAULT", now=h.now).handle
    h.send(handle, *bodies)
    return handle


def answer(service: str, address: str = B) -> RouteAnswer:
    return RouteAnswer(service_name=service, targets=(Target(address=address),), lifetime=600.0, source="test")


def bodies_held(h: Harness, handle: str) -> list[object]:
    return [row[ROW_BODY] for row in h.core.tx.rows_of(handle)]


def test_delayed_bodies_leave_memory_once_stored_and_the_budget_counts_them_out() -> None:
    h = node()
    handle = h.core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=h.now).handle
    h.core.send(handle, [["DEFAULT", b"a" * 100], ["DEFAULT", b"b" * 50]], h.now)
    assert bodies_held(h, handle) == [b"a" * 100, b"b" * 50], "not stored yet: the bodies stay"
    held_before = h.core.budget.held
    h.flush()  # stored: they go once the write is done (durable_upto)
    assert [type(b) for b in bodies_held(h, handle)] == [InStore, InStore]
    assert [len(b) for b in bodies_held(h, handle)] == [100, 50], "each remembers its size"  # type: ignore[arg-type]
    assert h.core.budget.held == held_before - 150
    assert h.core.budget.in_store_bytes == 150
    assert h.core.tx.delayed_total == 2, "still two DELAYED messages, in order"


def test_a_routed_conversation_reads_its_bodies_back_then_sends_them_in_order_with_what_came_meanwhile() -> None:
    h = node()
    handle = delayed(h, "svc", b"first", b"second")
    h.flush()
    h.core.resolved("svc", answer("svc"), h.now)
    h.send(handle, b"third")  # sent while its bodies are being read: joins behind them
    assert h.core.outgoing(B, 100, NO_BYTE_LIMIT) == [], "nothing leaves before its bodies are back"
    ep = h.core.ledger.endpoints[handle]
    assert ep.delayed == READING
    assert "reading its messages back from the store" in (h.core.outbound.link_status(handle, h.now) or "")
    [request] = [e for e in list(h.core.outbox) if isinstance(e, BodiesWanted)]
    assert request.handles == [handle] and len(request.ids) == 2
    assert h.serve_bodies() == 1
    sent = h.core.outgoing(B, 100, NO_BYTE_LIMIT)
    assert [(env[3], env[10]) for env in sent] == [(0, b"first"), (1, b"second"), (2, b"third")]
    assert h.core.budget.in_store_bytes == 0
    assert ep.delayed is None


def test_one_answer_asks_for_every_conversation_it_releases_in_one_read() -> None:
    h = node()
    handles = [delayed(h, "svc", b"m%d" % i) for i in range(50)]
    h.flush()
    assert h.core.resolved("svc", answer("svc"), h.now) == 50, "released, on their way once read back"
    requests = [e for e in list(h.core.outbox) if isinstance(e, BodiesWanted)]
    assert len(requests) == 1 and requests[0].handles == handles
    h.serve_bodies()
    assert sorted(env[10] for env in h.core.outgoing(B, 100, NO_BYTE_LIMIT)) == sorted(b"m%d" % i for i in range(50))


def test_a_far_side_on_this_node_gets_the_bodies_read_back_in_order() -> None:
    h = node()
    handle = delayed(h, "svc", b"one", b"two")
    h.flush()
    h.service("svc", "q", ["DEFAULT"])  # the service appears here: its conversations are delivered locally
    h.flush()
    assert h.core.ledger.endpoints[handle].delayed == READING
    h.serve_bodies()
    assert [m[3] for m in h.drain("q")] == [b"one", b"two"]


def test_a_conversation_that_ends_while_reading_drops_its_messages_and_the_read_is_not_wanted() -> None:
    h = node()
    handle = delayed(h, "svc", b"x" * 40)
    h.flush()
    h.core.resolved("svc", answer("svc"), h.now)
    assert h.core.end(handle, h.now) == 1
    h.flush()
    h.serve_bodies()  # the read comes back for a conversation that is gone
    assert h.core.outgoing(B, 100, NO_BYTE_LIMIT) == []
    assert handle not in h.core.tx
    assert h.core.budget.in_store_bytes == 0
    assert h.core.budget.held == 0, "nothing held for messages any more"


def test_a_body_the_store_no_longer_has_fails_the_conversation_and_says_why() -> None:
    h = node()
    delayed(h, "svc", b"lost")
    h.flush()
    h.store.messages.clear()  # gone from the store behind the node's back
    h.core.resolved("svc", answer("svc"), h.now)
    h.serve_bodies()
    errors = [m for m in h.drain("qi") if m[2] == ERROR]
    assert len(errors) == 1
    code, description = parse_error_body(errors[0][3])
    assert code == BrokerErrorCode.DELAYED_MESSAGES_DROPPED
    assert "no longer in the store" in description
    assert h.core.budget.in_store_bytes == 0


def test_a_conversation_missing_one_body_of_several_fails_whole_and_the_budget_comes_back_to_nothing() -> None:
    h = node()
    handle = delayed(h, "svc", b"first" * 10, b"second" * 10)
    h.flush()
    del h.store.messages[max(h.store.messages)]  # the second's row gone from the store
    h.core.resolved("svc", answer("svc"), h.now)
    h.serve_bodies()
    assert handle not in h.core.tx and h.core.outgoing(B, 100, NO_BYTE_LIMIT) == []
    assert [m[2] for m in h.drain("qi")] == [ERROR]
    assert h.core.budget.in_store_bytes == 0 and h.core.budget.held == 0, h.core.budget.statistics()


def test_without_paging_the_bodies_stay_in_memory() -> None:
    h = Harness(resolver_name="test")
    h.service("init", "qi", [])
    handle = delayed(h, "svc", b"kept")
    h.flush()
    h.flush()
    assert bodies_held(h, handle) == [b"kept"]
    assert not h.core.tx.to_strip, "nothing kept for a pass that never runs"


def test_a_restart_reads_no_body_of_the_transmission_queue_and_reads_them_back_as_conversations_move() -> None:
    h = node()
    h.core.create_object("route", {"name": "to-r", "service_name": "routed", "address": B}, h.now)
    on_link = delayed(h, "routed", b"was on its link")  # routed: waiting for B's acknowledgement at the crash
    waiting = delayed(h, "svc", b"was DELAYED")
    h.flush()
    h2 = h.restart()  # a crash: the store opened without the transmission queue's bodies
    assert [type(b) for b in bodies_held(h2, on_link) + bodies_held(h2, waiting)] == [InStore, InStore]
    assert h2.core.budget.in_store_bytes == len(b"was on its link") + len(b"was DELAYED")
    assert h2.core.budget.held == 2 * ROW_MEMORY, "the rows are held, not their bodies"
    assert h2.core.outgoing(B, 100, NO_BYTE_LIMIT) == [], "routed again at start, it waits for its body"
    assert h2.serve_bodies() == 1
    assert [env[10] for env in h2.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"was on its link"]
    h2.core.resolved("svc", answer("svc"), h2.now)
    h2.serve_bodies()
    assert [env[10] for env in h2.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"was DELAYED"]
    assert h2.core.budget.in_store_bytes == 0
