"""What a conversation looks like to the client: :class:`Dialog` (one side of a conversation, to send on or end),
:class:`Message` (one received; aiobroker/client/received.py) and :class:`ReceivedBatch` (messages received
together, locked until commit or rollback). :class:`~aiobroker.client.Client` makes them (``begin_dialog``,
``dialog``, ``receive``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import anyio

from ..core.catalog import DEFAULT
from .. import tracing
from ..errors import BrokerError, Overloaded
from ..tracecontext import make_trace
from .connection import PendingReply
from .received import Message


#: a send that waits for room (``wait=``) tries again after this many seconds, doubling up to WAIT_CAP
WAIT_FIRST = 0.01
WAIT_CAP = 1.0


class Requester(Protocol):
    """What a :class:`Dialog` or a :class:`ReceivedBatch` needs of the client that made it: to send requests on
    its connection. :class:`~aiobroker.client.Client` is the one there is; a protocol, so that this module need
    not import the client's (which imports this one)."""

    #: what the node said of itself in its WELCOME (``send_bodies``: it takes a batch as one type and its bodies)
    server_info: dict[str, Any]

    def start_request(self, op: str, args: dict[str, Any]) -> PendingReply: ...

    async def request(self, op: str, args: dict[str, Any]) -> Any: ...


class Dialog:
    """One side of a conversation, by its handle (and, when known, the service at its far end, which names the
    destination of its send spans)."""

    __slots__ = ("client", "handle", "conversation_id", "group_id", "far_service")

    def __init__(
        self,
        client: Requester,
        handle: str,
        conversation_id: str | None = None,
        group_id: str | None = None,
        far_service: str | None = None,
    ):
        self.client = client
        self.handle = handle
        self.conversation_id = conversation_id
        self.group_id = group_id
        self.far_service = far_service

    async def send(
        self,
        message_type: str = DEFAULT,
        body: bytes = b"",
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        wait: float | None = 0.0,
    ) -> None:
        """Send one message; returns once the node has stored it.

        ``traceparent`` (and ``tracestate``): W3C trace context the message carries to its receiver, checked here
        (:class:`~aiobroker.errors.InvalidArgument` says the expected format). Without one, and with the ``otel``
        extra installed and a TracerProvider set, the context of this send's span is carried instead.
        ``wait``: as for :meth:`send_many`.
        """
        await self.send_many([(message_type, body)], traceparent=traceparent, tracestate=tracestate, wait=wait)

    async def send_many(
        self,
        messages: Sequence[tuple[str, bytes]],
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        wait: float | None = 0.0,
    ) -> None:
        """Send several messages in order, in one frame; returns once the node has stored all of them. A trace
        context given here is carried by each of them (one send, one creation context).

        ``wait``: seconds to wait for room when the node refuses the batch with
        :class:`~aiobroker.errors.Overloaded` (over its memory budget, a full queue, too many DELAYED messages):
        the batch is sent again, after 10 ms, doubling up to 1 s, until the node takes it or the time is up
        (then the last ``Overloaded`` is raised). A refused batch was not stored at all, so sending it again
        never stores it twice. 0 (the default) raises at once; None waits as long as it takes."""
        if wait == 0:
            await self._send_many(messages, traceparent, tracestate)
            return
        deadline = None if wait is None else anyio.current_time() + wait
        delay = WAIT_FIRST
        while True:
            try:
                await self._send_many(messages, traceparent, tracestate)
                return
            except Overloaded:
                left = None if deadline is None else deadline - anyio.current_time()
                if left is not None and left <= 0:
                    raise
                await anyio.sleep(delay if left is None else min(delay, left))  # back-off before asking again
                delay = min(delay * 2, WAIT_CAP)

    async def _send_many(
        self, messages: Sequence[tuple[str, bytes]], traceparent: str | None, tracestate: str | None
    ) -> None:
        trace = make_trace(traceparent, tracestate)
        if tracing.recording():  # OpenTelemetry with a TracerProvider: a send span until the batch is stored
            with tracing.client_send(self.far_service, self.conversation_id, len(messages), trace) as carried:
                await self._start_send(messages, carried).wait()
            return
        await self._start_send(messages, trace).wait()

    def start_send_many(
        self,
        messages: Sequence[tuple[str, bytes]],
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> PendingReply:
        """Like :meth:`send_many`, but returns as soon as the batch is on its way: ``await .wait()`` for the
        node's acknowledgement. Batches started one after another are stored in that order."""
        trace = make_trace(traceparent, tracestate)
        if tracing.recording():  # OpenTelemetry with a TracerProvider: a send span until the batch is on its way
            with tracing.client_send(self.far_service, self.conversation_id, len(messages), trace) as carried:
                return self._start_send(messages, carried)
        return self._start_send(messages, trace)

    def _start_send(self, messages: Sequence[tuple[str, bytes]], trace: str | None) -> PendingReply:
        if trace is None and self.client.server_info.get("send_bodies") and messages:
            # one type for the whole batch (what most producers send): its bodies alone, no list per message
            first = messages[0][0]
            try:
                bodies = [body for message_type, body in messages if message_type == first]
            except (TypeError, ValueError):  # not all pairs: sent as given, and the node says what is wrong
                bodies = []
            if len(bodies) == len(messages) and isinstance(first, str):
                return self.client.start_request("send", {"handle": self.handle, "type": first, "bodies": bodies})
        if trace is None:
            batch = messages if isinstance(messages, list) else list(messages)  # tuples travel as msgpack arrays
        else:  # each message carries the context as its third element (docs/protocol.md)
            batch = [[m[0], m[1], trace] for m in messages]
        return self.client.start_request("send", {"handle": self.handle, "messages": batch})

    async def end(self, *, error: tuple[int, str] | None = None, cleanup: bool = False) -> int:
        """End this side: sends EndDialog after what is queued, or with ``error=(code > 0, text)`` an Error
        instead (dropping what is still queued). ``cleanup=True`` removes this side only, sending nothing.

        Returns how many messages were dropped because they were still DELAYED (waiting for a route: they had
        not left this node, and now never will)."""
        args: dict[str, Any] = {"handle": self.handle, "cleanup": cleanup}
        if error is not None:
            args["error"] = [error[0], error[1]]
        result = await self.client.request("end", args)
        return int(result.get("dropped_delayed", 0)) if isinstance(result, dict) else 0

    async def begin_timer(self, seconds: float) -> None:
        """A DialogTimer message arrives on this side's queue after ``seconds`` (a new call resets it)."""
        await self.client.request("begin_timer", {"handle": self.handle, "seconds": seconds})

    async def info(self) -> dict[str, Any]:
        """State, sequence numbers, lifetime and error of this side."""
        result: dict[str, Any] = await self.client.request("get_conversation", {"handle": self.handle})
        return result

    def __repr__(self) -> str:
        return f"<Dialog {self.handle}>"


class ReceivedBatch:
    """Messages of one conversation group (or several, received with ``max_groups``), locked for this client
    until :meth:`commit` or :meth:`rollback`, which end the lock on all of them at once.

    As an async context manager it commits when the block ends normally and rolls back if it raises.
    ``messages`` is a sequence (from a receive, a :class:`~aiobroker.client.received.ReceivedMessages`: its
    messages are made as they are iterated or indexed, and stay valid after commit or rollback).
    """

    __slots__ = ("client", "lease", "messages", "lease_expires_at", "_settled")

    def __init__(
        self, client: Requester, lease: int | None, messages: Sequence[Message], lease_expires_at: float | None
    ):
        self.client = client
        self.lease = lease
        self.messages = messages
        self.lease_expires_at = lease_expires_at
        self._settled = lease is None

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def dialog(self, message: Message) -> Dialog:
        """The conversation a message came on, to reply or end it."""
        return Dialog(
            self.client,
            message.conversation_handle,
            message.conversation_id,
            message.conversation_group_id,
            message.far_service_name,
        )

    async def commit(self) -> None:
        """Remove the messages from the queue (durably); they will not be received again."""
        if not self._settled:
            await self.start_commit().wait()

    def start_commit(self) -> PendingReply:
        """Like :meth:`commit`, but returns as soon as the request is on its way, so the next ``receive`` can
        follow it at once (the node handles them in order: the group is unlocked before the receive)."""
        if self._settled:
            done = PendingReply()
            done.event.set()
            return done
        self._settled = True
        return self.client.start_request("commit", {"lease": self.lease})

    async def rollback(self) -> None:
        """Put the messages back at the front of their group (counts toward poison-message handling)."""
        if not self._settled:
            self._settled = True
            await self.client.request("rollback", {"lease": self.lease})

    async def __aenter__(self) -> ReceivedBatch:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            await self.commit()
        else:
            with anyio.CancelScope(shield=True):
                try:
                    await self.rollback()
                except BrokerError:
                    pass  # the original error matters more; the lease runs out anyway

    def __repr__(self) -> str:
        return f"<ReceivedBatch lease={self.lease} messages={len(self.messages)}>"

