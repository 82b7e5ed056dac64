"""Queues: messages waiting per conversation group, and the locks (leases) receivers hold on groups.

A receive takes the oldest *ready* group (one with messages and no lease), locks it, and hands out up to N of its
messages: ``Error`` and ``DialogTimer`` first (they change what the application should do with the rest), then the
others in arrival order. The group stays locked until the receiver commits or rolls back, or the lease runs out,
or the receiver disconnects; so two receivers never work on one conversation group at once, which is what lets an
application keep per-conversation state without locks of its own.

Everything here is in memory; the core records store changes beside it, with one exception. On a store that pages
(``Store.pages``: SQLite, PostgreSQL), a queue keeps at most ``window`` waiting messages in memory: once it holds that many, the
messages published to it next stay in the store only (:meth:`MessageQueue.leave_in_store`), counted but not held,
and every later one too until the store's are read back (``paging.py``) as receivers drain the queue. So the
messages in memory are always the queue's oldest ones: every ready row with an id up to ``stored_after`` is in
memory (or gone), and the ``in_store`` others have ids in ``(stored_after, stored_upto]``. A queue whose receivers
keep up never reaches its window, and its messages never leave memory between send and receive.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Container
from operator import itemgetter
from typing import Any

from .catalog import QueueDef, on_off_word
from .records import ROW_BODY, ROW_HANDLE, ROW_ID, ROW_TYPE, MessageRow


#: Bytes a stored row takes on the wire besides its body, at most: the handle, location and message type are names
#: of at most 256 bytes, plus a few numbers, plus a trace context of at most 312 characters (``tracecontext.py``).
#: Used to keep a receive batch within one frame.
ROW_OVERHEAD = 960

_body = itemgetter(ROW_BODY)


class Group:
    """One conversation group's waiting messages in one queue."""

    __slots__ = ("id", "urgent", "normal", "lease", "rollbacks")

    def __init__(self, group_id: str, normal: list[MessageRow] | tuple[()] = ()) -> None:
        self.id = group_id
        #: Error and DialogTimer, handed out first; None until the first comes (most groups never see one, and an
        #: empty deque is a 600-byte block: 60 MB for 100,000 one-message conversations waiting)
        self.urgent: deque[MessageRow] | None = None
        self.normal: deque[MessageRow] = deque(normal)
        self.lease: Lease | None = None
        #: receives of this group rolled back in a row (reset by a commit); poison-message handling counts these
        self.rollbacks = 0

    def __len__(self) -> int:
        return len(self.urgent) + len(self.normal) if self.urgent else len(self.normal)

    def messages_for(self, urgent: bool) -> deque[MessageRow]:
        """Where messages go: the urgent ones' deque (made now if need be), or the others'."""
        if not urgent:
            return self.normal
        if self.urgent is None:
            self.urgent = deque()
        return self.urgent


class Lease:
    """A receiver's lock on one group and the messages it was handed."""

    __slots__ = ("id", "queue", "group", "messages", "owner", "expires_at", "size")

    def __init__(
        self,
        lease_id: int,
        queue: MessageQueue,
        group: Group,
        messages: list[MessageRow],
        owner: Any,
        expires_at: float,
        size: int = 0,
    ) -> None:
        self.id = lease_id
        self.queue = queue
        self.group = group
        self.messages = messages
        self.owner = owner
        self.expires_at = expires_at
        #: the messages' bodies' bytes (the memory budget lets them go at commit without a walk)
        self.size = size


