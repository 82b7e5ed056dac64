"""Dynamic routing on the pure core: DELAYED messages, one request per service, release in order (fake clock)."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest
from core_harness import NO_BYTE_LIMIT, Harness

from aiobroker.core.catalog import BCN_CONTRACT, BCN_SERVICE, ERROR, MISSING_ROUTE
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.core.records import ROW_SEQ, message_row
from aiobroker.core.transmission import TransmissionQueue
from aiobroker.errors import Overloaded
from aiobroker.resolver import RouteAnswer, Target

B = "tcp://10.0.0.2:4022"


def resolver_node(**options: object) -> Harness:
    h = Harness(resolver_name="test", **options)  # type: ignore[arg-type]
    h.service("init", "qi", [])
    return h


def begin(h: Harness, to: str) -> str:
    handle = h.core.begin_dialog(from_service="init", to_service=to, contract="DEFAULT", now=h.now).handle
    h.flush()
    return handle


def take_requests(h: Harness) -> list[str]:
    return [service for _, service in h.resolve_requests()]


def answer(service: str, lifetime: float = 60.0, address: str = B) -> RouteAnswer:
    return RouteAnswer(service_name=service, targets=(Target(address=address),), lifetime=lifetime, source="test")


def test_ten_thousand_conversations_to_a_hundred_services_make_a_hundred_requests_and_release_in_order() -> None:
    h = resolver_node()
    handles: dict[str, list[str]] = {}
    for c in range(100):
        for s in range(100):
            service = f"svc{s}"
            handle = h.core.begin_dialog(from_service="init", to_service=service, contract="DEFAULT", now=h.now).handle
            handles.setdefault(service, []).append(handle)
            h.core.send(handle, [["DEFAULT", b"%d-%d" % (c, i)] for i in range(2)], h.now)
    h.flush()
    requests = take_requests(h)
    assert sorted(requests) == sorted(f"svc{s}" for s in range(100)), "exactly one request per service"
    assert h.core.tx.delayed_total == 20_000
    for service in requests:
        h.core.resolved(service, answer(service), h.now)
    h.flush()
    assert take_requests(h) == [], "an answer does not ask again"
    assert h.core.tx.delayed_total == 0
    sent = h.core.outgoing(B, 100_000, NO_BYTE_LIMIT)
    assert len(sent) == 20_000
    per_conversation: dict[str, list[int]] = {}
    for env in sent:
        per_conversation.setdefault(env[1], []).append(env[3])
    assert all(seqs == [0, 1] for seqs in per_conversation.values()), "each conversation in its own order"
    assert h.core.dispatcher.requests_made == 100


def test_a_request_that_never_ends_gets_no_second_one() -> None:
    h = resolver_node()
    first = begin(h, "svc")
    h.send(first, b"1")
    assert take_requests(h) == ["svc"]
    for _ in range(50):
        h.advance(3600)  # hours go by; the resolver never answers
        h.send(begin(h, "svc"), b"more")
    assert take_requests(h) == [], "no time-out by default: the seeds' 'longest possible time-out'"
    assert h.core.statistics(h.now)["dynamic_routing"]["services"]["svc"]["in_flight"] is not None


def test_resolve_timeout_gives_up_and_asks_again_after_the_retry() -> None:
    h = resolver_node(resolve_timeout=10.0)
    h.send(begin(h, "svc"), b"1")
    assert take_requests(h) == ["svc"]
    h.advance(10.5)
    assert h.core.dispatcher.last_error("route", "svc") == "no answer within resolve_timeout"
    h.advance(60)
    assert take_requests(h) == ["svc"], "asked again after the retry interval"


def test_a_failure_keeps_messages_delayed_and_retries_with_back_off() -> None:
    h = resolver_node()
    h.send(begin(h, "svc"), b"1")
    take_requests(h)
    h.core.resolve_failed("svc", "registry said 503", h.now)
    h.flush()
    assert take_requests(h) == []
    status = h.core.statistics(h.now)["dynamic_routing"]["services"]["svc"]
    assert status["last"]["text"] == "registry said 503" and status["next_retry_in"] is not None
    assert 1.5 <= status["next_retry_in"] <= 2.5  # the first retry: 2 s +- 20% jitter
    h.advance(status["next_retry_in"] + 0.01)
    assert take_requests(h) == ["svc"]
    h.core.resolve_failed("svc", "again", h.now, retry_after=300.0)  # a negative answer's caching time
    h.advance(299.9)
    assert take_requests(h) == [], "never sooner than the source said"
    h.advance(60.2)  # at most 20% later (jitter only lengthens it)
    assert take_requests(h) == ["svc"]


def request_times(h: Harness, service: str, window: float, retry_after: float, step: float = 0.05) -> list[float]:
    """Every request for ``service`` within ``window`` seconds (from now), each answered at once "not found, for
    ``retry_after`` s" (a DNS negative answer's TTL), as offsets from the first; the clock moves in ``step``s."""
    start, times = h.now, []
    while h.now - start <= window:
        if take_requests(h) == [service]:
            times.append(round(h.now - start, 3))
            h.core.resolve_failed(service, "not found: SRV target '.'", h.now, retry_after=retry_after)
            h.flush()
        h.advance(step)
    return times


