"""Loading: the core's state rebuilt from what the store kept, at start-up.

The store hands over a :class:`~aiobroker.core.records.Snapshot` (objects, endpoints, messages); this rebuilds the
catalog, the queues (with what a store that pages left in itself counted: ``paging.py``), the endpoints (each
through ``Conversations.watch``, so its deadlines and counts are set as for a new one) and the transmission queue,
then decides afresh where every waiting message goes: a route may have come or gone while the node was down, and
a conversation restored DELAYED is asked for again.
"""

from __future__ import annotations

from .catalog import URGENT_TYPES
from .conversation import Endpoint
from .conversation_states import State
from .conversations import Conversations
from .ledger import TX, Ledger
from .paging import count_stored
from .parts import OutboundPart
from .queues import MessageQueue
from .records import ROW_BODY, ROW_HANDLE, ROW_ID, ROW_LOCATION, ROW_STATE, ROW_TYPE, Snapshot, in_store

#: the order objects are loaded in: each after what it names
LOAD_ORDER = {"identity": 0, "message_type": 1, "contract": 2, "queue": 3, "service": 4, "route": 5, "binding": 6}


def load(ledger: Ledger, conversations: Conversations, outbound: OutboundPart, snap: Snapshot, now: float) -> list[str]:
    """Rebuild state from a store snapshot; returns warnings about anything inconsistent that was skipped."""
    warnings: list[str] = []
    catalog = ledger.catalog
    if snap.meta.get("catalog_initialized"):
        catalog.clear_routes()  # the store says which routes exist, built-in ones included
    else:
        ledger.changes.meta["catalog_initialized"] = True
        for route in catalog.routes.values():
            ledger.save_object("route", route, route.name)
    for kind, _name, definition in sorted(snap.objects, key=lambda o: LOAD_ORDER.get(o[0], 9)):
        if kind in LOAD_ORDER:
            catalog.load(kind, definition)
    for qdef in catalog.queues.values():
        ledger.queues[qdef.name] = MessageQueue(qdef, ledger.page_window)
    for handle, state in snap.endpoints:
        ep = Endpoint.from_state(handle, state)
        ep.delayed = None  # never stored for itself: the reroute below finds each waiting conversation's reason
        ledger.endpoints[handle] = ep
        ledger.by_conversation[(ep.conversation_id, ep.is_initiator)] = handle
        conversations.watch(ep)
    last_id = 0
    for row in snap.messages:
        last_id = max(last_id, row[ROW_ID])
        owner = ledger.endpoints.get(row[ROW_HANDLE])
        if owner is None and ledger.page_window is not None and row[ROW_LOCATION] != TX:
            ledger.unstore(row[ROW_ID])  # of a conversation that ended while it was in the store only (paging.py)
            continue
        if owner is None:
            warnings.append(f"message {row[ROW_ID]} belongs to no conversation endpoint; dropped")
            ledger.unstore(row[ROW_ID])
            continue
        if row[ROW_LOCATION] == TX:
            ledger.tx.load(row)
            if in_store(row[ROW_BODY]):  # a store that pages left its body there: read back when it moves on
                ledger.tx.stripped[row[ROW_HANDLE]] = None
                ledger.budget.hold_in_store(TX, 1, len(row[ROW_BODY]))
            else:
                ledger.hold_loaded(row)
            continue
        queue = ledger.queues.get(row[ROW_LOCATION][2:])
        if queue is None:
            warnings.append(f"message {row[ROW_ID]} is in unknown queue {row[ROW_LOCATION][2:]!r}; dropped")
            ledger.unstore(row[ROW_ID])
            continue
        if owner.state is State.CLOSED:
            # ended while the message was in the store only (``paging.py``): it goes now
            ledger.unstore(row[ROW_ID])
            continue
        ledger.hold_loaded(row)
        if row[ROW_STATE] == 1:
            queue.retain(row)
        else:
            queue.push(row, owner.group_id, row[ROW_TYPE] in URGENT_TYPES)
            if len(row) > 8:
                ledger.traced_queues.add(queue.name)  # it holds a message with trace context
    for _count, _size, _after, upto in snap.stored.values():
        last_id = max(last_id, upto)
    count_stored(ledger, snap.stored)
    ledger.next_message_id = last_id + 1
    ledger.durable_upto = last_id
    outbound.reroute(now)  # decide afresh where every waiting message goes
    return warnings