class MessageQueue:
    """The messages of one queue, grouped, with the ready groups kept in arrival order."""

    __slots__ = (
        "definition", "groups", "ready", "waiting", "locked", "retained", "retained_count", "disabled_reason",
        "window", "in_store", "in_store_bytes", "stored_after", "stored_upto", "reading",
    )

    def __init__(self, definition: QueueDef, window: int | None = None) -> None:
        self.definition = definition
        #: the most waiting messages kept in memory before the next ones are left in the store (None: every
        #: message stays in memory, as on a store that does not page); see the module's header
        self.window = window
        #: waiting messages in the store only (counted in ``waiting``), their bodies' bytes, and their ids' bounds
        self.in_store = 0
        self.in_store_bytes = 0
        self.stored_after = 0
        self.stored_upto = 0
        #: a page of them is being read back
        self.reading = False
        self.groups: dict[str, Group] = {}
        #: groups with messages and no lease, oldest first (an ordered set). An OrderedDict, not a dict: a dict
        #: keeps the slots of keys deleted from its front, and finding its first key walks them, so taking 100,000
        #: one-message groups from the front cost ~n²/2 steps (0.44 s, even rebuilt once half was taken); an
        #: OrderedDict pops its first key and moves a key to the front in O(1).
        self.ready: OrderedDict[str, None] = OrderedDict()
        self.waiting = 0  #: messages not handed out (``in_store`` of them in the store only)
        self.locked = 0  #: messages handed out under a lease, not yet committed or rolled back
        #: received messages kept by ``retention`` until their conversation ends: handle → rows; and how many
        self.retained: dict[str, list[MessageRow]] = {}
        self.retained_count = 0
        self.disabled_reason: str | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    def push(self, row: MessageRow, group_id: str, urgent: bool) -> None:
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        (group.messages_for(True) if urgent else group.normal).append(row)
        self.waiting += 1
        if group.lease is None and group_id not in self.ready:
            self.ready[group_id] = None

    def push_many(self, rows: list[MessageRow], group_id: str, urgent: bool) -> None:
        """A run of messages of one group, in order (the batched form of :meth:`push`)."""
        group = self.groups.get(group_id)
        if group is None and not urgent:  # a new group (a new conversation's, most often): made with its rows
            self.groups[group_id] = Group(group_id, rows)
            self.waiting += len(rows)
            self.ready[group_id] = None  # a new group has no lease and is not in line yet
            return
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        (group.messages_for(True) if urgent else group.normal).extend(rows)
        self.waiting += len(rows)
        if group.lease is None and group_id not in self.ready:
            self.ready[group_id] = None

    # ------------------------------------------------------------------------------------------------ paging

    def keeps(self, count: int) -> bool:
        """Whether ``count`` messages published now stay in memory (else :meth:`leave_in_store`)."""
        return self.window is None or (not self.in_store and self.waiting + count <= self.window)

    def room(self) -> int:
        """How many more waiting messages fit in memory (see :meth:`keeps`)."""
        if self.window is None:
            return 1 << 62
        return 0 if self.in_store else max(0, self.window - self.waiting)

    def leave_in_store(self, rows: list[MessageRow], size: int) -> None:
        """A run of stored messages (``size``: their bodies' bytes) counted here but left in the store."""
        if not self.in_store and not self.reading:
            self.stored_after = rows[0][ROW_ID] - 1
        self.in_store += len(rows)
        self.in_store_bytes += size
        self.stored_upto = rows[-1][ROW_ID]
        self.waiting += len(rows)

    def page_wanted(self, nothing_ready: bool) -> bool:
        """Whether to read a page of the store's messages back now: when those in memory fall to half the window,
        or a receiver found none ready among them (all their groups locked) while the store has others (up to
        twice the window, so that a few locked groups cannot fill memory)."""
        if not self.in_store or self.reading or self.window is None:
            return False
        resident = self.waiting - self.in_store
        return resident <= self.window // 2 or (nothing_ready and resident < 2 * self.window)

    def read_back(self, count: int, size: int, after: int) -> None:
        """``count`` of the store's messages (``size`` bytes) were read back: they are no longer in the store only
        (those still wanted are pushed again, those not are dropped: :meth:`push` counts them again); every ready
        row with an id up to ``after`` is in memory now."""
        self.in_store -= count
        self.in_store_bytes -= size
        self.waiting -= count
        self.stored_after = after
        self.reading = False

    def take(self, max_messages: int, max_bytes: int) -> tuple[Group, list[MessageRow], int] | None:
        """Lock the oldest ready group and hand out up to ``max_messages`` of it, within ``max_bytes`` of wire size
        (estimated as body + :data:`ROW_OVERHEAD` each; at least one message always goes, since a message never
        exceeds a frame); also returns their bodies' bytes. The caller makes the lease."""
        if not self.ready:
            return None
        group_id = self.ready.popitem(last=False)[0]
        group = self.groups[group_id]
        normal = group.normal
        body = 0
        if not group.urgent and len(normal) <= max_messages:
            body = sum(map(len, map(_body, normal)))
        if not group.urgent and len(normal) <= max_messages and body + ROW_OVERHEAD * len(normal) <= max_bytes:
            out = list(normal)  # the common case: the whole group at once
            normal.clear()
        else:
            out = []
            size = 0
            for dq in (group.urgent, normal):
                while dq and len(out) < max_messages:
                    size += len(dq[0][ROW_BODY]) + ROW_OVERHEAD
                    if out and size > max_bytes:
                        break
                    out.append(dq.popleft())
            body = sum(map(len, map(_body, out)))
        self.waiting -= len(out)
        self.locked += len(out)
        return group, out, body

    def take_more(
        self, max_groups: int, max_messages: int, max_bytes: int, out: list[MessageRow]
    ) -> tuple[list[tuple[Group, list[MessageRow]]], int]:
        """After a :meth:`take`, go on to the next ready groups, oldest first: at most ``max_groups`` of them and
        ``max_messages`` messages, within ``max_bytes`` of wire size (estimated as :meth:`take` does); a group is
        taken only if its first message fits, so the batch stays within one frame. Their rows are appended to
        ``out``; returns each group taken with its rows, and their bodies' bytes. The caller makes the lease.

        One loop for a batch of many groups: a consumer of one-message conversations takes a thousand groups a
        receive, and a call (and a lease object) per group cost as much as the rest of the receive."""
        ready, groups = self.ready, self.groups
        taken: list[tuple[Group, list[MessageRow]]] = []
        count = body = 0
        while len(taken) < max_groups and count < max_messages and ready:
            group_id = ready.popitem(last=False)[0]
            group = groups[group_id]
            urgent, normal = group.urgent, group.normal
            first = urgent[0] if urgent else normal[0]
            size = len(first[ROW_BODY])
            if size + ROW_OVERHEAD > max_bytes:
                ready[group_id] = None  # it does not fit: back to the front of the line, untouched
                ready.move_to_end(group_id, last=False)
                break
            if not urgent and len(normal) == 1:  # the common case: a conversation's one message
                rows = [normal.popleft()]
                max_bytes -= size + ROW_OVERHEAD
            else:
                rows = []
                full = False
                for dq in (urgent, normal):  # Error and DialogTimer first; none of the rest while one waits
                    while dq and count + len(rows) < max_messages:
                        wire = len(dq[0][ROW_BODY]) + ROW_OVERHEAD
                        if wire > max_bytes:
                            full = True
                            break
                        max_bytes -= wire
                        rows.append(dq.popleft())
                    if full:
                        break
                size = sum(map(len, map(_body, rows)))
            body += size
            count += len(rows)
            out.extend(rows)
            taken.append((group, rows))
        self.waiting -= count
        self.locked += count
        return taken, body

    def _settle(self, group: Group) -> None:
        group.lease = None
        if len(group):
            # a group with more messages goes to the back of the line: fair among groups
            self.ready[group.id] = None
        else:
            del self.groups[group.id]

    def commit(self, lease: Lease) -> None:
        self.locked -= len(lease.messages)
        lease.group.rollbacks = 0
        self._settle(lease.group)

    def commit_groups(self, parts: list[tuple[Group, list[MessageRow]]], count: int) -> None:
        """:meth:`commit` of the leases of several groups (each with the rows taken from it), holding ``count``
        messages in all, in one loop."""
        self.locked -= count
        ready, by_id = self.ready, self.groups
        for group, _ in parts:
            group.rollbacks = 0
            group.lease = None
            if group.urgent or group.normal:
                ready[group.id] = None  # more messages came meanwhile: to the back of the line
            else:
                del by_id[group.id]

    def retain(self, row: MessageRow) -> None:
        """Keep a received message until its conversation ends (a queue with ``retention``)."""
        self.retained.setdefault(row[ROW_HANDLE], []).append(row)
        self.retained_count += 1

    def rollback(self, lease: Lease, *, urgent_types: frozenset[str], alive: Container[str]) -> None:
        """Put the messages back at the front of their group, in their original order; those of conversations not
        ``alive`` (ended meanwhile) do not come back."""
        self.locked -= len(lease.messages)
        lease.messages = [r for r in lease.messages if r[ROW_HANDLE] in alive]
        group = lease.group
        for row in reversed(lease.messages):
            group.messages_for(row[ROW_TYPE] in urgent_types).appendleft(row)
        self.waiting += len(lease.messages)
        group.rollbacks += 1
        group.lease = None
        if len(group):
            # the oldest messages go back to the front of the line, not the back
            self.ready[group.id] = None
            self.ready.move_to_end(group.id, last=False)
        else:
            del self.groups[group.id]

    def remove_handle(self, handle: str, group_id: str | None = None) -> list[MessageRow]:
        """Take out every waiting message of one conversation endpoint (its side has ended). ``group_id``: the
        endpoint's conversation group, the only one its messages are ever in: then only that group is looked at,
        not every group of the queue (ending each of 2,000 requests waiting in one queue walked them all)."""
        removed: list[MessageRow] = []
        if group_id is None:
            groups = list(self.groups.values())
        else:
            one = self.groups.get(group_id)
            groups = [] if one is None else [one]
        for group in groups:
            for dq in (group.urgent, group.normal):
                if not dq:
                    continue
                keep = [r for r in dq if r[ROW_HANDLE] != handle]
                if len(keep) != len(dq):
                    removed.extend(r for r in dq if r[ROW_HANDLE] == handle)
                    dq.clear()
                    dq.extend(keep)
            if not len(group) and group.lease is None:
                self.ready.pop(group.id, None)
                del self.groups[group.id]
        self.waiting -= len(removed)
        retained = self.retained.pop(handle, [])
        self.retained_count -= len(retained)
        removed.extend(retained)
        return removed

    def statistics(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": on_off_word(self.definition.status),
            "disabled_reason": self.disabled_reason,
            "waiting": self.waiting,
            "locked": self.locked,
            "groups": len(self.groups),
            "ready_groups": len(self.ready),
            "retained": self.retained_count,
            "in_store_only": self.in_store,
        }

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<MessageQueue {self.name!r} waiting={s['waiting']} locked={s['locked']} groups={s['groups']}>"
