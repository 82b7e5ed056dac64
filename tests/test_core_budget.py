"""The memory budget and the queues' bounds in the core: what the node holds, counted as messages come and go, and
sends refused past the bounds (a fake clock and a dict store; the processes' tests are in test_memory_budget.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from core_harness import B_ADDR, Harness, carry, route_both_ways

from aiobroker.config import load_config
from aiobroker.config.memory import available_memory, default_max_memory
from aiobroker.core.budget import ROW_MEMORY
from aiobroker.core.effects import MemoryPressure
from aiobroker.errors import ConfigError, InvalidArgument, Overloaded, QueueFull


def held(h: Harness) -> int:
    return h.core.budget.held


def cost(*bodies: bytes) -> int:
    return sum(len(b) + ROW_MEMORY for b in bodies)


@pytest.mark.parametrize("persist", [True, False], ids=["durable", "memory"])
def test_what_a_queue_holds_is_counted_as_it_comes_and_goes(persist: bool) -> None:
    h = Harness(persist=persist)
    handle = h.pair()
    h.send(handle, b"x" * 100, b"y" * 50)
    assert held(h) == cost(b"x" * 100, b"y" * 50)
    assert h.core.budget.in_queue("qt") == (2, 150)
    lease = h.receive("qt")
    assert lease is not None
    assert held(h) == cost(b"x" * 100, b"y" * 50), "a locked message is still held"
    h.core.rollback(lease.id, h.owner)
    assert [m[3] for m in h.drain("qt")] == [b"x" * 100, b"y" * 50]
    assert held(h) == 0
    assert h.core.budget.in_queue("qt") == (0, 0)


def test_ending_a_conversation_lets_go_of_its_waiting_and_locked_messages() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"a", b"b")
    lease = h.receive("qt")
    assert lease is not None
    h.send(handle, b"c")
    target = lease.messages[0][2]
    h.core.end(target, h.now)  # the receiving side ends: "c" waiting is removed, "a" and "b" are locked
    h.flush()
    h.core.rollback(lease.id, h.owner)  # they do not come back: their conversation ended
    h.flush()
    assert h.core.budget.in_queue("qt") == (0, 0)
    assert not [r for r in h.store.messages.values() if r[1] == "q:qt"], "and they left the store"


def test_the_transmission_queue_is_counted_until_acknowledged() -> None:
    a, b = Harness(), Harness()
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    route_both_ways(a, b, "svcA", "svcB")
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.send(handle, b"1" * 10, b"2" * 10)
    assert held(a) == cost(b"1" * 10, b"2" * 10)
    carry(a, b, B_ADDR)
    assert held(a) == 0, "acknowledged messages leave"
    assert held(b) == cost(b"1" * 10, b"2" * 10), "and are held where they were stored"


def test_a_restart_counts_what_it_reads_back() -> None:
    h = Harness()
    handle = h.pair()
    h.send(handle, b"z" * 1000)
    again = h.restart()
    assert held(again) == cost(b"z" * 1000)


def test_over_the_budget_a_send_is_refused_and_accepted_again_below_the_low_watermark() -> None:
    h = Harness(max_memory=10 * (1000 + ROW_MEMORY))
    handle = h.pair()
    for _ in range(10):
        h.send(handle, b"m" * 1000)
    assert h.core.budget.over
    assert [e.over for e in h.effects(MemoryPressure)] == [True], "one effect for the crossing"
    with pytest.raises(Overloaded, match=r"memory budget of .* MiB \(\[limits\] max_memory\)") as refused:
        h.send(handle, b"more")
    assert "10 in queues" in refused.value.message and "receive from the queues" in refused.value.message
    with pytest.raises(Overloaded):
        h.send(handle, b"more")
    assert h.core.budget.refused == 2
    assert h.effects(MemoryPressure) == [], "refused sends say nothing more"
    lease = h.receive("qt", n=1)  # taking one message out brings it to exactly 90%: still over
    assert lease is not None
    h.core.commit(lease.id, h.owner)
    h.flush()
    assert h.core.budget.over
    with pytest.raises(Overloaded):
        h.send(handle, b"more")
    lease = h.receive("qt", n=1)
    assert lease is not None
    h.core.commit(lease.id, h.owner)
    h.flush()
    assert not h.core.budget.over
    assert [e.over for e in h.effects(MemoryPressure)] == [False]
    h.send(handle, b"accepted")
    assert [m[3] for m in h.drain("qt")] == [b"m" * 1000] * 8 + [b"accepted"], "nothing accepted was lost"


def test_a_queue_bound_refuses_a_send_whole_naming_the_queue_and_its_bound() -> None:
    h = Harness()
    handle = h.pair()
    h.core.alter_queue("qt", {"max_messages": 3})
    h.send(handle, b"1", b"2")
    with pytest.raises(QueueFull, match=r"queue 'qt' is full: it holds 2 message\(s\) and its max_messages is 3"):
        h.send(handle, b"3", b"4")
    h.send(handle, b"3")
    h.core.alter_queue("qt", {"max_messages": None, "max_bytes": 10})
    with pytest.raises(QueueFull, match=r"holds 3 bytes of message bodies and its max_bytes is 10.*--max-bytes"):
        h.send(handle, b"x" * 8)
    assert isinstance(QueueFull("x"), Overloaded), "an Overloaded of its own"
    assert [m[3] for m in h.drain("qt")] == [b"1", b"2", b"3"]
    h.send(handle, b"x" * 8)
    assert [m[3] for m in h.drain("qt")] == [b"x" * 8]


def test_a_queue_bound_must_be_a_whole_number() -> None:
    h = Harness()
    h.pair()
    with pytest.raises(InvalidArgument, match=r"max_messages must be a whole number >= 1, or \"none\""):
        h.core.alter_queue("qt", {"max_messages": 0})
    assert h.core.catalog.queues["qt"].max_messages is None


def test_a_message_from_a_peer_to_a_full_queue_is_not_taken_and_comes_again() -> None:
    a, b = Harness(), Harness()
    a.service("svcA", "qa", [])
    b.service("svcB", "qb")
    b.core.alter_queue("qb", {"max_messages": 2})
    route_both_ways(a, b, "svcA", "svcB")
    handle = a.core.begin_dialog(from_service="svcA", to_service="svcB", contract="DEFAULT", now=a.now).handle
    a.send(handle, b"1", b"2", b"3")
    _, acks = carry(a, b, B_ADDR)
    assert [ack[3] for ack in acks] == [2], "the two that fit are acknowledged, the third is not"
    assert any("queue 'qb' is full" in text for text in b.reports())
    assert a.core.tx.message_count == 1, "the sender keeps the third"
    assert [m[3] for m in b.drain("qb")] == [b"1", b"2"]
    a.core.link_failed(B_ADDR, "no acknowledgement", a.now)  # its ack time-out: everything unacknowledged goes again
    carry(a, b, B_ADDR)
    assert [m[3] for m in b.drain("qb")] == [b"3"]
    assert a.core.tx.message_count == 0


def test_the_default_budget_is_a_quarter_of_the_memory_the_cgroup_allows(tmp_path: Path) -> None:
    limited = tmp_path / "memory.max"
    limited.write_text("1073741824\n")
    assert available_memory(limited) == min(1 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max\n")
    assert available_memory(unlimited) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_max_memory(1 << 30) == 256 * 1024 * 1024
    assert default_max_memory(100 * 1024 * 1024) == 64 * 1024 * 1024, "never below the floor"


def test_max_memory_in_a_config_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[limits]\nmax_memory = 268435456\n")
    assert load_config(path).max_memory == 256 * 1024 * 1024
    path.write_text("[limits]\nmax_memory = 1000\n")
    with pytest.raises(ConfigError, match=r"max_memory: must be an integer >= 1048576 \(bytes, at least 1 MiB"):
        load_config(path)
    assert load_config(None).max_memory is None, "the default: derived from the machine at start"


def recount(h: Harness) -> int:
    """What the node holds, counted the slow way: every row in every queue (waiting, locked, retained), in the
    transmission queue, and sent but not yet published."""
    rows = [r for q in h.core.queues.values() for g in q.groups.values() for dq in (g.urgent or (), g.normal) for r in dq]
    rows += [r for lease in h.core.leases.values() for r in lease.messages]
    rows += [r for q in h.core.queues.values() for kept in q.retained.values() for r in kept]
    rows += [r for handle in h.core.tx.rows for r in h.core.tx.rows_of(handle)]
    rows += [r for pending in h.core.pending for r in pending[3]]
    return sum(len(r[5]) + ROW_MEMORY for r in rows)


def test_the_running_count_matches_a_walk_through_every_path() -> None:
    h = Harness()
    h.core.create_object("message_type", {"name": "J", "validation": "json"})
    h.core.create_object("contract", {"name": "C", "messages": {"J": "any", "DEFAULT": "any"}})
    h.core.create_object("queue", {"name": "qr", "retention": True})
    h.service("init", "qi", [])
    h.service("target", "qt", ["C", "DEFAULT"])
    h.service("keeper", "qr", ["DEFAULT"])
    h.core.create_object("route", {"name": "away", "service_name": "far", "address": "tcp://far:1"}, h.now)
    checks = 0

    def check() -> None:
        nonlocal checks
        assert h.core.budget.held == recount(h)
        checks += 1

    valid = h.core.begin_dialog(from_service="init", to_service="target", contract="C", now=h.now).handle
    h.send(valid, b"[1]", b"not json", b"[3]", message_type="J")  # the second fails validation: one is queued
    check()
    traced = h.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=h.now).handle
    h.core.send(traced, [["DEFAULT", b"t" * 10, "00-" + "1" * 32 + "-" + "2" * 16 + "-01"], ["DEFAULT", b"u"]], h.now)
    check()  # sent, not yet stored
    h.flush()
    check()
    remote = h.core.begin_dialog(from_service="init", to_service="far", contract="DEFAULT", now=h.now).handle
    h.send(remote, b"r" * 100, b"s" * 200)
    check()
    delayed = h.core.begin_dialog(from_service="init", to_service="nowhere", contract="DEFAULT", now=h.now).handle
    h.send(delayed, b"d" * 50)
    check()
    kept = h.core.begin_dialog(from_service="init", to_service="keeper", contract="DEFAULT", now=h.now).handle
    h.send(kept, b"k" * 70)
    assert len(h.drain("qr")) == 1
    check()  # retained: still held
    with pytest.raises(Exception, match="max_message_size"):
        h.core.send(traced, [["DEFAULT", b"x" * (4 * 1024 * 1024 + 1)]], h.now)
    check()
    h.core.end(remote, h.now)  # its two messages stay until acknowledged, and an EndDialog joins them
    h.core.end(delayed, h.now)  # dropped: it never reached anybody
    h.flush()
    check()
    h.drain("qt")
    h.drain("qi")
    check()
    h.core.end(kept, h.now)
    h.flush()
    h.drain("qr")
    check()
    assert checks == 10
