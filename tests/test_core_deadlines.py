"""The core's one timer: the deadline heap alone, then each kind of deadline firing through the core (fake clock)."""

from __future__ import annotations

from core_harness import A_ADDR, B_ADDR, Harness, carry, route_both_ways

from aiobroker.core.catalog import DIALOG_TIMER, ERROR
from aiobroker.core.deadlines import DeadlineKind, Deadlines
from aiobroker.core.dialog_errors import BrokerErrorCode, parse_error_body
from aiobroker.core.effects import LeaseExpired
from aiobroker.resolver import RouteAnswer, Target

# --- the heap alone -------------------------------------------------------------------------------------------


def test_deadlines_come_out_in_order_of_time_whatever_order_they_went_in() -> None:
    d = Deadlines()
    for when, kind, key in [(30.0, DeadlineKind.LEASE, "7"), (10.0, DeadlineKind.TIMER, "h1"),
                            (20.0, DeadlineKind.REFRESH, "svc"), (5.0, DeadlineKind.RETIRE, "h2")]:
        d.push(when, kind, key)
    assert [when for when, _, _ in d.pop_due(100.0)] == [5.0, 10.0, 20.0, 30.0]
    assert len(d) == 0 and d.next_time() is None and d.first() is None


def test_deadlines_due_at_the_same_instant_come_out_by_kind_then_by_key() -> None:
    d = Deadlines()
    d.push(1.0, DeadlineKind.REFRESH, "b")
    d.push(1.0, DeadlineKind.TIMER, "z")
    d.push(1.0, DeadlineKind.REFRESH, "a")
    d.push(1.0, DeadlineKind.LIFETIME, "z")
    d.push(1.0, DeadlineKind.DISPATCH, "route\x00svc")
    assert list(d.pop_due(1.0)) == [
        (1.0, DeadlineKind.LIFETIME, "z"),  # a lifetime before a timer: the Error comes first, as it always has
        (1.0, DeadlineKind.TIMER, "z"),
        (1.0, DeadlineKind.DISPATCH, "route\x00svc"),
        (1.0, DeadlineKind.REFRESH, "a"),
        (1.0, DeadlineKind.REFRESH, "b"),
    ]


def test_pop_due_takes_only_what_is_due_by_now_and_the_next_time_follows() -> None:
    d = Deadlines()
    for when in (3.0, 1.0, 2.0, 4.0):
        d.push(when, DeadlineKind.TIMER, f"h{when:.0f}")
    assert d.next_time() == 1.0
    assert list(d.pop_due(0.5)) == [] and len(d) == 4, "nothing due yet"
    assert [key for _, _, key in d.pop_due(2.0)] == ["h1", "h2"], "due exactly at now counts"
    assert d.next_time() == 3.0 and d.first() == (3.0, DeadlineKind.TIMER, "h3")
    d.drop_first()
    assert d.next_time() == 4.0
    assert [key for _, _, key in d.pop_due(10.0)] == ["h4"]
    assert d.next_time() is None


def test_a_deadline_pushed_while_others_are_handled_comes_out_in_the_same_pass_if_due() -> None:
    d = Deadlines()
    d.push(1.0, DeadlineKind.DISPATCH, "first")
    seen = []
    for when, _, key in d.pop_due(5.0):
        seen.append(key)
        if key == "first":
            d.push(when + 1, DeadlineKind.DISPATCH, "due")  # as a handler scheduling a retry would
            d.push(when + 10, DeadlineKind.DISPATCH, "later")
    assert seen == ["first", "due"]
    assert d.next_time() == 11.0


# --- each kind through the core -------------------------------------------------------------------------------


def advance_to(h: Harness, when: float) -> list[object]:
    """The shell's ticker: the clock at exactly ``when``, then ``advance``; returns the expired leases."""
    h.now = when
    h.core.advance(when)
    h.flush()
    expired: list[object] = [effect.lease for effect in h.effects(LeaseExpired)]
    return expired


def types(h: Harness, queue: str) -> list[str]:
    return [t for _, _, t, _ in h.drain(queue)]


def test_a_lifetime_fires_at_its_time() -> None:
    h = Harness()
    h.service("init", "qi", [])
    h.service("target", "qt")
    handle = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now,
                                 lifetime=60).handle
    h.flush()
    due = h.now + 60
    assert h.core.next_deadline() == due
    advance_to(h, due - 0.001)
    assert types(h, "qi") == []
    advance_to(h, due)
    (_, _, message_type, body), = h.drain("qi")
    assert message_type == ERROR and parse_error_body(body)[0] == BrokerErrorCode.LIFETIME_EXPIRED
    assert h.core.endpoints[handle].error is not None


def test_a_timer_fires_at_its_time() -> None:
    h = Harness()
    handle = h.pair()
    h.core.begin_timer(handle, 5, h.now)
    due = h.now + 5
    assert h.core.next_deadline() == due
    advance_to(h, due - 0.001)
    assert types(h, "qi") == []
    advance_to(h, due)
    assert types(h, "qi") == [DIALOG_TIMER]


