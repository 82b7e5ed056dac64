"""Dialog security on the pure core: bindings, the encryption choice table, session keys, sealed bodies, tampering,
the binding negative cache (fake clock), and who may begin a conversation. Envelopes are carried by hand."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import pytest
from core_harness import A_ADDR, B_ADDR, NO_BYTE_LIMIT, Harness, carry, route_both_ways

from aiobroker.core.catalog import BCN_CONTRACT, BCN_SERVICE, ERROR, MISSING_BINDING
from aiobroker.core.conversation import State
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.errors import SecurityError, UnknownObject
from aiobroker.security.certs import create_self_signed
from aiobroker.wire.codec import packb
from aiobroker.resolver import BindingAnswer, RouteAnswer, Target

NOW = 1_000_000.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def pems() -> dict[str, tuple[str, str]]:
    """(certificate, key) pairs: a's signer, b's owner, a stranger, an RSA owner."""
    return {
        "a": create_self_signed("node a", key_type="ec", now=NOW - DAY),
        "b": create_self_signed("node b", key_type="ec", now=NOW - DAY),
        "x": create_self_signed("stranger", key_type="ec", now=NOW - DAY),
        "rsa": create_self_signed("rsa owner", key_type="rsa", now=NOW - DAY),
    }


def identity(h: Harness, name: str, pair: tuple[str, str], **extra: Any) -> None:
    h.core.create_object("identity", {"name": name, "certificate": pair[0], "private_key": pair[1], **extra}, h.now)
    h.flush()


def nodes(pems: dict[str, tuple[str, str]], *, binding: bool = True, b_owner: str = "b", **b_options: Any) -> tuple[Harness, Harness]:
    """a (svcA, identity a-node) and b (svcB owned by b's node identity), routes both ways; a binding at a for
    svcB with b's certificate unless ``binding`` is False."""
    a = Harness(now=NOW, node_identity="a-node")
    b = Harness(now=NOW, node_identity="b-node", **b_options)
    identity(a, "a-node", pems["a"])
    identity(b, "b-node", pems[b_owner])
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    if binding:
        a.core.create_object("binding", {"name": "b", "to_service": "svcB", "certificate": pems["b"][0]}, a.now)
        a.flush()
    return a, b


def begin(h: Harness, *, encryption: bool = False, to: str = "svcB", frm: str = "svcA") -> str:
    handle = h.core.begin_dialog(from_service=frm, to_service=to, contract="DEFAULT", now=h.now, encryption=encryption).handle
    h.flush()
    return handle


def bodies(h: Harness, queue: str) -> list[bytes]:
    return [x[3] for x in h.drain(queue)]


def flip(index: int, seq: int) -> Any:
    def tamper(envelopes: list[Any]) -> None:
        for env in envelopes:
            if env[3] == seq:
                value = env[index]
                env[index] = value[:-1] + bytes([value[-1] ^ 1])

    return tamper


# ------------------------------------------------------------------------------------------- secured dialogs


def test_a_secured_conversation_carries_no_plaintext_and_arrives_readable_both_ways(pems: Any) -> None:
    a, b = nodes(pems)
    handle = begin(a, encryption=True)
    secrets = [b"secret order %d" % i for i in range(5)]
    a.send(handle, *secrets)
    sent, acks = carry(a, b, B_ADDR)
    wire = b"".join(packb(e) for e in sent)
    assert not any(s in wire for s in secrets), "a body travelled in plaintext"
    assert isinstance(sent[0][13], list) and all(e[13] is True for e in sent[1:])
    assert acks[0][3] == 5
    received = b.drain("qb")
    assert [r[3] for r in received] == secrets
    target = b.core.endpoints[received[0][0]]
    assert target.secured and target.far_identity == "public", "a's certificate is not known at b"
    b.core.send(target.handle, [["DEFAULT", b"secret reply"]], b.now)
    b.flush()
    back, _ = carry(b, a, A_ADDR)
    assert b"secret reply" not in packb(back[0]) and back[0][13] is True
    assert bodies(a, "qa") == [b"secret reply"]


def test_an_initiator_known_by_certificate_is_named_at_the_target_and_anonymous_is_not(pems: Any) -> None:
    a, b = nodes(pems)
    b.core.create_object("identity", {"name": "alice", "certificate": pems["a"][0]}, b.now)
    b.flush()
    a.send(begin(a), b"hello")
    carry(a, b, B_ADDR)
    (row,) = b.drain("qb")
    assert b.core.endpoints[row[0]].far_identity == "alice"

    a.core.drop_object("binding", "b", a.now)
    a.core.create_object(
        "binding", {"name": "anon", "to_service": "svcB", "certificate": pems["b"][0], "anonymous": True}, a.now
    )
    a.flush()
    a.send(begin(a), b"who am I")
    sent, _ = carry(a, b, B_ADDR)
    assert sent[0][13][1] is None and sent[0][13][2] is None, "an anonymous header carries no certificate"
    (row,) = b.drain("qb")
    assert row[3] == b"who am I" and b.core.endpoints[row[0]].far_identity == "public"


def test_an_rsa_owner_works_as_well_as_ec(pems: Any) -> None:
    a, b = nodes(pems, binding=False, b_owner="rsa")
    a.core.create_object("binding", {"name": "b", "to_service": "svcB", "certificate": pems["rsa"][0]}, a.now)
    a.flush()
    a.send(begin(a), b"over rsa")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"over rsa"]


