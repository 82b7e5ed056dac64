"""The broker core: the catalog, conversations, local delivery and time, as pure synchronous state.

Theory of operation
-------------------
Nothing here does I/O or reads a clock: every call that depends on time takes ``now`` (wall-clock seconds), and
:meth:`BrokerCore.next_deadline` tells the shell when to call :meth:`BrokerCore.advance` next.

Durability is the shell's job, done in the order the core dictates:

1. A call changes memory at once (sequence numbers, states) and records what the store must learn in
   ``changes`` (a coalesced :class:`WriteBatch`) and what receivers may see only once it is stored in
   ``pending`` (messages bound for queues).
2. The shell calls :meth:`seal` to take both, writes the batch, and only then answers the clients whose requests
   made it and calls :meth:`publish` with the pending messages, which puts them in their queues.

So a message is visible to a receiver only after it is durable, a send is acknowledged only after it is durable,
and batches are published in the order they were sealed, which keeps every conversation in order. With a store
that is not durable (``persist=False``) the same path runs without building store rows.

Outgoing messages go straight to the far endpoint's queue when its service is on this node. When it is not, they
wait in the transmission queue (``tx``, see ``transmission.py`` and ``federation.py``), DELAYED with a reason, and move on in order when a route appears
(here: when a service of that name is created on this node; federation and dynamic routing add more).

The engine is one object, :class:`BrokerCore`, whose parts live in mixins so that each file can be read alone:
``federation.py`` (routing decisions, the transmission queue, envelopes), ``dynamic.py`` (asking where a service
is), ``dialog_security.py`` (bindings, session keys, sealing), ``receiving.py`` (receives and their leases) and
``status.py`` (what ``status`` reports, and the counters that keep it cheap). This file keeps what ties them:
loading, sealing and publishing, the catalog calls, the conversation calls, and the timers (every deadline of
every kind in one heap, ``deadlines.py``: :meth:`BrokerCore.advance` sends each to its owner by its kind).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import (
    ContractViolation,
    Overloaded,
    ConversationError,
    InvalidArgument,
    MessageTooLarge,
    ObjectInUse,
    SecurityError,
    UnknownObject,
)
from .catalog import (
    BCN_SERVICE,
    DIALOG_TIMER,
    DISPATCHER_SERVICE,
    END_DIALOG,
    ERROR,
    SYSTEM_MESSAGE_TYPES,
    Catalog,
    CatalogObject,
    QueueDef,
    Service,
)
from ..names import check_name
from .conversation import MAX_LIFETIME, Endpoint, State
from .conversation_states import STARTS, Event
from .identities import Binding
from .dialog_errors import BrokerErrorCode, error_body, parse_error_body
from .dispatcher import BINDING, ROUTE, Dispatcher
from .dialog_security import DialogSecurity
from .deadlines import LEASE, DeadlineKind, Deadlines
from .dynamic import DynamicRouting
from .effects import Effect, LeaseExpired
from .federation import DEFAULT_CLOSED_RETENTION, DEFAULT_MAX_HOPS, Envelope, Federation
from .queues import Lease, MessageQueue
from .receiving import URGENT_TYPES, Receiving
from .records import ROW_HANDLE, ROW_ID, ROW_LOCATION, ROW_STATE, ROW_TYPE, MessageRow, Snapshot, WriteBatch
from .routing import Route
from .status import Status
from .transmission import TransmissionQueue
from .validation import VALIDATORS

#: how long a failed MissingRemoteServiceBinding request is remembered (the seeds: 10 minutes)
DEFAULT_BINDING_FAILURE_CACHE = 600.0
TX = "tx"

#: messages bound for a queue, waiting for their batch to be stored: (queue name, group id, urgent, rows), the
#: rows all of one receiving endpoint, in order
Pending = tuple[str, str, bool, list[MessageRow]]


def _uuid() -> str:
    return str(uuid.uuid4())


class BrokerCore(Federation, DynamicRouting, DialogSecurity, Receiving, Status):
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
        node_identity: str | None = None,
        authorization: bool = False,
        resolver_answers_bindings: bool = False,
        binding_failure_cache: float = DEFAULT_BINDING_FAILURE_CACHE,
        new_id: Callable[[], str] = _uuid,
    ) -> None:
        self.broker_instance = broker_instance
        self.persist = persist
        self.max_message_size = max_message_size
        #: a receive batch's size on the wire stays under this (the frame limit less room for the rest)
        self.max_batch_bytes = max_batch_bytes
        self.receive_lease = receive_lease
        self.poison_rollbacks = poison_rollbacks
        self.new_id = new_id
        self.forwarding = forwarding
        self.max_hops = max_hops
        self.closed_retention = closed_retention
        #: dynamic routing: the resolver asked (None: the BCN service, if there is one), and the bounds on what
        #: may wait for it (a send past them fails at once: nothing is dropped silently)
        self.resolver_name = resolver_name
        self.dispatcher = Dispatcher(resolve_timeout=resolve_timeout)
        self.route_traffic: set[str] = set()
        self._reasons: dict[tuple[str, str], tuple[Any, str]] = {}
        self.max_delayed_per_service = max_delayed_per_service
        self.max_delayed_messages = max_delayed_messages

        self.catalog = Catalog()
        self.catalog.node_identity = node_identity
        #: check rights per identity (docs/security.md); off: everyone may do everything
        self.authorization = authorization
        self.binding_failure_cache = binding_failure_cache
        #: the resolver (if any) answers MissingRemoteServiceBinding too (the shell sets it from the resolver)
        self.resolver_answers_bindings = resolver_answers_bindings
        self.security_counts: dict[str, int] = {}
        self.binding_waiters: set[str] = set()
        #: conversation handle → its body cipher (made from the stored session key on first use)
        self._ciphers: dict[str, Any] = {}
        self.queues: dict[str, MessageQueue] = {}
        self.endpoints: dict[str, Endpoint] = {}
        #: how many endpoints are in each state, for ``status`` (see status.py for where it is kept)
        self._state_counts: dict[State, int] = dict.fromkeys(State, 0)
        self.secured_count = 0
        #: outgoing messages not yet acknowledged (remote) or waiting for a route (DELAYED)
        self.tx = TransmissionQueue()
        #: (conversation id, is_initiator) → the handle of this node's endpoint on that side
        self.by_conversation: dict[tuple[str, bool], str] = {}
        #: what the core asks the shell to do (resolve, a lease ran out, a report to log), in order (effects.py)
        self.outbox: deque[Effect] = deque()
        self.leases: dict[int, Lease] = {}
        self.leases_by_owner: dict[Any, set[int]] = {}
        #: recently closed handles, so a late call says "ended" rather than "unknown" (bounded)
        self.recently_closed: dict[str, None] = {}

        self.changes = WriteBatch()
        self.dirty: dict[str, Endpoint | None] = {}
        self.pending: list[Pending] = []
        #: the one timer: every deadline of every kind (see ``deadlines.py``), cleaned lazily
        self._deadlines = Deadlines()
        self._next_message_id = 1
        self._next_lease_id = 1
        #: every message with an id up to this is stored (the shell sets it after each write, see ``seal``)
        self.durable_upto = 0
        self.sealed_upto = 0

    # ------------------------------------------------------------------------------------------------- loading

    def load(self, snap: Snapshot, now: float) -> list[str]:
        """Rebuild state from a store snapshot; returns warnings about anything inconsistent that was skipped."""
        warnings: list[str] = []
        if snap.meta.get("catalog_initialized"):
            self.catalog.clear_routes()  # the store says which routes exist, built-in ones included
        else:
            self.changes.meta["catalog_initialized"] = True
            for route in self.catalog.routes.values():
                self._save_object("route", route, route.name)
        order = {"identity": 0, "message_type": 1, "contract": 2, "queue": 3, "service": 4, "route": 5, "binding": 6}
        for kind, _name, definition in sorted(snap.objects, key=lambda o: order.get(o[0], 9)):
            if kind in order:
                self.catalog.load(kind, definition)
        for qdef in self.catalog.queues.values():
            self.queues[qdef.name] = MessageQueue(qdef)
        for handle, state in snap.endpoints:
            ep = Endpoint.from_state(handle, state)
            self.endpoints[handle] = ep
            self.by_conversation[(ep.conversation_id, ep.is_initiator)] = handle
            self._watch(ep)
        last_id = 0
        for row in snap.messages:
            last_id = max(last_id, row[ROW_ID])
            owner = self.endpoints.get(row[ROW_HANDLE])
            if owner is None:
                warnings.append(f"message {row[ROW_ID]} belongs to no conversation endpoint; dropped")
                self._forget_row(row[ROW_ID])
                continue
            if row[ROW_LOCATION] == TX:
                self.tx.load(row)
                continue
            queue = self.queues.get(row[ROW_LOCATION][2:])
            if queue is None:
                warnings.append(f"message {row[ROW_ID]} is in unknown queue {row[ROW_LOCATION][2:]!r}; dropped")
                self._forget_row(row[ROW_ID])
                continue
            if row[ROW_STATE] == 1:
                queue.retain(row)
            else:
                queue.push(row, owner.group_id, row[ROW_TYPE] in URGENT_TYPES)
        self._next_message_id = last_id + 1
        self.durable_upto = last_id
        self.reroute(now)  # decide afresh where every waiting message goes
        return warnings

    # ---------------------------------------------------------------------------------------- store bookkeeping

    def _forget_row(self, message_id: int) -> None:
        if self.persist:
            self.changes.messages[message_id] = None

    def _save_row(self, row: MessageRow) -> None:
        if self.persist:
            self.changes.messages[row[ROW_ID]] = row

    def _touch(self, ep: Endpoint) -> None:
        if self.persist:
            self.dirty[ep.handle] = ep

    def _save_object(self, kind: str, obj: CatalogObject | None, name: str) -> None:
        if self.persist:
            self.changes.objects[(kind, name)] = obj.to_def() if obj is not None else None

    def seal(self) -> tuple[WriteBatch, list[Pending]]:
        """Take the changes to store and the messages to publish once they are stored. Once the batch is written,
        the shell sets ``durable_upto`` to ``sealed_upto`` (every message id in it, and before it)."""
        self.sealed_upto = self._next_message_id - 1
        batch = self.changes
        if self.dirty:
            for handle, ep in self.dirty.items():
                batch.endpoints[handle] = ep.to_state() if ep is not None else None
            self.dirty = {}
        pending = self.pending
        self.changes = WriteBatch()
        self.pending = []
        return batch, pending

    def publish(self, pending: list[Pending]) -> set[str]:
        """Put stored messages in their queues; returns the names of queues that received any."""
        touched: set[str] = set()
        queues = self.queues
        endpoints = self.endpoints
        for queue_name, group_id, urgent, rows in pending:
            ep = endpoints.get(rows[0][ROW_HANDLE])  # a run of rows always belongs to one endpoint
            queue = queues.get(queue_name)
            if ep is None or ep.state is State.CLOSED or queue is None:
                for row in rows:
                    self._forget_row(row[ROW_ID])  # its conversation ended while the messages were being stored
                continue
            queue.push_many(rows, group_id, urgent)
            touched.add(queue_name)
        return touched

    # ------------------------------------------------------------------------------------------------- catalog

    def create_object(self, kind: str, definition: dict[str, Any], now: float = 0.0) -> CatalogObject:
        obj = self.catalog.create(kind, definition, now)
        self._save_object(kind, obj, obj.name)
        if isinstance(obj, QueueDef):
            self.queues[obj.name] = MessageQueue(obj)
        elif isinstance(obj, Service):
            self.reroute(now, {obj.name})
        elif kind == "route":
            self.reroute(now)
        elif isinstance(obj, Binding):
            self.reroute(now, {obj.to_service})  # conversations waiting for a binding to it go now
        return obj

    def alter_queue(self, name: str, changes: dict[str, Any]) -> QueueDef:
        current: QueueDef = self.catalog.get("queue", name)
        definition = {**current.to_def(), **changes, "name": name}
        new: QueueDef = self.catalog.build("queue", definition)  # type: ignore[assignment]
        self.catalog.replace("queue", new)
        queue = self.queues[name]
        queue.definition = new
        if new.status:
            queue.disabled_reason = None
        elif not current.status or queue.disabled_reason is None:
            queue.disabled_reason = queue.disabled_reason or "its status was set off by an administrator"
        self._save_object("queue", new, name)
        return new

    def alter_route(self, name: str, changes: dict[str, Any], now: float) -> Route:
        """Change a route's address, service, instance, weight or lifetime; conversations waiting for a route,
        and those on its link, are routed again."""
        current: Route = self.catalog.get("route", name)
        if not isinstance(changes, dict) or "name" in changes:
            raise InvalidArgument("alter route takes a map of the fields to change (not its name)")
        definition = {**current.to_def(), **changes}
        if "lifetime" in changes:
            definition.pop("expires_at", None)
        new: Route = self.catalog.build("route", definition, now)  # type: ignore[assignment]
        self.catalog.replace("route", new)
        self._save_object("route", new, name)
        self.reroute(now)
        return new

    def drop_object(self, kind: str, name: str, now: float = 0.0) -> None:
        mine: list[Endpoint] = []
        if kind == "service":
            self.catalog.get("service", name)
            # ended endpoints kept only to recognise late retransmissions do not hold the service (they go with
            # it); an ended one still sending its last messages does, as an open one does
            mine = [ep for ep in self.endpoints.values() if ep.service == name]
            open_handles = [ep.handle for ep in mine if ep.state is not State.CLOSED or ep.handle in self.tx]
            if open_handles:
                shown = ", ".join(open_handles[:3]) + (", ..." if len(open_handles) > 3 else "")
                raise ObjectInUse(
                    f"service {name!r} has {len(open_handles)} open conversation(s) ({shown}); end each first"
                    " (aiobroker end HANDLE; or aiobroker end HANDLE --cleanup to remove this side without telling"
                    " the far side), then drop the service; aiobroker list conversations shows them"
                )
        if kind == "queue":
            self.catalog.get("queue", name)
            q = self.queues[name]
            if q.waiting or q.groups:
                raise ObjectInUse(f"queue {name!r} still holds {q.waiting} message(s); receive or end them first")
        self.catalog.drop(kind, name)
        for ep in mine:
            self._remove(ep)
        if kind == "queue":
            del self.queues[name]
        self._save_object(kind, None, name)
        if kind == "route" or (kind == "service" and name == BCN_SERVICE):
            self.reroute(now)  # without the BCN service here, dynamic routing may be off: decide again

    def list_objects(self, kind: str) -> list[dict[str, Any]]:
        """Definitions as a client may see them (identities and bindings without keys, tokens or PEM)."""
        return [o.public_def() if hasattr(o, "public_def") else o.to_def() for o in self.catalog.table(kind).values()]

    # ---------------------------------------------------------------------------------------------- dialogs

    def begin_dialog(
        self,
        *,
        from_service: str,
        to_service: str,
        contract: str,
        now: float,
        broker_instance: str | None = None,
        lifetime: float | None = None,
        encryption: bool = False,
        related_group: str | None = None,
    ) -> Endpoint:
        service: Service = self.catalog.get("service", check_name("service", from_service))
        check_name("service", to_service)
        self.catalog.get("contract", check_name("contract", contract))
        if lifetime is None:
            lifetime = MAX_LIFETIME
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or not 0 < lifetime <= MAX_LIFETIME:
            raise InvalidArgument(f"lifetime must be a number of seconds in (0, {MAX_LIFETIME:.0f}], got {lifetime!r}")
        group = related_group
        if group is not None and not isinstance(group, str):
            raise InvalidArgument("related_group must be a conversation group id (a string)")
        handle = self.new_id()
        ep = Endpoint(
            handle=handle,
            conversation_id=self.new_id(),
            is_initiator=True,
            service=service.name,
            far_service=to_service,
            contract=contract,
            group_id=group or self.new_id(),
            expires_at=now + lifetime,
            far_broker_instance=broker_instance,
            state=STARTS[Event.BEGIN],
            encryption=bool(encryption),
        )
        self.endpoints[handle] = ep
        self.by_conversation[(ep.conversation_id, True)] = handle
        self._touch(ep)
        self._watch(ep)
        return ep

    def endpoint(self, handle: Any) -> Endpoint:
        ep = self.endpoints.get(handle) if isinstance(handle, str) else None
        if ep is None:
            if handle in self.recently_closed:
                raise ConversationError(f"conversation {handle} has ended on this side")
            raise UnknownObject(f"conversation {handle!r} does not exist (it may have ended long ago)")
        return ep

    def send(self, handle: str, messages: list[Any], now: float) -> int:
        """Send messages on one conversation, in order. Checks all of them before sending any.

        The hot path: everything that is the same for the whole batch (the far endpoint, its queue, the contract,
        the validators) is decided once, and the rows are built in one loop.
        """
        ep = self.endpoint(handle)
        why = ep.why_not_send()
        if why:
            raise ConversationError(f"cannot send on conversation {handle}: {why}")
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("send needs a non-empty list of [message_type, body] pairs")
        allowed = self.catalog.contracts[ep.contract].may_send(ep.is_initiator)
        limit = self.max_message_size
        types: set[str] = set()
        try:
            for message_type, body in messages:
                if type(body) is not bytes or len(body) > limit:
                    if type(body) is not bytes:
                        raise InvalidArgument("each message is a [message_type, body] pair with a bytes body")
                    raise MessageTooLarge(
                        f"message body of {len(body)} bytes is over the node's max_message_size of {limit} bytes"
                    )
                types.add(message_type)
        except (TypeError, ValueError):
            raise InvalidArgument("each message is a [message_type, body] pair with a bytes body") from None
        for message_type in types - allowed:
            self._refuse_type(ep, message_type)
        if ep.state is State.STARTED_OUTBOUND:
            self._transition(ep, Event.SEND_FIRST)
        target = self.route(ep, now)
        if isinstance(target, Endpoint):
            if target.state is State.CLOSED:
                ep.send_seq += len(messages)  # its side ended; it said so with EndDialog or Error
            else:
                self._deliver_user_messages(ep, target, messages, types, now)
        elif target is not None:
            self.queue_outgoing(ep, messages, now)  # remote: stored until acknowledged
            self.route_traffic.add(ep.far_service)  # a live service: its resolver's routes are refreshed in time
        elif ep.delayed is not None:
            self._check_delay_bounds(ep, len(messages), now)
            self.queue_outgoing(ep, messages, now)  # DELAYED: stored until a route appears
        elif ep.state is State.ERROR and ep.error is not None and ep.error[0] == BrokerErrorCode.SECURITY:
            # the choice table: encryption required, no binding, nobody to ask: the dialog failed at once
            raise SecurityError(f"nothing was sent; conversation {handle} failed: {ep.error[1]}")
        else:
            ep.send_seq += len(messages)  # no reader: the conversation failed or the far side is gone
        self._touch(ep)
        return len(messages)

    def _check_delay_bounds(self, ep: Endpoint, n: int, now: float) -> None:
        waiting = self.tx.delayed_count.get(ep.far_service, 0)
        if waiting + n > self.max_delayed_per_service:
            raise Overloaded(
                f"{waiting} message(s) already wait for a route to service {ep.far_service!r}"
                f" (max_delayed_per_service is {self.max_delayed_per_service}); nothing was sent:"
                f" {self.delayed_words(ep, now)}"
            )
        if self.tx.delayed_total + n > self.max_delayed_messages:
            raise Overloaded(
                f"{self.tx.delayed_total} message(s) already wait for routes on this node (max_delayed_messages is"
                f" {self.max_delayed_messages}); nothing was sent"
            )

    def _refuse_type(self, ep: Endpoint, message_type: Any) -> None:
        if message_type in SYSTEM_MESSAGE_TYPES:
            raise InvalidArgument(
                f"{message_type!r} is a system message type: end() sends EndDialog and Error,"
                " begin_timer() makes DialogTimer"
            )
        if message_type not in self.catalog.message_types:
            raise UnknownObject(f"message type {message_type!r} does not exist")
        side = "initiator" if ep.is_initiator else "target"
        raise ContractViolation(f"contract {ep.contract!r} does not let the {side} send message type {message_type!r}")

    def _deliver_user_messages(
        self, src: Endpoint, far: Endpoint, messages: list[Any], types: set[str], now: float
    ) -> None:
        """The receiving side's checks for a batch, then the batch into the far endpoint's queue as one run."""
        count = len(messages)
        reason: str | None = None
        for message_type in types:
            mt = self.catalog.message_types.get(message_type)
            if mt is not None and mt.validation == "none":
                continue
            validate = VALIDATORS[mt.validation] if mt is not None else None
            for i in range(count):  # count only shrinks, so the earliest failure of all types wins
                t, body = messages[i]
                if t != message_type:
                    continue
                why = validate(body) if validate is not None else (
                    f"message type {t!r} does not exist at the receiving service {far.service!r}"
                )
                if why is not None:
                    count, reason = i, why
                    break
        seq = src.send_seq
        if count:
            queue_name = self.catalog.services[far.service].queue
            location = "q:" + queue_name
            mid = self._next_message_id
            fh = far.handle
            rows: list[MessageRow] = [
                (mid + i, location, fh, seq + i, m[0], m[1], now, 0)
                for i, m in enumerate(messages[:count] if count < len(messages) else messages)
            ]
            self._next_message_id = mid + count
            if self.persist:
                stored = self.changes.messages
                for row in rows:
                    stored[row[ROW_ID]] = row
            self.pending.append((queue_name, far.group_id, False, rows))
            far.recv_seq = seq + count
            self._touch(far)
        src.send_seq = seq + len(messages)
        if reason is not None:
            self._fail(src, BrokerErrorCode.VALIDATION_FAILED, f"message {seq + count} was not delivered: {reason}", now)

    def _emit(self, ep: Endpoint, message_type: str, body: bytes, now: float) -> None:
        """Send one message the broker makes (EndDialog, Error) after what this side has sent already."""
        target = self.route(ep, now)
        if isinstance(target, Endpoint):
            seq = ep.send_seq
            ep.send_seq = seq + 1
            self._deliver(ep, target, seq, message_type, body, now)
        elif target is not None or ep.delayed is not None:
            self.queue_outgoing(ep, [[message_type, body]], now)
        else:
            ep.send_seq += 1  # no reader: the conversation failed, or the far side is gone; both were told

    def _new_far_endpoint(self, ep: Endpoint, now: float) -> Endpoint | None:
        """Routing says the far side is on this node: make its endpoint, or fail the conversation (None) if its
        service does not accept the contract."""
        service = self.catalog.services[ep.far_service]
        if ep.contract not in service.contracts:
            self._fail(
                ep,
                BrokerErrorCode.CONTRACT_NOT_ACCEPTED,
                f"service {service.name!r} does not accept contract {ep.contract!r}",
                now,
            )
            return None
        far = Endpoint(
            handle=self.new_id(),
            conversation_id=ep.conversation_id,
            is_initiator=not ep.is_initiator,
            service=service.name,
            far_service=ep.service,
            contract=ep.contract,
            group_id=self.new_id(),
            expires_at=ep.expires_at,
            far_handle=ep.handle,
            far_broker_instance=self.broker_instance,
            state=STARTS[Event.RECEIVE_FIRST],
            encryption=ep.encryption,
        )
        ep.far_handle = far.handle
        ep.far_broker_instance = self.broker_instance
        self.endpoints[far.handle] = far
        self.by_conversation[(far.conversation_id, far.is_initiator)] = far.handle
        self._touch(far)
        self._watch(far)
        return far

    def _deliver(self, src: Endpoint, far: Endpoint, seq: int, message_type: str, body: bytes, now: float) -> None:
        """The receiving side's checks, then the message into the far endpoint's queue."""
        if far.state is State.CLOSED:
            return  # its side ended; it has been told, and nothing will read this
        if message_type not in (END_DIALOG, ERROR):
            mt = self.catalog.message_types.get(message_type)
            reason: str | None
            if mt is None:
                reason = f"message type {message_type!r} does not exist at the receiving service {far.service!r}"
            else:
                reason = VALIDATORS[mt.validation](body)
            if reason is not None:
                self._fail(src, BrokerErrorCode.VALIDATION_FAILED, f"message {seq} was not delivered: {reason}", now)
                return
        elif message_type == END_DIALOG:
            self._transition(far, Event.END_REMOTE)
        else:
            self._transition(far, Event.ERROR_REMOTE)
        far.recv_seq = seq + 1
        self._touch(far)
        self._enqueue(far, seq, message_type, body, now)

    def _enqueue(self, ep: Endpoint, seq: int, message_type: str, body: bytes, now: float) -> None:
        if ep.service == DISPATCHER_SERVICE:
            self.bcn_reply(ep, message_type, body, now)  # the node's own requests: consumed, never queued
            return
        queue_name = self.catalog.services[ep.service].queue
        mid = self._next_message_id
        self._next_message_id = mid + 1
        row: MessageRow = (mid, "q:" + queue_name, ep.handle, seq, message_type, body, now, 0)
        self._save_row(row)
        self.pending.append((queue_name, ep.group_id, message_type in URGENT_TYPES, [row]))

    def _fail(self, ep: Endpoint, code: int, description: str, now: float) -> None:
        """The broker ends a conversation in error: an Error to this side's own queue, and to the far side's
        if it is on this node and still open. Nothing further is sent."""
        self.drop_outgoing(ep)
        far = self.endpoints.get(ep.far_handle) if ep.far_handle else None
        if far is not None and far.recv_seq == 0 and far.send_seq == 0:
            # made by the very message that failed: its application never saw this conversation
            self._remove(far)
            far = None
        for side in (ep, far):
            if side is None or side.state in (State.CLOSED, State.ERROR):
                continue
            self._transition(side, Event.FAIL)
            side.error = (int(code), description)
            self._touch(side)
            self._enqueue(side, -1, ERROR, error_body(code, description), now)

    def _deliver_remote(self, ep: Endpoint, env: Envelope, now: float) -> None:
        """The next message in order from a remote sender: the receiving side's checks, then into the queue."""
        seq, message_type, body = env[3], env[9], env[10]
        ep.recv_seq = seq + 1
        self._touch(ep)
        if message_type == END_DIALOG:
            self._transition(ep, Event.END_REMOTE)
        elif message_type == ERROR:
            self._transition(ep, Event.ERROR_REMOTE)
            ep.error = parse_error_body(body)
        else:
            # the target's service must accept the contract; checked on the message that makes its endpoint
            reason = self._check_incoming(ep, message_type, body, first=seq == 0 and not ep.is_initiator)
            if reason is not None:
                self._refuse_remote(ep, *reason, now)
                return
        self._enqueue(ep, seq, message_type, body, now)

    def _check_incoming(self, ep: Endpoint, message_type: str, body: bytes, *, first: bool) -> tuple[int, str] | None:
        """What the receiving side checks of a message from another node (the sender checked its own side)."""
        contract = self.catalog.contracts.get(ep.contract)
        if contract is None:
            return BrokerErrorCode.CONTRACT_NOT_ACCEPTED, f"contract {ep.contract!r} does not exist at {ep.service!r}"
        if first and ep.contract not in self.catalog.services[ep.service].contracts:
            return BrokerErrorCode.CONTRACT_NOT_ACCEPTED, f"service {ep.service!r} does not accept contract {ep.contract!r}"
        if message_type not in contract.may_send(not ep.is_initiator):
            return (
                BrokerErrorCode.CONTRACT_VIOLATION,
                f"contract {ep.contract!r} does not let the {'target' if ep.is_initiator else 'initiator'}"
                f" send message type {message_type!r}",
            )
        mt = self.catalog.message_types.get(message_type)
        if mt is None:
            return BrokerErrorCode.VALIDATION_FAILED, f"message type {message_type!r} does not exist at {ep.service!r}"
        why = VALIDATORS[mt.validation](body)
        return (BrokerErrorCode.VALIDATION_FAILED, why) if why is not None else None

    def _refuse_remote(self, ep: Endpoint, code: int, description: str, now: float) -> None:
        """A message from another node failed this side's checks: the sender gets an Error; this side gets one
        too if its application knows the conversation, else it is closed quietly."""
        description = f"message {ep.recv_seq - 1} was not delivered: {description}"
        self._emit(ep, ERROR, error_body(code, description), now)
        if ep.recv_seq == 1 and ep.send_seq == 1:
            self._transition(ep, Event.REFUSE_FIRST)  # made by the message that failed: nobody here ever saw it
            if ep.handle not in self.tx:
                self._retire(ep, now)
        else:
            self._transition(ep, Event.REFUSE)
            ep.error = (int(code), description)
            self._enqueue(ep, -1, ERROR, error_body(code, description), now)
        self._touch(ep)

    def end(self, handle: str, now: float, *, error: tuple[int, str] | None = None, cleanup: bool = False) -> int:
        """End this side. Returns how many DELAYED messages were dropped (they had not left: nothing to deliver
        them to yet)."""
        ep = self.endpoint(handle)
        if ep.state is State.CLOSED:
            raise ConversationError(f"conversation {handle} has already ended on this side")
        if error is not None:
            code, description = error
            if not isinstance(code, int) or isinstance(code, bool) or code <= 0 or not isinstance(description, str):
                raise InvalidArgument("end(error=(code, description)) takes a code > 0 and a description string")
        dropped = 0
        if ep.delayed is not None:
            # what waits for a route is dropped (the caller is told how many); if nothing ever reached the far
            # side, it has nothing to be told either
            dropped = self.drop_outgoing(ep)
            self._touch(ep)
        heard_of = ep.recv_seq > 0 or ep.far_handle is not None or ep.far_broker_instance is not None or (
            ep.send_seq > dropped and ep.handle in self.tx.route_of
        )
        # the far side knows of the conversation once a message went either way: then it is told
        if not cleanup and ep.state.can_send and heard_of:
            if error is not None:
                self.drop_outgoing(ep)
                self._emit(ep, ERROR, error_body(error[0], error[1]), now)
            elif dropped:
                # Messages were dropped on the way: the far side is told so with the broker's Error, not an
                # EndDialog that would say everything sent had arrived. (An Error is also delivered past the gap
                # the dropped ones leave, should any of them have left before the route went away.)
                description = (
                    f"the far side ended the conversation while {dropped} of its message(s) waited for a route to"
                    f" {ep.far_service!r}; they were dropped"
                )
                self._emit(ep, ERROR, error_body(BrokerErrorCode.DELAYED_MESSAGES_DROPPED, description), now)
            else:
                self._emit(ep, END_DIALOG, b"", now)
        if cleanup:
            self.drop_outgoing(ep)
            if ep.far_handle is not None:
                # the far side is on this node and will never hear: a request of dynamic routing ends here
                self.request_side_removed(ep.far_handle, now)
        self._transition(ep, Event.CLEANUP if cleanup else Event.END_LOCAL)
        ep.timer_at = None
        queue = self.queues.get(self.catalog.services[ep.service].queue) if ep.service in self.catalog.services else None
        if queue is not None:
            for row in queue.remove_handle(handle):
                self._forget_row(row[ROW_ID])
        self._touch(ep)
        if handle not in self.tx:
            self._retire(ep, now)
        # else: it stays CLOSED until its last messages (ending with EndDialog) are acknowledged
        return dropped

    def _retire(self, ep: Endpoint, now: float) -> None:
        """A closed endpoint with nothing left to send: gone now if its far side is on this node (or never heard
        of it); kept ``closed_retention`` seconds if remote, to recognise late retransmissions."""
        remote = ep.far_handle is None and (ep.send_seq > 0 or ep.recv_seq > 0)
        if not remote or self.closed_retention <= 0:
            self._remove(ep)
            return
        retire_at = now + self.closed_retention
        ep.timer_at = retire_at  # a closed endpoint has no timer: the field holds its retirement time
        self._touch(ep)
        self._deadlines.push(retire_at, DeadlineKind.RETIRE, ep.handle)

    def _remove(self, ep: Endpoint) -> None:
        """The only way an endpoint leaves ``endpoints``."""
        gone = self.endpoints.pop(ep.handle, None)
        if gone is not None:
            self._count_left(gone)
        self._ciphers.pop(ep.handle, None)
        self.by_conversation.pop((ep.conversation_id, ep.is_initiator), None)
        self.tx.detach(ep.handle)
        if self.persist:
            self.dirty[ep.handle] = None
        self.recently_closed[ep.handle] = None
        if len(self.recently_closed) > 10_000:
            del self.recently_closed[next(iter(self.recently_closed))]

    # ---------------------------------------------------------------------------------------------- timers

    def begin_timer(self, handle: str, seconds: float, now: float) -> None:
        ep = self.endpoint(handle)
        if ep.state is State.CLOSED:
            raise ConversationError(f"conversation {handle} has ended on this side; it takes no timer")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_LIFETIME:
            raise InvalidArgument(f"timer seconds must be a number from 0 to {MAX_LIFETIME:.0f}, got {seconds!r}")
        ep.timer_at = now + seconds
        self._touch(ep)
        self._deadlines.push(ep.timer_at, DeadlineKind.TIMER, ep.handle)

    def _watch(self, ep: Endpoint) -> None:
        """An endpoint has just joined ``endpoints`` (begun, made for a far side here, arrived from a peer, or
        loaded): schedule its deadlines, and count it for ``status``. Every place that adds an endpoint calls
        this, once; that is what keeps the per-state counts exact."""
        self._count_joined(ep)
        if ep.state is State.CLOSED:
            if ep.timer_at is not None:  # a retired endpoint: the field holds when it goes for good
                self._deadlines.push(ep.timer_at, DeadlineKind.RETIRE, ep.handle)
            return
        self._deadlines.push(ep.expires_at, DeadlineKind.LIFETIME, ep.handle)
        if ep.timer_at is not None:
            self._deadlines.push(ep.timer_at, DeadlineKind.TIMER, ep.handle)

    def next_deadline(self) -> float | None:
        """When :meth:`advance` has something to do next (it may find it stale); None if nothing is scheduled."""
        deadlines = self._deadlines
        # a lease committed or rolled back leaves its expiry behind (the heap is cleaned lazily): drop those from
        # the front, or the ticker wakes for each of them receive_lease seconds after every receive
        # (called after every request batch: one look at the front unless there are stale leases to drop)
        while (first := deadlines.first()) is not None:
            when, kind, key = first
            if kind is not LEASE:
                return when
            lease = self.leases.get(int(key))
            if lease is not None and lease.expires_at == when:
                return when
            deadlines.drop_first()
        return None

    def next_effect(self) -> Effect | None:
        """The oldest thing the core asks the shell to do, taken off the outbox; None when it is empty."""
        return self.outbox.popleft() if self.outbox else None

    def drain_effects(self) -> list[Effect]:
        """Everything the core asks the shell to do, oldest first, taken off the outbox (see ``effects.py``)."""
        effects = list(self.outbox)
        self.outbox.clear()
        return effects

    def advance(self, now: float) -> None:
        """Fire everything due by ``now``, each deadline by its kind (see ``deadlines.py``); a stale one is skipped
        here, by the check beside its kind. A lease that ran out is rolled back and put in the outbox
        (:class:`LeaseExpired`), so the shell can tell its owner."""
        for when, kind, key in self._deadlines.pop_due(now):
            if kind is DeadlineKind.LEASE:
                lease = self.leases.get(int(key))
                if lease is not None and lease.expires_at == when:
                    self._rollback(lease)
                    self.outbox.append(LeaseExpired(lease))
                continue
            if kind is DeadlineKind.DISPATCH or kind is DeadlineKind.REFRESH:
                self.dispatch_due(kind, key, now)
                continue
            ep = self.endpoints.get(key)
            if ep is None:
                continue
            if ep.state is State.CLOSED:
                if kind is DeadlineKind.RETIRE and ep.timer_at == when:
                    self._remove(ep)
                continue
            if kind is DeadlineKind.TIMER and ep.timer_at == when:
                ep.timer_at = None
                self._touch(ep)
                self._enqueue(ep, -1, DIALOG_TIMER, b"", now)
            elif kind is DeadlineKind.LIFETIME and ep.expires_at == when and ep.state is not State.ERROR:
                why_waiting = self.link_status(ep.handle, now)
                last_error = None
                if ep.delayed:
                    d, svc = self.dispatcher, ep.far_service
                    last_error = d.last_error(BINDING, svc) if ep.secured is None and (BINDING, svc) in d.last else None
                    last_error = last_error or d.last_error(ROUTE, svc)
                dropped = self.drop_outgoing(ep)
                description = "the conversation's lifetime ran out"
                if dropped:
                    description += f"; {dropped} message(s) to {ep.far_service!r} still waiting ({why_waiting}) were dropped"
                if last_error:
                    description += f"; the last dynamic-routing error: {last_error}"
                self._transition(ep, Event.LIFETIME_EXPIRED)
                ep.error = (int(BrokerErrorCode.LIFETIME_EXPIRED), description)
                self._touch(ep)
                self._enqueue(ep, -1, ERROR, error_body(BrokerErrorCode.LIFETIME_EXPIRED, description), now)

    def __repr__(self) -> str:
        return (
            f"<BrokerCore {self.broker_instance[:8]} conversations={len(self.endpoints)}"
            f" queues={len(self.queues)} leases={len(self.leases)} {self.tx!r}>"
        )
