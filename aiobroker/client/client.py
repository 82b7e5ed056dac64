"""The :class:`Client`: one connection to a node, its lifecycle, the requests in flight on it, and the calls on
the hot path (``begin_dialog``, ``receive``; a :class:`~aiobroker.client.Dialog` sends through
:meth:`Client.start_request`). The administration calls come from :class:`~aiobroker.client.objects.AdminCalls`.
"""

from __future__ import annotations

import itertools
import math
import os
import ssl
from collections.abc import Generator
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .. import tracing
from ..core.catalog import DEFAULT
from ..errors import BrokerError, ConnectionLost, InvalidArgument, ProtocolError, error_from_code
from ..transport.connection import FramedConnection
from ..wire.frames import Failed, Refused, Reply, request_wire
from .connection import (
    CONNECT_TIMEOUT,
    DEFAULT_PORT,
    FAILOVER_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    PendingReply,
    dial_any,
    split_url,
    split_urls,
    ssl_context_for,
)
from .conversations import Dialog, ReceivedBatch
from .received import BatchFacts, ReceivedMessages
from .objects import AdminCalls


class Client(AdminCalls):
    """A connection to one node. Use ``async with aiobroker.connect(url) as client``.

    The administration calls (``create_queue``, ``drop``, ``list``, ``status``, ...) are :class:`AdminCalls`',
    written against :meth:`request`; the conversation calls are here, next to the requests they make."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        failover_timeout: float = FAILOVER_TIMEOUT,
        follow_owner: bool = True,
    ) -> None:
        """``url``: ``tcp://host:port`` for plain TCP, ``tls://host:port`` for a node with ``[tls]``. It may list
        several nodes, an owner and its standbys, with commas (``tcp://a:4022,b:4022``): the client connects to the
        one that serves, going round the list for up to ``failover_timeout`` seconds while none does (a standby
        is taking over); a standby's refusal sends it to the owner first, unless ``follow_owner`` is false.

        For ``tls://``: ``ca`` is the PEM file of the CA (or the node's self-signed certificate) to trust; without
        it the system's trust store is used, as any TLS client does. ``cert`` and ``key`` (together) are this
        client's certificate, for a node that requires one (``[tls] ca``); the node also takes it for the
        identity with that certificate. Or give a ready ``ssl_context`` instead of the three (see
        :func:`aiobroker.transport.tls.client_context`). The node's certificate must name the host dialled.
        ``token``: an identity's bearer token, sent in the handshake (the node keeps only its SHA-256)."""
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidArgument("token must be a non-empty string (an identity's bearer token), or None")
        self.url = url
        self.urls = split_urls(url)
        #: the node this client is connected to (one of ``urls``, or an owner a standby named)
        self.node_url = self.urls[0]
        _, self.host, self.port = split_url(self.node_url)
        self.ssl_context = ssl_context_for(self.node_url, ca, cert, key, ssl_context)
        self.failover_timeout = failover_timeout
        self.follow_owner = follow_owner
        self._token = token
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.broker_instance: str | None = None
        self.server_info: dict[str, Any] = {}
        #: the identity the node took this client for (its token's or certificate's; ``public`` otherwise)
        self.identity: str | None = None
        self._conn: FramedConnection | None = None
        self._tg: TaskGroup | None = None
        self._pending: dict[int, PendingReply] = {}
        self._ids = itertools.count(1)
        self._closed_reason: str | None = None
        self._max_frame = 16 * 1024 * 1024

    # ---------------------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Client:
        await self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __await__(self) -> Generator[Any, None, Client]:
        return self.__aenter__().__await__()

    async def _open(self) -> None:
        timeouts = (self.connect_timeout, self.handshake_timeout, self.failover_timeout)
        conn, frame, self.node_url = await dial_any(
            self.urls, self.ssl_context, self._token, timeouts, self.follow_owner
        )
        _, self.host, self.port = split_url(self.node_url)
        self.broker_instance = frame.broker_instance
        self.server_info = frame.info
        identity = frame.info.get("identity")
        self.identity = identity if isinstance(identity, str) else None
        self._max_frame = int(frame.info.get("max_frame_size", self._max_frame))
        conn.decoder.max_frame_size = max(conn.decoder.max_frame_size, self._max_frame)
        self._conn = conn
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(conn.writer)
        self._tg.start_soon(self._reader)

    async def aclose(self) -> None:
        """Close the connection; requests still in flight fail with ConnectionLost."""
        if self._tg is not None:
            tg, self._tg = self._tg, None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        if self._conn is not None:
            await self._conn.aclose()
        self._fail_all("the client was closed")

    def _fail_all(self, reason: str) -> None:
        self._closed_reason = self._closed_reason or reason
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.error = ConnectionLost(
                f"connection to {self.node_url} closed ({self._closed_reason}) while a request was in flight;"
                " it may or may not have taken effect"
            )
            p.event.set()

    async def _reader(self) -> None:
        assert self._conn is not None
        conn = self._conn
        reason = "the node closed it"
        try:
            while True:
                for frame in await conn.receive_frames():
                    if isinstance(frame, Reply):
                        p = self._pending.pop(frame.request_id, None)
                        if p is not None:
                            p.result = frame.result
                            p.event.set()
                    elif isinstance(frame, Failed):
                        p = self._pending.pop(frame.request_id, None)
                        if p is not None:
                            p.error = error_from_code(frame.code, frame.message)
                            p.event.set()
                    elif isinstance(frame, Refused):
                        reason = f"{frame.code}: {frame.message}"
                        return
                    else:
                        reason = f"unexpected {type(frame).__name__.upper()} frame"
                        return
        except ConnectionLost:
            pass
        except ProtocolError as exc:
            reason = f"the node sent garbage: {exc.message}"
        except anyio.get_cancelled_exc_class():
            reason = "the client is closing"
            raise
        finally:
            conn.close()
            self._fail_all(reason)

    # ------------------------------------------------------------------------------------------------ requests

    def start_request(self, op: str, args: dict[str, Any]) -> PendingReply:
        """Send one request now, without waiting for its answer; requests leave (and the node handles them) in
        the order they were started. ``await pending.wait()`` for the result. This is how to pipeline: several
        ``send_many`` in flight on one conversation stay in order."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectionLost(
                f"not connected to {self.node_url}" + (f" ({self._closed_reason})" if self._closed_reason else "")
            )
        rid = next(self._ids)
        p = PendingReply()
        self._pending[rid] = p
        try:
            conn.send(request_wire(rid, op, args), limit=self._max_frame)
        except BrokerError:
            self._pending.pop(rid, None)
            raise
        return p

    async def request(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and wait for its answer (the building block of every other call)."""
        return await self.start_request(op, args).wait()

    # ---------------------------------------------------------------------------------------------- dialogs

    async def begin_dialog(
        self,
        from_service: str,
        to_service: str,
        contract: str = DEFAULT,
        *,
        broker_instance: str | None = None,
        lifetime: float | None = None,
        encryption: bool = False,
        related_group: str | None = None,
    ) -> Dialog:
        """Begin a conversation from a local service to ``to_service`` (which may not exist yet: its messages
        then wait, DELAYED, until it does). ``lifetime`` in seconds; ``related_group`` joins a group."""
        r = await self.request(
            "begin_dialog",
            {
                "from_service": from_service,
                "to_service": to_service,
                "contract": contract,
                "broker_instance": broker_instance,
                "lifetime": lifetime,
                "encryption": encryption,
                "related_group": related_group,
            },
        )
        return Dialog(self, r["handle"], r["conversation_id"], r["group_id"], to_service)

    def dialog(self, handle: str) -> Dialog:
        """A conversation by its handle (e.g. one from ``list_conversations``)."""
        return Dialog(self, handle)

    async def receive(
        self,
        queue: str,
        max_messages: int = 1,
        timeout: float | None = 0.0,
        *,
        lease_seconds: float | None = None,
        max_groups: int = 1,
    ) -> ReceivedBatch:
        """Up to ``max_messages`` of one conversation group, locked until commit or rollback.

        ``timeout``: seconds to wait for messages (0: do not wait; None: wait without limit). An empty batch means
        nothing arrived in time. ``lease_seconds``: how long the lock holds without commit or rollback (the
        node's ``receive_lease`` by default); after that the messages go back to the queue. ``max_groups`` > 1:
        the batch may hold up to that many ready conversation groups (still ``max_messages`` in all), each
        locked to this receiver until the batch's one commit or rollback; a group's messages come together, in
        order (see ``Message.conversation_group_id``).
        """
        if timeout is not None and (timeout < 0 or math.isnan(timeout)):
            raise InvalidArgument("timeout must be >= 0, or None to wait without limit")
        if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
            raise InvalidArgument(f"max_groups must be a whole number >= 1, got {max_groups!r}")
        if tracing.recording():  # OpenTelemetry with a TracerProvider: a receive span linked to each message
            with tracing.client_receive(queue) as span:
                batch = await self._receive(queue, max_messages, timeout, lease_seconds, max_groups)
                tracing.link_messages(span, batch.messages)
                return batch
        return await self._receive(queue, max_messages, timeout, lease_seconds, max_groups)

    async def _receive(
        self, queue: str, max_messages: int, timeout: float | None, lease_seconds: float | None, max_groups: int
    ) -> ReceivedBatch:
        # facts "compact": a node from before them ignores the argument and answers with the map (docs/protocol.md)
        args = {"queue": queue, "max_messages": max_messages, "timeout": timeout, "lease_seconds": lease_seconds,
                "facts": "compact"}
        if max_groups != 1:  # only then: a node from before max_groups takes the request as it always did
            args["max_groups"] = max_groups
        r = await self.request("receive", args)
        # the rows stay as decoded; a message is a view made when the batch is iterated or indexed (received.py)
        rows = r["messages"]
        if "facts" in r:
            facts = BatchFacts(r["queue"] or queue, None, bool(r.get("traced")), rows=rows, facts=r["facts"])
        else:
            facts = BatchFacts(r["queue"] or queue, r["conversations"], bool(r.get("traced")))
        return ReceivedBatch(self, r["lease"], ReceivedMessages(rows, facts), r.get("lease_expires_at"))

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None and not self._conn.closed else "closed"
        return f"<Client {self.node_url} {state} in_flight={len(self._pending)}>"


def connect(url: str = f"tcp://127.0.0.1:{DEFAULT_PORT}", *, token: str | None = None, **options: Any) -> Client:
    """A client for the node at ``url``: ``async with connect(url) as client`` (or ``client = await connect(url)``,
    then ``await client.aclose()``). ``url`` is ``tcp://host:port``, or ``tls://host:port`` for a node with
    ``[tls]``; several nodes' addresses with commas (an owner and its standbys) connect to the one that serves. ``token`` authenticates it as the identity holding that token; other options are
    :class:`Client`'s (``ca``, ``cert``, ``key`` or ``ssl_context`` for TLS; ``connect_timeout``,
    ``handshake_timeout``)."""
    return Client(url, token=token, **options)

