"""The broker core: all of one node's conversation state, as pure synchronous parts behind one facade.

Theory of operation
-------------------
Nothing in the core does I/O or reads a clock: every call that depends on time takes ``now`` (wall-clock seconds),
and :meth:`BrokerCore.next_deadline` tells the shell when to call :meth:`BrokerCore.advance` next.

Durability is the shell's job, done in the order the core dictates:

1. A call changes memory at once (sequence numbers, states) and records what the store must learn in
   ``changes`` (a coalesced :class:`WriteBatch`) and what receivers may see only once it is stored in
   ``pending`` (messages bound for queues); both live in the ledger (``ledger.py``).
2. The shell calls :meth:`seal` to take both, writes the batch, and only then answers the clients whose requests
   made it and calls :meth:`publish` with the pending messages, which puts them in their queues.

So a message is visible to a receiver only after it is durable, a send is acknowledged only after it is durable,
and batches are published in the order they were sealed, which keeps every conversation in order. With a store
that is not durable (``persist=False``) the same path runs without building store rows.

:class:`BrokerCore` is a facade. It makes the parts (``parts.py`` lists them, with what each owns), wires each to
the siblings it calls, and hands the shell their public calls: ``core.send`` *is* ``core.delivery.send``. What it
does itself is the one timer (:meth:`advance` sends each due deadline to the part that owns its kind) and the one
outbox (:meth:`next_effect`, :meth:`drain_effects`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .budget import UNBOUNDED, Budget
from .catalog import Catalog
from .conversation import Endpoint, State
from .conversations import DEFAULT_CLOSED_RETENTION, Conversations
from .deadlines import LEASE, DeadlineKind
from .delivery import Delivery
from .dialog_security import DialogSecurity
from .dispatcher import Dispatcher
from .dynamic import DEFAULT_BINDING_FAILURE_CACHE, DynamicRouting
from . import paging, tx_bodies
from .dialog_errors import BrokerErrorCode
from .effects import BodiesWanted, Effect, LeaseExpired, PageWanted
from .ids import new_id as random_id
from .endings import Endings
from .inbound import DEFAULT_MAX_HOPS, Inbound
from .ledger import ConversationIndex, Ledger, Pending
from .loading import load
from .objects import Objects
from .outbound import Outbound
from .queues import Lease, MessageQueue
from .receiving import Receiving
from .records import MessageRow, Snapshot, WriteBatch
from .status import Status
from .transmission import TransmissionQueue

__all__ = ["DEFAULT_BINDING_FAILURE_CACHE", "BrokerCore", "Pending"]


class BrokerCore:
    """All of one node's conversation state. Single-threaded: the shell calls it from its event loop only."""

    def __init__(
        self,
        *,
        broker_instance: str,
        persist: bool = True,
        max_message_size: int = 4 * 1024 * 1024,
        max_batch_bytes: int = 16 * 1024 * 1024 - 64 * 1024,
        receive_lease: float = 30.0,
        poison_rollbacks: int = 5,
        forwarding: bool = False,
        max_hops: int = DEFAULT_MAX_HOPS,
        closed_retention: float = DEFAULT_CLOSED_RETENTION,
        resolver_name: str | None = None,
        resolve_timeout: float | None = None,
        max_delayed_per_service: int = 100_000,
        max_delayed_messages: int = 1_000_000,
        max_memory: int = UNBOUNDED,
        page_window: int | None = None,
        node_identity: str | None = None,
        authorization: bool = False,
        resolver_answers_bindings: bool = False,
        binding_failure_cache: float = DEFAULT_BINDING_FAILURE_CACHE,
        new_id: Callable[[], str] = random_id,
    ) -> None:
        # the parts (parts.py says what each owns)
        self.ledger = ledger = Ledger(
            broker_instance=broker_instance,
            persist=persist,
            new_id=new_id,
            max_memory=max_memory,
            page_window=page_window if persist else None,
        )
        ledger.catalog.node_identity = node_identity
        self.conversations = conversations = Conversations(ledger, closed_retention=closed_retention)
        self.delivery = delivery = Delivery(
            ledger,
            conversations,
            max_message_size=max_message_size,
            max_delayed_per_service=max_delayed_per_service,
            max_delayed_messages=max_delayed_messages,
        )
        self.endings = endings = Endings(ledger, conversations)
        self.receiving = receiving = Receiving(
            ledger, receive_lease=receive_lease, poison_rollbacks=poison_rollbacks, max_batch_bytes=max_batch_bytes
        )
        self.outbound = outbound = Outbound(ledger, conversations)
        self.inbound = inbound = Inbound(ledger, conversations, forwarding=forwarding, max_hops=max_hops)
        self.dynamic = dynamic = DynamicRouting(
            ledger,
            conversations,
            resolver_name=resolver_name,
            resolve_timeout=resolve_timeout,
            binding_failure_cache=binding_failure_cache,
        )
        self.security = security = DialogSecurity(
            ledger, conversations, authorization=authorization, resolver_answers_bindings=resolver_answers_bindings
        )
        self.objects = objects = Objects(ledger, conversations)
        self.status = status = Status(ledger, conversations)

        # who calls whom (each attribute typed by its protocol in parts.py)
        delivery.outbound, delivery.dynamic, delivery.endings = outbound, dynamic, endings
        endings.delivery, endings.outbound, endings.dynamic = delivery, outbound, dynamic
        receiving.objects = objects
        outbound.delivery, outbound.dynamic, outbound.security = delivery, dynamic, security
        inbound.delivery, inbound.endings, inbound.security = delivery, endings, security
        dynamic.outbound, dynamic.delivery, dynamic.endings = outbound, delivery, endings
        security.dynamic, security.endings = dynamic, endings
        dynamic.security = security
        objects.outbound = outbound
        status.outbound, status.dynamic, status.security, status.receiving = outbound, dynamic, security, receiving

        # the shell's calls, each answered by the part that owns it
        self.seal = ledger.seal
        self.publish = delivery.publish
        self.endpoint = conversations.endpoint
        self.begin_dialog = conversations.begin_dialog
        self.begin_timer = conversations.begin_timer
        self.send = delivery.send
        self.send_bodies = delivery.send_bodies
        self.end = endings.end
        self.queue = receiving.queue
        self.check_receivable = receiving.check_receivable
        self.receive = receiving.receive
        self.commit = receiving.commit
        self.rollback = receiving.rollback
        self.release_owner = receiving.release_owner
        self.decide = outbound.decide
        self.route = outbound.route
        self.reroute = outbound.reroute
        self.outgoing = outbound.outgoing
        self.link_up = outbound.link_up
        self.link_failed = outbound.link_failed
        self.link_status = outbound.link_status
        self.accept = inbound.accept
        self.acknowledged = inbound.acknowledged
        self.resolved = dynamic.resolved
        self.resolve_failed = dynamic.resolve_failed
        self.binding_unanswered = dynamic.binding_unanswered
        self.ask_again = dynamic.ask_again
        self.delayed_words = dynamic.delayed_words
        self.dynamic_statistics = dynamic.dynamic_statistics
        self.binding_resolved = security.binding_resolved
        self.security_statistics = security.statistics
        self.create_object = objects.create_object
        self.alter_queue = objects.alter_queue
        self.alter_route = objects.alter_route
        self.drop_object = objects.drop_object
        self.list_objects = objects.list_objects
        self.conversations_of = status.conversations_of
        self.transmission_entries = status.transmission_entries
        self.statistics = status.statistics

    def paged_in(self, page: PageWanted, rows: list[MessageRow]) -> bool:
        """A page of a queue's messages read back from the store (``paging.py``); whether any is now ready."""
        return paging.paged_in(self.ledger, page, rows)

    def page_failed(self, page: PageWanted) -> None:
        """Reading a page failed; the queue's next receive asks again."""
        paging.page_failed(self.ledger, page)

    def bodies_read(self, request: BodiesWanted, bodies: dict[int, bytes], now: float) -> int:
        """Bodies a :class:`BodiesWanted` asked for, read back from the store (``tx_bodies.py``): the conversations
        whole again are routed; one whose body the store no longer has fails, its application told why. Returns
        how many messages moved on."""
        moved, local, lost = tx_bodies.bodies_read(self.ledger, request.handles, bodies)
        for handle in lost:
            ep = self.ledger.endpoints.get(handle)
            if ep is not None:
                self.endings.fail(
                    ep,
                    BrokerErrorCode.DELAYED_MESSAGES_DROPPED,
                    "its messages waiting for a route were no longer in the store when they were to be sent",
                    now,
                )
        return moved + (self.outbound.reroute(now, handles=local) if local else 0)

    def load(self, snap: Snapshot, now: float) -> list[str]:
        """Rebuild state from a store snapshot; returns warnings about anything inconsistent that was skipped."""
        return load(self.ledger, self.conversations, self.outbound, snap, now)

    # ------------------------------------------------------------------------------------- the one timer

    def next_deadline(self) -> float | None:
        """When :meth:`advance` has something to do next (it may find it stale); None if nothing is scheduled."""
        deadlines = self.ledger.deadlines
        held = self.receiving.held
        # a lease committed or rolled back leaves its expiry behind (the heap is cleaned lazily): drop those from
        # the front, or the ticker wakes for each of them receive_lease seconds after every receive
        # (called after every request batch: one look at the front unless there are stale leases to drop)
        while (first := deadlines.first()) is not None:
            when, kind, key = first
            if kind is not LEASE or held(key, when) is not None:
                return when
            deadlines.drop_first()
        return None

    def advance(self, now: float) -> None:
        """Fire everything due by ``now``, each deadline by its kind, in the part that owns it; a stale one is
        skipped by the check beside its kind (``deadlines.py`` says why they are cleaned lazily). A lease that ran
        out is rolled back and put in the outbox (:class:`LeaseExpired`), so the shell can tell its owner."""
        ledger = self.ledger
        for when, kind, key in ledger.deadlines.pop_due(now):
            if kind is DeadlineKind.LEASE:
                lease = self.receiving.held(key, when)
                if lease is not None:
                    self.receiving.expire(lease)
                    ledger.outbox.append(LeaseExpired(lease))
                continue
            if kind is DeadlineKind.DISPATCH or kind is DeadlineKind.REFRESH:
                self.dynamic.dispatch_due(kind, key, now)
                continue
            ep = ledger.endpoints.get(key)
            if ep is None:
                continue
            if ep.state is State.CLOSED:
                if kind is DeadlineKind.RETIRE and ep.timer_at == when:
                    self.conversations.remove(ep)
                continue
            if kind is DeadlineKind.TIMER and ep.timer_at == when:
                self.endings.timer_fired(ep, now)
            elif kind is DeadlineKind.LIFETIME and ep.expires_at == when and ep.state is not State.ERROR:
                self.endings.lifetime_expired(ep, now)

    # ------------------------------------------------------------------------------------- the one outbox

    def next_effect(self) -> Effect | None:
        """The oldest thing the core asks the shell to do, taken off the outbox; None when it is empty."""
        outbox = self.ledger.outbox
        return outbox.popleft() if outbox else None

    def drain_effects(self) -> list[Effect]:
        """Everything the core asks the shell to do, oldest first, taken off the outbox (see ``effects.py``)."""
        outbox = self.ledger.outbox
        effects = list(outbox)
        outbox.clear()
        self.ledger.bodies_request = None  # taken: bodies wanted from now on make a request of their own
        return effects

    # ---------------------------------------------------------------- the records, as the shell reads them

    @property
    def broker_instance(self) -> str:
        return self.ledger.broker_instance

    @property
    def catalog(self) -> Catalog:
        return self.ledger.catalog

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return self.ledger.endpoints

    @property
    def by_conversation(self) -> ConversationIndex:
        return self.ledger.by_conversation

    @property
    def queues(self) -> dict[str, MessageQueue]:
        return self.ledger.queues

    @property
    def tx(self) -> TransmissionQueue:
        return self.ledger.tx

    @property
    def budget(self) -> Budget:
        return self.ledger.budget

    @property
    def outbox(self) -> deque[Effect]:
        return self.ledger.outbox

    @property
    def changes(self) -> WriteBatch:
        return self.ledger.changes

    @property
    def pending(self) -> list[Pending]:
        return self.ledger.pending

    @property
    def dirty(self) -> dict[str, Endpoint | None]:
        return self.ledger.dirty

    @property
    def sealed_upto(self) -> int:
        return self.ledger.sealed_upto

    @property
    def durable_upto(self) -> int:
        """Every message with an id up to this is stored; the shell sets it after each write."""
        return self.ledger.durable_upto

    @durable_upto.setter
    def durable_upto(self, value: int) -> None:
        ledger = self.ledger
        ledger.durable_upto = value
        if ledger.tx.to_strip:  # kept only on a store that pages (``TransmissionQueue.strips``)
            tx_bodies.strip(ledger)  # DELAYED messages now stored leave their bodies in the store only

    @property
    def new_id(self) -> Callable[[], str]:
        return self.ledger.new_id

    @new_id.setter
    def new_id(self, value: Callable[[], str]) -> None:
        self.ledger.new_id = value

    @property
    def leases(self) -> dict[int, Lease]:
        return self.receiving.leases

    @property
    def dispatcher(self) -> Dispatcher:
        return self.dynamic.dispatcher

    @property
    def resolver_name(self) -> str | None:
        return self.dynamic.resolver_name

    @property
    def dynamic_routing(self) -> bool:
        return self.dynamic.dynamic_routing

    @property
    def asks(self) -> str:
        return self.dynamic.asks

    @property
    def authorization(self) -> bool:
        return self.security.authorization

    @property
    def closed_retention(self) -> float:
        return self.conversations.closed_retention

    def __repr__(self) -> str:
        return (
            f"<BrokerCore {self.broker_instance[:8]} conversations={len(self.endpoints)}"
            f" queues={len(self.queues)} leases={len(self.leases)} {self.tx!r}>"
        )
