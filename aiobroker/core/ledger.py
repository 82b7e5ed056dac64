"""The core's shared records: what every part reads, and what the store must learn.

Theory of operation
-------------------
The core is a handful of parts (``broker.py`` wires them; ``parts.py`` says who calls whom). What more than one
of them reads or writes lives here, in one :class:`Ledger`, so that no part reaches into another's attributes:

- the catalog, the conversation endpoints (and the index from a conversation id to its handle here), the queues
  and the transmission queue;
- the one timer (``deadlines.py``) and the one outbox (``effects.py``);
- the durability path: ``changes`` (the :class:`WriteBatch` the store must write), ``dirty`` (endpoints to save in
  it) and ``pending`` (messages bound for queues, visible only once stored), which :meth:`Ledger.seal` hands to
  the shell, and the message ids (``next_message_id``, ``sealed_upto``, ``durable_upto``).

Every change a part makes that the store must keep goes through :meth:`touch`, :meth:`save_row`,
:meth:`forget_row` or :meth:`save_object`, which do nothing for the store when it is not durable
(``persist=False``). The hot paths (send, delivery from a peer) save a run of rows at a time (:meth:`save_rows`,
:meth:`enqueue_run`); a commit, an acknowledgement or an ending forgets a run at a time (:meth:`forget_rows`).
A new message row and a forgotten one are also counted in the memory budget (``budget.py``), whatever the store:
every path that makes or forgets a message row goes through these methods (a retained row, rewritten in place,
is saved with :meth:`resave_row`, which does not count it again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from .budget import UNBOUNDED, Budget
from .catalog import Catalog, CatalogObject
from .conversation import Endpoint
from .deadlines import Deadlines
from .effects import BodiesWanted, Effect
from .queues import MessageQueue
from .records import ROW_BODY, ROW_ID, ROW_LOCATION, MessageRow, WriteBatch
from .transmission import TransmissionQueue

#: messages bound for a queue, waiting for their batch to be stored: (queue name, group id, urgent, rows), the
#: rows all of one receiving endpoint, in order
Pending = tuple[str, str, bool, list[MessageRow]]

#: a row's location while it waits in the transmission queue (``q:NAME`` in a queue)
TX = "tx"

#: a row's body (C-level: the budget sums a run's bodies without a Python loop per message)
_body = itemgetter(ROW_BODY)

#: how many recently closed handles are remembered, so a late call says "ended" rather than "unknown"
RECENTLY_CLOSED = 10_000


class ConversationIndex:
    """(conversation id, is_initiator) → the handle of this node's endpoint on that side, kept as one dict per side
    keyed by the conversation id alone: a tuple key would cost 64 bytes a conversation for as long as it lives (100,000
    DELAYED conversations after a resolution storm), where a lookup's tuple lives only for the lookup. Read and
    written as the dict it replaces (``index[(cid, side)]``, ``get``, ``pop``)."""

    __slots__ = ("sides",)

    def __init__(self) -> None:
        #: indexed by is_initiator: the targets' handles, then the initiators'
        self.sides: tuple[dict[str, str], dict[str, str]] = ({}, {})

    def __getitem__(self, key: tuple[str, bool]) -> str:
        return self.sides[1 if key[1] else 0][key[0]]

    def __setitem__(self, key: tuple[str, bool], handle: str) -> None:
        self.sides[1 if key[1] else 0][key[0]] = handle

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[0] in self.sides[1 if key[1] else 0]

    def __len__(self) -> int:
        return len(self.sides[0]) + len(self.sides[1])

    def get(self, key: tuple[str, bool], default: str | None = None) -> str | None:
        return self.sides[1 if key[1] else 0].get(key[0], default)

    def pop(self, key: tuple[str, bool], default: str | None = None) -> str | None:
        return self.sides[1 if key[1] else 0].pop(key[0], default)

    def side(self, is_initiator: bool) -> dict[str, str]:
        """One side's index, conversation id → handle: for a loop of lookups, without a tuple per lookup."""
        return self.sides[1 if is_initiator else 0]


