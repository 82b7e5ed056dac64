"""The release of DELAYED conversations on the pure core (fake clock): what it writes to the store, what a restart
finds, and that the per-pass shortcuts a storm's release takes give the answers the slow path gives."""

from __future__ import annotations

from core_harness import NO_BYTE_LIMIT, Harness

from aiobroker.core.conversation import Endpoint
from aiobroker.core.dispatcher import BINDING
from aiobroker.core.envelopes import ACK
from aiobroker.core.records import ROW_SEQ, message_row
from aiobroker.core.transmission import TransmissionQueue
from aiobroker.resolver import RouteAnswer, Target

B = "tcp://10.0.0.2:4022"
B_INSTANCE = "node-b"


def resolver_node(**options: object) -> Harness:
    h = Harness(resolver_name="test", **options)  # type: ignore[arg-type]
    h.service("init", "qi", [])
    return h


def begin(h: Harness, to: str, *, encryption: bool = False) -> str:
    handle = h.core.begin_dialog(
        from_service="init", to_service=to, contract="DEFAULT", now=h.now, encryption=encryption
    ).handle
    h.flush()
    return handle


def answer(service: str) -> RouteAnswer:
    return RouteAnswer(service_name=service, targets=(Target(address=B),), lifetime=3600.0, source="test")


def records_written(h: Harness) -> set[str]:
    """Flush as the shell's writer does; the handles of the endpoint records the batch wrote."""
    batch, pending = h.core.seal()
    h.store.write(batch)
    h.core.durable_upto = h.core.sealed_upto
    h.core.publish(pending)
    return set(batch.endpoints)


def acknowledge_all(h: Harness) -> list[bytes]:
    """What the link to B takes, acknowledged by B; the bodies."""
    envelopes = h.core.outgoing(B, 10_000, NO_BYTE_LIMIT)
    h.core.acknowledged([[ACK, e[1], e[2], e[3] + 1, B_INSTANCE] for e in envelopes], h.now)
    h.flush()
    return [e[10] for e in envelopes]


def test_a_failed_request_and_its_retry_write_no_record_for_each_waiting_conversation() -> None:
    """A DELAYED reason is found afresh at every start, so a new reason alone (a failed request, then its retry,
    for 100,000 waiting conversations after a storm) is not written conversation by conversation."""
    h = resolver_node()
    handles = [begin(h, "svc") for _ in range(5)]
    for handle in handles:
        h.send(handle, b"waits")
    h.resolve_requests()
    h.core.resolve_failed("svc", "registry said 503", h.now)
    assert records_written(h) == set()
    assert all("registry said 503" in (h.core.endpoints[x].delayed or "") for x in handles), "shown, though"
    retry = h.core.statistics(h.now)["dynamic_routing"]["services"]["svc"]["next_retry_in"]
    h.now += retry + 0.01
    h.core.advance(h.now)
    assert h.resolve_requests() == [("route", "svc")], "asked again"
    assert records_written(h) == set()
    assert all("asked the resolver test" in (h.core.endpoints[x].delayed or "") for x in handles)

    again = h.restart()  # every one still waits, with a reason, and the node asks where the service is
    assert again.resolve_requests() == [("route", "svc")]
    assert all("asked the resolver test" in (again.core.endpoints[x].delayed or "") for x in handles)
    again.core.resolved("svc", answer("svc"), again.now)
    again.flush()
    assert acknowledge_all(again) == [b"waits"] * 5


def test_a_reason_stored_while_a_conversation_waited_is_not_taken_for_a_wait_after_a_restart() -> None:
    """A conversation whose dialog security and far instance are known is released without a record (nothing
    durable changed), so its record may keep the reason it had when a send wrote it; a restart must not read it
    as a wait (the conversation would take new messages and never send them)."""
    h = resolver_node()
    h.core.create_object("route", {"name": "to-b", "service_name": "far", "address": B}, h.now)
    h.flush()
    handle = begin(h, "far")
    h.send(handle, b"0")
    assert acknowledge_all(h) == [b"0"]  # secured (no) and the far instance are decided and stored
    h.send(handle, b"1")
    h.core.drop_object("route", "to-b", h.now)  # "1" in flight: DELAYED again, the resolver asked
    h.flush()
    h.send(handle, b"2")  # the send's record holds the reason
    assert h.core.endpoints[handle].delayed is not None
    h.core.resolved("far", answer("far"), h.now)
    h.flush()
    assert acknowledge_all(h) == [b"1", b"2"]
    assert h.core.endpoints[handle].delayed is None

    again = h.restart()
    assert again.core.endpoints[handle].delayed is None
    again.send(handle, b"3")
    assert acknowledge_all(again) == [b"3"], "sent at once, not held as DELAYED"


