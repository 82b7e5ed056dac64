"""The Python client: one TCP (or TLS) connection to a node, many requests in flight on it.

::

    async with aiobroker.connect("tcp://127.0.0.1:4022") as client:   # tls://host:port for a node with [tls]
        dialog = await client.begin_dialog("//shop/Client", "//shop/Orders", "DEFAULT")
        await dialog.send("DEFAULT", b"one order")
        async with await client.receive("orders", max_messages=100, timeout=5) as batch:
            for message in batch:
                ...                      # committed when the block ends, rolled back if it raises

Requests made concurrently (from several tasks, or one task's ``send_many``) share frames and writes. Every call
raises a :class:`~aiobroker.errors.BrokerError` subclass named by the node's answer; a connection that drops
fails every request in flight with :class:`~aiobroker.errors.ConnectionLost` (it may or may not have taken
effect: a send that was not acknowledged is not promised).

A node closes a connection that has had nothing sent, received or in flight for its ``[limits] idle_timeout``
(600 s by default; a waiting receive, even with ``timeout=None``, and a held lease are in flight), and says why:
the next request raises :class:`~aiobroker.errors.ConnectionLost` with the node's words. Connect again.

A node with ``[security] authorization`` on checks each request against the caller's identity: pass
``token=`` (an identity's bearer token) or connect with a TLS client certificate registered as an identity; a
client with neither is ``public``. A token or certificate the node does not know is refused at once with
:class:`~aiobroker.errors.NotAuthorized`, as is any request the identity has no right to (docs/security.md).
"""

from __future__ import annotations

import builtins
import itertools
import math
import os
import ssl
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .core.catalog import DEFAULT, DIALOG_TIMER, END_DIALOG, ERROR
from .core.dialog_errors import parse_error_body
from .errors import (
    BrokerError,
    ConnectionLost,
    InvalidArgument,
    MessageTooLarge,
    ProtocolError,
    Timeout,
    TLSError,
    error_from_code,
)
from .transport import tls
from .transport.connection import FramedConnection, describe_os_error
from .wire.frames import Failed, Hello, Refused, Reply, Welcome, request_wire

DEFAULT_PORT = 4022
#: How TLS errors name the two sides, in this client's words.
_WHO = {
    "far": "the node",
    "near": "this client",
    "ca": "the CA file (ca=; the CLI's --ca)",
    "cert": ": give cert= and key= (the CLI's --cert and --key)",
}
#: ``tcp://`` is plain TCP; ``tls://`` is TLS, to a node with ``[tls]`` (its own URL then says tls:// too).
SCHEMES = ("tcp", "tls")
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