def test_a_negative_answer_with_a_short_hold_time_still_backs_off() -> None:
    # issue 11: an SRV target "." with a 2 s TTL was asked every 2 s for good (7 queries in 14 s); the hold time is
    # a lower bound on the back-off, which doubles with each failure from 2 s up to 60 s whatever it says
    h = resolver_node()
    h.core.dispatcher.rand = lambda: 0.5  # jitter's random source: 0.5 is the middle, no jitter at all
    h.send(begin(h, "svc"), b"waits")
    times = request_times(h, "svc", window=14.5, retry_after=2.0)
    assert times == pytest.approx([0, 2, 6, 14], abs=0.06), "2, 4, 8 s apart: 4 questions in 14 s, not 7"
    more = request_times(h, "svc", window=200.0, retry_after=2.0)
    gaps = [b - a for a, b in zip(more, more[1:], strict=False)]
    assert gaps == pytest.approx([32, 60, 60], abs=0.06), "doubling on (16 s before the first of these), capped at 60 s"


@pytest.mark.parametrize(("rand", "first_gaps"), [(0.0, [2.0, 3.2, 6.4]), (1.0, [2.4, 4.8, 9.6])],
                         ids=["least-jitter", "most-jitter"])
def test_jitter_spreads_the_back_off_but_never_below_the_answers_hold_time(rand: float, first_gaps: list[float]) -> None:
    h = resolver_node()
    h.core.dispatcher.rand = lambda: rand  # the two ends of the jitter's range: 0.8x and 1.2x
    h.send(begin(h, "svc"), b"waits")
    times = request_times(h, "svc", window=20.0, retry_after=2.0, step=0.01)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # the first back-off (2 s, 1.6 s at least jitter) is under the 2 s hold time: the hold time wins, jittered up
    assert gaps == pytest.approx(first_gaps, abs=0.02)


def test_a_waiting_reason_says_when_the_node_asks_again_as_of_when_it_is_shown() -> None:
    # issue 11: "asks again in 3s" (computed when the request failed) was shown beside "1.9s" (computed when shown)
    h = resolver_node()
    h.core.dispatcher.rand = lambda: 0.5
    handle = begin(h, "svc")
    h.send(handle, b"waits")
    take_requests(h)
    failed_at = h.now
    h.core.resolve_failed("svc", "not found: NXDOMAIN", h.now)
    h.flush()
    stored = h.core.endpoints[handle].delayed
    assert stored == "waiting for dynamic routing: the last request failed (not found: NXDOMAIN)", stored
    h.advance(1.1)
    status = h.core.statistics(h.now)
    request = status["dynamic_routing"]["services"]["svc"]
    assert request["next_retry_in"] == pytest.approx(0.9) and request["next_retry_at"] == failed_at + 2.0
    assert request["last"]["at"] == failed_at and request["last"]["age_seconds"] == pytest.approx(1.1)
    reason = status["delayed"]["svc"]["reason"]
    assert reason == "waiting for dynamic routing: the last request failed (not found: NXDOMAIN); asks again in 0.9s"
    assert status["transmission"]["entries"][0]["state"] == f"delayed: {reason}"
    h.advance(0.5)
    assert h.core.statistics(h.now)["delayed"]["svc"]["reason"].endswith("; asks again in 0.4s")
    assert h.core.endpoints[handle].delayed is stored, "nothing that depends on now is stored"


