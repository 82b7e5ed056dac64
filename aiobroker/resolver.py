"""The resolver plug-in interface: how a node asks "where is service X?" when no route names it.

Everything a resolver plug-in needs from aiobroker is here, and a plug-in imports nothing else of it: the
:class:`Resolver` base class; the answers (:class:`RouteAnswer` with its :class:`Target` s, :class:`BindingAnswer`);
the errors it raises (:class:`ResolverError` and :class:`NotFound`, both :class:`BrokerError` s, and
:class:`ConfigError` for a bad table); :func:`load_resolver` (a chain builds its members with it); and the checks
and words an answer's author needs (:func:`check_name`, :func:`parse_tcp_address`, :func:`load_certificate`,
:func:`duration`), re-exported from where the node keeps them, so that a plug-in checks exactly as the node does.
The built-in plug-ins in the ``resolvers`` package use this module and only this module, as a third-party one would
(``tests/test_imports.py`` holds them to it); docs/resolvers.md shows how to write one.

A resolver answers one question at a time for one service name and knows nothing of conversations: the node's
dispatcher makes sure there is at most one question in flight per service, however many conversations wait, and
turns the answer into routes (``origin`` = the resolver's name, ``expires_at`` = now + ``lifetime``).

- :meth:`Resolver.resolve_route` returns a :class:`RouteAnswer` (one or more addresses, with preference and
  weight, and how long the answer holds), raises :class:`NotFound` when the source says the service does not exist
  (a negative answer, not asked again for at least ``retry_after`` seconds), or raises :class:`ResolverError` when
  it could not get an answer (a time-out, garbage, a non-2xx status, an unreadable file): the reason in words, which
  ``status`` and the conversation's eventual ``Error`` show.
- :meth:`Resolver.resolve_binding` answers a binding request (MissingRemoteServiceBinding) the same way with a
  :class:`BindingAnswer` (the remote service owner's certificate in PEM); resolvers that know only routes leave
  the default, which says so with :class:`NotFound`.
- :meth:`Resolver.resolve_together` answers both questions about one service in one go, as :class:`Answers`: the
  node asks it when a service's route and binding are both unknown, so that the service waits for one round trip
  rather than two in a row. The default asks :meth:`~Resolver.resolve_route` and :meth:`~Resolver.resolve_binding`
  at the same time; a resolver whose source can answer both in one request (the ``http`` and ``static_file``
  resolvers) overrides it.
- A resolver is built by a factory registered in the entry point group ``aiobroker.resolvers`` (the built-in ones
  in aiobroker's ``pyproject.toml``), called with the resolver's table from the node's config file; a bad table
  raises :class:`ConfigError` naming the key.

A resolver must bound every wait (its own time-outs) and must not raise anything but these errors.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from aiobroker.names import check_name, parse_tcp_address
from aiobroker.durations import duration
from aiobroker.errors import BrokerError, ConfigError, InvalidArgument, SecurityError, register_error
from aiobroker.security.certs import load_certificate

__all__ = [
    "DEFAULT_LIFETIME",
    "ENTRY_POINT_GROUP",
    "Answers",
    "BindingAnswer",
    "BrokerError",
    "ConfigError",
    "InvalidArgument",
    "NotFound",
    "Resolver",
    "ResolverError",
    "ResolverFactory",
    "RouteAnswer",
    "SecurityError",
    "Target",
    "check_name",
    "duration",
    "load_certificate",
    "load_resolver",
    "parse_tcp_address",
]

#: How long an answer holds when its source says nothing about it.
DEFAULT_LIFETIME = 300.0


class ResolverError(BrokerError):
    """No answer could be had (time-out, unreachable source, garbage). ``retry_after``: the soonest asking again
    makes sense, if the source said so; a lower bound on the node's back-off, which still doubles with each failure
    in a row."""

    code = "resolver_error"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(ResolverError):
    """The source answered: it knows no such service (NXDOMAIN, an empty answer, 404, no entry in the file)."""

    code = "resolver_not_found"


register_error(ResolverError)  # so an error from the far side of a connection comes back as its own class


def _check_address(address: Any) -> str:
    parse_tcp_address(address)
    return str(address)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One place a service can be reached."""

    address: str  #: tcp://host:port
    weight: int = 1  #: share of the load among targets of the same priority (>= 1)
    priority: int = 0  #: lower is preferred; only the lowest priority present is used (RFC 2782)
    broker_instance: str | None = None

    def __post_init__(self) -> None:
        _check_address(self.address)
        if not isinstance(self.weight, int) or isinstance(self.weight, bool) or self.weight < 1:
            raise InvalidArgument(f"target {self.address}: weight must be a whole number >= 1, got {self.weight!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool) or self.priority < 0:
            raise InvalidArgument(f"target {self.address}: priority must be a whole number >= 0")
        if self.broker_instance is not None and (not isinstance(self.broker_instance, str) or not self.broker_instance):
            raise InvalidArgument(f"target {self.address}: broker_instance must be a non-empty string or absent")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteAnswer:
    """Where a service is, and for how long that holds."""

    service_name: str
    targets: tuple[Target, ...]
    lifetime: float = DEFAULT_LIFETIME  #: seconds (a DNS TTL, an HTTP answer's lifetime); > 0
    source: str = ""  #: what answered, for logs and status (e.g. "dnsmasq 127.0.0.1:5353", a file path, a URL)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.targets:
            raise InvalidArgument(f"an answer for {self.service_name!r} needs at least one target (else: NotFound)")
        ok = isinstance(self.lifetime, (int, float)) and not isinstance(self.lifetime, bool)
        if not (ok and 0 < self.lifetime < math.inf):
            raise InvalidArgument(f"an answer's lifetime must be a number of seconds > 0, got {self.lifetime!r}")

    def preferred(self) -> tuple[Target, ...]:
        """The targets of the lowest priority present: the ones routes are made for."""
        best = min(t.priority for t in self.targets)
        return tuple(t for t in self.targets if t.priority == best)


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingAnswer:
    """How to secure conversations to a service (a remote service binding), and for how long that holds."""

    service_name: str
    certificate: str  #: the remote service owner's certificate, PEM (the session key is wrapped for it)
    anonymous: bool = False  #: the target does not learn the initiator's identity
    identity: str | None = None  #: the local identity that signs; None: the node's own ([security] identity)
    lifetime: float = DEFAULT_LIFETIME  #: seconds; > 0
    source: str = ""  #: what answered, for logs and status

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, str) or "-----BEGIN CERTIFICATE-----" not in self.certificate:
            raise InvalidArgument(f"a binding answer for {self.service_name!r} needs a PEM certificate")
        ok = isinstance(self.lifetime, (int, float)) and not isinstance(self.lifetime, bool)
        if not (ok and 0 < self.lifetime < math.inf):
            raise InvalidArgument(f"an answer's lifetime must be a number of seconds > 0, got {self.lifetime!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Answers:
    """Both answers about one service from one round trip (:meth:`Resolver.resolve_together`). Each is the answer,
    or the error that stands for it (:class:`NotFound`, :class:`ResolverError`; anything else is a bug in the
    resolver, which the node logs and counts as a failed question). ``binding`` is None when the round trip did not
    answer it (the source answers routes only, or the route question failed before the binding could be read): the
    node then asks for the binding on its own, once the route is known, as it would have without this call."""

    route: RouteAnswer | Exception
    binding: BindingAnswer | Exception | None


class Resolver(ABC):
    """Answers where a service is. One instance per node; ``resolve_route`` may be called concurrently for
    different services. A factory should not hold resources (connections, files) until the first call, so that
    a chain whose later member fails to build leaves nothing to close."""

    #: the name it is registered under (and the ``origin`` of the routes it makes)
    name: str = "resolver"
    #: whether :meth:`resolve_binding` can answer: if not, the node does not ask it for bindings (conversations
    #: with ``encryption=False`` and no binding go plain at once; ``encryption=True`` ones fail, docs/security.md)
    answers_bindings: bool = False

    @abstractmethod
    async def resolve_route(self, service_name: str) -> RouteAnswer:
        """Where ``service_name`` is. Raises :class:`NotFound` or :class:`ResolverError`, nothing else."""

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        """How to secure conversations to ``service_name`` (MissingRemoteServiceBinding). Raises
        :class:`NotFound` or :class:`ResolverError`, nothing else. By default a resolver answers routes only."""
        raise NotFound(f"the {self.name} resolver answers route requests only, not remote service bindings")

    async def resolve_together(self, service_name: str) -> Answers:
        """Both questions about ``service_name`` at once (the node asks this when neither its route nor its binding
        is known, and this resolver answers bindings). The default asks :meth:`resolve_route` and
        :meth:`resolve_binding` at the same time, so the service waits for the slower of the two rather than their
        sum; a resolver whose source answers both in one request overrides it. Never raises: each error is in its
        place in the :class:`Answers`."""
        results: dict[str, Any] = {}

        async def ask(key: str, question: Callable[[str], Any]) -> None:
            try:
                results[key] = await question(service_name)
            except Exception as exc:  # kept as the answer: the node reports it per question  # noqa: BLE001
                results[key] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "route", self.resolve_route)
            tg.start_soon(ask, "binding", self.resolve_binding)
        return Answers(route=results["route"], binding=results["binding"])

    async def aclose(self) -> None:  # noqa: B027 - optional
        """Release connections, watches, files."""

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows about it."""
        return {"resolver": self.name}

    def asks(self, service_name: str) -> str:
        """Whom and what a question about ``service_name`` asks, in words, for ``diagnose``: by default ``the NAME
        resolver``; a resolver that can say more adds it (``the dns_srv resolver (SRV _aiobroker._tcp.x.example.
        at 10.0.0.53:53)``). Asks nothing and never raises."""
        return f"the {self.name} resolver"


#: A factory: the resolver's config table (``[resolver]`` minus ``kind``) → a resolver.
ResolverFactory = Callable[[Mapping[str, Any]], Resolver]

ENTRY_POINT_GROUP = "aiobroker.resolvers"


def load_resolver(kind: str, options: Mapping[str, Any]) -> Resolver:
    """Build the resolver registered as ``kind`` in the entry point group ``aiobroker.resolvers``."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if kind not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise ConfigError(f"[resolver] kind {kind!r} is not a registered resolver (known: {known})")
    try:
        factory: ResolverFactory = found[kind].load()
        resolver = factory(options)
    except (ConfigError, InvalidArgument):
        raise
    except Exception as exc:  # a plug-in that does not load or build is a configuration problem, said in words
        raise ConfigError(f"[resolver] kind {kind!r} cannot be loaded or built: {type(exc).__name__}: {exc}") from exc
    if not isinstance(resolver, Resolver):
        raise ConfigError(f"[resolver] kind {kind!r}: its factory returned {type(resolver).__name__}, not a Resolver")
    return resolver
