"""The ``dns_srv`` resolver against a real DNS server (dnsmasq on 127.0.0.1, see tests/dnsmasq.py).

What is checked: SRV priority/weight → targets (and the weight mapping), target hosts → addresses, TTL → lifetime
(the minimum over the RRsets, clamped; an answer that changes after its lifetime), RFC 2308 negative TTLs, the
target ".", time-outs and refusals as ResolverError in words, the service name → SRV name mapping, and the options.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from aiobroker.errors import ConfigError
from resolvers import dns_srv_config
from aiobroker.resolver import NotFound, ResolverError, RouteAnswer, load_resolver
from resolvers.dns_srv import DnsSrvResolver, create, service_label

from dnsmasq import Dnsmasq, Host, Srv

SERVICE = "//shop/Orders"
SRV_NAME = "_aiobroker._tcp.shop-orders.test"  # what the default template makes of SERVICE with domain "test"

StartDns = Callable[..., Dnsmasq]


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[StartDns]:
    """Start dnsmasq servers (records as arguments, Dnsmasq's options as keywords); all are stopped at the end."""
    started: list[Dnsmasq] = []

    def start(*records: Srv | Host, **options: Any) -> Dnsmasq:
        server = Dnsmasq(tmp_path, records=records, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port with a socket bound to it that never reads: queries sent there are never answered (with no socket
    at all the kernel may answer "port unreachable", which is a different failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def resolver_for(*nameservers: str, **options: Any) -> DnsSrvResolver:
    return create({"nameservers": list(nameservers), "domain": "test", **options})


def hosts(*pairs: tuple[str, str]) -> list[Host]:
    return [Host(name, (address,)) for name, address in pairs]


# --- answers ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_priorities_and_weights_become_targets(dnsmasq: StartDns) -> None:
    server = dnsmasq(
        Srv(SRV_NAME, "h1.test", 4001, priority=10, weight=60),
        Srv(SRV_NAME, "h2.test", 4002, priority=10, weight=20),
        Srv(SRV_NAME, "h3.test", 4003, priority=10, weight=0),
        Srv(SRV_NAME, "h4.test", 4004, priority=20, weight=5),
        *hosts(("h1.test", "127.0.0.11"), ("h2.test", "127.0.0.12"), ("h3.test", "127.0.0.13"), ("h4.test", "127.0.0.14")),
        ttl=2,
    )
    answer = await resolver_for(server.nameserver).resolve_route(SERVICE)

    got = [(t.priority, t.address, t.weight) for t in answer.targets]
    assert got == [
        (10, "tcp://127.0.0.11:4001", 6000),  # weight w > 0 → 100 w: ratios kept
        (10, "tcp://127.0.0.12:4002", 2000),
        (10, "tcp://127.0.0.13:4003", 1),  # weight 0 → 1: a very small share next to the others
        (20, "tcp://127.0.0.14:4004", 500),
    ]
    assert [t.address for t in answer.preferred()] == [a for p, a, _ in got if p == 10]  # lowest priority wins
    assert all(t.broker_instance is None for t in answer.targets)
    assert answer.service_name == SERVICE
    assert answer.lifetime == 2.0
    assert answer.source == f"DNS {server.nameserver}"
    assert answer.extra == {"srv_name": SRV_NAME + ".", "ttl": 2.0}


@pytest.mark.anyio
async def test_all_zero_weights_share_evenly_and_addresses_share_their_records_weight(dnsmasq: StartDns) -> None:
    server = dnsmasq(
        Srv(SRV_NAME, "multi.test", 5000, weight=0),
        Srv(SRV_NAME, "single.test", 5001, weight=0),
        Host("multi.test", ("127.0.0.21", "::1")),  # one A and one AAAA ...
        Host("multi.test", ("127.0.0.22",)),  # ... and a second A
        Host("single.test", ("127.0.0.23",)),
    )
    answer = await resolver_for(server.nameserver).resolve_route(SERVICE)

    weights = {t.address: t.weight for t in answer.targets}
    assert weights == {
        "tcp://127.0.0.23:5001": 3,  # both records weigh 1 (0 → 1); scaled by lcm(3, 1) = 3 ...
        "tcp://127.0.0.21:5000": 1,  # ... and multi.test's 3 split among its 3 addresses
        "tcp://127.0.0.22:5000": 1,
        "tcp://[::1]:5000": 1,  # IPv6 in brackets
    }
    assert sum(w for a, w in weights.items() if a.endswith(":5000")) == weights["tcp://127.0.0.23:5001"]


@pytest.mark.anyio
async def test_explicit_name_wins_over_the_template(dnsmasq: StartDns) -> None:
    server = dnsmasq(
        Srv(SRV_NAME, "h1.test", 4001),
        Srv("_orders._tcp.elsewhere.test", "h2.test", 4002),
        *hosts(("h1.test", "127.0.0.11"), ("h2.test", "127.0.0.12")),
    )
    resolver = resolver_for(server.nameserver, names={SERVICE: "_orders._tcp.elsewhere.test"})
    answer = await resolver.resolve_route(SERVICE)
    assert [t.address for t in answer.targets] == ["tcp://127.0.0.12:4002"]
    assert answer.extra["srv_name"] == "_orders._tcp.elsewhere.test."

    other = await resolver_for(server.nameserver).resolve_route(SERVICE)  # no table: the template
    assert [t.address for t in other.targets] == ["tcp://127.0.0.11:4001"]


# --- lifetimes --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifetime_is_the_smallest_ttl_clamped(dnsmasq: StartDns) -> None:
    # Not authoritative, so the host record keeps its own TTL (3) below the SRV record's (30).
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), Host("h1.test", ("127.0.0.11",), ttl=3), ttl=30, authoritative=False)

    answer = await resolver_for(server.nameserver).resolve_route(SERVICE)
    assert answer.lifetime == 3.0
    assert answer.extra["ttl"] == 3.0
    assert (await resolver_for(server.nameserver, lifetime_cap=2).resolve_route(SERVICE)).lifetime == 2.0
    assert (await resolver_for(server.nameserver, lifetime_floor=10).resolve_route(SERVICE)).lifetime == 10.0


@pytest.mark.anyio
async def test_a_changed_record_is_seen_once_the_lifetime_is_over(dnsmasq: StartDns) -> None:
    """The node keeps an answer for its lifetime (the dispatcher's part, played here by ``held``); after that, the
    next question gets what DNS says now."""
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), *hosts(("h1.test", "127.0.0.11")), ttl=2)
    resolver = resolver_for(server.nameserver)
    held: list[tuple[RouteAnswer, float]] = []  # (answer, expires at)

    async def current() -> RouteAnswer:
        now = time.monotonic()
        if not held or now >= held[-1][1]:
            answer = await resolver.resolve_route(SERVICE)
            held.append((answer, now + answer.lifetime))
        return held[-1][0]

    first = await current()
    assert first.lifetime == 2.0
    assert [t.address for t in first.targets] == ["tcp://127.0.0.11:4001"]
    expires = held[0][1]

    server.restart([Srv(SRV_NAME, "h1.test", 4999), *hosts(("h1.test", "127.0.0.11"))])
    assert [t.address for t in (await current()).targets] == ["tcp://127.0.0.11:4001"]  # still held

    deadline = expires + 5
    while (answer := await current()).targets[0].address != "tcp://127.0.0.11:4999":
        assert time.monotonic() < deadline, "the new record was not seen within 5 s after the lifetime"
        await anyio.sleep(0.05)  # a poll interval inside a deadline
    assert time.monotonic() >= expires
    assert answer.lifetime == 2.0


