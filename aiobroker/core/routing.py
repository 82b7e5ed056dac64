"""Routes, and the choice of where an outgoing message goes (SEMANTICS.md, "Routing").

Theory of operation
-------------------
A route maps a service name (or any service) and a broker instance (or any) to an address: ``tcp://host:port``,
``LOCAL`` (this node) or ``TRANSPORT`` (the address is the start of the service name, ``tcp://host:port/...``).
:func:`choose` walks the seven steps in order; the first step that finds a usable route ends the search:

1. routes naming both the service and the conversation's broker instance (only if the conversation names one);
2. routes naming the service and no instance;
3. (the conversation names no instance) routes naming the service and an instance: one instance is picked
   (weighted at random) and only its routes are kept;
4. dynamic routing: a resolver is configured, or the Broker Configuration Notice service is here or a route names
   it → ask that (``asks`` names it), DELAYED meanwhile; except for a service on this node (the conversation names
   no other instance) while a ``LOCAL`` wildcard route exists: it is delivered here, as step 5 would, since asking
   anyone where a local service is never helps (aiobroker's departure from the seeds, where an application's BCN
   service or resolver stood between a sender and a service on the same node);
5. wildcard routes (no service, no instance);
6. a local service of that name, when the conversation names an instance (this node's own);
7. otherwise DELAYED, tried again later.

Expired routes are ignored for new decisions. Among the routes a step found, ``LOCAL`` ones win if the service is
really on this node, then network addresses, then ``TRANSPORT``; routes of equal rank share the load by weight.
:func:`explain` gives the same walk in words, for ``status`` and ``diagnose``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..names import check_name, parse_tcp_address, parse_tcp_addresses
from .expiry import expiry_from_def

LOCAL = "LOCAL"
TRANSPORT = "TRANSPORT"
BCN_SERVICE = "SQL/ServiceBroker/BrokerConfiguration"
#: whom step 4 asks when nobody says otherwise (no resolver configured: the seeds' way)
ASKS_BCN = "the Broker Configuration Notice service"




@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    address: str
    service_name: str | None = None
    broker_instance: str | None = None
    expires_at: float | None = None  #: wall-clock seconds; None: never
    weight: int = 1
    origin: str = "admin"  #: who made it: "admin", "config", or a resolver's name

    @classmethod
    def from_def(cls, d: dict[str, Any], now: float | None = None) -> Route:
        allowed = {"name", "address", "service_name", "broker_instance", "expires_at", "lifetime", "weight", "origin"}
        extra = set(d) - allowed
        if extra:
            # "service" is the word a user most likely means: say the one spelling (the CLI's --service-name too)
            hint = "; the service a route is for is service_name" if "service" in extra else ""
            raise InvalidArgument(
                f"route {d.get('name')!r}: unknown field(s) {', '.join(sorted(extra))}{hint};"
                f" allowed: {', '.join(sorted(allowed))}"
            )
        name = check_name("route", d.get("name"))
        address = d.get("address")
        if address not in (LOCAL, TRANSPORT):
            parse_tcp_addresses(address)  # type: ignore[arg-type]
        service = d.get("service_name")
        if service is not None:
            check_name("service", service)
        instance = d.get("broker_instance")
        if instance is not None and (not isinstance(instance, str) or not instance):
            raise InvalidArgument(f"route {name!r}: broker_instance must be a non-empty string or absent")
        expires_at = expiry_from_def(d, now, f"route {name!r}")
        weight = d.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 1_000_000:
            raise InvalidArgument(f"route {name!r}: weight must be a whole number from 1 to 1000000")
        origin = d.get("origin", "admin")
        if not isinstance(origin, str):
            raise InvalidArgument(f"route {name!r}: origin must be a string")
        return cls(
            name=name,
            address=address,  # type: ignore[arg-type]
            service_name=service,
            broker_instance=instance,
            expires_at=expires_at,
            weight=weight,
            origin=origin,
        )

    def to_def(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "service_name": self.service_name,
            "broker_instance": self.broker_instance,
            "expires_at": self.expires_at,
            "weight": self.weight,
            "origin": self.origin,
        }

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


#: The seeds' system makes this wildcard LOCAL route in every database, so services on the node reach each
#: other with no set-up; it can be dropped like any route.
AUTO_CREATED_LOCAL = Route(name="AutoCreatedLocal", address=LOCAL)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a conversation's messages go now."""

    kind: str  #: "local", "remote", "resolve" (ask a resolver or the BCN service) or "delayed"
    reason: str  #: in words: which step decided, and why
    address: str | None = None  #: for "remote": tcp://host:port
    broker_instance: str | None = None  #: the instance the chosen route names, if any
    route: Route | None = None
    #: the routes of equal rank the choice was made among (weighted); more than one: load is shared
    pool: tuple[Route, ...] = ()

    def again(self, service: str, rand: Callable[[], float] = random.random) -> Decision:
        """The same decision for another conversation: a fresh weighted pick among the same routes."""
        if len(self.pool) < 2:
            return self
        chosen = _weighted(self.pool, rand)
        address = chosen.address if chosen.address != TRANSPORT else _transport_address(service)
        return Decision(self.kind, self.reason, address, chosen.broker_instance, chosen, self.pool)