def test_a_tampered_body_is_dropped_not_acknowledged_and_reported_and_the_resend_gets_through(pems: Any) -> None:
    a, b = nodes(pems)
    handle = begin(a)
    a.send(handle, *[b"m%d" % i for i in range(4)])
    _, acks = carry(a, b, B_ADDR, tamper=flip(10, 2))
    assert acks[0][3] == 2, "acknowledged only what came before the tampered message"
    assert bodies(b, "qb") == [b"m0", b"m1"]
    assert any("message 2" in r and "failed dialog security" in r for r in b.reports())
    assert b.core.statistics()["security"]["messages_dropped"] == 1
    a.core.tx.links[B_ADDR].new_epoch()  # the acknowledgement time-out: the rest goes again, untouched
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"m2", b"m3"]


def test_a_body_moved_to_another_sequence_number_does_not_open(pems: Any) -> None:
    a, b = nodes(pems)
    a.send(begin(a), b"first", b"second", b"third")

    def swap(envelopes: list[Any]) -> None:
        envelopes[1][10], envelopes[2][10] = envelopes[2][10], envelopes[1][10]

    _, acks = carry(a, b, B_ADDR, tamper=swap)
    assert acks[0][3] == 1
    assert bodies(b, "qb") == [b"first"]


def test_a_plain_message_on_a_secured_conversation_is_a_downgrade_and_dropped(pems: Any) -> None:
    a, b = nodes(pems)
    handle = begin(a)
    a.send(handle, b"one", b"two")

    def downgrade(envelopes: list[Any]) -> None:
        envelopes[1][10], envelopes[1][13] = b"two", False

    _, acks = carry(a, b, B_ADDR, tamper=downgrade)
    assert acks[0][3] == 1 and bodies(b, "qb") == [b"one"]
    assert any("downgrade" in r for r in b.reports())


def test_a_binding_with_the_wrong_certificate_drops_the_first_message_unacknowledged(pems: Any) -> None:
    a, b = nodes(pems, binding=False)
    a.core.create_object("binding", {"name": "b", "to_service": "svcB", "certificate": pems["x"][0]}, a.now)
    a.flush()
    a.send(begin(a), b"for b's eyes")
    _, acks = carry(a, b, B_ADDR)
    assert acks == [], "dropped, not acknowledged"
    assert not any(ep.service == "svcB" for ep in b.core.endpoints.values()), "no conversation began at b"
    assert bodies(b, "qb") == []
    assert any("cannot be read with the key of identity 'b-node'" in r for r in b.reports())
    assert b.core.statistics()["security"]["first_messages_dropped"] == 1