# --- negative answers -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_nxdomain_is_not_found_for_the_negative_ttl(dnsmasq: StartDns) -> None:
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), *hosts(("h1.test", "127.0.0.11")), ttl=3)
    with pytest.raises(NotFound) as caught:
        await resolver_for(server.nameserver).resolve_route("//shop/Nothing")
    assert caught.value.retry_after == 3.0  # min(SOA TTL, SOA minimum), both 3 from this server
    assert "_aiobroker._tcp.shop-nothing.test. SRV" in caught.value.message
    assert "NXDOMAIN" in caught.value.message
    assert caught.value.__cause__ is not None  # chained to dnspython's exception


@pytest.mark.anyio
async def test_a_name_without_srv_records_is_not_found(dnsmasq: StartDns) -> None:
    server = dnsmasq(*hosts(("h1.test", "127.0.0.11")), ttl=3)
    resolver = resolver_for(server.nameserver, names={"//x/nodata": "h1.test"})  # exists, as an A record only
    with pytest.raises(NotFound, match="no SRV records at h1.test.") as caught:
        await resolver.resolve_route("//x/nodata")
    assert caught.value.retry_after == 3.0


@pytest.mark.anyio
async def test_without_an_soa_the_negative_ttl_is_60s(dnsmasq: StartDns) -> None:
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), *hosts(("h1.test", "127.0.0.11")), authoritative=False)
    with pytest.raises(NotFound) as caught:
        await resolver_for(server.nameserver).resolve_route("//shop/Nothing")
    assert caught.value.retry_after == 60.0
    with pytest.raises(NotFound) as clamped:
        await resolver_for(server.nameserver, lifetime_cap=30).resolve_route("//shop/Nothing")
    assert clamped.value.retry_after == 30.0


