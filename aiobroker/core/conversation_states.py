"""The states of a conversation endpoint, and the one table of how they change.

Theory of operation
-------------------
Each side of a conversation has a state (the seeds' two-letter codes, as ``sys.conversation_endpoints`` shows
them, and as ``aiobroker list conversations`` does). A state changes only on an *event* (something that happened
to this side: it sent its first messages, an ``EndDialog`` arrived, its lifetime ran out, ...), and only as
:data:`TRANSITIONS` says: the core asks :func:`next_state` for every change (``Conversations.transition``, which
also keeps the per-state counts ``status`` shows), and a pair of state and event that is not in the table raises
:class:`ForbiddenTransition`, an internal error: the core has a bug, and saying so at once beats an endpoint in a
state nothing expects. This is h11's ``_state.py`` way: the whole machine in one table a reader can check.

The table is what the core did before it existed, call site by call site. A pair some event leaves unchanged is a
row too (``ER`` stays ``ER`` when ``EndDialog`` arrives), so the table also says what each event does *not*
change. Where a call site skips some states on purpose (the broker fails a conversation only once; a lifetime
that ran out does nothing to a side already in error), the skipped states have no row, so reaching them is a bug.

Two of Service Broker's seven codes never appear here: ``SI`` (started inbound: the target side has begun to
receive its first message) because a target's endpoint is made whole, in ``CO``, by that first message; and
``DO`` (disconnected outbound: this side ended, the far side has not yet been told) because ``end()`` closes this
side at once (``CD``), and the ``EndDialog`` it sends waits, with what was sent before it, in the transmission
queue.

States change a few times per conversation, never per message, so the look-up costs the hot path nothing
(``send`` asks for a change only on a conversation's first send).
"""

from __future__ import annotations

import enum

from ..errors import InternalError


class State(enum.Enum):
    """Where one side of a conversation is in its life."""

    #: begun here, nothing sent yet
    STARTED_OUTBOUND = "SO"
    #: messages may flow both ways
    CONVERSING = "CO"
    #: the far side ended; this side may still receive, not send; it must ``end()``
    DISCONNECTED_INBOUND = "DI"
    #: an ``Error`` arrived, the broker failed the conversation, or its lifetime ran out; this side must ``end()``
    ERROR = "ER"
    #: this side ended; the record stays only until its last messages are delivered (and a while after, when the
    #: far side is on another node, to recognise its late retransmissions)
    CLOSED = "CD"

    @property
    def can_send(self) -> bool:
        return self in (State.STARTED_OUTBOUND, State.CONVERSING)


class Event(enum.Enum):
    """What happens to one side of a conversation, as far as its state is concerned."""

    #: ``begin_dialog`` made this side (the initiator)
    BEGIN = "begin"
    #: the first message of a conversation reached its target, which made the target's side
    RECEIVE_FIRST = "receive first"
    #: this side sent for the first time
    SEND_FIRST = "send first"
    #: an ``EndDialog`` from the far side arrived
    END_REMOTE = "end remote"
    #: an ``Error`` from the far side arrived
    ERROR_REMOTE = "error remote"
    #: the broker failed the conversation: a message failed the checks of a receiver on this node, the target
    #: service does not accept the contract, dialog security cannot be had
    FAIL = "fail"
    #: a message from another node failed this side's checks (contract, validation, authorization): the sender
    #: was sent an ``Error``, and so is this side's queue
    REFUSE = "refuse"
    #: the same, for the message that made this side: nobody here ever saw the conversation, so this side is
    #: closed quietly instead
    REFUSE_FIRST = "refuse first"
    #: the conversation's lifetime ran out
    LIFETIME_EXPIRED = "lifetime expired"
    #: ``end()``: this side ends, telling the far side (``EndDialog`` or ``Error``) if it knows of the conversation
    END_LOCAL = "end local"
    #: ``end(cleanup=True)``: this side is removed without telling the far side
    CLEANUP = "cleanup"


SO, CO, DI = State.STARTED_OUTBOUND, State.CONVERSING, State.DISCONNECTED_INBOUND
ER, CD = State.ERROR, State.CLOSED

#: the state a side is made in, by the event that makes it
STARTS: dict[Event, State] = {
    Event.BEGIN: SO,
    Event.RECEIVE_FIRST: CO,
}

#: every change of state there is: (state, event) -> the next state. Not listed: forbidden.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (SO, Event.SEND_FIRST): CO,
    # the far side ended: a side that could send may no more; one already ended by the far side or in error stays
    (SO, Event.END_REMOTE): DI,
    (CO, Event.END_REMOTE): DI,
    (DI, Event.END_REMOTE): DI,
    (ER, Event.END_REMOTE): ER,
    (SO, Event.ERROR_REMOTE): ER,
    (CO, Event.ERROR_REMOTE): ER,
    (DI, Event.ERROR_REMOTE): ER,
    (ER, Event.ERROR_REMOTE): ER,
    # the broker fails a conversation once: a side already in error is left as it is (its Error is in its queue)
    (SO, Event.FAIL): ER,
    (CO, Event.FAIL): ER,
    (DI, Event.FAIL): ER,
    (SO, Event.REFUSE): ER,
    (CO, Event.REFUSE): ER,
    (DI, Event.REFUSE): ER,
    (ER, Event.REFUSE): ER,
    (SO, Event.REFUSE_FIRST): CD,
    (CO, Event.REFUSE_FIRST): CD,
    (ER, Event.REFUSE_FIRST): CD,
    # a side in error gets no second lifetime Error
    (SO, Event.LIFETIME_EXPIRED): ER,
    (CO, Event.LIFETIME_EXPIRED): ER,
    (DI, Event.LIFETIME_EXPIRED): ER,
    (SO, Event.END_LOCAL): CD,
    (CO, Event.END_LOCAL): CD,
    (DI, Event.END_LOCAL): CD,
    (ER, Event.END_LOCAL): CD,
    (SO, Event.CLEANUP): CD,
    (CO, Event.CLEANUP): CD,
    (DI, Event.CLEANUP): CD,
    (ER, Event.CLEANUP): CD,
}


class ForbiddenTransition(InternalError):
    """The core tried a change of state the table does not have: a bug in aiobroker, not in the caller's use."""

    def __init__(self, handle: str, state: State, event: Event) -> None:
        allowed = [(s, to) for (s, e), to in TRANSITIONS.items() if e is event]
        froms = ", ".join(f"{s.value} -> {to.value}" for s, to in allowed) or "nowhere"
        super().__init__(
            f"conversation endpoint {handle}: no change of state from {state.value} ({state.name.lower()}) on event"
            f" {event.name} (the state table has {event.name} only as {froms}); this is a bug in aiobroker:"
            " please report it with the node's log"
        )
        self.handle = handle
        self.state = state
        self.event = event


def next_state(handle: str, state: State, event: Event) -> State:
    """The state after ``event`` in ``state``; raises :class:`ForbiddenTransition` if the table has no such row."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise ForbiddenTransition(handle, state, event) from None