def test_the_node_says_whom_it_asks_where_it_explains_routing() -> None:
    h = resolver_node()
    handle = begin(h, "svc")
    h.send(handle, b"waits")
    assert h.core.decide(h.core.endpoints[handle], h.now).reason.endswith("asking the test resolver")
    assert h.core.statistics(h.now)["dynamic_routing"]["asks"] == "the test resolver"
    bcn = Harness()
    bcn.core.create_object("queue", {"name": "bcn-q"})
    bcn.core.create_object("service", {"name": BCN_SERVICE, "queue": "bcn-q", "contracts": [BCN_CONTRACT]})
    assert bcn.core.statistics(bcn.now)["dynamic_routing"]["asks"] == "the Broker Configuration Notice service"


def test_a_conversation_that_ends_while_delayed_takes_its_messages_out() -> None:
    h = resolver_node()
    staying, leaving = begin(h, "svc"), begin(h, "svc")
    h.send(staying, b"stays")
    h.send(leaving, b"goes 1", b"goes 2")
    assert h.core.end(leaving, h.now) == 2
    h.flush()
    assert h.core.tx.delayed_count["svc"] == 1
    h.core.resolved("svc", answer("svc"), h.now)
    h.flush()
    assert [e[10] for e in h.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"stays"]


def test_lifetime_running_out_while_delayed_names_the_service_and_the_last_error() -> None:
    h = resolver_node()
    handle = h.core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=h.now, lifetime=30).handle
    h.send(handle, b"1")
    take_requests(h)
    h.core.resolve_failed("svc", "NXDOMAIN for _aiobroker._tcp.svc.test.", h.now)
    h.advance(31)
    (_, _, mtype, body), = h.drain("qi")
    code, description = parse_error_body(body)
    assert mtype == ERROR and code == BrokerErrorCode.LIFETIME_EXPIRED
    assert "'svc'" in description and "NXDOMAIN for _aiobroker._tcp.svc.test." in description
    assert h.core.tx.delayed_total == 0


def test_delayed_messages_are_bounded_per_service_and_per_node() -> None:
    h = resolver_node(max_delayed_per_service=5, max_delayed_messages=8)
    a = begin(h, "svc-a")
    h.send(a, *[b"x"] * 5)
    with pytest.raises(Overloaded, match="5 message\\(s\\) already wait for a route to service 'svc-a'"):
        h.core.send(a, [["DEFAULT", b"one too many"]], h.now)
    b = begin(h, "svc-b")
    h.send(b, *[b"y"] * 3)
    with pytest.raises(Overloaded, match="max_delayed_messages is 8"):
        h.core.send(b, [["DEFAULT", b"over the node's bound"]], h.now)
    assert h.core.tx.delayed_total == 8, "a refused send added nothing"


def test_routes_from_an_answer_expire_and_are_asked_for_again_while_the_service_has_traffic() -> None:
    h = resolver_node()
    h.send(begin(h, "busy"), b"1")
    h.send(begin(h, "quiet"), b"1")
    take_requests(h)
    h.core.resolved("busy", answer("busy", lifetime=100), h.now)
    h.core.resolved("quiet", answer("quiet", lifetime=100), h.now)
    h.flush()
    h.advance(50)
    h.send(begin(h, "busy"), b"traffic")  # routed through the resolver's route
    h.advance(41)  # 9 s before expiry: inside the refresh window (10% of the lifetime)
    assert take_requests(h) == ["busy"], "the busy service is asked again before its routes expire"
    routes = {r.service_name: r for r in h.core.catalog.routes.values() if r.origin == "test"}
    assert routes["busy"].expires_at == routes["quiet"].expires_at
    h.core.resolved("busy", answer("busy", lifetime=100), h.now)
    assert {r.service_name for r in h.core.catalog.routes.values() if r.origin == "test" and r.live(h.now + 20)} == {"busy"}


MISSING_BINDING = MISSING_ROUTE.replace("MissingRoute", "MissingRemoteServiceBinding")


def bcn_node() -> Harness:
    h = Harness()
    h.service("init", "qi", [])
    h.core.create_object("queue", {"name": "bcn-q"})
    h.core.create_object("service", {"name": BCN_SERVICE, "queue": "bcn-q", "contracts": [BCN_CONTRACT]})
    h.flush()
    return h


