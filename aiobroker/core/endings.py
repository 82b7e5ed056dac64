"""Endings: how a conversation ends on this side, by the application, by the broker, or by time.

Theory of operation
-------------------
- :meth:`Endings.end`: the application ends its side (``end``, with an error, or ``--cleanup`` without telling the
  far side). The far side is told (EndDialog, or an Error) if it ever heard of the conversation; what waited for a
  route is dropped and counted, and the far side is told it was dropped.
- :meth:`Endings.fail`: the broker ends a conversation in error (a message failed the receiving side's checks,
  dialog security failed): an Error to this side's own queue, and to the far side's if it is on this node.
- :meth:`Endings.refuse_remote`: a message from another node failed this side's checks: the sender gets an Error.
- :meth:`Endings.timer_fired` and :meth:`Endings.lifetime_expired`: the core's timer came for an endpoint.

A closed endpoint stays until its last messages are acknowledged, then retires (``Conversations.retire``).
"""

from __future__ import annotations

from ..errors import ConversationError, InvalidArgument
from .catalog import DIALOG_TIMER, END_DIALOG, ERROR
from .conversation import Endpoint, State
from .conversation_states import Event
from .conversations import Conversations
from .dialog_errors import BrokerErrorCode, error_body
from .dispatcher import BINDING, ROUTE
from .ledger import Ledger
from .paging import want_page
from .parts import DeliveryPart, DynamicPart, OutboundPart


