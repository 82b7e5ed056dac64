"""The seven routing steps of SEMANTICS.md, as a table, expiry and load sharing included."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from aiobroker.core.routing import AUTO_CREATED_LOCAL, BCN_SERVICE, Route, choose, explain
from aiobroker.names import parse_tcp_address
from aiobroker.errors import InvalidArgument

NOW = 1000.0
HERE = "inst-here"


def R(name: str, address: str, service: str | None = None, instance: str | None = None, **kw: object) -> Route:
    return Route(name=name, address=address, service_name=service, broker_instance=instance, **kw)  # type: ignore[arg-type]


# (case, routes, service, conversation's instance, local services, expected kind, expected route name or None)
CASES = [
    ("step 1: service and instance match wins over service-only",
     [R("svc-any", "tcp://b:1", "S"), R("svc-i1", "tcp://a:1", "S", "i1")], "S", "i1", (), "remote", "svc-i1"),
    ("step 1 needs the conversation to name an instance",
     [R("svc-i1", "tcp://a:1", "S", "i1"), R("svc-any", "tcp://b:1", "S")], "S", None, (), "remote", "svc-any"),
    ("step 2: service matches, route names no instance",
     [R("svc", "tcp://a:1", "S"), R("wild", "tcp://w:1")], "S", "i9", (), "remote", "svc"),
    ("step 3: service matches only routes naming an instance",
     [R("svc-i1", "tcp://a:1", "S", "i1")], "S", None, (), "remote", "svc-i1"),
    ("step 3 is skipped when the conversation names another instance",
     [R("svc-i1", "tcp://a:1", "S", "i1"), R("wild", "tcp://w:1")], "S", "i2", (), "remote", "wild"),
    ("step 4: a BCN route turns dynamic routing on before wildcards",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), R("wild", "tcp://w:1")], "S", None, (), "resolve", None),
    ("step 4: a service on this node goes by the LOCAL wildcard, not to dynamic routing",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), AUTO_CREATED_LOCAL], "S", None, ("S",), "local", "AutoCreatedLocal"),
    ("step 4: a local service whose conversation names this node's instance is not asked for either",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), AUTO_CREATED_LOCAL], "S", HERE, ("S",), "local", "AutoCreatedLocal"),
    ("step 4 asks for a local service when the conversation names another instance",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), AUTO_CREATED_LOCAL], "S", "i-other", ("S",), "resolve", None),
    ("step 4 asks for a local service when no LOCAL wildcard route exists (an administrator dropped it)",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), R("wild", "tcp://w:1")], "S", None, ("S",), "resolve", None),
    ("step 4 asks for a service not on this node although a LOCAL wildcard exists",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE), AUTO_CREATED_LOCAL], "S", None, ("T",), "resolve", None),
    ("step 4 does not apply to the BCN service itself",
     [R("bcn", "tcp://cfg:1", BCN_SERVICE)], BCN_SERVICE, None, (), "remote", "bcn"),
    ("step 5: a wildcard route",
     [R("wild", "tcp://w:1"), R("other", "tcp://o:1", "T")], "S", None, (), "remote", "wild"),
    ("step 5: the built-in LOCAL wildcard reaches a local service",
     [AUTO_CREATED_LOCAL], "S", None, ("S",), "local", "AutoCreatedLocal"),
    ("a LOCAL route is unusable for a service that is not here",
     [AUTO_CREATED_LOCAL], "S", None, (), "delayed", None),
    ("step 6: the conversation names this node and the service is here, no routes at all",
     [], "S", HERE, ("S",), "local", None),
    ("step 7: nothing applies",
     [R("other", "tcp://o:1", "T")], "S", None, ("S",), "delayed", None),
    ("expired routes are ignored",
     [R("old", "tcp://a:1", "S", expires_at=NOW - 1), R("wild", "tcp://w:1")], "S", None, (), "remote", "wild"),
    ("a route expiring later still counts",
     [R("fresh", "tcp://a:1", "S", expires_at=NOW + 1), R("wild", "tcp://w:1")], "S", None, (), "remote", "fresh"),
    ("LOCAL is preferred to a network address when the service is here",
     [R("net", "tcp://a:1", "S"), R("loc", "LOCAL", "S")], "S", None, ("S",), "local", "loc"),
    ("a network address is preferred to TRANSPORT",
     [R("tr", "TRANSPORT"), R("net", "tcp://a:1")], "tcp://t:9/S", None, (), "remote", "net"),
    ("TRANSPORT takes the address from the service name",
     [R("tr", "TRANSPORT")], "tcp://t:9/S", None, (), "remote", "tr"),
    ("TRANSPORT is unusable for a service name that is not an address",
     [R("tr", "TRANSPORT")], "plain", None, (), "delayed", None),
]


@pytest.mark.parametrize(("case", "routes", "service", "instance", "local", "kind", "route"), CASES, ids=[c[0] for c in CASES])
def test_routing_steps(
    case: str, routes: list[Route], service: str, instance: str | None, local: tuple[str, ...], kind: str, route: str | None
) -> None:
    d = choose(routes, service=service, broker_instance=instance, now=NOW, local_services=local, local_instance=HERE)
    assert d.kind == kind, d.reason
    assert (d.route.name if d.route else None) == route, d.reason
    assert d.reason  # always says why in words


def test_the_local_first_departure_holds_with_a_resolver_configured_and_is_explained() -> None:
    kwargs = dict(service="S", broker_instance=None, now=NOW, local_services=("S",), local_instance=HERE, dynamic=True)
    d = choose([AUTO_CREATED_LOCAL], **kwargs)  # type: ignore[arg-type]
    assert (d.kind, d.route) == ("local", AUTO_CREATED_LOCAL)
    lines, decision = explain([AUTO_CREATED_LOCAL], **kwargs)  # type: ignore[arg-type]
    assert decision == d
    assert "the service is on this node and a LOCAL wildcard route exists: delivered here" in lines[3]
    assert lines[-1].startswith("decision: local: step 4 (the service is on this node)")


def test_transport_address_comes_from_the_service_name() -> None:
    d = choose([R("tr", "TRANSPORT")], service="tcp://t:9/S", broker_instance=None, now=NOW, local_services=(),
               local_instance=HERE)
    assert d.address == "tcp://t:9"


def test_step_3_keeps_only_the_picked_instances_routes() -> None:
    routes = [R("a1", "tcp://a:1", "S", "iA"), R("a2", "tcp://a:2", "S", "iA"), R("b1", "tcp://b:1", "S", "iB")]
    seen = Counter()
    ticks = itertools.cycle([i / 100 for i in range(100)])
    for _ in range(300):
        d = choose(routes, service="S", broker_instance=None, now=NOW, local_services=(), local_instance=HERE,
                   rand=lambda: next(ticks))
        seen[(d.broker_instance, d.address)] += 1
    assert set(seen) == {("iA", "tcp://a:1"), ("iA", "tcp://a:2"), ("iB", "tcp://b:1")}


def test_equal_routes_share_the_load_by_weight() -> None:
    routes = [R("heavy", "tcp://h:1", "S", weight=3), R("light", "tcp://l:1", "S", weight=1)]
    ticks = iter([i / 400 for i in range(400)])
    seen = Counter(
        choose(routes, service="S", broker_instance=None, now=NOW, local_services=(), local_instance=HERE,
               rand=lambda: next(ticks)).route.name  # type: ignore[union-attr]
        for _ in range(400)
    )
    assert seen == {"heavy": 300, "light": 100}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"name": "r", "address": "http://x:1"}, "must be tcp://host:port, LOCAL or TRANSPORT"),
        ({"name": "r", "address": "tcp://x:0"}, "port from 1 to 65535"),
        ({"name": "r", "address": "tcp://x"}, "port from 1 to 65535"),
        ({"name": "r", "address": "LOCAL", "weight": 0}, "weight must be a whole number"),
        ({"name": "r", "address": "LOCAL", "lifetime": -5}, "lifetime must be a number of seconds > 0"),
        ({"name": "r", "address": "LOCAL", "colour": "red"}, "unknown field(s) colour"),
        ({"name": "", "address": "LOCAL"}, "route name must be a non-empty string"),
    ],
)
def test_bad_route_definitions_say_what_is_wrong(definition: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        Route.from_def(definition, now=NOW)


def test_lifetime_becomes_an_absolute_expiry() -> None:
    r = Route.from_def({"name": "r", "address": "tcp://a:1", "service_name": "S", "lifetime": 60}, now=NOW)
    assert r.expires_at == NOW + 60
    assert r.live(NOW + 59.9) and not r.live(NOW + 60)
    assert Route.from_def(r.to_def()) == r


def test_ipv6_addresses_parse() -> None:
    assert parse_tcp_address("tcp://[::1]:4022") == ("::1", 4022)
    assert parse_tcp_address("tcp://10.0.0.2:4022/some/service") == ("10.0.0.2", 4022)
