"""The node's resolver tasks (node/resolving.py): an answer lets the question waiting for the connection it freed
go out before its own release work runs, so the registry answers that question meanwhile (with 1,000 services
waiting on 16 connections, the release of each answer used to hold the next question back)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import pytest

from aiobroker.node.resolving import Resolving
from aiobroker.resolver import Resolver, RouteAnswer, Target

pytestmark = pytest.mark.anyio


class OneConnection(Resolver):
    """A resolver with one connection to its registry: a question waits for the one before it to be answered."""

    name = "one-connection"

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events
        self.connection = anyio.Lock()

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        async with self.connection:
            self.events.append(("asked", service_name))
            await anyio.lowlevel.checkpoint()  # the registry's round trip
        return RouteAnswer(service_name=service_name, targets=(Target(address="tcp://127.0.0.1:4022"),))


class Core:
    """What the resolver tasks call of the core: here, it only records when an answer is settled."""

    def __init__(self, events: list[tuple[str, str]]) -> None:
        self.events = events

    def resolved(self, service: str, answer: Any, now: float) -> int:
        self.events.append(("settled", service))
        return 0


async def test_the_next_question_goes_out_before_an_answers_release_work() -> None:
    events: list[tuple[str, str]] = []
    resolving = Resolving(OneConnection(events), Core(events), lambda: 0.0, None, lambda: None)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        for service in ("a", "b", "c"):
            tg.start_soon(resolving.run, service)
    assert events.index(("asked", "b")) < events.index(("settled", "a")), events
    assert events.index(("asked", "c")) < events.index(("settled", "b")), events
    assert sorted(events) == sorted([(kind, s) for s in "abc" for kind in ("asked", "settled")]), "each once"


class SlowCore(Core):
    """Each answer takes 5 ms of the loop to settle: more than a turn (SETTLE_SLICE_S)."""

    def resolved(self, service: str, answer: Any, now: float) -> int:
        deadline = time.perf_counter() + 0.005
        while time.perf_counter() < deadline:
            pass
        return super().resolved(service, answer, now)


class AllAtOnce(Resolver):
    """Every question answered in the same turn of the loop, as a storm's answers come."""

    name = "all-at-once"

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        await anyio.lowlevel.checkpoint()
        return RouteAnswer(service_name=service_name, targets=(Target(address="tcp://127.0.0.1:4022"),))


async def test_answers_are_settled_in_order_in_turns_with_the_loops_other_work_between() -> None:
    # settling an answer routes what waited for it; ten at once must not hold the loop for all ten
    events: list[tuple[str, str]] = []
    resolving = Resolving(AllAtOnce(), SlowCore(events), lambda: 0.0, None, lambda: None)  # type: ignore[arg-type]
    services = [f"s{i}" for i in range(10)]

    async def other_work() -> None:  # what else the loop runs: a tick each time it gets a turn
        while len([e for e in events if e[0] == "settled"]) < len(services):
            events.append(("tick", ""))
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_work)
        for service in services:
            tg.start_soon(resolving.run, service)
    settled = [i for i, e in enumerate(events) if e[0] == "settled"]
    assert [events[i][1] for i in settled] == services, "in the order the answers came"
    between = [any(e[0] == "tick" for e in events[a + 1 : b]) for a, b in itertools.pairwise(settled)]
    assert all(between), f"the loop's other work ran between every two 5 ms settles: {events}"
