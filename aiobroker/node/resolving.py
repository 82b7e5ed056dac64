"""Resolver tasks: dynamic routing's questions, asked outside the core, and diagnose.

The core's dispatcher decides when a service's route (or remote service binding) must be asked for, at most one
question per service at a time; the server starts one :meth:`Resolving.run` task per question in its task group.
The task awaits the resolver under ``resolve_timeout`` and hands the answer, or the reason there is none, back to
the core, then calls ``after`` (the server's: store what changed, start what the core asks next). A resolver that
breaks its contract is logged and counted as a failed answer: it never takes the node down.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import anyio

from ..core.broker import BrokerCore
from ..core.catalog import BCN_SERVICE
from ..core.dispatcher import BINDING, ROUTE
from ..core.routing import explain
from ..durations import duration
from ..resolver import NotFound, Resolver, ResolverError
from .counters import Counters

log = logging.getLogger("aiobroker.node")


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

    async def run(self, service: str, kind: str = ROUTE) -> None:
        """Ask the resolver once, and give the core its answer (or why there is none)."""
        timeout = self.timeout
        started = time.monotonic()
        what = "route" if kind == ROUTE else "remote service binding"
        fields = {"service": service, "resolver": self.resolver.name}
        counts = self.counts
        counts.requests += 1
        failure = None
        try:
            with anyio.fail_after(timeout if timeout is not None else math.inf):
                if kind == BINDING:
                    binding = await self.resolver.resolve_binding(service)
                else:
                    answer = await self.resolver.resolve_route(service)
        except NotFound as exc:
            failure = "not_found"
            moved = self.core.resolve_failed(service, f"not found: {exc.message}", self.clock(), exc.retry_after, kind)
            log.info(
                "%s: no %s for service %r (%s)%s", self.resolver.name, what, service, exc.message, _plain(moved),
                extra=fields,
            )
        except ResolverError as exc:
            failure = "error"
            moved = self.core.resolve_failed(service, exc.message, self.clock(), exc.retry_after, kind)
            log.warning(
                "%s could not resolve the %s of service %r: %s%s", self.resolver.name, what, service, exc.message,
                _plain(moved), extra=fields,
            )
        except TimeoutError:
            failure = "timeout"
            text = f"no answer within resolve_timeout ({duration(timeout or math.inf)})"
            log.warning("%s gave no %s for service %r: %s", self.resolver.name, what, service, text, extra=fields)
            self.core.resolve_failed(service, text, self.clock(), None, kind)
        except Exception as exc:  # a resolver that breaks its contract must not take the node down
            failure = "broken"
            log.exception("resolver %s failed on the %s of service %r", self.resolver.name, what, service, extra=fields)
            self.core.resolve_failed(service, f"the resolver failed: {type(exc).__name__}: {exc}", self.clock(), None, kind)
        else:
            counts.answers += 1
            counts.latency.observe(time.monotonic() - started)
            if kind == BINDING:
                moved = self.core.binding_resolved(service, binding, self.clock())
                log.info(
                    "%s gave a remote service binding for %r in %.0f ms; %d delayed message(s) released",
                    self.resolver.name, service, (time.monotonic() - started) * 1000, moved, extra=fields,
                )
                self.after()
                return
            moved = self.core.resolved(service, answer, self.clock())
            log.info(
                "%s resolved service %r in %.0f ms: %s; %d delayed message(s) released",
                self.resolver.name,
                service,
                (time.monotonic() - started) * 1000,
                ", ".join(t.address for t in answer.preferred()),
                moved,
                extra=fields,
            )
        if failure is not None:
            counts.failures[failure] = counts.failures.get(failure, 0) + 1
            counts.latency.observe(time.monotonic() - started)
        self.after()


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
