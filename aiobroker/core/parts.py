"""Who in the core calls whom: the interface each part offers the others.

Theory of operation
-------------------
The core is composed of parts, each a class in its own module that owns one job (``broker.py`` makes them and
wires them together, and is the only module that imports them all):

=================  ========================  ============================================================
part               module                    owns
=================  ========================  ============================================================
(records)          ``ledger.py``             what the parts share: catalog, endpoints, queues, the
                                             transmission queue, the timer, the outbox, the store's batch
conversations      ``conversations.py``      endpoints joining and leaving, every state change, timers
delivery           ``delivery.py``           send, numbering, local delivery, publishing stored messages
endings            ``endings.py``            end, failure, refusal, lifetime expiry
receiving          ``receiving.py``          receives, leases, commit, rollback, poison messages
outbound           ``outbound.py``           routing decisions, the transmission queue, envelopes out, links
inbound            ``inbound.py``            envelopes in: delivery in order, acknowledgements, forwarding
dynamic            ``dynamic.py``            asking where a service is, answers, refresh (dispatcher.py)
security           ``dialog_security.py``    bindings, session keys, sealing and opening bodies
objects            ``objects.py``            creating, altering and dropping catalog objects
status             ``status.py``             what ``status`` reports
=================  ========================  ============================================================

A part calls a sibling through an attribute named after it (``self.outbound.route(ep, now)`` is in
``outbound.py``), typed by the protocol below, so no part imports another's module and a reader always knows which
file answers. ``ledger.py`` and ``conversations.py`` are the floor: every part may import them. The calls go both
ways between some parts (delivery asks outbound where a message goes; outbound, releasing DELAYED messages to a
service that appeared here, has delivery deliver them), which is why they meet here rather than by import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .conversation import Endpoint
from .dialog_errors import Refusal
from .dispatcher import Dispatcher
from .envelopes import Envelope

if TYPE_CHECKING:
    from ..security.dialog import DialogCipher
    from .catalog import QueueDef
    from .queues import Lease


class DeliveryPart(Protocol):
    """``delivery.py``: messages into queues on this node."""

    def send(self, handle: str, messages: list[Any], now: float) -> int: ...
    def emit(self, ep: Endpoint, message_type: str, body: bytes, now: float) -> None: ...
    def new_far_endpoint(self, ep: Endpoint, now: float) -> Endpoint | None: ...
    def deliver(
        self, src: Endpoint, far: Endpoint, seq: int, message_type: str, body: bytes, now: float, trace: str | None = None
    ) -> None: ...
    def deliver_remote(self, ep: Endpoint, env: Envelope, now: float) -> None: ...
    def enqueue(
        self, ep: Endpoint, seq: int, message_type: str, body: bytes, now: float, trace: str | None = None
    ) -> None: ...


class EndingsPart(Protocol):
    """``endings.py``: conversations ended by the application, by the broker, or by a refusal."""

    def end(self, handle: str, now: float, *, error: tuple[int, str] | None = None, cleanup: bool = False) -> int: ...
    def fail(self, ep: Endpoint, code: int, description: str, now: float) -> None: ...
    def refuse_remote(self, ep: Endpoint, code: int, description: str, now: float) -> None: ...


class OutboundPart(Protocol):
    """``outbound.py``: where outgoing messages go, and the transmission queue they wait in."""

    def route(self, ep: Endpoint, now: float) -> Endpoint | str | None: ...
    def queue_outgoing(self, ep: Endpoint, messages: list[Any], now: float, size: int | None = None) -> None: ...
    def drop_outgoing(self, ep: Endpoint) -> int: ...
    def reroute(
        self, now: float, services: set[str] | None = None, *, binding_waiters_only: bool = False,
        with_links: bool = False,
    ) -> int: ...
    def link_status(self, handle: str, now: float) -> str | None: ...


class DynamicPart(Protocol):
    """``dynamic.py``: dynamic routing's requests and what they wait for."""

    dispatcher: Dispatcher
    #: the resolver asked (None: the Broker Configuration Notice service, if there is one)
    resolver_name: str | None
    #: handles of conversations DELAYED for a binding (their route known)
    binding_waiters: set[str]
    #: services that sent through a resolver's route since it was made (refreshed ahead of expiry if so)
    route_traffic: set[str]

    @property
    def dynamic_routing(self) -> bool: ...
    @property
    def asks(self) -> str: ...
    def ask(self, kind: str, service: str, now: float, *, binding_too: bool = False) -> str: ...
    def waiting_reason(self, kind: str, service: str, now: float) -> str: ...
    def delayed_words(self, ep: Endpoint, now: float) -> str | None: ...
    def request_done(
        self, kind: str, service: str, now: float, *, ok: bool, text: str, retry_after: float | None = None
    ) -> int: ...
    def request_side_removed(self, handle: str, now: float) -> None: ...
    def bcn_reply(self, ep: Endpoint, message_type: str, body: bytes, now: float) -> None: ...
    def dynamic_statistics(self, now: float) -> dict[str, Any]: ...


class SecurityPart(Protocol):
    """``dialog_security.py``: dialog security between two end nodes."""

    def secure(self, ep: Endpoint, now: float, plain: set[str] | None = None) -> bool: ...
    def binding_wanted(self, service: str, now: float) -> bool: ...
    def cipher(self, ep: Endpoint) -> DialogCipher: ...
    def accept_key_header(self, env: Envelope, now: float) -> tuple[bytes, str, Refusal | None]: ...
    def authorize_initiator(self, identity: str, to_service: str) -> Refusal | None: ...
    def open_run(self, ep: Endpoint, envelopes: list[Any], start: int, stop: int) -> int: ...
    def count(self, what: str) -> None: ...
    def statistics(self) -> dict[str, Any]: ...


class ReceivingPart(Protocol):
    """``receiving.py``: receives and their leases."""

    leases: dict[int, Lease]


class ObjectsPart(Protocol):
    """``objects.py``: the catalog's objects as administrators change them."""

    def alter_queue(self, name: str, changes: dict[str, Any]) -> QueueDef: ...