def test_a_lease_runs_out_at_its_time_and_a_committed_one_wakes_nobody() -> None:
    h = Harness(receive_lease=30)
    handle = h.pair()
    h.send(handle, b"x", b"y")
    committed = h.receive("qt", n=1)
    assert committed is not None
    h.core.commit(committed.id, h.owner)
    h.flush()
    h.now += 10
    lease = h.receive("qt")
    assert lease is not None
    assert h.core.next_deadline() == h.now + 30, "the committed lease's expiry is not reported"
    due = h.now + 30
    assert advance_to(h, due - 0.001) == []
    assert advance_to(h, due) == [lease]
    assert h.core.next_deadline() is None, "nothing left: a conversation begun without a lifetime has no deadline"


def test_a_closed_remote_endpoint_retires_at_its_time() -> None:
    a, b = Harness(closed_retention=60.0), Harness(closed_retention=60.0)
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.send(handle, b"x")
    carry(a, b, B_ADDR)
    (target, _, _, _), = b.drain("qb")
    b.core.end(target, b.now)
    b.flush()
    carry(b, a, A_ADDR)  # the EndDialog acknowledged: nothing left to send, so it is kept 60 s, then goes
    due = b.now + 60
    assert b.core.next_deadline() == due
    advance_to(b, due - 0.001)
    assert target in b.core.endpoints
    advance_to(b, due)
    assert target not in b.core.endpoints


def resolver_node(**options: object) -> tuple[Harness, str]:
    """A node with a resolver, and a conversation to 'svc' that waits DELAYED for a route."""
    h = Harness(resolver_name="test", **options)  # type: ignore[arg-type]
    h.service("init", "qi", [])
    handle = h.core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=h.now).handle
    h.send(handle, b"1")
    assert h.resolve_requests() == [("route", "svc")]
    return h, handle


def test_a_dispatcher_time_out_and_retry_fire_at_their_time() -> None:
    h, _ = resolver_node(resolve_timeout=10.0)
    timeout = h.now + 10
    assert h.core.next_deadline() == timeout
    advance_to(h, timeout - 0.001)
    assert h.core.dispatcher.last_error("route", "svc") is None
    advance_to(h, timeout)
    assert h.core.dispatcher.last_error("route", "svc") == "no answer within resolve_timeout"
    retry = h.core.dispatcher.retry_at[("route", "svc")]
    assert h.core.next_deadline() == retry
    advance_to(h, retry - 0.001)
    assert h.resolve_requests() == []
    advance_to(h, retry)
    assert h.resolve_requests() == [("route", "svc")], "asked again at the retry time"


def test_a_refresh_fires_at_its_time_for_a_service_with_traffic() -> None:
    h, handle = resolver_node()
    answer = RouteAnswer(service_name="svc", targets=(Target(address="tcp://10.0.0.2:4022"),), lifetime=100,
                         source="test")
    h.core.resolved("svc", answer, h.now)
    h.flush()
    refresh = h.now + 90  # 10% of the lifetime ahead of expiry
    assert h.core.next_deadline() == refresh
    h.send(handle, b"traffic")
    advance_to(h, refresh - 0.001)
    assert h.resolve_requests() == []
    advance_to(h, refresh)
    assert h.resolve_requests() == [("route", "svc")], "asked again before the routes expire"


def test_next_deadline_is_the_earliest_of_all_kinds_as_they_fire() -> None:
    h = Harness(receive_lease=3)
    handle = h.pair()
    start = h.now
    h.core.begin_timer(handle, 5, h.now)
    h.send(handle, b"x")
    lease = h.receive("qt")  # expires at +3
    target = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now,
                                 lifetime=8).handle  # runs out at +8
    h.flush()
    assert h.core.next_deadline() == start + 3
    assert advance_to(h, start + 3) == [lease]
    assert h.core.next_deadline() == start + 5
    advance_to(h, start + 5)
    assert types(h, "qi") == [DIALOG_TIMER]
    assert h.core.next_deadline() == start + 8
    advance_to(h, start + 8)
    assert h.core.endpoints[target].error is not None


def test_only_a_lifetime_within_the_horizon_is_scheduled_and_a_restart_schedules_every_one() -> None:
    """A conversation begun without a lifetime (68 years) holds no deadline while the node runs; one with a lifetime
    does; after a restart, loading schedules both."""
    h = Harness()
    h.pair()
    endless = h.pair()
    timed = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now, lifetime=60)
    h.flush()
    assert h.core.next_deadline() == h.now + 60, "the timed conversation's lifetime, and nothing else"
    advance_to(h, h.now + 60)
    assert h.core.next_deadline() is None
    assert h.core.endpoints[timed.handle].error is not None and h.core.endpoints[endless].error is None
    h2 = h.restart()
    advance_to(h2, h2.now)  # the stale lifetime of the conversation already in error goes
    assert h2.core.next_deadline() == h2.core.endpoints[endless].expires_at, "scheduled again when loaded"
