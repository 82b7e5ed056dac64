"""The http resolver against a real HTTP registry in its own process (tests/http_registry.py), over 127.0.0.1.

The registry re-reads its answers from a JSON file on every request, so each test sets the answers it needs (and
may change them while the resolver is open) without restarting the process.
"""

from __future__ import annotations

import email.utils
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from cert_helpers import rsa_certificate

from aiobroker.errors import ConfigError
from resolvers import http as http_resolver
from resolvers import http_config
from aiobroker.resolver import BindingAnswer, NotFound, ResolverError, RouteAnswer, Target, load_resolver
from resolvers.http import HttpResolver, create
from node_process import free_port, wait_for

pytestmark = pytest.mark.anyio

REGISTRY_SCRIPT = Path(__file__).with_name("http_registry.py")
ORDERS = "//shop/Orders"


class RegistryProcess:
    """tests/http_registry.py in its own process: started by command, ready when its port accepts connections,
    stopped by its pid."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.routes_file = tmp / "routes.json"
        self.log_file = tmp / "requests.jsonl"
        self.stderr_path = tmp / "registry.stderr"
        self.serve({})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> RegistryProcess:
        self.stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(REGISTRY_SCRIPT), "--port", str(self.port), "--routes", str(self.routes_file),
             "--log", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=self.stderr)

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the registry exited with {self.proc.returncode}: "
                                     f"{self.stderr_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(accepting, timeout, f"the registry on port {self.port} to accept connections")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self.stderr.close()

    def serve(self, services: dict[str, dict[str, Any]], bindings: dict[str, dict[str, Any]] | None = None,
              *, route_only: bool = False) -> None:
        """Replace every answer, atomically: the registry reads the file on each request. ``route_only``: an older
        registry, which answers a route question without the binding however it is asked."""
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": services, "bindings": bindings or {}, "route_only": route_only}))
        os.replace(tmp, self.routes_file)

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def url(self, fmt: str = "aiobroker") -> str:
        if fmt == "consul":
            return f"http://127.0.0.1:{self.port}/v1/health/service/{{service}}?passing=true"
        return f"http://127.0.0.1:{self.port}/v1/services/{{service}}"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    proc = RegistryProcess(tmp_path_factory.mktemp("http_registry")).start()
    try:
        yield proc
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.stderr_path.read_text()
    assert "Traceback" not in proc.stderr_path.read_text(), proc.stderr_path.read_text()


@asynccontextmanager
async def opened(**options: Any) -> AsyncIterator[HttpResolver]:
    resolver = create(options)
    try:
        yield resolver
    finally:
        await resolver.aclose()


def consul_entry(service: str, address: str, port: int, *, node_address: str = "10.9.9.9",
                 weight: int | None = None, warning_weight: int = 1, instance: str | None = None,
                 service_check: str | None = None) -> dict[str, Any]:
    """An entry shaped like Consul 1.x's /v1/health/service answer (trimmed of fields the resolver ignores): the
    node's serfHealth check passing and, with ``service_check``, a check of the instance with that status."""
    svc: dict[str, Any] = {"ID": f"{service}-{port}", "Service": service, "Tags": [], "Address": address,
                           "Port": port, "Meta": None, "EnableTagOverride": False}
    if weight is not None:
        svc["Weights"] = {"Passing": weight, "Warning": warning_weight}
    if instance is not None:
        svc["Meta"] = {"broker_instance": instance, "version": "1"}
    checks = [{"Node": "node-1", "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
               "ServiceID": ""}]
    if service_check is not None:
        checks.append({"Node": "node-1", "CheckID": f"service:{service}-{port}", "Name": "tcp", "Status": service_check,
                       "ServiceID": f"{service}-{port}", "Output": f"the check says {service_check}"})
    return {"Node": {"ID": "n1", "Node": "node-1", "Address": node_address, "Datacenter": "dc1"},
            "Service": svc, "Checks": checks}


def orders_answer(**extra: Any) -> dict[str, Any]:
    return {"service": ORDERS, "targets": [{"address": "tcp://10.0.0.2:4022"}], **extra}



def binding_answer(**extra: Any) -> dict[str, Any]:
    return {"certificate": rsa_certificate(), **extra}


# --- answers ----------------------------------------------------------------------------------------------------


async def test_aiobroker_format_gives_targets_weights_priorities_instances(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": {
        "service": ORDERS, "lifetime": 30, "extension": {"ignored": True},
        "targets": [
            {"address": "tcp://10.0.0.2:4022", "weight": 2, "priority": 0, "broker_instance": "b-2"},
            {"address": "tcp://10.0.0.3:4022", "weight": 5, "priority": 0, "broker_instance": None},
            {"address": "tcp://[fd00::4]:4022", "priority": 1},
        ]}}})
    async with opened(url=registry.url()) as resolver:
        answer = await resolver.resolve_route(ORDERS)
    assert answer.service_name == ORDERS
    assert answer.targets == (
        Target(address="tcp://10.0.0.2:4022", weight=2, priority=0, broker_instance="b-2"),
        Target(address="tcp://10.0.0.3:4022", weight=5, priority=0),
        Target(address="tcp://[fd00::4]:4022", weight=1, priority=1),
    )
    assert [t.address for t in answer.preferred()] == ["tcp://10.0.0.2:4022", "tcp://10.0.0.3:4022"]
    assert answer.lifetime == 30
    assert answer.extra["lifetime_from"] == "body"
    # the name travels quoted (slashes and all) and the registry got it back whole
    assert f"127.0.0.1:{registry.port}/v1/services/%2F%2Fshop%2FOrders" in answer.source
    assert registry.requests()[-1]["path"] == "/v1/services/%2F%2Fshop%2FOrders"


