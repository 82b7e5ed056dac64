"""Reads of the core's state that its public methods do not give: the one module of the monitor that touches the
core's attributes (queues, the transmission queue, the dispatcher, the endpoints), so that a change inside the
core is adapted here and nowhere else.

Every function here runs when a scraper or a reader asks, never on the hot path, and none walks every
conversation except :func:`conversation_page`, which stops when its page is full.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...core.broker import BrokerCore
from ...core.conversation import Endpoint
from ...core.dispatcher import BINDING, ROUTE
from ...core.records import ROW_ENQUEUED_AT
from ...errors import InvalidArgument

#: services named one by one in the DELAYED metrics; the rest are added up under service="(others)", so that a
#: storm of unknown service names cannot make the scrape (and Prometheus' series) grow without bound
MAX_LABELLED_SERVICES = 200
OTHERS = "(others)"
#: a conversation page's size when none is asked for, and the most one may have
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


# ------------------------------------------------------------------------------------------------------ queues


@dataclass(frozen=True, slots=True)
class QueueReading:
    name: str
    enabled: bool
    waiting: int  #: messages not handed out
    locked: int  #: messages handed out under a lease
    oldest_age: float  #: seconds the oldest waiting message has waited (0 when none waits)
    statistics: dict[str, Any]  #: the queue as ``status`` shows it


def queues(core: BrokerCore, now: float) -> list[QueueReading]:
    """Each queue's depth and how long its oldest message has waited. Groups are kept in arrival order, so the
    first group with waiting messages holds the oldest: the walk stops there (the groups ahead of it are ones
    whose messages are all handed out, at most one per receiver)."""
    out = []
    for queue in core.queues.values():
        oldest = 0.0
        if queue.waiting:
            for group in queue.groups.values():
                first = [rows[0][ROW_ENQUEUED_AT] for rows in (group.urgent, group.normal) if rows]
                if first and group.lease is None:
                    oldest = max(0.0, now - min(first))
                    break
        out.append(
            QueueReading(queue.name, queue.definition.status, queue.waiting, queue.locked, oldest, queue.statistics())
        )
    return out


# ------------------------------------------------------------------------------------------- dynamic routing


def delay_kind(core: BrokerCore, service: str) -> str:
    """Why a service's DELAYED messages wait, as one word of a small set (a label, unlike the reason's words):
    ``resolving`` (a question is in flight), ``retry_wait`` (the last one failed; the node asks again later),
    ``binding`` (the route is known, the remote service binding is not) or ``no_route`` (nothing to ask)."""
    dispatcher = core.dispatcher
    handles = core.tx.delayed.get(service, {})
    keys = ((ROUTE, service), (BINDING, service))  # the dispatcher's keys: a lookup each, no walk
    if any(key in dispatcher.in_flight for key in keys):
        return "resolving"
    if any(key in dispatcher.retry_at for key in keys):
        return "retry_wait"
    if any(h in core.dynamic.binding_waiters for h in itertools.islice(handles, 1)):
        return "binding"
    return "no_route"


def delayed(core: BrokerCore) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(service, kind): (messages, conversations)}`` for every service with DELAYED conversations, the
    services past :data:`MAX_LABELLED_SERVICES` (by most messages) added up under :data:`OTHERS`."""
    tx = core.tx
    services = sorted(tx.delayed, key=lambda s: -tx.delayed_count.get(s, 0))
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for i, service in enumerate(services):
        kind = delay_kind(core, service)
        key = (service, kind) if i < MAX_LABELLED_SERVICES else (OTHERS, kind)
        messages, conversations = out.get(key, (0, 0))
        out[key] = (messages + tx.delayed_count.get(service, 0), conversations + len(tx.delayed[service]))
    return out


def resolver_words(core: BrokerCore) -> str | None:
    """Whom dynamic routing asks: the resolver's name, the BCN service, or None (no dynamic routing)."""
    return core.resolver_name or ("BCN service" if core.dynamic_routing else None)


def leases_held(core: BrokerCore) -> int:
    return len(core.leases)


def requests_in_flight(core: BrokerCore) -> int:
    return len(core.dispatcher.in_flight)


def resolving(core: BrokerCore, now: float) -> list[dict[str, Any]]:
    """The questions dynamic routing has in flight, oldest first: what is asked, of whom, since when."""
    requests = sorted(core.dispatcher.in_flight.values(), key=lambda r: r.started_at)
    return [
        {
            "kind": r.kind,
            "service": r.service,
            "via": r.via,
            "started_at": r.started_at,
            "age_seconds": round(now - r.started_at, 3),
            "deadline": r.deadline,
            "waiting_conversations": len(core.tx.delayed.get(r.service, {})) if r.kind != BINDING else None,
        }
        for r in requests
    ]


