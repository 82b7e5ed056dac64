"""Peer links: the node's connections to other nodes, and what arrives on them.

One task per next-hop address (made when a conversation is first routed there) connects, says HELLO as a
``peer``, and then sends what the core's transmission queue has for that address (only messages already stored
here), many per frame, plus forwarded envelopes. Acknowledgements come back on the same connection. When the
connection breaks, cannot be made, or no acknowledgement arrives within ``ack_timeout``, the link is marked failed
with the reason, waits (1 s, doubling, capped at 60 s) and connects again; everything unacknowledged is sent again
and the far side drops what it already has.

A far node closes a connection that has been idle for its ``idle_timeout`` (nothing sent either way, so nothing
unacknowledged), saying so with REFUSED ``idle``. That is no failure: the link notes it, and connects again, at once
and without back-off, when it next has something to send (anything that was in flight after all goes again).

Envelopes that arrive on any peer connection (one this node made, or one a peer made to it) are handed to the
core; their acknowledgements go back on the connection they came on once the store has what was delivered.
A forwarded message's acknowledgement is relayed back the way the message came (remembered in memory, bounded).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio

from .. import tracing
from .admission import IDLE
from ..config import MIN_FRAME_SIZE
from ..names import parse_tcp_address, parse_tcp_addresses
from ..core.transmission import ENVELOPE_OVERHEAD
from ..durations import duration, until
from ..errors import BrokerError, ConnectionLost, Overloaded, ProtocolError, Standby
from ..transport.connection import FramedConnection, describe_os_error
from ..transport.tls import connect as connect_tls
from ..wire.codec import batch_bytes
from ..wire.frames import Envelopes, Hello, Refused, Welcome, envelopes_wire

if TYPE_CHECKING:
    from .shell import LinkHost

log = logging.getLogger("aiobroker.links")

#: messages per ENVELOPES frame a link sends
SEND_BATCH = 1000
#: forwarded envelopes held per next hop while its link is down or busy, and their bodies' bytes: beyond either
#: bound the oldest go (their senders resend them, as nothing acknowledged them)
MAX_FORWARD_BACKLOG = 100_000
MAX_FORWARD_BACKLOG_BYTES = 256 * 1024 * 1024
#: seconds a refused peer connection is read (and dropped) before it is closed, so that the refusal reaches it
LINGER = 5.0
#: conversations whose acknowledgements this node relays back when forwarding (least recently used go first)
MAX_REVERSE_PATHS = 100_000


class LinkError(BrokerError):
    """A peer link failed (refused, timed out, broke); the message is shown as the link's last error."""

    code = "link_error"


def _never() -> bool:
    return False


class LinkStandby(LinkError):
    """The far node is a standby (it waits to take over its store); ``owner`` is where it says the owner is."""

    def __init__(self, message: str, owner: str | None) -> None:
        super().__init__(message)
        self.owner = owner


class LinkIdle(LinkError):
    """The far node closed the link's connection for being idle: not a failure; connect again when there is work."""


_LINK_FAILURES = (LinkError, ConnectionLost, ProtocolError, OSError)


