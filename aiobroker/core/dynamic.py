"""Dynamic routing in the core: asking where a service is, and what to do with the answer (the seeds' heart).

Theory of operation
-------------------
Routing step 4 (``routing.choose``) says "ask": the conversation waits DELAYED in the transmission queue and
:meth:`DynamicRouting.ask` lets the dispatcher decide whether a request goes out now (one per service in flight).

- With a resolver configured (DNS SRV, static file, HTTP, a chain), the request is a ``ResolveRequest`` in the
  core's outbox (``effects.py``) that the shell drains: it calls the resolver and hands back :meth:`resolved` or
  :meth:`resolve_failed`.
- Otherwise the node asks the Broker Configuration Notice service as the seeds do: it begins a real conversation
  from its own service ``aiobroker/DynamicRouting`` to ``SQL/ServiceBroker/BrokerConfiguration`` and sends
  ``MissingRoute`` with the seeds' XML. The BCN application creates a route and ends the conversation (success),
  or ends it with an error (failure); either arrives at ``aiobroker/DynamicRouting`` and is consumed here.

When a request ends, every conversation waiting on the service is routed again: those that now have a route go
at once, in order; those that still have none stay DELAYED and the node asks again after the retry interval.
Routes made from a resolver's answer live as long as the answer said; while the service has traffic, the node asks
again shortly before they expire, so a live service is never DELAYED by expiry.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from ..durations import duration, until
from .catalog import (
    BCN_CONTRACT,
    BCN_CONTRACT_HTTPS,
    BCN_MESSAGE_TYPES,
    BCN_SERVICE,
    DISPATCHER_SERVICE,
    END_DIALOG,
    ERROR,
)
from .conversation import Endpoint, State
from .conversations import Conversations
from .deadlines import DeadlineKind
from .dialog_errors import parse_error_body
from .dispatcher import BINDING, ROUTE, Dispatcher
from .effects import Report, ResolveRequest
from .ledger import Ledger
from .parts import DeliveryPart, EndingsPart, OutboundPart, SecurityPart
from .routing import ASKS_BCN, Route

if TYPE_CHECKING:
    from aiobroker.resolver import RouteAnswer

#: ask again this long before a resolver's routes expire (at least this many seconds, or this share of the
#: lifetime), while the service has traffic
REFRESH_AHEAD_SHARE = 0.1
REFRESH_AHEAD_MIN = 1.0
#: how long a failed MissingRemoteServiceBinding request is remembered (the seeds: 10 minutes)
DEFAULT_BINDING_FAILURE_CACHE = 600.0


def missing_route_body(service: str, namespace: str = BCN_CONTRACT + "/MissingRoute") -> bytes:
    """The seeds' request, named by its message type's last part (``MissingRoute`` or
    ``MissingRemoteServiceBinding``): ``<MissingRoute xmlns="…/MissingRoute"><SERVICE_NAME>name</SERVICE_NAME>
    </MissingRoute>``."""
    element = namespace.rsplit("/", 1)[1]
    return f'<{element} xmlns="{namespace}"><SERVICE_NAME>{escape(service)}</SERVICE_NAME></{element}>'.encode()


class DynamicRouting:
    """Asking where a service is, and what the answers do (see the module's header)."""

    outbound: OutboundPart
    delivery: DeliveryPart
    endings: EndingsPart
    security: SecurityPart

    def __init__(
        self,
        ledger: Ledger,
        conversations: Conversations,
        *,
        resolver_name: str | None = None,
        resolve_timeout: float | None = None,
        binding_failure_cache: float = DEFAULT_BINDING_FAILURE_CACHE,
    ) -> None:
        self.ledger = ledger
        self.conversations = conversations
        #: the resolver asked (None: the BCN service, if there is one)
        self.resolver_name = resolver_name
        #: how long a failed MissingRemoteServiceBinding request is remembered
        self.binding_failure_cache = binding_failure_cache
        self.dispatcher = Dispatcher(resolve_timeout=resolve_timeout)
        #: handles of conversations DELAYED for a binding (their route known); the rest of ``tx.delayed`` wait for
        #: a route
        self.binding_waiters: set[str] = set()
        #: services that sent through a resolver's route since it was made (refreshed ahead of expiry if so)
        self.route_traffic: set[str] = set()
        #: (kind, service) → (the request's state, the reason in words): one string shared by every waiter
        self._reasons: dict[tuple[str, str], tuple[Any, str]] = {}

    # ----------------------------------------------------------------------------------------------- asking

    @property
    def dynamic_routing(self) -> bool:
        """Step 4 applies: a resolver is configured, the BCN service is here, or a route names it."""
        return (
            self.resolver_name is not None
            or BCN_SERVICE in self.ledger.catalog.services
            or any(r.service_name == BCN_SERVICE for r in self.ledger.catalog.routes_for(BCN_SERVICE))
        )

    def ask(self, kind: str, service: str, now: float, *, binding_too: bool = False) -> str:
        """A conversation waits on ``service``: make the request if none is in flight or pending. Returns the
        reason the conversation waits, in words.

        ``binding_too`` (a route request for a conversation whose dialog security is not decided yet): when the
        service will need a binding request as well (``DialogSecurity.binding_wanted``), both are made now, so the
        service waits for the slower of the two answers, not for one after the other: a resolver is asked both
        questions in one call (``ResolveRequest.binding_too``, ``Resolver.resolve_together``); the BCN service gets
        its two messages (``MissingRoute``, ``MissingRemoteServiceBinding``) at once, one conversation each."""
        d = self.dispatcher
        if d.should_ask(kind, service, now):
            both = binding_too and kind == ROUTE and self.security.binding_wanted(service, now)
            if self.resolver_name is not None:
                d.started(kind, service, now, via=f"resolver {self.resolver_name}")
                if both:
                    d.started(BINDING, service, now, via=f"resolver {self.resolver_name} (with the route)",
                              with_route=True)
                self.ledger.outbox.append(ResolveRequest(kind, service, binding_too=both))
            else:
                self._ask_bcn(kind, service, now)
                if both:
                    self._ask_bcn(BINDING, service, now, with_route=True)
            for asked in (kind, BINDING) if both else (kind,):
                request = d.in_flight.get((asked, service))
                if request is not None and request.deadline is not None:
                    self._schedule_request(request.deadline, asked, service)
        return self.waiting_reason(kind, service, now)

    def waiting_reason(self, kind: str, service: str, now: float) -> str:
        """Why conversations to ``service`` wait, in words, as stored in each one's ``ep.delayed``: the request in
        flight, or the last failure. Nothing here depends on ``now``: when the node asks again is added where the
        reason is shown (:meth:`delayed_words`), so a reason never says "in 3s" beside a "1.9s" for the same wait."""
        d = self.dispatcher
        request = d.in_flight.get((kind, service))
        state = (request.via if request is not None else None, d.last_error(kind, service))
        cached = self._reasons.get((kind, service))
        if cached is not None and cached[0] == state:
            return cached[1]  # the same string object for every waiting conversation: a storm holds 100,000
        via, last = state
        waiting = "waiting for dynamic routing" if kind == ROUTE else "waiting for a remote service binding"
        if via is not None:
            text = f"{waiting}: asked the {via}"
        else:
            text = f"{waiting}: the last request failed ({last})" if last else waiting
        self._reasons[(kind, service)] = (state, text)
        return text

    def delayed_words(self, ep: Endpoint, now: float) -> str | None:
        """Why ``ep``'s messages wait, as shown at ``now``: its stored reason, and, when it waits on a request that
        is not in flight, when the node asks again (``asks again in 1.9s``), computed here from the scheduled
        instant. Every place that shows a wait (status, diagnose, a conversation, an error) shows it through this."""
        reason = ep.delayed
        if reason is None:
            return None
        kind = BINDING if ep.handle in self.binding_waiters else ROUTE
        cached = self._reasons.get((kind, ep.far_service))
        if cached is None or cached[1] != reason:
            return reason  # routing's own reason (no route, no dynamic routing), not a request's
        via, last = cached[0]
        if via is not None:
            return reason  # asked, not yet answered: there is no next time yet
        left = self.dispatcher.next_retry_in(kind, ep.far_service, now)
        return reason + ("; " if last else ": ") + ("asks again soon" if left is None else f"asks again {until(left)}")

    @property
    def asks(self) -> str:
        """Whom dynamic routing asks, in words (the shell may say more: what a resolver asks for one service)."""
        if self.resolver_name is not None:
            return f"the {self.resolver_name} resolver"
        return ASKS_BCN

    def waiting_on(self, kind: str, service: str) -> bool:
        """Whether any conversation to ``service`` waits for this kind of request (for a route, or, its route
        known, for a binding: ``binding_waiters``)."""
        waiters = self.binding_waiters
        handles = self.ledger.tx.delayed.get(service, ())
        if kind == BINDING:
            return bool(waiters) and any(h in waiters for h in handles)
        return any(h not in waiters for h in handles)

    def _refresh_reasons(self, kind: str, service: str, now: float) -> None:
        reason = self.waiting_reason(kind, service, now)
        waiters = self.binding_waiters
        if kind == BINDING and not waiters:
            return  # none waits for a binding: no walk over the conversations that wait for their route
        for handle in self.ledger.tx.delayed.get(service, ()):
            if (handle in waiters) != (kind == BINDING):
                continue  # waits for the other kind of request
            ep = self.ledger.endpoints.get(handle)
            if ep is not None:
                ep.delayed = reason  # not stored (100,000 records for one new reason): loading finds it afresh

    def _ask_bcn(self, kind: str, service: str, now: float, *, with_route: bool = False) -> None:
        contract = BCN_CONTRACT
        bcn = self.ledger.catalog.services.get(BCN_SERVICE)
        if bcn is not None and BCN_CONTRACT not in bcn.contracts and BCN_CONTRACT_HTTPS in bcn.contracts:
            contract = BCN_CONTRACT_HTTPS  # a local BCN service declared with the seeds' other spelling
        message_type = BCN_MESSAGE_TYPES[contract][0 if kind == ROUTE else 1]
        ep = self.conversations.begin_dialog(from_service=DISPATCHER_SERVICE, to_service=BCN_SERVICE, contract=contract, now=now)
        self.dispatcher.started(kind, service, now, via=f"Broker Configuration Notice service (conversation {ep.handle})",
                                handle=ep.handle, with_route=with_route)
        self.delivery.send(ep.handle, [[message_type, missing_route_body(service, message_type)]], now)

    def bcn_reply(self, ep: Endpoint, message_type: str, body: bytes, now: float) -> None:
        """Something arrived for ``aiobroker/DynamicRouting``: the BCN service ended a request (or the broker
        ended it: a lifetime, an unreachable contract). Consumed here, never queued."""
        key = self.dispatcher.by_handle.get(ep.handle)
        if message_type == END_DIALOG:
            ok, text = True, "the Broker Configuration Notice service ended the request"
        elif message_type == ERROR:
            code, description = parse_error_body(body)
            ok, text = False, f"the Broker Configuration Notice service ended the request with error {code}: {description}"
        else:
            self.ledger.outbox.append(Report(f"unexpected {message_type!r} from the Broker Configuration Notice service; ignored"))
            return
        if ep.state is not State.CLOSED:
            self.endings.end(ep.handle, now)
        if key is not None:
            self.request_done(key[0], key[1], now, ok=ok, text=text)

    def request_side_removed(self, handle: str, now: float) -> None:
        """The far side of ``handle`` was removed without a word (``end --cleanup``, on this node). If ``handle``
        is one of the node's own requests, the BCN service can no longer answer it: the request has failed, and
        what waits on it is asked for again after the retry interval, instead of waiting on it for good."""
        key = self.dispatcher.by_handle.get(handle)
        if key is None:
            return
        if handle in self.ledger.endpoints:
            self.endings.end(handle, now, cleanup=True)
        self.request_done(
            key[0], key[1], now, ok=False,
            text="the Broker Configuration Notice service's side of the request was removed (end --cleanup)"
            " before it answered",
        )

    def ask_again(self, service: str, now: float) -> tuple[list[str], int]:
        """An operator asks for the next request about ``service`` now rather than at its retry time (the
        console's "ask again"): the dispatcher forgets the scheduled retries (``Dispatcher.hurry``; the back-off
        is kept) and the service's DELAYED conversations are routed again, which asks where no request is in
        flight, as the retry would have. Returns the kinds of request hurried and how many messages moved on."""
        hurried = [kind for kind in (ROUTE, BINDING) if self.dispatcher.hurry(kind, service)]
        return hurried, self.outbound.reroute(now, {service})

    # -------------------------------------------------------------------------------------------- answers

    def resolved(self, service: str, answer: RouteAnswer, now: float) -> int:
        """A resolver's answer: replace its routes for the service, then release what waits. Returns how many
        messages moved on."""
        origin = self.resolver_name or "resolver"
        digest = hashlib.sha1(service.encode()).hexdigest()[:12]
        for old in [r for r in self.ledger.catalog.routes_for(service) if r.origin == origin and r.service_name == service]:
            self.ledger.catalog.remove_route(old.name)
            self.ledger.save_object("route", None, old.name)
        expires_at = now + answer.lifetime
        for i, target in enumerate(answer.preferred()):
            route = Route(
                name=f"{origin}/{digest}/{i}",
                address=target.address,
                service_name=service,
                broker_instance=target.broker_instance,
                expires_at=expires_at,
                weight=target.weight,
                origin=origin,
            )
            self.ledger.catalog.put_route(route)
            self.ledger.save_object("route", route, route.name)
        refresh_at = expires_at - max(REFRESH_AHEAD_MIN, REFRESH_AHEAD_SHARE * answer.lifetime)
        self.ledger.deadlines.push(max(now, refresh_at), DeadlineKind.REFRESH, service)
        source = f" from {answer.source}" if answer.source else ""
        text = f"{len(answer.preferred())} target(s){source}, valid for {duration(answer.lifetime)}"
        moved = self.request_done(ROUTE, service, now, ok=True, text=text)
        self.route_traffic.discard(service)  # traffic counts from the answer on, not the release it caused
        return moved

    def resolve_failed(
        self, service: str, text: str, now: float, retry_after: float | None = None, kind: str = ROUTE
    ) -> int:
        """A request failed. Returns how many messages moved on all the same (a failed binding request lets
        conversations that do not require encryption go on unsecured)."""
        return self.request_done(kind, service, now, ok=False, text=text, retry_after=retry_after)

    def binding_unanswered(self, service: str, now: float) -> int:
        """The binding request asked with the route went unanswered (``Answers.binding`` is None: the source
        answers routes only, or the route question failed first). It is withdrawn, neither a success nor a failure
        (nothing is remembered for ``binding_failure_cache``): once the route is known, the binding is asked for
        on its own, as it would have been without the combined question. Returns how many messages moved on."""
        if not self.dispatcher.withdraw(BINDING, service):
            return 0
        self._reasons.pop((BINDING, service), None)
        if self.waiting_on(BINDING, service):  # the route came meanwhile: ask for the binding on its own now
            return self.outbound.reroute(now, {service}, binding_waiters_only=True)
        return 0

    def request_done(
        self, kind: str, service: str, now: float, *, ok: bool, text: str, retry_after: float | None = None
    ) -> int:
        """A request ended: route the waiting conversations again; if some still have no route, ask again after
        the retry interval (never at once: the same question would get the same answer)."""
        d = self.dispatcher
        exact = None
        if kind == BINDING:
            # the seeds: a failed binding request is remembered (10 minutes by default), with no new request for
            # the service meanwhile; encryption=False conversations go on unsecured at once (rerouted below)
            exact, retry_after = self.binding_failure_cache, None
        if not ok:
            when = d.finished(kind, service, now, ok=False, text=text, retry_after=retry_after, exact=exact)
            moved = self.outbound.reroute(now, {service}, binding_waiters_only=True) if kind == BINDING else 0
            if when is not None and self.waiting_on(kind, service):
                self._schedule_request(when, kind, service)
            self._refresh_reasons(kind, service, now)
            return moved
        missing = "the service still has no route" if kind == ROUTE else "there is still no binding for the service"
        when = d.still_no_route(kind, service, now, f"{text}, but {missing}", exact=exact)
        # a binding's outcome matters only to those waiting for one: the rest still wait for their route
        moved = self.outbound.reroute(now, {service}, binding_waiters_only=kind == BINDING)
        if kind == BINDING and self.ledger.catalog.binding_for(service, now) is None:
            # no binding came of it: a failure, remembered (no new request meanwhile) whether or not anyone waits
            if self.waiting_on(kind, service):
                self._schedule_request(when, kind, service)
                self._refresh_reasons(kind, service, now)
            return moved
        if self.waiting_on(kind, service):
            self._schedule_request(when, kind, service)
            self._refresh_reasons(kind, service, now)
        else:
            d.finished(kind, service, now, ok=True, text=text)
        return moved

    # ------------------------------------------------------------------------------------------------ time

    def _schedule_request(self, when: float, kind: str, service: str) -> None:
        """Look at the request for (``kind``, ``service``) again at ``when``: its time-out, or its retry."""
        self.ledger.deadlines.push(when, DeadlineKind.DISPATCH, f"{kind}\x00{service}")

    def dispatch_due(self, deadline: DeadlineKind, key: str, now: float) -> None:
        """A dispatcher deadline came (from the core's heap): a time-out, a retry (DISPATCH), or a refresh
        (REFRESH). Stale ones (the request answered, the retry moved, no traffic) are found so here and ignored."""
        d = self.dispatcher
        if deadline is DeadlineKind.REFRESH:  # (traffic: any send to the service since the answer, see Delivery.send)
            service = key
            if service in self.route_traffic and self.resolver_name is not None:
                self.route_traffic.discard(service)
                if d.should_ask(ROUTE, service, now):
                    d.started(ROUTE, service, now, via=f"resolver {self.resolver_name} (refresh before expiry)")
                    self.ledger.outbox.append(ResolveRequest(ROUTE, service))
            return
        kind, service = key.split("\x00", 1)
        for request in d.timed_out(now):
            if (request.kind, request.service) == (kind, service):
                if request.handle is not None and request.handle in self.ledger.endpoints:
                    self.endings.end(request.handle, now, cleanup=True)
                if request.with_route:  # asked with the route: unanswered, asked on its own once the route is known
                    self.binding_unanswered(service, now)
                    return
                self.request_done(kind, service, now, ok=False, text="no answer within resolve_timeout")
                return
        when = d.retry_at.get((kind, service))
        if when is not None and when <= now and service in self.ledger.tx.delayed:
            self.outbound.reroute(now, {service})  # routes again, and asks again where still needed
        elif service not in self.ledger.tx.delayed:
            d.forget(kind, service)

    def dynamic_statistics(self, now: float) -> dict[str, Any]:
        services = set(self.ledger.tx.delayed) | {s for _, s in self.dispatcher.in_flight} | {s for _, s in self.dispatcher.retry_at}
        services |= {s for k, s in self.dispatcher.last if k == BINDING}
        per_service = {}
        for service in sorted(services)[:200]:
            handles = self.ledger.tx.delayed.get(service, {})
            per_service[service] = {
                "delayed_conversations": len(handles),
                "delayed_messages": self.ledger.tx.delayed_count.get(service, 0),
                **self.dispatcher.describe(ROUTE, service, now),
                "binding_request": self.dispatcher.describe(BINDING, service, now),
            }
        return {
            "enabled": self.dynamic_routing,
            "resolver": self.resolver_name or ("BCN service" if self.dynamic_routing else None),
            "asks": self.asks if self.dynamic_routing else None,
            "delayed_messages": self.ledger.tx.delayed_total,
            **self.dispatcher.statistics(),
            "services": per_service,
        }