async def test_consul_format_gives_addresses_ports_weights_instances(registry: RegistryProcess) -> None:
    registry.serve({"orders": {"body": [
        consul_entry("orders", "10.0.0.2", 4022, weight=3, instance="b-2"),
        consul_entry("orders", "", 4023, node_address="10.0.0.7"),  # no service address: the node's
        consul_entry("orders", "fd00::5", 4024, weight=1),
    ]}})
    async with opened(url=registry.url("consul"), format="consul", default_lifetime=45,
                      headers={"X-Consul-Token": "s3cret"}) as resolver:
        answer = await resolver.resolve_route("orders")
        described = resolver.describe()
    assert answer.targets == (
        Target(address="tcp://10.0.0.2:4022", weight=3, broker_instance="b-2"),
        Target(address="tcp://10.0.0.7:4023", weight=1),
        Target(address="tcp://[fd00::5]:4024", weight=1),
    )
    assert answer.lifetime == 45 and answer.extra["lifetime_from"] == "default_lifetime"
    sent = registry.requests()[-1]
    assert sent["path"] == "/v1/health/service/orders?passing=true"
    assert sent["headers"]["X-Consul-Token"] == "s3cret"
    # status shows which headers are sent, never their values (tokens)
    assert described["headers"] == ["X-Consul-Token"] and "s3cret" not in repr(described)
    assert described["format"] == "consul" and described["url"] == registry.url("consul")


def unfiltered_consul_url(registry: RegistryProcess) -> str:
    """Consul's health URL without ``?passing=true``: every instance comes back, whatever its checks say (as from
    a cache or proxy that kept the unfiltered answer, or a registry that ignores the filter)."""
    return registry.url("consul").removesuffix("?passing=true")


async def test_consul_format_leaves_out_instances_whose_checks_are_critical(registry: RegistryProcess) -> None:
    registry.serve({"orders": {"body": [
        consul_entry("orders", "10.0.0.2", 4022, service_check="passing"),
        consul_entry("orders", "10.0.0.3", 4022, service_check="critical"),
        consul_entry("orders", "10.0.0.4", 4022, weight=5, warning_weight=2, service_check="warning"),
        consul_entry("orders", "10.0.0.5", 4022, service_check="maintenance"),  # a status Consul may add later
    ]}})
    async with opened(url=unfiltered_consul_url(registry), format="consul") as resolver:
        answer = await resolver.resolve_route("orders")
        assert resolver.describe()["consul_include_warning"] is True
    assert registry.requests()[-1]["path"] == "/v1/health/service/orders", "no filter asked of the registry"
    # warning is a target by default, weighted by Weights.Warning, as Consul's DNS interface does
    assert answer.targets == (Target(address="tcp://10.0.0.2:4022"), Target(address="tcp://10.0.0.4:4022", weight=2))
    assert answer.extra["excluded"] == [
        "tcp://10.0.0.3:4022 (critical: service:orders-4022)",
        "tcp://10.0.0.5:4022 (maintenance: service:orders-4022)",
    ]


async def test_consul_include_warning_false_leaves_out_instances_whose_checks_warn(registry: RegistryProcess) -> None:
    registry.serve({"orders": {"body": [
        consul_entry("orders", "10.0.0.2", 4022),
        consul_entry("orders", "10.0.0.4", 4022, service_check="warning"),
        consul_entry("orders", "10.0.0.6", 4022, weight=3, warning_weight=0, service_check="passing"),
    ]}})
    async with opened(url=unfiltered_consul_url(registry), format="consul", consul_include_warning=False) as resolver:
        answer = await resolver.resolve_route("orders")
        assert resolver.describe()["consul_include_warning"] is False
    assert answer.targets == (Target(address="tcp://10.0.0.2:4022"), Target(address="tcp://10.0.0.6:4022", weight=3))
    assert answer.extra["excluded"] == ["tcp://10.0.0.4:4022 (warning: service:orders-4022; consul_include_warning is "
                                        "false)"]


async def test_consul_warning_weight_0_leaves_the_instance_out_while_it_warns(registry: RegistryProcess) -> None:
    registry.serve({"orders": {"body": [
        consul_entry("orders", "10.0.0.2", 4022),
        consul_entry("orders", "10.0.0.4", 4022, weight=3, warning_weight=0, service_check="warning"),
    ]}})
    async with opened(url=unfiltered_consul_url(registry), format="consul") as resolver:
        answer = await resolver.resolve_route("orders")
    assert answer.targets == (Target(address="tcp://10.0.0.2:4022"),)
    assert answer.extra["excluded"] == ["tcp://10.0.0.4:4022 (warning: service:orders-4022; its Weights.Warning is 0)"]


async def test_consul_instances_all_critical_is_not_found_naming_them(registry: RegistryProcess) -> None:
    registry.serve({"orders": {"body": [
        consul_entry("orders", "10.0.0.2", 4022, service_check="critical"),
        consul_entry("orders", "10.0.0.3", 4023, service_check="critical"),
    ], "headers": {"Cache-Control": "max-age=7"}}})
    async with opened(url=unfiltered_consul_url(registry), format="consul") as resolver:
        with pytest.raises(NotFound) as caught:
            await resolver.resolve_route("orders")
    assert caught.value.message == (
        f"http://127.0.0.1:{registry.port}/v1/health/service/orders lists 2 instance(s) of 'orders', none of them a "
        "target: tcp://10.0.0.2:4022 (critical: service:orders-4022); tcp://10.0.0.3:4023 (critical: "
        "service:orders-4023)")
    assert caught.value.retry_after == 7, "kept as long as an empty answer would be"


