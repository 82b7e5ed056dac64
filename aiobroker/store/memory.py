"""The memory store: a store that keeps nothing.

The node's state already lives in memory (the core); the store is only its durable copy. A node that does not need
to survive a restart (tests, benchmarks, throw-away brokers) therefore needs no copy at all, and this store is the
fast path for it: ``write`` returns at once, so a batch is "committed" as soon as it is handed over, and ``open``
always finds an empty node.
"""

from __future__ import annotations

from ..core.records import Snapshot, WriteBatch
from .base import Store


class MemoryStore(Store):
    """A store that forgets: nothing is retained, so nothing survives (or slows down) the process."""

    name = "memory"
    durable = False

    def open(self) -> Snapshot:
        """A fresh node every time: there is nothing to read back."""
        return Snapshot()

    def write(self, batch: WriteBatch) -> None:
        """Accept and drop the batch; the core holds the only copy of the state."""

    def close(self) -> None:
        """Nothing to release."""
