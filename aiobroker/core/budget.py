"""The memory budget: what the node holds for messages, counted as they come and go, and the watermarks.

Theory of operation
-------------------
Every message the node holds (in a queue: waiting, locked under a lease or retained; in the transmission queue:
remote or DELAYED; and a message sent but not yet stored, already counted where it will be published) is counted
here when its row is made or loaded, and let go when its row is forgotten (committed, acknowledged, dropped with its
conversation). The count is per *location* (a row's ``ROW_LOCATION``: ``q:NAME`` or ``tx``), in messages and body
bytes, and in all as ``held``: body bytes plus :data:`ROW_MEMORY` a message. Every change is one call per batch of
rows (a send, a frame from a peer, a commit), never a walk of a queue.

Above the high watermark (``max_memory``) the node is *over*: a client's send is refused with ``Overloaded`` and
peer links take no new envelopes (their senders keep them and retry); what the node holds only goes down, by
receives and acknowledgements. Below the low watermark (:data:`LOW_WATERMARK` of it) it accepts again. Each
crossing, either way, puts one :class:`~aiobroker.core.effects.MemoryPressure` in the outbox for the shell to log.
The gap between the two keeps a node at its budget from flapping on every commit.

The per-queue counts also serve the queues' own bounds (``max_messages``, ``max_bytes``), which count every message
of the queue the same way (waiting, locked, retained and not yet stored).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from .effects import Effect, MemoryPressure

#: Memory a held message takes besides its body, in bytes: its row tuple (8 fields), its numbers, its place in a
#: queue's deque or a transmission list, and what the write path leaves behind. Measured on CPython 3.12 with
#: 400,000 stored 128-byte messages on the SQLite store: the node's resident size grew 515 bytes a message, 387
#: besides the body (425 and 297 on the memory store, with 200,000).
ROW_MEMORY: Final = 400

#: The node accepts again once what it holds falls below this fraction of ``max_memory``.
LOW_WATERMARK: Final = 0.9

#: From this fraction of ``max_memory`` on, a queue on a store that pages keeps no more messages in memory, however
#: far it is from its window: many queues' windows must not take the node to its budget (and to refusing sends)
#: while the store could hold the messages. Half, so that the windows leave the other half to what cannot page (the
#: transmission queue, the memory store's queues, messages locked under leases).
PAGE_WATERMARK: Final = 0.5

#: ``max_memory`` of a node without a budget (core tests, benchmarks that build a core directly)
UNBOUNDED: Final = 1 << 62


class Budget:
    """What the node holds for messages, per location and in all, against ``max_memory``."""

    __slots__ = (
        "max_memory", "low", "page_above", "held", "over", "refused", "by_location", "in_store", "in_store_bytes",
        "outbox",
    )

    def __init__(self, max_memory: int, outbox: deque[Effect]) -> None:
        self.max_memory = max_memory
        self.low = int(max_memory * LOW_WATERMARK)
        #: at or above this, queues on a store that pages leave every new message in the store (``paging.py``)
        self.page_above = int(max_memory * PAGE_WATERMARK)
        #: bytes held: bodies plus ROW_MEMORY a message
        self.held = 0
        #: above the high watermark, and not yet back below the low one
        self.over = False
        #: sends refused for it (client sends; a peer's frames are counted by the links)
        self.refused = 0
        #: location -> [messages, body bytes]
        self.by_location: dict[str, list[int]] = {}
        #: of those, the messages (and their bodies' bytes) in the store only, not in memory (``queues.py``)
        self.in_store = 0
        self.in_store_bytes = 0
        self.outbox = outbox

    def hold(self, location: str, count: int, size: int) -> None:
        """``count`` new rows of ``size`` body bytes in all, at ``location``."""
        held = self.by_location.get(location)
        if held is None:
            held = self.by_location[location] = [0, 0]
        held[0] += count
        held[1] += size
        self._grow(size + count * ROW_MEMORY)

    def let_go(self, location: str, count: int, size: int, stored: int = 0) -> None:
        """``count`` rows of ``size`` body bytes in all left ``location`` (and memory); ``stored``: of those
        bytes, the bodies that were in the store only (:meth:`bodies_out`), not in memory."""
        self._uncount(location, count, size)
        self._shrink(size - stored + count * ROW_MEMORY)
        if stored:
            self.in_store_bytes -= stored

    # A queue's rows past its window live in the store only (``queues.py``): still counted at their location (the
    # queue's bounds count them), not in ``held``.

    def page_out(self, count: int, size: int) -> None:
        """``count`` rows held (``size`` body bytes) left memory for the store; they stay where they are counted."""
        self.in_store += count
        self.in_store_bytes += size
        self._shrink(size + count * ROW_MEMORY)

    def page_in(self, count: int, size: int) -> None:
        """``count`` rows read back from the store into memory."""
        self.in_store -= count
        self.in_store_bytes -= size
        self._grow(size + count * ROW_MEMORY)

    def hold_in_store(self, location: str, count: int, size: int) -> None:
        """``count`` rows read back at start without their bodies (``size`` bytes in the store only): counted at
        ``location`` in full, in memory as rows only."""
        held = self.by_location.setdefault(location, [0, 0])
        held[0] += count
        held[1] += size
        self.in_store_bytes += size
        self._grow(count * ROW_MEMORY)

    def bodies_out(self, size: int) -> None:
        """Bodies of held rows (``size`` bytes) left memory for the store; the rows stay (``tx_bodies.py``)."""
        self.in_store_bytes += size
        self._shrink(size)

    def bodies_in(self, size: int) -> None:
        """Bodies of held rows read back from the store."""
        self.in_store_bytes -= size
        self._grow(size)

    def count_stored(self, location: str, count: int, size: int) -> None:
        """Rows a paged start left in the store (``Snapshot.stored``): counted at ``location``, not in memory."""
        held = self.by_location.setdefault(location, [0, 0])
        held[0] += count
        held[1] += size
        self.in_store += count
        self.in_store_bytes += size

    def drop_stored(self, location: str, count: int, size: int) -> None:
        """Rows read back from the store that were no longer wanted (their conversation ended meanwhile)."""
        self._uncount(location, count, size)
        self.in_store -= count
        self.in_store_bytes -= size

    def _uncount(self, location: str, count: int, size: int) -> None:
        held = self.by_location.get(location)
        if held is not None:
            held[0] -= count
            held[1] -= size
            if not held[0]:
                del self.by_location[location]

    def _grow(self, n: int) -> None:
        self.held += n
        if self.held >= self.max_memory and not self.over:
            self.over = True
            self.outbox.append(MemoryPressure(True, self.held, self.max_memory))

    def _shrink(self, n: int) -> None:
        self.held -= n
        if self.over and self.held < self.low:
            self.over = False
            self.outbox.append(MemoryPressure(False, self.held, self.max_memory))

    def in_queue(self, queue_name: str) -> tuple[int, int]:
        """(messages, body bytes) a queue holds, stored or on their way."""
        held = self.by_location.get("q:" + queue_name)
        return (held[0], held[1]) if held is not None else (0, 0)

    def words(self) -> str:
        """What holds the budget, for an error or a log line."""
        tx = self.by_location.get("tx", (0, 0))
        queued = sum(v[0] for k, v in self.by_location.items() if k != "tx")
        return (
            f"the node holds {_mib(self.held)} for messages ({queued} in queues, {tx[0]} in the transmission queue"
            f" for other nodes or waiting for routes; {self.in_store} of them in the store only) against its memory"
            f" budget of {_mib(self.max_memory)}"
            " ([limits] max_memory)"
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "max_memory": self.max_memory if self.max_memory != UNBOUNDED else None,
            "held_bytes": self.held,
            "over": self.over,
            "accepts_again_below": self.low if self.max_memory != UNBOUNDED else None,
            "refused_sends": self.refused,
            "in_store_only": self.in_store,
            "in_store_only_bytes": self.in_store_bytes,
        }

    def __repr__(self) -> str:
        return f"<Budget held={self.held} max_memory={self.max_memory} over={self.over}>"


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