@pytest.mark.parametrize(("fmt", "body", "headers", "lifetime", "source"), [
    ("aiobroker", orders_answer(), {"Cache-Control": "public, max-age=42"}, 42, "cache-control"),
    ("aiobroker", orders_answer(), {"Cache-Control": "max-age=100", "Age": "40"}, 60, "cache-control"),
    ("aiobroker", orders_answer(lifetime=30), {"Cache-Control": "max-age=99"}, 30, "body"),
    ("aiobroker", orders_answer(), {"Cache-Control": "max-age=0"}, http_resolver.MIN_LIFETIME, "cache-control"),
    ("aiobroker", orders_answer(), {"Cache-Control": "no-cache, no-store"}, 60, "default_lifetime"),
    ("aiobroker", orders_answer(), {}, 60, "default_lifetime"),
    ("consul", [consul_entry(ORDERS, "10.0.0.2", 4022)], {"Cache-Control": "max-age=17"}, 17, "cache-control"),
], ids=["max-age", "max-age-minus-age", "body-wins", "max-age-0-floored", "no-cache-ignored", "default",
        "consul-max-age"])
async def test_lifetime_from_body_cache_control_or_default(registry: RegistryProcess, fmt: str, body: Any,
                                                           headers: dict[str, str], lifetime: float,
                                                           source: str) -> None:
    registry.serve({ORDERS: {"body": body, "headers": headers}})
    async with opened(url=registry.url(fmt), format=fmt, default_lifetime=60) as resolver:
        answer = await resolver.resolve_route(ORDERS)
    assert answer.lifetime == lifetime
    assert answer.extra["lifetime_from"] == source


# --- negative answers and errors ----------------------------------------------------------------------------


async def test_404_is_not_found_for_retry_after_or_default_lifetime(registry: RegistryProcess) -> None:
    registry.serve({"gone": {"status": 404, "body": {"error": "gone"}, "headers": {"Retry-After": "7"}}})
    async with opened(url=registry.url(), default_lifetime=25) as resolver:
        with pytest.raises(NotFound, match="404") as plain:
            await resolver.resolve_route("unknown")
        with pytest.raises(NotFound) as told:
            await resolver.resolve_route("gone")
    assert plain.value.retry_after == 25
    assert told.value.retry_after == 7


@pytest.mark.parametrize(("fmt", "body", "headers", "retry_after"), [
    ("aiobroker", {"service": ORDERS, "targets": [], "lifetime": 12}, {}, 12),
    ("consul", [], {}, 33),
    ("consul", [], {"Cache-Control": "max-age=9"}, 9),
], ids=["aiobroker-lifetime", "consul-default", "consul-max-age"])
async def test_empty_target_list_is_not_found(registry: RegistryProcess, fmt: str, body: Any,
                                              headers: dict[str, str], retry_after: float) -> None:
    registry.serve({ORDERS: {"body": body, "headers": headers}})
    async with opened(url=registry.url(fmt), format=fmt, default_lifetime=33) as resolver:
        with pytest.raises(NotFound, match="no targets") as caught:
            await resolver.resolve_route(ORDERS)
    assert caught.value.retry_after == retry_after


