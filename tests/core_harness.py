"""A broker core driven by hand: a fake clock, and a dict store that applies sealed batches like a real one.

Used by the core's tests to check the rules without sockets or files, and to restart a core from what it stored.
"""

from __future__ import annotations

import itertools
from typing import Any, TypeVar

from aiobroker.core.broker import BrokerCore
from aiobroker.core.effects import BodiesWanted, Effect, LeaseExpired, PageWanted, Report, ResolveRequest
from aiobroker.core.queues import Lease
from aiobroker.core.records import (
    ROW_BODY,
    ROW_HANDLE,
    ROW_ID,
    ROW_LOCATION,
    ROW_SEQ,
    ROW_STATE,
    ROW_TYPE,
    MessageRow,
    body_in_store,
    Snapshot,
    URGENT_TYPES,
    StoredRun,
    WriteBatch,
)

E = TypeVar("E", bound=Effect)


class DictStore:
    """Applies coalesced batches to dicts; ``snapshot()`` reads them back as a store would."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.objects: dict[tuple[str, str], Any] = {}
        self.endpoints: dict[str, Any] = {}
        self.messages: dict[int, Any] = {}

    def write(self, batch: WriteBatch) -> None:
        for table, changes in (
            (self.meta, batch.meta),
            (self.objects, batch.objects),
            (self.endpoints, batch.endpoints),
            (self.messages, batch.messages),
        ):
            for key, value in changes.items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value

    def snapshot(self) -> Snapshot:
        return Snapshot(
            meta=dict(self.meta),
            objects=[(k, n, d) for (k, n), d in self.objects.items()],
            endpoints=list(self.endpoints.items()),
            messages=[self.messages[i] for i in sorted(self.messages)],
        )

    def paged_snapshot(self, window: int) -> Snapshot:
        """What a store that pages reads at start (``Store.open_paged``): each queue's first ``window`` ready rows,
        and what it left, counted."""
        snap = self.snapshot()
        kept: list[MessageRow] = []
        seen: dict[str, list[MessageRow]] = {}
        def pages(row: MessageRow) -> bool:  # may be left in the store: ready, in a queue, not Error or DialogTimer
            return row[ROW_LOCATION] != "tx" and row[ROW_STATE] == 0 and row[ROW_TYPE] not in URGENT_TYPES

        for row in snap.messages:
            location = row[ROW_LOCATION]
            if not pages(row) or len(seen.setdefault(location, [])) < window:
                kept.append(row)
                if pages(row):
                    seen[location].append(row)
        # the transmission queue's bodies stay in the store (``open_paged(window, tx_bodies=False)``, as a node opens it)
        kept = [(*r[:ROW_BODY], body_in_store(len(r[ROW_BODY])), *r[ROW_BODY + 1 :]) if r[ROW_LOCATION] == "tx" else r
                for r in kept]
        stored: dict[str, StoredRun] = {}
        for location, first in seen.items():
            left = [r for r in snap.messages if r[ROW_LOCATION] == location and pages(r)][len(first):]
            if left:
                stored[location] = (len(left), sum(len(r[ROW_BODY]) for r in left), first[-1][ROW_ID], left[-1][ROW_ID])
        snap.messages, snap.stored = kept, stored
        return snap

    def read_rows(self, location: str, after_id: int, upto_id: int, limit: int) -> list[MessageRow]:
        rows = [
            self.messages[i] for i in sorted(self.messages)
            if after_id < i <= upto_id and self.messages[i][ROW_LOCATION] == location and self.messages[i][ROW_STATE] == 0
            and self.messages[i][ROW_TYPE] not in URGENT_TYPES
        ]
        return rows[:limit]


    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        return {i: self.messages[i][ROW_BODY] for i in ids if i in self.messages}


class Harness:
    """A core, its clock and its store. ``flush()`` is the shell's group commit: seal, write, publish."""

    def __init__(self, store: DictStore | None = None, now: float = 1_000_000.0, **options: Any) -> None:
        counter = itertools.count(1)
        self.options = options
        self.now = now
        self.store = store or DictStore()
        self.core = BrokerCore(broker_instance="node-a", new_id=lambda: f"id-{next(counter):04d}", **options)
        window = options.get("page_window")
        self.core.load(self.store.snapshot() if window is None else self.store.paged_snapshot(window), now)
        self.owner = object()

    def flush(self) -> set[str]:
        batch, pending = self.core.seal()
        self.store.write(batch)
        self.core.durable_upto = self.core.sealed_upto  # as the shell's writer does after a write
        return self.core.publish(pending)

    def advance(self, seconds: float) -> list[Lease]:
        """Move the clock on, fire what is due, store it; returns the leases that ran out (from the outbox)."""
        self.now += seconds
        self.core.advance(self.now)
        self.flush()
        return [effect.lease for effect in self.effects(LeaseExpired)]

    # the core's outbox, read as the shell drains it ---------------------------------------------------------

    def effects(self, kind: type[E]) -> list[E]:
        """Take the effects of one kind out of the core's outbox, oldest first; the others stay, in their order."""
        taken: list[E] = []
        rest: list[Effect] = []
        for effect in self.core.drain_effects():
            if isinstance(effect, kind):
                taken.append(effect)
            else:
                rest.append(effect)
        self.core.outbox.extend(rest)
        return taken

    def resolve_requests(self) -> list[tuple[str, str]]:
        """The resolves the core asked for since the last look, as (kind, service); a route request that asks for
        the binding too (one round trip) is both ("route", service) and ("binding", service), in that order."""
        asked: list[tuple[str, str]] = []
        for effect in self.effects(ResolveRequest):
            asked.append((effect.kind, effect.service))
            if effect.binding_too:
                asked.append(("binding", effect.service))
        return asked

    def serve_pages(self) -> int:
        """Read every page the core asked for from the store and hand it over, as the shell does, until it asks
        for none; returns how many pages."""
        served = 0
        while pages := self.effects(PageWanted):
            for page in pages:
                self.core.paged_in(page, self.store.read_rows("q:" + page.queue, page.after_id, page.upto_id, page.limit))
                served += 1
            self.flush()
        return served

    def serve_bodies(self) -> int:
        """Read the bodies of DELAYED messages the core asked for (``tx_bodies.py``) from the store and hand them
        over, as the shell does, until it asks for none; returns how many requests."""
        served = 0
        while requests := self.effects(BodiesWanted):
            for request in requests:
                self.core.bodies_read(request, self.store.read_bodies(request.ids), self.now)
                served += 1
            self.flush()
        return served

    def reports(self) -> list[str]:
        """What the core reported since the last look."""
        return [effect.text for effect in self.effects(Report)]

    def restart(self) -> Harness:
        """A new core on the same store, as after a crash right after the last flush."""
        return Harness(self.store, now=self.now, **self.options)

    # set-up helpers ---------------------------------------------------------------------------------------

    def service(self, name: str, queue: str, contracts: list[str] | None = None) -> None:
        if queue not in self.core.queues:
            self.core.create_object("queue", {"name": queue})
        self.core.create_object("service", {"name": name, "queue": queue, "contracts": contracts or ["DEFAULT"]})
        self.flush()

    def pair(self) -> str:
        """Services 'init' (queue qi) and 'target' (queue qt) on DEFAULT; returns a new initiator handle."""
        if "init" not in self.core.catalog.services:
            self.service("init", "qi", [])
            self.service("target", "qt")
        handle = self.core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=self.now).handle
        self.flush()
        return handle

    def send(self, handle: str, *bodies: bytes, message_type: str = "DEFAULT") -> None:
        self.core.send(handle, [[message_type, b] for b in bodies], self.now)
        self.flush()

    def receive(self, queue: str, n: int = 100, owner: Any = None) -> Lease | None:
        return self.core.receive(queue, n, owner if owner is not None else self.owner, self.now)

    def drain(self, queue: str) -> list[tuple[str, int, str, bytes]]:
        """Receive and commit everything ready; returns (handle, seq, type, body) in order."""
        out = []
        while (lease := self.receive(queue)) is not None or self.serve_pages():
            if lease is None:
                continue  # the queue's next messages were in the store only: read back now
            out.extend((r[ROW_HANDLE], r[ROW_SEQ], r[ROW_TYPE], r[ROW_BODY]) for r in lease.messages)
            self.core.commit(lease.id, self.owner)
            self.flush()
        return out


