"""``status`` reads counters the core keeps as endpoints change (core/status.py) instead of walking every endpoint;
here they are checked against that walk after every step of conversations' lives, restarts included."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections import Counter
from typing import Any

from core_harness import A_ADDR, B_ADDR, Harness, carry, route_both_ways

from aiobroker.core.broker import BrokerCore
from aiobroker.errors import ConversationError, LeaseExpired



def counted(core: BrokerCore) -> dict[str, int]:
    stats = core.statistics()
    assert stats["conversations"] == sum(stats["conversations_by_state"].values())
    return dict(stats["conversations_by_state"])


def walked(core: BrokerCore) -> dict[str, int]:
    """What ``statistics`` used to compute on every call."""
    return dict(Counter(ep.state.value for ep in core.endpoints.values()))


def message_counts(core: BrokerCore) -> dict[str, Any]:
    """The transmission queue's messages and each queue's locked and retained ones, as ``statistics`` has them."""
    stats = core.statistics()
    return {
        "transmission": stats["transmission"]["messages"],
        "queues": {q["name"]: (q["locked"], q["retained"]) for q in stats["queues"]},
    }


def message_walks(core: BrokerCore) -> dict[str, Any]:
    """The same by walking, as ``statistics`` used to."""
    return {
        "transmission": sum(core.tx.count(handle) for handle in core.tx.rows),
        "queues": {
            name: (
                sum(len(g.lease.messages) for g in q.groups.values() if g.lease is not None),
                sum(len(rows) for rows in q.retained.values()),
            )
            for name, q in core.queues.items()
        },
    }


def agree(*harnesses: Harness) -> dict[str, int]:
    for h in harnesses:
        assert counted(h.core) == walked(h.core), h.core.endpoints
        assert message_counts(h.core) == message_walks(h.core)
        assert all(n > 0 for n in counted(h.core).values()), "a state with no endpoint is left out, as before"
    return counted(harnesses[-1].core)


def validating_pair(h: Harness) -> None:
    """Services init (qi) and target (qt) on DEFAULT and on J (JSON bodies, so a bad body fails validation)."""
    h.core.create_object("message_type", {"name": "J", "validation": "json"})
    h.core.create_object("contract", {"name": "C", "messages": {"J": "any"}})
    h.service("init", "qi", [])
    h.service("target", "qt", ["DEFAULT", "C"])


def begin(h: Harness, to: str = "target", contract: str = "DEFAULT", lifetime: float | None = None) -> str:
    ep = h.core.begin_dialog(from_service="init", to_service=to, contract=contract, now=h.now, lifetime=lifetime)
    h.flush()
    return ep.handle


def test_state_counts_follow_a_conversations_life_on_one_node_and_survive_a_restart() -> None:
    h = Harness()
    validating_pair(h)
    assert agree(h) == {}

    handle = begin(h)
    assert agree(h) == {"SO": 1}
    h.send(handle, b"request")
    assert agree(h) == {"CO": 2}, "sending made the target's endpoint, both conversing"
    (target, _, _, _), = h.drain("qt")

    h.core.end(target, h.now)  # EndDialog to the initiator: it is DI; the target's side is gone
    h.flush()
    assert agree(h) == {"DI": 1}
    h.core.end(handle, h.now)
    h.flush()
    assert agree(h) == {}, "both sides ended"

    erred = begin(h)
    h.send(erred, b"x")
    (erred_target, _, _, _), = h.drain("qt")
    h.core.end(erred_target, h.now, error=(42, "out of stock"))
    h.flush()
    assert agree(h) == {"ER": 1}

    invalid = begin(h, contract="C")
    h.send(invalid, b"{not json", message_type="J")  # fails the target's validation: the initiator is in error
    assert agree(h) == {"ER": 2}, "the target's endpoint made by the failed message is gone again"

    short = begin(h, lifetime=5.0)
    h.send(short, b"x")
    long_lived = begin(h)
    h.core.begin_timer(long_lived, 1.0, h.now)
    assert agree(h) == {"ER": 2, "CO": 2, "SO": 1}
    h.advance(10)  # the timer fires (no state change), the short one's lifetime runs out on both sides
    assert agree(h) == {"ER": 4, "SO": 1}

    before = agree(h)
    h2 = h.restart()
    assert agree(h2) == before, "loaded from the store, counted as they were"
    for ep in list(h2.core.endpoints.values()):
        h2.core.end(ep.handle, h2.now, cleanup=True)
    h2.flush()
    assert agree(h2) == {}


def federated_pair(closed_retention: float) -> tuple[Harness, Harness]:
    """Node a (service init) and node b (service target, on DEFAULT and C), routes both ways."""
    a, b = Harness(closed_retention=closed_retention), Harness(closed_retention=closed_retention)
    validating_pair(b)
    a.core.create_object("message_type", {"name": "J", "validation": "json"})
    a.core.create_object("contract", {"name": "C", "messages": {"J": "any"}})
    a.service("init", "qi", [])
    route_both_ways(a, b, "init", "target")
    return a, b


def test_state_counts_follow_endpoints_that_arrive_from_a_peer_stay_closed_and_retire() -> None:
    a, b = federated_pair(closed_retention=60.0)
    handle = begin(a)
    a.send(handle, b"request")
    carry(a, b, B_ADDR)
    assert agree(a) == {"CO": 1} and agree(b) == {"CO": 1}, "the target's endpoint arrived with message 0"

    (target, _, _, _), = b.drain("qt")
    b.core.end(target, b.now)
    b.flush()
    carry(b, a, A_ADDR)
    assert agree(b) == {"CD": 1}, "closed, kept to recognise retransmissions"
    assert agree(a) == {"DI": 1}

    refused = begin(a, contract="C")
    a.send(refused, b"{not json", message_type="J")
    carry(a, b, B_ADDR)  # b refuses message 0 quietly: its endpoint closes at once, the Error goes back
    carry(b, a, A_ADDR)
    assert agree(a) == {"DI": 1, "ER": 1}
    assert agree(b) == {"CD": 2}

    known = begin(a, contract="C")
    a.send(known, b"{}", b"{not json", message_type="J")
    carry(a, b, B_ADDR)  # message 1 fails at b, whose application has seen message 0: both sides are in error
    carry(b, a, A_ADDR)
    assert agree(a) == {"DI": 1, "ER": 2}
    assert agree(b) == {"CD": 2, "ER": 1}

    a2, b2 = a.restart(), b.restart()
    assert agree(a2) == {"DI": 1, "ER": 2} and agree(b2) == {"CD": 2, "ER": 1}
    b2.advance(61)
    assert agree(b2) == {"ER": 1}, "the closed ones retired after closed_retention"


def restarted(h: Harness, generation: int) -> Harness:
    """``h.restart()``, with ids that cannot collide with the stored ones (the harness's ids start again at 1)."""
    h2 = h.restart()
    ids = itertools.count(1)
    h2.core.new_id = lambda: f"gen{generation}-{next(ids):04d}"
    return h2


def test_state_counts_agree_with_a_walk_after_any_mix_of_calls() -> None:
    seen: Counter[str] = Counter()  # that the mix reached the states the counters must follow
    for seed in range(6):
        rng = random.Random(seed)
        h = Harness()
        if seed % 2:  # the target's queue keeps what is received until the conversation ends
            h.core.create_object("queue", {"name": "qt", "retention": True})
        validating_pair(h)
        held: list[int] = []  # leases received and not yet committed or rolled back
        for step in range(250):
            handles = list(h.core.endpoints)
            op = rng.random()
            with contextlib.suppress(ConversationError, LeaseExpired):  # a refused call changes nothing
                if op < 0.2 or not handles:
                    begin(h, to=rng.choice(["target", "later"]), lifetime=rng.choice([None, 3.0, 30.0]))
                elif op < 0.38:
                    ep = h.core.endpoints[rng.choice(handles)]
                    if ep.contract == "C":  # now and then a body that fails validation: the sender is in error
                        h.send(ep.handle, rng.choice([b"{}", b"[1]", b"{not json"]), message_type="J")
                    else:
                        h.send(ep.handle, b"x", b"y")
                elif op < 0.45:
                    h.drain(rng.choice(["qt", "qi"]))
                elif op < 0.5:
                    lease = h.receive(rng.choice(["qt", "qi"]), n=rng.choice([1, 3]))
                    if lease is not None:
                        held.append(lease.id)
                elif op < 0.55 and held:
                    lease_id = held.pop(rng.randrange(len(held)))
                    if rng.random() < 0.5:
                        h.core.commit(lease_id, h.owner)
                    else:
                        h.core.rollback(lease_id, h.owner)
                elif op < 0.65:
                    h.core.end(rng.choice(handles), h.now)
                elif op < 0.7:
                    h.core.end(rng.choice(handles), h.now, error=(7, "no"))
                elif op < 0.73:
                    h.core.end(rng.choice(handles), h.now, cleanup=True)
                elif op < 0.8:
                    h.core.begin_timer(rng.choice(handles), rng.choice([0.0, 2.0]), h.now)
                elif op < 0.9:
                    h.advance(rng.choice([0.5, 2.0, 10.0]))
                elif op < 0.93 and "later" not in h.core.catalog.services:
                    h.service("later", "ql")  # the DELAYED ones are routed and delivered now
                elif op < 0.97:
                    begin(h, contract="C")
                else:
                    h = restarted(h, step)
                    held = []  # a restart ends every lease
            agree(h)  # before the batch is stored: the counts are the core's memory, not the store's
            h.flush()
            agree(h)
            counts = message_counts(h.core)
            seen["transmission"] += counts["transmission"] > 0
            seen["locked"] += any(locked for locked, _ in counts["queues"].values())
            seen["retained"] += any(retained for _, retained in counts["queues"].values())
        assert walked(h.core) == walked(h.restart().core), "what was stored is what was counted"
    assert all(seen[what] > 20 for what in ("transmission", "locked", "retained")), seen
