"""The core's outbox (core/effects.py): what it asks the shell to do comes out of one queue, typed, in order, once."""

from __future__ import annotations

from core_harness import Harness

from aiobroker.core.effects import LeaseExpired, Report, ResolveRequest


def node() -> tuple[Harness, str]:
    """A node with a resolver, short leases, and a local conversation with a message waiting in its queue."""
    h = Harness(resolver_name="test", receive_lease=30)
    handle = h.pair()
    h.send(handle, b"x")
    return h, handle


def test_each_effect_comes_out_in_the_order_the_core_made_it_and_only_once() -> None:
    h, _ = node()
    assert h.core.drain_effects() == [], "a local send and its store ask the shell for nothing"

    lease = h.receive("qt")
    assert lease is not None
    h.core.accept([["not an envelope"]], h.now)  # a peer's malformed frame: a report
    far = h.core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=h.now).handle
    h.send(far, b"1")  # no route to 'svc': the dispatcher asks the resolver
    h.send(far, b"2")  # ... once per service, however many wait
    h.now += 31
    h.core.advance(h.now)  # the lease runs out
    h.flush()

    effects = h.core.drain_effects()
    assert [type(e) for e in effects] == [Report, ResolveRequest, LeaseExpired]
    report, request, expired = effects
    assert isinstance(report, Report) and "malformed envelope" in report.text
    assert request == ResolveRequest("route", "svc")
    assert expired == LeaseExpired(lease)
    assert h.core.drain_effects() == [], "a drained effect is gone"
    assert h.core.next_effect() is None


def test_next_effect_takes_them_one_at_a_time_oldest_first() -> None:
    h, _ = node()
    first = h.receive("qt")
    assert first is not None
    h.now += 31
    h.core.advance(h.now)
    second = h.receive("qt")  # the same message, leased again
    assert second is not None
    h.now += 31
    h.core.advance(h.now)
    assert h.core.next_effect() == LeaseExpired(first)
    assert h.core.next_effect() == LeaseExpired(second)
    assert h.core.next_effect() is None


def test_a_committed_lease_never_comes_out_as_expired() -> None:
    h, _ = node()
    lease = h.receive("qt")
    assert lease is not None
    h.core.commit(lease.id, h.owner)
    h.flush()
    h.now += 31
    h.core.advance(h.now)
    assert h.core.drain_effects() == []


def test_the_hot_path_puts_nothing_in_the_outbox() -> None:
    """Effects are per service, lease or report: sending, receiving and committing messages add none."""
    h, handle = node()
    for i in range(100):
        h.send(handle, str(i).encode())
        lease = h.receive("qt")
        assert lease is not None
        h.core.commit(lease.id, h.owner)
        h.flush()
    assert h.core.drain_effects() == []
