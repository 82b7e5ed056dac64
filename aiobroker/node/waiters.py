"""Waiting receives, and the ticker that moves time on for them and for the core.

A receive that finds nothing and may wait is parked here, per queue, oldest first, until messages arrive (the
writer publishes a batch, a lease is rolled back or runs out, a queue is enabled) or its time-out passes. Its
time-out is on the monotonic clock (a client's "wait 5 s" means 5 s even if the wall clock jumps); the core's
deadlines (lifetimes, timers, leases) are on the node's wall clock. The ticker sleeps until the earlier of the two,
then calls ``core.advance(now)`` and answers the receives whose time is up with an empty batch. The leases the
core let run out come back through its outbox: the server hands them to :meth:`Waiters.leases_expired`.

Nothing here imports the node: the server makes one :class:`Waiters` when it starts and hands it the core and the
clock; after each tick it calls back the one function it was given (handle the core's effects, store what changed).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from .. import tracing
from ..core.broker import BrokerCore
from ..core.queues import Lease
from ..core.records import ROW_HANDLE, ROW_ID, row_trace
from ..errors import BrokerError, QueueDisabled, UnknownObject
from .counters import Counters
from .sessions import Session

log = logging.getLogger("aiobroker.node")

#: While a receive waits or a lease is held, the ticker looks at the clock at least this often, so a new deadline
#: further away than this (a receive's time-out, a lease's expiry) never has to wake it early.
TICKER_MAX_SLEEP = 0.25

EMPTY_BATCH: dict[str, Any] = {"lease": None, "queue": None, "messages": [], "conversations": {}}


class Waiter:
    """A receive waiting for messages."""

    __slots__ = ("session", "rid", "queue", "max_messages", "lease_seconds", "deadline", "done", "max_groups",
                 "compact")

    def __init__(
        self,
        session: Session,
        rid: int,
        queue: str,
        max_messages: int,
        lease_seconds: float | None,
        deadline: float,
        max_groups: int = 1,
        compact: bool = False,
    ) -> None:
        self.session = session
        self.rid = rid
        self.queue = queue
        self.max_messages = max_messages
        self.max_groups = max_groups
        self.lease_seconds = lease_seconds
        self.deadline = deadline
        self.done = False
        #: the client asked for the conversations' facts in their compact form (docs/protocol.md)
        self.compact = compact


class Waiters:
    """The receives waiting on each queue, their time-outs, and the ticker."""

    def __init__(self, core: BrokerCore, clock: Callable[[], float], counters: Counters | None = None) -> None:
        self.core = core
        self.clock = clock
        self.counters = counters or Counters()
        self.by_queue: dict[str, deque[Waiter]] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self._tick_wake = anyio.Event()
        #: when (time.monotonic()) the ticker will look next by itself; -inf while it is awake
        self._ticker_target = math.inf

    def count(self) -> int:
        """How many receives wait, on every queue."""
        return sum(len(w) for w in self.by_queue.values())

    def in_flight(self, session: Session) -> bool:
        """A receive waiting or a lease held: however quiet, such a connection is not idle."""
        if any(lease.owner is session for lease in self.core.leases.values()):
            return True
        return any(w.session is session and not w.done for waiting in self.by_queue.values() for w in waiting)

    # ------------------------------------------------------------------------------------------------- receive

    def receive(
        self,
        session: Session,
        rid: int,
        queue: str,
        max_messages: int,
        timeout: float | None,
        lease_seconds: float | None,
        max_groups: int = 1,
        compact: bool = False,
    ) -> None:
        lease = self.core.receive(queue, max_messages, session, self.clock(), lease_seconds, max_groups)
        if lease is not None:
            session.reply_now(rid, self._batch(lease, compact))
            self.maybe_wake_ticker()
            return
        if timeout == 0:
            session.reply_now(rid, EMPTY_BATCH)
            return
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        waiter = Waiter(session, rid, queue, max_messages, lease_seconds, deadline, max_groups, compact)
        self.by_queue.setdefault(queue, deque()).append(waiter)
        if deadline != math.inf:
            heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter))
            self.maybe_wake_ticker()

    def _batch(self, lease: Lease, compact: bool = False) -> dict[str, Any]:
        """What a receiver is handed; every lease given out passes here once. ``compact``: the conversations'
        facts as a flat list (``Status.compact_facts``), else as a map."""
        rows = lease.messages
        self.counters.received += len(rows)
        traced = lease.queue.name in self.core.ledger.traced_queues  # some message in it may carry trace context
        batch: dict[str, Any] = {
            "lease": lease.id,
            "queue": lease.queue.name,
            "lease_expires_at": lease.expires_at,
            "messages": rows,  # stored rows as they are: no per-message work on the way out
        }
        if compact:
            batch["facts"] = self.core.status.compact_facts(rows)
        else:
            batch["conversations"] = self.core.conversations_of(rows)
        if traced and tracing.recording():  # a receive span for each message with it, in the sender's trace
            for handle, facts in self.core.conversations_of(rows).items():
                tracing.node_spans(
                    "receive",
                    facts[0],
                    ((row_trace(row), row[ROW_ID]) for row in rows if row[ROW_HANDLE] == handle),
                    instance=self.core.broker_instance,
                    conversation_id=facts[5],
                )
        if traced:
            batch["traced"] = True  # the client looks for rows of nine fields only then
        return batch

    def serve(self, queue_name: str) -> None:
        """Hand ready groups of a queue to the receives waiting on it, oldest waiter first."""
        waiting = self.by_queue.get(queue_name)
        if not waiting:
            return
        queue = self.core.queues.get(queue_name)
        if queue is None:
            self.fail(queue_name)
            return
        if not queue.definition.status:
            try:
                self.core.check_receivable(queue)
            except QueueDisabled as exc:
                self.fail(queue_name, exc)
            return
        now = self.clock()
        while waiting and queue.ready:
            w = waiting.popleft()
            if w.done or w.session.closed:
                continue
            w.done = True
            lease = self.core.receive(queue_name, w.max_messages, w.session, now, w.lease_seconds, w.max_groups)
            if lease is not None:
                w.session.reply_now(w.rid, self._batch(lease, w.compact))
        if not waiting:
            del self.by_queue[queue_name]
        self.maybe_wake_ticker()

    def serve_all(self, queues: set[str]) -> None:
        """What the writer calls after publishing a batch: the queues that got messages."""
        for name in queues:
            self.serve(name)

    def fail(self, queue_name: str, exc: BrokerError | None = None) -> None:
        err = exc or UnknownObject(f"queue {queue_name!r} was dropped while this receive waited")
        for w in self.by_queue.pop(queue_name, ()):
            if not w.done and not w.session.closed:
                w.done = True
                w.session.fail(w.rid, err)

    # -------------------------------------------------------------------------------------------------- time

    def wake_ticker(self) -> None:
        self._tick_wake.set()

    def maybe_wake_ticker(self) -> None:
        """Wake the ticker only when something is due before it would look anyway. Called after every request,
        so it must not wake it for nothing: a wake-up costs a task switch, a cancel scope and a writer cycle."""
        target = self._ticker_target
        if target == -math.inf:
            return  # awake: it reads every deadline again before it sleeps
        wd = self._deadlines[0][0] if self._deadlines else math.inf
        nxt = self.core.next_deadline()
        if nxt is not None:
            # core deadlines are wall-clock, the target is monotonic
            wd = min(wd, time.monotonic() + (nxt - self.clock()))
        # 1 ms of slack (the timers' resolution): the deadline the ticker already sleeps towards, converted between
        # the two clocks, may come out a rounding error earlier, and must not count as new
        if wd < target - 0.001:
            self._tick_wake.set()

    async def run_ticker(self, after_tick: Callable[[], None]) -> None:
        """Sleep until the next deadline, tick, call ``after_tick``; for ever (the node's task group ends it)."""
        heap = self._deadlines
        while True:
            # receives already served leave their time-outs in the heap (cleaned lazily): drop them from the front,
            # or the ticker wakes for each, half a second (the receive's time-out) after every receive
            while heap and heap[0][2].done:
                heapq.heappop(heap)
            nxt = self.core.next_deadline()
            delay = math.inf if nxt is None else max(0.0, nxt - self.clock())
            if heap:
                delay = min(delay, max(0.0, heap[0][0] - time.monotonic()))
            if heap or self.core.leases:
                delay = min(delay, TICKER_MAX_SLEEP)
            self._ticker_target = time.monotonic() + delay
            with anyio.move_on_after(delay):
                await self._tick_wake.wait()
            self._tick_wake = anyio.Event()
            self._ticker_target = -math.inf
            self._tick()
            after_tick()

    def leases_expired(self, expired: list[Lease]) -> None:
        """Leases the core let run out (its ``LeaseExpired`` effects): say so, and serve their queues again, whose
        messages are back."""
        for lease in expired:
            log.info(
                "lease %d on queue %r ran out (client %s); %d message(s) back in the queue",
                lease.id,
                lease.queue.name,
                getattr(lease.owner, "peer", "?"),
                len(lease.messages),
                extra={"queue": lease.queue.name, "peer": getattr(lease.owner, "peer", None)},
            )
        for name in {lease.queue.name for lease in expired}:
            self.serve(name)

    def _tick(self) -> None:
        self.core.advance(self.clock())  # what ran out is in the core's outbox, for after_tick to handle
        mono = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= mono:
            _, _, w = heapq.heappop(heap)
            if not w.done:
                w.done = True
                if not w.session.closed:
                    w.session.reply_now(w.rid, EMPTY_BATCH)
                waiting = self.by_queue.get(w.queue)
                if waiting is not None:
                    try:
                        waiting.remove(w)
                    except ValueError:
                        pass
                    if not waiting:
                        del self.by_queue[w.queue]