@pytest.mark.parametrize("first", ["route", "binding"])
def test_the_bcn_service_gets_both_requests_at_once_and_plain_messages_go_when_both_have_ended(first: str) -> None:
    h = bcn_node()
    conversations = [begin(h, "far") for _ in range(20)]
    for i, handle in enumerate(conversations):
        h.send(handle, b"m%d" % i)
    # the BCN application's view: one MissingRoute and one MissingRemoteServiceBinding, at once, however many
    # conversations wait: the service waits for the slower of the two answers, not for one after the other
    requests = {mtype: (handle, body) for handle, _, mtype, body in h.drain("bcn-q")}
    assert sorted(requests) == sorted([MISSING_ROUTE, MISSING_BINDING]), requests
    root = ElementTree.fromstring(requests[MISSING_ROUTE][1])
    assert root.tag == "{http://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice/MissingRoute}MissingRoute"
    assert root.findtext("{http://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice/MissingRoute}SERVICE_NAME") == "far"
    assert h.core.statistics(h.now)["dynamic_routing"]["requests_by_kind"] == {"route": 1, "binding": 1}
    # the application ends one request (the route created first, if it is the route's), then the other
    if first == "route":
        h.core.create_object("route", {"name": "to-far", "service_name": "far", "address": B}, h.now)
        h.core.end(requests[MISSING_ROUTE][0], h.now)
        h.flush()
        assert h.core.outgoing(B, 100, NO_BYTE_LIMIT) == [], "routed, but the binding request has not ended yet"
        h.core.end(requests[MISSING_BINDING][0], h.now)  # no binding to be had
    else:
        h.core.end(requests[MISSING_BINDING][0], h.now)
        h.flush()
        assert h.core.outgoing(B, 100, NO_BYTE_LIMIT) == [], "the binding request ended, but there is no route yet"
        h.core.create_object("route", {"name": "to-far", "service_name": "far", "address": B}, h.now)
        h.core.end(requests[MISSING_ROUTE][0], h.now)
    h.flush()
    sent = h.core.outgoing(B, 100, NO_BYTE_LIMIT)
    assert sorted(e[10] for e in sent) == sorted(b"m%d" % i for i in range(20)), "encryption=False goes on, plain"
    assert all(e[13] is False for e in sent)
    assert h.drain("bcn-q") == [], "nothing asked twice"
    (far,) = h.core.statistics(h.now)["dynamic_routing"]["services"].values()
    assert far["delayed_conversations"] == 0 and far["in_flight"] is None
    assert far["binding_request"]["last"]["ok"] is False, "a binding request that made no binding counts as failed"


def test_with_both_requests_asked_at_once_secure_messages_wait_for_a_binding_and_plain_ones_do_not() -> None:
    h = bcn_node()
    secure = h.core.begin_dialog(from_service="init", to_service="far", contract="DEFAULT", now=h.now,
                                 encryption=True).handle
    plain = begin(h, "far")
    h.send(secure, b"secret")
    h.send(plain, b"open")
    requests = {mtype: handle for handle, _, mtype, _ in h.drain("bcn-q")}
    assert sorted(requests) == sorted([MISSING_ROUTE, MISSING_BINDING])
    h.core.create_object("route", {"name": "to-far", "service_name": "far", "address": B}, h.now)
    h.core.end(requests[MISSING_ROUTE], h.now)
    h.core.end(requests[MISSING_BINDING], h.now)  # ended without a binding
    h.flush()
    assert [e[10] for e in h.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"open"], "only the plain one goes"
    waiting = h.core.statistics(h.now)["dynamic_routing"]["services"]["far"]
    assert waiting["delayed_conversations"] == 1 and waiting["delayed_messages"] == 1, waiting


def test_a_bcn_error_keeps_the_messages_delayed_and_asks_again_later() -> None:
    h = Harness()
    h.service("init", "qi", [])
    h.core.create_object("queue", {"name": "bcn-q"})
    h.core.create_object("service", {"name": BCN_SERVICE, "queue": "bcn-q", "contracts": [BCN_CONTRACT]})
    h.flush()
    h.send(begin(h, "far"), b"waiting")
    requests = {mtype: handle for handle, _, mtype, _ in h.drain("bcn-q")}
    h.core.end(requests[MISSING_ROUTE], h.now, error=(404, "no such service in the inventory"))
    h.flush()
    status = h.core.statistics(h.now)["dynamic_routing"]["services"]["far"]
    assert "no such service in the inventory" in status["last"]["text"]
    assert status["delayed_messages"] == 1
    assert h.drain("bcn-q") == [], "no new request before the retry interval"
    h.advance(status["next_retry_in"] + 0.01)
    assert [r[2] for r in h.drain("bcn-q")] == [MISSING_ROUTE], "asked again (the binding request is still open)"