# -------------------------------------------------------------------------------------------------------- links


@dataclass(frozen=True, slots=True)
class LinkReading:
    address: str
    state: str  #: connected, idle, retrying or not_tried
    attempts: int  #: failed attempts in a row (reset when it connects)
    in_flight: int  #: messages sent on its connection, not yet acknowledged


def links(core: BrokerCore) -> list[LinkReading]:
    """Each link's state, read without walking its conversations (for ``/metrics``)."""
    out = []
    for link in core.tx.links.values():
        if link.connected:
            state = "connected"
        elif link.idle:
            state = "idle"
        elif link.last_error:
            state = "retrying"
        else:
            state = "not_tried"
        out.append(LinkReading(link.address, state, link.attempts, sum(link.sent.values())))
    return out


def link_details(core: BrokerCore) -> list[dict[str, Any]]:
    """Each link as ``status`` shows it, with its state as a word too (for ``/api/links``). Walks each link's
    conversations for its unacknowledged messages, as ``status`` does."""
    tx = core.tx
    return [
        {**link.describe(tx), "state_kind": reading.state, "attempts": reading.attempts,
         "in_flight": reading.in_flight}
        for link, reading in zip(tx.links.values(), links(core), strict=True)
    ]


def conversations_by_state(core: BrokerCore) -> dict[str, int]:
    """Endpoints per state name (``conversing``), from the count the core keeps (no walk)."""
    return {state.name.lower(): n for state, n in core.conversations.state_counts.items()}


def transmission_length(core: BrokerCore) -> tuple[int, int]:
    """Messages in the transmission queue, and the conversations they belong to."""
    return core.tx.message_count, len(core.tx.rows)


# ------------------------------------------------------------------------------------------------ conversations


@dataclass(frozen=True, slots=True)
class Filters:
    service: str | None = None  #: the conversation's own service or its far service
    state: str | None = None  #: a state's code (CO) or name (conversing), any case
    delayed: bool | None = None  #: only DELAYED ones (True), or only those that are not (False)

    def matches(self, ep: Endpoint) -> bool:
        if self.service is not None and self.service not in (ep.service, ep.far_service):
            return False
        if self.state is not None:
            wanted = self.state.upper()
            if wanted not in (ep.state.value, ep.state.name):
                return False
        if self.delayed is not None and (ep.delayed is not None) != self.delayed:
            return False
        return True


def describe(core: BrokerCore, ep: Endpoint, now: float) -> dict[str, Any]:
    """A conversation as the wire's ``get_conversation`` shows it, the wait in words from ``now``."""
    described = ep.describe()
    if ep.delayed is not None:
        described["delayed"] = core.delayed_words(ep, now)
    return described


def conversation_page(
    core: BrokerCore, filters: Filters, after: str | None, limit: int, now: float
) -> dict[str, Any]:
    """One page of conversations in the node's order (the order they joined it), from after the cursor ``after``.

    The cursor is ``"<position>.<handle>"`` of the last conversation of the previous page. Finding where to go on
    costs one C-level pass over the handles (about a millisecond for 100,000), not a walk in Python: the position
    is tried first, then the handle is looked for, and if it has ended meanwhile, the page goes on from its old
    position. Conversations that begin or end while a reader pages may so be skipped or shown twice, as with any
    cursor over a live set; none that stays is ever missed.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"limit must be from 1 to {MAX_PAGE_SIZE}; got {limit}")
    handles = list(core.endpoints)
    start = 0
    if after:
        position_text, dot, handle = after.partition(".")
        if not dot or not position_text.isdigit():
            raise InvalidArgument(
                f"after {after!r} is not a cursor; give the 'next' value of the previous page, or leave it out"
            )
        position = int(position_text)
        if position < len(handles) and handles[position] == handle:
            start = position + 1
        else:
            try:
                start = handles.index(handle) + 1
            except ValueError:
                start = min(position, len(handles))
    page: list[dict[str, Any]] = []
    endpoints = core.endpoints
    # DELAYED ones are few and indexed per service: a set lookup per handle passes over the rest without reading
    # their endpoints (a filter that reads every endpoint costs tens of milliseconds at 100,000)
    rest = handles[start:]
    candidates: Iterable[str] = rest
    if filters.delayed is True:
        candidates = filter(set().union(*core.tx.delayed.values()).__contains__, rest)
    last_handle = None
    for handle in candidates:
        ep = endpoints[handle]
        if filters.matches(ep):
            page.append(describe(core, ep, now))
            last_handle = handle
            if len(page) >= limit:
                break
    last = start + rest.index(last_handle) if last_handle is not None else -1
    more = last >= 0 and len(page) >= limit and last + 1 < len(handles)
    return {
        "conversations": page,
        "next": f"{last}.{handles[last]}" if more else None,
        "total": len(handles),
    }