@pytest.mark.anyio
async def test_target_dot_means_decidedly_not_available(dnsmasq: StartDns) -> None:
    server = dnsmasq(Srv(SRV_NAME, "."), ttl=2)
    with pytest.raises(NotFound, match="decidedly not available") as caught:
        await resolver_for(server.nameserver).resolve_route(SERVICE)
    assert caught.value.retry_after == 2.0


@pytest.mark.anyio
async def test_targets_without_addresses_are_left_out(dnsmasq: StartDns) -> None:
    server = dnsmasq(
        Srv(SRV_NAME, "h1.test", 4001),
        Srv(SRV_NAME, "ghost.test", 4002),
        Srv("_aiobroker._tcp.haunted.test", "ghost.test", 4002),
        *hosts(("h1.test", "127.0.0.11")),
        ttl=2,
    )
    resolver = resolver_for(server.nameserver)
    answer = await resolver.resolve_route(SERVICE)
    assert [t.address for t in answer.targets] == ["tcp://127.0.0.11:4001"]
    assert answer.extra["unresolved"] == ["ghost.test."]

    with pytest.raises(NotFound, match="without an A or AAAA record: ghost.test.") as caught:
        await resolver.resolve_route("Haunted")
    assert caught.value.retry_after == 2.0


# --- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_silent_nameserver_is_a_time_out_within_the_timeout(silent_port: int) -> None:
    resolver = resolver_for(f"127.0.0.1:{silent_port}", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ResolverError) as caught:
        await resolver.resolve_route(SERVICE)
    elapsed = time.monotonic() - started
    assert type(caught.value) is ResolverError  # not NotFound: nobody said the service does not exist
    assert caught.value.message == (
        f"DNS query for {SRV_NAME}. SRV timed out after 0.5s (nameserver 127.0.0.1:{silent_port})"
    )
    assert 0.4 < elapsed < 1.0


@pytest.mark.anyio
async def test_at_most_max_open_questions_are_asked_at_once_and_the_rest_wait_for_a_slot() -> None:
    # A nameserver that reads every query and answers none: each question holds its slot until its time-out, so
    # a question beyond the first two may only reach the nameserver once one of those two has ended.
    import dns.message

    first_query: dict[str, float] = {}
    ended: list[float] = []
    async with await anyio.create_udp_socket(local_host="127.0.0.1") as server:
        resolver = resolver_for(f"127.0.0.1:{server.extra(anyio.abc.SocketAttribute.local_port)}", timeout=0.4,
                                max_open_questions=2)
        services = [f"svc{i}" for i in range(5)]

        async def listen() -> None:
            async for packet, _ in server:
                name = dns.message.from_wire(packet).question[0].name.to_text()
                first_query.setdefault(name, time.monotonic())

        async def ask(service: str) -> None:
            with pytest.raises(ResolverError, match="timed out"):
                await resolver.resolve_route(service)
            ended.append(time.monotonic())

        async with anyio.create_task_group() as outer:
            outer.start_soon(listen)
            async with anyio.create_task_group() as tg:
                for service in services:
                    tg.start_soon(ask, service)
            outer.cancel_scope.cancel()
    assert len(first_query) == len(services), first_query
    starts = sorted(first_query.values())
    assert max(starts[:2]) < min(ended), "the first two asked at once"
    for later in starts[2:]:
        assert any(end <= later for end in ended), "a third question waited for a slot"
    assert resolver.describe()["max_open_questions"] == 2


@pytest.mark.anyio
async def test_a_silent_nameserver_first_costs_one_attempt_not_the_question(
    dnsmasq: StartDns, silent_port: int
) -> None:
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), *hosts(("h1.test", "127.0.0.11")))
    resolver = resolver_for(f"127.0.0.1:{silent_port}", server.nameserver, timeout=1)
    started = time.monotonic()
    answer = await resolver.resolve_route(SERVICE)
    elapsed = time.monotonic() - started
    assert [t.address for t in answer.targets] == ["tcp://127.0.0.11:4001"]
    assert answer.source == f"DNS {server.nameserver}"
    # Each nameserver gets half the timeout: 0.5 s lost on the silent one for the SRV query; the A and AAAA queries
    # then go to the nameserver that answered, so they lose nothing.
    assert 0.4 < elapsed < 0.9