def parse_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` or ``tls://host:port`` (or ``host:port``; IPv6 as ``[::1]:4022``) → (host, port)."""
    _, host, port = split_url(url)
    return host, port


def split_url(url: str) -> tuple[str, str, int]:
    """A node's address → ``(scheme, host, port)``; the scheme is ``"tcp"`` (also for a bare ``host:port``) or
    ``"tls"``, the port 4022 when none is given."""
    scheme, sep, text = url.partition("://")
    if not sep:
        scheme, text = "tcp", url
    elif scheme not in SCHEMES:
        raise InvalidArgument(
            f"node address {url!r}: the scheme must be tcp:// (plain TCP) or tls:// (a node with [tls]),"
            f" not {scheme}://"
        )
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise InvalidArgument(f"node address {url!r}: unclosed '[' in IPv6 address")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise InvalidArgument(f"node address {url!r}: port {port_text!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise InvalidArgument(f"node address {url!r}: expected {scheme}://host:port")
    return scheme, host, port


class Message:
    """A received message and the facts of its conversation.

    Built for every message received, so it is a plain slotted object whose conversation facts are shared by all
    messages of the conversation in a batch (hence the properties).
    """

    __slots__ = ("queue", "message_id", "conversation_handle", "sequence_number", "message_type", "body",
                 "enqueued_at", "_conversation")

    def __init__(
        self,
        queue: str,
        message_id: int,
        conversation_handle: str,
        sequence_number: int,
        message_type: str,
        body: bytes,
        enqueued_at: float,
        conversation: Sequence[Any],
    ) -> None:
        self.queue = queue
        self.message_id = message_id  #: unique on its node; increases in arrival order
        self.conversation_handle = conversation_handle
        #: in order per conversation and direction; -1 for messages the broker makes locally (DialogTimer, a
        #: lifetime Error)
        self.sequence_number = sequence_number
        self.message_type = message_type
        self.body = body
        self.enqueued_at = enqueued_at
        #: [service, far_service, contract, group_id, is_initiator, conversation_id]
        self._conversation = conversation

    service_name = property(lambda self: self._conversation[0], doc="the local service (whose queue it is)")
    far_service_name = property(lambda self: self._conversation[1], doc="the service at the other end")
    contract = property(lambda self: self._conversation[2], doc="the conversation's contract")
    conversation_group_id = property(lambda self: self._conversation[3], doc="the group this side's conversation is in")
    is_initiator = property(lambda self: self._conversation[4], doc="whether this side began the conversation")
    conversation_id = property(lambda self: self._conversation[5], doc="the same on both sides")

    @property
    def is_end_dialog(self) -> bool:
        """The far side ended the conversation (EndDialog)."""
        return self.message_type == END_DIALOG

    @property
    def is_error(self) -> bool:
        """An Error message (see :attr:`error`)."""
        return self.message_type == ERROR

    @property
    def is_timer(self) -> bool:
        """A DialogTimer message (a timer set with ``begin_timer`` ran out)."""
        return self.message_type == DIALOG_TIMER

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, description) of an Error message (codes < 0 are the broker's), else None."""
        return parse_error_body(self.body) if self.message_type == ERROR else None

    def __repr__(self) -> str:
        return (
            f"<Message {self.message_type!r} seq={self.sequence_number} conversation={self.conversation_handle}"
            f" {len(self.body)} bytes>"
        )


class Dialog:
    """One side of a conversation, by its handle."""

    __slots__ = ("client", "handle", "conversation_id", "group_id")

    def __init__(self, client: Client, handle: str, conversation_id: str | None = None, group_id: str | None = None):
        self.client = client
        self.handle = handle
        self.conversation_id = conversation_id
        self.group_id = group_id

    async def send(self, message_type: str = DEFAULT, body: bytes = b"") -> None:
        """Send one message; returns once the node has stored it."""
        await self.client.request("send", {"handle": self.handle, "messages": [[message_type, body]]})

    async def send_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Send several messages in order, in one frame; returns once the node has stored all of them."""
        await self.start_send_many(messages).wait()

    def start_send_many(self, messages: Sequence[tuple[str, bytes]]) -> PendingReply:
        """Like :meth:`send_many`, but returns as soon as the batch is on its way: ``await .wait()`` for the
        node's acknowledgement. Batches started one after another are stored in that order."""
        batch = messages if isinstance(messages, list) else list(messages)  # tuples travel as msgpack arrays
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
    """Messages of one conversation group, locked for this client until :meth:`commit` or :meth:`rollback`.

    As an async context manager it commits when the block ends normally and rolls back if it raises.
    """

    __slots__ = ("client", "lease", "messages", "lease_expires_at", "_settled")

    def __init__(self, client: Client, lease: int | None, messages: list[Message], lease_expires_at: float | None):
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
        return Dialog(self.client, message.conversation_handle, message.conversation_id, message.conversation_group_id)

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


class PendingReply:
    """A request already sent; ``await pending.wait()`` gives its result (or raises its error)."""

    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BrokerError | None = None

    @property
    def done(self) -> bool:
        """Whether the answer (or the error) has arrived."""
        return self.event.is_set()

    async def wait(self) -> Any:
        """The request's result, once the node has answered; raises its error."""
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result


class Client:
    """A connection to one node. Use ``async with aiobroker.connect(url) as client``."""

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
    ) -> None:
        """``url``: ``tcp://host:port`` for plain TCP, ``tls://host:port`` for a node with ``[tls]``.

        For ``tls://``: ``ca`` is the PEM file of the CA (or the node's self-signed certificate) to trust; without
        it the system's trust store is used, as any TLS client does. ``cert`` and ``key`` (together) are this
        client's certificate, for a node that requires one (``[tls] ca``); the node also takes it for the
        identity with that certificate. Or give a ready ``ssl_context`` instead of the three (see
        :func:`aiobroker.transport.tls.client_context`). The node's certificate must name the host dialled.
        ``token``: an identity's bearer token, sent in the handshake (the node keeps only its SHA-256)."""
        if token is not None and (not isinstance(token, str) or not token):
            raise InvalidArgument("token must be a non-empty string (an identity's bearer token), or None")
        self.url = url
        scheme, self.host, self.port = split_url(url)
        files = {name: value for name, value in (("ca", ca), ("cert", cert), ("key", key)) if value is not None}
        if scheme == "tcp" and (files or ssl_context is not None):
            given = ", ".join([*files, *(["ssl_context"] if ssl_context is not None else [])])
            raise InvalidArgument(
                f"{given} given for {url!r}, a plain-TCP address: write tls://{_host_port(self.host, self.port)}"
                " to connect with TLS"
            )
        if scheme == "tls" and ssl_context is None:
            ssl_context = tls.client_context(
                ca=Path(ca) if ca is not None else None,
                cert=Path(cert) if cert is not None else None,
                key=Path(key) if key is not None else None,
            )
        elif files:
            raise InvalidArgument(f"give ssl_context or {', '.join(files)}, not both (the context holds the files)")
        self.ssl_context = ssl_context
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
        try:
            with anyio.fail_after(self.connect_timeout):
                if self.ssl_context is not None:
                    stream: Any = await tls.connect(self.host, self.port, self.ssl_context)
                else:
                    stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError:
            raise Timeout(f"connecting to {self.url} took over {self.connect_timeout}s; is the node reachable?") from None
        except ssl.SSLError as exc:  # before OSError, its base: the TLS handshake failed, and we know why
            raise TLSError(f"TLS with {self.url} failed: {tls.describe_tls_error(exc, **_WHO)}") from exc
        except OSError as exc:
            raise ConnectionLost(
                f"cannot connect to {self.url}: {describe_os_error(exc)}; is a node running there"
                " (start one with: aiobroker serve)?"
            ) from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:  # closed in the middle of the TLS handshake
            raise TLSError(
                f"TLS with {self.url} failed: the node closed the connection during the TLS handshake"
                " (does it speak TLS? a plain-TCP node is dialled tcp://)"
            ) from exc
        conn = FramedConnection(stream, peer=self.url)
        try:
            with anyio.fail_after(self.handshake_timeout):
                info: dict[str, Any] = {"client": "aiobroker-python"}
                if self._token is not None:
                    info["token"] = self._token
                conn.send_frame(Hello(role="client", info=info))
                await conn.flush()
                frame = await conn.receive_one()
        except TimeoutError:
            await conn.aclose()
            raise Timeout(
                f"{self.url} did not finish the handshake within {self.handshake_timeout}s{self._plain_hint()}"
            ) from None
        except BrokerError as exc:
            await conn.aclose()
            tls_error = tls.find_tls_error(exc)
            if tls_error is not None:  # TLS 1.3: the node's verdict on our certificate arrives at the first read
                raise TLSError(f"{self.url} refused the connection: {tls.describe_tls_error(tls_error, **_WHO)}") from exc
            if isinstance(exc, ConnectionLost | ProtocolError) and self.ssl_context is None:
                raise type(exc)(f"{exc.message}{self._plain_hint()}") from exc
            raise
        if isinstance(frame, Refused):
            await conn.aclose()
            raise error_from_code(frame.code, f"{self.url} refused the connection: {frame.message}")
        if not isinstance(frame, Welcome):
            await conn.aclose()
            raise ProtocolError(f"{self.url} answered the handshake with {type(frame).__name__.upper()}")
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

    def _plain_hint(self) -> str:
        """Words for a handshake that failed on plain TCP: a node with [tls] answers plain TCP so."""
        if self.ssl_context is not None:
            return ""
        return f" (if the node speaks TLS, dial tls://{_host_port(self.host, self.port)})"

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
                f"connection to {self.url} closed ({self._closed_reason}) while a request was in flight;"
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
                f"not connected to {self.url}" + (f" ({self._closed_reason})" if self._closed_reason else "")
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

    # -------------------------------------------------------------------------------------------------- catalog

    async def create(self, kind: str, definition: dict[str, Any]) -> dict[str, Any]:
        """Create an object of ``kind`` (message_type, contract, queue, service, route, identity, binding) from
        its definition; returns it as stored (an identity or binding as ``list`` shows it: no key, no token)."""
        result: dict[str, Any] = await self.request("create", {"kind": kind, "definition": definition})
        return result

    async def create_message_type(self, name: str, validation: str = "none") -> dict[str, Any]:
        """validation: none, empty, msgpack, json or xml."""
        return await self.create("message_type", {"name": name, "validation": validation})

    async def create_contract(self, name: str, messages: dict[str, str]) -> dict[str, Any]:
        """messages maps message type → sent_by (initiator, target, any)."""
        return await self.create("contract", {"name": name, "messages": messages})

    async def create_queue(
        self,
        name: str,
        *,
        status: bool | str = True,
        retention: bool | str = False,
        poison_message_handling: bool | str = True,
    ) -> dict[str, Any]:
        """A queue: ``status`` off refuses receives; ``retention`` keeps received messages until their
        conversation ends; ``poison_message_handling`` turns the queue off after repeated rollbacks. Each switch
        is ``"on"`` or ``"off"`` (or True or False); the node's answers (here, ``list``, ``status``) spell them
        ``"on"`` and ``"off"``."""
        return await self.create(
            "queue",
            {"name": name, "status": status, "retention": retention, "poison_message_handling": poison_message_handling},
        )

    async def alter_queue(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change status, retention or poison_message_handling (e.g. ``status="on"`` re-enables a queue)."""
        result: dict[str, Any] = await self.request("alter_queue", {"name": name, "changes": changes})
        return result

    async def alter_route(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change a route: ``address``, ``service_name``, ``broker_instance``, ``weight`` or ``lifetime`` (seconds
        from now). Conversations waiting for a route, and those using it, are routed again."""
        result: dict[str, Any] = await self.request("alter_route", {"name": name, "changes": changes})
        return result

    async def create_service(
        self, name: str, queue: str, contracts: Sequence[str] = (), *, owner: str | None = None
    ) -> dict[str, Any]:
        """contracts: those the service accepts as a target (none: it can only initiate). ``owner``: the identity
        (with a private key) whose key reads secured conversations to it (default: the node's identity)."""
        definition: dict[str, Any] = {"name": name, "queue": queue, "contracts": list(contracts)}
        if owner is not None:
            definition["owner"] = owner
        return await self.create("service", definition)

    async def create_identity(
        self,
        name: str,
        *,
        certificate: str | bytes | None = None,
        private_key: str | bytes | None = None,
        tokens: Sequence[str] = (),
        send: Sequence[str] = (),
        receive: Sequence[str] = (),
        admin: bool = False,
        peer: bool = False,
    ) -> dict[str, Any]:
        """An identity: who a client, a service owner or a remote initiator is, and what it may do.

        ``certificate`` and ``private_key`` are PEM (text or bytes; read files yourself): a certificate alone
        identifies a remote user or a TLS client; with its key the identity can own services and sign bindings.
        ``tokens``: bearer tokens (at least 8 characters) a client may ``connect(url, token=...)`` with; the node
        keeps their SHA-256 only. ``send``: services it may send to; ``receive``: queues it may receive from
        (``"*"``: any); ``admin``: may create, alter and drop objects; ``peer``: another node presenting this
        identity (its ``[federation] link_token`` or TLS certificate) may link to this one. Returns what ``list("identity")`` shows:
        never the key or the tokens."""
        definition: dict[str, Any] = {
            "name": name,
            "tokens": _strings("tokens", tokens),
            "send": _strings("send", send),
            "receive": _strings("receive", receive),
            "admin": admin,
            "peer": peer,
        }
        if certificate is not None:
            definition["certificate"] = _pem_text("certificate", certificate)
        if private_key is not None:
            definition["private_key"] = _pem_text("private_key", private_key)
        return await self.create("identity", definition)

    async def create_binding(
        self,
        name: str,
        *,
        to_service: str,
        certificate: str | bytes,
        identity: str | None = None,
        anonymous: bool = False,
    ) -> dict[str, Any]:
        """A remote service binding: conversations to ``to_service`` (on another node) are secured with a
        session key wrapped for ``certificate`` (PEM: the remote service owner's) and signed by the local
        ``identity`` (default: the node's identity). ``anonymous``: sign nothing; the target sees ``public``."""
        definition: dict[str, Any] = {
            "name": name,
            "to_service": to_service,
            "certificate": _pem_text("certificate", certificate),
            "anonymous": anonymous,
        }
        if identity is not None:
            definition["identity"] = identity
        return await self.create("binding", definition)

    async def create_route(
        self,
        name: str,
        address: str,
        *,
        service_name: str | None = None,
        broker_instance: str | None = None,
        lifetime: float | None = None,
        weight: int = 1,
    ) -> dict[str, Any]:
        """A route: messages for ``service_name`` (None: any service) and ``broker_instance`` (None: any) go to
        ``address`` (``tcp://host:port``, ``LOCAL`` or ``TRANSPORT``); ``lifetime`` in seconds (None: no expiry);
        routes of equal rank share the load by ``weight``."""
        definition: dict[str, Any] = {
            "name": name,
            "address": address,
            "service_name": service_name,
            "broker_instance": broker_instance,
            "weight": weight,
        }
        if lifetime is not None:
            definition["lifetime"] = lifetime
        return await self.create("route", definition)

    async def drop(self, kind: str, name: str) -> None:
        """Drop the object ``kind``/``name`` (message_type, contract, queue, service, route, identity, binding);
        refused while other objects use it."""
        await self.request("drop", {"kind": kind, "name": name})

    async def list(self, kind: str) -> builtins.list[dict[str, Any]]:
        """kind: message_type, contract, queue, service, route, identity or binding. Identities and bindings come
        without keys, tokens or PEM: subject, fingerprint, expiry, whether there is a key, how many tokens."""
        result: builtins.list[dict[str, Any]] = await self.request("list", {"kind": kind})
        return result

    async def status(self) -> dict[str, Any]:
        """Node, store, queues with their depth, conversations by state, delayed messages."""
        result: dict[str, Any] = await self.request("status", {})
        return result

    async def diagnose(self, service: str, broker_instance: str | None = None) -> dict[str, Any]:
        """Why messages to ``service`` go where they go, or wait: the seven routing steps in words, the routes
        that apply, and dynamic routing's state for it (request in flight, last answer or error, next retry)."""
        result: dict[str, Any] = await self.request("diagnose", {"service": service, "broker_instance": broker_instance})
        return result

    async def list_conversations(self, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        """Up to ``limit`` conversation endpoints on the node, each described as :meth:`Dialog.info` does."""
        result: builtins.list[dict[str, Any]] = await self.request("list_conversations", {"limit": limit})
        return result

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
        return Dialog(self, r["handle"], r["conversation_id"], r["group_id"])

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
    ) -> ReceivedBatch:
        """Up to ``max_messages`` of one conversation group, locked until commit or rollback.

        ``timeout``: seconds to wait for messages (0: do not wait; None: wait without limit). An empty batch means
        nothing arrived in time. ``lease_seconds``: how long the lock holds without commit or rollback (the
        node's ``receive_lease`` by default); after that the messages go back to the queue.
        """
        if timeout is not None and (timeout < 0 or math.isnan(timeout)):
            raise InvalidArgument("timeout must be >= 0, or None to wait without limit")
        r = await self.request(
            "receive",
            {"queue": queue, "max_messages": max_messages, "timeout": timeout, "lease_seconds": lease_seconds},
        )
        convs = r["conversations"]
        qname = r["queue"] or queue
        unknown = ["", "", "", "", False, ""]  # a conversation that ended while the batch was on its way
        messages = [
            Message(qname, row[0], row[2], row[3], row[4], row[5], row[6], convs.get(row[2], unknown))
            for row in r["messages"]
        ]
        return ReceivedBatch(self, r["lease"], messages, r.get("lease_expires_at"))

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None and not self._conn.closed else "closed"
        return f"<Client {self.url} {state} in_flight={len(self._pending)}>"


def connect(url: str = f"tcp://127.0.0.1:{DEFAULT_PORT}", *, token: str | None = None, **options: Any) -> Client:
    """A client for the node at ``url``: ``async with connect(url) as client`` (or ``client = await connect(url)``,
    then ``await client.aclose()``). ``url`` is ``tcp://host:port``, or ``tls://host:port`` for a node with
    ``[tls]``. ``token`` authenticates it as the identity holding that token; other options are
    :class:`Client`'s (``ca``, ``cert``, ``key`` or ``ssl_context`` for TLS; ``connect_timeout``,
    ``handshake_timeout``)."""
    return Client(url, token=token, **options)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pem_text(what: str, value: str | bytes) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{what} must be PEM text; these bytes are not (a DER file? convert it to PEM)") from None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be PEM text (str or bytes), got {type(value).__name__}")
    return value


def _strings(what: str, values: Sequence[str]) -> builtins.list[str]:
    if isinstance(values, str):
        raise InvalidArgument(f"{what} must be a list of strings, not one string (write [{values!r}])")
    return builtins.list(values)


__all__ = [
    "Client",
    "Dialog",
    "Message",
    "PendingReply",
    "ReceivedBatch",
    "connect",
    "parse_url",
    "split_url",
    "MessageTooLarge",
]
