"""Delivery: a send's checks and numbering, messages into queues on this node, and publishing what is stored.

Theory of operation
-------------------
:meth:`Delivery.send` is the hot path. It checks the whole batch before sending any of it, asks the outbound part
where the far side is, and then either delivers the batch straight into the far endpoint's queue as one run of rows
(the far side is on this node), or hands it to the transmission queue (remote, or DELAYED while nobody knows where
the service is).

Delivery here does not make messages visible at once. Each message becomes a row in the ledger's ``changes`` (for
the store) and in ``pending`` (for its queue); the shell seals both, writes the batch, and only then calls
:meth:`Delivery.publish`, which puts the rows in their queues. So a receiver sees only stored messages, a sender's
acknowledgement follows the write, and batches are published in the order they were sealed, which keeps every
conversation in order. With a store that is not durable the same path runs without building store rows.

The receiving side's checks (the message type exists, the body passes its validation, the contract lets this side
send it) run here for local far sides (:meth:`deliver`) and for messages from other nodes
(:meth:`deliver_remote`); a failure ends the conversation in error through the endings part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import (
    ConversationError,
    InvalidArgument,
    Overloaded,
    SecurityError,
)
from .catalog import DISPATCHER_SERVICE, END_DIALOG, ERROR, URGENT_TYPES
from .conversation import Endpoint, State
from .conversation_states import STARTS, Event
from .conversations import Conversations
from .dialog_errors import BrokerErrorCode, parse_error_body
from .envelopes import Envelope
from .ledger import Ledger, Pending
from .parts import DynamicPart, EndingsPart, OutboundPart
from .queues import MessageQueue
from .records import ROW_BODY, ROW_HANDLE, MessageRow
from .send_checks import check_queue_bounds, check_sizes, check_traced, refuse_overloaded, refuse_type
from .validation import VALIDATORS

class Delivery:
    """Sending, local delivery and publishing (see the module's header)."""

    outbound: OutboundPart
    dynamic: DynamicPart
    endings: EndingsPart

    def __init__(
        self,
        ledger: Ledger,
        conversations: Conversations,
        *,
        max_message_size: int,
        max_delayed_per_service: int,
        max_delayed_messages: int,
    ) -> None:
        self.ledger = ledger
        self.conversations = conversations
        self.max_message_size = max_message_size
        #: the bounds on what may wait for dynamic routing: a send past them fails at once, nothing is dropped
        self.max_delayed_per_service = max_delayed_per_service
        self.max_delayed_messages = max_delayed_messages

    # --------------------------------------------------------------------------------------------------- send

    def send(self, handle: str, messages: list[Any], now: float) -> int:
        """Send messages on one conversation, in order. Checks all of them before sending any.

        The hot path: everything that is the same for the whole batch (the far endpoint, its queue, the contract,
        the validators) is decided once, and the rows are built in one loop.
        """
        ep = self.conversations.endpoint(handle)
        why = ep.why_not_send()
        if why:
            raise ConversationError(f"cannot send on conversation {handle}: {why}")
        if self.ledger.budget.over:
            refuse_overloaded(self.ledger.budget)
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("send needs a non-empty list of [message_type, body] pairs")
        allowed = self.ledger.catalog.contracts[ep.contract].may_send(ep.is_initiator)
        types: set[str] = set()
        size = 0  # the bodies' bytes, for the memory budget: summed in the loop that checks each message anyway
        try:
            for message_type, body in messages:
                if type(body) is not bytes:
                    raise InvalidArgument("each message is a [message_type, body] pair with a bytes body")
                size += len(body)
                types.add(message_type)
        except (TypeError, ValueError):
            types, size = check_traced(messages, self.max_message_size)  # [message_type, body, trace]: off the hot path
        if size > self.max_message_size:  # only then can one body be over it: look for it
            check_sizes(messages, self.max_message_size)
        for message_type in types - allowed:
            refuse_type(self.ledger.catalog, ep, message_type)
        if ep.state is State.STARTED_OUTBOUND:
            self.conversations.transition(ep, Event.SEND_FIRST)
        self._dispatch(ep, self.outbound.route(ep, now), messages, types, size, now)
        return len(messages)

    def _dispatch(
        self, ep: Endpoint, target: Any, messages: list[Any], types: set[str], size: int, now: float
    ) -> None:
        """Where a checked batch (``size``: its bodies' bytes) goes once routed: this node's queue, a link,
        DELAYED, or nowhere."""
        outbound = self.outbound
        if isinstance(target, Endpoint):
            if target.state is State.CLOSED:
                ep.send_seq += len(messages)  # its side ended; it said so with EndDialog or Error
            else:
                self._deliver_user_messages(ep, target, messages, types, size, now)
        elif target is not None:
            outbound.queue_outgoing(ep, messages, now, size)  # remote: stored until acknowledged
            self.dynamic.route_traffic.add(ep.far_service)  # a live service: a resolver's routes are refreshed in time
        elif ep.delayed is not None:
            self._check_delay_bounds(ep, len(messages), now)
            # DELAYED rows may wait long, by the hundred thousand: their type is the catalog's one string, not the
            # copy each request decoded
            kinds = self.ledger.catalog.message_types
            messages = [[kinds[m[0]].name, *m[1:]] for m in messages]
            outbound.queue_outgoing(ep, messages, now, size)  # DELAYED: stored until a route appears
        elif ep.state is State.ERROR and ep.error is not None and ep.error[0] == BrokerErrorCode.SECURITY:
            # the choice table: encryption required, no binding, nobody to ask: the dialog failed at once
            raise SecurityError(f"nothing was sent; conversation {ep.handle} failed: {ep.error[1]}")
        else:
            ep.send_seq += len(messages)  # no reader: the conversation failed or the far side is gone
        self.ledger.touch(ep)

    def send_bodies(self, handle: str, message_type: str, bodies: list[Any], now: float) -> int:
        """Send ``bodies``, all of ``message_type``, on one conversation, in order: :meth:`send` for the batch
        most producers send (one type, no trace context), which the wire carries as one type and a list of bodies
        (docs/protocol.md) so that no message costs a list of its own, to decode or to read. A batch for this
        node's own queue is delivered from the bodies as they are; any other way it goes as [type, body] pairs."""
        ep = self.conversations.endpoint(handle)
        why = ep.why_not_send()
        if why:
            raise ConversationError(f"cannot send on conversation {handle}: {why}")
        if self.ledger.budget.over:
            refuse_overloaded(self.ledger.budget)
        if not isinstance(bodies, list) or not bodies:
            raise InvalidArgument("send needs a non-empty list of bodies")
        size = 0  # the bodies' bytes, for the memory budget
        for body in bodies:
            if type(body) is not bytes:
                raise InvalidArgument("each body is bytes")
            size += len(body)
        if size > self.max_message_size:  # only then can one body be over it: look for it
            check_sizes([(message_type, body) for body in bodies], self.max_message_size)
        if message_type not in self.ledger.catalog.contracts[ep.contract].may_send(ep.is_initiator):
            refuse_type(self.ledger.catalog, ep, message_type)
        if ep.state is State.STARTED_OUTBOUND:
            self.conversations.transition(ep, Event.SEND_FIRST)
        target = self.outbound.route(ep, now)
        if isinstance(target, Endpoint) and target.state is not State.CLOSED:
            self._deliver_bodies(ep, target, message_type, bodies, size, now)
            self.ledger.touch(ep)
        else:
            self._dispatch(ep, target, [[message_type, body] for body in bodies], {message_type}, size, now)
        return len(bodies)

    def _check_delay_bounds(self, ep: Endpoint, n: int, now: float) -> None:
        tx = self.ledger.tx
        waiting = tx.delayed_count.get(ep.far_service, 0)
        if waiting + n > self.max_delayed_per_service:
            raise Overloaded(
                f"{waiting} message(s) already wait for a route to service {ep.far_service!r}"
                f" (max_delayed_per_service is {self.max_delayed_per_service}); nothing was sent:"
                f" {self.dynamic.delayed_words(ep, now)}"
            )
        if tx.delayed_total + n > self.max_delayed_messages:
            raise Overloaded(
                f"{tx.delayed_total} message(s) already wait for routes on this node (max_delayed_messages is"
                f" {self.max_delayed_messages}); nothing was sent"
            )

    def _deliver_user_messages(
        self, src: Endpoint, far: Endpoint, messages: list[Any], types: set[str], size: int, now: float
    ) -> None:
        """The receiving side's checks for a batch, then the batch into the far endpoint's queue as one run."""
        ledger = self.ledger
        count = len(messages)
        reason: str | None = None
        for message_type in types:  # count only shrinks, so the earliest failure of all types wins
            at = (
                (i, messages[i][1]) for i in range(count) if messages[i][0] == message_type
            )  # lazy: a type without validation never walks the batch
            failed, why = self._first_invalid(far, message_type, at)
            if why is not None:
                count, reason = failed, why
        seq = src.send_seq
        if count:
            queue_name, location, mid, fh = self._run_start(far, len(messages), size)
            batch = messages[:count] if count < len(messages) else messages
            rows: list[MessageRow] = (
                [(mid + i, location, fh, seq + i, m[0], m[1], now, 0) for i, m in enumerate(batch)]
                if len(batch[0]) == 2  # no trace context (a traced batch is all triples: check_traced)
                else [
                    (mid + i, location, fh, seq + i, m[0], m[1], now, 0, m[2])
                    if m[2] is not None
                    else (mid + i, location, fh, seq + i, m[0], m[1], now, 0)
                    for i, m in enumerate(batch)
                ]
            )
            if len(batch[0]) > 2:
                ledger.traced_queues.add(queue_name)
            self._run_end(far, queue_name, rows, seq, size if count == len(messages) else None)
        self._sent(src, len(messages), count, reason, now)

    def _deliver_bodies(
        self, src: Endpoint, far: Endpoint, message_type: str, bodies: list[bytes], size: int, now: float
    ) -> None:
        """:meth:`_deliver_user_messages` for a batch of one message type given as its bodies."""
        count = len(bodies)
        failed, reason = self._first_invalid(far, message_type, enumerate(bodies))
        if reason is not None:
            count = failed
        seq = src.send_seq
        if count:
            queue_name, location, mid, fh = self._run_start(far, len(bodies), size)
            batch = bodies[:count] if count < len(bodies) else bodies
            rows: list[MessageRow] = [
                (mid + i, location, fh, seq + i, message_type, body, now, 0) for i, body in enumerate(batch)
            ]
            self._run_end(far, queue_name, rows, seq, size if count == len(bodies) else None)
        self._sent(src, len(bodies), count, reason, now)

    def _first_invalid(
        self, far: Endpoint, message_type: str, bodies: Iterable[tuple[int, bytes]]
    ) -> tuple[int, str | None]:
        """The receiving side's check of ``message_type``'s ``bodies`` (``(index, body)``): the index of the first
        that fails and why, or ``(0, None)``. A type without validation is not walked at all."""
        mt = self.ledger.catalog.message_types.get(message_type)
        if mt is not None and mt.validation == "none":
            return 0, None
        validate = VALIDATORS[mt.validation] if mt is not None else None
        for i, body in bodies:
            why = validate(body) if validate is not None else (
                f"message type {message_type!r} does not exist at the receiving service {far.service!r}"
            )
            if why is not None:
                return i, why
        return 0, None

    def _run_start(self, far: Endpoint, count: int, size: int) -> tuple[str, str, int, str]:
        """What every row of a run into ``far``'s queue shares: (queue name, location, first id, far handle); a
        queue with bounds refuses the whole batch (``count`` messages, ``size`` bytes) first."""
        catalog = self.ledger.catalog
        queue_name = catalog.services[far.service].queue
        qdef = catalog.queues[queue_name]
        if qdef.bounded:
            check_queue_bounds(self.ledger.budget, qdef, count, size)
        return queue_name, "q:" + queue_name, self.ledger.next_message_id, far.handle

    def _run_end(self, far: Endpoint, queue_name: str, rows: list[MessageRow], seq: int, size: int | None) -> None:
        """The run (sequence numbers from ``seq``; ``size``: its bodies' bytes, None if not known) into ``far``'s
        queue, its ids taken, ``far``'s receive sequence past it."""
        ledger = self.ledger
        ledger.next_message_id += len(rows)
        ledger.enqueue_run(queue_name, far.group_id, rows, size)
        far.recv_seq = seq + len(rows)
        ledger.touch(far)

    def _sent(self, src: Endpoint, sent: int, delivered: int, reason: str | None, now: float) -> None:
        """``src``'s send sequence past the ``sent`` messages; the conversation failed if the ``delivered`` first
        were all that passed validation (``reason`` says why the next did not)."""
        seq = src.send_seq
        src.send_seq = seq + sent
        if reason is not None:
            message = f"message {seq + delivered} was not delivered: {reason}"
            self.endings.fail(src, BrokerErrorCode.VALIDATION_FAILED, message, now)

    def emit(self, ep: Endpoint, message_type: str, body: bytes, now: float) -> None:
        """Send one message the broker makes (EndDialog, Error) after what this side has sent already."""
        target = self.outbound.route(ep, now)
        if isinstance(target, Endpoint):
            seq = ep.send_seq
            ep.send_seq = seq + 1
            self.deliver(ep, target, seq, message_type, body, now)
        elif target is not None or ep.delayed is not None:
            self.outbound.queue_outgoing(ep, [[message_type, body]], now)
        else:
            ep.send_seq += 1  # no reader: the conversation failed, or the far side is gone; both were told

    # ------------------------------------------------------------------------------------- delivery, local

    def new_far_endpoint(self, ep: Endpoint, now: float) -> Endpoint | None:
        """Routing says the far side is on this node: make its endpoint, or fail the conversation (None) if its
        service does not accept the contract."""
        ledger = self.ledger
        service = ledger.catalog.services[ep.far_service]
        if ep.contract not in service.contracts:
            self.endings.fail(
                ep,
                BrokerErrorCode.CONTRACT_NOT_ACCEPTED,
                f"service {service.name!r} does not accept contract {ep.contract!r}",
                now,
            )
            return None
        handle = ledger.new_id()
        far = Endpoint.new(  # in a group of its own, named by its handle; not secured, far identity unknown
            handle, ep.conversation_id, not ep.is_initiator, service.name, ep.service, ep.contract, handle,
            ep.expires_at, ep.handle, ledger.broker_instance, STARTS[Event.RECEIVE_FIRST], ep.encryption, None, None,
        )
        ep.far_handle = far.handle
        ep.far_broker_instance = ledger.broker_instance
        self.conversations.join(far, now)
        return far

    def deliver(
        self, src: Endpoint, far: Endpoint, seq: int, message_type: str, body: bytes, now: float, trace: str | None = None
    ) -> None:
        """The receiving side's checks, then the message into the far endpoint's queue."""
        if far.state is State.CLOSED:
            return  # its side ended; it has been told, and nothing will read this
        if message_type not in (END_DIALOG, ERROR):
            mt = self.ledger.catalog.message_types.get(message_type)
            reason: str | None
            if mt is None:
                reason = f"message type {message_type!r} does not exist at the receiving service {far.service!r}"
            else:
                reason = VALIDATORS[mt.validation](body)
            if reason is not None:
                self.endings.fail(src, BrokerErrorCode.VALIDATION_FAILED, f"message {seq} was not delivered: {reason}", now)
                return
        elif message_type == END_DIALOG:
            self.conversations.transition(far, Event.END_REMOTE)
        else:
            self.conversations.transition(far, Event.ERROR_REMOTE)
        far.recv_seq = seq + 1
        self.ledger.touch(far)
        self.enqueue(far, seq, message_type, body, now, trace)

    def enqueue(
        self, ep: Endpoint, seq: int, message_type: str, body: bytes, now: float, trace: str | None = None
    ) -> None:
        """One message into ``ep``'s queue, visible once stored (``publish``)."""
        if ep.service == DISPATCHER_SERVICE:
            self.dynamic.bcn_reply(ep, message_type, body, now)  # the node's own requests: consumed, never queued
            return
        ledger = self.ledger
        queue_name = ledger.catalog.services[ep.service].queue
        mid = ledger.next_message_id
        ledger.next_message_id = mid + 1
        row: MessageRow
        if trace is None:
            row = (mid, "q:" + queue_name, ep.handle, seq, message_type, body, now, 0)
        else:
            row = (mid, "q:" + queue_name, ep.handle, seq, message_type, body, now, 0, trace)
            ledger.traced_queues.add(queue_name)
        ledger.save_row(row)
        ledger.pending.append((queue_name, ep.group_id, message_type in URGENT_TYPES, [row]))

    # ------------------------------------------------------------------------------------ delivery, remote

    def deliver_remote(self, ep: Endpoint, env: Envelope, now: float) -> None:
        """The next message in order from a remote sender: the receiving side's checks, then into the queue."""
        seq, message_type, body = env[3], env[9], env[10]
        ep.recv_seq = seq + 1
        self.ledger.touch(ep)
        if message_type == END_DIALOG:
            self.conversations.transition(ep, Event.END_REMOTE)
        elif message_type == ERROR:
            self.conversations.transition(ep, Event.ERROR_REMOTE)
            ep.error = parse_error_body(body)
        else:
            # the target's service must accept the contract; checked on the message that makes its endpoint
            reason = self._check_incoming(ep, message_type, body, first=seq == 0 and not ep.is_initiator)
            if reason is not None:
                self.endings.refuse_remote(ep, *reason, now)
                return
        self.enqueue(ep, seq, message_type, body, now, env[14] if len(env) > 14 else None)

    def _check_incoming(self, ep: Endpoint, message_type: str, body: bytes, *, first: bool) -> tuple[int, str] | None:
        """What the receiving side checks of a message from another node (the sender checked its own side)."""
        catalog = self.ledger.catalog
        contract = catalog.contracts.get(ep.contract)
        if contract is None:
            return BrokerErrorCode.CONTRACT_NOT_ACCEPTED, f"contract {ep.contract!r} does not exist at {ep.service!r}"
        if first and ep.contract not in catalog.services[ep.service].contracts:
            return BrokerErrorCode.CONTRACT_NOT_ACCEPTED, f"service {ep.service!r} does not accept contract {ep.contract!r}"
        if message_type not in contract.may_send(not ep.is_initiator):
            return (
                BrokerErrorCode.CONTRACT_VIOLATION,
                f"contract {ep.contract!r} does not let the {'target' if ep.is_initiator else 'initiator'}"
                f" send message type {message_type!r}",
            )
        mt = catalog.message_types.get(message_type)
        if mt is None:
            return BrokerErrorCode.VALIDATION_FAILED, f"message type {message_type!r} does not exist at {ep.service!r}"
        why = VALIDATORS[mt.validation](body)
        return (BrokerErrorCode.VALIDATION_FAILED, why) if why is not None else None

    # ------------------------------------------------------------------------------------------- publishing

    def publish(self, pending: list[Pending]) -> set[str]:
        """Put stored messages in their queues; returns the names of queues that received any."""
        touched: set[str] = set()
        ledger = self.ledger
        queues = ledger.queues
        endpoints = ledger.endpoints
        budget = ledger.budget
        closed = State.CLOSED
        for queue_name, group_id, urgent, rows in pending:
            ep = endpoints.get(rows[0][ROW_HANDLE])  # a run of rows always belongs to one endpoint
            queue = queues.get(queue_name)
            if ep is None or ep.state is closed or queue is None:
                ledger.forget_rows(rows)  # its conversation ended while the messages were being stored
                continue
            if queue.window is not None and not urgent and (
                not queue.keeps(len(rows)) or budget.held >= budget.page_above
            ):  # past the queue's window on a store that pages (paging.py); Error and DialogTimer always stay
                rows = self._page_out(queue, rows)
                if not rows:
                    continue
            queue.push_many(rows, group_id, urgent)
            touched.add(queue_name)
        return touched

    def _page_out(self, queue: MessageQueue, rows: list[MessageRow]) -> list[MessageRow]:
        """Leave in the store (counted, not held) the rows of a run that do not fit in ``queue``'s window (none do
        while the node holds half its memory budget); returns those that do, which go in memory first."""
        budget = self.ledger.budget
        room = queue.room() if budget.held < budget.page_above else 0
        fits, rest = rows[:room], rows[room:]
        if not rest:
            return fits
        size = sum(len(row[ROW_BODY]) for row in rest)
        queue.leave_in_store(rest, size)
        self.ledger.budget.page_out(len(rest), size)
        return fits