def _rank(route: Route, service_is_local: bool) -> int | None:
    """Lower is preferred; None: unusable (a LOCAL route to a service that is not here)."""
    if route.address == LOCAL:
        return 0 if service_is_local else None
    if route.address == TRANSPORT:
        return 2
    return 1


def _transport_address(service: str) -> str | None:
    try:
        host, port = parse_tcp_address(service)
    except InvalidArgument:
        return None
    scheme = service[:3]
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _pick(
    routes: list[Route], service: str, service_is_local: bool, rand: Callable[[], float], step: str
) -> Decision | None:
    """The preferred rank among ``routes``, then a weighted pick within it."""
    ranked = [(r, _rank(r, service_is_local)) for r in routes]
    usable = [(r, k) for r, k in ranked if k is not None and (r.address != TRANSPORT or _transport_address(service))]
    if not usable:
        return None
    best = min(k for _, k in usable)
    pool = tuple(r for r, k in usable if k == best)
    chosen = _weighted(pool, rand)
    if chosen.address == LOCAL:
        return Decision("local", f"{step}: route {chosen.name!r} says LOCAL", route=chosen)
    address = chosen.address if chosen.address != TRANSPORT else _transport_address(service)
    return Decision(
        "remote",
        f"{step}: route {chosen.name!r} to {address}",
        address=address,
        broker_instance=chosen.broker_instance,
        route=chosen,
        pool=pool,
    )


def _weighted(pool: tuple[Route, ...] | list[Route], rand: Callable[[], float]) -> Route:
    point = rand() * sum(r.weight for r in pool)
    for r in pool:
        point -= r.weight
        if point < 0:
            return r
    return pool[-1]


def _local_wildcard(live: list[Route]) -> Route | None:
    """The first live wildcard route that says LOCAL (``AutoCreatedLocal`` unless an administrator dropped it)."""
    return next((r for r in live if r.address == LOCAL and r.service_name is None and r.broker_instance is None), None)


def choose(
    routes: Iterable[Route],
    *,
    service: str,
    broker_instance: str | None,
    now: float,
    local_services: Collection[str],
    local_instance: str,
    rand: Callable[[], float] = random.random,
    dynamic: bool = False,
    asks: str = ASKS_BCN,
) -> Decision:
    """Walk the seven steps for one service; see the module docstring. ``dynamic``: a resolver is configured or
    the BCN service is on this node (step 4 applies even without a route naming the BCN service); ``asks``: whom
    step 4 asks, in words (the configured resolver, else the BCN service)."""
    live = [r for r in routes if r.live(now)]
    is_local = service in local_services and broker_instance in (None, local_instance)
    named = [r for r in live if r.service_name == service]
    if broker_instance is not None:
        step1 = [r for r in named if r.broker_instance == broker_instance]
        if step1 and (d := _pick(step1, service, is_local, rand, "step 1 (service and instance match)")):
            return d
    step2 = [r for r in named if r.broker_instance is None]
    if step2 and (d := _pick(step2, service, is_local, rand, "step 2 (service matches, any instance)")):
        return d
    if broker_instance is None:
        with_instance = [r for r in named if r.broker_instance is not None]
        if with_instance:
            weights: dict[str, int] = {}
            for r in with_instance:
                inst = r.broker_instance or ""
                weights[inst] = weights.get(inst, 0) + r.weight
            instances = sorted(weights)
            point = rand() * sum(weights.values())
            picked = instances[-1]
            for inst in instances:
                point -= weights[inst]
                if point < 0:
                    picked = inst
                    break
            step3 = [r for r in with_instance if r.broker_instance == picked]
            d = _pick(step3, service, is_local, rand, f"step 3 (service matches; instance {picked} picked)")
            if d:
                return d
    if service != BCN_SERVICE and (dynamic or any(r.service_name == BCN_SERVICE for r in live)):
        here = _local_wildcard(live) if is_local else None
        if here is not None:
            return Decision(
                "local",
                f"step 4 (the service is on this node): wildcard route {here.name!r} says LOCAL; dynamic routing is"
                " not asked where a local service is",
                route=here,
            )
        return Decision("resolve", f"step 4: no route names the service; asking {asks}")
    wildcards = [r for r in live if r.service_name is None and r.broker_instance is None]
    if wildcards and (d := _pick(wildcards, service, is_local, rand, "step 5 (wildcard route)")):
        return d
    if broker_instance is not None and broker_instance == local_instance and service in local_services:
        return Decision("local", "step 6: the conversation names this node's instance and the service is here")
    return Decision("delayed", f"no route: no route names service {service!r}" + (
        f" (instance {broker_instance})" if broker_instance else "") + " and no wildcard route applies")