class Ledger:
    """The records the core's parts share. Single-threaded, like the core."""

    def __init__(
        self,
        *,
        broker_instance: str,
        persist: bool,
        new_id: Callable[[], str],
        max_memory: int = UNBOUNDED,
        page_window: int | None = None,
    ) -> None:
        self.broker_instance = broker_instance
        #: whether changes are gathered for a durable store
        self.persist = persist
        #: makes conversation handles, conversation ids and group ids (uuid4; tests give a counter)
        self.new_id = new_id
        self.catalog = Catalog()
        self.endpoints: dict[str, Endpoint] = {}
        #: (conversation id, is_initiator) → the handle of this node's endpoint on that side
        self.by_conversation = ConversationIndex()
        self.queues: dict[str, MessageQueue] = {}
        #: each queue's window on a store that pages (``paging.py``); None: queues keep every message in memory
        self.page_window = page_window
        #: outgoing messages not yet acknowledged (remote) or waiting for a route (DELAYED)
        self.tx = TransmissionQueue()
        #: conversation handle → its body cipher (made from the stored session key on first use; goes with the
        #: endpoint)
        self.ciphers: dict[str, Any] = {}
        #: recently closed handles (bounded, oldest first)
        self.recently_closed: dict[str, None] = {}
        #: the one timer: every deadline of every kind, cleaned lazily
        self.deadlines = Deadlines()
        #: what the core asks the shell to do, oldest first
        self.outbox: deque[Effect] = deque()
        #: what the node holds for messages, against its memory budget (``budget.py``)
        self.budget = Budget(max_memory, self.outbox)

        self.changes = WriteBatch()
        self.dirty: dict[str, Endpoint | None] = {}
        self.pending: list[Pending] = []
        #: queues that have held a message with trace context since start (its rows have nine fields): only their
        #: receive batches are looked through for it, so a node whose messages carry none pays nothing per message
        self.traced_queues: set[str] = set()
        self.next_message_id = 1
        #: every message with an id up to this is stored (the shell sets it after each write, see ``seal``)
        self.durable_upto = 0
        #: DELAYED conversations' bodies wait in the store only (``tx_bodies.py``): a store that pages
        self.tx.strips = page_window is not None
        #: the outbox's open request for bodies to read back (``tx_bodies.py``), until the shell drains it
        self.bodies_request: BodiesWanted | None = None
        self.sealed_upto = 0

    # ---------------------------------------------------------------------------------------- store bookkeeping

    def forget_row(self, row: MessageRow) -> None:
        """A message row leaves the node (and the store)."""
        if self.persist:
            self.changes.messages[row[ROW_ID]] = None
        self.budget.let_go(row[ROW_LOCATION], 1, len(row[ROW_BODY]))

    def forget_rows(self, rows: list[MessageRow], size: int | None = None, in_store: int = 0) -> None:
        """A run of message rows, all of one location, leaves the node (and the store); ``size``: their bodies'
        bytes, when the caller knows them; ``in_store``: of those, the bytes of bodies in the store only
        (``tx_bodies.py``)."""
        if not rows:
            return
        if self.persist:
            stored = self.changes.messages
            for row in rows:
                stored[row[ROW_ID]] = None
        if size is None:
            size = sum(map(len, map(_body, rows)))
        self.budget.let_go(rows[0][ROW_LOCATION], len(rows), size, in_store)

    def save_row(self, row: MessageRow) -> None:
        """A new message row."""
        if self.persist:
            self.changes.messages[row[ROW_ID]] = row
        self.budget.hold(row[ROW_LOCATION], 1, len(row[ROW_BODY]))

    def resave_row(self, row: MessageRow) -> None:
        """A row already held, changed (a received message kept by its queue's retention)."""
        if self.persist:
            self.changes.messages[row[ROW_ID]] = row

    def save_rows(self, rows: list[MessageRow], size: int | None = None) -> None:
        """Save a run of new rows, all of one location (the hot paths' one loop, instead of a call per row);
        ``size``: their bodies' bytes, when the caller knows them."""
        if self.persist:
            stored = self.changes.messages
            for row in rows:
                stored[row[ROW_ID]] = row
        if size is None:
            size = sum(map(len, map(_body, rows)))
        self.budget.hold(rows[0][ROW_LOCATION], len(rows), size)

    def unstore(self, message_id: int) -> None:
        """Delete a stored row that was never held (found unusable while loading)."""
        if self.persist:
            self.changes.messages[message_id] = None

    def hold_loaded(self, row: MessageRow) -> None:
        """A stored row read back at start: counted, not written."""
        self.budget.hold(row[ROW_LOCATION], 1, len(row[ROW_BODY]))

    def enqueue_run(self, queue_name: str, group_id: str, rows: list[MessageRow], size: int | None = None) -> None:
        """A run of new rows, all of one receiving endpoint and in order, bound for ``queue_name``: saved, and
        published to the queue once the batch holding them is stored (``size``: as for :meth:`save_rows`)."""
        self.save_rows(rows, size)
        self.pending.append((queue_name, group_id, False, rows))

    def touch(self, ep: Endpoint) -> None:
        """``ep`` changed: save it with the next batch."""
        if self.persist:
            self.dirty[ep.handle] = ep

    def save_object(self, kind: str, obj: CatalogObject | None, name: str) -> None:
        """A catalog object was made or changed (``obj``), or dropped (None)."""
        if self.persist:
            self.changes.objects[(kind, name)] = obj.to_def() if obj is not None else None

    def add_endpoint(self, ep: Endpoint) -> None:
        """Put a new endpoint in ``endpoints`` and the conversation index, and save it (the caller then has
        ``Conversations.watch`` schedule and count it)."""
        self.endpoints[ep.handle] = ep
        self.by_conversation.sides[ep.is_initiator][ep.conversation_id] = ep.handle  # no call, no key tuple
        self.touch(ep)

    def remember_closed(self, handle: str) -> None:
        """Remember a handle that has just gone (bounded)."""
        recent = self.recently_closed
        recent[handle] = None
        if len(recent) > RECENTLY_CLOSED:
            del recent[next(iter(recent))]

    def seal(self) -> tuple[WriteBatch, list[Pending]]:
        """Take the changes to store and the messages to publish once they are stored. Once the batch is written,
        the shell sets ``durable_upto`` to ``sealed_upto`` (every message id in it, and before it)."""
        self.sealed_upto = self.next_message_id - 1
        batch = self.changes
        if self.dirty:
            records = batch.endpoints
            for handle, ep in self.dirty.items():
                records[handle] = ep.to_state() if ep is not None else None
            self.dirty = {}
        pending = self.pending
        self.changes = WriteBatch()
        self.pending = []
        return batch, pending
