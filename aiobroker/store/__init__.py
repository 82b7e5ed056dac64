"""Where a node keeps its durable state: the :class:`Store` interface and its two implementations.

``sqlite`` is the durable store (one database file in the node's data directory); ``memory`` keeps nothing and is
the fast path for tests and benchmarks. :func:`open_store` picks one by the name used in configuration.
"""

from __future__ import annotations

from pathlib import Path

from .base import Store
from .memory import MemoryStore
from .sqlite import SqliteStore, check_durability

__all__ = ["STORE_KINDS", "MemoryStore", "SqliteStore", "Store", "open_store"]

#: The names :func:`open_store` accepts, as written in configuration (``--store``).
STORE_KINDS = ("sqlite", "memory")


def open_store(kind: str, data_dir: Path, durability: str = "normal") -> Store:
    """Construct the store named ``kind``; the caller calls ``.open()`` (which is where files are touched).

    ``data_dir`` and ``durability`` matter only to the sqlite store; ``durability`` is checked for it even so,
    since a typo there would otherwise pass unnoticed until the store is switched.
    """
    if kind == "sqlite":
        return SqliteStore(data_dir, durability)
    if kind == "memory":
        check_durability(durability)
        return MemoryStore()
    allowed = ", ".join(repr(k) for k in STORE_KINDS)
    raise ValueError(f"store must be one of {allowed}, not {kind!r}")
