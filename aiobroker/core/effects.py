"""The core's outbox: what it asks the shell to do, as typed effects in one queue.

Theory of operation
-------------------
The core does no I/O and starts nothing. When it wants something done outside itself it appends an effect to
``BrokerCore.outbox``; the shell drains that queue after every call into the core (``BrokerCore.next_effect`` one
at a time, or ``BrokerCore.drain_effects``) and handles each by its type with a ``match``, the way aioquic's
``next_event()`` hands a connection's events to its user. Effects come out in the order the core made them.

- :class:`ResolveRequest`: run the resolver for a service (the dispatcher asks at most once per service in flight,
  so there is never more than one per service waiting).
- :class:`LeaseExpired`: a receive lease ran out and was rolled back; tell its owner, serve its queue again.
- :class:`Report`: something a peer sent was malformed, refused or undeliverable; log it.
- :class:`MemoryPressure`: what the node holds for messages crossed a watermark of its memory budget
  (``budget.py``); log it, and let peer links take envelopes again when it fell below.
- :class:`PageWanted`: read a page of a queue's messages back from the store (``paging.py``); one per queue at a
  time, and only when its receivers have drained what it holds in memory.

Nothing here is per message: an effect is per service, per lease or per report, so the hot path (send, receive,
commit) appends none.

What is not an effect, and why:

- The seal/publish durability path (``BrokerCore.pending``, ``BrokerCore.changes``) is per message and must follow
  the store's write, not the call that made it; the writer drives it.
- Which links have messages to send (``TransmissionQueue.ready_links``) stays a set the writer reads after a write
  is durable. It is gated by durability (no link may send a message before the write that stores it), and it is
  deduplicated (a thousand sends to one address wake its link once). An effect queue would hand the address over
  at the call, before the write, and once per send; gating it would mean the writer holding effects back until
  publish, which is what the set already does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .queues import Lease

__all__ = ["Effect", "LeaseExpired", "MemoryPressure", "PageWanted", "Report", "ResolveRequest"]


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """Ask the resolver where ``service`` is: ``kind`` is ``"route"`` or ``"binding"`` (``dispatcher.py``).
    ``binding_too``: a route request that also asks for the service's binding, in one round trip
    (``Resolver.resolve_together``); both requests are in flight in the dispatcher."""

    kind: str
    service: str
    binding_too: bool = False


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """A receive lease ran out; its messages are already back in the queue."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Report:
    """Something gone wrong with what a peer sent, in words, for the shell to log."""

    text: str


@dataclass(frozen=True, slots=True)
class MemoryPressure:
    """The node went over its memory budget (``over``), or came back below the low watermark."""

    over: bool
    held: int
    max_memory: int


@dataclass(frozen=True, slots=True)
class PageWanted:
    """Read back up to ``limit`` of a queue's messages left in the store, those with ids in ``(after_id,
    upto_id]`` (``Store.read_rows``), and hand them to ``BrokerCore.paged_in`` (``paging.py``)."""

    queue: str
    after_id: int
    upto_id: int
    limit: int


@dataclass(slots=True)
class BodiesWanted:
    """Read back the bodies of these transmission-queue rows (``Store.read_bodies``), left in the store while their
    conversations were DELAYED, and hand them to ``BrokerCore.bodies_read`` (``tx_bodies.py``); ``handles``: the
    conversations that wait for them. One per call into the core: it gathers every conversation that call routed
    (a resolver's answer releases a service's conversations at once), until the shell drains the outbox."""

    handles: list[str]
    ids: list[int]


Effect = ResolveRequest | LeaseExpired | Report | MemoryPressure | PageWanted | BodiesWanted