def explain(
    routes: Iterable[Route],
    *,
    service: str,
    broker_instance: str | None,
    now: float,
    local_services: Collection[str],
    local_instance: str,
    dynamic: bool = False,
    asks: str = ASKS_BCN,
) -> tuple[list[str], Decision]:
    """The walk through the seven steps in words, one line each, then the decision (for ``diagnose``), and the
    decision itself (with no random pick: the first of equal routes). ``asks``:
    whom step 4 asks, as precisely as the caller can say (``the dns_srv resolver (SRV _aiobroker._tcp....)``)."""
    all_routes = list(routes)
    live = [r for r in all_routes if r.live(now)]
    expired = [r.name for r in all_routes if not r.live(now) and r.service_name in (service, None)]

    def names(rs: list[Route]) -> str:
        return ", ".join(f"{r.name} ({r.address})" for r in rs) if rs else "none"

    named = [r for r in live if r.service_name == service]
    lines = [f"ignored, expired: {', '.join(expired)}"] if expired else []
    if broker_instance is not None:
        lines.append(f"1. routes naming the service and instance {broker_instance}: {names([r for r in named if r.broker_instance == broker_instance])}")
    else:
        lines.append("1. skipped: the conversation names no broker instance")
    lines.append(f"2. routes naming the service and no instance: {names([r for r in named if r.broker_instance is None])}")
    if broker_instance is None:
        lines.append(f"3. routes naming the service and some instance: {names([r for r in named if r.broker_instance])}")
    else:
        lines.append("3. skipped: the conversation names an instance")
    bcn_routes = [r for r in live if r.service_name == BCN_SERVICE]
    if service == BCN_SERVICE:
        lines.append("4. skipped: this is the Broker Configuration Notice service itself")
    elif (dynamic or bcn_routes) and (
        service in local_services and broker_instance in (None, local_instance) and _local_wildcard(live)
    ):
        lines.append(
            "4. dynamic routing is on, but the service is on this node and a LOCAL wildcard route exists: delivered"
            " here without asking"
        )
    elif dynamic or bcn_routes:
        lines.append(f"4. dynamic routing is on: the node asks {asks} where the service is and holds its messages meanwhile")
    else:
        lines.append("4. dynamic routing is off: no resolver configured, no BCN service here, no route names one")
    wild = [r for r in live if r.service_name is None and r.broker_instance is None]
    local_note = "" if service in local_services else " (LOCAL ones do not count: the service is not on this node)"
    lines.append(f"5. wildcard routes: {names(wild)}{local_note}")
    if broker_instance is not None:
        here = broker_instance == local_instance and service in local_services
        lines.append(f"6. the conversation names an instance; {'it is this node and the service is here' if here else 'not this node with the service'}")
    else:
        lines.append("6. skipped: the conversation names no broker instance")
    decision = choose(
        all_routes,
        service=service,
        broker_instance=broker_instance,
        now=now,
        local_services=local_services,
        local_instance=local_instance,
        rand=lambda: 0.0,
        dynamic=dynamic,
        asks=asks,
    )
    lines.append(f"decision: {decision.kind}: {decision.reason}")
    return lines, decision