@pytest.mark.anyio
async def test_a_refusal_is_a_resolver_error(dnsmasq: StartDns) -> None:
    server = dnsmasq()  # authoritative for test. only; it forwards nothing, so it refuses other names
    resolver = resolver_for(server.nameserver, names={SERVICE: "_orders._tcp.example.org"})
    with pytest.raises(ResolverError) as caught:
        await resolver.resolve_route(SERVICE)
    assert type(caught.value) is ResolverError
    assert caught.value.message == (
        f"DNS query for _orders._tcp.example.org. SRV failed: {server.nameserver} answered REFUSED"
    )


@pytest.mark.anyio
async def test_a_target_whose_addresses_cannot_be_looked_up_fails_the_question(dnsmasq: StartDns) -> None:
    """Leaving the host out would shift its load onto the others for a whole lifetime: fail, and say why."""
    server = dnsmasq(
        Srv(SRV_NAME, "h1.test", 4001),
        Srv(SRV_NAME, "h9.example.org", 4009),  # outside the zone: the server refuses the A and AAAA queries
        *hosts(("h1.test", "127.0.0.11")),
    )
    with pytest.raises(ResolverError) as caught:
        await resolver_for(server.nameserver).resolve_route(SERVICE)
    assert type(caught.value) is ResolverError
    message = caught.value.message
    assert message.startswith(f"SRV {SRV_NAME}. (service '{SERVICE}') names target host(s) whose addresses could not")
    assert f"h9.example.org.: A: DNS query for h9.example.org. A failed: {server.nameserver} answered REFUSED" in message
    assert "h1.test" not in message


@pytest.mark.anyio
async def test_a_record_that_cannot_be_a_target_is_a_resolver_error(dnsmasq: StartDns) -> None:
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 0), *hosts(("h1.test", "127.0.0.11")))
    with pytest.raises(ResolverError, match="port from 1 to 65535") as caught:
        await resolver_for(server.nameserver).resolve_route(SERVICE)
    assert type(caught.value) is ResolverError


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")])
async def test_runs_on_uvloop(dnsmasq: StartDns, silent_port: int) -> None:
    """The node's loop is uvloop: an answer and a time-out there too."""
    server = dnsmasq(Srv(SRV_NAME, "h1.test", 4001), *hosts(("h1.test", "127.0.0.11")))
    answer = await resolver_for(server.nameserver).resolve_route(SERVICE)
    assert [t.address for t in answer.targets] == ["tcp://127.0.0.11:4001"]
    with pytest.raises(ResolverError, match="timed out after 0.3s"):
        await resolver_for(f"127.0.0.1:{silent_port}", timeout=0.3).resolve_route(SERVICE)


@pytest.mark.anyio
async def test_no_nameservers_is_a_resolver_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search example.org\n")
    monkeypatch.setattr(dns_srv_config, "RESOLV_CONF", str(resolv_conf))
    resolver = create({"domain": "test"})
    assert resolver.describe()["nameservers"] == []
    with pytest.raises(ResolverError, match="no nameserver to ask") as caught:
        await resolver.resolve_route(SERVICE)
    assert str(resolv_conf) in caught.value.message


def test_nameservers_default_to_resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 192.0.2.1\nnameserver 2001:db8::1\n")
    monkeypatch.setattr(dns_srv_config, "RESOLV_CONF", str(resolv_conf))
    described = create({"domain": "test"}).describe()  # no query is sent
    assert described["nameservers"] == ["192.0.2.1:53", "[2001:db8::1]:53"]
    assert described["nameservers_from"] == str(resolv_conf)


# --- the name mapping -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "label"),
    [
        ("//shop/Orders", "shop-orders"),
        ("Billing", "billing"),
        ("a--b", "a--b"),  # '-' is kept as it is
        ("  x _. y  ", "x-y"),  # a run of others is one '-'; none at the ends
        ("Größe/Äpfel", "gr-e-pfel"),  # non-ASCII letters are "others"
        ("x" * 100, "x" * 63),
        ("a" * 62 + "/b", "a" * 62),  # cut at 63, then no '-' at the end
        ("///", ""),
    ],
)
def test_service_label(service: str, label: str) -> None:
    assert service_label(service) == label