def _link_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error that ended a link's session (its reader or its sender), out of the task group's wrapping. The far
    node's word that it closed an idle connection wins over the broken stream that follows it, and so do its
    other words (a refusal: over its memory budget), which say more than the close they come with."""
    stack: list[BaseException] = [group]
    found: BaseException | None = None
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        elif isinstance(exc, LinkIdle):
            return exc
        elif isinstance(exc, _LINK_FAILURES) and (found is None or (isinstance(exc, LinkError) and not isinstance(found, LinkError))):
            found = exc
    return found or group  # something unexpected: let it propagate as it is


class ForwardBacklog:
    """Forwarded envelopes waiting for one next hop, oldest first, bounded by count and by bytes of body."""

    __slots__ = ("envelopes", "bytes")

    def __init__(self) -> None:
        self.envelopes: deque[list[Any]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.envelopes)

    def add(self, envelope: list[Any]) -> int:
        """Hold one more; returns how many of the oldest were dropped to stay within the bounds."""
        self.envelopes.append(envelope)
        self.bytes += len(envelope[10])
        dropped = 0
        while len(self.envelopes) > MAX_FORWARD_BACKLOG or self.bytes > MAX_FORWARD_BACKLOG_BYTES:
            self.bytes -= len(self.envelopes.popleft()[10])
            dropped += 1
        return dropped

    def take_within(self, envelopes: list[list[Any]], max_bytes: int) -> None:
        """Move envelopes from the front to ``envelopes`` while the frame stays within ``max_bytes`` (estimated as
        for the transmission queue; one always goes into an empty frame). The rest wait their turn."""
        size = sum(len(e[10]) for e in envelopes) + ENVELOPE_OVERHEAD * len(envelopes)
        held = self.envelopes
        while held:
            body = len(held[0][10])
            size += body + ENVELOPE_OVERHEAD
            if size > max_bytes and envelopes:
                break
            envelopes.append(held.popleft())
            self.bytes -= body


class PeerLinks:
    def __init__(self, node: LinkHost) -> None:
        self.node = node
        self.running: set[str] = set()
        self.wakes: dict[str, anyio.Event] = {}
        self.forward_out: dict[str, ForwardBacklog] = {}
        self.reverse: OrderedDict[tuple[str, bool], FramedConnection] = OrderedDict()
        self.forwarded = 0
        self.dropped_forwards = 0

    # ------------------------------------------------------------------------------------------------ waking

    def wake_ready(self) -> None:
        """Wake (or start) the link of every address with something new that may leave now.

        Before the node's task group exists (at start, when the writer stores what loading changed) nothing can
        run yet: the addresses stay in ``ready_links`` for the start to wake once it can, so a link restored
        with stored messages is never forgotten until some new send wakes it."""
        if self.node.task_group is None:
            return
        ready = self.node.core.tx.ready_links
        addresses = list(ready)
        ready.clear()
        for address in addresses:
            self.wake(address)

    def wake(self, address: str) -> None:
        if address not in self.running and self.node.task_group is not None:
            self.running.add(address)
            self.node.task_group.start_soon(self._run, address, name=f"link {address}")
        event = self.wakes.get(address)
        if event is not None:
            event.set()

    async def _wait(self, address: str, timeout: float | None) -> None:
        event = self.wakes[address] = anyio.Event()
        with anyio.move_on_after(math.inf if timeout is None else max(0.0, timeout)):
            await event.wait()

    # ----------------------------------------------------------------------------------------- outbound links

    def _has_work(self, address: str) -> bool:
        if self.forward_out.get(address):
            return True
        tx = self.node.core.tx
        link = tx.links.get(address)
        return link is not None and any(h in tx.rows for h in link.handles)

    async def _run(self, address: str) -> None:
        core = self.node.core
        try:
            while True:
                if not self._has_work(address):
                    await self._wait(address, None)
                    continue
                link = core.tx.links.get(address)
                if link is not None and link.next_attempt is not None:
                    delay = link.next_attempt - self.node.clock()
                    if delay > 0:
                        await self._wait(address, delay)
                        continue
                try:
                    await self._session(address)
                except LinkIdle as exc:
                    if link := core.tx.links.get(address):
                        link.went_idle()
                    log.info(
                        "link to %s: %s; it connects again when it has something to send", address, exc.message,
                        extra={"peer": address},
                    )
                except _LINK_FAILURES as exc:
                    reason = exc.message if isinstance(exc, BrokerError) else describe_os_error(exc)
                    counters = self.node.counters
                    counters.link_failures[address] = counters.link_failures.get(address, 0) + 1
                    if link := core.tx.links.get(address):  # what was sent and not acknowledged goes again
                        counters.retransmitted += sum(link.sent.values())
                    next_at = core.link_failed(address, reason, self.node.clock())
                    if next_at is None:  # no conversation uses the address any more; forwards only
                        await self._wait(address, 1.0)
                        continue
                    log.warning(
                        "link to %s failed: %s; next attempt %s", address, reason, until(next_at - self.node.clock()),
                        extra={"peer": address},
                    )
        finally:
            self.running.discard(address)

    async def _session(self, address: str) -> None:
        cfg = self.node.config
        conn, frame = await self._connect(address)
        try:
            self.node.core.link_up(address, frame.broker_instance)
            log.info(
                "link to %s up%s (broker instance %s)", address,
                f" at {conn.peer}" if conn.peer != address else "", frame.broker_instance,
                extra={"peer": address, "peer_instance": frame.broker_instance},
            )
            # frames must fit the smaller of the two nodes' limits: the far node refuses a larger one
            theirs = frame.info.get("max_frame_size")
            frame_size = cfg.max_frame_size
            if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs >= MIN_FRAME_SIZE:
                frame_size = min(frame_size, theirs)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.writer)
                    tg.start_soon(self._read, conn, address)
                    await self._send_loop(conn, address, batch_bytes(frame_size))
            except BaseExceptionGroup as group:
                raise _link_failure(group) from group
        finally:
            await conn.aclose()

    async def _connect(self, address: str) -> tuple[FramedConnection, Welcome]:
        """Connect to ``address`` and shake hands. A route's address may list several nodes, an owner and its
        standbys (``tcp://a:4022,b:4022``): they are tried in order, a standby's owner next, and the first that
        serves is the link's far side until the connection breaks; if none serves, the error lists what each said
        (the link tries again after its back-off, from the first)."""
        if self.node.link_tls is None and address.startswith("tls://"):
            raise LinkError(
                f"{address} speaks TLS and this node does not: give it a [tls] cert and key (the nodes of one"
                " federation all use TLS or none do)"
            )
        targets = parse_tcp_addresses(address)
        if len(targets) == 1:
            return await self._dial(*targets[0])
        said: dict[str, str] = {}
        while targets:
            url, host, port = targets.pop(0)
            if url in said:
                continue
            try:
                return await self._dial(url, host, port)
            except LinkStandby as exc:
                said[url] = exc.message
                if exc.owner is not None and exc.owner not in said:
                    with suppress(BrokerError):  # an owner's address that does not parse is not tried
                        targets.insert(0, (exc.owner, *parse_tcp_address(exc.owner)))
            except _LINK_FAILURES as exc:
                said[url] = exc.message if isinstance(exc, BrokerError) else describe_os_error(exc)
        raise LinkError(f"no node of {address} serves: " + "; ".join(f"{url}: {why}" for url, why in said.items()))

    async def _dial(self, url: str, host: str, port: int) -> tuple[FramedConnection, Welcome]:
        """Connect to one node and shake hands as a peer: the connection and the node's WELCOME."""
        cfg = self.node.config
        tls = self.node.link_tls
        try:
            with anyio.fail_after(cfg.connect_timeout):
                stream: Any = await connect_tls(host, port, tls) if tls is not None else await anyio.connect_tcp(host, port)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            raise LinkError("TLS handshake failed: the far side closed the connection during it") from None
        except TimeoutError:
            raise LinkError(f"no connection within {duration(cfg.connect_timeout)} (connect_timeout)") from None
        conn = FramedConnection(stream, max_frame_size=cfg.max_frame_size, peer=url)
        try:
            try:
                with anyio.fail_after(cfg.handshake_timeout):
                    info = {"broker_instance": self.node.core.broker_instance}
                    if cfg.link_token is not None:
                        info["token"] = cfg.link_token
                    conn.send_frame(Hello(role="peer", info=info))
                    await conn.flush()
                    frame = await conn.receive_one()
            except TimeoutError:
                raise LinkError(f"no handshake within {duration(cfg.handshake_timeout)} (handshake_timeout)") from None
            if isinstance(frame, Refused):
                if frame.code == Standby.code:
                    owner = frame.info.get("owner")
                    raise LinkStandby(f"refused by {url}: {frame.message}", owner if isinstance(owner, str) else None)
                raise LinkError(f"refused by {url}: {frame.message}")
            if not isinstance(frame, Welcome):
                raise LinkError(f"{url} answered the handshake with {type(frame).__name__.upper()}")
        except BaseException:
            await conn.aclose()
            raise
        return conn, frame

    async def _send_loop(self, conn: FramedConnection, address: str, max_bytes: int) -> None:
        """Send what is ready for ``address`` (its own messages, then forwarded ones), each frame at most
        ``SEND_BATCH`` of its own and within ``max_bytes``; wait for more, or for acknowledgements."""
        core = self.node.core
        ack_timeout = self.node.config.ack_timeout
        while not conn.closed:
            messages = core.outgoing(address, SEND_BATCH, max_bytes)
            forwards = self.forward_out.get(address)
            if forwards:
                forwards.take_within(messages, max_bytes)
            link = core.tx.links.get(address)
            if messages:
                conn.send(envelopes_wire(messages, []))
                if link is not None and link.waiting_since is None and link.sent:
                    link.waiting_since = time.monotonic()
                continue
            timeout = None
            if link is not None and link.waiting_since is not None and link.sent:
                timeout = link.waiting_since + ack_timeout - time.monotonic()
                if timeout <= 0:
                    raise LinkError(f"no acknowledgement within {duration(ack_timeout)} (ack_timeout)")
            await self._wait(address, timeout)
        raise ConnectionLost(f"connection to {address} closed")

    async def _read(self, conn: FramedConnection, address: str | None) -> None:
        """Read envelopes from a peer connection until it closes (then raise, ending its session)."""
        while True:
            for frame in await conn.receive_frames():
                if isinstance(frame, Refused):  # the far node closed the connection, and said why
                    if address is not None and frame.code == IDLE:
                        raise LinkIdle(f"{conn.peer} closed the idle connection ({frame.message})")
                    if address is None:  # a peer's connection to us: it reconnects when it has more to send
                        log.warning(
                            "peer %s closed its connection: %s", conn.peer, frame.message, extra={"peer": conn.peer}
                        )
                        raise ConnectionLost(f"{conn.peer} closed the connection: {frame.message}")
                    raise LinkError(f"{conn.peer} closed the link: {frame.message}")
                if not isinstance(frame, Envelopes):
                    raise ProtocolError(f"a peer sends ENVELOPES frames, got {type(frame).__name__.upper()}")
                self.accept(conn, frame, address)
            self.node.writer.kick()

    # ------------------------------------------------------------------------------------------ what arrives

    def accept(self, conn: FramedConnection, frame: Envelopes, address: str | None) -> None:
        core = self.node.core
        now = self.node.clock()
        if frame.acks:
            counters = self.node.counters
            link = core.tx.links.get(address) if address is not None else None
            if link is not None and link.waiting_since is not None:  # the oldest send still unanswered went then
                counters.link_ack_seconds[address] = time.monotonic() - link.waiting_since  # type: ignore[index]
            unacknowledged = core.tx.message_count
            foreign = core.acknowledged(frame.acks, now)
            counters.acknowledged += max(0, unacknowledged - core.tx.message_count)
            for ack in foreign:
                back = self.reverse.get((ack[1], ack[2])) if isinstance(ack, list) and len(ack) > 2 else None
                if back is not None and not back.closed:
                    back.send(envelopes_wire([], [ack]))
            if address is not None:
                link = core.tx.links.get(address)
                if link is not None and link.waiting_since is not None:
                    link.waiting_since = time.monotonic()  # progress: the time-out counts from here
        if frame.messages and core.budget.over:
            # over the memory budget: take nothing new; the sender keeps its messages and sends them again
            self.node.counters.peer_frames_refused += 1
            if address is None:
                raise Overloaded(
                    f"messages not taken: {core.budget.words()}; the sender keeps them and sends them again"
                )
            return  # on a link of ours a peer sends acknowledgements only; anything else waits for its resend
        if frame.messages:
            acks, forwards = core.accept(frame.messages, now)
            if acks:
                send = conn.send
                self.node.writer.after_commit(lambda: send(envelopes_wire([], acks)))
            for next_hop, envelopes in forwards.items():
                self._forward(conn, next_hop, envelopes)
        self.node.handle_effects(conn.peer)

    def _forward(self, came_from: FramedConnection, next_hop: str, envelopes: list[list[Any]]) -> None:
        backlog = self.forward_out.get(next_hop)
        if backlog is None:
            backlog = self.forward_out[next_hop] = ForwardBacklog()
        for env in envelopes:
            key = (env[1], env[2])
            self.reverse[key] = came_from
            self.reverse.move_to_end(key)
            self.dropped_forwards += backlog.add(env)
        while len(self.reverse) > MAX_REVERSE_PATHS:
            self.reverse.popitem(last=False)
        self.forwarded += len(envelopes)
        self.wake(next_hop)
        if tracing.recording():  # a forward span per message whose trace context this node can read
            instance = self.node.core.broker_instance
            for env in envelopes:
                if len(env) > 14 and type(env[14]) is str:  # True: sealed inside the body, unreadable here
                    tracing.node_spans("forward", env[5], [(env[14], None)], instance=instance, conversation_id=env[1])

    async def serve_inbound(self, conn: FramedConnection) -> None:
        """A peer connected to us: read its envelopes; answers go back through ``conn``."""
        self.node.counters.inbound_peers += 1
        try:
            await self._serve_inbound(conn)
        finally:
            self.node.counters.inbound_peers -= 1

    async def _serve_inbound(self, conn: FramedConnection) -> None:
        refusal: ProtocolError | Overloaded | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.writer)
            # nothing is in flight on it when it has been quiet: acknowledgements leave as soon as they are stored,
            # and what the peer sent and has no acknowledgement for it sends again when it connects again
            self.node.admission.watch_idle(tg, conn, _never, f"peer node {conn.peer}")
            try:
                await self._read(conn, None)
            except ConnectionLost:
                pass  # the peer went away; it reconnects when it has more to send
            except (ProtocolError, Overloaded) as exc:
                refusal = exc
            finally:
                tg.cancel_scope.cancel()
        if isinstance(refusal, Overloaded):
            # debug only: the peer tries again each second or so; the crossing itself was logged, once
            log.debug("peer %s: %s; its connection is closed", conn.peer, refusal.message, extra={"peer": conn.peer})
            await conn.send_last(Refused(code=refusal.code, message=refusal.message))
            # Closing now, with the peer's next frames unread, would reset the connection, and a reset can
            # overtake the refusal: the peer would see a broken stream, not why. Read and drop what it still sends
            # until it closes, as it does on reading the refusal (bounded in time).
            with anyio.move_on_after(LINGER), suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    await conn.stream.receive()
            return
        if refusal is not None:
            log.warning(
                "peer %s sent a malformed frame; closing its connection: %s", conn.peer, refusal.message,
                extra={"peer": conn.peer},
            )
            await conn.send_last(Refused(code=refusal.code, message=refusal.message))

    def statistics(self) -> dict[str, Any]:
        return {
            "links": len(self.running),
            "forwarded": self.forwarded,
            "forward_backlog": sum(len(b) for b in self.forward_out.values()),
            "forward_backlog_bytes": sum(b.bytes for b in self.forward_out.values()),
            "dropped_forwards": self.dropped_forwards,
        }