@pytest.mark.parametrize(("status", "retry_after_header", "retry_after"), [
    (500, None, None),
    (503, "120", 120.0),
    (503, "http-date", 120.0),
    (503, "soon", None),
    (302, None, None),
])
async def test_other_status_is_resolver_error_with_retry_after(registry: RegistryProcess, status: int,
                                                               retry_after_header: str | None,
                                                               retry_after: float | None) -> None:
    headers = {}
    if retry_after_header == "http-date":
        headers["Retry-After"] = email.utils.formatdate(time.time() + 120, usegmt=True)
    elif retry_after_header is not None:
        headers["Retry-After"] = retry_after_header
    if status == 302:
        headers["Location"] = "http://127.0.0.1:1/elsewhere"  # not followed: a redirect is not an answer
    registry.serve({ORDERS: {"status": status, "raw": "registry overloaded", "headers": headers}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_route(ORDERS)
    err = caught.value
    assert type(err) is ResolverError
    assert f"HTTP {status}" in err.message and "/v1/services/%2F%2Fshop%2FOrders" in err.message
    assert "registry overloaded" in err.message
    if retry_after is None:
        assert err.retry_after is None
    else:
        assert err.retry_after is not None and retry_after - 3 <= err.retry_after <= retry_after


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json {", "not JSON (Expecting value at character 0)"),
    ('{"service": "//shop/Orders", "targets": [', "not JSON"),
    ('{"service": "//shop/Orders", "lifetime": NaN, "targets": []}', "NaN is not a JSON number"),
    ({"raw_hex": "fffe00d8ff"}, "not JSON"),
    ({"raw_hex": "c328a1"}, "not JSON"),
    ("[" * 100_000, "not JSON (nested too deeply)"),
], ids=["garbage", "truncated", "nan", "utf16-bom-garbage", "bad-utf8", "deep"])
async def test_a_body_that_is_not_json_is_resolver_error(registry: RegistryProcess, raw: str | dict[str, str],
                                                         reason: str) -> None:
    registry.serve({ORDERS: raw if isinstance(raw, dict) else {"raw": raw}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_route(ORDERS)
    assert type(caught.value) is ResolverError
    assert reason in caught.value.message
    assert len(caught.value.message) < 500  # the body is quoted, cut to ~200 characters


@pytest.mark.parametrize(("fmt", "body", "reason"), [
    ("aiobroker", [], "must be an object with 'service' and 'targets', got an array"),
    ("aiobroker", {"service": ORDERS}, "the key 'targets' is missing"),
    ("aiobroker", {"targets": []}, "the key 'service' is missing"),
    ("aiobroker", {"service": "//shop/Other", "targets": []}, "'service' is '//shop/Other', but '//shop/Orders'"),
    ("aiobroker", {"service": ORDERS, "targets": {"address": "tcp://h:1"}}, "'targets' must be an array"),
    ("aiobroker", {"service": ORDERS, "targets": ["tcp://h:1"]}, "targets[0] must be an object, got a string"),
    ("aiobroker", {"service": ORDERS, "targets": [{"weight": 1}]}, "targets[0]: the key 'address' is missing"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "10.0.0.2:4022"}]}, "must be tcp://host:port"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:99999"}]}, "port from 1 to 65535"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": 4022}]}, "must be tcp://host:port"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:1"}, {"address": "tcp://h:2", "weight": -2}]},
     "targets[1]: target tcp://h:2: weight must be a whole number >= 1, got -2"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:1", "weight": 1.5}]}, "weight must be"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:1", "weight": True}]}, "weight must be"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:1", "priority": -1}]}, "priority must be"),
    ("aiobroker", {"service": ORDERS, "targets": [{"address": "tcp://h:1", "broker_instance": 7}]},
     "broker_instance must be a string or null"),
    ("aiobroker", {"service": ORDERS, "lifetime": -5, "targets": []}, "'lifetime' must be a number of seconds > 0"),
    ("aiobroker", {"service": ORDERS, "lifetime": "30", "targets": []}, "'lifetime' must be a number"),
    ("consul", {"Service": {}}, "an array of entries, got an object"),
    ("consul", [{"Node": {"Address": "10.0.0.1"}}], "[0].Service must be an object, got null"),
    ("consul", [{"Service": {"Address": "10.0.0.1"}}], "[0].Service.Port must be a port number"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": "4022"}}], "[0].Service.Port must be a port number"),
    ("consul", [{"Service": {"Address": "", "Port": 4022}, "Node": {"Address": ""}}], "[0]: no address"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022, "Weights": {"Passing": -1}}}],
     "weight must be a whole number >= 1, got -1"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022, "Meta": {"broker_instance": 1}}}],
     "Meta.broker_instance must be a string"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022}, "Checks": {"Status": "passing"}}],
     "[0].Checks must be an array, got an object"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022}, "Checks": ["passing"]}],
     "[0].Checks[0] must be an object, got a string"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022}, "Checks": [{"CheckID": "c"}]}],
     "[0].Checks[0].Status must be a string, got null"),
    ("consul", [{"Service": {"Address": "10.0.0.1", "Port": 4022, "Weights": {"Passing": 1, "Warning": -1}},
                 "Checks": [{"Status": "warning"}]}], "weight must be a whole number >= 1, got -1"),
])
async def test_a_body_of_the_wrong_shape_is_resolver_error(registry: RegistryProcess, fmt: str, body: Any,
                                                           reason: str) -> None:
    registry.serve({ORDERS: {"body": body}})
    async with opened(url=registry.url(fmt), format=fmt) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_route(ORDERS)
    assert type(caught.value) is ResolverError
    assert f"not in the {fmt} format" in caught.value.message
    assert reason in caught.value.message
    assert "body: " in caught.value.message


async def test_a_long_bad_body_is_quoted_to_about_200_characters(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": {"service": ORDERS, "targets": 5, "padding": "p" * 5000}}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError, match=r"'targets' must be an array.*\(cut\)") as caught:
            await resolver.resolve_route(ORDERS)
    assert caught.value.message.count("p") < 250


async def test_an_answer_over_the_size_limit_is_refused(registry: RegistryProcess,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_resolver, "MAX_BODY_BYTES", 1000)
    registry.serve({ORDERS: {"raw_size": 5000}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError, match="over the limit of 1000"):
            await resolver.resolve_route(ORDERS)


# --- time-outs and connections --------------------------------------------------------------------------------


async def test_a_slow_answer_is_a_read_timeout_within_about_read_timeout(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"delay": 5, "body": orders_answer()}})
    async with opened(url=registry.url(), read_timeout=0.5) as resolver:
        started = time.monotonic()
        with pytest.raises(ResolverError, match=r"read time-out: .* sent nothing for read_timeout = 0.5s"):
            await resolver.resolve_route(ORDERS)
        assert time.monotonic() - started < 2.0