# --- two cores as two nodes: the wire between them is a function call -----------------------------------------

#: the addresses the two-node tests give node a and node b
A_ADDR, B_ADDR = "tcp://a:1", "tcp://b:1"
#: ``outgoing``'s byte budget where a test is not about it (the shell passes its frame's)
NO_BYTE_LIMIT = 1 << 62


def route_both_ways(a: Harness, b: Harness, a_service: str, b_service: str) -> None:
    """A route at ``a`` for ``b_service`` to ``B_ADDR`` and one at ``b`` for ``a_service`` to ``A_ADDR``."""
    a.core.create_object("route", {"name": "to-b", "service_name": b_service, "address": B_ADDR}, a.now)
    b.core.create_object("route", {"name": "to-a", "service_name": a_service, "address": A_ADDR}, b.now)
    a.flush()
    b.flush()


def carry(
    src: Harness, dst: Harness, address: str, *, drop: set[int] | None = None, tamper: Any = None
) -> tuple[list[list[Any]], list[list[Any]]]:
    """What ``src`` sends to ``address`` arrives at ``dst``, which stores it; the acks go back to ``src``.

    On the way, envelopes whose sequence number is in ``drop`` are lost, and ``tamper(envelopes)`` may change the
    rest in place. Returns the envelopes as ``src`` sent them, and the acks. ``dst`` is an end node: anything it
    would forward fails the call."""
    envelopes = [e for e in src.core.outgoing(address, 10_000, NO_BYTE_LIMIT) if not drop or e[3] not in drop]
    sent = [list(e) for e in envelopes]
    if tamper is not None:
        tamper(envelopes)
    acks, forwards = dst.core.accept(envelopes, dst.now)
    assert forwards == {}, f"{address} forwarded {forwards}: carry() is for messages to an end node"
    dst.flush()
    src.core.acknowledged(acks, src.now)
    src.flush()
    return sent, acks