def test_a_tampered_signature_drops_the_first_message(pems: Any) -> None:
    a, b = nodes(pems)
    a.send(begin(a), b"signed")

    def bad_signature(envelopes: list[Any]) -> None:
        header = list(envelopes[0][13])
        header[2] = header[2][:-1] + bytes([header[2][-1] ^ 1])
        envelopes[0][13] = header

    _, acks = carry(a, b, B_ADDR, tamper=bad_signature)
    assert acks == [] and bodies(b, "qb") == []
    assert b.core.statistics()["security"]["first_messages_dropped"] == 1


def secured(h: Harness) -> int:
    """``status``' count of secured conversations, checked against a walk over the endpoints."""
    counted = h.core.security_statistics()["secured_conversations"]
    assert counted == sum(1 for ep in h.core.endpoints.values() if ep.secured)
    return int(counted)


def test_a_secured_conversation_survives_a_restart_of_both_ends(pems: Any) -> None:
    a, b = nodes(pems)
    handle = begin(a)
    assert (secured(a), secured(b)) == (0, 0)
    a.send(handle, b"before")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"before"]
    assert (secured(a), secured(b)) == (1, 1)
    a, b = a.restart(), b.restart()
    assert (secured(a), secured(b)) == (1, 1), "counted again from the store"
    a.send(handle, b"after")
    sent, _ = carry(a, b, B_ADDR)
    assert b"after" not in packb(sent[0])
    assert bodies(b, "qb") == [b"after"]
    a.core.end(handle, a.now, cleanup=True)
    a.flush()
    assert (secured(a), secured(b)) == (1, 1), "kept closed a while, to recognise late retransmissions"
    a.advance(a.core.closed_retention + 1)
    assert (secured(a), secured(b)) == (0, 1), "a retired endpoint leaves the count with it"


# ---------------------------------------------------------------------------------------- the choice table


def test_within_one_node_nothing_is_encrypted_even_when_asked(pems: Any) -> None:
    h = Harness(now=NOW)
    h.service("init", "qi", [])
    h.service("target", "qt")
    handle = begin(h, encryption=True, frm="init", to="target")
    h.send(handle, b"local")
    assert bodies(h, "qt") == [b"local"]
    assert h.core.endpoints[handle].secured is None


@pytest.mark.parametrize("encryption", [True, False])
def test_with_a_binding_both_choices_are_secured(pems: Any, encryption: bool) -> None:
    a, b = nodes(pems)
    a.send(begin(a, encryption=encryption), b"x")
    sent, _ = carry(a, b, B_ADDR)
    assert isinstance(sent[0][13], list)
    assert bodies(b, "qb") == [b"x"]


def test_encryption_required_without_binding_or_dynamic_routing_fails_at_once(pems: Any) -> None:
    a, _ = nodes(pems, binding=False)
    handle = begin(a, encryption=True)
    with pytest.raises(SecurityError, match="no remote service binding for service 'svcB'"):
        a.core.send(handle, [["DEFAULT", b"x"]], a.now)
    a.flush()
    ep = a.core.endpoints[handle]
    assert ep.state is State.ERROR and ep.error is not None and ep.error[0] == BrokerErrorCode.SECURITY
    (error,) = a.drain("qa")
    assert error[2] == ERROR and "svcB" in parse_error_body(error[3])[1]
    assert a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT) == []


def test_encryption_not_required_without_binding_or_dynamic_routing_goes_plain(pems: Any) -> None:
    a, b = nodes(pems, binding=False)
    a.send(begin(a, encryption=False), b"plain")
    sent, _ = carry(a, b, B_ADDR)
    assert sent[0][13] is False and sent[0][10] == b"plain"
    assert bodies(b, "qb") == [b"plain"]