async def test_a_trickling_answer_is_bounded_by_connect_plus_read_timeout(registry: RegistryProcess) -> None:
    """Each byte comes within read_timeout, so only the bound on the whole request stops it."""
    registry.serve({ORDERS: {"trickle": 0.2, "body": orders_answer()}})
    async with opened(url=registry.url(), connect_timeout=0.3, read_timeout=0.5) as resolver:
        started = time.monotonic()
        with pytest.raises(ResolverError, match=r"did not answer in full within connect_timeout \+ read_timeout"):
            await resolver.resolve_route(ORDERS)
        assert time.monotonic() - started < 2.0


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
async def test_no_connection_in_time_is_a_connect_timeout() -> None:
    """A listener that never accepts, its accept queue full: the kernel drops further SYNs, so connect hangs."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            s = socket.socket()
            fillers.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        async with opened(url=f"http://127.0.0.1:{port}/{{service}}", connect_timeout=0.3) as resolver:
            started = time.monotonic()
            with pytest.raises(ResolverError, match=r"connect time-out: no connection to 127.0.0.1:\d+ within "
                                                    r"connect_timeout = 0.3s"):
                await resolver.resolve_route(ORDERS)
            assert time.monotonic() - started < 2.0
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_nothing_listening_is_connection_refused() -> None:
    port = free_port()  # bound and released: nothing listens there
    async with opened(url=f"http://127.0.0.1:{port}/v1/services/{{service}}") as resolver:
        with pytest.raises(ResolverError, match=f"connection refused by 127.0.0.1:{port}") as caught:
            await resolver.resolve_route(ORDERS)
    assert type(caught.value) is ResolverError
    assert caught.value.__cause__ is not None  # httpx's error, chained


async def test_a_password_in_the_url_is_shown_nowhere() -> None:
    port = free_port()
    async with opened(url=f"http://aiobroker:pw-s3cret@127.0.0.1:{port}/{{service}}") as resolver:
        assert resolver.describe()["url"] == f"http://aiobroker:***@127.0.0.1:{port}/{{service}}"
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_route(ORDERS)
    assert "pw-s3cret" not in caught.value.message
    assert f"aiobroker:***@127.0.0.1:{port}/%2F%2Fshop%2FOrders" in caught.value.message
    # what diagnose says is asked: the URL for the service, the password left out here too
    assert resolver.asks(ORDERS) == (
        f"the http resolver at http://aiobroker:***@127.0.0.1:{port}/%2F%2Fshop%2FOrders (aiobroker format)")


async def test_a_registry_hanging_up_is_resolver_error(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"hang_up": True}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError, match="broke off or garbled the HTTP exchange"):
            await resolver.resolve_route(ORDERS)


# --- over time ------------------------------------------------------------------------------------------------


async def test_a_changed_answer_is_seen_on_the_next_call(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}})
    async with opened(url=registry.url()) as resolver:
        first = await resolver.resolve_route(ORDERS)
        registry.serve({ORDERS: {"body": {"service": ORDERS, "targets": [{"address": "tcp://10.0.0.9:5000"}]}}})
        second = await resolver.resolve_route(ORDERS)
        registry.serve({})
        with pytest.raises(NotFound):
            await resolver.resolve_route(ORDERS)
    assert [t.address for t in first.targets] == ["tcp://10.0.0.2:4022"]
    assert [t.address for t in second.targets] == ["tcp://10.0.0.9:5000"]


async def test_questions_about_different_services_do_not_wait_for_each_other(registry: RegistryProcess) -> None:
    registry.serve({"slow": {"delay": 1.0, "body": {"service": "slow", "targets": [{"address": "tcp://h:1"}]}},
                    "fast": {"body": {"service": "fast", "targets": [{"address": "tcp://h:2"}]}}})
    async with opened(url=registry.url()) as resolver:
        done: dict[str, float] = {}
        started = time.monotonic()

        async def ask(name: str) -> None:
            await resolver.resolve_route(name)
            done[name] = time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "slow")
            tg.start_soon(ask, "fast")
    assert done["fast"] < done["slow"]
    assert done["fast"] < 0.9


async def test_a_closed_resolver_raises_resolver_error(registry: RegistryProcess) -> None:
    resolver = create({"url": registry.url()})
    await resolver.aclose()
    await resolver.aclose()  # twice is harmless
    with pytest.raises(ResolverError, match="closed"):
        await resolver.resolve_route(ORDERS)


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "key"), [
    ({}, "url is required"),
    ({"url": "http://127.0.0.1:1/services"}, "url must be a string containing {service}"),
    ({"url": 5}, "url must be a string"),
    ({"url": "ftp://127.0.0.1/{service}"}, "must be http:// or https://"),
    ({"url": "/v1/{service}"}, "must be http:// or https://"),
    ({"url": "http://127.0.0.1:1/{service}", "format": "xml"}, "format must be one of aiobroker, consul"),
    ({"url": "http://127.0.0.1:1/{service}", "connect_timeout": 0}, "connect_timeout must be a number"),
    ({"url": "http://127.0.0.1:1/{service}", "read_timeout": -1}, "read_timeout must be a number"),
    ({"url": "http://127.0.0.1:1/{service}", "read_timeout": "5"}, "read_timeout must be a number"),
    ({"url": "http://127.0.0.1:1/{service}", "read_timeout": True}, "read_timeout must be a number"),
    ({"url": "http://127.0.0.1:1/{service}", "default_lifetime": float("inf")}, "default_lifetime must be"),
    ({"url": "http://127.0.0.1:1/{service}", "headers": ["X-Token: 1"]}, "headers must be a table"),
    ({"url": "http://127.0.0.1:1/{service}", "headers": {"X-Token": 1}}, "headers.X-Token must be a string"),
    ({"url": "http://127.0.0.1:1/{service}", "headers": {"X-Token": "a\r\nb"}}, "headers.X-Token must be"),
    ({"url": "http://127.0.0.1:1/{service}", "headers": {"Bad Name": "x"}}, "not a valid header name"),
    ({"url": "http://127.0.0.1:1/{service}", "timeout": 5}, "unknown key(s) for kind 'http': timeout"),
    ({"url": "http://127.0.0.1:1/{service}", "binding_url": "http://127.0.0.1:1/binding"},
     "binding_url must be a string containing {service}"),
    ({"url": "http://127.0.0.1:1/{service}", "binding_url": "ftp://127.0.0.1/{service}"},
     "binding_url 'ftp://127.0.0.1/{service}' must be http:// or https://"),
    ({"url": "http://127.0.0.1:1/{service}", "format": "consul", "binding_url": "http://127.0.0.1:1/{service}"},
     "binding_url is for the aiobroker format"),
    ({"url": "http://127.0.0.1:1/{service}", "consul_include_warning": False},
     "consul_include_warning is for the consul format (format = \"consul\"); this resolver's format is 'aiobroker'"),
    ({"url": "http://127.0.0.1:1/{service}", "format": "consul", "consul_include_warning": "no"},
     "consul_include_warning must be true or false, got 'no'"),
    ({"url": "http://127.0.0.1:1/{service}", "max_open_questions": 0},
     "max_open_questions must be a whole number from 1 to 1000, got 0"),
    ({"url": "http://127.0.0.1:1/{service}", "max_open_questions": 2.5}, "max_open_questions must be a whole"),
])
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create(options)
    assert key in caught.value.message


async def test_loaded_through_the_entry_point(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}})
    resolver = load_resolver("http", {"url": registry.url(), "read_timeout": 3})
    try:
        assert isinstance(resolver, HttpResolver)
        assert resolver.describe() == {
            "resolver": "http", "url": registry.url(), "binding_url": registry.url().replace("{service}",
                                                                                          "{service}/binding"),
            "format": "aiobroker", "connect_timeout": 2.0, "read_timeout": 3.0, "max_open_questions": 64,
            "default_lifetime": 60.0, "headers": []}
        answer = await resolver.resolve_route(ORDERS)
    finally:
        await resolver.aclose()
    assert answer.targets == (Target(address="tcp://10.0.0.2:4022"),)
    assert answer.lifetime == 60


# --- remote service bindings ---------------------------------------------------------------------------------


async def test_a_binding_answer_carries_the_certificate_and_its_options(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}},
                   {ORDERS: {"body": binding_answer(anonymous=True, identity="shop-frontend", lifetime=45,
                                                    service=ORDERS, extension={"ignored": True})}})
    async with opened(url=registry.url(), default_lifetime=60) as resolver:
        answer = await resolver.resolve_binding(ORDERS)
        route = await resolver.resolve_route(ORDERS)  # the same service's route: the other endpoint
    assert answer == BindingAnswer(service_name=ORDERS, certificate=rsa_certificate(), anonymous=True,
                                   identity="shop-frontend", lifetime=45, source=answer.source)
    # the default binding URL: the route URL with /binding appended to its path, the name quoted as for routes
    assert answer.source == f"http://127.0.0.1:{registry.port}/v1/services/%2F%2Fshop%2FOrders/binding"
    assert [r["path"] for r in registry.requests()[-2:]] == ["/v1/services/%2F%2Fshop%2FOrders/binding",
                                                            "/v1/services/%2F%2Fshop%2FOrders"]
    assert route.targets == (Target(address="tcp://10.0.0.2:4022"),)


async def test_a_binding_answer_with_only_a_certificate_takes_the_defaults(registry: RegistryProcess) -> None:
    """Text around the certificate (as ``openssl`` writes it) is left out of the answer: only the PEM block."""
    registry.serve({}, {ORDERS: {"body": {"certificate": "Bag Attributes\n    friendlyName: x\n" + rsa_certificate()}}})
    async with opened(url=registry.url(), default_lifetime=33) as resolver:
        answer = await resolver.resolve_binding(ORDERS)
    assert (answer.certificate, answer.anonymous, answer.identity, answer.lifetime) == (rsa_certificate(), False, None,
                                                                                         33)


@pytest.mark.parametrize(("url", "binding_url"), [
    ("http://reg:8080/v1/services/{service}", "http://reg:8080/v1/services/{service}/binding"),
    ("http://reg/v1/services/{service}/?dc=eu", "http://reg/v1/services/{service}/binding?dc=eu"),
    ("https://u:pw@reg/find?name={service}", "https://u:***@reg/find/binding?name={service}"),
], ids=["plain", "trailing-slash-and-query", "service-in-query-password-hidden"])
async def test_the_default_binding_url_appends_binding_to_the_path(url: str, binding_url: str) -> None:
    async with opened(url=url) as resolver:
        assert resolver.describe()["binding_url"] == binding_url


async def test_binding_url_names_another_endpoint(registry: RegistryProcess) -> None:
    registry.serve({}, {ORDERS: {"body": binding_answer()}})
    binding_url = f"http://127.0.0.1:{registry.port}/v1/bindings/{{service}}?dc=1"
    async with opened(url=registry.url(), binding_url=binding_url) as resolver:
        answer = await resolver.resolve_binding(ORDERS)
        assert resolver.describe()["binding_url"] == binding_url
    assert answer.certificate == rsa_certificate()
    assert registry.requests()[-1]["path"] == "/v1/bindings/%2F%2Fshop%2FOrders?dc=1"


@pytest.mark.parametrize(("body", "headers", "lifetime"), [
    (binding_answer(lifetime=30), {"Cache-Control": "max-age=99"}, 30),
    (binding_answer(), {"Cache-Control": "public, max-age=42"}, 42),
    (binding_answer(), {"Cache-Control": "max-age=100", "Age": "40"}, 60),
    (binding_answer(), {"Cache-Control": "max-age=0"}, http_resolver.MIN_LIFETIME),
    (binding_answer(), {}, 25),
], ids=["body-wins", "max-age", "max-age-minus-age", "max-age-0-floored", "default"])
async def test_a_binding_lifetime_comes_from_body_cache_control_or_default(
        registry: RegistryProcess, body: dict[str, Any], headers: dict[str, str], lifetime: float) -> None:
    registry.serve({}, {ORDERS: {"body": body, "headers": headers}})
    async with opened(url=registry.url(), default_lifetime=25) as resolver:
        answer = await resolver.resolve_binding(ORDERS)
    assert answer.lifetime == lifetime


async def test_404_for_a_binding_is_not_found_even_when_the_route_exists(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}, "gone": {"body": orders_answer()}},
                   {"gone": {"status": 404, "body": {"error": "revoked"}, "headers": {"Retry-After": "7"}}})
    async with opened(url=registry.url(), default_lifetime=25) as resolver:
        with pytest.raises(NotFound) as plain:
            await resolver.resolve_binding(ORDERS)
        with pytest.raises(NotFound) as told:
            await resolver.resolve_binding("gone")
        assert (await resolver.resolve_route(ORDERS)).targets  # routes are not affected
    assert "answered 404: the registry has no binding for service '//shop/Orders'" in plain.value.message
    assert plain.value.retry_after == 25 and told.value.retry_after == 7


@pytest.mark.parametrize(("spec", "reason"), [
    ({"status": 503, "raw": "registry overloaded", "headers": {"Retry-After": "120"}},
     "answered HTTP 503 Service Unavailable: 'registry overloaded'"),
    ({"raw": "not json {"}, "the answer is not JSON"),
    ({"hang_up": True}, "broke off or garbled the HTTP exchange"),
], ids=["503", "garbage", "hang-up"])
async def test_a_failed_binding_question_is_resolver_error(registry: RegistryProcess, spec: dict[str, Any],
                                                           reason: str) -> None:
    registry.serve({}, {ORDERS: spec})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_binding(ORDERS)
    assert type(caught.value) is ResolverError
    assert reason in caught.value.message and "/v1/services/%2F%2Fshop%2FOrders/binding" in caught.value.message
    if "Retry-After" in spec.get("headers", {}):
        assert caught.value.retry_after == 120


async def test_a_slow_binding_answer_is_a_read_timeout(registry: RegistryProcess) -> None:
    registry.serve({}, {ORDERS: {"delay": 5, "body": binding_answer()}})
    async with opened(url=registry.url(), read_timeout=0.5) as resolver:
        started = time.monotonic()
        with pytest.raises(ResolverError, match=r"read time-out: .*/binding sent nothing for read_timeout = 0.5s"):
            await resolver.resolve_binding(ORDERS)
        assert time.monotonic() - started < 2.0


BAD_CERTIFICATES = {
    "no PEM block": ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A", "no -----BEGIN CERTIFICATE----- line"),
    "bad base64": ("-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n",
                   "the certificate does not parse"),
    "not a certificate inside": ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                 "the certificate does not parse"),
    "cut short": (rsa_certificate()[:300] + "\n-----END CERTIFICATE-----\n", "the certificate does not parse"),
    "RSA 1024": (rsa_certificate("weak", 1024), "an RSA key of 1024 bits, too small for dialog security"),
}


@pytest.mark.parametrize(("pem", "reason"), BAD_CERTIFICATES.values(), ids=BAD_CERTIFICATES.keys())
async def test_a_certificate_that_does_not_parse_or_cannot_be_used_is_resolver_error_naming_the_service(
        registry: RegistryProcess, pem: str, reason: str) -> None:
    registry.serve({}, {ORDERS: {"body": {"certificate": pem}}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_binding(ORDERS)
    message = caught.value.message
    assert type(caught.value) is ResolverError
    url = f"http://127.0.0.1:{registry.port}/v1/services/%2F%2Fshop%2FOrders/binding"
    assert message.startswith(f"{url}: the binding answer for service '//shop/Orders': "), message
    assert reason in message, message
    assert len(message) < 600, message


@pytest.mark.parametrize(("body", "reason"), [
    ([rsa_certificate()], "must be an object with 'certificate', got an array"),
    ({"anonymous": True}, "the key 'certificate' is missing"),
    ({"certificate": None}, "'certificate' must be a string (PEM), got null"),
    (binding_answer(anonymous="yes"), "'anonymous' must be true or false, got a string"),
    (binding_answer(identity=""), "'identity': identity name must be a non-empty string"),
    (binding_answer(identity=7), "'identity': identity name must be a non-empty string"),
    (binding_answer(lifetime=0), "'lifetime' must be a number of seconds > 0, got 0"),
    (binding_answer(lifetime="60"), "'lifetime' must be a number of seconds > 0"),
    (binding_answer(service="//shop/Other"), "'service' is '//shop/Other', but '//shop/Orders' was asked for"),
], ids=["array", "no-certificate", "null-certificate", "anonymous-string", "identity-empty", "identity-number",
        "lifetime-0", "lifetime-string", "wrong-service"])
async def test_a_binding_answer_of_the_wrong_shape_is_resolver_error(registry: RegistryProcess, body: Any,
                                                                     reason: str) -> None:
    registry.serve({}, {ORDERS: {"body": body}})
    async with opened(url=registry.url()) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_binding(ORDERS)
    assert type(caught.value) is ResolverError
    assert "the binding answer for '//shop/Orders' is not in the aiobroker format" in caught.value.message
    assert reason in caught.value.message, caught.value.message


async def test_the_consul_format_answers_routes_only(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": [consul_entry(ORDERS, "10.0.0.2", 4022)]}}, {ORDERS: {"body": binding_answer()}})
    before = len(registry.requests())
    async with opened(url=registry.url("consul"), format="consul", default_lifetime=40) as resolver:
        with pytest.raises(NotFound, match="consul format answers routes only") as caught:
            await resolver.resolve_binding(ORDERS)
        assert resolver.describe()["binding_url"] is None
    assert caught.value.retry_after == 40
    assert len(registry.requests()) == before  # nothing was asked


async def test_binding_questions_share_the_bound_on_open_questions(registry: RegistryProcess,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With room for one open question, a binding question waits for a slow route question: one fetch path."""
    monkeypatch.setattr(http_config, "MAX_OPEN_QUESTIONS", 1)  # the default the [resolver] table is checked against
    registry.serve({"slow": {"delay": 0.8, "body": {"service": "slow", "targets": [{"address": "tcp://h:1"}]}}},
                   {ORDERS: {"body": binding_answer()}})
    async with opened(url=registry.url()) as resolver:
        done: dict[str, float] = {}
        started = time.monotonic()

        async def route() -> None:
            await resolver.resolve_route("slow")
            done["route"] = time.monotonic() - started

        async def binding() -> None:
            await anyio.sleep(0.2)  # the route question is in flight by then
            await resolver.resolve_binding(ORDERS)
            done["binding"] = time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(route)
            tg.start_soon(binding)
    assert done["binding"] >= done["route"] >= 0.7, done


