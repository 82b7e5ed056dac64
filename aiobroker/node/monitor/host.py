"""What the monitor sees of the node: one narrow protocol, so that the monitor never imports the server (which
imports the monitor to start it). :class:`aiobroker.node.server.Node` satisfies it by its shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ...config import NodeConfig
from ...core.broker import BrokerCore
from ..admission import Admission
from ..counters import Counters
from ..links import PeerLinks
from ..sessions import Session
from ..writer import StoreWriter
from ...store import Store


class Monitored(Protocol):
    @property
    def config(self) -> NodeConfig: ...

    @property
    def core(self) -> BrokerCore:
        """The core; None until the store is open and restored (check :meth:`not_ready` first)."""
        ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def store(self) -> Store: ...

    @property
    def writer(self) -> StoreWriter: ...

    @property
    def links(self) -> PeerLinks: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def sessions(self) -> set[Session]:
        """The client connections established now."""
        ...

    @property
    def url(self) -> str:
        """What a client dials."""
        ...

    def not_ready(self) -> str | None:
        """Why the node cannot serve clients now (starting, opening its store, stopping), or None if it can."""
        ...

    def status(self) -> dict[str, Any]:
        """The node's status, as ``aiobroker status`` shows it."""
        ...

    def diagnose(self, service: str, broker_instance: str | None) -> dict[str, Any]:
        """Why messages to ``service`` go where they go, in words."""
        ...