class Endings:
    """Ending conversations (see the module's header)."""

    delivery: DeliveryPart
    outbound: OutboundPart
    dynamic: DynamicPart

    def __init__(self, ledger: Ledger, conversations: Conversations) -> None:
        self.ledger = ledger
        self.conversations = conversations

    def end(self, handle: str, now: float, *, error: tuple[int, str] | None = None, cleanup: bool = False) -> int:
        """End this side. Returns how many DELAYED messages were dropped (they had not left: nothing to deliver
        them to yet)."""
        ledger = self.ledger
        ep = self.conversations.endpoint(handle)
        if ep.state is State.CLOSED:
            raise ConversationError(f"conversation {handle} has already ended on this side")
        if error is not None:
            code, description = error
            if not isinstance(code, int) or isinstance(code, bool) or code <= 0 or not isinstance(description, str):
                raise InvalidArgument("end(error=(code, description)) takes a code > 0 and a description string")
        outbound = self.outbound
        dropped = 0
        if ep.delayed is not None:
            # what waits for a route is dropped (the caller is told how many); if nothing ever reached the far
            # side, it has nothing to be told either
            dropped = outbound.drop_outgoing(ep)
            ledger.touch(ep)
        heard_of = ep.recv_seq > 0 or ep.far_handle is not None or ep.far_broker_instance is not None or (
            ep.send_seq > dropped and ep.handle in ledger.tx.route_of
        )
        # the far side knows of the conversation once a message went either way: then it is told
        if not cleanup and ep.state.can_send and heard_of:
            if error is not None:
                outbound.drop_outgoing(ep)
                self.delivery.emit(ep, ERROR, error_body(error[0], error[1]), now)
            elif dropped:
                # Messages were dropped on the way: the far side is told so with the broker's Error, not an
                # EndDialog that would say everything sent had arrived. (An Error is also delivered past the gap
                # the dropped ones leave, should any of them have left before the route went away.)
                description = (
                    f"the far side ended the conversation while {dropped} of its message(s) waited for a route to"
                    f" {ep.far_service!r}; they were dropped"
                )
                self.delivery.emit(ep, ERROR, error_body(BrokerErrorCode.DELAYED_MESSAGES_DROPPED, description), now)
            else:
                self.delivery.emit(ep, END_DIALOG, b"", now)
        if cleanup:
            outbound.drop_outgoing(ep)
            if ep.far_handle is not None:
                # the far side is on this node and will never hear: a request of dynamic routing ends here
                self.dynamic.request_side_removed(ep.far_handle, now)
        self.conversations.transition(ep, Event.CLEANUP if cleanup else Event.END_LOCAL)
        ep.timer_at = None
        services = ledger.catalog.services
        queue = ledger.queues.get(services[ep.service].queue) if ep.service in services else None
        if queue is not None:
            ledger.forget_rows(queue.remove_handle(handle, ep.group_id))
            if queue.in_store:  # those of its messages in the store only go as the queue reads them back
                want_page(ledger, queue)
        ledger.touch(ep)
        if handle not in ledger.tx:
            self.conversations.retire(ep, now)
        # else: it stays CLOSED until its last messages (ending with EndDialog) are acknowledged
        return dropped

    def fail(self, ep: Endpoint, code: int, description: str, now: float) -> None:
        """The broker ends a conversation in error: an Error to this side's own queue, and to the far side's
        if it is on this node and still open. Nothing further is sent."""
        self.outbound.drop_outgoing(ep)
        far = self.ledger.endpoints.get(ep.far_handle) if ep.far_handle else None
        if far is not None and far.recv_seq == 0 and far.send_seq == 0:
            # made by the very message that failed: its application never saw this conversation
            self.conversations.remove(far)
            far = None
        for side in (ep, far):
            if side is None or side.state in (State.CLOSED, State.ERROR):
                continue
            self.conversations.transition(side, Event.FAIL)
            side.error = (int(code), description)
            self.ledger.touch(side)
            self.delivery.enqueue(side, -1, ERROR, error_body(code, description), now)

    def refuse_remote(self, ep: Endpoint, code: int, description: str, now: float) -> None:
        """A message from another node failed this side's checks: the sender gets an Error; this side gets one
        too if its application knows the conversation, else it is closed quietly."""
        description = f"message {ep.recv_seq - 1} was not delivered: {description}"
        self.delivery.emit(ep, ERROR, error_body(code, description), now)
        if ep.recv_seq == 1 and ep.send_seq == 1:
            self.conversations.transition(ep, Event.REFUSE_FIRST)  # made by the message that failed: nobody here saw it
            if ep.handle not in self.ledger.tx:
                self.conversations.retire(ep, now)
        else:
            self.conversations.transition(ep, Event.REFUSE)
            ep.error = (int(code), description)
            self.delivery.enqueue(ep, -1, ERROR, error_body(code, description), now)
        self.ledger.touch(ep)

    # ------------------------------------------------------------------------------------------------- time

    def timer_fired(self, ep: Endpoint, now: float) -> None:
        """A dialog timer came: a DialogTimer message to this side's queue."""
        ep.timer_at = None
        self.ledger.touch(ep)
        self.delivery.enqueue(ep, -1, DIALOG_TIMER, b"", now)

    def lifetime_expired(self, ep: Endpoint, now: float) -> None:
        """The conversation's lifetime ran out: what still waits is dropped, and this side gets an Error that says
        what was dropped, why it waited, and dynamic routing's last error."""
        why_waiting = self.outbound.link_status(ep.handle, now)
        last_error = None
        if ep.delayed:
            d, svc = self.dynamic.dispatcher, ep.far_service
            last_error = d.last_error(BINDING, svc) if ep.secured is None and (BINDING, svc) in d.last else None
            last_error = last_error or d.last_error(ROUTE, svc)
        dropped = self.outbound.drop_outgoing(ep)
        description = "the conversation's lifetime ran out"
        if dropped:
            description += f"; {dropped} message(s) to {ep.far_service!r} still waiting ({why_waiting}) were dropped"
        if last_error:
            description += f"; the last dynamic-routing error: {last_error}"
        self.conversations.transition(ep, Event.LIFETIME_EXPIRED)
        ep.error = (int(BrokerErrorCode.LIFETIME_EXPIRED), description)
        self.ledger.touch(ep)
        self.delivery.enqueue(ep, -1, ERROR, error_body(BrokerErrorCode.LIFETIME_EXPIRED, description), now)
