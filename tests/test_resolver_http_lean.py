"""The http resolver's lean HTTP/1.1 client (resolvers/http_lean.py) against a scripted HTTP server on 127.0.0.1:
what a real registry's connection can do that tests/http_registry.py does not (drop a kept connection, answer in
chunks, hang, garble its status line), and which questions take the lean client and which stay with httpx.
The rest of the resolver's behaviour goes through the lean client in tests/test_resolver_http.py."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import httpx
import pytest

from aiobroker.resolver import ResolverError, RouteAnswer, Target
from resolvers.http import HttpResolver, create

pytestmark = pytest.mark.anyio

ORDERS = "//shop/Orders"
ANSWER = json.dumps({"service": ORDERS, "targets": [{"address": "tcp://10.0.0.2:4022"}]}).encode()


def ok(body: bytes = ANSWER, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


#: what the server does with a request: the bytes to answer (None: answer nothing and hang), and whether to close
#: the connection after them (None: keep it open and send nothing more)
Reply = tuple[bytes | None, bool | None]


@dataclass
class ScriptedServer:
    """A TCP server on 127.0.0.1 that reads each request's head and answers with ``script(n)`` for the n-th request
    (from 0, over all connections); it records which connection each request came on."""

    script: Callable[[int], Reply]
    port: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  #: (connection number, request head)
    connections: int = 0
    closed: int = 0  #: connections the server has closed

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        number = self.connections
        self.connections += 1
        try:
            await self._serve(stream, number)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self.closed += 1

    async def _serve(self, stream: anyio.abc.SocketStream, number: int) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                try:
                    buffer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            self.requests.append((number, head))
            data, close = self.script(len(self.requests) - 1)
            if data is None:
                await anyio.sleep_forever()  # hung: until the test ends
            assert data is not None
            await stream.send(data)
            if close is None:
                await anyio.sleep_forever()  # hung mid-answer: until the test ends
            if close:
                return


@asynccontextmanager
async def serving(script: Callable[[int], Reply]) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(script)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def resolver_for(server: ScriptedServer, **options: object) -> AsyncIterator[HttpResolver]:
    resolver = create({"url": f"http://127.0.0.1:{server.port}/v1/services/{{service}}", **options})
    try:
        yield resolver
    finally:
        await resolver.aclose()


def lean_requests(resolver: HttpResolver) -> int:
    """Questions the resolver's lean clients sent (on their current connections)."""
    return sum(slot.lean.requests_on_connection for slot in resolver._clients.made)


async def test_a_kept_connection_carries_the_next_questions() -> None:
    async with serving(lambda n: (ok(), False)) as server, resolver_for(server) as resolver:
        for _ in range(3):
            answer = await resolver.resolve_route(ORDERS)
            assert answer.targets == (Target(address="tcp://10.0.0.2:4022"),)
        assert lean_requests(resolver) == 3
    assert server.connections == 1 and [c for c, _ in server.requests] == [0, 0, 0]
    head = server.requests[0][1].decode()
    assert head.startswith("GET /v1/services/%2F%2Fshop%2FOrders HTTP/1.1\r\n"), head
    assert f"Host: 127.0.0.1:{server.port}" in head and "Aiobroker-Ask: route" in head


async def test_a_connection_the_registry_closed_while_idle_is_replaced_and_the_question_asked_again() -> None:
    """The registry drops each connection after answering, without saying so (no ``Connection: close``), as a
    server does when its keep-alive time-out ends: the next question finds the kept connection closed."""
    async with serving(lambda n: (ok(), True)) as server, resolver_for(server) as resolver:
        for _ in range(3):
            assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
            await wait_until(lambda: server.closed == len(server.requests))  # closed by the server, kept by the node
    assert server.connections == 3 and [c for c, _ in server.requests] == [0, 1, 2]


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.01)


