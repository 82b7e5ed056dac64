"""Receiving in the core: handing out a queue's messages under a lease, and what commit, rollback and expiry do.

Theory of operation
-------------------
A receive locks the oldest ready conversation group of a queue (``queues.py`` keeps the groups) and hands out up to
N of its messages, bounded by ``max_batch_bytes``, under a *lease*: the receiver's lock on that group, which only
the receiver that took it (its *owner*, a connection) may end. With ``max_groups`` > 1 it goes on to the next
ready groups, oldest first, while the batch has room (N messages and ``max_batch_bytes`` in all): one lease then
locks them all (a :class:`GroupsLease`, each group with its rows inside it, all taken in one loop by
``MessageQueue.take_more``), and its commit, rollback or expiry ends them together. A consumer of many one-message conversations thus pays one receive and one commit per batch,
not per message. Ending a lease unlocks its groups:

- **commit**: the messages leave the queue and the store, or stay as retained rows if the queue keeps them;
- **rollback**, by the receiver, or because it went away (:meth:`Receiving.release_owner`), or because the lease
  ran out (:meth:`Receiving.expire`, from ``BrokerCore.advance``, which tells the shell through the outbox):
  the messages go back to the front of their group, except those whose conversation ended meanwhile. If the
  queue has poison-message handling on, a group rolled back ``poison_rollbacks`` times in a row turns the queue
  off, and the queue says why.

This part owns the leases (``leases``, ``leases_by_owner``, their ids and deadlines); ``delivery.py`` fills the
queues as messages are stored, and :meth:`Receiving.expire` rolls back a lease whose deadline came.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument, LeaseExpired, QueueDisabled, UnknownObject
from .catalog import URGENT_TYPES
from .deadlines import LEASE
from .ledger import Ledger
from .paging import want_page
from .parts import ObjectsPart
from .queues import ROW_OVERHEAD, Group, Lease, MessageQueue
from .records import ROW_BODY, ROW_HANDLE, ROW_STATE, MessageRow


class GroupsLease(Lease):
    """One receive's lock on several conversation groups (``max_groups`` > 1): ``parts`` holds each group with the
    rows taken from it, in the order they were taken; ``messages`` and ``size`` are theirs joined, so everything
    that reads a lease (the batch sent to the receiver, the commit's store changes, the counters) reads it as one.
    Each group's ``lease`` is this lease. A part is a pair, not a lease of its own: a batch of a thousand
    one-message conversations made a thousand lease objects for a commit to walk; a rollback, which is rare, makes
    them (:func:`_parts`)."""

    __slots__ = ("parts",)

    def __init__(
        self,
        lease_id: int,
        queue: MessageQueue,
        parts: list[tuple[Group, list[MessageRow]]],
        messages: list[MessageRow],
        owner: Any,
        expires_at: float,
        size: int,
    ) -> None:
        super().__init__(lease_id, queue, parts[0][0], messages, owner, expires_at, size)
        self.parts = parts


def _parts(lease: Lease) -> list[Lease]:
    """The queue leases a lease ends: one per group of a :class:`GroupsLease` (made now), or itself (one group)."""
    if type(lease) is not GroupsLease:
        return [lease]
    return [Lease(lease.id, lease.queue, group, rows, lease.owner, lease.expires_at) for group, rows in lease.parts]


class Receiving:
    """Receives and their leases (see the module's header)."""

    objects: ObjectsPart

    def __init__(
        self, ledger: Ledger, *, receive_lease: float = 30.0, poison_rollbacks: int = 5, max_batch_bytes: int
    ) -> None:
        self.ledger = ledger
        #: seconds a receiver holds a group unless it asks for another time
        self.receive_lease = receive_lease
        #: rollbacks in a row that make a group a poison message (its queue is turned off, if the queue says so)
        self.poison_rollbacks = poison_rollbacks
        #: a receive batch's size on the wire stays under this (the frame limit less room for the rest)
        self.max_batch_bytes = max_batch_bytes
        #: lease id → lease; and per owner (a connection), the ids it holds, to release them all when it goes away
        self.leases: dict[int, Lease] = {}
        self.leases_by_owner: dict[Any, set[int]] = {}
        self._next_lease_id = 1

    def queue(self, name: Any) -> MessageQueue:
        queue = self.ledger.queues.get(name) if isinstance(name, str) else None
        if queue is None:
            raise UnknownObject(f"queue {name!r} does not exist")
        return queue

    def check_receivable(self, queue: MessageQueue) -> None:
        if not queue.definition.status:
            raise QueueDisabled(
                f"queue {queue.name!r} is disabled ({queue.disabled_reason or 'status off'}); fix the cause, then"
                f" turn it on with: aiobroker alter queue {queue.name} --status on"
            )

    def receive(
        self,
        queue_name: str,
        max_messages: int,
        owner: Any,
        now: float,
        lease_seconds: float | None = None,
        max_groups: int = 1,
    ) -> Lease | None:
        """Lock the oldest ready conversation group of a queue and hand out up to ``max_messages``; with
        ``max_groups`` > 1, the next ready groups too, while the batch has room; None if nothing is ready."""
        queue = self.queue(queue_name)
        self.check_receivable(queue)
        if not isinstance(max_messages, int) or isinstance(max_messages, bool) or max_messages < 1:
            raise InvalidArgument(f"max_messages must be a whole number >= 1, got {max_messages!r}")
        if max_groups != 1 and (not isinstance(max_groups, int) or isinstance(max_groups, bool) or max_groups < 1):
            raise InvalidArgument(f"max_groups must be a whole number >= 1, got {max_groups!r}")
        taken = queue.take(max_messages, self.max_batch_bytes)
        if taken is None:
            if queue.in_store:  # nothing ready in memory: the store's messages may be (paging.py)
                want_page(self.ledger, queue, nothing_ready=True)
            return None
        lease_id = self._next_lease_id
        self._next_lease_id = lease_id + 1
        expires = now + (lease_seconds if lease_seconds is not None else self.receive_lease)
        group, rows, size = taken
        lease: Lease
        if max_groups > 1 and queue.ready and len(rows) < max_messages:
            lease = self._more_groups(queue, lease_id, group, rows, size, owner, expires, max_messages, max_groups)
        else:
            lease = Lease(lease_id, queue, group, rows, owner, expires, size)
            group.lease = lease
        self.leases[lease_id] = lease
        self.leases_by_owner.setdefault(owner, set()).add(lease_id)
        self.ledger.deadlines.push(expires, LEASE, str(lease_id))
        if queue.in_store:
            want_page(self.ledger, queue)  # the next page, once what is in memory runs low
        return lease

    def _more_groups(
        self,
        queue: MessageQueue,
        lease_id: int,
        group: Group,
        rows: list[MessageRow],
        size: int,
        owner: Any,
        expires: float,
        max_messages: int,
        max_groups: int,
    ) -> Lease:
        """Go on from a receive's first group (``rows`` of ``group``, ``size`` bytes of bodies) to the next ready
        ones, while the batch has room; one lease for all (the first alone if no other fits)."""
        room = self.max_batch_bytes - size - ROW_OVERHEAD * len(rows)  # the batch's wire size as take estimates it
        messages = list(rows)
        more, more_size = queue.take_more(max_groups - 1, max_messages - len(rows), room, messages)
        lease: Lease
        if not more:
            lease = Lease(lease_id, queue, group, rows, owner, expires, size)
            group.lease = lease
            return lease
        more.insert(0, (group, rows))
        lease = GroupsLease(lease_id, queue, more, messages, owner, expires, size + more_size)
        for part_group, _ in more:
            part_group.lease = lease
        return lease

    def _take_lease(self, lease_id: Any, owner: Any) -> Lease:
        """The lease, no longer held (the caller ends it); only its owner may end it."""
        lease = self.leases.get(lease_id) if isinstance(lease_id, int) else None
        if lease is None or lease.owner is not owner:
            raise LeaseExpired(
                f"lease {lease_id!r} is not held: it ran out, was already committed or rolled back, or belongs to"
                " another connection; its messages went back to the queue"
            )
        self._forget_lease(lease)
        return lease

    def _forget_lease(self, lease: Lease) -> None:
        """Take a lease out of ``leases`` and out of its owner's set (either may be gone already)."""
        self.leases.pop(lease.id, None)
        owned = self.leases_by_owner.get(lease.owner)
        if owned is not None:
            owned.discard(lease.id)
            if not owned:
                del self.leases_by_owner[lease.owner]

    def commit(self, lease_id: int, owner: Any) -> int:
        lease = self._take_lease(lease_id, owner)
        queue = lease.queue
        if queue.definition.retention:
            for row in lease.messages:
                if row[ROW_HANDLE] in self.ledger.endpoints:
                    kept: MessageRow = (*row[:ROW_STATE], 1, *row[ROW_STATE + 1 :])  # type: ignore[assignment]
                    queue.retain(kept)
                    self.ledger.resave_row(kept)
                else:
                    self.ledger.forget_row(row)  # its conversation ended while it was locked
        elif lease.messages:
            self.ledger.forget_rows(lease.messages, lease.size)
        if type(lease) is GroupsLease:
            queue.commit_groups(lease.parts, len(lease.messages))
        else:
            queue.commit(lease)
        return len(lease.messages)

    def rollback(self, lease_id: int, owner: Any) -> None:
        self._rollback(self._take_lease(lease_id, owner))

    def release_owner(self, owner: Any) -> int:
        """A receiver went away: roll back every lease it held. Returns how many."""
        ids = self.leases_by_owner.pop(owner, set())
        for lease_id in sorted(ids):
            lease = self.leases.pop(lease_id)
            self._rollback(lease)
        return len(ids)

    def _rollback(self, lease: Lease) -> None:
        """Put a lease's messages back in front of their group (a rollback, a receiver gone, or the lease ran out);
        count it against the group for poison-message handling."""
        self._forget_lease(lease)
        queue = lease.queue
        endpoints = self.ledger.endpoints
        gone = [row for row in lease.messages if row[ROW_HANDLE] not in endpoints]
        if gone:  # their conversation ended while they were locked: they do not come back
            self.ledger.forget_rows(gone)
            lease.size -= sum(len(row[ROW_BODY]) for row in gone)
        parts = _parts(lease)
        # the last group first: each goes back to the front of the line, so they end up in the order taken
        for part in reversed(parts):
            queue.rollback(part, urgent_types=URGENT_TYPES, alive=endpoints)
        for part in parts:
            group = part.group
            if group.rollbacks >= self.poison_rollbacks and queue.definition.poison_message_handling:
                if queue.definition.status:
                    reason = (
                        f"poison message: conversation group {group.id} was rolled back"
                        f" {group.rollbacks} times in a row"
                    )
                    self.objects.alter_queue(queue.name, {"status": False})
                    queue.disabled_reason = reason

    # ------------------------------------------------------------------------------------------------- time

    def held(self, key: str, when: float) -> Lease | None:
        """The lease a LEASE deadline ``(when, key)`` is for, if that deadline is still its expiry (not stale)."""
        lease = self.leases.get(int(key))
        return lease if lease is not None and lease.expires_at == when else None

    def expire(self, lease: Lease) -> None:
        """A lease ran out: its messages go back (counted as a rollback)."""
        self._rollback(lease)