def resolver_nodes(pems: Any, **options: Any) -> tuple[Harness, Harness]:
    """a asks a resolver for bindings (and has a static route to b); no binding yet."""
    a = Harness(now=NOW, node_identity="a-node", resolver_name="test", resolver_answers_bindings=True, **options)
    b = Harness(now=NOW, node_identity="b-node")
    identity(a, "a-node", pems["a"])
    identity(b, "b-node", pems["b"])
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    return a, b


def requests(h: Harness) -> list[tuple[str, str]]:
    return h.resolve_requests()


def test_while_a_binding_request_is_in_flight_both_choices_wait_and_one_request_serves_all(pems: Any) -> None:
    a, _ = resolver_nodes(pems)
    handles = [begin(a, encryption=i % 2 == 0) for i in range(20)]
    for handle in handles:
        a.send(handle, b"x")
    assert requests(a) == [("binding", "svcB")], "one request for twenty conversations"
    assert a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT) == []
    assert all("waiting for a remote service binding" in (a.core.endpoints[h].delayed or "") for h in handles)


def test_a_binding_request_answered_with_a_binding_secures_and_releases_every_waiting_conversation(pems: Any) -> None:
    a, b = resolver_nodes(pems)
    handles = [begin(a, encryption=e) for e in (True, False, True)]
    for i, handle in enumerate(handles):
        a.send(handle, b"m%d" % i)
    requests(a)
    moved = a.core.binding_resolved("svcB", BindingAnswer(service_name="svcB", certificate=pems["b"][0], lifetime=60), a.now)
    a.flush()
    assert moved == 3
    sent, _ = carry(a, b, B_ADDR)
    assert all(isinstance(e[13], list) for e in sent)
    assert sorted(bodies(b, "qb")) == [b"m0", b"m1", b"m2"]


def test_a_failed_binding_request_lets_plain_go_keeps_encrypted_waiting_and_is_remembered_ten_minutes(pems: Any) -> None:
    a, b = resolver_nodes(pems)
    secure, plain = begin(a, encryption=True), begin(a, encryption=False)
    a.send(secure, b"secret")
    a.send(plain, b"plain")
    assert requests(a) == [("binding", "svcB")]
    a.core.resolve_failed("svcB", "not found: no binding in the registry", a.now, None, "binding")
    a.flush()
    sent, _ = carry(a, b, B_ADDR)
    assert [(e[10], e[13]) for e in sent] == [(b"plain", False)], "encryption=False goes on, unsecured, at once"
    assert "no binding in the registry" in (a.core.endpoints[secure].delayed or "")

    late_plain = begin(a, encryption=False)
    a.send(late_plain, b"late plain")
    late_secure = begin(a, encryption=True)
    a.send(late_secure, b"late secret")
    assert requests(a) == [], "no new request while the failure is remembered"
    assert [e[10] for e in a.core.outgoing(B_ADDR, 100, NO_BYTE_LIMIT)] == [b"late plain"]

    a.advance(599)
    assert requests(a) == [], "still remembered at 599 s"
    a.advance(2)
    assert requests(a) == [("binding", "svcB")], "asked again after 10 minutes"


def test_the_binding_failure_cache_is_configurable(pems: Any) -> None:
    a, _ = resolver_nodes(pems, binding_failure_cache=30.0)
    a.send(begin(a, encryption=True), b"x")
    requests(a)
    a.core.resolve_failed("svcB", "no", a.now, None, "binding")
    a.flush()
    a.advance(29)
    assert requests(a) == []
    a.advance(2)
    assert requests(a) == [("binding", "svcB")]


def test_an_encrypted_conversation_still_waiting_when_its_lifetime_ends_gets_an_error_naming_the_service(pems: Any) -> None:
    a, _ = resolver_nodes(pems)
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now, encryption=True, lifetime=100).handle
    a.send(handle, b"x")
    requests(a)
    a.core.resolve_failed("svcB", "the registry has no binding", a.now, None, "binding")
    a.flush()
    a.advance(101)
    (error,) = a.drain("qa")
    code, text = parse_error_body(error[3])
    assert code == BrokerErrorCode.LIFETIME_EXPIRED and "svcB" in text and "the registry has no binding" in text


