"""The garbage collector's policy for a node process (``aiobroker serve``).

Why a node needs one: CPython's cyclic collector runs a young collection every 700 container allocations, and every
so often a full one that walks every tracked object. A node allocates a few containers per message (a decoded
``[type, body]`` pair, a row tuple, a batch list) and holds, long-lived, everything start-up loaded: modules,
classes, functions, the catalog, and whatever backlog it restored. Measured with the default policy, the collector
was a fifth of the node's CPU per message, most of it walking objects that can never be garbage.

The policy, applied once the node has started (its store read, its objects created, listening):

- ``gc.freeze()`` after a full collection: what start-up made moves to the permanent generation, which no
  collection walks again. It is never freed, which is what a long-running process wants of its modules and
  configuration; a restored backlog is frozen too, and its memory comes back only as its messages are delivered
  and the rows are freed by reference counting (the usual way: rows hold no cycles).
- a young generation of :data:`YOUNG_THRESHOLD` net allocations instead of 700: far fewer collections, so the
  middle and old generations, whose collections walk the long-lived objects, run far less often; the short-lived
  per-message objects die by reference counting before any collection sees them. The size is a trade against the
  latency tail: a young collection looks at every object still alive in it, and 10,000 fresh row tuples and lists
  take ~0.5-0.7 ms on this project's machine (50,000: ~3-4.5 ms, a pause past the latency goal), while 10,000 already
  gives nearly all the saving (``benchmarks/README.md``, "The garbage collector").

Cycles are still collected (asyncio makes some: tasks, futures and exceptions that refer to each other), only less
often. The node applies this only as ``aiobroker serve``: a program that embeds a node owns its process's
collector, and may call :func:`apply_node_policy` itself.
"""

from __future__ import annotations

import gc

#: allocations (less deallocations) of container objects between young collections; CPython's default is 700
YOUNG_THRESHOLD = 10_000


def apply_node_policy() -> tuple[int, tuple[int, int, int]]:
    """Collect, freeze what exists, and set the thresholds; returns how many objects are frozen and the thresholds
    now, for the start-up log."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count(), gc.get_threshold()
