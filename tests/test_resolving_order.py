"""The node's resolver tasks (node/resolving.py): an answer lets the question waiting for the connection it freed
go out before its own release work runs, so the registry answers that question meanwhile (with 1,000 services
waiting on 16 connections, the release of each answer used to hold the next question back)."""

from __future__ import annotations

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