def test_the_bcn_service_gets_the_seeds_missing_binding_request_and_its_error_is_remembered(pems: Any) -> None:
    a, b = nodes(pems, binding=False)
    a.service(BCN_SERVICE, "bcn", [BCN_CONTRACT])
    handle = begin(a, encryption=True)
    a.send(handle, b"x")
    (request,) = a.drain("bcn")
    assert request[2] == MISSING_BINDING
    root = ElementTree.fromstring(request[3])
    assert root.tag == f"{{{MISSING_BINDING}}}MissingRemoteServiceBinding"
    assert root.findtext(f"{{{MISSING_BINDING}}}SERVICE_NAME") == "svcB"
    bcn_side = request[0]
    a.core.end(bcn_side, a.now, error=(1, "no certificate known for svcB"))
    a.flush()
    assert "no certificate known for svcB" in (a.core.endpoints[handle].delayed or "")
    a.send(begin(a, encryption=True), b"y")
    assert a.drain("bcn") == [], "no second request within the window"
    # an administrator creates the binding: everything waiting goes, secured
    a.core.create_object("binding", {"name": "b", "to_service": "svcB", "certificate": pems["b"][0]}, a.now)
    a.flush()
    carry(a, b, B_ADDR)
    assert sorted(bodies(b, "qb")) == [b"x", b"y"]


# ------------------------------------------------------------------------------------------ who may send


def test_with_authorization_an_initiator_without_the_right_is_refused_with_an_error(pems: Any) -> None:
    a, b = nodes(pems, authorization=True)
    b.core.create_object("identity", {"name": "alice", "certificate": pems["a"][0], "send": ["other"]}, b.now)
    b.flush()
    handle = begin(a)
    a.send(handle, b"let me in")
    _, acks = carry(a, b, B_ADDR)
    assert acks and acks[0][3] == 1, "refused, but acknowledged: the Error answers it"
    assert bodies(b, "qb") == []
    carry(b, a, A_ADDR)
    (error,) = a.drain("qa")
    code, text = parse_error_body(error[3])
    assert code == BrokerErrorCode.NOT_AUTHORIZED and "'alice' may not send to service 'svcB'" in text


def test_with_authorization_an_initiator_with_the_right_is_let_in(pems: Any) -> None:
    a, b = nodes(pems, authorization=True)
    b.core.create_object("identity", {"name": "alice", "certificate": pems["a"][0], "send": ["svcB"]}, b.now)
    b.flush()
    a.send(begin(a), b"welcome")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"welcome"]


def test_with_authorization_a_plain_dialog_is_public_and_needs_public_to_have_the_right(pems: Any) -> None:
    a, b = nodes(pems, binding=False, authorization=True)
    a.send(begin(a), b"anyone")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == []
    b.core.create_object("identity", {"name": "public", "send": ["svcB"]}, b.now)
    b.flush()
    a.send(begin(a), b"anyone else")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == [b"anyone else"]


def test_an_expired_initiator_certificate_is_refused_at_the_target(pems: Any) -> None:
    a, b = nodes(pems)
    b.now += 2 * 365 * DAY  # the target's clock is past the initiator's certificate (a's is not)
    a.send(begin(a), b"stale")
    carry(a, b, B_ADDR)
    assert bodies(b, "qb") == []
    carry(b, a, A_ADDR)
    (error,) = a.drain("qa")
    code, text = parse_error_body(error[3])
    assert code == BrokerErrorCode.SECURITY and "expired" in text


# ------------------------------------------------------------------------------------------- bad input


