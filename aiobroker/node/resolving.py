"""Resolver tasks: dynamic routing's questions, asked outside the core, and diagnose.

The core's dispatcher decides when a service's route (or remote service binding) must be asked for, at most one
question per service at a time; the server starts one :meth:`Resolving.run` task per question in its task group.
The task awaits the resolver under ``resolve_timeout`` and hands the answer, or the reason there is none, back to
the core, then calls ``after`` (the server's: store what changed, start what the core asks next). A resolver that
breaks its contract is logged and counted as a failed answer: it never takes the node down.

Answers are settled in turns of at most SETTLE_SLICE_S, in the order they came, the loop's I/O between turns:
settling an answer routes every conversation that waited for it (100s, or 100,000s), so settling each as it came
let a storm's releases hold the loop, and with it the next answers, the acknowledgements and the clients.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

from ..core.broker import BrokerCore
from ..core.catalog import BCN_SERVICE
from ..core.dispatcher import BINDING, ROUTE
from ..core.routing import explain
from ..durations import duration
from ..resolver import NotFound, Resolver, ResolverError
from .counters import Counters

log = logging.getLogger("aiobroker.node")

#: stands for "no answer within resolve_timeout" among a question's outcomes
_TIMED_OUT = object()
#: the longest turn of settling answers before the loop's I/O runs again (the turn's last answer may take longer:
#: an answer is settled whole). Measured, the storm on SQLite (64 open, alternating): 1 ms took 2,300-2,400
#: answers/s with the last message 1.16-1.24 s after the gate, 2 ms 1,570-1,900 answers/s and 1.29-1.54 s.
SETTLE_SLICE_S = 0.001


class Resolving:
    """Runs the questions of one node's resolver."""

    def __init__(
        self,
        resolver: Resolver,
        core: BrokerCore,
        clock: Callable[[], float],
        timeout: float | None,
        after: Callable[[], None],
        counters: Counters | None = None,
    ) -> None:
        self.resolver = resolver
        self.core = core
        self.clock = clock
        self.timeout = timeout
        self.after = after
        #: this resolver's questions, answers, failures and latency, for ``/metrics``
        self.counts = (counters or Counters()).resolver(resolver.name)
        #: answers not settled yet, in the order they came: (service, kinds, results, seconds the question took)
        self._answers: deque[tuple[str, tuple[str, ...], dict[str, Any], float]] = deque()
        self._settling = False  #: whether a question's task is settling the answers (see _settle_all)

    async def run(self, service: str, kind: str = ROUTE, binding_too: bool = False) -> None:
        """Ask the resolver once, and give the core its answer (or why there is none). ``binding_too``: a route
        question that carries the binding question as well (``Resolver.resolve_together``): one call, and each
        answer handed to the core in turn, the binding's first, so that the choice table sees it when the route's
        answer routes the waiting conversations."""
        timeout = self.timeout
        started = time.monotonic()
        kinds = (BINDING, ROUTE) if binding_too else (kind,)
        self.counts.requests += len(kinds)
        results: dict[str, Any]
        try:
            with anyio.fail_after(timeout if timeout is not None else math.inf):
                if binding_too:
                    answers = await self.resolver.resolve_together(service)
                    results = {ROUTE: answers.route, BINDING: answers.binding}
                elif kind == BINDING:
                    results = {BINDING: await self.resolver.resolve_binding(service)}
                else:
                    results = {ROUTE: await self.resolver.resolve_route(service)}
        except TimeoutError:
            # the binding asked with the route is left unanswered, not failed: a failed binding question is
            # remembered for binding_failure_cache (10 minutes), and a slow registry said nothing about it
            results = {ROUTE: _TIMED_OUT, BINDING: None} if binding_too else {kind: _TIMED_OUT}
        except Exception as exc:  # a resolver that breaks its contract must not take the node down
            results = {ROUTE: exc, BINDING: None} if binding_too else {kind: exc}
        self._answers.append((service, kinds, results, time.monotonic() - started))
        if not self._settling:
            await self._settle_all()

    async def _settle_all(self) -> None:
        """Settle the answers waiting, in turns of SETTLE_SLICE_S, until none waits; the question's task that finds
        nobody settling does it, the others leave their answer to it. Between turns, the loop runs what is ready:
        the questions waiting for a connection an answer freed go out, and the registry answers them meanwhile.
        Shielded: an answer in hand is always settled, or the dispatcher would wait for it for ever."""
        self._settling = True
        try:
            with anyio.CancelScope(shield=True):
                answers = self._answers
                while answers:
                    await anyio.lowlevel.checkpoint()
                    turn_ends = time.perf_counter() + SETTLE_SLICE_S
                    while answers and time.perf_counter() < turn_ends:
                        service, kinds, results, took = answers.popleft()
                        for asked in kinds:
                            self._settle(service, asked, results[asked], took)
                    self.after()
        finally:
            self._settling = False

    def _settle(self, service: str, kind: str, result: Any, took: float) -> None:
        """One question's outcome to the core, the log and the counters."""
        what = "route" if kind == ROUTE else "remote service binding"
        fields = {"service": service, "resolver": self.resolver.name}
        counts = self.counts
        failure = None
        if result is None:  # asked with the route, not answered by its round trip: asked on its own later
            self.core.binding_unanswered(service, self.clock())
            log.debug("%s did not answer the binding of %r with its route; it is asked on its own once the route is"
                      " known", self.resolver.name, service, extra=fields)
            return
        if isinstance(result, NotFound):
            failure = "not_found"
            moved = self.core.resolve_failed(service, f"not found: {result.message}", self.clock(), result.retry_after,
                                             kind)
            log.info(
                "%s: no %s for service %r (%s)%s", self.resolver.name, what, service, result.message, _plain(moved),
                extra=fields,
            )
        elif isinstance(result, ResolverError):
            failure = "error"
            moved = self.core.resolve_failed(service, result.message, self.clock(), result.retry_after, kind)
            log.warning(
                "%s could not resolve the %s of service %r: %s%s", self.resolver.name, what, service, result.message,
                _plain(moved), extra=fields,
            )
        elif result is _TIMED_OUT:
            failure = "timeout"
            text = f"no answer within resolve_timeout ({duration(self.timeout or math.inf)})"
            log.warning("%s gave no %s for service %r: %s", self.resolver.name, what, service, text, extra=fields)
            self.core.resolve_failed(service, text, self.clock(), None, kind)
        elif isinstance(result, BaseException):  # a resolver that breaks its contract must not take the node down
            failure = "broken"
            log.error("resolver %s failed on the %s of service %r", self.resolver.name, what, service, extra=fields,
                      exc_info=result)
            self.core.resolve_failed(service, f"the resolver failed: {type(result).__name__}: {result}", self.clock(),
                                     None, kind)
        elif kind == BINDING:
            counts.answers += 1
            counts.latency.observe(took)
            moved = self.core.binding_resolved(service, result, self.clock())
            log.info(
                "%s gave a remote service binding for %r in %.0f ms; %d delayed message(s) released",
                self.resolver.name, service, took * 1000, moved, extra=fields,
            )
        else:
            counts.answers += 1
            counts.latency.observe(took)
            moved = self.core.resolved(service, result, self.clock())
            log.info(
                "%s resolved service %r in %.0f ms: %s; %d delayed message(s) released",
                self.resolver.name,
                service,
                took * 1000,
                ", ".join(t.address for t in result.preferred()),
                moved,
                extra=fields,
            )
        if failure is not None:
            counts.failures[failure] = counts.failures.get(failure, 0) + 1
            counts.latency.observe(took)


