"""The core's one timer: every deadline it keeps, of every kind, in one heap.

Theory of operation
-------------------
The core reads no clock. Whatever must happen at a time (a conversation's lifetime running out, a dialog timer, a
receive lease running out, a closed endpoint retired, a dynamic-routing request timing out or retried, routes
refreshed before they expire) is a deadline: ``(when, kind, key)`` pushed on :class:`Deadlines`. The shell asks
``BrokerCore.next_deadline()`` when to wake, and calls ``BrokerCore.advance(now)``, which takes the deadlines due
with :meth:`Deadlines.pop_due` and acts on each by its kind (the ``get_timer()`` / ``handle_timer(now)`` pair of
aioquic).

Entries are never removed when their owner changes its mind (a lease committed, a timer reset, a conversation
ended): taking one out of the middle of a heap is O(n), and most entries are superseded before they fall due (a
lease is nearly always committed first). Staleness is judged where an entry is used instead, by the code that owns
its key, against that owner's state now: a lease entry counts only if the lease is still held and expires at that
``when``; a lifetime, timer or retirement only if the endpoint is still there and its ``expires_at`` or
``timer_at`` still equals ``when`` (``BrokerCore.advance``); a dispatch entry only if the request for its service
has timed out, or its retry is due and conversations still wait, and a refresh only if the service had traffic
since the answer (``DynamicRouting.dispatch_due``). Everything else is skipped: a superseded deadline costs one
push and one pop. ``BrokerCore.next_deadline`` also drops stale lease entries from the front, since every receive
leaves one behind and the shell would otherwise wake for nothing ``receive_lease`` seconds after each.

Deadlines come out in order of time; at the same instant in the order of :class:`DeadlineKind` (a lifetime before
a timer), then of key. This module knows nothing of what a kind means: ``conversations.py``, ``receiving.py`` and
``dynamic.py`` push them, and ``BrokerCore.advance`` sends each to the part that owns its key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from enum import IntEnum

__all__ = ["LEASE", "Deadline", "DeadlineKind", "Deadlines"]


class DeadlineKind(IntEnum):
    """What a deadline is for, and what its key names. An IntEnum so that entries due at the same instant compare
    (in this order) without a tie-breaking counter."""

    LIFETIME = 0  #: a conversation's lifetime runs out (key: endpoint handle)
    TIMER = 1  #: a dialog timer fires (key: endpoint handle)
    LEASE = 2  #: a receive lease runs out (key: the lease id, as a string)
    RETIRE = 3  #: a closed endpoint kept for late retransmissions goes for good (key: endpoint handle)
    DISPATCH = 4  #: a dynamic-routing request times out, or is retried (key: ``kind \\0 service``)
    REFRESH = 5  #: a resolver's routes for a service near their expiry (key: service name)


#: the lease kind as a module constant, for the two paths run per request (a receive's push, ``next_deadline``): a
#: member looked up on an Enum class goes through its metaclass, ~50 ns on CPython 3.11, ten times a global's cost
LEASE = DeadlineKind.LEASE

#: one entry: when it is due (wall-clock seconds, the core's ``now``), what it is for, and whose it is
Deadline = tuple[float, DeadlineKind, str]


class Deadlines:
    """A min-heap of deadlines, cleaned lazily (see the module's header): entries are pushed and popped, never
    cancelled."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[Deadline] = []

    def push(self, when: float, kind: DeadlineKind, key: str) -> None:
        heapq.heappush(self._heap, (when, kind, key))

    def first(self) -> Deadline | None:
        """The earliest entry, stale or not, left in place; None if there is none."""
        return self._heap[0] if self._heap else None

    def drop_first(self) -> None:
        """Take out the earliest entry (the caller found it stale)."""
        heapq.heappop(self._heap)

    def next_time(self) -> float | None:
        """When the earliest entry is due; None if there is none."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[Deadline]:
        """Take out and yield, earliest first, every entry due by ``now``. The heap is looked at again before each
        one, so an entry pushed while the caller handles another is yielded too if it is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def __len__(self) -> int:
        return len(self._heap)

    def __repr__(self) -> str:
        return f"<Deadlines {len(self._heap)} next={self.next_time()}>"