def test_messages_acknowledged_after_their_conversation_went_back_to_delayed_leave_the_delayed_counts() -> None:
    tx = TransmissionQueue()
    rows = [message_row(i, "tx", "h1", i, "DEFAULT", b"m", 0.0, 0) for i in range(3)]
    tx.add_many("h1", rows, "svc")
    tx.attach("h1", B, "svc")
    assert [row[ROW_SEQ] for _, row in tx.take_unsent(B, 10, durable_upto=10, max_bytes=NO_BYTE_LIMIT)] == [0, 1, 2]
    tx.delay("h1", "svc")  # the route was dropped with the three in flight: they wait again, counted
    assert tx.delayed_count == {"svc": 3} and tx.delayed_total == 3
    assert len(tx.acknowledge("h1", 2, "svc")) == 2  # the far side had stored two of them after all
    assert tx.delayed_count == {"svc": 1} and tx.delayed_total == 1
    tx.drop("h1", "svc")
    assert tx.delayed_count == {} and tx.delayed_total == 0


def test_hurry_asks_again_now_instead_of_at_the_retry_and_keeps_the_back_off() -> None:
    # the console's "ask again": the operator drops the retry wait, and routing the service again makes the request
    h = resolver_node()
    h.core.dispatcher.rand = lambda: 0.5  # no jitter
    handle = begin(h, "svc")
    h.send(handle, b"waits")
    assert take_requests(h) == ["svc"]
    assert not h.core.dispatcher.hurry("route", "svc"), "a request in flight: nothing to hurry"
    h.core.resolve_failed("svc", "not found: 404", h.now, retry_after=600.0)
    h.flush()
    h.advance(1.0)
    assert take_requests(h) == [], "the registry said no for 600 s"
    assert h.core.ask_again("svc", h.now) == (["route"], 0), "the route request's retry dropped; nothing moved yet"
    h.flush()
    assert take_requests(h) == ["svc"], "asked again at once"
    assert not h.core.dispatcher.hurry("route", "svc"), "in flight again"
    h.core.resolve_failed("svc", "not found: 404", h.now)
    h.flush()
    assert h.core.dispatcher.next_retry_in("route", "svc", h.now) == pytest.approx(4.0), "the second failure: 4 s"
    h.advance(600.0)  # the first failure's retry deadline, still in the heap, is stale when it comes
    assert take_requests(h) == ["svc"], "one request at the second retry, none for the stale deadline"
    h.core.resolved("svc", answer("svc"), h.now)
    h.flush()
    assert h.core.endpoints[handle].delayed is None
    assert not h.core.dispatcher.hurry("route", "svc"), "nothing scheduled: nothing to hurry"


def test_a_link_takes_only_from_conversations_with_rows_unsent_and_sends_everything_again_in_a_new_epoch() -> None:
    """After a storm a link carries 100,000 conversations whose rows were sent long ago; a take must not walk
    them (it did, once per take: quadratic), yet a new epoch sends every unacknowledged row again, in order."""
    tx = TransmissionQueue()
    handles = [f"h{i}" for i in range(1000)]
    for i, handle in enumerate(handles):
        tx.add_many(handle, [message_row(i, "tx", handle, 0, "DEFAULT", b"m", 0.0, 0)], "svc")
        tx.attach(handle, B, "svc")
    link = tx.links[B]
    first = tx.take_unsent(B, 2000, durable_upto=10_000, max_bytes=NO_BYTE_LIMIT)
    assert [h for h, _ in first] == handles
    assert link.unsent == {}, "every conversation's rows sent: none left to walk"
    tx.add_many("h500", [message_row(1000, "tx", "h500", 1, "DEFAULT", b"n", 0.0, 0)], "svc")
    assert list(link.unsent) == ["h500"]
    assert [(h, row[ROW_SEQ]) for h, row in tx.take_unsent(B, 10, 10_000, NO_BYTE_LIMIT)] == [("h500", 1)]
    tx.acknowledge("h0", 1, "svc")
    link.new_epoch()  # a reconnect: everything unacknowledged goes again, in order per conversation
    again = tx.take_unsent(B, 5000, durable_upto=10_000, max_bytes=NO_BYTE_LIMIT)
    assert [(h, row[ROW_SEQ]) for h, row in again][:3] == [("h1", 0), ("h2", 0), ("h3", 0)]
    assert [row[ROW_SEQ] for h, row in again if h == "h500"] == [0, 1] and len(again) == 1000
    # a row not yet stored holds its conversation back (and only it) until a later take
    tx.add_many("h7", [message_row(20_000, "tx", "h7", 1, "DEFAULT", b"late", 0.0, 0)], "svc")
    assert tx.take_unsent(B, 10, durable_upto=10_000, max_bytes=NO_BYTE_LIMIT) == []
    assert [(h, row[ROW_SEQ]) for h, row in tx.take_unsent(B, 10, 20_000, NO_BYTE_LIMIT)] == [("h7", 1)]