async def test_a_closed_resolver_refuses_binding_questions(registry: RegistryProcess) -> None:
    resolver = create({"url": registry.url()})
    await resolver.aclose()
    with pytest.raises(ResolverError, match="closed"):
        await resolver.resolve_binding(ORDERS)


# --- both questions in one round trip ------------------------------------------------------------------------------


def ask_header(request: dict[str, Any]) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == "aiobroker-ask"), None)


async def test_together_one_get_carries_both_questions_and_its_answer_both_results(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"body": orders_answer(lifetime=40)}},
                   {ORDERS: {"body": binding_answer(anonymous=True, identity="shop-frontend")}})
    before = len(registry.requests())
    async with opened(url=registry.url(), default_lifetime=60) as resolver:
        answers = await resolver.resolve_together(ORDERS)
        assert resolver.answers_together is True
    asked = registry.requests()[before:]
    assert [(r["path"], ask_header(r)) for r in asked] == [("/v1/services/%2F%2Fshop%2FOrders", "route, binding")]
    assert isinstance(answers.route, RouteAnswer) and answers.route.targets == (Target(address="tcp://10.0.0.2:4022"),)
    assert answers.binding == BindingAnswer(service_name=ORDERS, certificate=rsa_certificate(), anonymous=True,
                                            identity="shop-frontend", lifetime=40, source=answers.route.source)


