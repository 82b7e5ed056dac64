"""The dispatcher: one request per service to whatever answers "where is it?", however many conversations wait.

Theory of operation
-------------------
When routing reaches step 4 (dynamic routing) for a service, the conversation's messages wait in the
transmission queue, DELAYED (``TransmissionQueue.delayed`` keeps who waits on which service), and the core asks
the dispatcher whether a request for that service should start now. It should when none is in flight and no retry
is scheduled for later: so 10,000 conversations to one unknown service make one request, and a request that never
ends blocks new ones for its service (as in the seeds) unless ``resolve_timeout`` is set.

A request ends with an answer (the core turns it into routes and routes the waiting conversations again: those
that now have a route go, in order; the rest stay DELAYED) or a failure (a negative answer, an error, a time-out).
Either way, if conversations still wait, the next request is due after a retry interval: ``retry_first`` doubling
with each failure in a row up to ``retry_cap``, with +-``jitter`` so that many services do not ask in lock-step.
The source's ``retry_after`` (how long a negative answer holds: a DNS negative TTL, an HTTP ``Retry-After``) is a
lower bound on that interval, never the interval itself: a registry that says "no" for 2 s at a time must not be
asked every 2 s for good.

Pure state: time is passed in; the core keeps the deadlines in its heap and calls :meth:`due`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROUTE, BINDING = "route", "binding"
#: past this many doublings the back-off is at its cap anyway (and 2 ** failures must not overflow a float)
_MAX_DOUBLINGS = 30
Key = tuple[str, str]  #: (kind, service name)


@dataclass(slots=True)
class InFlight:
    kind: str
    service: str
    started_at: float
    via: str  #: "resolver NAME" or "BCN conversation HANDLE"
    handle: str | None = None  #: the BCN conversation's handle, when asked that way
    deadline: float | None = None  #: resolve_timeout
    with_route: bool = False  #: a binding request asked together with the route (one round trip)


@dataclass(slots=True)
class Outcome:
    ok: bool
    text: str  #: the answer or the error, in words
    at: float


class Dispatcher:
    def __init__(
        self,
        *,
        resolve_timeout: float | None = None,
        retry_first: float = 2.0,
        retry_cap: float = 60.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.resolve_timeout = resolve_timeout
        self.retry_first = retry_first
        self.retry_cap = retry_cap
        self.jitter = jitter
        self.rand = rand
        self.in_flight: dict[Key, InFlight] = {}
        self.retry_at: dict[Key, float] = {}
        self.failures: dict[Key, int] = {}
        self.last: dict[Key, Outcome] = {}
        self.requests_made = 0
        #: the same, by kind (a route and a binding asked in one round trip count one each)
        self.made_by_kind: dict[str, int] = {ROUTE: 0, BINDING: 0}
        #: BCN conversation handle → the request it carries
        self.by_handle: dict[str, Key] = {}

    def should_ask(self, kind: str, service: str, now: float) -> bool:
        """Whether a new request for ``service`` should start now (none in flight, no retry pending)."""
        key = (kind, service)
        if key in self.in_flight:
            return False
        when = self.retry_at.get(key)
        return when is None or when <= now

    def started(
        self, kind: str, service: str, now: float, via: str, handle: str | None = None, *, with_route: bool = False
    ) -> InFlight:
        key = (kind, service)
        deadline = now + self.resolve_timeout if self.resolve_timeout is not None else None
        request = InFlight(kind, service, now, via, handle, deadline, with_route)
        self.in_flight[key] = request
        self.retry_at.pop(key, None)
        self.requests_made += 1
        self.made_by_kind[kind] = self.made_by_kind.get(kind, 0) + 1
        if handle is not None:
            self.by_handle[handle] = key
        return request

    def finished(
        self,
        kind: str,
        service: str,
        now: float,
        *,
        ok: bool,
        text: str,
        retry_after: float | None = None,
        exact: float | None = None,
    ) -> float | None:
        """A request ended. Returns when the next one may be made (None: no wait)."""
        key = (kind, service)
        request = self.in_flight.pop(key, None)
        if request is not None and request.handle is not None:
            self.by_handle.pop(request.handle, None)
        self.last[key] = Outcome(ok, text, now)
        if ok:
            self.failures.pop(key, None)
            self.retry_at.pop(key, None)
            return None
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        if exact is not None:
            # remembered for exactly this long (a failed binding request: the seeds' 10 minutes)
            when = self.retry_at[key] = now + exact
            return when
        when = self.retry_at[key] = now + self.retry_delay(failures, retry_after)
        return when

    def retry_delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait after ``failures`` failures in a row: the back-off, jittered; never shorter than
        ``retry_after``, how long the source said its answer holds (then a little longer, jittered upwards)."""
        r = self.rand()
        backoff = min(self.retry_cap, self.retry_first * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
        delay = backoff * (1 + self.jitter * (2 * r - 1))
        if retry_after is not None and delay < retry_after:
            delay = float(retry_after) * (1 + self.jitter * r)
        return delay

    def still_no_route(self, kind: str, service: str, now: float, text: str, exact: float | None = None) -> float:
        """The request ended with an answer, but some waiting conversations still have no route: treat as a
        failure for the retry schedule (the seeds: "after a time-out period ... requests again")."""
        when = self.finished(kind, service, now, ok=False, text=text, exact=exact)
        assert when is not None
        return when

    def withdraw(self, kind: str, service: str) -> bool:
        """The request in flight ended without an outcome (asked together with the route, it went unanswered: the
        source answers routes only, or the route question failed first): forget it as if it had not been made, so
        that :meth:`should_ask` says yes when it is wanted again. False if none was in flight."""
        request = self.in_flight.pop((kind, service), None)
        if request is None:
            return False
        if request.handle is not None:
            self.by_handle.pop(request.handle, None)
        return True

    def hurry(self, kind: str, service: str) -> bool:
        """An operator asks for the next request now rather than at its retry time (the console's "ask again"):
        drop the scheduled retry, so that :meth:`should_ask` says yes; routing the service's waiting conversations
        again then makes the request. The failures in a row are kept: if this request fails too, the back-off goes
        on growing from where it was. False when there is nothing to hurry: a request is in flight (its answer is
        awaited), or none is scheduled. The retry's deadline left in the core's heap is found stale when it comes."""
        key = (kind, service)
        if key in self.in_flight:
            return False
        return self.retry_at.pop(key, None) is not None

    def timed_out(self, now: float) -> list[InFlight]:
        """Requests past their ``resolve_timeout``."""
        return [r for r in self.in_flight.values() if r.deadline is not None and r.deadline <= now]

    def forget(self, kind: str, service: str) -> None:
        """Nobody waits on the service any more: drop its retry schedule (its last outcome stays for status)."""
        key = (kind, service)
        self.retry_at.pop(key, None)
        self.failures.pop(key, None)

    def last_error(self, kind: str, service: str) -> str | None:
        outcome = self.last.get((kind, service))
        return outcome.text if outcome is not None and not outcome.ok else None

    def next_retry_in(self, kind: str, service: str, now: float) -> float | None:
        """Seconds from ``now`` to the next request (None: none scheduled), rounded as ``describe`` shows them, so
        that every place that shows the wait at one ``now`` shows the same figure."""
        when = self.retry_at.get((kind, service))
        return None if when is None else round(when - now, 3)

    def describe(self, kind: str, service: str, now: float) -> dict[str, Any]:
        """The request's state at ``now``: ages and waits relative to it, and the same instants as wall-clock
        times (``started_at``, ``at``, ``next_retry_at``) for a script that computes against its own clock."""
        key = (kind, service)
        request = self.in_flight.get(key)
        outcome = self.last.get(key)
        return {
            "in_flight": (
                {"via": request.via, "started_at": request.started_at, "age_seconds": round(now - request.started_at, 3)}
                if request is not None
                else None
            ),
            "last": (
                {"ok": outcome.ok, "text": outcome.text, "at": outcome.at, "age_seconds": round(now - outcome.at, 3)}
                if outcome is not None
                else None
            ),
            "next_retry_at": self.retry_at.get(key),
            "next_retry_in": self.next_retry_in(kind, service, now),
            "failures": self.failures.get(key, 0),
        }

    def statistics(self) -> dict[str, Any]:
        return {
            "requests_made": self.requests_made,
            "requests_by_kind": dict(self.made_by_kind),
            "in_flight": len(self.in_flight),
            "retries_scheduled": len(self.retry_at),
        }

    def __repr__(self) -> str:
        return f"<Dispatcher in_flight={len(self.in_flight)} retries={len(self.retry_at)} made={self.requests_made}>"
