"""Objects: creating, altering and dropping the catalog's objects, and what each change sets moving.

Theory of operation
-------------------
The catalog (``catalog.py``) checks and holds definitions; this part adds what a change means for the rest of the
node: a queue made or dropped with its message queue, conversations routed again when a service, a route or a
binding appears (DELAYED messages to it go at once), a service dropped only once its conversations have ended.
Every change is saved with the next batch.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument, ObjectInUse
from .catalog import BCN_SERVICE, CatalogObject, QueueDef, Service
from .conversation import Endpoint, State
from .conversations import Conversations
from .identities import Binding
from .ledger import Ledger
from .parts import OutboundPart
from .queues import MessageQueue
from .routing import Route


class Objects:
    """The catalog as administrators change it (see the module's header)."""

    outbound: OutboundPart

    def __init__(self, ledger: Ledger, conversations: Conversations) -> None:
        self.ledger = ledger
        self.conversations = conversations

    def create_object(self, kind: str, definition: dict[str, Any], now: float = 0.0) -> CatalogObject:
        ledger = self.ledger
        obj = ledger.catalog.create(kind, definition, now)
        ledger.save_object(kind, obj, obj.name)
        if isinstance(obj, QueueDef):
            ledger.queues[obj.name] = MessageQueue(obj, ledger.page_window)
        elif isinstance(obj, Service):
            self.outbound.reroute(now, {obj.name})
        elif isinstance(obj, Route) and obj.service_name is not None:
            # a route that names a service changes only where conversations to it go: those DELAYED on it, and those
            # on a link (a better route may move them), not the ones DELAYED on other services: the BCN service
            # creating a route per answer cost a walk over every DELAYED conversation (quadratic in a storm)
            self.outbound.reroute(now, {obj.service_name}, with_links=True)
        elif kind == "route":
            self.outbound.reroute(now)
        elif isinstance(obj, Binding):
            self.outbound.reroute(now, {obj.to_service})  # conversations waiting for a binding to it go now
        return obj

    def alter_queue(self, name: str, changes: dict[str, Any]) -> QueueDef:
        catalog = self.ledger.catalog
        current: QueueDef = catalog.get("queue", name)
        definition = {**current.to_def(), **changes, "name": name}
        new: QueueDef = catalog.build("queue", definition)  # type: ignore[assignment]
        catalog.replace("queue", new)
        queue = self.ledger.queues[name]
        queue.definition = new
        if new.status:
            queue.disabled_reason = None
        elif not current.status or queue.disabled_reason is None:
            queue.disabled_reason = queue.disabled_reason or "its status was set off by an administrator"
        self.ledger.save_object("queue", new, name)
        return new

    def alter_route(self, name: str, changes: dict[str, Any], now: float) -> Route:
        """Change a route's address, service, instance, weight or lifetime; conversations waiting for a route,
        and those on its link, are routed again."""
        catalog = self.ledger.catalog
        current: Route = catalog.get("route", name)
        if not isinstance(changes, dict) or "name" in changes:
            raise InvalidArgument("alter route takes a map of the fields to change (not its name)")
        definition = {**current.to_def(), **changes}
        if "lifetime" in changes:
            definition.pop("expires_at", None)
        new: Route = catalog.build("route", definition, now)  # type: ignore[assignment]
        catalog.replace("route", new)
        self.ledger.save_object("route", new, name)
        self.outbound.reroute(now)
        return new

    def drop_object(self, kind: str, name: str, now: float = 0.0) -> None:
        ledger = self.ledger
        catalog = ledger.catalog
        mine: list[Endpoint] = []
        if kind == "service":
            catalog.get("service", name)
            # ended endpoints kept only to recognise late retransmissions do not hold the service (they go with
            # it); an ended one still sending its last messages does, as an open one does
            mine = [ep for ep in ledger.endpoints.values() if ep.service == name]
            open_handles = [ep.handle for ep in mine if ep.state is not State.CLOSED or ep.handle in ledger.tx]
            if open_handles:
                shown = ", ".join(open_handles[:3]) + (", ..." if len(open_handles) > 3 else "")
                raise ObjectInUse(
                    f"service {name!r} has {len(open_handles)} open conversation(s) ({shown}); end each first"
                    " (aiobroker end HANDLE; or aiobroker end HANDLE --cleanup to remove this side without telling"
                    " the far side), then drop the service; aiobroker list conversations shows them"
                )
        if kind == "queue":
            catalog.get("queue", name)
            q = ledger.queues[name]
            if q.waiting or q.groups:
                raise ObjectInUse(f"queue {name!r} still holds {q.waiting} message(s); receive or end them first")
        catalog.drop(kind, name)
        for ep in mine:
            self.conversations.remove(ep)
        if kind == "queue":
            del ledger.queues[name]
        ledger.save_object(kind, None, name)
        if kind == "route" or (kind == "service" and name == BCN_SERVICE):
            self.outbound.reroute(now)  # without the BCN service here, dynamic routing may be off: decide again

    def list_objects(self, kind: str) -> list[dict[str, Any]]:
        """Definitions as a client may see them (identities and bindings without keys, tokens or PEM)."""
        return [
            o.public_def() if hasattr(o, "public_def") else o.to_def()
            for o in self.ledger.catalog.table(kind).values()
        ]