async def test_together_a_null_binding_is_not_found_and_a_bad_one_an_error_beside_a_good_route(
    registry: RegistryProcess,
) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}})  # no binding: the registry answers "binding": null
    async with opened(url=registry.url()) as resolver:
        answers = await resolver.resolve_together(ORDERS)
        assert isinstance(answers.route, RouteAnswer)
        assert isinstance(answers.binding, NotFound) and "no binding for service" in answers.binding.message
        registry.serve({ORDERS: {"body": orders_answer()}}, {ORDERS: {"body": {"certificate": "not a PEM"}}})
        answers = await resolver.resolve_together(ORDERS)
        assert isinstance(answers.route, RouteAnswer)
        assert type(answers.binding) is ResolverError and "'binding' member" in answers.binding.message


async def test_together_a_failed_route_question_leaves_the_binding_unanswered(registry: RegistryProcess) -> None:
    registry.serve({ORDERS: {"status": 503, "raw": "overloaded"}})
    async with opened(url=registry.url()) as resolver:
        answers = await resolver.resolve_together(ORDERS)
    assert type(answers.route) is ResolverError and "503" in answers.route.message
    assert answers.binding is None, "no word about the binding: the node asks for it once the route is known"


async def test_together_an_older_registry_is_told_by_the_missing_member_then_asked_both_urls_at_once(
    registry: RegistryProcess,
) -> None:
    registry.serve({ORDERS: {"body": orders_answer()}}, {ORDERS: {"body": binding_answer()}}, route_only=True)
    async with opened(url=registry.url()) as resolver:
        before = len(registry.requests())
        first = await resolver.resolve_together(ORDERS)
        assert isinstance(first.route, RouteAnswer) and first.binding is None, first
        assert resolver.answers_together is False
        assert [r["path"] for r in registry.requests()[before:]] == ["/v1/services/%2F%2Fshop%2FOrders"]
        before = len(registry.requests())
        second = await resolver.resolve_together(ORDERS)
        assert isinstance(second.route, RouteAnswer) and isinstance(second.binding, BindingAnswer), second
        assert sorted(r["path"] for r in registry.requests()[before:]) == [
            "/v1/services/%2F%2Fshop%2FOrders", "/v1/services/%2F%2Fshop%2FOrders/binding"]
        # upgraded meanwhile: its answers carry the member again, and one GET does for both once more
        registry.serve({ORDERS: {"body": orders_answer()}}, {ORDERS: {"body": binding_answer()}})
        await resolver.resolve_together(ORDERS)
        assert resolver.answers_together is True
        before = len(registry.requests())
        third = await resolver.resolve_together(ORDERS)
        assert isinstance(third.binding, BindingAnswer)
        assert [r["path"] for r in registry.requests()[before:]] == ["/v1/services/%2F%2Fshop%2FOrders"]


def lean_clients(resolver: HttpResolver) -> list[Any]:
    """The resolver's lean clients, one per question slot made (plain http questions go through them)."""
    return [slot.lean for slot in resolver._clients.made]


async def test_open_questions_are_bounded_and_their_connections_kept_for_the_next(registry: RegistryProcess) -> None:
    """64 questions at once, three times, with room for 8 open: 8 connections, every one kept alive and reused."""
    registry.serve({f"//svc/{i}": {"body": {"service": f"//svc/{i}", "targets": [{"address": "tcp://10.0.0.2:4022"}]}}
                    for i in range(64)})
    async with opened(url=registry.url(), max_open_questions=8) as resolver:
        opened_most = [0]

        async def ask(name: str) -> None:
            await resolver.resolve_together(name)
            opened_most[0] = max(opened_most[0], len(lean_clients(resolver)))

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for i in range(64):
                    tg.start_soon(ask, f"//svc/{i}")
        kept = lean_clients(resolver)
        assert opened_most[0] <= 8, opened_most
        assert len(kept) == 8 and all(c.connections_made == 1 for c in kept), [c.connections_made for c in kept]
        assert sum(c.requests_on_connection for c in kept) == 192  # every question on one of the 8