def test_srv_name_mapping() -> None:
    resolver = create(
        {
            "nameservers": ["127.0.0.1"],
            "domain": "brokers.example.com.",
            "names": {"//shop/Orders": "_orders._tcp.shop.example.com"},
        }
    )
    assert str(resolver.srv_name("//shop/Orders")) == "_orders._tcp.shop.example.com."
    assert str(resolver.srv_name("//shop/Billing")) == "_aiobroker._tcp.shop-billing.brokers.example.com."
    with pytest.raises(NotFound, match="no letter or digit"):
        resolver.srv_name("//")

    custom = create({"nameservers": ["127.0.0.1"], "domain": "example.com", "srv_name": "{service}._mq._tcp.{domain}"})
    assert str(custom.srv_name("//shop/Orders")) == "shop-orders._mq._tcp.example.com."

    table_only = create({"nameservers": ["127.0.0.1"], "names": {"//shop/Orders": "_o._tcp.example.com"}})
    assert str(table_only.srv_name("//shop/Orders")) == "_o._tcp.example.com."
    with pytest.raises(NotFound, match="not in \\[resolver.names\\]"):
        table_only.srv_name("//shop/Billing")
    assert table_only.describe()["srv_name"].startswith("off")

    # what diagnose says is asked for a service: the SRV name and where
    assert resolver.asks("//shop/Billing") == (
        "the dns_srv resolver (SRV _aiobroker._tcp.shop-billing.brokers.example.com. at nameserver 127.0.0.1:53)")
    assert table_only.asks("//shop/Billing").startswith("the dns_srv resolver (which has no SRV name for it: service")


@pytest.mark.anyio
async def test_an_unmappable_service_is_not_found_without_a_query(silent_port: int) -> None:
    resolver = resolver_for(f"127.0.0.1:{silent_port}", timeout=5)
    with anyio.fail_after(1):  # the silent nameserver would take 5 s: no query is sent
        with pytest.raises(NotFound, match="no letter or digit"):
            await resolver.resolve_route("//")


# --- options ----------------------------------------------------------------------------------------------------

_DROP = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nameserver": ["127.0.0.1"]}, "unknown option"),
        ({"nameservers": "127.0.0.1"}, "non-empty list"),
        ({"nameservers": []}, "non-empty list"),
        ({"nameservers": ["localhost"]}, "not an IP address"),
        ({"nameservers": [53]}, "must be a string"),
        ({"nameservers": ["127.0.0.1:0"]}, "port must be"),
        ({"nameservers": ["127.0.0.1:65536"]}, "port must be"),
        ({"nameservers": ["[::1"]}, "v6 address"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "2"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"lifetime_floor": 0}, "lifetime_floor"),
        ({"lifetime_floor": 10, "lifetime_cap": 5}, "must not be above lifetime_cap"),
        ({"srv_name": ""}, "srv_name"),
        ({"srv_name": "_x._tcp.{domain}"}, "must contain {service}"),
        ({"srv_name": "{service}.{zone}"}, "{zone} is not allowed"),
        ({"srv_name": "{service!r}.x"}, "is not allowed"),
        ({"srv_name": "{service"}, "not a valid template"),
        ({"srv_name": "{service}..{domain}"}, "valid DNS name"),
        ({"domain": _DROP}, "domain is required"),
        ({"domain": "a..b"}, "not a valid DNS name"),
        ({"domain": "."}, "must be a DNS name"),
        ({"domain": 5}, "must be a DNS name"),
        ({"names": ["//x"]}, "must be a table"),
        ({"names": {"//x": "a..b"}}, "not a valid DNS name"),
        ({"names": {"": "a.b"}}, "service name"),
        ({"max_open_questions": 0}, "max_open_questions must be a whole number from 1 to 1000, got 0"),
        ({"max_open_questions": 1001}, "from 1 to 1000"),
        ({"max_open_questions": "8"}, "max_open_questions"),
        ({"max_open_questions": True}, "max_open_questions"),
    ],
)
def test_bad_options_are_config_errors(change: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"nameservers": ["127.0.0.1:53"], "domain": "test"}
    options.update(change)
    options = {k: v for k, v in options.items() if v is not _DROP}
    with pytest.raises(ConfigError, match=re.escape(message)):
        create(options)


def test_loads_through_the_entry_point() -> None:
    resolver = load_resolver(
        "dns_srv",
        {
            "nameservers": ["127.0.0.1:5353", "::1"],
            "domain": "test",
            "names": {"//shop/Orders": "_o._tcp.test"},
            "timeout": 1.5,
        },
    )
    assert isinstance(resolver, DnsSrvResolver)
    assert resolver.name == "dns_srv"
    assert resolver.describe() == {
        "resolver": "dns_srv",
        "nameservers": ["127.0.0.1:5353", "[::1]:53"],
        "nameservers_from": "config",
        "srv_name": "_aiobroker._tcp.{service}.{domain}",
        "domain": "test",
        "names": {"//shop/Orders": "_o._tcp.test."},
        "timeout": 1.5,
        "lifetime_floor": 1.0,
        "lifetime_cap": 3600.0,
        "max_open_questions": 64,
    }
    with pytest.raises(ConfigError, match="timeout"):
        load_resolver("dns_srv", {"domain": "test", "timeout": 0})

