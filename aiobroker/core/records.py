"""The records the core and the store share: a message's row, a batch of changes, and what a store reads back.

They live here, beside the core, so that the core imports nothing of the store (``store/`` imports them from
here): a message is one tuple from the socket to the store, with no conversion at either border. Pure data, no I/O.

A :class:`WriteBatch` is coalesced: each key maps to its latest value, ``None`` meaning "delete". So a message
stored and then received-and-committed within one batch is simply not written, and an object dropped and created
again within one batch ends up created. Values are plain data (str, int, float, bytes, bool, None, lists, dicts
with **str keys**: msgpack refuses other keys when reading back, which would make the store unreadable) that the
store serializes as it likes; tuples come back as lists. In ``messages`` the key is the row's ``id``. The meta key
``schema_version`` belongs to the store itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, cast

#: The system's Error and DialogTimer message types (their names are the seeds' own), the *urgent* ones: a receive
#: hands them out before the rest of their conversation group (``queues.py``), so a queue on a store that pages
#: keeps every one in memory and the store never hands one back in a page (``Store.open_paged``, ``read_rows``).
ERROR: Final = "http://schemas.microsoft.com/SQL/ServiceBroker/Error"
DIALOG_TIMER: Final = "http://schemas.microsoft.com/SQL/ServiceBroker/DialogTimer"
URGENT_TYPES: Final = frozenset({ERROR, DIALOG_TIMER})

#: ``(kind, name)`` of a catalog object: kind is ``message_type``, ``contract``, ``queue``, ``service``
#: (later ``route``, ``binding``).
ObjectKey = tuple[str, str]


#: A message at rest, in a queue or in the transmission queue: a plain tuple, its fields read by the ``ROW_*``
#: indexes below. Every message is built as one of these once and then kept, stored and sent as it is, so it is the
#: cheapest record Python has: a NamedTuple instance costs about four times as much to build (0.36 against 0.10 µs
#: a message, measured), which was a tenth of a node's CPU per message.
#:
#: Everything else about the message (conversation group, service, contract, far side) follows from its handle, the
#: conversation endpoint it belongs to, which the store keeps beside it.
#:
#: A message with W3C trace context has a ninth field, :data:`ROW_TRACE` (``aiobroker/tracecontext.py`` has its
#: one-string form); one without has eight, as rows had before trace context, so that the messages that carry none
#: (most) cost nothing for it anywhere: built, stored, sent to a receiver, collected. Read it with
#: :func:`row_trace`.
PlainRow = tuple[int, str, str, int, str, bytes, float, int]
TracedRow = tuple[int, str, str, int, str, bytes, float, int, str]
MessageRow = PlainRow | TracedRow

ROW_ID: Final = 0  #: int: node-wide, increasing in arrival order; the order messages are loaded back in
ROW_LOCATION: Final = 1  #: str: ``"q:<queue name>"`` for a queue, ``"tx"`` for the transmission queue
ROW_HANDLE: Final = 2  #: str: the endpoint: the receiver's for a queue, the sender's for the transmission queue
ROW_SEQ: Final = 3  #: int: the message's sequence number within its conversation and direction
ROW_TYPE: Final = 4  #: str: the message type
ROW_BODY: Final = 5  #: bytes
ROW_ENQUEUED_AT: Final = 6  #: float: wall-clock seconds
ROW_STATE: Final = 7  #: int: 0 ready, 1 received-and-retained (queues with retention)
ROW_TRACE: Final = 8  #: str, only in a row with trace context: "traceparent[ tracestate]" (aiobroker/tracecontext.py)


class InStore(int):
    """In a row of the transmission queue, in place of its body: the body is in the store only, and this says its
    size (``len()`` gives it, so that every sum of a run's bodies stays right). Only rows of DELAYED conversations
    on a store that pages hold one (``tx_bodies.py``); they are read back before they move."""

    __slots__ = ()

    def __len__(self) -> int:
        return int(self)


def in_store(body: object) -> bool:
    """Whether a row's body is in the store only (an :class:`InStore` in its place)."""
    return type(body) is InStore


#: one ``InStore`` per body size, shared by every row of that size (most messages of a storm are one size); the
#: cache is cleared when it holds more sizes than this
_SHARED_SIZES: Final = 4096
_sizes: dict[int, InStore] = {}


def body_in_store(size: int) -> InStore:
    """The ``InStore`` for a body of ``size`` bytes (shared)."""
    marker = _sizes.get(size)
    if marker is None:
        if len(_sizes) >= _SHARED_SIZES:
            _sizes.clear()
        marker = _sizes[size] = InStore(size)
    return marker


def row_without_body(row: tuple[Any, ...]) -> MessageRow:
    """A row read back from a store with its body's size in place of its body (``Store.open_paged`` without the
    transmission queue's bodies): the body is in the store only. Eight fields, or nine with trace context."""
    out = (*row[:ROW_BODY], body_in_store(row[ROW_BODY]), *row[ROW_BODY + 1 : 8])
    return cast("MessageRow", out if row[8] is None else (*out, row[8]))


def message_row(
    id: int,
    location: str,
    handle: str,
    seq: int,
    message_type: str,
    body: bytes,
    enqueued_at: float,
    state: int = 0,
    trace: str | None = None,
) -> MessageRow:
    """A row by its fields' names (the hot paths build the tuple directly)."""
    if trace is None:
        return (id, location, handle, seq, message_type, body, enqueued_at, state)
    return (id, location, handle, seq, message_type, body, enqueued_at, state, trace)


def row_trace(row: MessageRow) -> str | None:
    """A row's trace context, or None."""
    return row[8] if len(row) > 8 else None


@dataclass(slots=True)
class WriteBatch:
    """Changes to apply in one transaction. Latest value wins per key; ``None`` deletes."""

    meta: dict[str, Any] = field(default_factory=dict)
    objects: dict[ObjectKey, Any] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    messages: dict[int, MessageRow | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.meta or self.objects or self.endpoints or self.messages)

    def __len__(self) -> int:
        return len(self.meta) + len(self.objects) + len(self.endpoints) + len(self.messages)


#: ready rows of one location left in a paging store: (messages, bodies' bytes, after_id, upto_id)
StoredRun = tuple[int, int, int, int]


@dataclass(slots=True)
class Snapshot:
    """Everything a store holds, as read back at start."""

    meta: dict[str, Any] = field(default_factory=dict)
    objects: list[tuple[str, str, Any]] = field(default_factory=list)  #: (kind, name, definition)
    endpoints: list[tuple[str, Any]] = field(default_factory=list)  #: (handle, state)
    messages: list[MessageRow] = field(default_factory=list)  #: ordered by id
    #: what a paging store left in it (:meth:`~aiobroker.store.base.Store.open` with a window), by location:
    #: ``(messages, their bodies' bytes, after_id, upto_id)``: that many ready rows of the location, every one with
    #: an id in ``(after_id, upto_id]``, are not in ``messages``; the node reads them with ``Store.read_rows``
    stored: dict[str, StoredRun] = field(default_factory=dict)