def test_delayed_conversations_share_one_string_per_far_service_contract_and_message_type() -> None:
    """A storm holds 100,000 DELAYED conversations; names decoded from each request are new strings every time, so
    each conversation and row keeps the one the node already has (where the memory per delayed message goes:
    benchmarks/README.md)."""
    h = resolver_node()
    handles = [h.core.begin_dialog(from_service="init", to_service="".join(["far", "-svc"]),
                                   contract="".join(["DEF", "AULT"]), now=h.now).handle for _ in range(3)]
    for handle in handles:
        h.core.send(handle, [["".join(["DEF", "AULT"]), b"m"]], h.now)
    eps = [h.core.endpoints[x] for x in handles]
    assert eps[0].far_service is eps[1].far_service is eps[2].far_service
    assert all(ep.contract is h.core.catalog.contracts["DEFAULT"].name for ep in eps)
    kinds = {id(h.core.tx.rows_of(handle)[0][4]) for handle in h.core.tx.rows if handle in handles}
    assert kinds == {id(h.core.catalog.message_types["DEFAULT"].name)}


def test_a_route_made_for_one_service_leaves_conversations_delayed_on_others_alone() -> None:
    """The BCN service makes one route per answer: each must not re-decide every DELAYED conversation (100,000 in a
    storm, a walk per route: quadratic), only those to its service and those on links."""
    h = resolver_node()
    x, y = begin(h, "x"), begin(h, "y")
    h.send(x, b"to x")
    h.send(y, b"to y")
    take_requests(h)
    reason_y = h.core.endpoints[y].delayed
    h.core.create_object("route", {"name": "to-x", "service_name": "x", "address": B}, h.now)
    assert y not in h.core.ledger.dirty, "y's conversation was re-decided (and so written again) for a route to x"
    assert h.core.endpoints[y].delayed is reason_y and h.core.tx.is_delayed(y, "y")
    h.flush()
    assert [e[10] for e in h.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"to x"]


def test_a_binding_asked_with_the_route_that_times_out_is_left_unanswered_not_failed_for_ten_minutes() -> None:
    """resolve_timeout on a round trip that asked both: the route's question failed and is asked again after the
    retry; the binding's went unanswered, so it is asked on its own once the route is known, not held for
    binding_failure_cache (which would keep encrypted conversations waiting ten minutes)."""
    h = resolver_node(resolve_timeout=10.0, resolver_answers_bindings=True)
    h.send(begin(h, "svc"), b"1")
    assert h.resolve_requests() == [("route", "svc"), ("binding", "svc")]
    h.advance(10.5)
    d = h.core.dispatcher
    assert d.last_error("route", "svc") == "no answer within resolve_timeout"
    assert ("binding", "svc") not in d.in_flight and ("binding", "svc") not in d.last
    assert ("binding", "svc") not in d.retry_at, "no failure remembered for the binding"
    h.advance(60)
    assert h.resolve_requests() == [("route", "svc"), ("binding", "svc")], "both asked again, together"
    h.core.resolved("svc", answer("svc"), h.now)
    h.flush()
    assert h.resolve_requests() == [], "the binding is still in flight with the new round trip"


def test_a_binding_left_unanswered_by_the_round_trip_is_asked_on_its_own_once_the_route_is_known() -> None:
    h = resolver_node(resolver_answers_bindings=True)
    handle = begin(h, "svc")
    h.send(handle, b"1")
    assert h.resolve_requests() == [("route", "svc"), ("binding", "svc")]
    h.core.binding_unanswered("svc", h.now)  # an older registry: its answer said nothing about the binding
    h.core.resolved("svc", answer("svc"), h.now)
    h.flush()
    assert h.resolve_requests() == [("binding", "svc")], "the route known, the binding asked on its own"
    assert "binding" in (h.core.endpoints[handle].delayed or "")
    assert ("binding", "svc") not in h.core.dispatcher.last, "unanswered is neither a success nor a failure"
