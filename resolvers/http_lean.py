"""The ``http`` resolver's lean HTTP/1.1 client, for plain ``http://`` registries: one kept-alive connection, GET
only, the request written by hand and the answer parsed by h11, on an asyncio transport with a small protocol of its
own (:class:`_Wire`).

Why not httpx here: a question is a small GET and a small JSON answer, and httpx's own cost per question (building
a request, its transport and pool bookkeeping, its response object, its cookies) ran on the event loop that also
releases the messages waiting for those answers: a third of a node's time while 1,000 services were answered at
once. This client does what a question needs and nothing else: the resolver's CPU per question ~105 us instead
of ~410 us (``bench_resolution_storm.py resolver-cost``). Not anyio's streams either: they yield to the loop on
every write and need a cancel scope per read and write for the time-outs (with the question's own scope, about a
quarter of the lean client's cost); here a request the socket takes at once costs no await, and each wait is one
timer on the loop. ``https://`` (TLS, HTTP/2) and anything else it does not do stay with httpx
(:func:`lean_headers`), so users see the same behaviour either way.

What it does: Content-Length and chunked answers (h11), redirects returned as the status they are (the resolver
reports them; nothing is followed), the connection kept for the next question unless the registry or h11 says
close, and a question on a kept connection that the registry had closed meanwhile (EOF or reset before a byte of
the answer) asked once more on a new one: GET is safe to repeat, and a registry may drop an idle connection at any
time. Errors are raised as httpx's exception types (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError``,
``RemoteProtocolError``, ...), so the resolver turns them into the same ResolverError messages for both clients;
the question's overall bound (connect_timeout + read_timeout) passing is :class:`AnswerTimeout`. Connections are
made as ``anyio.connect_tcp`` makes them (a name's addresses raced, IPv6 first, and the same errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import asyncio
import math
import socket
from collections import deque
from ipaddress import IPv6Address, ip_address
from typing import cast

import anyio
import h11
import httpx

from .http_formats import Asked

#: bytes asked of the socket at once: a whole answer of the usual size in one read
RECEIVE_BYTES = 65536
#: what h11 is told was sent, so that it parses the answer to a GET (the bytes on the wire are written by hand:
#: h11 would validate every header again on every question, and they were validated once, in the config)
_SENT = h11.Request(method="GET", target="/", headers=[("Host", "registry")])
#: headers a user's ``headers`` table may set that change how the answer comes (its encoding, or the connection's
#: life): with one of them, the resolver keeps httpx, which handles them
HTTPX_ONLY_HEADERS = frozenset({"accept-encoding", "connection", "te", "transfer-encoding", "upgrade", "host",
                                "content-length", "expect"})


def lean_headers(headers: Mapping[str, str]) -> bool:
    """Whether this client can send the user's ``headers`` (none that needs httpx's handling)."""
    return not any(name.lower() in HTTPX_ONLY_HEADERS for name in headers)


class LeanClient:
    """One connection at a time, to the host and port of the last question (a question to another reconnects); used
    by one question at a time (the resolver's slot holds it)."""

    def __init__(self, headers: Mapping[str, str], *, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # written once: the headers every request carries (validated by the config: tokens and Latin-1 values)
        self._fixed = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in
                               {"Accept-Encoding": "identity", "User-Agent": "aiobroker-http-resolver",
                                **headers}.items())
        self._wire: _Wire | None = None
        self._h11: h11.Connection | None = None
        self._peer: tuple[str, int] | None = None
        self.closed = False
        self._deadline = math.inf  #: the loop's time when the current exchange must have ended (get's ``within``)
        self._answer_started = False  #: whether a byte of the current answer came (before it, EOF means "dropped")
        #: connections made and questions asked on the current one (tests and status read them)
        self.connections_made = 0
        self.requests_on_connection = 0

    async def get(self, url: Asked, extra: Mapping[str, str], within: float
                  ) -> tuple[int, httpx.Headers, AsyncIterator[bytes]]:
        """Send GET ``url``; (status, headers, the body's chunks). The caller reads the chunks (or stops early:
        then the connection is not kept) before the next ``get``. The whole exchange, the body's chunks too, is
        bounded by ``within`` seconds (:class:`AnswerTimeout`), as well as by connect_timeout and read_timeout."""
        if self.closed:
            raise RuntimeError("the lean client is closed")
        self._deadline = asyncio.get_running_loop().time() + within
        peer = (url.host, url.port or 80)
        request = self._request(url, extra)
        # kept only if the last exchange ended cleanly (a question cancelled by the resolver's overall bound between
        # two steps leaves h11 mid-exchange: that connection cannot carry another)
        conn = self._h11
        reused = (conn is not None and self._peer == peer and conn.our_state is h11.IDLE
                  and conn.their_state is h11.IDLE)
        if not reused:
            await self.aclose_connection()
            await self._connect(peer)
        try:
            status, headers = await self._send_and_read_head(request)
        except _ClosedBeforeAnswer:
            await self.aclose_connection()
            if not reused:
                raise httpx.RemoteProtocolError("the registry closed the connection without answering") from None
            # the registry dropped the kept connection while it was idle: ask once more on a new one
            await self._connect(peer)
            try:
                status, headers = await self._send_and_read_head(request)
            except _ClosedBeforeAnswer:
                await self.aclose_connection()
                raise httpx.RemoteProtocolError("the registry closed the connection without answering") from None
        return status, headers, self._body()

    def _request(self, url: Asked, extra: Mapping[str, str]) -> bytes:
        # the Host line and credentials (as httpx sends them: Basic authentication) made once per URL template
        lines = [b"GET ", url.raw_path, b" HTTP/1.1\r\n", url.origin_lines, self._fixed]
        lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in extra.items()]
        lines.append(b"\r\n")
        return b"".join(lines)

    def _until(self, timeout: float) -> tuple[float, bool]:
        """When a wait of ``timeout`` seconds ends, and whether that is the exchange's overall bound."""
        end = asyncio.get_running_loop().time() + timeout
        return (self._deadline, True) if self._deadline < end else (end, False)

    async def _connect(self, peer: tuple[str, int]) -> None:
        until, overall = self._until(self.connect_timeout)
        with anyio.CancelScope(deadline=until) as scope:
            try:
                self._wire = await _open(*peer)
            except OSError as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        if scope.cancelled_caught:
            if overall:
                raise AnswerTimeout
            raise httpx.ConnectTimeout(f"no connection within {self.connect_timeout} s")
        self._peer = peer
        self._h11 = h11.Connection(h11.CLIENT)
        self.connections_made += 1
        self.requests_on_connection = 0

    async def _send_and_read_head(self, request: bytes) -> tuple[int, httpx.Headers]:
        wire = self._wire
        assert wire is not None and self._h11 is not None
        self._h11.send(_SENT)
        self._h11.send(h11.EndOfMessage())
        self.requests_on_connection += 1
        self._answer_started = False
        if wire.ended:  # the registry closed the kept connection while it was idle
            raise _ClosedBeforeAnswer
        try:
            wire.transport.write(request)  # handed to the socket at once: no await unless it is full
        except (RuntimeError, OSError):
            raise _ClosedBeforeAnswer from None
        if wire.paused:
            until, overall = self._until(self.read_timeout)
            if not await wire.event(until, lambda: not wire.paused or wire.ended):
                await self.aclose_connection()
                if overall:
                    raise AnswerTimeout
                raise httpx.WriteTimeout("the request was not sent in time")
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return event.status_code, httpx.Headers(event.headers.raw_items())
            if not isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
                await self.aclose_connection()
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the answer")

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """h11's next event (never NEED_DATA: it reads within read_timeout as needed); an error closes the
        connection."""
        assert self._wire is not None and self._h11 is not None
        conn = self._h11
        try:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                data = await self._receive()
                if not data and not self._answer_started:
                    raise _ClosedBeforeAnswer
                self._answer_started = True
                conn.receive_data(data)  # b"": the end of the stream, which h11 judges (mid-answer: an error)
        except h11.RemoteProtocolError as exc:
            await self.aclose_connection()
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except BaseException:
            await self.aclose_connection()
            raise

    async def _receive(self) -> bytes:
        """The next bytes from the registry within read_timeout; b"" when it closed or reset the connection."""
        wire = self._wire
        assert wire is not None
        if not wire.received and not wire.ended:
            until, overall = self._until(self.read_timeout)
            if not await wire.event(until, lambda: bool(wire.received) or wire.ended):
                if overall:
                    raise AnswerTimeout
                raise httpx.ReadTimeout("the registry sent nothing in time")
        if wire.closed:
            raise RuntimeError("the lean client was closed while asking")
        if not wire.received:
            return b""
        data = b"".join(wire.received)
        wire.received.clear()
        return data

    async def _body(self) -> AsyncIterator[bytes]:
        """The body's chunks; at its end the connection is kept for the next question if both sides may go on.
        Stopped early (a truncated error answer, a body over the limit) or failed, the connection is closed."""
        done = False
        try:
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    done = True
                    return
        finally:
            conn = self._h11
            if done and conn is not None and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                await self.aclose_connection()

    async def aclose_connection(self) -> None:
        wire, self._wire, self._h11, self._peer = self._wire, None, None, None
        if wire is not None:
            wire.close()

    async def aclose(self) -> None:
        self.closed = True
        await self.aclose_connection()