def diagnose(
    core: BrokerCore, resolver: Resolver | None, service: str, broker_instance: str | None, now: float
) -> dict[str, Any]:
    """Why messages to a service go where they go, or wait: the routing steps in words, and dynamic routing."""
    asks = resolver.asks(service) if resolver is not None else core.asks  # what is really asked
    lines, decision = explain(
        core.catalog.routes.values(),
        service=service,
        broker_instance=broker_instance,
        now=now,
        local_services=core.catalog.services,
        local_instance=core.broker_instance,
        dynamic=core.resolver_name is not None or BCN_SERVICE in core.catalog.services,
        asks=asks,
    )
    handles = core.tx.delayed.get(service, {})
    return {
        "service": service,
        "steps": lines,
        "decision": decision.kind,  # local, remote, resolve or delayed (nothing applies)
        "routes": [r.to_def() for r in core.catalog.routes.values() if r.service_name in (service, None)],
        "local": service in core.catalog.services,
        "dynamic_routing": core.dynamic_routing,
        "resolver": core.resolver_name or ("BCN service" if core.dynamic_routing else None),
        "asks": asks if core.dynamic_routing else None,
        "delayed_conversations": len(handles),
        "delayed_messages": core.tx.delayed_count.get(service, 0),
        "delayed_reason": next((core.delayed_words(core.endpoints[h], now) for h in handles if h in core.endpoints), None),
        "request": core.dispatcher.describe(ROUTE, service, now),
    }


def _plain(moved: int) -> str:
    """For the log after a failed binding request: the conversations that do not require encryption go on."""
    return f"; {moved} delayed message(s) go on unsecured" if moved else ""