def test_bindings_and_identities_refuse_bad_input_with_clear_errors(pems: Any) -> None:
    a, _ = nodes(pems, binding=False)
    create = a.core.create_object
    with pytest.raises(UnknownObject, match="identity 'nobody' does not exist"):
        create("binding", {"name": "x", "to_service": "svcB", "certificate": pems["b"][0], "identity": "nobody"}, a.now)
    create("identity", {"name": "cert-only", "certificate": pems["x"][0]}, a.now)
    with pytest.raises(SecurityError, match="no private key"):
        create("binding", {"name": "x", "to_service": "svcB", "certificate": pems["b"][0], "identity": "cert-only"}, a.now)
    broken = "-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n"
    with pytest.raises(SecurityError, match="binding 'x'"):
        create("binding", {"name": "x", "to_service": "svcB", "certificate": broken}, a.now)
    with pytest.raises(SecurityError, match="identity 'y'"):
        create("identity", {"name": "y", "certificate": pems["a"][0], "private_key": pems["b"][1]}, a.now)
    expired = create_self_signed("old", key_type="ec", days=1, now=NOW - 10 * DAY)
    with pytest.raises(SecurityError, match="expired"):
        create("binding", {"name": "x", "to_service": "svcB", "certificate": expired[0]}, a.now)
    assert "x" not in a.core.catalog.bindings and "y" not in a.core.catalog.identities


def test_a_resolver_binding_whose_certificate_does_not_parse_fails_the_request_and_nothing_else(pems: Any) -> None:
    a, _ = resolver_nodes(pems)
    handle = begin(a, encryption=True)
    a.send(handle, b"x")
    requests(a)
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    a.core.binding_resolved("svcB", BindingAnswer(service_name="svcB", certificate=broken), a.now)
    a.flush()
    assert a.core.catalog.bindings == {}
    assert "cannot be used" in (a.core.endpoints[handle].delayed or "")
    assert a.core.dispatcher.retry_at[("binding", "svcB")] == pytest.approx(a.now + 600)


def test_list_never_shows_a_private_key_or_a_token(pems: Any) -> None:
    a, _ = nodes(pems)
    a.core.create_object("identity", {"name": "t", "tokens": ["a-long-secret-token"]}, a.now)
    shown = repr(a.core.list_objects("identity")) + repr(a.core.list_objects("binding"))
    assert "PRIVATE KEY" not in shown and "a-long-secret-token" not in shown and "BEGIN CERTIFICATE" not in shown
    assert {d["name"]: d["has_private_key"] for d in a.core.list_objects("identity")} == {"a-node": True, "t": False}


def test_a_route_answer_counts_as_answered_while_its_conversations_go_on_to_wait_for_a_binding(pems: Any) -> None:
    a = Harness(now=NOW, node_identity="a-node", resolver_name="test", resolver_answers_bindings=True)
    identity(a, "a-node", pems["a"])
    a.service("svcA", "qa", [])
    a.send(begin(a), b"x")
    assert requests(a) == [("route", "svcB"), ("binding", "svcB")], "both asked at once, in one round trip"
    a.core.resolved("svcB", RouteAnswer(service_name="svcB", targets=(Target(address=B_ADDR),), lifetime=60), a.now)
    a.flush()
    assert requests(a) == [], "the binding request is still in flight: not asked again"
    assert "binding" in (a.core.endpoints[next(iter(a.core.endpoints))].delayed or ""), "waits for the binding"
    assert a.core.dispatcher.last[("route", "svcB")].ok, "the route request is not a failure"
    assert ("route", "svcB") not in a.core.dispatcher.retry_at, "and is not asked again"


def test_a_resolver_binding_for_a_long_service_name_is_stored_under_a_short_name(pems: Any) -> None:
    a = Harness(now=NOW, node_identity="a-node", resolver_name="test", resolver_answers_bindings=True)
    identity(a, "a-node", pems["a"])
    long_name = "//shop/" + "x" * 240
    a.core.binding_resolved(long_name, BindingAnswer(service_name=long_name, certificate=pems["b"][0]), a.now)
    a.flush()
    (binding,) = a.core.catalog.bindings.values()
    assert binding.to_service == long_name and len(binding.name) < 40
    assert a.core.catalog.binding_for(long_name, a.now) is binding