class AnswerTimeout(Exception):
    """The exchange's overall bound (``get``'s ``within``) passed before the answer came in full."""


class _ClosedBeforeAnswer(Exception):
    """The connection ended before a byte of the answer: on a kept connection, asked again on a new one."""


class _Wire(asyncio.Protocol):
    """One connection's transport events, for the one question reading it at a time: the bytes that came, whether
    the connection ended, and whether writing is held back (the socket's buffer full). The question's task waits in
    :meth:`event`, with a timer for its time-out: no cancel scope per read or write, and a request that the socket
    takes at once costs no await at all (anyio's stream yields to the loop on every write)."""

    def __init__(self) -> None:
        self.received: deque[bytes] = deque()
        self.ended = False  #: end of stream, reset, or closed here
        self.closed = False  #: closed here (aclose)
        self.paused = False
        self._waiter: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # as anyio's streams do: a request the socket did not take whole holds the question until it has gone (the
        # write time-out), rather than being left in the transport's buffer
        self.transport.set_write_buffer_limits(0)

    def data_received(self, data: bytes) -> None:
        self.received.append(bytes(data))
        self._wake(True)

    def eof_received(self) -> bool:
        self.ended = True
        self._wake(True)
        return False  # the transport closes itself: a half-closed registry sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.paused = False
        self._wake(True)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake(True)

    def close(self) -> None:
        self.closed = self.ended = True
        self.transport.abort()
        self._wake(True)

    def _wake(self, value: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    async def event(self, deadline: float, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()``, at the latest till ``deadline`` (the loop's clock): whether it became so."""
        loop = asyncio.get_running_loop()
        while not ready():
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(deadline, self._wake, False)
            try:
                if not await waiter:
                    return ready()
            finally:
                timer.cancel()
                self._waiter = None
        return True


#: how long a connection attempt to one of a host's addresses has before the next is started too (RFC 8305; as
#: anyio.connect_tcp)
HAPPY_EYEBALLS_DELAY = 0.25


async def _open(host: str, port: int) -> _Wire:
    """A connection to ``host`` (a name or an address) and ``port`` with a :class:`_Wire` on it, made as
    ``anyio.connect_tcp`` makes one: a name's addresses IPv6 first, the next started when one is 0.25 s late, the
    first to connect kept; when all fail, ``OSError("All connection attempts failed")`` from their errors."""
    loop = asyncio.get_running_loop()
    try:
        literal = ip_address(host)
    except ValueError:
        found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[str] = []
        v6_first = v4_second = False
        for family, *_, sockaddr in found:  # anyio's order: the first IPv6 address, then the first IPv4 one
            if family == socket.AF_INET6 and not v6_first:
                v6_first = True
                addresses.insert(0, str(sockaddr[0]))
            elif family == socket.AF_INET and v6_first and not v4_second:
                v4_second = True
                addresses.insert(1, str(sockaddr[0]))
            else:
                addresses.append(str(sockaddr[0]))
    else:
        addresses = [literal.compressed if isinstance(literal, IPv6Address) else str(literal)]
    errors: list[OSError] = []
    wire: _Wire | None = None
    if len(addresses) == 1:
        try:
            _, wire = await loop.create_connection(_Wire, addresses[0], port)
        except OSError as exc:
            errors.append(exc)
    else:
        async def attempt(address: str, done: anyio.Event) -> None:
            nonlocal wire
            try:
                _, made = await loop.create_connection(_Wire, address, port)
            except OSError as exc:
                errors.append(exc)
                return
            finally:
                done.set()
            if wire is None:
                wire = made
                tg.cancel_scope.cancel()
            else:
                made.close()

        try:
            async with anyio.create_task_group() as tg:
                for address in addresses:
                    done = anyio.Event()
                    tg.start_soon(attempt, address, done)
                    with anyio.move_on_after(HAPPY_EYEBALLS_DELAY):
                        await done.wait()
        except BaseException:
            if wire is not None:
                wire.close()
            raise
    if wire is None:
        cause = errors[0] if len(errors) == 1 else ExceptionGroup("multiple connection attempts failed", errors)
        raise OSError("All connection attempts failed") from cause
    return wire