async def test_a_chunked_answer_is_read_whole() -> None:
    chunks = [ANSWER[:7], ANSWER[7:30], ANSWER[30:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with serving(lambda n: (reply, False)) as server, resolver_for(server) as resolver:
        first = await resolver.resolve_route(ORDERS)
        second = await resolver.resolve_route(ORDERS)  # the connection kept after a chunked answer
        assert lean_requests(resolver) == 2
    assert first.targets == second.targets == (Target(address="tcp://10.0.0.2:4022"),)
    assert server.connections == 1


async def test_a_hung_registry_is_a_read_timeout_within_about_read_timeout() -> None:
    async with serving(lambda n: (None, False)) as server, resolver_for(server, read_timeout=0.3) as resolver:
        started = time.monotonic()
        with pytest.raises(ResolverError, match=r"read time-out: http://127.0.0.1:\d+/v1/services/%2F%2Fshop%2FOrders "
                                                r"sent nothing for read_timeout = 0.3s"):
            await resolver.resolve_route(ORDERS)
        assert time.monotonic() - started < 2.0
        assert lean_requests(resolver) == 1


@pytest.mark.parametrize("reply", [b"SPDY/9 banana\r\n\r\n", b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"service\""],
                         ids=["not-http", "bad-status", "cut-short"])
async def test_a_garbled_or_cut_answer_is_resolver_error_and_the_next_question_gets_a_new_connection(
        reply: bytes) -> None:
    script: Callable[[int], Reply] = lambda n: (reply, True) if n == 0 else (ok(), False)  # noqa: E731
    async with serving(script) as server, resolver_for(server) as resolver:
        with pytest.raises(ResolverError, match="the registry broke off or garbled the HTTP exchange") as caught:
            await resolver.resolve_route(ORDERS)
        assert "/v1/services/%2F%2Fshop%2FOrders" in caught.value.message
        assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
    assert [c for c, _ in server.requests] == [0, 1]


async def test_a_registry_that_stops_mid_answer_is_a_read_timeout_and_its_connection_is_not_kept() -> None:
    cut = ok()[:-10]
    script: Callable[[int], Reply] = lambda n: (cut, None) if n == 0 else (ok(), False)  # noqa: E731
    async with serving(script) as server, resolver_for(server, read_timeout=0.3) as resolver:
        with pytest.raises(ResolverError, match="read time-out: .* sent nothing for read_timeout = 0.3s"):
            await resolver.resolve_route(ORDERS)
        assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
    assert [c for c, _ in server.requests] == [0, 1]


async def test_a_redirect_is_not_followed_and_the_error_says_where_it_pointed() -> None:
    reply = (b"HTTP/1.1 301 Moved Permanently\r\nLocation: http://127.0.0.1:1/v2/services/x\r\n"
             b"Content-Length: 5\r\n\r\nmoved")
    async with serving(lambda n: (reply, False)) as server, resolver_for(server) as resolver:
        with pytest.raises(ResolverError) as caught:
            await resolver.resolve_route(ORDERS)
    assert caught.value.message == (
        f"http://127.0.0.1:{server.port}/v1/services/%2F%2Fshop%2FOrders answered HTTP 301 Moved Permanently: 'moved' "
        "(redirects are not followed: set the resolver's url to where it points, "
        "Location: http://127.0.0.1:1/v2/services/x)")
    assert len(server.requests) == 1


async def test_an_error_answer_cut_to_its_snippet_does_not_leave_its_rest_on_the_kept_connection() -> None:
    big = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000
    script: Callable[[int], Reply] = lambda n: (big, False) if n == 0 else (ok(), False)  # noqa: E731
    async with serving(script) as server, resolver_for(server) as resolver:
        with pytest.raises(ResolverError, match="answered HTTP 503"):
            await resolver.resolve_route(ORDERS)
        assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
    assert [c for c, _ in server.requests] == [0, 1], "the rest of the 503's body was not read as the next answer"


async def test_https_and_headers_the_lean_client_does_not_handle_stay_with_httpx() -> None:
    """An https URL goes through httpx (TLS; here the handshake with a plain server fails, as it says), and so does
    a plain one when the user's headers set Accept-Encoding; neither touches the lean client."""
    async with serving(lambda n: (ok(), False)) as server:
        resolver = create({"url": f"https://127.0.0.1:{server.port}/v1/services/{{service}}", "connect_timeout": 1})
        try:
            with pytest.raises(ResolverError, match=rf"127.0.0.1:{server.port}"):
                await resolver.resolve_route(ORDERS)
            assert lean_requests(resolver) == 0
        finally:
            await resolver.aclose()
        async with resolver_for(server, headers={"Accept-Encoding": "gzip"}) as resolver:
            assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
            assert lean_requests(resolver) == 0
        assert "Accept-Encoding: gzip" in server.requests[-1][1].decode()


async def test_closing_the_resolver_ends_a_question_in_flight_saying_so() -> None:
    async with serving(lambda n: (None, False)) as server:
        resolver = create({"url": f"http://127.0.0.1:{server.port}/v1/services/{{service}}"})
        said: list[str] = []

        async def ask() -> None:
            with pytest.raises(ResolverError) as caught:
                await resolver.resolve_route(ORDERS)
            said.append(caught.value.message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await wait_until(lambda: len(server.requests) == 1)  # the question is at the hung registry
            await resolver.aclose()
    assert said == [f"the http resolver was closed while asking http://127.0.0.1:{server.port}"
                    "/v1/services/%2F%2Fshop%2FOrders"]


async def test_a_registry_that_reads_nothing_is_a_write_timeout_within_about_read_timeout() -> None:
    """A request the socket cannot take whole (16 MB of header, to a registry that never reads: a listening socket
    with a small receive buffer whose connections are never accepted) is waited for within read_timeout, then the
    question ends saying so: it is not left in a buffer to fail later as a read time-out."""
    import socket

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the connection it holds
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        resolver = create({"url": f"http://127.0.0.1:{port}/v1/services/{{service}}", "read_timeout": 0.3,
                           "headers": {"X-Padding": "x" * (16 << 20)}})
        try:
            started = time.monotonic()
            with pytest.raises(ResolverError, match=rf"write time-out: could not send the request to 127.0.0.1:{port}"
                                                    r" within read_timeout = 0.3s"):
                await resolver.resolve_route(ORDERS)
            assert time.monotonic() - started < 2.0
            assert lean_requests(resolver) == 1
        finally:
            await resolver.aclose()


async def test_a_registry_name_with_several_addresses_uses_the_first_that_connects(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As anyio.connect_tcp: a name's addresses are tried (the next one when the last is refused or late) and the
    first connection made is used; when every address refuses, the error says the connection was refused."""
    import socket

    closed = free_port()
    addresses: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        assert host == "registry.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(anyio, "getaddrinfo", getaddrinfo)
    async with serving(lambda n: (ok(), False)) as server:
        addresses[:] = ["127.0.0.2", "127.0.0.1"]  # nothing listens on the server's port at 127.0.0.2
        resolver = create({"url": f"http://registry.test:{server.port}/v1/services/{{service}}"})
        try:
            assert isinstance(await resolver.resolve_route(ORDERS), RouteAnswer)
        finally:
            await resolver.aclose()
        assert server.connections == 1
    resolver = create({"url": f"http://registry.test:{closed}/v1/services/{{service}}"})
    try:
        with pytest.raises(ResolverError, match=f"connection refused by registry.test:{closed}"):
            await resolver.resolve_route(ORDERS)
    finally:
        await resolver.aclose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("template", [
    "http://127.0.0.1:8500/v1/services/{service}",
    "http://reg.example/v1/health/service/{service}?passing=true&dc={service}",
    "http://user:p%40ss@reg.example:8080/a/{service}/binding#frag",
    "http://reg.example/{service}/../up",
    "http://{service}.reg.example/v1",  # in the host: httpx parses each URL whole
    "http://reg.example/v1#{service}",  # in the fragment: likewise
])
@pytest.mark.parametrize("name", ["//shop/Orders", "a b/ü?#&%", ".", "..", "...", "x" * 5000, "ü" * 12000, "svc.v2~x_y-z"])
def test_a_url_template_parsed_once_gives_the_url_httpx_gives_for_the_whole(template: str, name: str) -> None:
    """UrlTemplate joins the parts around ``{service}`` instead of parsing each question's URL: what it gives must
    be what httpx makes of the whole URL (path normalised, percent-escapes, credentials), for any name."""
    from resolvers.http_formats import UrlTemplate, origin_lines, redact, url_for

    try:
        url = url_for(template, name)
    except httpx.InvalidURL as exc:
        with pytest.raises(httpx.InvalidURL, match=str(exc)):
            UrlTemplate(template).asked(name)
        return
    asked = UrlTemplate(template).asked(name)
    assert (asked.scheme, asked.host, asked.port, asked.raw_path, asked.origin_lines, asked.shown) == (
        url.scheme, url.host, url.port, url.raw_path, origin_lines(url), redact(url))
