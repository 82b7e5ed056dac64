"""What the parts of the shell see of the node: two narrow interfaces, so that no part imports the server.

The server (:class:`aiobroker.node.server.Node`) imports the handlers, the rights and the links and hands itself
to them; they know it only as one of these protocols, which name the few things each uses. The server satisfies
both by its shape (nothing registers), and mypy checks that it does where it hands itself over.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any, Protocol

from anyio.abc import TaskGroup

from ..config import NodeConfig
from ..core.broker import BrokerCore
from .admission import Admission
from .counters import Counters
from .waiters import Waiters
from .writer import StoreWriter


class Shell(Protocol):
    """What a request handler (:mod:`aiobroker.node.handlers`) uses of the node."""

    @property
    def core(self) -> BrokerCore: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def waiters(self) -> Waiters:
        """Waiting receives (serve them after a commit, fail them when their queue goes) and the ticker."""
        ...

    @property
    def counters(self) -> Counters:
        """What the handlers count for ``/metrics``: messages sent, committed, rolled back."""
        ...

    def log_change(self, what: str, fields: dict[str, str] | None = None) -> None:
        """Log a change a client made to the catalog (or a conversation it cleaned up); ``fields`` name what it
        changed (``{"queue": name}``)."""

    def diagnose(self, service: str, broker_instance: str | None) -> dict[str, Any]:
        """Why messages to ``service`` go where they go, in words."""
        ...

    def status(self) -> dict[str, Any]:
        """The node's status, as ``aiobroker status`` shows it."""
        ...


class LinkHost(Protocol):
    """What the peer links (:mod:`aiobroker.node.links`) use of the node."""

    @property
    def core(self) -> BrokerCore: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def writer(self) -> StoreWriter: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def counters(self) -> Counters:
        """What the links count for ``/metrics``: acknowledgements, retransmissions, failures, round trips."""
        ...

    @property
    def link_tls(self) -> ssl.SSLContext | None:
        """How links connect when the node speaks TLS (None: plain TCP)."""
        ...

    @property
    def task_group(self) -> TaskGroup | None:
        """Where the links start their tasks; None before the node has started and after it stopped."""
        ...

    def handle_effects(self, peer: object = None) -> None:
        """Do what the core asked in its outbox after it took a peer's frame (``peer`` is named in reports)."""