def test_one_release_of_plain_and_encrypted_conversations_decides_each_by_the_choice_table() -> None:
    """The release reuses dialog security's "plain" answer for a service within one pass: conversations that
    require encryption, in between, still wait for a binding (the last request failed and is remembered)."""
    h = resolver_node(resolver_answers_bindings=True)
    plain = [begin(h, "far") for _ in range(3)]
    secure = [begin(h, "far", encryption=True) for _ in range(3)]
    for p, s in zip(plain, secure, strict=True):
        h.send(s, b"secret")
        h.send(p, b"open")
    assert h.resolve_requests() == [("route", "far"), ("binding", "far")]
    h.core.resolve_failed("far", "not found: no binding", h.now, None, BINDING)
    h.core.resolved("far", answer("far"), h.now)
    h.flush()
    assert acknowledge_all(h) == [b"open"] * 3
    assert [h.core.endpoints[x].secured for x in plain] == [False] * 3
    assert [h.core.endpoints[x].secured for x in secure] == [None] * 3
    assert all("binding" in (h.core.endpoints[x].delayed or "") for x in secure)
    waiting = h.core.statistics(h.now)["dynamic_routing"]["services"]["far"]
    assert waiting["delayed_conversations"] == 3 and waiting["delayed_messages"] == 3


def test_a_link_takes_lone_rows_only_once_stored_and_wakes_again_for_the_rest() -> None:
    tx = TransmissionQueue()
    for handle, message_id in (("h1", 1), ("h2", 5), ("h3", 2)):
        tx.add_many(handle, [message_row(message_id, "tx", handle, 0, "DEFAULT", b"m", 0.0, 0)], "svc")
        tx.attach(handle, B, "svc")
    tx.ready_links.clear()
    taken = tx.take_unsent(B, 10, durable_upto=2, max_bytes=NO_BYTE_LIMIT)
    assert [h for h, _ in taken] == ["h1", "h3"], "h2's row is not stored yet"
    assert tx.ready_links == {B}, "woken again once it is"
    tx.ready_links.clear()
    assert [h for h, _ in tx.take_unsent(B, 10, durable_upto=5, max_bytes=NO_BYTE_LIMIT)] == ["h2"]
    assert tx.take_unsent(B, 10, durable_upto=5, max_bytes=NO_BYTE_LIMIT) == [] and tx.ready_links == set()
    assert [row[ROW_SEQ] for row in tx.acknowledge("h2", 1, "svc")] == [0]
    assert tx.links[B].sent == {"h1": 1, "h3": 1}


def test_a_plain_release_writes_each_record_once_with_the_first_acknowledgement_and_a_restart_decides_again() -> None:
    """A conversation released plain gets no record for its decision alone: the first acknowledgement's record
    (which learns the far instance) carries it, one record a conversation instead of two. A restart before that
    decides it again, as for any conversation whose release was not written yet."""
    h = resolver_node()
    handles = [begin(h, "svc") for _ in range(4)]
    for handle in handles:
        h.send(handle, b"m")
    h.flush()
    h.resolve_requests()
    h.core.resolved("svc", answer("svc"), h.now)
    assert records_written(h) == set(), "the release wrote no record of its own"
    assert all(h.core.endpoints[x].secured is False for x in handles), "decided, in memory"

    assert [Endpoint.from_state(x, h.store.endpoints[x]).secured for x in handles] == [None] * 4, "not stored"
    again = h.restart()  # stopped before the first acknowledgement: the stored route decides them again
    assert all(again.core.endpoints[x].secured is False for x in handles)
    assert records_written(again) == set()
    envelopes = again.core.outgoing(B, 100, NO_BYTE_LIMIT)
    assert [e[10] for e in envelopes] == [b"m"] * 4 and all(e[13] is False for e in envelopes), "plain, again"
    again.core.acknowledged([[ACK, e[1], e[2], e[3] + 1, B_INSTANCE] for e in envelopes], again.now)
    assert records_written(again) == set(handles), "one record a conversation, at the first acknowledgement"

    last = again.restart()
    assert [(last.core.endpoints[x].secured, last.core.endpoints[x].far_broker_instance) for x in handles] == [
        (False, B_INSTANCE)
    ] * 4, "the decision and the far instance, stored together"


def test_a_plain_decision_for_a_conversation_whose_far_instance_is_known_is_written_at_once() -> None:
    """No first acknowledgement will write the record of a conversation begun for a named broker instance, so its
    plain decision is written with the release."""
    h = resolver_node()
    handle = h.core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=h.now,
                                 broker_instance=B_INSTANCE).handle
    h.flush()
    h.send(handle, b"m")
    h.flush()
    h.resolve_requests()
    h.core.resolved("svc", RouteAnswer(service_name="svc", targets=(Target(address=B, broker_instance=B_INSTANCE),),
                                       lifetime=3600.0, source="test"), h.now)
    assert records_written(h) == {handle}
    assert h.restart().core.endpoints[handle].secured is False
