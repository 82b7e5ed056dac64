"""The administration calls of :class:`~aiobroker.client.Client`: create, alter, drop and list the node's objects
(message types, contracts, queues, services, routes, identities, bindings), and ask for its status, a routing
diagnosis or its conversations.

They are plain requests with no state of their own, so they live in a base class written against one method,
:meth:`AdminCalls.request`, which the client's connection provides: ``client.create_queue(...)`` is one request.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgument


class AdminCalls:
    """``create_*``, ``alter_*``, ``drop``, ``list``, ``status``, ``diagnose`` and ``list_conversations``."""

    __slots__ = ()

    async def request(self, op: str, args: dict[str, Any]) -> Any:
        """Send one request and wait for its answer (:meth:`aiobroker.client.Client.request`)."""
        raise NotImplementedError

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
        max_messages: int | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """A queue: ``status`` off refuses receives; ``retention`` keeps received messages until their
        conversation ends; ``poison_message_handling`` turns the queue off after repeated rollbacks. Each switch
        is ``"on"`` or ``"off"`` (or True or False); the node's answers (here, ``list``, ``status``) spell them
        ``"on"`` and ``"off"``. ``max_messages`` and ``max_bytes`` bound what the queue holds (messages, and
        their bodies' bytes): a send past either is refused with :class:`~aiobroker.errors.QueueFull`."""
        definition: dict[str, Any] = {
            "name": name, "status": status, "retention": retention, "poison_message_handling": poison_message_handling
        }
        if max_messages is not None:
            definition["max_messages"] = max_messages
        if max_bytes is not None:
            definition["max_bytes"] = max_bytes
        return await self.create("queue", definition)

    async def alter_queue(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change status, retention, poison_message_handling, max_messages or max_bytes (e.g. ``status="on"``
        re-enables a queue; ``max_messages=None`` removes that bound)."""
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

